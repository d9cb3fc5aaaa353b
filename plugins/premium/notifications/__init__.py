"""The notification engine: outbox, batches, carrier client, submission, delivery state (§3).

Used by the daily DAG's submission, by delivery tracking and by any manual run alike; it imports
neither :mod:`premium.sms` (qualification, rendering) nor :mod:`premium.delivery` (polling).
"""
