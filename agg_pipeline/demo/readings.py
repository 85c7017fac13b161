"""Deterministic, realistic raw readings for demos, tests and the benchmark.

Each (device, field) follows a daily cycle around a plausible level with AR(1) noise;
devices go silent now and then (gaps of 5-30 minutes), and a few readings are bad on
purpose: NaN, +inf, physically impossible values, exact duplicate rows. The same arguments
always produce the same rows. Rows are written in time order with COPY, which keeps the
BRIN index on time tight.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
import sqlalchemy as sa

from agg_pipeline.config.catalogue import Catalogue, FieldSpec
from agg_pipeline.warehouse import statements


@dataclass(frozen=True)
class Profile:
    """How a field behaves: level, daily swing (peak at ``peak_hour`` UTC), noise."""

    level: float
    swing: float
    noise: float
    peak_hour: float = 14.0
    daylight_only: bool = False  # e.g. light: zero at night


# Known fields of the shipped catalogues; anything else gets a profile from its bounds.
PROFILES: dict[str, Profile] = {
    "temperature": Profile(21.0, 3.0, 0.25),
    "humidity": Profile(62.0, 8.0, 1.0, peak_hour=4.0),
    "ph": Profile(6.0, 0.15, 0.04),
    "ec": Profile(1.6, 0.15, 0.03),
    "water_level": Profile(75.0, 8.0, 0.5, peak_hour=8.0),
    "water_temp": Profile(20.0, 1.0, 0.1),
    "light": Profile(0.0, 18000.0, 400.0, peak_hour=13.0, daylight_only=True),
    "conductivity": Profile(500.0, 40.0, 8.0),
    "flow_rate": Profile(1800.0, 120.0, 35.0),
    "intake_pressure": Profile(1300.0, 60.0, 15.0),
    "discharge_pressure": Profile(3100.0, 90.0, 25.0),
    "motor_current": Profile(62.0, 3.0, 1.2),
    "motor_temperature": Profile(92.0, 5.0, 0.8),
    "motor_power": Profile(260.0, 15.0, 4.0),
    "vibration": Profile(2.2, 0.4, 0.15),
}

DEVICE_PREFIX = {"hydroponics": "arduino_", "water_quality": "probe_", "oil_well": "WELL-"}


def profile_for(name: str, spec: FieldSpec) -> Profile:
    if name in PROFILES:
        return PROFILES[name]
    span = spec.max - spec.min
    centre = (spec.optimal.min + spec.optimal.max) / 2 if spec.optimal else spec.min + span / 2
    return Profile(centre, span * 0.02, span * 0.005)


def device_names(catalogue: Catalogue, count: int) -> list[str]:
    prefix = DEVICE_PREFIX.get(catalogue.name, "device_")
    return [f"{prefix}{i + 1:03d}" for i in range(count)]


@dataclass(frozen=True)
class SimulationSpec:
    start: datetime  # aware, UTC
    days: float
    devices: int
    hz: float
    seed: int = 42
    fields: tuple[str, ...] | None = None  # default: all catalogue fields
    bad_value_rate: float = 2e-4  # each of NaN / inf / out-of-bounds
    duplicate_rate: float = 2e-4
    gaps_per_device_day: float = 1.5

    @property
    def end(self) -> datetime:
        return self.start + timedelta(days=self.days)


def _chunks(spec: SimulationSpec, chunk: timedelta) -> Iterator[tuple[int, datetime, datetime]]:
    cursor, i = spec.start, 0
    while cursor < spec.end:
        nxt = min(cursor + chunk, spec.end)
        yield i, cursor, nxt
        cursor, i = nxt, i + 1


def _gaps(spec: SimulationSpec, devices: list[str]) -> dict[int, list[tuple[float, float]]]:
    """Silent periods per device, as (start, end) epoch seconds."""
    rng = np.random.default_rng([spec.seed, 7])
    t0, t1 = spec.start.timestamp(), spec.end.timestamp()
    gaps: dict[int, list[tuple[float, float]]] = {}
    for d in range(len(devices)):
        n = rng.poisson(spec.gaps_per_device_day * spec.days)
        starts = rng.uniform(t0, t1, n)
        lengths = rng.uniform(300, 1800, n)
        gaps[d] = [(s, s + ln) for s, ln in zip(starts, lengths, strict=True)]
    return gaps


def _generate_codes(
    catalogue: Catalogue, spec: SimulationSpec, chunk: timedelta = timedelta(hours=1)
) -> Iterator[tuple[pd.DataFrame, np.ndarray, list[str], list[str]]]:
    """Per chunk, in time order: a frame of (epoch, device index, field index, value), the
    readings' times (datetime64[ns], UTC), and the device and field names the indexes
    point into. generate() and write() both read this, so they write the same rows."""
    fields = list(spec.fields or catalogue.fields)
    unknown = [f for f in fields if f not in catalogue.fields]
    if unknown:
        raise ValueError(f"fields not in catalogue {catalogue.name!r}: {unknown}")
    devices = device_names(catalogue, spec.devices)
    gaps = _gaps(spec, devices)
    period = 1.0 / spec.hz
    n_dev, n_fld = len(devices), len(fields)
    profiles = [profile_for(f, catalogue.fields[f]) for f in fields]
    level = np.array([p.level for p in profiles])
    swing = np.array([p.swing for p in profiles])
    noise = np.array([p.noise for p in profiles])
    peak = np.array([p.peak_hour for p in profiles])
    daylight = np.array([p.daylight_only for p in profiles])
    hi = np.array([catalogue.fields[f].max for f in fields])
    lo = np.array([catalogue.fields[f].min for f in fields])
    # Per-device character: a fixed offset and phase, and a time offset so devices do not
    # all report on the same instant.
    rng0 = np.random.default_rng([spec.seed, 1])
    dev_offset = rng0.normal(0.0, 0.05, (n_dev, n_fld)) * np.maximum(swing, noise * 4)
    dev_phase = rng0.uniform(-0.5, 0.5, (n_dev, 1))
    dev_shift = np.round(rng0.uniform(0.0, period, n_dev), 6)
    ar_state = np.zeros((n_dev, n_fld))

    t_start = spec.start.timestamp()
    for index, c_start, c_end in _chunks(spec, chunk):
        rng = np.random.default_rng([spec.seed, 100 + index])
        first = math.ceil((c_start.timestamp() - t_start) / period)
        last = math.ceil((c_end.timestamp() - t_start) / period)
        ticks = t_start + np.arange(first, last) * period  # (T,)
        if ticks.size == 0:
            continue
        times = ticks[:, None] + dev_shift[None, :]  # (T, D)
        hours = (times % 86400.0) / 3600.0
        # Daily cycle, plus AR(1) noise carried across chunks.
        cycle = np.cos(2 * np.pi * (hours[:, :, None] - peak - dev_phase[None, :, :]) / 24.0)
        values = level + dev_offset[None] + swing * cycle
        values = np.where(daylight, np.clip(swing * cycle, 0.0, None) * 1.0, values)
        eps = rng.normal(0.0, 1.0, values.shape) * noise
        phi = 0.9
        ar = np.empty_like(values)
        state = ar_state
        for t in range(values.shape[0]):
            state = phi * state + math.sqrt(1 - phi * phi) * eps[t]
            ar[t] = state
        ar_state = state
        values = np.clip(values + ar, lo, hi)

        frame = pd.DataFrame(
            {
                "epoch": np.repeat(times.reshape(-1), n_fld),
                "device": np.repeat(np.tile(np.arange(n_dev), ticks.size), n_fld),
                "field": np.tile(np.arange(n_fld), ticks.size * n_dev),
                "value": values.reshape(-1),
            }
        )
        # Gaps on the (tick, device) grid, then repeated per field: the frame's rows are
        # that grid in order, n_fld rows per cell. (Masking the whole frame once per gap
        # cost O(devices x rows): minutes per day for a fleet of thousands of devices.)
        silent = np.zeros(times.shape, dtype=bool)
        for d, spans in gaps.items():
            for g0, g1 in spans:
                if g1 < c_start.timestamp() or g0 > c_end.timestamp():
                    continue
                silent[:, d] |= (times[:, d] >= g0) & (times[:, d] <= g1)
        frame = frame[~np.repeat(silent.reshape(-1), n_fld)].reset_index(drop=True)

        n = len(frame)
        for kind in ("nan", "inf", "oob"):
            idx = rng.choice(n, size=rng.binomial(n, spec.bad_value_rate), replace=False)
            if kind == "nan":
                frame.loc[idx, "value"] = np.nan
            elif kind == "inf":
                frame.loc[idx, "value"] = np.inf
            else:
                f_idx = frame.loc[idx, "field"].to_numpy()
                frame.loc[idx, "value"] = hi[f_idx] + (hi[f_idx] - lo[f_idx]) + 1.0
        dup_idx = rng.choice(n, size=rng.binomial(n, spec.duplicate_rate), replace=False)
        frame = pd.concat([frame, frame.loc[dup_idx]]).sort_values("epoch", kind="stable")
        stamps = pd.to_datetime(np.round(frame["epoch"].to_numpy(), 6), unit="s", utc=True)
        yield frame, stamps, devices, fields


def generate(
    catalogue: Catalogue, spec: SimulationSpec, chunk: timedelta = timedelta(hours=1)
) -> Iterator[pd.DataFrame]:
    """DataFrames of (time, device, field, value), in time order, one per chunk."""
    for frame, stamps, devices, fields in _generate_codes(catalogue, spec, chunk):
        yield pd.DataFrame(
            {
                "time": stamps,
                "device": np.array(devices, dtype=object)[frame["device"].to_numpy()],
                "field": np.array(fields, dtype=object)[frame["field"].to_numpy()],
                "value": frame["value"].to_numpy(),
            }
        )


# PostgreSQL's binary COPY: the signature, flags and header extension; the trailer.
_PGCOPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
_PGCOPY_TRAILER = (-1).to_bytes(2, "big", signed=True)
# One staged row: 4 columns, each a length then big-endian data (timestamptz: int8
# microseconds since 2000-01-01 UTC; the device and field indexes: int4; value: float8).
_STAGE_ROW = np.dtype(
    [
        ("ncols", ">i2"),
        ("t_len", ">i4"),
        ("t", ">i8"),
        ("d_len", ">i4"),
        ("d", ">i4"),
        ("f_len", ">i4"),
        ("f", ">i4"),
        ("v_len", ">i4"),
        ("v", ">f8"),
    ]
)
_PG_EPOCH_S = 946_684_800  # 2000-01-01 00:00:00 UTC in Unix seconds


def _pg_microseconds(stamps: pd.DatetimeIndex) -> np.ndarray:
    """PostgreSQL's timestamp of each nanosecond time as it reads the text form: whole
    seconds, plus rint(fraction x 1e6) of the fraction parsed as a double (datetime.c's
    ParseFractionalSecond), so the rows equal what the CSV path wrote."""
    ns = stamps.asi8
    seconds, frac_ns = np.divmod(ns, 1_000_000_000)
    micro = np.rint((frac_ns / 1e9) * 1_000_000).astype(np.int64)
    return (seconds - _PG_EPOCH_S) * 1_000_000 + micro


def _copy_payload(frame: pd.DataFrame, stamps: pd.DatetimeIndex) -> bytes:
    rows = np.empty(len(frame), dtype=_STAGE_ROW)
    rows["ncols"] = 4
    rows["t_len"], rows["d_len"], rows["f_len"], rows["v_len"] = 8, 4, 4, 8
    rows["t"] = _pg_microseconds(stamps)
    rows["d"] = frame["device"].to_numpy() + 1  # SQL arrays count from 1
    rows["f"] = frame["field"].to_numpy() + 1
    rows["v"] = frame["value"].to_numpy()
    return _PGCOPY_HEADER + rows.tobytes() + _PGCOPY_TRAILER


def write(
    engine: sa.Engine,
    catalogue: Catalogue,
    spec: SimulationSpec,
    progress: Callable[[int, datetime], None] | None = None,
) -> int:
    """Write the simulated readings into the catalogue's raw table; return the row count.

    Each chunk is built as binary COPY rows by numpy (times, device and field indexes,
    values) into a temporary table, then moved into the raw table in one INSERT ... SELECT
    that names the device and field: the same rows, in the same order, one statement per
    chunk as a COPY per chunk was. Formatting CSV in pandas cost ~5 us a reading, most of
    a seed's time (a day of 20 devices x 5 fields at 1 Hz: 8.6 M readings)."""
    src = catalogue.source
    table = statements.quote_ident(src.table)
    cols = ", ".join(
        statements.quote_ident(c)
        for c in (src.time_column, src.device_column, src.field_column, src.value_column)
    )
    total = 0
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cur:
            # The session zone UTC: a raw table whose time column is a timestamp without
            # time zone gets the UTC wall clock, as it did from the naive CSV times.
            cur.execute("SET TIME ZONE 'UTC'")
            # The INSERT reads the staging table in the order COPY wrote it: a synchronized
            # scan could start it mid-table.
            cur.execute("SET synchronize_seqscans = off")
            cur.execute(
                "CREATE TEMP TABLE IF NOT EXISTS _simulated_readings "
                "(t timestamptz, d int4, f int4, v float8)"
            )
            cur.execute("TRUNCATE _simulated_readings")
            for frame, stamps, devices, fields in _generate_codes(catalogue, spec):
                cur.copy_expert(
                    "COPY _simulated_readings FROM STDIN WITH (FORMAT binary)",
                    io.BytesIO(_copy_payload(frame, stamps)),
                )
                # name[], not text[]: a name is fixed-width (64 bytes), so the subscript is
                # O(1); in a text[] it walks the array (4x slower for 2,000 devices).
                if max(len(n.encode()) for n in (*devices, *fields)) > 63:
                    raise ValueError("device and field names of the simulator: 63 bytes at most")
                cur.execute(
                    f"INSERT INTO {table} ({cols}) SELECT t, (%(devices)s::name[])[d]::text, "
                    "(%(fields)s::name[])[f]::text, v FROM _simulated_readings",
                    {"devices": devices, "fields": fields},
                )
                cur.execute("TRUNCATE _simulated_readings")
                total += len(frame)
                if progress:
                    progress(total, stamps[-1].floor("us").to_pydatetime())
            cur.execute("DROP TABLE _simulated_readings")
        raw.commit()
    finally:
        raw.close()
    return total


# Demo crop: butterhead lettuce stages and one open-ended batch, so conditions are computed
# out of the box on simulated data. Written by `agg-pipeline seed`, never by `migrate`: in a
# user's database an always-active demo batch would widen the real crops' optimal ranges.
DEMO_BATCH = ("DEMO-LETTUCE-1", "lettuce", "vegetative", date(2025, 1, 1))
DEMO_STAGES = [
    ("lettuce", "seedling", 1, "temperature", 18.0, 24.0),
    ("lettuce", "seedling", 1, "humidity", 60.0, 75.0),
    ("lettuce", "seedling", 1, "ph", 5.8, 6.3),
    ("lettuce", "seedling", 1, "ec", 0.8, 1.2),
    ("lettuce", "vegetative", 2, "temperature", 17.0, 24.0),
    ("lettuce", "vegetative", 2, "humidity", 50.0, 70.0),
    ("lettuce", "vegetative", 2, "ph", 5.5, 6.5),
    ("lettuce", "vegetative", 2, "ec", 1.2, 2.0),
    ("lettuce", "mature", 3, "temperature", 16.0, 22.0),
    ("lettuce", "mature", 3, "humidity", 50.0, 70.0),
    ("lettuce", "mature", 3, "ph", 5.5, 6.5),
    ("lettuce", "mature", 3, "ec", 1.5, 2.2),
]


def write_demo_crops(engine: sa.Engine) -> int:
    """Insert the demo lettuce stages and batch where absent (repeatable; never changes a
    row that exists); return how many rows were new."""
    keys = ("crop_name", "stage_name", "stage_order", "field", "optimal_min", "optimal_max")
    with engine.begin() as conn:
        stages = conn.execute(
            sa.text(
                "INSERT INTO crop.growth_stage_definitions "
                "(crop_name, stage_name, stage_order, field, optimal_min, optimal_max) "
                "VALUES (:crop_name, :stage_name, :stage_order, :field, :optimal_min, "
                ":optimal_max) ON CONFLICT (crop_name, stage_name, field) DO NOTHING"
            ),
            [dict(zip(keys, row, strict=True)) for row in DEMO_STAGES],
        ).rowcount
        code, crop, stage, started = DEMO_BATCH
        batches = conn.execute(
            sa.text(
                "INSERT INTO crop.batches (batch_code, crop_name, stage_name, started_on) "
                "VALUES (:c, :crop, :stage, :started) ON CONFLICT (batch_code) DO NOTHING"
            ),
            {"c": code, "crop": crop, "stage": stage, "started": started},
        ).rowcount
    return max(stages, 0) + max(batches, 0)


def default_start(days: float, now: datetime | None = None) -> datetime:
    """Start of a simulation covering the last ``days`` days up to the current hour."""
    now = now or datetime.now(UTC)
    return now.replace(minute=0, second=0, microsecond=0) - timedelta(days=days)


# --------------------------------------------------------------------------------------
# Diagnostics
# --------------------------------------------------------------------------------------

DIAGNOSIS_TYPES = {
    "oil_well": (
        "normal_operation",
        "gas_lock",
        "pump_wear",
        "sand_production",
        "low_intake_pressure",
    ),
    "hydroponics": ("normal_operation", "ph_drift", "ec_drift", "pump_failure", "sensor_fault"),
}
SEVERITIES = ("info", "low", "medium", "high", "critical")


def write_diagnostics(
    engine: sa.Engine,
    catalogue: Catalogue,
    start: datetime,
    days: float,
    devices: int,
    per_device_per_day: float = 24.0,
    seed: int = 42,
    bad_rate: float = 0.01,
) -> int:
    """Random diagnoses per device (Poisson), with a few invalid rows on purpose."""
    rng = np.random.default_rng([seed, 77])
    types = DIAGNOSIS_TYPES.get(catalogue.name, DIAGNOSIS_TYPES["oil_well"])
    names = device_names(catalogue, devices)
    rows = []
    span = days * 86400
    for device in names:
        n = rng.poisson(per_device_per_day * days)
        offsets = np.sort(rng.uniform(0, span, n))
        kinds = rng.choice(len(types), n, p=[0.6] + [0.4 / (len(types) - 1)] * (len(types) - 1))
        severity = rng.choice(len(SEVERITIES), n, p=[0.4, 0.25, 0.18, 0.12, 0.05])
        confidence = np.round(rng.beta(8, 2, n), 4)
        for off, k, sv, conf in zip(offsets, kinds, severity, confidence, strict=True):
            c: float | None = float(conf)
            roll = rng.random()
            if roll < bad_rate / 2:
                c = 1.5  # impossible confidence
            elif roll < bad_rate:
                c = None
            rows.append(
                {
                    "t": start + timedelta(seconds=float(off)),
                    "d": device,
                    "k": types[k],
                    "s": SEVERITIES[sv],
                    "c": c,
                    "x": '{"source": "simulator"}',
                }
            )
    with engine.begin() as conn:
        if rows:
            conn.execute(
                sa.text(
                    "INSERT INTO raw.diagnostics (time, device, diagnosis_type, severity, "
                    "confidence, details) VALUES (:t, :d, :k, :s, :c, CAST(:x AS jsonb))"
                ),
                rows,
            )
    return len(rows)
