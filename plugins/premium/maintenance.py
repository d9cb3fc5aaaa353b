"""Task body of premium_maintenance."""

from __future__ import annotations

import dataclasses
from typing import Any

from premium import runtime
from premium.retention import RetentionSettings, apply


def apply_retention(context: Any) -> dict[str, Any]:
    from premium.connections import premium_db_kwargs

    keys = [f.name for f in dataclasses.fields(RetentionSettings)]
    settings = dataclasses.replace(RetentionSettings(), **runtime.run_overrides(context, keys))
    report = apply(premium_db_kwargs(), runtime.as_of_date(context), settings)
    return {k: len(v) for k, v in report.as_dict().items()}
