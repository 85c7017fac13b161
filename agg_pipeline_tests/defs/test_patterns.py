"""Pattern detectors: hand-built days with hand-computed answers, then a simulated home."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
import sqlalchemy as sa

from agg_pipeline.core import detectors as detect
from agg_pipeline.defs.assets import pattern_anomaly_daily, pattern_detectors
from agg_pipeline.demo import home_events as simulator_events
from agg_pipeline.influx.client import InfluxResource
from agg_pipeline.serving import patterns
from agg_pipeline.warehouse.engine import WarehouseResource

UTC_ZONE = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
DAY = date(2026, 11, 3)
R = detect.EventRules()


def at(hour: float, day: date = DAY, zone: ZoneInfo = UTC_ZONE) -> datetime:
    return datetime.combine(day, datetime.min.time(), tzinfo=zone) + timedelta(hours=hour)


def ev(hour, entity, state, seq=0, area="kitchen", day=DAY, zone=UTC_ZONE):
    return detect.Event(at(hour, day, zone), entity, entity.split(".")[0], area, state, seq)


def day_of(events, carried=None, day=DAY, zone=UTC_ZONE, rules=R):
    numbered = [
        detect.Event(e.time, e.entity_id, e.domain, e.area_id, e.state, e.seq or i)
        for i, e in enumerate(events, start=1)
    ]
    return detect.prepare(numbered, day, zone, rules, carried)


def test_time_based_by_hand():
    d = day_of(
        [
            ev(7.05, "light.a", "on"),
            ev(7.2, "light.a", "off"),
            ev(7.5, "light.a", "on"),
            ev(7.6, "light.a", "on"),  # repeat: not an activation
            ev(7.7, "light.a", "off"),
            ev(19.0, "light.a", "on"),
            ev(19.5, "light.a", "glitch"),  # unknown state
        ]
    )
    [row] = detect.time_based(d, UTC_ZONE)
    assert row["hourly_distribution"][7] == 2 and row["hourly_distribution"][19] == 1
    assert sum(row["hourly_distribution"]) == row["occurrences"] == 3
    assert row["peak_hours"] == [7, 19]
    assert row["confidence"] == 1.0 and row["frequency"] == pytest.approx(2 / 24)
    assert d.counts["repeated_active"] == 1 and d.counts["unknown_state"] == 1


def test_bad_input_is_counted_and_handled_deterministically():
    events = [
        ev(8.0, "light.a", "on", seq=1),
        ev(8.0, "light.a", "on", seq=2),  # duplicate
        ev(9.0, "light.a", "off", seq=4),
        ev(8.5, "light.a", "off", seq=5),  # ingested after 09:00: out of order
        ev(10.0, "switch.b", "on", seq=6, area=None),  # no area
        ev(30.0, "light.a", "on", seq=7),  # next day: not this day's
    ]
    d = detect.prepare(events, DAY, UTC_ZONE, R, None)
    assert d.counts["duplicate"] == 1 and d.counts["out_of_order"] == 1
    assert d.counts["no_area_entities"] == 1 and d.counts["outside_day"] == 1
    assert d.areas["switch.b"] == detect.UNASSIGNED
    # ordered by time: on 08:00, off 08:30 (the out-of-order event), off 09:00 ignored
    assert [(iv.start, iv.end) for iv in d.intervals if iv.entity_id == "light.a"] == [
        (at(8.0), at(8.5))
    ]
    assert detect.prepare(list(reversed(events)), DAY, UTC_ZONE, R, None).intervals[0].end == (
        at(8.5)
    )


def test_intervals_cross_midnight_and_numeric_thresholds():
    carried = {"media_player.tv": ev(-1.0, "media_player.tv", "playing")}
    d = day_of(
        [
            ev(0.75, "media_player.tv", "idle"),  # session from yesterday ends 00:45
            ev(23.0, "media_player.tv", "playing"),  # runs past midnight: cut at 24:00
            ev(9.0, "sensor.washer_power", "2.0"),
            ev(9.2, "sensor.washer_power", "450.0"),  # above 10 W: active
            ev(9.8, "sensor.washer_power", "3.0"),
        ],
        carried=carried,
    )
    rows = {r["entity_id"]: r for r in detect.durations(d)}
    tv = rows["media_player.tv"]
    assert tv["sessions"] == 2 and tv["min_duration_seconds"] == 2700  # 00:00-00:45
    assert tv["max_duration_seconds"] == 3600  # 23:00-24:00
    assert rows["sensor.washer_power"]["avg_duration_seconds"] == pytest.approx(0.6 * 3600)
    # only the 23:00 start is an activation today (the carried session began yesterday)
    assert {r["entity_id"]: r["occurrences"] for r in detect.time_based(d, UTC_ZONE)} == {
        "media_player.tv": 1,
        "sensor.washer_power": 1,
    }


def test_dst_day_durations_are_real_seconds():
    day = date(2025, 10, 26)  # Europe/Berlin: 25 hours
    d = day_of(
        [
            ev(1.5, "light.a", "on", day=day, zone=BERLIN),
            ev(3.5, "light.a", "off", day=day, zone=BERLIN),
        ],
        day=day,
        zone=BERLIN,
    )
    # 01:30 -> 03:30 local across the repeated 02:00 hour is 3 hours of real time
    assert detect.durations(d)[0]["avg_duration_seconds"] == 3 * 3600
    whole = day_of(
        [], carried={"light.b": ev(-1, "light.b", "on", day=day, zone=BERLIN)}, day=day, zone=BERLIN
    )
    assert detect.durations(whole)[0]["max_duration_seconds"] == 25 * 3600


def test_co_occurrence_by_hand():
    d = day_of(
        [
            ev(7.0, "light.a", "on"),
            ev(12.0, "light.a", "off"),
            ev(12.5, "light.a", "on"),
            ev(13.0, "light.a", "off"),
            ev(18.0, "light.a", "on"),
            ev(7.0 + 2 / 60, "switch.b", "on"),
            ev(8, "switch.b", "off"),
            ev(18.0 + 4 / 60, "switch.b", "on"),
            ev(19, "switch.b", "off"),
            ev(21.0, "switch.b", "on"),
        ]
    )
    [row] = detect.co_occurrence(d, UTC_ZONE, R)
    assert row["device_pair"] == "light.a+switch.b"
    assert row["co_occurrence_count"] == 2
    assert row["confidence"] == pytest.approx(2 / 3)
    assert row["typical_hours"] == [7, 18] and row["time_window_seconds"] == 300


def test_sequences_by_hand():
    events = []
    for h in (8.0, 14.0):
        events += [
            ev(h, "binary_sensor.m", "detected"),
            ev(h + 20 / 3600, "light.l", "on"),
            ev(h + 80 / 3600, "fan.f", "on"),
            ev(h + 0.5, "binary_sensor.m", "clear"),
            ev(h + 0.5, "light.l", "off"),
            ev(h + 0.5, "fan.f", "off"),
        ]
    events += [ev(20.0, "light.l", "on")]  # light alone: lowers light->fan confidence
    d = day_of(events)
    rows = {tuple(r["sequence"]): r for r in detect.sequences(d, R)}
    chain = rows[("binary_sensor.m", "light.l", "fan.f")]
    assert chain["frequency"] == 2 and chain["confidence"] == 1.0
    assert chain["avg_duration_seconds"] == pytest.approx(80)
    assert chain["sequence_id"] == detect.sequence_id(["binary_sensor.m", "light.l", "fan.f"])
    assert len(chain["sequence_id"]) == 16
    assert rows[("light.l", "fan.f")]["confidence"] == pytest.approx(2 / 3)


def test_room_based_by_hand():
    d = day_of(
        [
            ev(7.0, "light.k", "on", area="kitchen"),
            ev(7.01, "light.h", "on", area="hallway"),
            ev(7.02, "light.k2", "on", area="kitchen"),
            ev(20.0, "light.h2", "on", area="hallway"),
            ev(20.5, "light.k3", "on", area="kitchen"),
        ]
    )
    rows = {r["area_id"]: r for r in detect.room_based(d, UTC_ZONE, R)}
    assert rows["kitchen"]["activity_level"] == 1.0
    assert rows["hallway"]["activity_level"] == pytest.approx(2 / 3)
    assert rows["kitchen"]["transition_patterns"] == [{"to": "hallway", "count": 1}]
    assert rows["hallway"]["transition_patterns"] == [{"to": "kitchen", "count": 1}]
    assert rows["kitchen"]["device_usage"] == {"light.k": 1, "light.k2": 1, "light.k3": 1}
    assert rows["kitchen"]["peak_activity_hours"] == [7, 20]


def test_duration_scores_by_hand():
    d = day_of(
        [
            ev(1, "light.a", "on"),
            ev(1 + 60 / 3600, "light.a", "off"),
            ev(2, "light.a", "on"),
            ev(2 + 180 / 3600, "light.a", "off"),
        ]
    )
    [row] = detect.durations(d)
    assert row["avg_duration_seconds"] == pytest.approx(120)
    assert row["duration_variance"] == pytest.approx(3600)
    assert row["efficiency_score"] == pytest.approx(1 / (1 + 60 / 120))


def test_anomalies_by_hand():
    baseline = {date(2026, 11, 1) - timedelta(days=i): {"light.a": 5 + i % 2} for i in range(14)}
    spike = detect.anomalies({"light.a": 40}, baseline, R)
    assert len(spike) == 1
    row = spike[0]
    mean = 5.5
    variance = 0.2692307692307692  # sample variance of seven 5s and seven 6s
    assert row["baseline_mean"] == pytest.approx(mean)
    assert row["baseline_deviation"] == pytest.approx(
        (40 - mean) / (max(variance, mean) + 1) ** 0.5
    )
    assert row["anomaly_type"] == "activity_spike" and row["severity"] == "critical"
    assert detect.anomalies({"light.a": 7}, baseline, R) == []  # an ordinary day
    assert detect.anomalies({"light.a": 40}, dict(list(baseline.items())[:3]), R) == []


# ----------------------------------------------------------------------- simulated home


@pytest.fixture
def home(warehouse_url, engine):
    first = date(2026, 10, 10)
    events = simulator_events.simulate(first, 21, UTC_ZONE, seed=11)
    simulator_events.write(engine, events, seed=11)
    last = first + timedelta(days=20)
    result = dg.materialize(
        [pattern_detectors, pattern_anomaly_daily],
        resources={
            "warehouse": WarehouseResource(database_url=warehouse_url),
            "influx": InfluxResource(),
        },
        tags={
            "dagster/asset_partition_range_start": first.isoformat(),
            "dagster/asset_partition_range_end": last.isoformat(),
        },
    )
    assert result.success
    return first, last, result


def test_planted_patterns_found_and_noise_kept_out(home, engine):
    first, last, result = home
    seqs = patterns.query(engine, "sequence", first, last)
    assert not seqs.problems
    chains = {tuple(r.sequence) for r in seqs.rows}
    assert ("binary_sensor.bathroom_motion", "light.bathroom", "fan.bathroom") in chains
    assert ("binary_sensor.hallway_motion", "light.porch") in chains
    noise = set(simulator_events.NOISE)
    assert not [c for c in chains if noise & set(c)], "a noise entity made a sequence"
    pairs = patterns.query(engine, "co_occurrence", first, last).rows
    assert not [p for p in pairs if {p.entity_a, p.entity_b} & noise]
    # ranked first: the planted chains top every day's list by confidence x frequency
    for day in {r.day for r in seqs.rows}:
        ranked = sorted(
            (r for r in seqs.rows if r.day == day), key=lambda r: -r.confidence * r.frequency
        )
        assert set(ranked[0].sequence) <= {
            "binary_sensor.bathroom_motion",
            "light.bathroom",
            "fan.bathroom",
            "binary_sensor.hallway_motion",
            "light.porch",
        }
    # the morning routine shows in the time-based detector: peak hour 7, all at that hour
    kitchen = [
        r
        for r in patterns.query(engine, "time_based", first, last, entity_id="light.kitchen").rows
        if r.day.weekday() < 5
    ]
    assert kitchen and all(r.peak_hours[0] in (6, 7) and r.confidence == 1.0 for r in kitchen)
    # TV sessions: about two hours on average
    tv = patterns.aggregate(engine, "duration", "avg_duration_seconds", first, last, how="mean")
    assert 5400 < tv["media_player.living_room_tv"] < 9000
    md = result.asset_materializations_for_node("pattern_detectors")
    counts = md[0].metadata["events"].value
    assert counts["duplicate"] >= 21 and counts["unknown_state"] >= 21
    assert counts["out_of_order"] > 0 and counts["no_area_entities"] > 0


def test_anomaly_flags_the_burst_day_only(home, engine):
    first, last, _ = home
    burst = first + timedelta(days=19)  # simulate(): the second-to-last day
    rows = patterns.query(engine, "anomaly", first, last).rows
    office = [r for r in rows if r.entity_id == "light.office"]
    assert [r.day for r in office] == [burst]
    assert office[0].anomaly_type == "activity_spike" and office[0].severity in ("high", "critical")
    others = [
        (r.day, r.entity_id, r.severity, round(r.baseline_deviation, 1))
        for r in rows
        if r.severity in ("high", "critical") and r.day != burst
    ]
    assert not others, others


def test_read_api_filters_aggregates_and_reports_bad_json(home, engine):
    first, last, _ = home
    day = first + timedelta(days=3)
    bathroom = patterns.query(engine, "room_based", day, area_id="bathroom").rows
    assert len(bathroom) == 1 and bathroom[0].device_usage["light.bathroom"] >= 4
    pair_rows = patterns.query(engine, "co_occurrence", first, last, entity_id="light.porch").rows
    assert pair_rows and all("light.porch" in (p.entity_a, p.entity_b) for p in pair_rows)
    total = patterns.aggregate(engine, "time_based", "occurrences", first, last, how="sum")
    count = patterns.aggregate(engine, "time_based", "occurrences", first, last, how="count")
    with engine.connect() as conn:
        expected = dict(
            conn.execute(
                sa.text(
                    "SELECT entity_id, sum(occurrences) FROM bi.pattern_time_based_daily GROUP BY 1"
                )
            ).all()
        )
    assert total == {k: float(v) for k, v in expected.items()}
    assert count["light.kitchen"] <= 21
    with pytest.raises(patterns.PatternQueryError, match="not a numeric field"):
        patterns.aggregate(engine, "time_based", "peak_hours", first, last)
    with pytest.raises(patterns.PatternQueryError, match="unknown detector"):
        patterns.query(engine, "weather", first)

    with engine.begin() as conn:  # a bad stored value: wrong shape for the model
        conn.execute(
            sa.text(
                "UPDATE bi.pattern_time_based_daily SET hourly_distribution = '[1, 2]' "
                "WHERE day = :d AND entity_id = 'light.kitchen'"
            ),
            {"d": day},
        )
    result = patterns.query(engine, "time_based", day)
    assert len(result.problems) == 1 and "light.kitchen" in result.problems[0]
    assert result.rows and "light.kitchen" not in {r.entity_id for r in result.rows}


def test_batch_write_round_trip(engine):
    aggregates = patterns.sample_aggregates(1000)
    assert patterns.write_batch(engine, aggregates) == 1000
    patterns.write_batch(engine, aggregates)  # idempotent: upserts
    back = sum(len(patterns.query(engine, d, date(2026, 1, 1)).rows) for d in patterns.DETECTORS)
    assert back == 1000
