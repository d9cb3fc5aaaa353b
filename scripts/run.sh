#!/usr/bin/env bash
# Run a Python script of the checkout in the demo's environment (scripts/env.sh): make up/down/demo.
#   bash scripts/run.sh scripts/stack.py up
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/env.sh
. scripts/env.sh
exec "$PREMIUM_ROOT/.venv/bin/python" "$@"
