"""The e2e tier's fixtures: the service tier's (``tests/service/conftest.py``: embedded
PostgreSQL, generated weights, warm pools, the app's test client), taken from there so
that they are defined once and the unit tier never imports them.

In a run of both tiers, each tier's session fixtures (the PostgreSQL server, the warm
pools) are set up once per tier.
"""

from tests.service.conftest import (  # noqa: F401 (fixtures, found by name)
    client,
    colours_pool,
    database,
    db_pool,
    detector_pool,
    make_config,
    model_weights,
    pg_server,
    test_config,
    tiny_weights,
    two_model_client,
    two_model_config,
)
