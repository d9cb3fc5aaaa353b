-- Counts of a check date, from the tables themselves (not from what tasks believed they did).
SELECT
    (SELECT count(*) FROM daily_balance_checks WHERE check_date = %(check_date)s) AS checked,
    (SELECT count(*) FROM daily_balance_checks WHERE check_date = %(check_date)s AND passes_threshold) AS passing,
    (SELECT count(*) FROM balance_check_failures WHERE check_date = %(check_date)s AND reason = 'not_found') AS skipped,
    (SELECT count(*) FROM balance_check_failures
      WHERE check_date = %(check_date)s AND reason NOT IN ('not_found', 'skipped_outage', 'not_attempted')) AS failed,
    (SELECT count(*) FROM balance_check_failures WHERE check_date = %(check_date)s AND reason = 'skipped_outage') AS skipped_outage,
    (SELECT count(*) FROM balance_check_failures WHERE check_date = %(check_date)s AND reason = 'not_attempted') AS not_attempted;
