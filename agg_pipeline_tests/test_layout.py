"""The layout's rules, read from the source (ARCHITECTURE.md): imports point one way,
core is pure, and settings are read at import time in one module only."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import agg_pipeline

PACKAGE = Path(agg_pipeline.__file__).parent

# layer -> the agg_pipeline layers it may import (besides itself).
ALLOWED = {
    "core": set(),
    "config": {"core"},
    "warehouse": {"core", "config"},
    "sources": {"core", "config", "warehouse", "influx"},
    "influx": {"core", "config", "warehouse"},
    "demo": {"core", "config", "warehouse"},
    # Beside defs: the read paths read the warehouse or, for pattern aggregates, InfluxDB.
    "serving": {"core", "config", "warehouse", "influx"},
    "defs": {"core", "config", "warehouse", "sources", "influx", "serving"},
    "definitions": {"core", "config", "warehouse", "influx", "defs"},
    # Beside defs, at the top: they read the Dagster instance / load the definitions.
    "status": {"core", "config", "warehouse", "influx", "defs"},
    "cli": {"core", "config", "warehouse", "sources", "influx", "demo", "serving", "defs"}
    | {"definitions", "status", "launch"},
    # The old run_etl.py commands over the Dagster instance; the API's Dagster side.
    "launch": {"core", "config", "warehouse", "serving", "defs", "status"},
}
# The writers call a source through its protocol, a module that imports core only.
EXCEPTIONS = {("warehouse", "agg_pipeline.sources.base")}
# Pure: the standard library only.
CORE_THIRD_PARTY = {"dagster", "sqlalchemy", "psycopg2", "pandas", "influxdb_client", "yaml"}


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        layer = rel.parts[0].removesuffix(".py")
        out.append((layer, path))
    return out


def _imports(tree: ast.Module) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
            names.extend(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
    return names


def test_imports_point_one_way():
    wrong = []
    for layer, path in _modules():
        if layer not in ALLOWED:
            continue  # __init__, the import shims (dashboard.py, patterns.py)
        tree = ast.parse(path.read_text())
        for name in _imports(tree):
            parts = name.split(".")
            if parts[0] != "agg_pipeline" or len(parts) < 2:
                if layer == "core" and parts[0] in CORE_THIRD_PARTY:
                    wrong.append(f"{path.relative_to(PACKAGE)} imports {name} (core is pure)")
                continue
            target = parts[1]
            if (layer, ".".join(parts[:3])) in EXCEPTIONS:
                continue
            if target in ALLOWED and target != layer and target not in ALLOWED[layer]:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert sorted(set(wrong)) == [], "\n".join(sorted(set(wrong)))


def test_settings_are_read_at_import_time_in_one_module():
    readers = []
    for _, path in _modules():
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only: not inside a function
            for call in ast.walk(node):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    break
                if (
                    isinstance(call, ast.Call)
                    and getattr(call.func, "id", getattr(call.func, "attr", None)) == "get_settings"
                ):
                    readers.append(str(path.relative_to(PACKAGE)))
    assert sorted(set(readers)) == ["defs/loaded.py"]


def test_the_protocol_of_sources_imports_core_only():
    tree = ast.parse((PACKAGE / "sources" / "base.py").read_text())
    ours = {n.split(".")[1] for n in _imports(tree) if n.startswith("agg_pipeline.")}
    assert ours == {"core"}


def test_the_top_level_holds_only_the_layers():
    """A new module goes into a layer (ARCHITECTURE.md says which), not beside them."""
    # Modules and folders holding source (a checkout that predates a move keeps folders
    # of __pycache__ only: not part of the package).
    top = {
        p.name.removesuffix(".py")
        for p in PACKAGE.iterdir()
        if p.suffix == ".py" or (p.is_dir() and p.name != "__pycache__" and any(p.rglob("*.py")))
    }
    shims = {"dashboard", "patterns"}  # agg_pipeline.dashboard / .patterns: serving/'s modules
    assert top == set(ALLOWED) | shims | {"__init__"}


_SQL = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|WITH|REFRESH|CREATE|DROP|ALTER|TRUNCATE)\s")
# Still holding SQL, with the reason: the event rollups' statements move into
# warehouse/events.py with the event-rollup performance work (in flight on its branch).
SQL_IN_DEFS_PENDING = {"defs/events/assets.py"}


def _sql_literals(tree: ast.Module) -> list[int]:
    """Lines of string literals (plain or the start of an f-string) that are SQL."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr) and node.values:
            first = node.values[0]
            if isinstance(first, ast.Constant) and _SQL.match(str(first.value)):
                lines.append(node.lineno)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and _SQL.match(node.value)
        ):
            lines.append(node.lineno)
    return lines


def test_defs_hold_dagster_objects_not_sql():
    """SQL lives in warehouse/ (statements.py, sql/ templates, a module per family):
    defs/ calls it."""
    found = {}
    for layer, path in _modules():
        rel = str(path.relative_to(PACKAGE))
        if layer != "defs" or rel in SQL_IN_DEFS_PENDING:
            continue
        if lines := _sql_literals(ast.parse(path.read_text())):
            found[rel] = lines
    assert found == {}
    for rel in SQL_IN_DEFS_PENDING:  # an entry whose SQL has moved goes from the list
        assert _sql_literals(ast.parse((PACKAGE / rel).read_text())), rel
