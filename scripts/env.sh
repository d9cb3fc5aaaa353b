# shellcheck shell=bash
# Environment of the demo and of operator commands run from a checkout: `source scripts/env.sh`.
# Every name can be overridden from the caller's environment.
PREMIUM_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PREMIUM_ROOT
export PYTHONPATH="$PREMIUM_ROOT/plugins${PYTHONPATH:+:$PYTHONPATH}"
export PREMIUM_PG_HOST="${PREMIUM_PG_HOST:-127.0.0.1}"
export PREMIUM_PG_PORT="${PREMIUM_PG_PORT:-5432}"
export PREMIUM_PG_USER="${PREMIUM_PG_USER:-postgres}"
export AIRFLOW_DB_NAME="${AIRFLOW_DB_NAME:-premium_airflow}"
export PREMIUM_DB_NAME="${PREMIUM_DB_NAME:-premium_app}"
export PREMIUM_STATE_DIR="${PREMIUM_STATE_DIR:-$PREMIUM_ROOT/.run}"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$PREMIUM_ROOT/.airflow/demo}"
export AIRFLOW__CORE__DAGS_FOLDER="$PREMIUM_ROOT/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$PREMIUM_ROOT/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DEFAULT_TIMEZONE=Asia/Jerusalem
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="postgresql+psycopg2://$PREMIUM_PG_USER@$PREMIUM_PG_HOST:$PREMIUM_PG_PORT/$AIRFLOW_DB_NAME"
export AIRFLOW_CONN_PREMIUM_DB="postgresql://$PREMIUM_PG_USER@$PREMIUM_PG_HOST:$PREMIUM_PG_PORT/$PREMIUM_DB_NAME"
mkdir -p "$AIRFLOW_HOME" "$PREMIUM_STATE_DIR"

# Local secrets, generated on first use and kept outside git (.airflow/ is ignored). A deployment
# gets these from its secrets backend instead (see docs/security.md).
PREMIUM_SECRETS_FILE="${PREMIUM_SECRETS_FILE:-$AIRFLOW_HOME/secrets.env}"
touch "$PREMIUM_SECRETS_FILE" && chmod 600 "$PREMIUM_SECRETS_FILE"
_premium_secret() {  # NAME COMMAND...: append NAME=<output of COMMAND> unless the file has it
    local name="$1"; shift
    grep -q "^$name=" "$PREMIUM_SECRETS_FILE" || printf '%s=%q\n' "$name" "$("$@")" >> "$PREMIUM_SECRETS_FILE"
}
_premium_secret BANK_API_KEY "$PREMIUM_ROOT/.venv/bin/python" -c 'import secrets; print(secrets.token_hex(24))'
_premium_secret SMS_SIM_SECRET "$PREMIUM_ROOT/.venv/bin/python" -c 'import secrets; print(secrets.token_hex(24))'
# One Standard Webhooks secret per carrier: each signs its own delivery callbacks.
_premium_secret SMS_WEBHOOK_SECRET "$PREMIUM_ROOT/.venv/bin/python" -c \
    'import base64, secrets; print("whsec_" + base64.b64encode(secrets.token_bytes(24)).decode())'
_premium_secret SMS_CARRIER_SECONDARY_WEBHOOK_SECRET "$PREMIUM_ROOT/.venv/bin/python" -c \
    'import base64, secrets; print("whsec_" + base64.b64encode(secrets.token_bytes(24)).decode())'
_premium_secret AIRFLOW_CONN_PREMIUM_PII_KEYS "$PREMIUM_ROOT/.venv/bin/python" -m premium.cli gen-pii-keys
# The local stack (make up): the UI's admin password (the API server's passwords file is written
# from it), and the keys every Airflow component must share (session/CSRF, execution API JWTs).
_premium_secret AIRFLOW_ADMIN_PASSWORD "$PREMIUM_ROOT/.venv/bin/python" -c 'import secrets; print(secrets.token_urlsafe(18))'
_premium_secret AIRFLOW__API__SECRET_KEY "$PREMIUM_ROOT/.venv/bin/python" -c 'import secrets; print(secrets.token_hex(32))'
_premium_secret AIRFLOW__API_AUTH__JWT_SECRET "$PREMIUM_ROOT/.venv/bin/python" -c 'import secrets; print(secrets.token_hex(32))'
set -a
# shellcheck disable=SC1090
. "$PREMIUM_SECRETS_FILE"
set +a
export BANK_SIM_SECRET="$BANK_API_KEY"
# What an API server started from this checkout verifies delivery callbacks with: the primary
# carrier's on /premium/api/webhooks/sms-delivery/primary, the secondary's on .../secondary; a
# carrier simulator signs with its own (--webhook-secret-env SMS_WEBHOOK_SECRET or
# SMS_CARRIER_SECONDARY_WEBHOOK_SECRET).
export AIRFLOW_CONN_SMS_CARRIER_WEBHOOK="${AIRFLOW_CONN_SMS_CARRIER_WEBHOOK:-{\"conn_type\": \"generic\", \"password\": \"$SMS_WEBHOOK_SECRET\"\}}"
export AIRFLOW_CONN_SMS_CARRIER_SECONDARY_WEBHOOK="${AIRFLOW_CONN_SMS_CARRIER_SECONDARY_WEBHOOK:-{\"conn_type\": \"generic\", \"password\": \"$SMS_CARRIER_SECONDARY_WEBHOOK_SECRET\"\}}"
