#!/usr/bin/env bash
# make demo: the whole flow end to end on this machine, from nothing, and again a second time.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/env.sh
. scripts/env.sh
PY="$PREMIUM_ROOT/.venv/bin/python"
AIRFLOW="$PREMIUM_ROOT/.venv/bin/airflow"
DEMO_FROM="${DEMO_FROM:-2025-11-01}"
DEMO_DATE="${DEMO_DATE:-2025-11-30}"
DEMO_CUSTOMERS="${DEMO_CUSTOMERS:-2000}"
DEMO_SEED="${DEMO_SEED:-20251118}"
LOG="$PREMIUM_STATE_DIR/demo-airflow.log"
started=$(date +%s)

step() { printf '\n==> %s\n' "$*"; }

step "PostgreSQL at $PREMIUM_PG_HOST:$PREMIUM_PG_PORT"
"$PY" -m premium.cli check-postgres --host "$PREMIUM_PG_HOST" --port "$PREMIUM_PG_PORT"
"$PY" -m premium.cli create-databases "$AIRFLOW_DB_NAME" \
    --host "$PREMIUM_PG_HOST" --port "$PREMIUM_PG_PORT" --user "$PREMIUM_PG_USER"
# The demo's application database starts empty every time, so that every run shows the same month.
"$PY" -m premium.cli create-databases "$PREMIUM_DB_NAME" --recreate \
    --host "$PREMIUM_PG_HOST" --port "$PREMIUM_PG_PORT" --user "$PREMIUM_PG_USER"

step "Airflow metadata DB ($AIRFLOW_DB_NAME) and application schema ($PREMIUM_DB_NAME)"
"$AIRFLOW" db migrate > "$PREMIUM_STATE_DIR/demo-db-migrate.log" 2>&1 || { tail -30 "$PREMIUM_STATE_DIR/demo-db-migrate.log"; exit 1; }
"$AIRFLOW" pools set core_banking_api 4 "Concurrent fetch tasks against the core-banking API" > /dev/null
"$PY" -m premium.cli migrate

step "Simulators on loopback: core banking, SMS carrier (primary and secondary)"
SIMULATORS=(core-banking sms-primary sms-secondary)
stop_simulators() {
    for name in "${SIMULATORS[@]}"; do
        "$PY" -m premium.simulators.runner stop --name "$name" --state-dir "$PREMIUM_STATE_DIR" || true
    done
}
trap stop_simulators EXIT
port_of() { "$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["port"])' "$PREMIUM_STATE_DIR/$1.json"; }
"$PY" -m premium.simulators.runner start --name core-banking --state-dir "$PREMIUM_STATE_DIR" -- \
    --auth api_key --secret-env BANK_SIM_SECRET
for carrier in primary secondary; do
    "$PY" -m premium.simulators.runner start --name "sms-$carrier" --state-dir "$PREMIUM_STATE_DIR" \
        --module premium.simulators.sms_carrier -- --name "$carrier" --secret-env SMS_SIM_SECRET \
        --time-scale 0.01 --callbacks off
done
export AIRFLOW_CONN_CORE_BANKING="{\"conn_type\": \"http\", \"host\": \"127.0.0.1\", \"port\": $(port_of core-banking), \"schema\": \"http\", \"password\": \"$BANK_API_KEY\", \"extra\": {\"auth_type\": \"api_key\"}}"
export AIRFLOW_CONN_SMS_CARRIER="{\"conn_type\": \"http\", \"host\": \"127.0.0.1\", \"port\": $(port_of sms-primary), \"schema\": \"http\", \"password\": \"$SMS_SIM_SECRET\"}"
export AIRFLOW_CONN_SMS_CARRIER_SECONDARY="{\"conn_type\": \"http\", \"host\": \"127.0.0.1\", \"port\": $(port_of sms-secondary), \"schema\": \"http\", \"password\": \"$SMS_SIM_SECRET\"}"

step "Synthetic customer base: $DEMO_CUSTOMERS customers (seed $DEMO_SEED)"
"$PY" -m premium.cli gen-customers --count "$DEMO_CUSTOMERS" --seed "$DEMO_SEED" --out "$PREMIUM_STATE_DIR/demo-customers.csv"
"$PY" -m premium.cli load-customers "$PREMIUM_STATE_DIR/demo-customers.csv" --show-rejections 5

step "premium_balance_daily for every day from $DEMO_FROM to $DEMO_DATE (dag.test; Airflow's log in $LOG)"
if ! "$PY" scripts/demo_runs.py --from "$DEMO_FROM" --to "$DEMO_DATE" > "$LOG" 2>&1; then
    grep '^DEMO ' "$LOG" | sed 's/^DEMO /  /' || true
    tail -40 "$LOG"
    echo "a premium_balance_daily run failed; full log in $LOG" >&2
    exit 1
fi
grep '^DEMO ' "$LOG" | sed 's/^DEMO /  /'

step "Summary"
"$PY" -m premium.cli balance-summary --date "$DEMO_DATE"
"$PY" -m premium.cli campaign-summary --date "$DEMO_DATE"
echo "  demo wall time     $(( $(date +%s) - started )) s"
