"""``make test-fast`` (pytest on tests/unit) stays light: it imports neither torch,
asyncpg nor ``main`` (the engine's tests are tests/model; the service fixtures are in
tests/service/conftest.py, which this tier never loads)."""

from __future__ import annotations

import json
import subprocess
import sys

from settings import BASE_DIR

HEAVY = ("torch", "asyncpg", "main")

# The unit tier in-process, this file left out (it would start itself again), then the
# heavy modules that the run left in sys.modules.
_RUN = """
import json, sys
import pytest
code = pytest.main(["tests/unit", "-q", "-p", "no:cacheprovider",
                    "--ignore=tests/unit/test_fast_tier.py"])
print("LOADED " + json.dumps([m for m in {heavy} if m in sys.modules]))
sys.exit(int(code))
"""


def test_the_unit_tier_imports_neither_torch_asyncpg_nor_main() -> None:
    result = subprocess.run([sys.executable, "-c", _RUN.format(heavy=list(HEAVY))],
                            cwd=BASE_DIR, capture_output=True, text=True, timeout=600,
                            check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    loaded = [line for line in result.stdout.splitlines() if line.startswith("LOADED ")]
    assert loaded, result.stdout[-4000:]
    assert json.loads(loaded[-1].removeprefix("LOADED ")) == []
