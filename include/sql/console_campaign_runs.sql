-- Console, Campaign: what each day's run of campaign %(campaign_id)s decided and submitted
-- (sms_campaign_runs: mode SEND / DRY_RUN / LATE_NO_SEND; detail is the run's own note).
SELECT check_date, mode, status, qualified, send_after, batches, submitted, rejected, dag_run_id, detail
FROM sms_campaign_runs
WHERE campaign_id = %(campaign_id)s
ORDER BY check_date;
