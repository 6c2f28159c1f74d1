"""Evaluation reports for the console: the runs under a folder, a run's ``evaluation.json``
(written by ``cloud-trainer evaluate``, :mod:`cloud_trainer.evaluation.evaluate_run`) as tables,
and its Recall@K curves as inline SVG drawn here (no image files, no JavaScript).

Reads files; everything else is pure. Run names are looked up among the folder's entries, never
joined to a path as given.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud_trainer.evaluation.metrics import CURVE_AT
from cloud_trainer.evaluation.report import NOT_COMPUTED
from cloud_trainer.evaluation.splits import MODES
from shared.bundle import ENVELOPE_FILE

EVALUATION_FILE = "evaluation.json"
BUNDLE_DIR = "bundle"  # where ``cloud-trainer export`` puts a run's bundle by default
#: Columns of the metric tables, as the Markdown report has them.
COLUMNS = ("recall@10", "recall@20", "recall@50", "se(recall@20)", "ndcg@10", "ndcg@20", "coverage@20", "users")
#: The keys of evaluation.json that are not rows.
NOT_ROWS = {"test_from", "target", "test_users", "served_row", "cold_start", "among_new_items", "scenes", "notes"}
#: Line colours of the plots (colour-blind friendly, Okabe-Ito).
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
WIDTH, HEIGHT, MARGIN = 520, 300, 48


@dataclass(frozen=True)
class RunEntry:
    name: str
    path: Path
    evaluated: bool
    has_bundle: bool


def list_runs(runs: Path | None) -> list[RunEntry]:
    """The run directories directly under ``runs``: those with an evaluation or a bundle."""
    if runs is None or not runs.is_dir():
        return []
    found = []
    for path in sorted(runs.iterdir()):
        if not path.is_dir() or path.name.startswith("."):
            continue
        entry = RunEntry(path.name, path, (path / EVALUATION_FILE).is_file(),
                         (path / BUNDLE_DIR / ENVELOPE_FILE).is_file())
        if entry.evaluated or entry.has_bundle:
            found.append(entry)
    return found


def find_run(runs: Path | None, name: str) -> RunEntry | None:
    return next((r for r in list_runs(runs) if r.name == name), None)


@dataclass
class Curve:
    name: str
    colour: str
    points: str  # the SVG polyline's "x,y x,y ..."
    dots: list[tuple[float, float]]
    served: bool


@dataclass
class Plot:
    mode: str
    curves: list[Curve]
    x_ticks: list[tuple[float, str]]
    y_ticks: list[tuple[float, str]]
    width: int = WIDTH
    height: int = HEIGHT
    margin: int = MARGIN


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[tuple[str, list[str], bool]]  # name, cells, the served row


@dataclass
class ReportView:
    name: str
    test_from: str
    target: str
    test_users: str
    served_row: str | None
    tables: list[Table] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def _plot(mode: str, rows: dict[str, dict[str, Any]], served: str | None) -> Plot:
    ks = list(CURVE_AT)
    series = {name: [(k, m[f"recall@{k}"]) for k in ks if isinstance(m.get(f"recall@{k}"), (int, float))]
              for name, modes in rows.items() if isinstance(m := modes.get(mode), dict)}
    series = {name: points for name, points in series.items() if points}
    top = max([v for points in series.values() for _, v in points] + [0.05])
    step = 0.1 if top <= 0.6 else 0.2  # gridlines at round values
    divisions = math.ceil(float(top) / step - 1e-9)
    top = divisions * step
    inner_w, inner_h = WIDTH - 2 * MARGIN, HEIGHT - 2 * MARGIN
    span = math.log(ks[-1]) - math.log(ks[0])

    def x(k: float) -> float:
        return round(MARGIN + inner_w * (math.log(k) - math.log(ks[0])) / span, 1)

    def y(v: float) -> float:
        return round(HEIGHT - MARGIN - inner_h * float(v) / top, 1)

    curves = []
    for n, (name, points) in enumerate(series.items()):
        dots = [(x(k), y(v)) for k, v in points]
        curves.append(Curve(name, COLOURS[n % len(COLOURS)], " ".join(f"{a},{b}" for a, b in dots), dots,
                            name == served))
    y_ticks = [(y(step * i), f"{step * i:.1f}") for i in range(divisions + 1)]
    return Plot(mode, curves, [(x(k), str(k)) for k in ks], y_ticks)


def report_view(run: RunEntry) -> ReportView:
    """A run's evaluation as tables (both modes, then the cold-start ones) and one plot per mode."""
    data = json.loads((run.path / EVALUATION_FILE).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{run.path / EVALUATION_FILE} is not a JSON object")
    rows = {name: modes for name, modes in data.items() if name not in NOT_ROWS and isinstance(modes, dict)}
    served = data.get("served_row") if isinstance(data.get("served_row"), str) else None
    found = data.get("test_users")
    users: dict[str, Any] = found if isinstance(found, dict) else {}
    view = ReportView(run.name, _cell(data.get("test_from")), _cell(data.get("target")),
                      ", ".join(f"{k} {v}" for k, v in users.items()), served)
    for mode in MODES:
        table = Table(f"mode {mode}", list(COLUMNS), [])
        for name, modes in rows.items():
            found = modes.get(mode)
            metrics: dict[str, Any] = found if isinstance(found, dict) else {}
            cells = [NOT_COMPUTED if NOT_COMPUTED in metrics else _cell(metrics.get(c)) for c in COLUMNS]
            table.rows.append((name, cells, name == served))
        view.tables.append(table)
        view.plots.append(_plot(mode, rows, served))
    for key, title in (("cold_start", "new items: shoppers who bought an item without training events"),
                       ("among_new_items", "new items ranked on their own")):
        section = data.get(key)
        if isinstance(section, dict) and section and all(isinstance(m, dict) for m in section.values()):
            columns = list(next(iter(section.values())))
            view.tables.append(Table(title, columns, [(name, [_cell(m.get(c)) for c in columns], False)
                                                      for name, m in section.items()]))
    return view
