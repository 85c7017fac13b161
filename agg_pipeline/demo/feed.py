"""A live feed of simulated readings: what `make dev` runs beside Dagster.

Every ``interval`` seconds the simulated devices' readings since the last tick are written
to the raw table (the same simulator as `agg-pipeline seed`, so the series continue the
demo data), so the every-minute schedules, freshness, self-healing and the real-time views
have something real to show. Now and then a tick adds one bad reading (NaN or out of the
field's bounds: counted as rejected in the next materialization) or one late reading (in an
hour that closed a while ago: the late-data sensor and the healer correct it).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from agg_pipeline.config.catalogue import Catalogue
from agg_pipeline.demo import readings as simulator
from agg_pipeline.warehouse import statements

# At most this much history is filled in on start (`make dev` restarted after a pause):
# the gap beyond it stays a gap, as a device that was switched off.
MAX_CATCH_UP = timedelta(hours=6)


@dataclass(frozen=True)
class FeedSpec:
    devices: int = 4
    hz: float = 0.1
    interval: float = 10.0
    bad_every: int = 30  # about one bad reading per this many ticks
    late_every: int = 60  # about one late reading per this many ticks
    late_by: timedelta = timedelta(hours=2)
    seed: int = 42


def last_reading(engine: sa.Engine, catalogue: Catalogue) -> datetime | None:
    src = catalogue.source
    with engine.connect() as conn:
        # Identifiers come validated from the catalogue.
        return conn.execute(
            sa.text(
                f"SELECT max({statements.quote_ident(src.time_column)}) "
                f"FROM {statements.quote_ident(src.table)}"
            )
        ).scalar()


def _insert(engine: sa.Engine, catalogue: Catalogue, rows: list[tuple]) -> None:
    src = catalogue.source
    cols = (src.time_column, src.device_column, src.field_column, src.value_column)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f"INSERT INTO {statements.quote_ident(src.table)} "
                f"({', '.join(statements.quote_ident(c) for c in cols)}) "
                "VALUES (:t, :d, :f, :v)"
            ),
            [{"t": t, "d": d, "f": f, "v": v} for t, d, f, v in rows],
        )


def tick(
    engine: sa.Engine,
    catalogue: Catalogue,
    spec: FeedSpec,
    since: datetime,
    until: datetime,
    rng: random.Random,
) -> dict[str, int]:
    """Write the readings of [since, until) plus, by chance, one bad and one late reading."""
    sim = simulator.SimulationSpec(
        start=since,
        days=(until - since).total_seconds() / 86400,
        devices=spec.devices,
        hz=spec.hz,
        seed=spec.seed + int(since.timestamp()),
    )
    written = {"readings": simulator.write(engine, catalogue, sim)}
    devices = simulator.device_names(catalogue, spec.devices)
    extra: list[tuple] = []
    if rng.randrange(spec.bad_every) == 0:
        name, field = rng.choice(list(catalogue.fields.items()))
        value = float("nan") if rng.random() < 0.5 else field.max + abs(field.max) + 1.0
        extra.append((until - timedelta(seconds=1), rng.choice(devices), name, value))
        written["bad"] = 1
    if rng.randrange(spec.late_every) == 0:
        name, field = rng.choice(list(catalogue.fields.items()))
        at = until - spec.late_by - timedelta(seconds=rng.uniform(0, 3000))
        value = (field.optimal.min + field.optimal.max) / 2 if field.optimal else field.min
        extra.append((at, rng.choice(devices), name, value))
        written["late"] = 1
    if extra:
        _insert(engine, catalogue, extra)
    return written


def whole_periods(since: datetime, now: datetime, hz: float) -> datetime:
    """The end of the whole sampling periods since ``since``: the simulator samples at
    ``since + k / hz``, and a window 10.01 s long would hold two samples per sensor; the
    microsecond less keeps the last tick for the next window."""
    n = int((now - since).total_seconds() * hz)
    return since + timedelta(seconds=n / hz) - timedelta(microseconds=1) if n else since


def run(
    engine: sa.Engine,
    catalogue: Catalogue,
    spec: FeedSpec,
    log: Callable[[str], None] = print,
    ticks: int | None = None,
) -> None:
    """Feed until stopped (or ``ticks`` ticks): catch up from the newest reading (at most
    MAX_CATCH_UP), then one tick every ``spec.interval`` seconds."""
    rng = random.Random(spec.seed)
    now = datetime.now(UTC)
    newest = last_reading(engine, catalogue)
    since = max(newest, now - MAX_CATCH_UP) if newest else now - timedelta(seconds=spec.interval)
    done = 0
    while ticks is None or done < ticks:
        until = whole_periods(since, datetime.now(UTC), spec.hz)
        if until > since:
            written = tick(engine, catalogue, spec, since, until, rng)
            log(f"feed {until:%H:%M:%S}: " + ", ".join(f"{n} {k}" for k, n in written.items()))
            since = until
        done += 1
        if ticks is None or done < ticks:
            time.sleep(spec.interval)
