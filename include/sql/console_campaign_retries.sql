-- Console, Campaign: retries and failovers of campaign %(campaign_id)s per check date, and a total
-- row (check_date NULL):
--   retried            notifications sent more than once (attempts > 1)
--   retry_messages     messages of a second or later attempt (sms_messages.attempt > 1)
--   retry_primary / retry_secondary   those retry messages by the carrier they were posted to
--   failed_over        batches the morning submission moved from the primary to the secondary carrier
--   buffered           batches it buffered (no carrier available) (both: sms_campaign_runs)
WITH days AS (
    SELECT check_date FROM sms_campaign_runs WHERE campaign_id = %(campaign_id)s
    UNION
    SELECT DISTINCT check_date FROM sms_notifications WHERE campaign_id = %(campaign_id)s
),
retried AS (
    SELECT check_date, count(*) FILTER (WHERE attempts > 1) AS retried
    FROM sms_notifications
    WHERE campaign_id = %(campaign_id)s
    GROUP BY check_date
),
retries AS (
    SELECT n.check_date,
           count(*) AS retry_messages,
           count(*) FILTER (WHERE m.carrier = 'primary') AS retry_primary,
           count(*) FILTER (WHERE m.carrier = 'secondary') AS retry_secondary
    FROM sms_notifications n
    JOIN sms_messages m ON m.notification_id = n.notification_id
    WHERE n.campaign_id = %(campaign_id)s AND m.attempt > 1
    GROUP BY n.check_date
),
runs AS (
    SELECT check_date, failed_over, buffered FROM sms_campaign_runs WHERE campaign_id = %(campaign_id)s
)
SELECT d.check_date,
       coalesce(sum(r.retried), 0)::bigint AS retried,
       coalesce(sum(m.retry_messages), 0)::bigint AS retry_messages,
       coalesce(sum(m.retry_primary), 0)::bigint AS retry_primary,
       coalesce(sum(m.retry_secondary), 0)::bigint AS retry_secondary,
       coalesce(sum(s.failed_over), 0)::bigint AS failed_over,
       coalesce(sum(s.buffered), 0)::bigint AS buffered
FROM days d
LEFT JOIN retried r USING (check_date)
LEFT JOIN retries m USING (check_date)
LEFT JOIN runs s USING (check_date)
GROUP BY GROUPING SETS ((d.check_date), ())
ORDER BY d.check_date NULLS LAST;
