-- 0004 audit: every external call in system_events (partitioned by day, 90 days hot), an audit
-- trail of notification decisions and sends (partitioned by month, 7 years, exported before it
-- leaves the hot database), and the record of exported partitions.

-- External calls (§5.4): banking_api_call, sms_api_call, sms_status_poll, webhook_received.
-- event_data: timestamp, endpoint, method, status, error_code, duration_ms, attempt,
-- correlation_id. No PII: account ids and phone numbers are masked before they get here.
CREATE TABLE system_events (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    event_type  text NOT NULL,
    event_data  jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);
-- Rows for a day without its partition yet land here; maintenance moves them.
CREATE TABLE system_events_default PARTITION OF system_events DEFAULT;
CREATE INDEX system_events_type_created ON system_events (event_type, created_at);
CREATE INDEX system_events_correlation ON system_events ((event_data ->> 'correlation_id'));

-- Notification decisions and sends (§5.4 audit trail): who (customer id), what campaign, which
-- run, when, outcome, correlation id.
CREATE TABLE audit_trail (
    id              bigint GENERATED ALWAYS AS IDENTITY,
    occurred_at     timestamptz NOT NULL DEFAULT now(),
    action          text NOT NULL,
    customer_id     text NOT NULL,
    campaign_id     text,
    check_date      date,
    dag_run_id      text,
    outcome         text NOT NULL,
    correlation_id  text,
    details         jsonb NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (id, occurred_at)
) PARTITION BY RANGE (occurred_at);
CREATE TABLE audit_trail_default PARTITION OF audit_trail DEFAULT;
CREATE INDEX audit_trail_customer ON audit_trail (customer_id, occurred_at);
CREATE INDEX audit_trail_correlation ON audit_trail (correlation_id);

-- Partitions exported before they were dropped: file, checksum, rows.
CREATE TABLE archived_partitions (
    partition_name  text PRIMARY KEY,
    parent_table    text NOT NULL,
    range_start     timestamptz NOT NULL,
    range_end       timestamptz NOT NULL,
    rows            bigint NOT NULL,
    file_path       text NOT NULL,
    sha256          text NOT NULL,
    exported_at     timestamptz NOT NULL DEFAULT now(),
    dropped_at      timestamptz
);

-- Balances encrypted at rest when configured (§5.3): the amount then lives only in balance_enc
-- (AES-256-GCM, key id beside it); passes_threshold is computed before encryption, so
-- qualification never needs the amount.
ALTER TABLE daily_balance_checks ALTER COLUMN balance DROP NOT NULL;
ALTER TABLE daily_balance_checks ADD COLUMN balance_enc bytea, ADD COLUMN balance_key_id text;
ALTER TABLE daily_balance_checks ADD CONSTRAINT daily_balance_checks_balance_present
    CHECK (balance IS NOT NULL OR balance_enc IS NOT NULL);
