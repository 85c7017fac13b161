"""Daily pattern detectors over home-automation state changes. Pure Python, no I/O.

Input: the state changes of one local day (plus each entity's last state before it), as
``Event(time, entity_id, domain, area_id, state, seq)`` where ``seq`` is the ingestion order.

Definitions (all scores in [0, 1] unless said otherwise):

- An entity is *active* in a state listed in ``EventRules.active_states`` (on, open,
  playing, home, detected, ...), or - for a numeric state - when the value exceeds its
  domain's threshold. It is *inactive* in ``inactive_states`` or below the threshold.
  Any other state (``unavailable``, ``unknown``, typos) is *unknown*: counted, ignored.
- An *activation* is a change from inactive (or nothing known) to active. A repeated
  active state is not a new activation.
- An *active interval* lasts from an activation to the next inactive state. Intervals
  are cut at the day's boundaries: one still open at midnight ends there (and the next
  day's interval starts at its midnight, from the carried-over state).

Bad input is handled deterministically and counted: duplicates (same entity, time and
state) count once; events are ordered by (time, seq) - an event stamped earlier than one
ingested before it is *out of order* (counted, then placed by its time); events stamped
more than the tolerance in the future are dropped; entities without an area go to the
``unassigned`` area.
"""

from __future__ import annotations

import hashlib
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

UNASSIGNED = "unassigned"


@dataclass(frozen=True)
class Event:
    time: datetime
    entity_id: str
    domain: str
    area_id: str | None
    state: str
    seq: int = 0


@dataclass(frozen=True)
class EventRules:
    active_states: frozenset[str] = frozenset(
        {"on", "open", "playing", "home", "detected", "active", "unlocked", "heat", "cool"}
    )
    inactive_states: frozenset[str] = frozenset(
        {
            "off",
            "closed",
            "idle",
            "paused",
            "not_home",
            "away",
            "clear",
            "standby",
            "locked",
            "stopped",
        }
    )
    numeric_thresholds: dict[str, float] = field(default_factory=lambda: {"sensor": 10.0})
    co_occurrence_window_s: float = 300.0
    sequence_max_gap_s: float = 120.0
    transition_window_s: float = 300.0
    min_support: int = 2  # co-occurrences / sequence repeats in a day
    min_confidence: float = 0.5
    anomaly_threshold: float = 3.0  # |deviation| from the baseline, in baseline stddevs
    anomaly_min_baseline_days: int = 5

    def classify(self, domain: str, state: str) -> str:
        """'active', 'inactive' or 'unknown'."""
        s = state.strip().lower()
        if s in self.active_states:
            return "active"
        if s in self.inactive_states:
            return "inactive"
        threshold = self.numeric_thresholds.get(domain)
        if threshold is not None:
            try:
                value = float(s)
            except ValueError:
                return "unknown"
            if math.isfinite(value):
                return "active" if value > threshold else "inactive"
        return "unknown"


@dataclass
class Activation:
    entity_id: str
    domain: str
    area_id: str
    time: datetime


@dataclass
class Interval:
    entity_id: str
    start: datetime
    end: datetime

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()


@dataclass
class DayEvents:
    """A day's events, cleaned: activations, intervals and what was set aside."""

    day: date
    activations: list[Activation]
    intervals: list[Interval]
    domains: dict[str, str]
    areas: dict[str, str]
    counts: Counter


def prepare(
    events: Iterable[Event],
    day: date,
    zone: ZoneInfo,
    rules: EventRules,
    carried: dict[str, Event] | None = None,
    latest_allowed: datetime | None = None,
) -> DayEvents:
    """Clean the day's events and derive activations and active intervals.

    ``carried``: each entity's last event before the day (its state at midnight).
    """
    # All instants in UTC: Python subtracts two datetimes sharing a tzinfo by wall clock,
    # which would make a session across a DST change an hour too short or long.
    start = datetime.combine(day, datetime.min.time(), tzinfo=zone).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=zone).astimezone(
        UTC
    )
    events = [
        Event(e.time.astimezone(UTC), e.entity_id, e.domain, e.area_id, e.state, e.seq)
        for e in events
    ]
    counts: Counter = Counter()
    seen: set[tuple[str, datetime, str]] = set()
    latest_by_entity: dict[str, datetime] = {}
    kept: list[Event] = []
    for e in sorted(events, key=lambda e: e.seq):
        counts["events"] += 1
        if latest_allowed is not None and e.time > latest_allowed:
            counts["future"] += 1
            continue
        if not (start <= e.time < end):
            counts["outside_day"] += 1
            continue
        key = (e.entity_id, e.time, e.state)
        if key in seen:
            counts["duplicate"] += 1
            continue
        seen.add(key)
        if e.entity_id in latest_by_entity and e.time < latest_by_entity[e.entity_id]:
            counts["out_of_order"] += 1
        latest_by_entity[e.entity_id] = max(latest_by_entity.get(e.entity_id, e.time), e.time)
        kept.append(e)
    kept.sort(key=lambda e: (e.time, e.seq))

    domains: dict[str, str] = {}
    areas: dict[str, str] = {}
    active_since: dict[str, datetime] = {}
    for entity, e in (carried or {}).items():
        domains[entity] = e.domain
        areas[entity] = e.area_id or UNASSIGNED
        if rules.classify(e.domain, e.state) == "active":
            active_since[entity] = start  # active at midnight: the interval starts here
    activations: list[Activation] = []
    intervals: list[Interval] = []
    no_area: set[str] = set()
    for e in kept:
        domains[e.entity_id] = e.domain
        area = e.area_id or UNASSIGNED
        if not e.area_id:
            no_area.add(e.entity_id)
        areas[e.entity_id] = area
        kind = rules.classify(e.domain, e.state)
        if kind == "unknown":
            counts["unknown_state"] += 1
            continue
        if kind == "active":
            if e.entity_id in active_since:
                counts["repeated_active"] += 1
                continue
            active_since[e.entity_id] = e.time
            activations.append(Activation(e.entity_id, e.domain, area, e.time))
        elif e.entity_id in active_since:
            intervals.append(Interval(e.entity_id, active_since.pop(e.entity_id), e.time))
    for entity, since in active_since.items():
        intervals.append(Interval(entity, since, end))  # still active at midnight: cut
    counts["no_area_entities"] = len(no_area)
    counts["activations"] = len(activations)
    return DayEvents(day, activations, intervals, domains, areas, counts)


def _local_hour(t: datetime, zone: ZoneInfo) -> int:
    return t.astimezone(zone).hour


def _top_hours(hours: Counter, limit: int = 3) -> list[int]:
    """The hours with the most events, most first (ties: earlier hour first)."""
    return [h for h, n in sorted(hours.items(), key=lambda x: (-x[1], x[0])) if n > 0][:limit]


# --------------------------------------------------------------------------------------
# 1. Time-based
# --------------------------------------------------------------------------------------


def time_based(d: DayEvents, zone: ZoneInfo) -> list[dict]:
    """Per entity with activations:

    - ``hourly_distribution``: 24 activation counts by local hour (index = hour; on a
      25-hour DST day the repeated hour adds to the same index);
    - ``occurrences``: activations in the day;
    - ``peak_hours``: up to 3 hours with the most activations;
    - ``confidence``: share of the activations that fall in ``peak_hours`` - 1.0 when the
      entity is only ever activated in at most 3 hours (time-bound), ~0.12 for activations
      spread evenly over the day;
    - ``frequency``: share of the day's hours with at least one activation - 1.0 active
      every hour, 1/24 active in a single hour.
    """
    by_entity: dict[str, Counter] = defaultdict(Counter)
    for a in d.activations:
        by_entity[a.entity_id][_local_hour(a.time, zone)] += 1
    out = []
    for entity, hours in sorted(by_entity.items()):
        n = sum(hours.values())
        peaks = _top_hours(hours)
        out.append(
            {
                "entity_id": entity,
                "domain": d.domains.get(entity, entity.split(".")[0]),
                "hourly_distribution": [hours.get(h, 0) for h in range(24)],
                "peak_hours": peaks,
                "occurrences": n,
                "confidence": sum(hours[h] for h in peaks) / n,
                "frequency": sum(1 for h in range(24) if hours.get(h)) / 24,
            }
        )
    return out


# --------------------------------------------------------------------------------------
# 2. Co-occurrence
# --------------------------------------------------------------------------------------


def co_occurrence(d: DayEvents, zone: ZoneInfo, rules: EventRules) -> list[dict]:
    """Per unordered pair of entities (a < b) activated within ``window`` of each other:

    - ``co_occurrence_count``: activations of a and b paired one-to-one, in time order,
      when they lie within the window (each activation used at most once);
    - ``confidence``: count / activations of the rarer of the two - 1.0 when every
      activation of the rarer entity came with the other;
    - ``typical_hours``: up to 3 local hours in which the pairs happened, most first.

    Kept when count >= min_support and confidence >= min_confidence.
    """
    window = timedelta(seconds=rules.co_occurrence_window_s)
    by_entity: dict[str, list[datetime]] = defaultdict(list)
    for a in d.activations:
        by_entity[a.entity_id].append(a.time)
    entities = sorted(by_entity)
    out = []
    for i, ea in enumerate(entities):
        for eb in entities[i + 1 :]:
            ta, tb = by_entity[ea], by_entity[eb]
            pairs = _match(ta, tb, window)
            if not pairs:
                continue
            confidence = len(pairs) / min(len(ta), len(tb))
            if len(pairs) < rules.min_support or confidence < rules.min_confidence:
                continue
            hours = Counter(_local_hour(min(x, y), zone) for x, y in pairs)
            out.append(
                {
                    "entity_a": ea,
                    "entity_b": eb,
                    "device_pair": f"{ea}+{eb}",
                    "co_occurrence_count": len(pairs),
                    "time_window_seconds": int(rules.co_occurrence_window_s),
                    "confidence": confidence,
                    "typical_hours": _top_hours(hours),
                }
            )
    return out


def _match(
    ta: Sequence[datetime], tb: Sequence[datetime], window: timedelta
) -> list[tuple[datetime, datetime]]:
    """Greedy one-to-one matching of two sorted time lists within ``window``."""
    pairs, i, j = [], 0, 0
    while i < len(ta) and j < len(tb):
        if abs(ta[i] - tb[j]) <= window:
            pairs.append((ta[i], tb[j]))
            i += 1
            j += 1
        elif ta[i] < tb[j]:
            i += 1
        else:
            j += 1
    return pairs


# --------------------------------------------------------------------------------------
# 3. Sequences
# --------------------------------------------------------------------------------------


def sequence_id(chain: Sequence[str]) -> str:
    """Stable id of a chain: the first 16 hex digits of sha1("a>b>c")."""
    return hashlib.sha1(">".join(chain).encode()).hexdigest()[:16]


def sequences(d: DayEvents, rules: EventRules) -> list[dict]:
    """Ordered chains of 2 or 3 distinct entities, each activated within ``max_gap`` after
    the previous one. From every activation, the chain follows the *next* activation of
    another entity (then of a third) if it comes within the gap:

    - ``frequency``: times the chain happened in the day;
    - ``avg_duration_seconds``: mean time from the first to the last activation;
    - ``confidence``: frequency / activations of the chain's first entity - 1.0 when every
      activation of the first entity was followed by the chain;
    - ``sequence_id``: stable hash of the chain.

    Kept when frequency >= min_support and confidence >= min_confidence.
    """
    gap = timedelta(seconds=rules.sequence_max_gap_s)
    acts = sorted(d.activations, key=lambda a: a.time)
    starts = Counter(a.entity_id for a in acts)
    found: dict[tuple[str, ...], list[float]] = defaultdict(list)
    for i, first in enumerate(acts):
        chain, last_time = [first.entity_id], first.time
        for nxt in acts[i + 1 :]:
            if nxt.time - last_time > gap:
                break
            if nxt.entity_id in chain:
                continue
            chain.append(nxt.entity_id)
            found[tuple(chain)].append((nxt.time - first.time).total_seconds())
            last_time = nxt.time
            if len(chain) == 3:
                break
    out = []
    for chain, durations in sorted(found.items()):
        freq = len(durations)
        confidence = freq / starts[chain[0]]
        if freq < rules.min_support or confidence < rules.min_confidence:
            continue
        out.append(
            {
                "sequence_id": sequence_id(chain),
                "sequence": list(chain),
                "frequency": freq,
                "avg_duration_seconds": statistics.fmean(durations),
                "confidence": confidence,
            }
        )
    return out


# --------------------------------------------------------------------------------------
# 4. Room-based
# --------------------------------------------------------------------------------------


def room_based(d: DayEvents, zone: ZoneInfo, rules: EventRules) -> list[dict]:
    """Per area with activations:

    - ``activity_level``: the area's activations / the busiest area's - 1.0 for the
      busiest area of the day;
    - ``device_usage``: activations per entity of the area;
    - ``transition_patterns``: moves out of this area - consecutive activations (home-wide,
      in time order) in a different area within ``transition_window`` - as
      ``[{"to": area, "count": n}]``, most first;
    - ``peak_activity_hours``: up to 3 local hours with the most activations.
    """
    by_area: dict[str, Counter] = defaultdict(Counter)
    hours: dict[str, Counter] = defaultdict(Counter)
    for a in d.activations:
        by_area[a.area_id][a.entity_id] += 1
        hours[a.area_id][_local_hour(a.time, zone)] += 1
    moves: dict[str, Counter] = defaultdict(Counter)
    acts = sorted(d.activations, key=lambda a: a.time)
    window = timedelta(seconds=rules.transition_window_s)
    for prev, nxt in zip(acts, acts[1:], strict=False):
        if prev.area_id != nxt.area_id and nxt.time - prev.time <= window:
            moves[prev.area_id][nxt.area_id] += 1
    busiest = max((sum(c.values()) for c in by_area.values()), default=0)
    out = []
    for area, usage in sorted(by_area.items()):
        out.append(
            {
                "area_id": area,
                "activity_level": sum(usage.values()) / busiest,
                "device_usage": dict(sorted(usage.items())),
                "transition_patterns": [
                    {"to": to, "count": n}
                    for to, n in sorted(moves[area].items(), key=lambda x: (-x[1], x[0]))
                ],
                "peak_activity_hours": _top_hours(hours[area]),
            }
        )
    return out


# --------------------------------------------------------------------------------------
# 5. Duration
# --------------------------------------------------------------------------------------


def durations(d: DayEvents) -> list[dict]:
    """Per entity with active intervals (cut at midnight):

    - ``avg/min/max_duration_seconds`` of the intervals, ``sessions`` their number;
    - ``duration_variance``: population variance of the durations (s^2);
    - ``efficiency_score``: regularity of the sessions, 1 / (1 + cv) with cv the
      coefficient of variation - 1.0 when every session lasts the same, 0.5 when the
      standard deviation equals the mean, towards 0 for wildly irregular use.
    """
    by_entity: dict[str, list[float]] = defaultdict(list)
    for iv in d.intervals:
        by_entity[iv.entity_id].append(iv.seconds)
    out = []
    for entity, secs in sorted(by_entity.items()):
        mean = statistics.fmean(secs)
        variance = statistics.pvariance(secs)
        cv = math.sqrt(variance) / mean if mean > 0 else 0.0
        out.append(
            {
                "entity_id": entity,
                "sessions": len(secs),
                "avg_duration_seconds": mean,
                "min_duration_seconds": min(secs),
                "max_duration_seconds": max(secs),
                "duration_variance": variance,
                "efficiency_score": 1.0 / (1.0 + cv),
            }
        )
    return out


# --------------------------------------------------------------------------------------
# 6. Anomaly
# --------------------------------------------------------------------------------------


def anomalies(
    today: dict[str, int],
    baseline: dict[date, dict[str, int]],
    rules: EventRules,
) -> list[dict]:
    """Per entity: today's activations against its trailing baseline.

    ``today``: entity -> activations today (from the time-based aggregates);
    ``baseline``: for each earlier day that was materialized, entity -> activations (an
    entity absent on a materialized day had 0 that day).

    - ``baseline_deviation`` = (today - mean) / sqrt(max(variance, mean) + 1): how far
      today lies from the baseline mean, in units of the larger of the observed spread and
      the spread a count with that mean shows by chance (Poisson: variance = mean); the
      +1 keeps a rarely used or perfectly regular entity from turning one or two extra
      activations into an anomaly;
    - ``anomaly_type``: ``activity_spike`` (above) or ``activity_drop`` (below);
    - ``anomaly_score`` = 1 - exp(-|deviation| / 3): 0 exactly typical, 0.63 at 3
      deviations, 0.86 at 6, towards 1;
    - ``severity``: low < 0.5 <= medium < 0.75 <= high < 0.9 <= critical (of the score).

    Reported when |deviation| >= anomaly_threshold and the baseline has at least
    ``anomaly_min_baseline_days`` days.
    """
    if len(baseline) < rules.anomaly_min_baseline_days:
        return []
    entities = set(today) | {e for day in baseline.values() for e in day}
    out = []
    for entity in sorted(entities):
        history = [day.get(entity, 0) for day in baseline.values()]
        mean = statistics.fmean(history)
        variance = statistics.variance(history) if len(history) > 1 else 0.0
        n = today.get(entity, 0)
        deviation = (n - mean) / math.sqrt(max(variance, mean) + 1.0)
        if abs(deviation) < rules.anomaly_threshold:
            continue
        score = 1.0 - math.exp(-abs(deviation) / 3.0)
        severity = (
            "critical"
            if score >= 0.9
            else "high"
            if score >= 0.75
            else "medium"
            if score >= 0.5
            else "low"
        )
        out.append(
            {
                "entity_id": entity,
                "anomaly_type": "activity_spike" if deviation > 0 else "activity_drop",
                "anomaly_score": score,
                "baseline_deviation": deviation,
                "occurrences": n,
                "severity": severity,
                "baseline_days": len(history),
                "baseline_mean": mean,
            }
        )
    return out
