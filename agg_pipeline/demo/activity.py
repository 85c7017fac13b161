"""Simulated workspaces, users, executions, user activity and credit usage.

For demos and tests of the event rollups (raw.executions, raw.user_activity,
raw.credit_usage): executions follow a daily rhythm, mostly succeed (about 7 % fail, 3 %
are cancelled), and their durations are log-normal with a long tail (a few run 20x the
median); credits follow duration. A small share of executions is delivered twice (same
id: an at-least-once queue), which the rollups count once.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import sqlalchemy as sa

ACTIONS = ("login", "view_dashboard", "run_workflow", "edit_workflow", "export", "invite")
STATUSES = ("success", "failed", "cancelled")


@dataclass(frozen=True)
class Activity:
    executions: list[tuple]  # (id, time, workspace_id, user_id, status, duration_ms, credits)
    user_activity: list[tuple]  # (time, workspace_id, user_id, action)
    credit_usage: list[tuple]  # (time, workspace_id, user_id, credits)


def simulate(
    start: datetime,
    days: float,
    workspaces: int = 5,
    users_per_workspace: int = 4,
    executions_per_hour: float = 20.0,
    duplicate_share: float = 0.01,
    seed: int = 42,
    first_id: int = 1,
) -> Activity:
    """Events from ``start`` (timezone-aware) for ``days`` days, deterministic per seed."""
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    rng = np.random.default_rng(seed)
    start = start.astimezone(UTC)
    hours = max(1, math.ceil(days * 24))
    users = [
        (f"ws-{w:03d}", f"user-{w:03d}-{u:02d}")
        for w in range(workspaces)
        for u in range(users_per_workspace)
    ]
    executions, activity, credits = [], [], []
    next_id = first_id
    for h in range(hours):
        hour = start + timedelta(hours=h)
        rhythm = 0.3 + 0.7 * max(0.0, math.sin(math.pi * ((hour.hour - 6) % 24) / 16))
        n = int(rng.poisson(executions_per_hour * rhythm))
        offsets = np.sort(rng.uniform(0, 3600, n))
        who = rng.integers(0, len(users), n)
        status = rng.choice(3, n, p=[0.9, 0.07, 0.03])
        duration = rng.lognormal(mean=math.log(2000), sigma=0.6, size=n)
        tail = rng.random(n) < 0.02
        duration[tail] *= 20
        for i in range(n):
            ws, user = users[who[i]]
            t = hour + timedelta(seconds=float(offsets[i]))
            d = float(round(duration[i], 3))
            row = (next_id, t, ws, user, STATUSES[status[i]], d, round(d / 1000 * 0.05, 6))
            executions.append(row)
            if rng.random() < duplicate_share:
                executions.append(row)  # delivered twice
            next_id += 1
        for _ in range(int(rng.poisson(len(users) * 0.5 * rhythm))):
            ws, user = users[int(rng.integers(0, len(users)))]
            t = hour + timedelta(seconds=float(rng.uniform(0, 3600)))
            activity.append((t, ws, user, ACTIONS[int(rng.integers(0, len(ACTIONS)))]))
        for _ in range(int(rng.poisson(len(users) * 0.25 * rhythm))):
            ws, user = users[int(rng.integers(0, len(users)))]
            t = hour + timedelta(seconds=float(rng.uniform(0, 3600)))
            credits.append((t, ws, user, round(float(rng.exponential(0.5)), 6)))
    return Activity(executions, activity, credits)


_TABLES = {
    "executions": (
        "raw.executions",
        "id, time, workspace_id, user_id, status, duration_ms, credits",
    ),
    "user_activity": ("raw.user_activity", "time, workspace_id, user_id, action"),
    "credit_usage": ("raw.credit_usage", "time, workspace_id, user_id, credits"),
}


def _csv(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return value


def write(engine: sa.Engine, events: Activity) -> dict[str, int]:
    """COPY the events into the raw tables (one transaction); rows written per table."""
    raw = engine.raw_connection()
    written = {}
    try:
        with raw.cursor() as cur:
            for name, (table, cols) in _TABLES.items():
                rows = getattr(events, name)
                buf = io.StringIO()
                w = csv.writer(buf)
                for row in rows:
                    w.writerow([_csv(v) for v in row])
                buf.seek(0)
                cur.copy_expert(f"COPY {table} ({cols}) FROM STDIN WITH (FORMAT csv)", buf)
                written[table] = len(rows)
        raw.commit()
    finally:
        raw.close()
    return written


def next_execution_id(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text("SELECT COALESCE(max(id), 0) + 1 FROM raw.executions")
            ).scalar_one()
        )
