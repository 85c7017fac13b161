"""A small picture of what a rollup run wrote: metadata `chart`, on the partition page.

Per field, three text sparklines on one scale (max, mean, min over the sensors, bucket by
bucket): the band between the max and min lines is the range, the middle line the mean.
Computed in SQL from the rows just written (``warehouse.figures.chart_bins``), in at
most POINTS bins, and drawn as a Markdown table
of Unicode bars: Dagster renders Markdown but neither images nor HTML in metadata.
"""

from __future__ import annotations

from datetime import date, datetime

import dagster as dg
import sqlalchemy as sa

from agg_pipeline.warehouse import figures

# Bins per field at most: a day of hours, a month of days. Dagster shows a Markdown value
# inline only below 1000 characters (else behind "[Show Markdown]"): 24 points keep a
# catalogue of 7-8 fields inside that.
POINTS = 24
BARS = "▁▂▃▄▅▆▇█"


def _spark(values: list[float], lo: float, hi: float) -> str:
    if hi <= lo:
        return BARS[len(BARS) // 2] * len(values)
    top = len(BARS) - 1
    return "".join(BARS[round((v - lo) / (hi - lo) * top)] for v in values)


def rollup_chart(
    engine: sa.Engine, table: str, bucket: str, lo: datetime | date, hi: datetime | date
) -> dg.MetadataValue:
    """Markdown: per field, max / mean / min sparklines of ``table`` in [lo, hi)."""
    rows = figures.chart_bins(engine, table, bucket, lo, hi, POINTS)
    if not rows:
        return dg.MetadataValue.md("_no rows in the window_")
    fields: dict[str, list[tuple]] = {}
    for field, _bin, first, mean, low, high in rows:
        fields.setdefault(field, []).append((first, float(mean), float(low), float(high)))
    lines = ["| field | max | mean | min | range |", "|---|---|---|---|---|"]
    for field, points in fields.items():
        means, lows, highs = ([p[i] for p in points] for i in (1, 2, 3))
        lo_all, hi_all = min(lows), max(highs)
        sparks = (_spark(v, lo_all, hi_all) for v in (highs, means, lows))
        cells = " | ".join(f"`{s}`" for s in sparks)
        lines.append(f"| {field} | {cells} | {lo_all:.4g} .. {hi_all:.4g} |")
    return dg.MetadataValue.md("\n".join(lines))
