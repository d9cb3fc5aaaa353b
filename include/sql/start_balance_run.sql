-- (Re)start the run record of a check date. A rerun of the date takes the record over and
-- forgets the previous run's outage state and derived reasons (they are recomputed at the end).
INSERT INTO balance_check_runs AS r (
    check_date, dag_run_id, correlation_id, status, threshold, accounts_planned, chunks, mapped_tasks, started_at
) VALUES (
    %(check_date)s, %(dag_run_id)s, %(correlation_id)s, 'RUNNING', %(threshold)s, %(accounts_planned)s,
    %(chunks)s, %(mapped_tasks)s, now()
)
ON CONFLICT (check_date) DO UPDATE SET
    dag_run_id = EXCLUDED.dag_run_id,
    correlation_id = EXCLUDED.correlation_id,
    status = 'RUNNING',
    threshold = EXCLUDED.threshold,
    accounts_planned = EXCLUDED.accounts_planned,
    chunks = EXCLUDED.chunks,
    mapped_tasks = EXCLUDED.mapped_tasks,
    accounts_checked = NULL,
    accounts_passing = NULL,
    accounts_skipped = NULL,
    accounts_failed = NULL,
    outage_since = NULL,
    outage_declared_at = NULL,
    started_at = now(),
    finished_at = NULL,
    detail = NULL;
