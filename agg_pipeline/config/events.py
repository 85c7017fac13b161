"""Event rollups as data: sources of events, and the rollups declared over them.

An *event source* is a PostgreSQL table of events (one row each) with a time column, an
optional unique id column and the rules that make an event bad. An *event rollup* groups
one source's good events by dimensions and a time bucket (hourly, daily, weekly, monthly)
and computes declared measures. Both come from a validated YAML catalogue
(``catalogues/analytics.yaml`` ships the old Celery analytics); a bad key fails at load
with a message naming the file and the key, as for the readings catalogue.

Measures (``agg``):

- ``count``: events; ``sum`` / ``avg`` / ``min`` / ``max`` / ``stddev`` (sample) of a
  column; ``percentile`` (``p`` in [0, 1], ``percentile_cont``: linear interpolation);
  ``count_distinct`` of a column; ``distinct_hours``: hours (of the event time) with at
  least one event. Any of them may carry a ``filter`` (safe grammar below).
- ``ratio_pct``: ``100 * numerator / denominator`` of two other measures of the rollup
  (NULL when the denominator is 0).

Each bucket is computed in one set-based statement, exact at every grain: ``count``,
``sum``, ``avg``, ``min``, ``max`` and ``stddev`` merge from the level below when its rows
are current (avg and stddev keep hidden partials, ``<name>__n`` / ``__mean`` / ``__m2``,
for that: Chan's parallel formula), the rest from the raw events of the bucket -
percentiles and distinct counts, which no merge of finer rows could give.

Filters and reject rules are boolean expressions parsed with Python's own parser; only
these nodes are accepted, nothing is ever evaluated as code: comparisons ``= == != < <= >
>=`` between a source column and a literal (string or number), ``col in (...)`` / ``not
in`` over literals, ``col is None`` / ``is not None``, ``isnan(col)``, ``isinf(col)``,
``and`` / ``or`` / ``not`` and parentheses. Values are bound parameters in the SQL;
columns are validated identifiers, quoted. A comparison with NULL is not true (SQL).

Pure: no Dagster, no I/O beyond reading the catalogue file.
"""

from __future__ import annotations

import ast
import functools
import io
import math
import tokenize
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agg_pipeline.config.settings import get_settings
from agg_pipeline.config.yaml_model import parse_model

SHIPPED = ("analytics",)
_IDENT = r"[a-z_][a-z0-9_]{0,62}"
Identifier = Annotated[str, Field(pattern=rf"^{_IDENT}$")]
QualifiedName = Annotated[str, Field(pattern=rf"^{_IDENT}\.{_IDENT}$")]
# Reasons every source has, judged before its own rules (in this order).
BUILTIN_REASONS = ("duplicate", "future")


class EventsCatalogueError(ValueError):
    """The events catalogue cannot be used; the message names the file and the key."""


class FilterError(ValueError):
    pass


class Grain(StrEnum):
    HOURLY = "hourly"
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"


# The bucket column each grain writes: a timestamptz hour, or a local date.
BUCKET_COLUMNS = {
    Grain.HOURLY: "hour_start",
    Grain.DAILY: "metric_date",
    Grain.WEEKLY: "week_start",
    Grain.MONTHLY: "month_start",
}

# ---------------------------------------------------------------------------------------
# Filters: a safe boolean grammar compiled to SQL with bound values
# ---------------------------------------------------------------------------------------


@dataclass
class CompiledFilter:
    sql: str
    params: dict[str, object] = field(default_factory=dict)
    columns: set[str] = field(default_factory=set)


def _normalize(text: str) -> str:
    """SQL's ``=`` as Python's ``==`` (tokens, so an ``=`` inside a string stays)."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError) as exc:
        raise FilterError(f"not a valid expression: {exc}") from None
    out = [
        (tokenize.OP, "==") if t.type == tokenize.OP and t.string == "=" else (t.type, t.string)
        for t in tokens
    ]
    return tokenize.untokenize(out)


def _literal(node: ast.AST) -> object:
    sign = 1
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        sign, node = -1, node.operand
    if isinstance(node, ast.Constant) and not isinstance(node.value, bool):
        value = node.value
        if isinstance(value, int | float):
            if not math.isfinite(value):
                raise FilterError("numbers must be finite")
            return sign * value
        if isinstance(value, str) and sign == 1:
            if len(value) > 200:
                raise FilterError("strings are at most 200 characters")
            return value
    raise FilterError(f"expected a string or number literal, got {ast.unparse(node)!r}")


_COMPARE = {ast.Eq: "=", ast.NotEq: "<>", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}


def compile_filter(text: str, columns: set[str], prefix: str) -> CompiledFilter:
    """SQL of a filter over the source's ``columns``; values bound as ``:<prefix>_<n>``.

    Raises FilterError naming what is not allowed.
    """
    try:
        tree = ast.parse(_normalize(text).strip(), mode="eval")
    except SyntaxError as exc:
        raise FilterError(f"not a valid expression: {exc.msg}") from None
    out = CompiledFilter(sql="")

    def column(node: ast.AST) -> str:
        if not isinstance(node, ast.Name):
            raise FilterError(f"expected a column name, got {ast.unparse(node)!r}")
        if node.id not in columns:
            raise FilterError(f"unknown column {node.id!r} (one of {', '.join(sorted(columns))})")
        out.columns.add(node.id)
        return f'"{node.id}"'

    def bind(value: object) -> str:
        name = f"{prefix}_{len(out.params)}"
        out.params[name] = value
        return f":{name}"

    def sql(node: ast.AST) -> str:
        if isinstance(node, ast.Expression):
            return sql(node.body)
        if isinstance(node, ast.BoolOp):
            op = " AND " if isinstance(node.op, ast.And) else " OR "
            return "(" + op.join(sql(v) for v in node.values) + ")"
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return f"(NOT {sql(node.operand)})"
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in ("isnan", "isinf"):
                raise FilterError(
                    f"unknown function {ast.unparse(node.func)!r} (one of isinf, isnan)"
                )
            if len(node.args) != 1 or node.keywords:
                raise FilterError(f"{node.func.id}() takes one column")
            col = column(node.args[0])
            if node.func.id == "isnan":
                return f"({col} = 'NaN'::float8)"
            return f"({col} IN ('Infinity'::float8, '-Infinity'::float8))"
        if isinstance(node, ast.Compare):
            if len(node.ops) != 1:
                raise FilterError("one comparison at a time (use and)")
            op, right = node.ops[0], node.comparators[0]
            col = column(node.left)
            if isinstance(op, ast.Is | ast.IsNot):
                if not (isinstance(right, ast.Constant) and right.value is None):
                    raise FilterError("`is` compares with None only")
                return f"({col} IS {'NOT ' if isinstance(op, ast.IsNot) else ''}NULL)"
            if isinstance(op, ast.In | ast.NotIn):
                if not isinstance(right, ast.Tuple | ast.List) or not right.elts:
                    raise FilterError("`in` takes a non-empty list of literals")
                values = ", ".join(bind(_literal(e)) for e in right.elts)
                return f"({col} {'NOT ' if isinstance(op, ast.NotIn) else ''}IN ({values}))"
            if type(op) not in _COMPARE:
                raise FilterError(f"operator {type(op).__name__} is not allowed")
            return f"({col} {_COMPARE[type(op)]} {bind(_literal(right))})"
        raise FilterError(f"{type(node).__name__} is not allowed in a filter")

    out.sql = sql(tree)
    return out


# ---------------------------------------------------------------------------------------
# The catalogue models
# ---------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EventSource(_Strict):
    """A PostgreSQL table of events."""

    table: QualifiedName
    time_column: Identifier = "time"
    id_column: Identifier | None = Field(
        default=None,
        description="Unique id of an event: a second row with the same id is a duplicate "
        "(the earliest one by time counts).",
    )
    columns: tuple[Identifier, ...] = Field(
        min_length=1, description="Columns rules, dimensions and measures may name."
    )
    reject: dict[Identifier, str] = Field(
        default_factory=dict,
        description="Reason -> filter: an event matching it is bad, counted under the "
        "reason (first match wins, after duplicate and future).",
    )

    @model_validator(mode="after")
    def _rules_parse(self) -> EventSource:
        known = set(self.columns)
        if self.time_column in known or (self.id_column and self.id_column in known):
            raise ValueError("columns: list the data columns only, not time or id")
        for reason, text in self.reject.items():
            if reason in BUILTIN_REASONS:
                raise ValueError(f"reject.{reason}: {reason!r} is a built-in reason")
            try:
                compile_filter(text, known, "r")
            except FilterError as exc:
                raise ValueError(f"reject.{reason}: {exc}") from None
        return self


Agg = Literal[
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "stddev",
    "percentile",
    "count_distinct",
    "distinct_hours",
    "ratio_pct",
]
_NEEDS_COLUMN = {"sum", "avg", "min", "max", "stddev", "percentile", "count_distinct"}


class Measure(_Strict):
    agg: Agg
    column: Identifier | None = None
    filter: str | None = Field(default=None, min_length=1, max_length=2000)
    p: float | None = Field(default=None, ge=0, le=1, description="percentile: 0.5, 0.95 ...")
    numerator: Identifier | None = None
    denominator: Identifier | None = None

    @model_validator(mode="after")
    def _shape(self) -> Measure:
        if (self.agg in _NEEDS_COLUMN) != (self.column is not None):
            need = "needs" if self.agg in _NEEDS_COLUMN else "takes no"
            raise ValueError(f"{self.agg} {need} a column")
        if (self.agg == "percentile") != (self.p is not None):
            raise ValueError("p is given exactly for percentile")
        ratio = self.agg == "ratio_pct"
        if ratio != (self.numerator is not None and self.denominator is not None):
            raise ValueError("numerator and denominator are given exactly for ratio_pct")
        if not ratio and (self.numerator or self.denominator):
            raise ValueError("numerator and denominator are given exactly for ratio_pct")
        if ratio and self.filter:
            raise ValueError("ratio_pct takes no filter (filter its measures)")
        return self

    @property
    def is_count(self) -> bool:
        return self.agg in ("count", "count_distinct", "distinct_hours")


class EventRollup(_Strict):
    """One rollup of a source: its dimensions, measures and the table of each grain."""

    source: Identifier
    dimensions: tuple[Identifier, ...] = Field(min_length=1)
    measures: dict[Identifier, Measure] = Field(min_length=1)
    grains: dict[Grain, QualifiedName] = Field(min_length=1, description="grain -> table")
    only: dict[Identifier, tuple[Grain, ...]] = Field(
        default_factory=dict, description="measure -> the grains that have it (default all)"
    )

    def measures_at(self, grain: Grain) -> dict[str, Measure]:
        return {n: m for n, m in self.measures.items() if grain in self.only.get(n, (grain,))}


class EventsCatalogue(_Strict):
    name: Identifier
    description: str = ""
    sources: dict[Identifier, EventSource] = Field(min_length=1)
    rollups: dict[Identifier, EventRollup] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> EventsCatalogue:
        tables: dict[str, str] = {}
        for name, rollup in self.rollups.items():
            where = f"rollups.{name}"
            if rollup.source not in self.sources:
                raise ValueError(f"{where}.source: unknown source {rollup.source!r}")
            source = self.sources[rollup.source]
            known = set(source.columns)
            for dim in rollup.dimensions:
                if dim not in known:
                    raise ValueError(f"{where}.dimensions: unknown column {dim!r}")
            for mname, m in rollup.measures.items():
                at = f"{where}.measures.{mname}"
                if mname in rollup.dimensions or mname in BUCKET_COLUMNS.values():
                    raise ValueError(f"{at}: the name is a key column")
                if "__" in mname:
                    raise ValueError(f"{at}: '__' is kept for the partial columns (<name>__n)")
                if m.agg in ("avg", "stddev") and len(mname) > 58:
                    raise ValueError(f"{at}: at most 58 characters (its partials add '__mean')")
                if m.column is not None and m.column not in known:
                    raise ValueError(f"{at}.column: unknown column {m.column!r}")
                if m.filter is not None:
                    try:
                        compile_filter(m.filter, known, "f")
                    except FilterError as exc:
                        raise ValueError(f"{at}.filter: {exc}") from None
                for part in (m.numerator, m.denominator):
                    if part is not None and (
                        part not in rollup.measures or rollup.measures[part].agg == "ratio_pct"
                    ):
                        raise ValueError(f"{at}: {part!r} is not a measure of {name}")
            for mname, grains in rollup.only.items():
                if mname not in rollup.measures:
                    raise ValueError(f"{where}.only.{mname}: not a measure")
                if not set(grains) <= set(rollup.grains):
                    raise ValueError(f"{where}.only.{mname}: a grain the rollup does not have")
            for grain, table in rollup.grains.items():
                asset = asset_name(table)
                if asset in tables:
                    raise ValueError(
                        f"{where}.grains.{grain}: table name {asset!r} also used by {tables[asset]}"
                    )
                tables[asset] = f"{where}.grains.{grain}"
                for mname in rollup.measures:
                    m = rollup.measures[mname]
                    if m.agg == "ratio_pct" and grain in rollup.only.get(mname, (grain,)):
                        parts = rollup.measures_at(grain)
                        if m.numerator not in parts or m.denominator not in parts:
                            raise ValueError(f"{where}.measures.{mname}: parts missing at {grain}")
        return self


def asset_name(table: str) -> str:
    """A rollup table's asset: its name without the schema."""
    return table.rpartition(".")[2]


@dataclass(frozen=True)
class RollupLevel:
    """One grain of one rollup: what an asset writes."""

    rollup: str
    grain: Grain
    table: str
    spec: EventRollup
    source: EventSource

    @property
    def asset(self) -> str:
        return asset_name(self.table)

    @property
    def bucket_column(self) -> str:
        return BUCKET_COLUMNS[self.grain]

    @property
    def measures(self) -> dict[str, Measure]:
        return self.spec.measures_at(self.grain)


def levels(catalogue: EventsCatalogue) -> list[RollupLevel]:
    """Every (rollup, grain) of the catalogue, finest grain first."""
    order = list(Grain)
    out = []
    for name, rollup in catalogue.rollups.items():
        for grain in sorted(rollup.grains, key=order.index):
            src = catalogue.sources[rollup.source]
            out.append(RollupLevel(name, grain, rollup.grains[grain], rollup, src))
    return out


def source_asset(catalogue: EventsCatalogue, source: str) -> str:
    """The external asset that stands for a source's raw table (``raw_<table name>``)."""
    return "raw_" + asset_name(catalogue.sources[source].table)


# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------


def parse_events_catalogue(text: str, origin: str) -> EventsCatalogue:
    """Parse and validate events catalogue YAML; ``origin`` names it in error messages."""
    return parse_model(
        text,
        origin,
        EventsCatalogue,
        EventsCatalogueError,
        "events catalogue",
        lambda loc: ".".join(str(p) for p in loc),
    )


def load_events_catalogue(name_or_path: str) -> EventsCatalogue:
    if name_or_path in SHIPPED:
        text = resources.files("agg_pipeline.config.catalogues").joinpath(f"{name_or_path}.yaml")
        return parse_events_catalogue(text.read_text(encoding="utf-8"), f"{name_or_path}.yaml")
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise EventsCatalogueError(
            f"events catalogue {name_or_path!r}: neither a shipped one ({', '.join(SHIPPED)}) "
            "nor an existing file (AGG_PIPELINE_EVENTS_CATALOGUE)"
        )
    return parse_events_catalogue(path.read_text(encoding="utf-8"), str(path))


@functools.cache
def get_events_catalogue() -> EventsCatalogue:
    """The events catalogue chosen by AGG_PIPELINE_EVENTS_CATALOGUE, loaded once."""
    return load_events_catalogue(get_settings().events_catalogue)
