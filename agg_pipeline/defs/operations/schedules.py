"""The operations' jobs and schedules: the dashboard views' refresh and retention."""

from __future__ import annotations

import dagster as dg

from agg_pipeline.defs.operations.maintenance import dashboard_views, retention_cleanup
from agg_pipeline.defs.scheduling import RUNNING, STOPPED, TZ, max_runtime, settings

dashboard_refresh_job = dg.define_asset_job(
    "dashboard_refresh", selection=[dashboard_views], tags=max_runtime(900)
)
JOBS = [dashboard_refresh_job, retention_cleanup]
SCHEDULES = [
    dg.ScheduleDefinition(
        name="dashboard_views_every_15_minutes",
        cron_schedule="*/15 * * * *",
        job=dashboard_refresh_job,
        execution_timezone=TZ,
        default_status=RUNNING if settings.schedule_dashboard_refresh else STOPPED,
        description="Refresh the dashboard materialized views (the old "
        "refresh_materialized_views). Switch: AGG_PIPELINE_SCHEDULE_DASHBOARD_REFRESH.",
    ),
    dg.ScheduleDefinition(
        name="retention_cleanup_at_0300",
        cron_schedule="0 3 * * *",
        job=retention_cleanup,
        execution_timezone=TZ,
        default_status=RUNNING if settings.schedule_retention else STOPPED,
        description="Daily retention cleanup (the old cleanup_old_data). "
        "Switch: AGG_PIPELINE_SCHEDULE_RETENTION.",
    ),
]
