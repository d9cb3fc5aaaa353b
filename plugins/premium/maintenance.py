"""Task body of premium_maintenance."""

from __future__ import annotations

from typing import Any

from premium import runtime
from premium.retention import apply


def apply_retention(context: Any) -> dict[str, Any]:
    from premium.connections import premium_db_kwargs

    settings = runtime.run_settings(context, "retention")  # the deployment's alone: the DAG declares no params
    report = apply(premium_db_kwargs(), runtime.as_of_date(context), settings)
    return {k: len(v) for k, v in report.as_dict().items()}
