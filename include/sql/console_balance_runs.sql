-- Console, Today: the recorded balance runs, newest first (the day picker). One row per check date
-- (balance_check_runs keeps the latest run of each date).
SELECT check_date, status
FROM balance_check_runs
ORDER BY check_date DESC
LIMIT %(limit)s;
