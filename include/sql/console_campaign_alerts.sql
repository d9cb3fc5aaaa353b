-- Console, Campaign: the alerts about campaign %(campaign_id)s (their summary starts with its id, as
-- every SMS and delivery alert's does), newest first.
SELECT id, raised_at, severity, kind, summary, run_id
FROM alerts
WHERE starts_with(summary, %(campaign_id)s || ':')
ORDER BY raised_at DESC, id DESC
LIMIT %(limit)s;
