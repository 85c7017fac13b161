"""A simulated home: state changes with planted patterns, noise and one unusual day.

Planted (what the detectors should find):

- weekday mornings ~07:00: ``light.kitchen`` on, then ``switch.coffee_maker`` 1-3 min
  later (also on some weekend mornings, later);
- evenings 18:00-23:00, 3-5 times: ``binary_sensor.hallway_motion`` detected, then
  ``light.porch`` on 10-60 s later (off after a few minutes);
- 4-8 times a day: ``binary_sensor.bathroom_motion`` -> ``light.bathroom`` (10-30 s)
  -> ``fan.bathroom`` (30-90 s);
- most nights (85 %): ``media_player.living_room_tv`` playing ~20:30 for ~2 h;
- ``person.alex`` not_home on weekdays 08:30-17:30.

Noise: a few entities switched at random times; ``sensor.washer_power`` (numeric,
active above 10 W) on random days. One day - the *burst day* - ``light.office`` is toggled
~60 times. A little bad input on purpose: unknown states, duplicate events, an entity
without an area, and events inserted out of order.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import sqlalchemy as sa

AREAS = ("kitchen", "living_room", "bedroom", "bathroom", "hallway", "porch", "office", "garage")
ENTITIES = {
    # entity: (domain, area)
    "light.kitchen": ("light", "kitchen"),
    "switch.coffee_maker": ("switch", "kitchen"),
    "binary_sensor.hallway_motion": ("binary_sensor", "hallway"),
    "light.porch": ("light", "porch"),
    "binary_sensor.bathroom_motion": ("binary_sensor", "bathroom"),
    "light.bathroom": ("light", "bathroom"),
    "fan.bathroom": ("fan", "bathroom"),
    "media_player.living_room_tv": ("media_player", "living_room"),
    "light.living_room": ("light", "living_room"),
    "light.bedroom": ("light", "bedroom"),
    "person.alex": ("person", None),  # no area: counted, goes to 'unassigned'
    "light.office": ("light", "office"),
    "switch.garage_heater": ("switch", "garage"),
    "cover.garage_door": ("cover", "garage"),
    "sensor.washer_power": ("sensor", "garage"),
    "light.hallway": ("light", "hallway"),
}
NOISE = (
    "light.office",
    "switch.garage_heater",
    "light.hallway",
    "light.bedroom",
    "light.living_room",
    "cover.garage_door",
)
OFF_STATE = {
    "binary_sensor": "clear",
    "media_player": "idle",
    "person": "not_home",
    "cover": "closed",
}
ON_STATE = {
    "binary_sensor": "detected",
    "media_player": "playing",
    "person": "home",
    "cover": "open",
}


@dataclass
class SimEvent:
    time: datetime
    entity_id: str
    state: str

    @property
    def domain(self) -> str:
        return ENTITIES[self.entity_id][0]

    @property
    def area_id(self) -> str | None:
        return ENTITIES[self.entity_id][1]


def _on(entity: str) -> str:
    return ON_STATE.get(ENTITIES[entity][0], "on")


def _off(entity: str) -> str:
    return OFF_STATE.get(ENTITIES[entity][0], "off")


def simulate(
    first_day: date, days: int, zone: ZoneInfo, seed: int = 42, burst_day: int | None = None
) -> list[SimEvent]:
    """Events for ``days`` local days from ``first_day``; the burst on day ``burst_day``
    (default: the second-to-last day)."""
    rng = np.random.default_rng(seed)
    burst = days - 2 if burst_day is None else burst_day
    out: list[SimEvent] = []

    def at(day: date, hour: float) -> datetime:
        return datetime.combine(day, datetime.min.time(), tzinfo=zone) + timedelta(hours=hour)

    def session(entity: str, start: datetime, seconds: float) -> None:
        out.append(SimEvent(start, entity, _on(entity)))
        out.append(SimEvent(start + timedelta(seconds=max(seconds, 1)), entity, _off(entity)))

    for i in range(days):
        day = first_day + timedelta(days=i)
        weekday = day.weekday() < 5
        # Morning routine: kitchen light -> coffee maker.
        if weekday or rng.random() < 0.5:
            t = at(day, (7.0 if weekday else 9.0) + rng.normal(0, 0.12))
            session("light.kitchen", t, rng.uniform(1500, 2700))
            session(
                "switch.coffee_maker",
                t + timedelta(seconds=rng.uniform(60, 180)),
                rng.uniform(600, 900),
            )
        # Evening: hallway motion -> porch light, several times.
        for _ in range(rng.integers(3, 6)):
            t = at(day, rng.uniform(18, 23))
            session("binary_sensor.hallway_motion", t, 30)
            session(
                "light.porch", t + timedelta(seconds=rng.uniform(10, 60)), rng.uniform(180, 300)
            )
        # Bathroom: motion -> light -> fan.
        for _ in range(rng.integers(4, 9)):
            t = at(day, rng.uniform(6, 23))
            session("binary_sensor.bathroom_motion", t, 60)
            tl = t + timedelta(seconds=rng.uniform(10, 30))
            session("light.bathroom", tl, rng.uniform(300, 900))
            session(
                "fan.bathroom", tl + timedelta(seconds=rng.uniform(30, 90)), rng.uniform(600, 1200)
            )
        # TV most nights, ~2 h.
        if rng.random() < 0.85:
            session(
                "media_player.living_room_tv",
                at(day, 20.5 + rng.normal(0, 0.4)),
                rng.normal(7200, 900),
            )
        # Away on weekdays.
        if weekday:
            out.append(SimEvent(at(day, 8.5 + rng.normal(0, 0.1)), "person.alex", "not_home"))
            out.append(SimEvent(at(day, 17.5 + rng.normal(0, 0.2)), "person.alex", "home"))
        # Washer on some days (numeric power readings).
        if rng.random() < 0.4:
            t = at(day, rng.uniform(9, 20))
            for k, watts in enumerate((2.0, 450.0, 1200.0, 380.0, 3.0)):
                out.append(
                    SimEvent(t + timedelta(minutes=12 * k), "sensor.washer_power", f"{watts:.1f}")
                )
        # Noise: random switching, independent of everything else.
        for entity in NOISE:
            for _ in range(rng.poisson(1.0)):
                session(entity, at(day, rng.uniform(0, 23.9)), rng.uniform(60, 3600))
        # The unusual day: the office light toggled again and again.
        if i == burst:
            for _ in range(60):
                session("light.office", at(day, rng.uniform(9, 17)), rng.uniform(5, 60))
        # Bad input, a little of each.
        out.append(SimEvent(at(day, rng.uniform(0, 24)), "light.living_room", "unavailable"))
        dup = out[int(rng.integers(0, len(out)))]
        out.append(SimEvent(dup.time, dup.entity_id, dup.state))
    return out


def write(engine: sa.Engine, events: list[SimEvent], seed: int = 42) -> int:
    """Insert events roughly in time order, with a few swapped (ingested out of order)."""
    rng = np.random.default_rng([seed, 5])
    ordered = sorted(events, key=lambda e: e.time)
    for k in rng.choice(len(ordered) - 1, size=max(1, len(ordered) // 200), replace=False):
        ordered[k], ordered[k + 1] = ordered[k + 1], ordered[k]
    rows = [
        {"t": e.time, "e": e.entity_id, "d": e.domain, "a": e.area_id, "s": e.state}
        for e in ordered
    ]
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO raw.events (time, entity_id, domain, area_id, state) "
                "VALUES (:t, :e, :d, :a, :s)"
            ),
            rows,
        )
    return len(rows)
