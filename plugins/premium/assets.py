"""Assets the project's DAGs produce and consume (names are contracts)."""

from __future__ import annotations

from airflow.sdk import Asset

# Emitted when the balance checks of a date are recorded (extra: check_date, status, counts).
BALANCE_CHECKS = Asset(name="daily_balance_checks", uri="premium://premium_db/daily_balance_checks")

# Emitted when a submission finishes (extra: campaign_id, check_date, batch_ids, counts).
SMS_SUBMISSIONS = Asset(name="sms_submissions", uri="premium://premium_db/sms_submissions")

# DeliveryConfirmed (§4.2): a tracking run finished (extra: campaign_id, counts per final state).
DELIVERY_CONFIRMED = Asset(name="delivery_confirmed", uri="premium://premium_db/delivery_confirmed")
