"""Test environment: names of the test databases and the fixture-only secrets.

Imported by tests/conftest.py before anything imports Airflow, so that Airflow reads this
environment (its own metadata DB for tests, connections from env vars, no examples).
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PG_HOST = os.environ.get("PREMIUM_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("PREMIUM_PG_PORT", "5432"))
PG_USER = os.environ.get("PREMIUM_PG_USER", "postgres")
APP_DB = os.environ.get("PREMIUM_TEST_DB", "premium_test")
AIRFLOW_DB = os.environ.get("PREMIUM_TEST_AIRFLOW_DB", "premium_test_airflow")

# Fixture keys: test-only, never used by the demo or a deployment.
TEST_PII_KEYS = {
    "current_key_id": "test-k1",
    "keys": {"test-k1": base64.b64encode(b"\x11" * 32).decode(), "test-k0": base64.b64encode(b"\x22" * 32).decode()},
    "hash_key": base64.b64encode(b"\x33" * 32).decode(),
}
TEST_BANK_API_KEY = "test-bank-api-key-7f3a9c"


def app_conninfo() -> dict:
    return {"host": PG_HOST, "port": PG_PORT, "user": PG_USER, "dbname": APP_DB}


def apply() -> None:
    airflow_home = ROOT / ".airflow" / "test"
    airflow_home.mkdir(parents=True, exist_ok=True)
    env = {
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{PG_USER}@{PG_HOST}:{PG_PORT}/{AIRFLOW_DB}",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "AIRFLOW_CONN_PREMIUM_DB": f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{APP_DB}",
        "AIRFLOW_CONN_PREMIUM_PII_KEYS": json.dumps({"conn_type": "generic", "extra": TEST_PII_KEYS}),
    }
    os.environ.update(env)


TEST_SMS_API_KEY = "test-sms-api-key-2b81d0"
TEST_SMS_SECONDARY_API_KEY = "test-sms-secondary-key-91c3aa"
# Standard Webhooks secrets (whsec_ + base64 of 24 fixed bytes), one per carrier: test-only.
TEST_WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"premium-test-webhook-key").decode()  # the primary's
TEST_SECONDARY_WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"premium-test-2nd-wh-key!").decode()
TEST_WEBHOOK_SECRETS = {"primary": TEST_WEBHOOK_SECRET, "secondary": TEST_SECONDARY_WEBHOOK_SECRET}
