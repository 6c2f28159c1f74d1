"""The fleet's outcomes per model version and arm, as ``cloud-trainer fleet status`` shows them (pure).

Cells come from the agents' statuses (:func:`shared.outcomes.fleet_cells`, which skips malformed
ones); this module only sums, derives the rates and lays them out. Rollout decisions are
:mod:`cloud_trainer.delivery.outcome_judge`'s, with an always-valid test: the 95% intervals here
hold for one look only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from shared.outcomes import cells_of_status, fleet_cells

Z_95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (one look; 95% by default); (0, 1) without trials."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    shrink = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / shrink
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / shrink
    return (0.0 if successes == 0 else centre - half), (1.0 if successes == trials else centre + half)


def outcome_rows(statuses: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (model version, arm), newest version first: the summed counts, the devices
    reporting the cell, CTR (clicks per impression), conversion per request with its interval."""
    devices: dict[tuple[int, str], int] = {}
    for status in statuses.values():
        for key in {(c.model_version, c.arm.value) for c in cells_of_status(status)}:
            devices[key] = devices.get(key, 0) + 1
    rows = []
    for (version, arm), cell in sorted(fleet_cells(statuses).items(), key=lambda kv: (-kv[0][0], kv[0][1].value)):
        low, high = wilson_interval(cell.converted_requests, cell.requests)
        rows.append({
            **cell.to_json(), "devices": devices.get((version, arm.value), 0),
            "ctr": cell.clicks / cell.impressions if cell.impressions else None,
            "conversion_rate": cell.converted_requests / cell.requests if cell.requests else None,
            "conversion_ci95": [low, high],
        })
    return rows


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def outcome_table(rows: list[dict[str, Any]]) -> str:
    header = ("version", "arm", "devices", "requests", "impressions", "clicks", "CTR", "conversion (95% CI)",
              "revenue")
    lines = [header]
    for r in rows:
        low, high = r["conversion_ci95"]
        conversion = "-" if r["conversion_rate"] is None else f"{r['conversion_rate']:.2%} ({low:.2%}-{high:.2%})"
        lines.append((str(r["model_version"]), r["arm"], str(r["devices"]), str(r["requests"]), str(r["impressions"]),
                      str(r["clicks"]), _percent(r["ctr"]), conversion, f"{r['revenue']:.2f}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines)
