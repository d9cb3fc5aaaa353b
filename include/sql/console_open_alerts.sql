-- Console, Today: alerts raised in [%(start)s, %(end)s), newest first. Alerts have no resolved
-- state: a §6.1 breach that persists is raised again every realert_after_hours, so the alerts of
-- the last monitoring window are the open ones. Texts carry ids and counts only (premium.alerts).
SELECT id, raised_at, severity, kind, summary, dag_id, run_id, task_id, delivered_to, delivery_error
FROM alerts
WHERE raised_at >= %(start)s AND raised_at < %(end)s
ORDER BY raised_at DESC, id DESC
LIMIT %(limit)s;
