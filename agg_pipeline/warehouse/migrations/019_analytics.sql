-- Event metrics (issue 13): the old Celery analytics. Raw event tables, the rollup tables
-- the assets of catalogues/analytics.yaml write (one row per key; each window replaced
-- atomically) and the three materialized views `analytics_views` refreshes CONCURRENTLY.
CREATE SCHEMA IF NOT EXISTS analytics;

CREATE TABLE IF NOT EXISTS raw.executions (
    id           bigint,
    time         timestamptz NOT NULL,   -- when the execution finished
    workspace_id text,
    user_id      text,
    status       text,                   -- success, failed, cancelled
    duration_ms  double precision,
    credits      double precision
);
CREATE INDEX IF NOT EXISTS executions_time ON raw.executions (time);
-- A repeated id counts once: the duplicate test looks up earlier rows of the same id.
CREATE INDEX IF NOT EXISTS executions_id_time ON raw.executions (id, time);

CREATE TABLE IF NOT EXISTS raw.user_activity (
    time         timestamptz NOT NULL,
    workspace_id text,
    user_id      text,
    action       text
);
CREATE INDEX IF NOT EXISTS user_activity_time ON raw.user_activity (time);

CREATE TABLE IF NOT EXISTS raw.credit_usage (
    time         timestamptz NOT NULL,
    workspace_id text,
    user_id      text,
    credits      double precision
);
CREATE INDEX IF NOT EXISTS credit_usage_time ON raw.credit_usage (time);

CREATE TABLE IF NOT EXISTS analytics.execution_metrics_hourly (
    workspace_id     text NOT NULL,
    hour_start       timestamptz NOT NULL,
    execution_count  bigint NOT NULL,
    success_count    bigint NOT NULL,
    failed_count     bigint NOT NULL,
    cancelled_count  bigint NOT NULL,
    success_rate_pct double precision,
    avg_duration_ms  double precision,
    min_duration_ms  double precision,
    max_duration_ms  double precision,
    p50_duration_ms  double precision,
    p95_duration_ms  double precision,
    credits_used     double precision NOT NULL,
    distinct_users   bigint NOT NULL,
    PRIMARY KEY (workspace_id, hour_start)
);
CREATE TABLE IF NOT EXISTS analytics.execution_metrics_daily (
    workspace_id     text NOT NULL,
    metric_date      date NOT NULL,
    execution_count  bigint NOT NULL,
    success_count    bigint NOT NULL,
    failed_count     bigint NOT NULL,
    cancelled_count  bigint NOT NULL,
    success_rate_pct double precision,
    avg_duration_ms  double precision,
    min_duration_ms  double precision,
    max_duration_ms  double precision,
    p50_duration_ms  double precision,
    p95_duration_ms  double precision,
    credits_used     double precision NOT NULL,
    distinct_users   bigint NOT NULL,
    PRIMARY KEY (workspace_id, metric_date)
);
CREATE TABLE IF NOT EXISTS analytics.execution_metrics_weekly (
    workspace_id     text NOT NULL,
    week_start       date NOT NULL,
    execution_count  bigint NOT NULL,
    success_count    bigint NOT NULL,
    failed_count     bigint NOT NULL,
    cancelled_count  bigint NOT NULL,
    success_rate_pct double precision,
    avg_duration_ms  double precision,
    min_duration_ms  double precision,
    max_duration_ms  double precision,
    p50_duration_ms  double precision,
    p95_duration_ms  double precision,
    credits_used     double precision NOT NULL,
    distinct_users   bigint NOT NULL,
    PRIMARY KEY (workspace_id, week_start)
);
CREATE TABLE IF NOT EXISTS analytics.execution_metrics_monthly (
    workspace_id     text NOT NULL,
    month_start      date NOT NULL,
    execution_count  bigint NOT NULL,
    success_count    bigint NOT NULL,
    failed_count     bigint NOT NULL,
    cancelled_count  bigint NOT NULL,
    success_rate_pct double precision,
    avg_duration_ms  double precision,
    min_duration_ms  double precision,
    max_duration_ms  double precision,
    p50_duration_ms  double precision,
    p95_duration_ms  double precision,
    credits_used     double precision NOT NULL,
    distinct_users   bigint NOT NULL,
    PRIMARY KEY (workspace_id, month_start)
);
CREATE INDEX IF NOT EXISTS execution_metrics_hourly_hour
    ON analytics.execution_metrics_hourly (hour_start);
CREATE INDEX IF NOT EXISTS execution_metrics_daily_date
    ON analytics.execution_metrics_daily (metric_date);

CREATE TABLE IF NOT EXISTS analytics.user_activity_hourly (
    workspace_id     text NOT NULL,
    user_id          text NOT NULL,
    hour_start       timestamptz NOT NULL,
    event_count      bigint NOT NULL,
    distinct_actions bigint NOT NULL,
    PRIMARY KEY (workspace_id, user_id, hour_start)
);
CREATE TABLE IF NOT EXISTS analytics.user_activity_daily (
    workspace_id     text NOT NULL,
    user_id          text NOT NULL,
    metric_date      date NOT NULL,
    event_count      bigint NOT NULL,
    distinct_actions bigint NOT NULL,
    active_hours     bigint NOT NULL,
    PRIMARY KEY (workspace_id, user_id, metric_date)
);
CREATE INDEX IF NOT EXISTS user_activity_hourly_hour ON analytics.user_activity_hourly (hour_start);
CREATE INDEX IF NOT EXISTS user_activity_daily_date ON analytics.user_activity_daily (metric_date);

CREATE TABLE IF NOT EXISTS analytics.credit_consumption_hourly (
    workspace_id text NOT NULL,
    user_id      text NOT NULL,
    hour_start   timestamptz NOT NULL,
    credits      double precision NOT NULL,
    event_count  bigint NOT NULL,
    PRIMARY KEY (workspace_id, user_id, hour_start)
);
CREATE TABLE IF NOT EXISTS analytics.credit_consumption_daily (
    workspace_id text NOT NULL,
    user_id      text NOT NULL,
    metric_date  date NOT NULL,
    credits      double precision NOT NULL,
    event_count  bigint NOT NULL,
    PRIMARY KEY (workspace_id, user_id, metric_date)
);
CREATE TABLE IF NOT EXISTS analytics.credit_consumption_monthly (
    workspace_id text NOT NULL,
    user_id      text NOT NULL,
    month_start  date NOT NULL,
    credits      double precision NOT NULL,
    event_count  bigint NOT NULL,
    PRIMARY KEY (workspace_id, user_id, month_start)
);
CREATE INDEX IF NOT EXISTS credit_consumption_hourly_hour
    ON analytics.credit_consumption_hourly (hour_start);
CREATE INDEX IF NOT EXISTS credit_consumption_daily_date
    ON analytics.credit_consumption_daily (metric_date);

-- Per local day and workspace (dates are the rollups' local dates): users with activity,
-- activity events, executions, credits used.
CREATE MATERIALIZED VIEW IF NOT EXISTS analytics.mv_daily_user_metrics AS
SELECT metric_date,
       workspace_id,
       COALESCE(a.active_users, 0)::bigint AS active_users,
       COALESCE(a.events, 0)::bigint       AS events,
       COALESCE(x.executions, 0)::bigint   AS executions,
       COALESCE(c.credits, 0)::float8      AS credits
FROM (SELECT metric_date, workspace_id, count(*) AS active_users, sum(event_count) AS events
        FROM analytics.user_activity_daily GROUP BY 1, 2) a
FULL JOIN (SELECT metric_date, workspace_id, execution_count AS executions
             FROM analytics.execution_metrics_daily) x USING (metric_date, workspace_id)
FULL JOIN (SELECT metric_date, workspace_id, sum(credits) AS credits
             FROM analytics.credit_consumption_daily GROUP BY 1, 2) c
       USING (metric_date, workspace_id)
WITH NO DATA;
CREATE UNIQUE INDEX IF NOT EXISTS mv_daily_user_metrics_key
    ON analytics.mv_daily_user_metrics (metric_date, workspace_id);

-- Per hour across workspaces. The p95 of all workspaces together is not a merge of
-- per-workspace rows, so the view reads the raw executions still retained, keeping the
-- good ones by the shipped catalogue's rules (analytics.yaml, sources.executions):
-- the earliest row of an id, not in the future, a workspace, a known status, a finite
-- non-negative (or NULL) duration, finite (or NULL) credits.
CREATE MATERIALIZED VIEW IF NOT EXISTS analytics.mv_hourly_execution_stats AS
SELECT date_trunc('hour', e.time) AS hour_start,
       count(*)::bigint AS executions,
       (100.0 * count(*) FILTER (WHERE e.status = 'success') / count(*))::float8
           AS success_rate_pct,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY e.duration_ms) AS p95_duration_ms
FROM raw.executions e
WHERE e.time <= now() + interval '5 minutes'
  AND e.workspace_id IS NOT NULL
  AND e.status IN ('success', 'failed', 'cancelled')
  AND (e.duration_ms IS NULL
       OR (e.duration_ms >= 0 AND e.duration_ms < 'Infinity'::float8
           AND e.duration_ms <> 'NaN'::float8))
  AND (e.credits IS NULL
       OR e.credits NOT IN ('NaN'::float8, 'Infinity'::float8, '-Infinity'::float8))
  AND NOT EXISTS (SELECT 1 FROM raw.executions d
                   WHERE d.id = e.id AND (d.time, d.ctid) < (e.time, e.ctid))
GROUP BY 1
WITH NO DATA;
CREATE UNIQUE INDEX IF NOT EXISTS mv_hourly_execution_stats_key
    ON analytics.mv_hourly_execution_stats (hour_start);

-- Per workspace over the last 30 local days (today and the 29 before it, in the zone the
-- refresh runs in: AGG_PIPELINE_TIMEZONE), from the daily rollups; active users are the
-- distinct users of those days; last_activity_at is the latest user activity retained.
CREATE MATERIALIZED VIEW IF NOT EXISTS analytics.mv_workspace_summary AS
SELECT workspace_id,
       COALESCE(x.executions, 0)::bigint AS executions,
       x.success_rate_pct,
       COALESCE(c.credits, 0)::float8 AS credits,
       COALESCE(a.active_users, 0)::bigint AS active_users,
       l.last_activity_at
FROM (SELECT workspace_id, sum(execution_count) AS executions,
             (100.0 * sum(success_count) / NULLIF(sum(execution_count), 0))::float8
                 AS success_rate_pct
        FROM analytics.execution_metrics_daily
       WHERE metric_date > current_date - 30 GROUP BY 1) x
FULL JOIN (SELECT workspace_id, sum(credits) AS credits
             FROM analytics.credit_consumption_daily
            WHERE metric_date > current_date - 30 GROUP BY 1) c USING (workspace_id)
FULL JOIN (SELECT workspace_id, count(DISTINCT user_id) AS active_users
             FROM analytics.user_activity_daily
            WHERE metric_date > current_date - 30 GROUP BY 1) a USING (workspace_id)
LEFT JOIN (SELECT workspace_id, max(time) AS last_activity_at
             FROM raw.user_activity
            WHERE workspace_id IS NOT NULL AND user_id IS NOT NULL
              AND time <= now() + interval '5 minutes'
            GROUP BY 1) l USING (workspace_id)
WITH NO DATA;
CREATE UNIQUE INDEX IF NOT EXISTS mv_workspace_summary_key
    ON analytics.mv_workspace_summary (workspace_id);
