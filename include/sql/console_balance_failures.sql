-- Console, Today: accounts of a check date without a check row, by reason (balance_check_failures).
SELECT reason, count(*) AS accounts
FROM balance_check_failures
WHERE check_date = %(check_date)s
GROUP BY reason
ORDER BY accounts DESC, reason;
