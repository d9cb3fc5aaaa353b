#!/usr/bin/env bash
# make demo: the whole flow end to end on this machine, from nothing, and again a second time.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/env.sh
. scripts/env.sh
PY="$PREMIUM_ROOT/.venv/bin/python"
AIRFLOW="$PREMIUM_ROOT/.venv/bin/airflow"
DEMO_DATE="${DEMO_DATE:-2025-11-18}"
DEMO_CUSTOMERS="${DEMO_CUSTOMERS:-2000}"
DEMO_SEED="${DEMO_SEED:-20251118}"
LOG="$PREMIUM_STATE_DIR/demo-airflow.log"
started=$(date +%s)

step() { printf '\n==> %s\n' "$*"; }

step "PostgreSQL at $PREMIUM_PG_HOST:$PREMIUM_PG_PORT"
"$PY" -m premium.cli check-postgres --host "$PREMIUM_PG_HOST" --port "$PREMIUM_PG_PORT"
"$PY" -m premium.cli create-databases "$AIRFLOW_DB_NAME" "$PREMIUM_DB_NAME" \
    --host "$PREMIUM_PG_HOST" --port "$PREMIUM_PG_PORT" --user "$PREMIUM_PG_USER"

step "Airflow metadata DB ($AIRFLOW_DB_NAME) and application schema ($PREMIUM_DB_NAME)"
"$AIRFLOW" db migrate > "$PREMIUM_STATE_DIR/demo-db-migrate.log" 2>&1 || { tail -30 "$PREMIUM_STATE_DIR/demo-db-migrate.log"; exit 1; }
"$AIRFLOW" pools set core_banking_api 4 "Concurrent fetch tasks against the core-banking API" > /dev/null
"$PY" -m premium.cli migrate

step "Core-banking simulator on loopback"
stop_simulators() { "$PY" -m premium.simulators.runner stop --name core-banking --state-dir "$PREMIUM_STATE_DIR" || true; }
trap stop_simulators EXIT
"$PY" -m premium.simulators.runner start --name core-banking --state-dir "$PREMIUM_STATE_DIR" -- \
    --auth api_key --secret-env BANK_SIM_SECRET
BANK_PORT=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["port"])' "$PREMIUM_STATE_DIR/core-banking.json")
export AIRFLOW_CONN_CORE_BANKING="{\"conn_type\": \"http\", \"host\": \"127.0.0.1\", \"port\": $BANK_PORT, \"schema\": \"http\", \"password\": \"$BANK_API_KEY\", \"extra\": {\"auth_type\": \"api_key\"}}"

step "Synthetic customer base: $DEMO_CUSTOMERS customers (seed $DEMO_SEED)"
"$PY" -m premium.cli gen-customers --count "$DEMO_CUSTOMERS" --seed "$DEMO_SEED" --out "$PREMIUM_STATE_DIR/demo-customers.csv"
"$PY" -m premium.cli load-customers "$PREMIUM_STATE_DIR/demo-customers.csv" --show-rejections 5

step "premium_balance_daily for $DEMO_DATE (airflow dags test; log in $LOG)"
if ! "$AIRFLOW" dags test premium_balance_daily "${DEMO_DATE}T22:00:00+02:00" > "$LOG" 2>&1; then
    tail -40 "$LOG"
    echo "premium_balance_daily failed; full log in $LOG" >&2
    exit 1
fi
grep -E "\] (planned|fetching|wrote chunk|.* done:|balance checks of|PREMIUM_ALERT)" "$LOG" \
    | sed -E 's/^[^ ]+ \[[a-z ]+\] //; s/ \[[a-z_.]+\] loc=.*$//' | cut -c1-170 || true

step "Summary"
"$PY" -m premium.cli balance-summary --date "$DEMO_DATE"
echo "  demo wall time     $(( $(date +%s) - started )) s"
