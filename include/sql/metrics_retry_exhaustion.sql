-- §6.1 Failed SMS retry exhaustion over [start, end): notifications that ended FAILED (no retry
-- left: §3.6 attempts used up, a non-retryable carrier error, or a retry not sent before the
-- tracking window closed), by the time they got there. One row for the window (per_run false)
-- and one per campaign (per_run true).
SELECT
    GROUPING(campaign_id) = 0 AS per_run,
    coalesce(campaign_id, '') AS campaign_id,
    count(*) AS exhausted
FROM sms_notifications
WHERE status = 'FAILED'
  AND updated_at >= %(start)s AND updated_at < %(end)s
GROUP BY GROUPING SETS ((), (campaign_id))
ORDER BY per_run, campaign_id;
