-- SMS delivery rate by hour
SELECT 
    DATE_TRUNC('hour', created_at) AS hour,
    COUNT(*) AS notifications_sent,
    COUNT(*) FILTER (WHERE status = 'Delivered') AS delivered,
    ROUND(100.0 * COUNT(*) FILTER (WHERE status = 'Delivered') 
        / COUNT(*), 2) AS delivery_rate
FROM delivery_status
WHERE created_at >= CURRENT_TIMESTAMP - INTERVAL '24 hours'
GROUP BY DATE_TRUNC('hour', created_at)
ORDER BY hour DESC;
