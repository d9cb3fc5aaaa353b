-- Console, Campaign: the campaigns (one a month) that have a recorded day, newest first.
SELECT campaign_id, min(check_date) AS first_day, max(check_date) AS last_day, count(*) AS days
FROM sms_campaign_runs
GROUP BY campaign_id
ORDER BY max(check_date) DESC
LIMIT %(limit)s;
