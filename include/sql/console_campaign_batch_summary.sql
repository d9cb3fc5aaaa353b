-- Console, Campaign: the batches of campaign %(campaign_id)s by check date, carrier and status
-- (carrier 'none': never posted), with their messages, and a total row (check_date NULL).
SELECT check_date, coalesce(carrier, 'none') AS carrier, status,
       count(*) AS batches, sum(messages)::bigint AS messages
FROM sms_batches
WHERE campaign_id = %(campaign_id)s
GROUP BY GROUPING SETS ((check_date, coalesce(carrier, 'none'), status), ())
ORDER BY check_date NULLS LAST, carrier, status;
