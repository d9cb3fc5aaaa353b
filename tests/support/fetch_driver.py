"""Runs the balance fetch stage for one id range in its own process, for a test to SIGKILL mid-chunk.

    python -m tests.support.fetch_driver '<json>'

The JSON: ``conninfo``, ``check_date`` (ISO), ``descriptor`` (the fields of a
:class:`premium.banking.stage.ChunkDescriptor`), ``settings`` (BalanceSettings overrides),
``base_url`` and ``api_key`` of the core-banking simulator, ``correlation_id``. Prints the fetch
summary as JSON when the range is done (a killed run prints nothing).
"""

from __future__ import annotations

import json
import sys
from datetime import date


def main(raw: str) -> int:
    from premium.banking import stage
    from premium.banking.client import BankEndpoint
    from premium.settings import BalanceSettings
    from tests.support.bank import KEYRING

    args = json.loads(raw)
    summary = stage.fetch_chunk(
        args["conninfo"],
        stage.ChunkDescriptor.from_xcom(args["descriptor"]),
        date.fromisoformat(args["check_date"]),
        BalanceSettings(**args.get("settings", {})),
        BankEndpoint(args["base_url"], {"X-API-Key": args["api_key"]}, None, "api_key"),
        args["correlation_id"],
        keyring=KEYRING,
    )
    print(json.dumps(summary.as_dict(), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
