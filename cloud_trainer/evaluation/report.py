"""The evaluation's report: its Markdown tables (:class:`Report`), and for an evaluated run
``<run>/report/report.md`` with PNG plots.

Written by ``cloud-trainer evaluate --run RUN``: the run's configuration and data, the metric
tables of the model (float and int8) beside the baselines, recall@K curves of every row in both
modes, and the training loss per epoch when the model has one (the factorized model is fitted in
closed form: no loss to plot, and the report says so).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud_trainer.evaluation.metrics import CURVE_AT, NDCG_AT, RECALL_AT
from cloud_trainer.evaluation.splits import MODES

REPORT_DIR = "report"
#: The key of a row's only figure when it was not computed at this size (the tables say so).
NOT_COMPUTED = "not computed"


@dataclass
class Report:
    rows: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # name -> mode -> metrics
    cold_start: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> cold_start_metrics
    among_new: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> among_new_items
    scenes: dict[str, dict[str, float]] = field(default_factory=dict)  # scene: name -> evaluate_scenes row
    notes: list[str] = field(default_factory=list)  # one line each: what was not computed for this run, and why

    def table(self) -> str:
        columns = ([f"recall@{k}" for k in RECALL_AT] + ["se(recall@20)"] + [f"ndcg@{k}" for k in NDCG_AT]
                   + ["coverage@20", "users"])
        lines = []
        for mode in MODES:
            lines.append(f"mode {mode}")
            lines.append("| " + " | ".join(["model", *columns]) + " |")
            lines.append("|" + " --- |" * (len(columns) + 1))
            for name, modes in self.rows.items():
                cells = [str(modes[mode].get(c, NOT_COMPUTED)) for c in columns]
                lines.append("| " + " | ".join([name, *cells]) + " |")
            lines.append("")
        return "\n".join(lines)

    def text(self) -> str:
        """Every table: both modes, then the cold-start ones."""
        notes = [f"note: {note}" for note in self.notes]
        return "\n".join([self.table(), *self.cold_start_tables(), *notes]).rstrip() + "\n"

    def cold_start_tables(self) -> list[str]:
        lines = []
        for title, rows in (("new items: shoppers who bought an item without training events, whole catalogue",
                             self.cold_start),
                            ("new items ranked on their own", self.among_new),
                            ("the shop's other pages (shared/scenes.py) as served; metrics in "
                             "cloud_trainer/evaluation/scenes.py", self.scenes)):
            if not rows:
                continue
            columns = list(next(iter(rows.values())))
            lines += [title, "| " + " | ".join(["model", *columns]) + " |", "|" + " --- |" * (len(columns) + 1)]
            lines += ["| " + " | ".join([name, *(str(m[c]) for c in columns)]) + " |" for name, m in rows.items()]
            lines.append("")
        return lines


def _curve(metrics: dict[str, float]) -> tuple[list[int], list[float]]:
    ks = [k for k in CURVE_AT if f"recall@{k}" in metrics]
    return ks, [metrics[f"recall@{k}"] for k in ks]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _plot_recall(report: Report, out: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(MODES), figsize=(11, 4.2), sharey=False)
    for ax, mode in zip(axes, MODES, strict=True):
        for name, modes in report.rows.items():
            ks, values = _curve(modes[mode])
            model = name.startswith("model")
            ax.plot(ks, values, marker="o", linewidth=2.4 if model else 1.2, linestyle="-" if model else "--",
                    label=name)
        ax.set_xscale("log")
        ax.set_xticks(list(CURVE_AT), [str(k) for k in CURVE_AT])
        ax.set_xlabel("K (full ranking over all training items)")
        ax.set_ylabel("Recall@K")
        ax.set_title(f"mode {mode}" + (" (items bought before excluded)" if mode == "new" else ""))
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _plot_loss(loss: list[float], out: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(range(1, len(loss) + 1), loss, marker="o")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _tuning(run_dir: Path) -> list[str]:
    """The settings search of ``train`` (cloud_trainer.models.tuning), if it ran."""
    path = run_dir / "tuning.json"
    if not path.exists():
        return []
    tuning = json.loads(path.read_text())
    trials = sorted(tuning["trials"], key=lambda t: -t["objective"])
    names = list(tuning["chosen"])
    lines = [
        "## Settings chosen on the validation window",
        "",
        f"Searched: {', '.join(tuning['searched'])}, by coordinate ascent on the training events from "
        f"{tuning['validation_from']} (UTC) on ({tuning['validation_shoppers']} shoppers; models fitted on "
        f"the events before). {len(trials)} trials in {tuning['seconds']} s of a {tuning['budget_s']:g} s "
        f"budget; stopped: {tuning['stopped_by']}. Objective: the mean of Recall@20 in modes all and new.",
        "",
        "| setting | start | chosen |",
        "| --- | --- | --- |",
        *[f"| {name} | {tuning['start'][name]} | {tuning['chosen'][name]} |" for name in names],
        "",
    ]
    if trials:
        lines += ["The best trials:", "", "| " + " | ".join([*names, "recall@20 all", "recall@20 new", "objective"])
                  + " |", "|" + " --- |" * (len(names) + 3)]
        lines += ["| " + " | ".join(str(t[c]) for c in [*names, "recall@20 all", "recall@20 new", "objective"])
                  + " |" for t in trials[:5]]
        lines.append("")
    return lines


def _blend(run_dir: Path) -> list[str]:
    """A blend run's weight choice (cloud_trainer.models.blend_choice) and its factorized part's settings search."""
    path = run_dir / "blend.json"
    if not path.exists():
        return []
    blend = json.loads(path.read_text())
    lines = ["## The blend's weight, chosen on the validation window", "",
             f"The transformer's weight a = {blend['a']} ({blend['stopped_by']}; {blend['shoppers']} shoppers of the "
             f"training events from {blend['validation_from']} on, the factorized model refitted on the events "
             "before). Validation Recall@20 at each weight:", "",
             "| a | all | new | objective |", "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {r['all']} | {r['new']} | {r['objective']} |" for a, r in blend["recall"].items()]
    return [*lines, "", *_tuning(run_dir / "factorized")]


def write_report(run_dir: Path, report: Report, test_from: str) -> Path:
    """Write ``run_dir/report/`` and return the Markdown file's path."""
    folder = run_dir / REPORT_DIR
    folder.mkdir(exist_ok=True)
    config = json.loads((run_dir / "config.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").exists() else {}
    _plot_recall(report, folder / "recall_at_k.png")
    loss = [float(v) for v in metrics.get("loss") or []]
    lines = [
        f"# Evaluation of run `{run_dir.name}`",
        "",
        f"Test period from {test_from} (UTC); the model and every baseline were fitted on earlier events only.",
        "Full ranking over every item the model knows (the baselines: the training items). The int8 row is",
        "what agents serve: the exported graph behind the agent's recommendation function, with its history",
        "cap, exclusions and popularity fill. Recall@K = hits / min(K, |targets|) (so a curve can dip at",
        "small K, where the denominator is K); NDCG@K binary; se: the standard error of the mean Recall@20.",
        "Mode **all**: targets are the distinct items bought in the test period. Mode **new**: items the",
        "shopper never bought before, with their past items excluded from the ranking.",
        "",
        "## Configuration",
        "",
        *[f"- `{key}`: {value}" for key, value in sorted(config.items()) if not isinstance(value, (dict, list))],
        "",
    ]
    data = [f"- {key.replace('_', ' ')}: {metrics[key]}" for key in
            ("events_read", "events_kept", "events_skipped", "users", "items", "examples") if key in metrics]
    if data:
        lines += ["## Training data", "", *data, ""]
    lines += _tuning(run_dir) + _blend(run_dir)
    lines += ["## Metrics", "", report.table(), ""]
    if report.notes:
        lines += ["Not computed for this run:", "", *[f"- {note}" for note in report.notes], ""]
    if report.cold_start:
        lines += [
            "## New items (cold start)",
            "",
            "New items are items bought in the test period that have no training events. The run knows the",
            f"new items of its items file ({metrics.get('new_items', 0)}) through vectors predicted from their",
            "side features (title words, category, price bucket; `cloud_trainer/side_features.py`). The first",
            "table ranks the whole catalogue for the shoppers who bought a new item, with and without the new",
            "items; the second ranks only the new items for them (a \"new for you\" shelf), with each kind of",
            "side feature left out. A bought item that the items file does not list counts as a miss.",
            "",
            *report.cold_start_tables(),
        ]
    elif report.scenes:  # no cold-start figures (a transformer run, or none bought a new item): the scenes alone
        lines += ["## The shop's other pages", "", *report.cold_start_tables()]
    lines += ["## Recall@K", "", "![Recall@K](recall_at_k.png)", ""]
    lines += ["## Training loss", ""]
    if loss:
        _plot_loss(loss, folder / "training_loss.png")
        lines += ["![training loss per epoch](training_loss.png)", "",
                  "Per epoch: " + ", ".join(f"{v:.4f}" for v in loss), ""]
    else:
        lines += [f"The `{config.get('model', 'two-tower')}` model is fitted in closed form (no epochs, no loss).",
                  ""]
    if "train_seconds" in metrics:
        lines += [f"Training wall time: {metrics['train_seconds']} s.", ""]
    path = folder / "report.md"
    path.write_text("\n".join(lines))
    return path
