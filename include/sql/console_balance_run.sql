-- Console, Today: the balance run of one check date (%(check_date)s), or the latest one when it is NULL.
--   planned / checked / passing / skipped / failed   balance_check_runs' own counts (record_run)
--   duration_s   finished_at - started_at, seconds (NULL while the run is RUNNING)
SELECT check_date, dag_run_id, correlation_id, status,
       accounts_planned AS planned, accounts_checked AS checked, accounts_passing AS passing,
       accounts_skipped AS skipped, accounts_failed AS failed, chunks, mapped_tasks,
       started_at, finished_at,
       round(extract(epoch FROM finished_at - started_at)::numeric, 1) AS duration_s,
       detail
FROM balance_check_runs
WHERE %(check_date)s::date IS NULL OR check_date = %(check_date)s::date
ORDER BY check_date DESC
LIMIT 1;
