"""Declarative automation: deliberately none for corrections.

Corrections and catch-up are the job of one sensor, ``self_healing_sensor``
(``healing.py``, ``self_healing.py``), deciding from data versions in the warehouse.
The late-data automation conditions that were here (``any_deps_updated()
.since_last_handled()`` over a lookback) lost a trigger when one tick requested an hour
and its day together: the day ran first from the old hours and its own materialization
counted as having handled the hour's update, so it was never requested again. Two
mechanisms deciding the same corrections would race, so the assets carry no automation
condition; the names stay so the asset modules need no change.
"""

import dagster as dg

hourly_correction: dg.AutomationCondition | None = None
daily_correction: dg.AutomationCondition | None = None
