-- At the end of a run: every active account in the planned id range that has neither a check
-- nor a failure for the date gets a reason (skipped_outage when the day was skipped, else
-- not_attempted), so that each account of the day ends with one or the other.
INSERT INTO balance_check_failures (account_id, check_date, customer_id, reason, detail, attempts, correlation_id)
SELECT c.account_id, %(check_date)s, c.customer_id, %(reason)s, %(detail)s, 0, %(correlation_id)s
FROM customers c
WHERE c.status = 'ACTIVE'
  AND c.id BETWEEN %(id_lo)s AND %(id_hi)s
  AND NOT EXISTS (SELECT 1 FROM daily_balance_checks d WHERE d.account_id = c.account_id AND d.check_date = %(check_date)s)
  AND NOT EXISTS (SELECT 1 FROM balance_check_failures f WHERE f.account_id = c.account_id AND f.check_date = %(check_date)s);
