-- Console, Customer lookup: the alerts that mention customer %(customer_id)s, newest first: its
-- customer id or account id as a value in the alert's details, its account id in the summary, or
-- one of its message ids or tracking ids (any campaign) in the summary or the details. A bare
-- customer id is not looked for in the summary: ids are digits, and would match any count.
WITH customer AS (
    SELECT account_id FROM customers WHERE customer_id = %(customer_id)s
),
ids AS (
    SELECT message_id AS id FROM sms_messages WHERE customer_id = %(customer_id)s
    UNION
    SELECT tracking_id FROM sms_messages WHERE customer_id = %(customer_id)s AND tracking_id IS NOT NULL
)
SELECT a.id, a.raised_at, a.severity, a.kind, a.summary, a.run_id
FROM alerts a
WHERE a.details @> jsonb_build_object('customer_id', %(customer_id)s::text)
   OR EXISTS (SELECT 1 FROM customer c
              WHERE a.details @> jsonb_build_object('account_id', c.account_id)
                 OR strpos(a.summary, c.account_id) > 0)
   OR EXISTS (SELECT 1 FROM ids
              WHERE strpos(a.summary, ids.id) > 0 OR strpos(a.details::text, '"' || ids.id || '"') > 0)
ORDER BY a.raised_at DESC, a.id DESC
LIMIT %(limit)s;
