-- Record the accounts of one flushed chunk that got no balance, with the reason. A check row
-- already recorded for the account and date stands: a later failure does not erase a balance
-- the bank did give us for that date.
INSERT INTO balance_check_failures AS f (
    account_id, check_date, customer_id, reason, http_status, detail, attempts, correlation_id, recorded_at
)
SELECT s.account_id, %(check_date)s, s.customer_id, s.reason, s.http_status, s.detail, s.attempts,
       s.correlation_id, now()
FROM staging_balance_failures s
WHERE NOT EXISTS (
    SELECT 1 FROM daily_balance_checks d WHERE d.account_id = s.account_id AND d.check_date = %(check_date)s
)
ON CONFLICT (account_id, check_date) DO UPDATE SET
    customer_id = EXCLUDED.customer_id,
    reason = EXCLUDED.reason,
    http_status = EXCLUDED.http_status,
    detail = EXCLUDED.detail,
    attempts = EXCLUDED.attempts,
    correlation_id = EXCLUDED.correlation_id,
    recorded_at = EXCLUDED.recorded_at;
