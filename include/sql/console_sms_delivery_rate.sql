-- Console, Campaign: the §6.2 "SMS delivery rate by hour" query as written, for the messages of
-- campaign %(campaign_id)s instead of the last 24 hours, oldest hour first. delivery_status.created_at
-- is when the carrier accepted the message; hours are Asia/Jerusalem (the console's session time zone).
SELECT
    DATE_TRUNC('hour', created_at) AS hour,
    COUNT(*) AS notifications_sent,
    COUNT(*) FILTER (WHERE status = 'Delivered') AS delivered,
    ROUND(100.0 * COUNT(*) FILTER (WHERE status = 'Delivered')
        / COUNT(*), 2) AS delivery_rate
FROM delivery_status
WHERE campaign_id = %(campaign_id)s
GROUP BY DATE_TRUNC('hour', created_at)
ORDER BY hour;
