"""A raw InfluxDB series' identity in the warehouse: the device tag plus the carried tags.

The warehouse keys everything by (device, field). ``aggregateWindow`` in the old tasks
aggregated each series - each tag set - on its own and kept its tags, so a catalogue lists
the other tags that belong to a series' identity (``source.tags``). Each tag set of those
tags is then its own device in PostgreSQL, with a device code that spells the tag set:

    no tags listed:              probe_1                      (the tag value, as before)
    tags listed [site, depth]:   probe_1,depth=2m,site=north  (``compose``)

The code is line protocol's series-key syntax (tags sorted, ``\\``, ``,``, ``=`` and space
escaped), so ``split`` reads it back exactly and the sink writes the same tags again. A
listed tag a point does not carry is left out (InfluxDB has no empty tag values).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_SPECIAL = re.compile(r"([\\,= ])")


def _escape(value: str) -> str:
    return _SPECIAL.sub(r"\\\1", value)


def _cut(text: str, sep: str) -> list[str]:
    """``text`` split at every ``sep`` not escaped by a backslash, unescaping nothing."""
    out, cur, i = [], "", 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            cur += text[i : i + 2]
            i += 2
            continue
        if text[i] == sep:
            out.append(cur)
            cur = ""
        else:
            cur += text[i]
        i += 1
    return [*out, cur]


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


def compose(device: str, tags: Mapping[str, str | None]) -> str:
    """The device code of a series: its device tag value and its carried tags' values."""
    present = sorted((k, v) for k, v in tags.items() if v is not None and v != "")
    return _escape(device) + "".join(f",{_escape(k)}={_escape(v)}" for k, v in present)


def split(code: str) -> tuple[str, dict[str, str]]:
    """``compose``'s inverse: (device tag value, carried tags)."""
    device, *pairs = _cut(code, ",")
    tags = {}
    for pair in pairs:
        key, *value = _cut(pair, "=")
        tags[_unescape(key)] = _unescape("=".join(value))
    return _unescape(device), tags
