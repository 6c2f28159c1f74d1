"""The evaluation protocol on hand-computed toy cases, the split's leak guards, and the baselines."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from cloud_trainer.data.events_io import KIND_CODES, EventTable, ReadReport
from cloud_trainer.evaluation import baselines, splits
from cloud_trainer.evaluation import metrics as ev_metrics
from cloud_trainer.evaluation.report import Report
from shared.events import EventKind

ROOT = Path(__file__).resolve().parent.parent
DAY = 86_400.0
CUT = datetime(2011, 11, 9, tzinfo=UTC).timestamp()
P, V = KIND_CODES[EventKind.PURCHASE], KIND_CODES[EventKind.VIEW]


def table(rows: list[tuple[str, str, int, float]]) -> EventTable:
    """Events from (user, item, kind code, days relative to the cut)."""
    users = list(dict.fromkeys(r[0] for r in rows))
    items = list(dict.fromkeys(r[1] for r in rows))
    return EventTable(
        user_ids=users, item_ids=items,
        user=np.array([users.index(r[0]) for r in rows], dtype=np.int32),
        item=np.array([items.index(r[1]) for r in rows], dtype=np.int32),
        kind=np.array([r[2] for r in rows], dtype=np.int8),
        timestamp=np.array([CUT + r[3] * DAY for r in rows]),
        report=ReadReport(),
    )


TOY = table([
    ("ann", "a", P, -10), ("ann", "b", P, -5), ("ann", "c", V, -1),  # train
    ("ann", "a", P, 1), ("ann", "d", P, 2), ("ann", "z", P, 3),  # test: a repeat, d new, z unknown in train
    ("bob", "b", V, -3),  # never bought in train: not a test user
    ("bob", "d", P, 1),
    ("cat", "c", P, -2),  # bought in train, nothing known bought in test: not a test user
    ("cat", "z", P, 2),
    ("dan", "d", P, -4), ("dan", "b", P, -4),
    ("dan", "d", P, 5),  # only a repeat: a test user in mode all, none in mode new
])


def test_split_picks_test_users_targets_and_never_leaks_the_test_period() -> None:
    data = splits.split(TOY, CUT)
    assert data.train.item_ids == ["a", "b", "c", "d"]  # z appears only in the test period
    assert data.users == ["ann", "dan"]
    items = data.train.item_ids
    ann, dan = 0, 1
    assert {items[i] for i in data.targets["all"][ann]} == {"a", "d"}
    assert {items[i] for i in data.targets["new"][ann]} == {"d"}
    assert {items[i] for i in data.bought_before[ann]} == {"a", "b"}
    assert data.targets["new"][dan] == set()
    assert (data.train.timestamp < CUT).all()
    for rows in data.history:  # the inputs a model sees: training events only, in time order
        assert (data.train.timestamp[rows] < CUT).all()
        assert list(data.train.timestamp[rows]) == sorted(data.train.timestamp[rows])


def test_cold_start_split_finds_the_shoppers_of_new_items_without_leaking_the_test_period() -> None:
    # z has no training events; the run's catalogue lists it after the trained items, beside y (never bought)
    data = splits.cold_start_split(TOY, CUT, ["a", "b", "c", "d", "y", "z"])
    assert data.users == ["ann", "cat"]  # bob bought z too, but nothing in training
    assert data.num_known == 4 and data.num_items == 6
    assert data.new_targets == [{5}, {5}] and data.all_targets == [{0, 3, 5}, {5}]
    train = splits.train_period(TOY, CUT)
    for rows in data.history:
        assert (train.timestamp[rows] < CUT).all()
    # a catalogue without z: z is a target nobody can hit
    unlisted = splits.cold_start_split(TOY, CUT, ["a", "b", "c", "d"])
    assert unlisted.new_targets == [{-1}, {-1}] and unlisted.num_items == 4
    with pytest.raises(ValueError, match="training period's items"):
        splits.cold_start_split(TOY, CUT, ["b", "a", "c", "d", "z"])


def test_cold_start_metrics_by_hand() -> None:
    data = splits.cold_start_split(TOY, CUT, ["a", "b", "c", "d", "y", "z"])
    # ann: z (5) first, then a, y, ...; cat: y (4) first, then z
    scores = np.array([[5.0, 1, 1, 1, 4, 9], [1, 1, 1, 1, 9, 8]])
    metrics = ev_metrics.cold_start_metrics(ev_metrics.top_k(scores, 6), data, k=2)
    assert metrics["recall@2 new items"] == pytest.approx((1 + 1) / 2)
    assert metrics["recall@2 all items"] == pytest.approx((2 / 2 + 1) / 2)  # ann: z and a of a, d, z
    assert metrics["new-item share of top 2"] == pytest.approx(3 / 4)
    new_only = np.arange(6) >= data.num_known
    ranked = ev_metrics.ranked_in_batches(lambda rows: scores[rows], 2, 6, 2, new_only, batch=1)
    among = ev_metrics.among_new_items(ranked, data, ks=(1, 2))
    assert among == {"recall@1": 0.5, "recall@2": 1.0}  # ann ranks z first, cat ranks y first
    # random order of the 2 new items: each shopper's one target is first half the time
    assert ev_metrics.random_among_new_items(data, ks=(1, 2)) == {"recall@1": 0.5, "recall@2": 1.0}


def test_recall_and_ndcg_by_hand() -> None:
    ranked = np.array([[5, 1, 7, 2] + list(range(10, 56)), list(range(100, 150))])
    metrics = ev_metrics.recall_ndcg(ranked, [{1, 2, 99}, {100}])
    # user 1: hits at ranks 2 and 4 of 3 targets; user 2: a hit at rank 1 of 1 target
    assert metrics["users"] == 2
    assert metrics["recall@10"] == pytest.approx(round((2 / 3 + 1) / 2, 4))
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert metrics["ndcg@10"] == pytest.approx(round((dcg / idcg + 1) / 2, 4))
    # Recall@K divides by min(K, |targets|): 12 targets, 10 hits in the top 10 -> 1.0
    many = ev_metrics.recall_ndcg(np.array([list(range(50))]), [set(range(12))])
    assert many["recall@10"] == 1.0 and many["recall@20"] == 1.0
    assert ev_metrics.recall_ndcg(np.array([list(range(50))]), [set()])["users"] == 0  # no targets: not counted


def test_top_k_breaks_ties_by_index_and_honours_exclusions() -> None:
    scores = np.array([[1.0, 3.0, 3.0, 0.5, 2.0]])
    assert ev_metrics.top_k(scores, 3).tolist() == [[1, 2, 4]]
    assert ev_metrics.top_k(scores, 3, [{1, 4}]).tolist() == [[2, 0, 3]]


def test_baselines_on_the_toy_split() -> None:
    data = splits.split(TOY, CUT)
    popularity = baselines.popularity_scores(data)
    assert popularity[0].tolist() == [1.0, 2.0, 1.0, 1.0]  # distinct buyers of a, b, c, d in training
    repeat = baselines.repeat_purchase_scores(data)
    assert ev_metrics.top_k(repeat, 2).tolist()[0] == [1, 0]  # ann's own items (b before a: b is more popular)
    results = ev_metrics.evaluate(repeat, data)
    assert results["all"]["users"] == 2 and results["new"]["users"] == 1
    # ann ranks b, a, c, d (targets a, d: ranks 2 and 4); dan ranks b, d (target d: rank 2)
    ann = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    dan = 1 / math.log2(3)
    assert results["all"]["ndcg@10"] == pytest.approx(round((ann + dan) / 2, 4))
    # mode new: ann's past items a, b are excluded, so c, d remain and d (target) ranks 2nd
    assert results["new"]["ndcg@10"] == pytest.approx(round(1 / math.log2(3), 4))
    ease = baselines.ease_scores(data, lam=1.0)
    assert np.isfinite(ease).all() and ease.shape == (2, 4)


def test_baselines_reproduce_the_published_reference_on_online_retail(datasets: Path, tmp_path: Path) -> None:
    """The reference figures in ../shared/docs/facts.md, computed independently of this code."""
    from cloud_trainer.data.converters import prepare_online_retail
    from cloud_trainer.data.events_io import read_events

    prepare_online_retail(datasets / "online_retail" / "online_retail.csv.gz", tmp_path)
    data = splits.split(read_events(tmp_path / "events.csv.gz"), splits.cut_time("2011-11-09"))
    assert len(data.users) == 1394
    reference = {  # recall@20 and ndcg@20, mode all then new
        "popularity": (0.094, 0.088, 0.048, 0.040),
        "item-kNN (cosine)": (0.181, 0.174, 0.084, 0.072),
        "EASE (lambda 200)": (0.278, 0.264, 0.124, 0.104),
    }
    for name, expected in reference.items():
        got = ev_metrics.evaluate(baselines.BASELINES[name](data), data)
        figures = (got["all"]["recall@20"], got["all"]["ndcg@20"], got["new"]["recall@20"], got["new"]["ndcg@20"])
        assert figures == pytest.approx(expected, abs=0.0015), (name, figures)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cloud_trainer.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


def test_train_then_evaluate_prints_the_model_float_and_int8_beside_the_baselines(
    prepared: Path, keys: Path, tmp_path: Path
) -> None:
    events = str(prepared / "events.csv.gz")
    trained = _cli("train", "--events", events, "--items", str(prepared / "items.csv"), "--out",
                   str(tmp_path / "run"), "--test-from", "2010-12-20")
    assert trained.returncode == 0, trained.stderr
    assert json.loads(trained.stdout.splitlines()[0])["new_items"] > 100  # listed, first sold from 2010-12-20
    result = _cli("evaluate", "--events", events, "--run", str(tmp_path / "run"), "--out", str(tmp_path / "t.md"))
    assert result.returncode == 0, result.stderr
    for row in ("model (float, Keras)", "model (int8, LiteRT, as served)", "repeat-purchase", "EASE (lambda 200)"):
        assert result.stdout.count(f"| {row} |") == 2  # mode all and mode new
    saved = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert saved["test_from"] == "2010-12-20" and saved["model (int8, LiteRT, as served)"]["all"]["users"] > 50
    assert (tmp_path / "t.md").read_text().strip() == result.stdout.strip()
    report = (tmp_path / "run" / "report" / "report.md").read_text()
    tables = result.stdout.strip().split("\n\n")
    assert len(tables) == 5 and all(table in report for table in tables) and "![Recall@K](recall_at_k.png)" in report
    # the other pages, served: the basket page beats popular items, each page was asked
    scenes, served = saved["scenes"], "model (int8, LiteRT, as served)"
    assert scenes[f"related: {served}"]["queries"] > 50 and scenes[f"new for you: {served}"]["queries"] > 30
    cart = "cart, with the shopper's history"
    assert scenes[f"{cart}: {served}"]["recall@20"] > scenes[f"{cart}: without the model (popular items)"]["recall@20"]
    # new items: shoppers who bought them are found, and the side features rank what they bought
    cold = saved["cold_start"]
    assert cold["model (int8, LiteRT), trained items only"]["recall@20 new items"] == 0.0
    assert cold["model (int8, LiteRT, as served), with new items"]["users"] > 30
    among = saved["among_new_items"]
    random_order = among["no side features (all new items alike: a random order)"]["recall@10"]
    assert among["int8 (LiteRT), side features as trained"]["recall@10"] > 2 * random_order
    assert among["float, side features: title words only"]["recall@10"] > 2 * random_order
    # the run directory also holds its bundle; the new items are in the model the agents get
    exported = _cli("export", "--run", str(tmp_path / "run"), "--key", str(keys / "signing.key"))
    assert exported.returncode == 0, exported.stderr
    counts = json.loads(trained.stdout.splitlines()[0])
    catalog = json.loads((tmp_path / "run" / "bundle" / "catalog.json").read_text())
    assert len(catalog["items"]) == counts["items"] + counts["new_items"]
    assert f"{counts['items'] + counts['new_items']} items" in exported.stdout  # the signed manifest's count
    png = (tmp_path / "run" / "report" / "recall_at_k.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    curve = saved["model (int8, LiteRT, as served)"]["all"]
    assert all(0 <= curve[f"recall@{k}"] <= 1 for k in ev_metrics.CURVE_AT) and curve["recall@100"] > 0


def test_the_report_plots_recall_curves_and_the_loss_of_a_model_trained_by_epochs(tmp_path: Path) -> None:
    from cloud_trainer.evaluation.report import write_report

    (tmp_path / "config.json").write_text(json.dumps({"model": "two-tower", "dim": 32, "seed": 7}))
    (tmp_path / "metrics.json").write_text(json.dumps({"loss": [7.5, 6.25, 6.0], "users": 3, "items": 4}))
    report = Report()
    for name, scale in (("model (int8, LiteRT)", 1.0), ("popularity", 0.5)):
        row = {f"recall@{k}": round(scale * k / 100, 4) for k in ev_metrics.CURVE_AT}
        report.rows[name] = {mode: row | {"se(recall@20)": 0.01, "ndcg@10": 0.1, "ndcg@20": 0.2, "coverage@20": 0.3,
                                          "users": 3}
                             for mode in splits.MODES}
    text = write_report(tmp_path, report, "2011-11-09").read_text()
    assert "| model (int8, LiteRT) | 0.1 | 0.2 | 0.5 |" in text and "2011-11-09" in text
    assert "6.2500" in text and "- `dim`: 32" in text and "- items: 4" in text
    for png in ("recall_at_k.png", "training_loss.png"):
        assert f"({png})" in text and (tmp_path / "report" / png).read_bytes().startswith(b"\x89PNG")


def test_evaluating_a_run_trained_on_the_test_period_is_refused(prepared: Path, trained_run: Path) -> None:
    result = _cli("evaluate", "--events", str(prepared / "events.csv.gz"), "--run", str(trained_run),
                  "--test-from", "2010-12-20")
    assert result.returncode == 2
    assert "overlaps the test period" in result.stderr and "Traceback" not in result.stderr
    assert _cli("train", "--events", "x", "--out", "y", "--test-from", "2010-13-45").returncode == 2
