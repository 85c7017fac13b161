"""SQL statement text, loaded from ``warehouse/sql/*.sql`` and rendered with identifiers.

Values are always bound parameters (``:name``). The only text substituted into SQL are
identifiers from the validated catalogue, quoted here, and fixed fragments written in this
package (bucket expressions, sub-selects) - never user-supplied values.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def quote_ident(name: str) -> str:
    """Quote a validated SQL identifier (``schema.table`` allowed)."""
    parts = name.split(".")
    if not 1 <= len(parts) <= 2 or not all(_IDENT.match(p) for p in parts):
        raise ValueError(f"not a valid SQL identifier: {name!r}")
    return ".".join('"' + p + '"' for p in parts)


# Device names from raw readings become iot.devices.device_code and, joined with the field,
# iot.sensors.sensor_code: both UNIQUE btree keys. A btree entry holds at most 2704 bytes (a
# third of an 8 kB page; TOAST compression helps repetitive names, not random ones), so one
# longer name failed the whole window's write. Names are capped far below that, leaving room
# for ':' and a 63-byte field name; a reading whose device name is empty, longer, or holds
# control characters is rejected as `bad_device` (counted, never written). PostgreSQL text
# cannot hold NUL at all, so NUL only reaches us from other sources (InfluxDB tags).
MAX_NAME_BYTES = 200
BAD_NAME_PATTERN = r"[\x01-\x1f\x7f]"  # PostgreSQL regex (~): control characters
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f]")


def name_params() -> dict[str, object]:
    """The bound parameters the staging statements use to tell bad device names."""
    return {"max_name_bytes": MAX_NAME_BYTES, "bad_name_pattern": BAD_NAME_PATTERN}


def is_bad_name(name: str) -> bool:
    """Python twin of the SQL rule, for names that do not come from a raw table."""
    return not 1 <= len(name.encode("utf-8", "surrogatepass")) <= MAX_NAME_BYTES or bool(
        _BAD_NAME.search(name)
    )


def shown_name(name: str, limit: int = 40) -> str:
    """A bad name, printable in metadata and logs: escaped, cut, with its length."""
    size = len(name.encode("utf-8", "surrogatepass"))
    text = name[:limit].encode("unicode_escape").decode("ascii")
    return text + (f"... ({size} bytes)" if len(name) > limit else "") if name else "(empty)"


_COMMENT = re.compile(r"--[^\n]*")


@functools.cache
def load(name: str) -> str:
    """The text of ``warehouse/sql/<name>.sql``, without ``--`` comments.

    Comments are stripped so that prose such as ``:start`` in them is never taken for a bind
    parameter (our SQL files keep ``--`` out of string literals).
    """
    path = resources.files("agg_pipeline.warehouse").joinpath("sql", f"{name}.sql")
    return _COMMENT.sub("", path.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class RawColumns:
    """Quoted names of the raw readings table and its columns."""

    raw_table: str
    time: str
    device: str
    field: str
    value: str

    @classmethod
    def of(cls, table: str, time: str, device: str, field: str, value: str) -> RawColumns:
        return cls(
            raw_table=quote_ident(table),
            time=quote_ident(time),
            device=quote_ident(device),
            field=quote_ident(field),
            value=quote_ident(value),
        )

    def as_dict(self) -> dict[str, str]:
        return {
            "raw_table": self.raw_table,
            "time": self.time,
            "device": self.device,
            "field": self.field,
            "value": self.value,
        }


def render(name: str, **fragments: str) -> str:
    """``load(name)`` with ``{placeholders}`` filled from ``fragments``."""
    return load(name).format(**fragments)


# Bucket expressions over a reading time column ``r.<time>``; ``:origin`` / ``:tz`` bound.
def bucket_expression(grain: str, time_column: str) -> str:
    col = f"r.{time_column}"
    if grain == "hour":
        return f"date_bin('1 hour', {col}, :origin)"
    if grain == "day":
        return f"({col} AT TIME ZONE :tz)::date"
    if grain == "week":
        return f"date_trunc('week', {col} AT TIME ZONE :tz)::date"
    if grain == "month":
        return f"date_trunc('month', {col} AT TIME ZONE :tz)::date"
    raise ValueError(f"unknown grain {grain!r}")


# The start of the window of length :step (aligned on :o) open at the database's now():
# a level written for closed windows only has nothing at or after it yet.
CLOSED_WINDOW_START = "SELECT date_bin(CAST(:step AS interval), now(), CAST(:o AS timestamptz))"
