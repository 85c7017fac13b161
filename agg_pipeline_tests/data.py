"""Small, hand-checkable data sets written into a test warehouse."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from agg_pipeline.config.catalogue import load_catalogue
from agg_pipeline.demo import readings as simulator

# A Monday, so a two-day set also exercises a (partial) week.
DAY0 = datetime(2026, 11, 2, tzinfo=UTC)


def seed(
    engine: sa.Engine,
    start: datetime = DAY0,
    days: float = 2,
    devices: int = 3,
    hz: float = 0.02,
    seed: int = 7,
    catalogue: str = "hydroponics",
) -> int:
    spec = simulator.SimulationSpec(start=start, days=days, devices=devices, hz=hz, seed=seed)
    return simulator.write(engine, load_catalogue(catalogue), spec)


def insert(engine: sa.Engine, rows: list[tuple]) -> None:
    """Insert (time, device, field, value) rows as they are (NaN, inf, NULL included)."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO raw.readings (time, device, field, value) VALUES (:t, :d, :f, :v)"
            ),
            [{"t": t, "d": d, "f": f, "v": v} for t, d, f, v in rows],
        )


def bad_rows(at: datetime, device: str = "arduino_001") -> list[tuple]:
    """One of each kind of bad input, around ``at`` (inside the hour that starts there)."""
    t = at + timedelta(minutes=7, seconds=13)
    return [
        (t, device, "temperature", float("nan")),
        (t + timedelta(seconds=1), device, "temperature", float("inf")),
        (t + timedelta(seconds=2), device, "humidity", float("-inf")),
        (t + timedelta(seconds=3), device, "humidity", None),
        (t + timedelta(seconds=4), device, "ph", 20.0),  # pH above 14
        (t + timedelta(seconds=5), device, "ec", -1.0),  # negative conductivity
        (t + timedelta(seconds=6), device, "co2", 415.0),  # not in the catalogue
        (t + timedelta(seconds=7), device, "co2", 416.0),
        # an exact duplicate pair and a conflicting pair: each counts once (the mean)
        (t + timedelta(seconds=8), device, "water_temp", 19.5),
        (t + timedelta(seconds=8), device, "water_temp", 19.5),
        (t + timedelta(seconds=9), device, "light", 1000.0),
        (t + timedelta(seconds=9), device, "light", 3000.0),
    ]
