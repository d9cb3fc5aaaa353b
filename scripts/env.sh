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
# gets these from its secrets backend instead (see README, "Secrets").
PREMIUM_SECRETS_FILE="${PREMIUM_SECRETS_FILE:-$AIRFLOW_HOME/secrets.env}"
if [ ! -s "$PREMIUM_SECRETS_FILE" ]; then
    umask 077
    {
        printf 'BANK_API_KEY=%q\n' "$("$PREMIUM_ROOT/.venv/bin/python" -c 'import secrets; print(secrets.token_urlsafe(32))')"
        printf 'AIRFLOW_CONN_PREMIUM_PII_KEYS=%q\n' "$("$PREMIUM_ROOT/.venv/bin/python" -m premium.cli gen-pii-keys)"
    } > "$PREMIUM_SECRETS_FILE"
fi
set -a
# shellcheck disable=SC1090
. "$PREMIUM_SECRETS_FILE"
set +a
export BANK_SIM_SECRET="$BANK_API_KEY"
