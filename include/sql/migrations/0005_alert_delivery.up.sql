-- 0005 alert delivery and integration metrics: where each alert was delivered (or why not), and
-- the §6.1 integration health figures computed by premium_monitoring, for ops tools and SQL.

-- Notifier routing of every alert (premium.notify): the notifiers that accepted it ('smtp',
-- 'webhook'; empty when none is configured or all failed) and, when one failed, why (no PII).
ALTER TABLE alerts
    ADD COLUMN delivered_to    text[] NOT NULL DEFAULT '{}',
    ADD COLUMN delivery_error  text,
    ADD COLUMN delivered_at    timestamptz;
CREATE INDEX alerts_kind_raised_at ON alerts (kind, raised_at);

-- One row per metric, scope and subject each time premium_monitoring runs.
-- scope 'window': over [window_start, window_end) (subject ''; labels e.g. {"carrier": "primary"});
-- scope 'run': one run in that window (subject: the correlation id of bank/carrier calls, or the
-- campaign id of deliveries). value NULL = no data. breached: compared with threshold (NULL =
-- not judged: no data or fewer samples than min_samples).
CREATE TABLE integration_metrics (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    computed_at   timestamptz NOT NULL,
    metric        text NOT NULL,
    scope         text NOT NULL CHECK (scope IN ('window', 'run')),
    subject       text NOT NULL DEFAULT '',
    labels        jsonb NOT NULL DEFAULT '{}'::jsonb,
    value         double precision,
    samples       bigint NOT NULL DEFAULT 0,
    threshold     double precision,
    breached      boolean,
    window_start  timestamptz NOT NULL,
    window_end    timestamptz NOT NULL,
    dag_run_id    text
);
CREATE INDEX integration_metrics_latest ON integration_metrics (scope, metric, computed_at DESC);
CREATE INDEX integration_metrics_computed_at ON integration_metrics (computed_at);
