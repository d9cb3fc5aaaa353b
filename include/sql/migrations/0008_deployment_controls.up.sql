-- A late send of an old check date is an operator action, not a run param: who authorised it,
-- why and when. plan_send reads it; the same transaction writes an audit_trail row.
CREATE TABLE late_send_authorisations (
    check_date     date PRIMARY KEY,
    authorised_by  text NOT NULL CHECK (length(btrim(authorised_by)) BETWEEN 1 AND 200),
    reason         text NOT NULL CHECK (length(btrim(reason)) BETWEEN 1 AND 2000),
    authorised_at  timestamptz NOT NULL DEFAULT now()
);

-- The keyring check at every task start (a keyring lacking a key still used by rows refuses to
-- load) reads the distinct key ids of each encrypted column: indexed, it costs milliseconds.
CREATE INDEX daily_balance_checks_balance_key_id ON daily_balance_checks (balance_key_id)
    WHERE balance_key_id IS NOT NULL;
CREATE INDEX sms_notifications_pii_key_id ON sms_notifications (pii_key_id);
