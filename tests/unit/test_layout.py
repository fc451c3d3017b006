"""The code's layout rules, checked on its imports (every import, also those inside
functions): ``model/`` stands alone, ``utils/`` holds leaf helpers, the detect work and
the worker side know nothing of the web, no two modules import each other, and each
thing is said in one place (one config reader, one database health, the SQL in ``db``,
the chart's geometry out of the page handler)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from settings import BASE_DIR

PACKAGES = ("model", "service", "utils", "bench")
TOP_MODULES = ("main", "routes", "settings", "db")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(BASE_DIR).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _project_modules() -> dict[str, Path]:
    modules = {name: BASE_DIR / f"{name}.py" for name in TOP_MODULES}
    for package in PACKAGES:
        for path in (BASE_DIR / package).rglob("*.py"):
            modules[_module_name(path)] = path
    return modules


MODULES = _project_modules()


def _resolve(name: str) -> str | None:
    """The project module an import of ``name`` loads (the deepest one that exists)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str) -> set[str]:
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    found = set()
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for name in names:
            target = _resolve(name)
            if target is not None and target != module:
                found.add(target)
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def _top(module: str) -> str:
    return module.split(".")[0]


def test_the_graph_is_read() -> None:
    assert "service.serving.server" in GRAPH["service.detect"]
    assert "service.workers.pool" in GRAPH["service.serving.server"]
    assert "model.inference" in GRAPH["service.workers.child"]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _top(m) == "model"))
def test_model_imports_nothing_outside_model(module: str) -> None:
    assert {_top(m) for m in GRAPH[module]} <= {"model"}, GRAPH[module]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _top(m) == "utils"))
def test_utils_are_leaf_helpers(module: str) -> None:
    assert not GRAPH[module], f"{module} imports {sorted(GRAPH[module])}"


@pytest.mark.parametrize("module", ["service.detect", "service.recorder", "service.metrics",
                                    "service.database_health", "service.history_stats",
                                    "service.counts", "service.detect_cli",
                                    *sorted(m for m in MODULES
                                            if m.startswith(("service.workers",
                                                             "service.serving")))])
def test_the_core_does_not_know_the_web(module: str) -> None:
    assert not any(m.startswith("service.web") or m in ("main", "routes")
                   for m in GRAPH[module]), GRAPH[module]
    assert "aiohttp" not in MODULES[module].read_text()


def test_no_import_cycles() -> None:
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)
    assert not cycles, "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_each_api_is_a_codec_around_the_one_detect_path() -> None:
    """The APIs that detect reach the model only through service.web.detecting; no other
    module knows the DeepStack sub-app's prefix."""
    for api in ("service.web.apis.native", "service.web.apis.deepstack"):
        assert "service.web.detecting" in GRAPH[api]
        assert not {"service.detect", "service.serving.server"} & GRAPH[api], GRAPH[api]
    knowing = [module for module, path in MODULES.items()
               if "/v1/vision" in path.read_text() and module != "service.web.apis.deepstack"]
    assert not knowing, knowing


def _imports_package(module: str, package: str) -> bool:
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(
                a.name.split(".")[0] == package for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and not node.level and \
                (node.module or "").split(".")[0] == package:
            return True
    return False


def test_one_config_reader() -> None:
    """settings.py reads the service's config; nothing else parses YAML (the OpenAPI
    document aside), and model/ (which may not import settings) reads no config:
    ``python -m service.detect_cli`` hands ``model.detect`` what settings read."""
    readers = {m for m in MODULES if _top(m) != "bench" and _imports_package(m, "yaml")}
    assert readers == {"settings", "service.web.handlers.docs"}, readers
    assert "model.service_config" not in MODULES
    assert {"settings", "model.detect"} <= GRAPH["service.detect_cli"]
    assert "model.defaults" in GRAPH["settings"]  # one set of detection defaults


def test_db_is_the_sql_and_knows_nothing_of_the_service() -> None:
    """db.py: the SQL and pg_context; the database's health and the embedded server's
    supervision are service.database_health, the history's counts service.history_stats."""
    assert {_top(m) for m in GRAPH["db"]} <= {"settings", "model", "utils"}, GRAPH["db"]
    text = MODULES["db"].read_text()
    for moved in ("class DatabaseHealth", "async def watch(", "async def restart(",
                  "async def stats(", "async def list_labels("):
        assert moved not in text, moved
    assert "db" in GRAPH["service.history_stats"] and "db" in GRAPH["service.database_health"]


def test_one_database_health() -> None:
    """/readyz, the record writer and /metrics read service.database_health's one
    object: none keeps a health of its own or pings the database itself."""
    defined = [m for m in MODULES if "class DatabaseHealth" in MODULES[m].read_text()]
    assert defined == ["service.database_health"], defined
    for module in ("service.recorder", "service.web.keys", "main"):
        assert "service.database_health" in GRAPH[module], module
    assert "database_up" not in MODULES["service.recorder"].read_text()
    pinging = [m for m in MODULES if m.startswith("service.web")
               and "db.ping(" in MODULES[m].read_text()]
    assert not pinging, pinging


def test_the_chart_geometry_is_plain_data_outside_the_handlers() -> None:
    assert not GRAPH["service.web.chart"], GRAPH["service.web.chart"]
    assert "aiohttp" not in MODULES["service.web.chart"].read_text()
    assert "def day_chart(" not in MODULES["service.web.handlers.pages"].read_text()


def test_the_test_tiers() -> None:
    """tests/unit is light (tests/unit/test_fast_tier.py runs it and checks); the engine's
    tests are tests/model; the service fixtures are tests/service/conftest.py (e2e takes
    them from there) and the top conftest imports nothing heavy."""
    tests = BASE_DIR / "tests"
    assert not (tests / "unit" / "model").exists()
    assert (tests / "model").is_dir() and (tests / "service" / "conftest.py").is_file()
    top = ast.parse((tests / "conftest.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(top)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(top)
                 if isinstance(node, ast.ImportFrom)}
    assert not imported & {"torch", "asyncpg", "main", "service", "db"}, imported
    e2e = (tests / "e2e" / "conftest.py").read_text()
    assert "from tests.service.conftest import" in e2e
