"""What the migrations expect of tables that already exist, and what an existing database has.

``agg-pipeline migrate`` must not half-apply on a database that already holds tables of the
same names but another shape (the old ETL's ``bi.hourly_sensor_agg``, ``iot.sensors``):
``CREATE TABLE IF NOT EXISTS`` would silently keep the old table and a later statement or
run would fail on a missing column. So, before any change, every table the migrations
create is compared with ``information_schema`` / ``pg_catalog``:

- each column of its ``CREATE TABLE`` must exist with the same type;
- a column added later by ``ALTER TABLE ... ADD COLUMN IF NOT EXISTS`` may be absent, but
  if present must have that type;
- a column of the existing table that we do not know must be nullable or have a default
  (our INSERTs do not name it);
- the primary key / UNIQUE column sets must each be backed by a unique index (ON CONFLICT);
- an existing table whose foreign key points at a table set aside is set aside too (its
  ids mean the old rows).

The expectations are read from the migration files themselves, so a new migration is
checked without a second list to keep in step.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import sqlalchemy as sa

_CREATE = re.compile(
    r"CREATE\s+TABLE\s+IF\s+NOT\s+EXISTS\s+([a-z_][a-z0-9_]*)\.([a-z_][a-z0-9_]*)\s*\(",
    re.IGNORECASE,
)
_ADD_COLUMN = re.compile(
    r"ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?([a-z_][a-z0-9_]*)\.([a-z_][a-z0-9_]*)\s+"
    r"ADD\s+COLUMN\s+IF\s+NOT\s+EXISTS\s+([a-z_][a-z0-9_]*)\s+([^,;]+?)\s*(?:[,;]|$)",
    re.IGNORECASE,
)
_CONSTRAINT_WORDS = {"primary", "unique", "check", "constraint", "foreign", "exclude"}
# Column attributes that end the type in a column definition.
_TYPE_END = re.compile(
    r"\s+(?:NOT\s+NULL|NULL|DEFAULT|PRIMARY|UNIQUE|CHECK|REFERENCES|CONSTRAINT|GENERATED|"
    r"COLLATE)\b",
    re.IGNORECASE,
)
_SERIAL = {"serial": "integer", "bigserial": "bigint", "smallserial": "smallint"}


def _strip_comments(sql: str) -> str:
    return re.sub(r"--[^\n]*", "", sql)


def _split_top_level(body: str) -> list[str]:
    parts, depth, current = [], 0, []
    for ch in body:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    if "".join(current).strip():
        parts.append("".join(current).strip())
    return parts


def _body(sql: str, open_paren: int) -> str:
    depth = 0
    for i in range(open_paren, len(sql)):
        if sql[i] == "(":
            depth += 1
        elif sql[i] == ")":
            depth -= 1
            if depth == 0:
                return sql[open_paren + 1 : i]
    raise ValueError("unbalanced parentheses in CREATE TABLE")


def _column_type(definition: str) -> str:
    rest = definition.split(None, 1)[1] if len(definition.split(None, 1)) > 1 else ""
    cut = _TYPE_END.search(" " + rest)
    type_text = (" " + rest)[: cut.start()] if cut else " " + rest
    type_text = type_text.strip().lower()
    return _SERIAL.get(type_text, type_text)


@dataclass
class ExpectedTable:
    schema: str
    name: str
    source: str  # the migration file that creates it
    columns: dict[str, str] = field(default_factory=dict)  # created with the table
    added: dict[str, str] = field(default_factory=dict)  # ALTER ... ADD COLUMN IF NOT EXISTS
    keys: list[tuple[str, ...]] = field(default_factory=list)  # PRIMARY KEY / UNIQUE sets

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


def expected_tables(migrations: Iterable[tuple[str, str]]) -> dict[str, ExpectedTable]:
    """``schema.table`` -> what the migration files (name, sql) expect of it."""
    tables: dict[str, ExpectedTable] = {}
    for filename, raw_sql in migrations:
        sql = _strip_comments(raw_sql)
        for match in _CREATE.finditer(sql):
            schema, name = match.group(1).lower(), match.group(2).lower()
            table = tables.setdefault(
                f"{schema}.{name}", ExpectedTable(schema, name, source=filename)
            )
            for item in _split_top_level(_body(sql, match.end() - 1)):
                first = item.split(None, 1)[0].lower()
                if first in _CONSTRAINT_WORDS:
                    cols = re.match(r"(?:primary\s+key|unique)\s*\(([^)]*)\)", item, re.I)
                    if cols:
                        table.keys.append(
                            tuple(c.strip().lower() for c in cols.group(1).split(","))
                        )
                    continue
                column = first.strip('"')
                table.columns[column] = _column_type(item)
                if re.search(r"\bPRIMARY\s+KEY\b|\bUNIQUE\b", item, re.I):
                    table.keys.append((column,))
        for match in _ADD_COLUMN.finditer(sql):
            key = f"{match.group(1).lower()}.{match.group(2).lower()}"
            if key in tables and match.group(3).lower() not in tables[key].columns:
                tables[key].added[match.group(3).lower()] = _column_type(
                    f"{match.group(3)} {match.group(4)}"
                )
    return tables


@dataclass(frozen=True)
class Incompatibility:
    table: str
    problems: tuple[str, ...]

    def describe(self) -> str:
        return f"{self.table}: " + "; ".join(self.problems)


def _normalized_types(conn: sa.Connection, types: set[str]) -> dict[str, str]:
    """Spelling of each type as format_type() prints it (PostgreSQL parses the names)."""
    out = {}
    for t in sorted(types):
        out[t] = conn.execute(
            sa.text("SELECT format_type(CAST(:t AS regtype), NULL)"), {"t": t}
        ).scalar_one()
    return out


def find_incompatible(
    conn: sa.Connection, expected: dict[str, ExpectedTable]
) -> list[Incompatibility]:
    """Existing tables that the migrations would not turn into the shape they expect."""
    rows = conn.execute(
        sa.text(
            "SELECT n.nspname || '.' || c.relname AS qualified, c.relkind, c.oid "
            "FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace "
            "WHERE n.nspname || '.' || c.relname = ANY(:names)"
        ),
        {"names": list(expected)},
    ).all()
    if not rows:
        return []
    kinds = {"r": "table", "p": "table", "v": "view", "m": "materialized view", "f": "table"}
    types = _normalized_types(
        conn, {t for e in expected.values() for t in [*e.columns.values(), *e.added.values()]}
    )
    found: dict[str, list[str]] = {}
    oids: dict[int, str] = {}
    for qualified, relkind, oid in rows:
        problems: list[str] = []
        exp = expected[qualified]
        if kinds.get(relkind) != "table":
            found[qualified] = [f"is a {kinds.get(relkind, relkind)}, a table is expected"]
            continue
        oids[oid] = qualified
        have = {
            name: (typ, not_null, has_default)
            for name, typ, not_null, has_default in conn.execute(
                sa.text(
                    "SELECT attname, format_type(atttypid, atttypmod), attnotnull, "
                    "atthasdef OR attidentity <> '' OR attgenerated <> '' "
                    "FROM pg_attribute WHERE attrelid = :oid AND attnum > 0 "
                    "AND NOT attisdropped ORDER BY attnum"
                ),
                {"oid": oid},
            )
        }
        for column, typ in exp.columns.items():
            if column not in have:
                problems.append(f"column {column} ({types[typ]}) is missing")
            elif have[column][0] != types[typ]:
                problems.append(f"column {column} is {have[column][0]}, {types[typ]} is expected")
        for column, typ in exp.added.items():
            if column in have and have[column][0] != types[typ]:
                problems.append(f"column {column} is {have[column][0]}, {types[typ]} is expected")
        for column, (_, not_null, has_default) in have.items():
            if (
                column not in exp.columns
                and column not in exp.added
                and not_null
                and not has_default
            ):
                problems.append(f"column {column} is NOT NULL without a default (unknown to us)")
        unique_sets = {
            tuple(sorted(cols))
            for (cols,) in conn.execute(
                sa.text(
                    "SELECT array_agg(a.attname::text) FROM pg_index AS i "
                    "JOIN pg_attribute AS a ON a.attrelid = i.indrelid "
                    "AND a.attnum = ANY(i.indkey) "
                    "WHERE i.indrelid = :oid AND i.indisunique AND i.indpred IS NULL "
                    "GROUP BY i.indexrelid"
                ),
                {"oid": oid},
            )
        }
        for key in exp.keys:
            if all(c in have for c in key) and tuple(sorted(key)) not in unique_sets:
                problems.append(f"no unique index on ({', '.join(key)})")
        if problems:
            found[qualified] = problems
    # An existing table that references a table set aside goes with it: its ids are the
    # old table's ids. Repeat until nothing more is added.
    fks = conn.execute(
        sa.text(
            "SELECT conrelid, confrelid FROM pg_constraint "
            "WHERE contype = 'f' AND conrelid = ANY(:oids) AND confrelid = ANY(:all_oids)"
        ),
        {"oids": list(oids), "all_oids": [o for _, _, o in rows]},
    ).all()
    by_oid = {oid: q for q, _, oid in rows}
    changed = True
    while changed:
        changed = False
        for child, parent in fks:
            c, p = by_oid[child], by_oid[parent]
            if p in found and c not in found:
                found[c] = [f"references {p}, which is set aside"]
                changed = True
    return [Incompatibility(t, tuple(found[t])) for t in sorted(found)]
