DROP VIEW IF EXISTS account_check_outcomes;
DROP TABLE IF EXISTS alerts;
DROP TABLE IF EXISTS balance_check_runs;
DROP TABLE IF EXISTS balance_check_failures;
DROP TABLE IF EXISTS daily_balance_checks;
DROP TABLE IF EXISTS customers;
