"""Reliability run against a live instance: worker kill, PostgreSQL outage, overload,
hostile inputs and a soak (``python -m bench.reliability --help``)."""
