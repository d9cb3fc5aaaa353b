-- Console, Campaign: the funnel of campaign %(campaign_id)s per check date, and a total row
-- (check_date NULL). Per customer notification (sms_notifications), by the check date that made it:
--   qualified       qualification_outcomes rows 'qualified' of that date
--   notifications   outbox rows written for that date (one per customer and campaign)
--   submitted       notifications with at least one message a carrier accepted (a delivery_status row)
--   delivered / failed / undeliverable / unconfirmed   the notification's final status
--   in_progress     not final yet (PENDING, SUBMITTED, QUEUED, SENT, NO_STATUS)
-- delivered + failed + undeliverable + unconfirmed + in_progress = notifications (a number refused
-- as invalid at submission is undeliverable without ever being submitted).
WITH days AS (
    SELECT check_date FROM sms_campaign_runs WHERE campaign_id = %(campaign_id)s
    UNION
    SELECT DISTINCT check_date FROM sms_notifications WHERE campaign_id = %(campaign_id)s
),
qualified AS (
    SELECT check_date, count(*) AS qualified
    FROM qualification_outcomes
    WHERE campaign_id = %(campaign_id)s AND outcome = 'qualified'
    GROUP BY check_date
),
accepted AS (
    SELECT DISTINCT notification_id FROM delivery_status WHERE campaign_id = %(campaign_id)s
),
outcomes AS (
    SELECT n.check_date,
           count(*) AS notifications,
           count(a.notification_id) AS submitted,
           count(*) FILTER (WHERE n.status = 'DELIVERED') AS delivered,
           count(*) FILTER (WHERE n.status = 'FAILED') AS failed,
           count(*) FILTER (WHERE n.status = 'UNDELIVERABLE') AS undeliverable,
           count(*) FILTER (WHERE n.status = 'UNCONFIRMED') AS unconfirmed,
           count(*) FILTER (WHERE n.status IN ('PENDING', 'SUBMITTED', 'QUEUED', 'SENT', 'NO_STATUS'))
               AS in_progress
    FROM sms_notifications n
    LEFT JOIN accepted a USING (notification_id)
    WHERE n.campaign_id = %(campaign_id)s
    GROUP BY n.check_date
)
SELECT d.check_date,
       coalesce(sum(q.qualified), 0)::bigint AS qualified,
       coalesce(sum(o.notifications), 0)::bigint AS notifications,
       coalesce(sum(o.submitted), 0)::bigint AS submitted,
       coalesce(sum(o.delivered), 0)::bigint AS delivered,
       coalesce(sum(o.failed), 0)::bigint AS failed,
       coalesce(sum(o.undeliverable), 0)::bigint AS undeliverable,
       coalesce(sum(o.unconfirmed), 0)::bigint AS unconfirmed,
       coalesce(sum(o.in_progress), 0)::bigint AS in_progress
FROM days d
LEFT JOIN qualified q USING (check_date)
LEFT JOIN outcomes o USING (check_date)
GROUP BY GROUPING SETS ((d.check_date), ())
ORDER BY d.check_date NULLS LAST;
