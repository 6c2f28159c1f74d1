"""``--model blend`` on a planted shop: both models trained, the weight chosen on the validation
window as served, one graph that is exactly the standardised mix of the two models, exported int8
through the gates, served and explained by a real agent, and scored by ``cloud-trainer evaluate``."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_transformer import TEST_FROM, planted_events, serves_b_because_a

from devtools.processes import AgentProcess, Broker
from harness import manifest_of, serving_agent
from shared import SEQUENCE_CONTRACT_VERSION


@pytest.fixture(scope="module")
def blend_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cloud_trainer.train import TrainConfig, train

    folder = tmp_path_factory.mktemp("blend")
    events = planted_events(folder / "events.csv.gz", users=2500, start_days=4, new_day=0.3)
    run = folder / "run"
    train(TrainConfig(events=str(events), model="blend", dim=16, epochs=4, batch_size=128, learning_rate=5e-3,
                      calibration_histories=256, test_from=TEST_FROM, tune_budget=30.0), run)
    return run


def _with_weight(run: Path, a: float, folder: Path) -> Path:
    """A copy of ``run`` as if its validation window had chosen ``a``."""
    copy = folder / f"run-{a}"
    shutil.copytree(run, copy)
    blend = json.loads((copy / "blend.json").read_text())
    (copy / "blend.json").write_text(json.dumps({**blend, "a": a}))
    return copy


@pytest.fixture(scope="module")
def mixed_run(blend_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The planted run with both models in the mix (its own choice may leave one: the test below)."""
    return _with_weight(blend_run, 0.4, tmp_path_factory.mktemp("mixed"))


@pytest.fixture(scope="module")
def blend_bundle(mixed_run: Path, keys: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cloud_trainer.delivery.bundler import BundleOptions, build_bundle
    from shared.topics import CHANNELS

    out = tmp_path_factory.mktemp("blend-bundle")
    build_bundle(mixed_run, keys / "signing.key", out, BundleOptions(variant="auto", version=3000, channels=CHANNELS))
    return out


@pytest.fixture
def blend_agent(broker: Broker, blend_bundle: Path, keys: Path, tmp_path: Path) -> Iterator[AgentProcess]:
    with serving_agent(blend_bundle, broker, keys, tmp_path) as agent:
        yield agent


def test_blend_trains_both_models_and_chooses_the_weight_on_the_validation_window(blend_run: Path) -> None:
    from cloud_trainer.models.blend import BLEND_WEIGHTS
    from cloud_trainer.models.blend_choice import chosen_weight

    assert (blend_run / "factorized" / "model.keras").exists() and (blend_run / "transformer" / "model.keras").exists()
    assert (blend_run / "factorized" / "tuning.json").exists()  # the factorized part tuned as alone
    config = json.loads((blend_run / "config.json").read_text())
    blend = json.loads((blend_run / "blend.json").read_text())
    assert config["model"] == "blend" and blend["stopped_by"] != "too few shoppers" and blend["shoppers"] >= 50
    assert blend["validation_from"] < TEST_FROM  # chosen inside the training period
    objectives = {float(a): figures["objective"] for a, figures in blend["recall"].items()}
    assert sorted(objectives) == list(BLEND_WEIGHTS)
    assert (blend["a"], blend["stopped_by"]) == chosen_weight(blend["recall"])
    best = max(BLEND_WEIGHTS, key=lambda a: (objectives[a], -a))
    assert blend["recall"]["0.0"]["gain"] == 0.0 and blend["recall"][str(best)]["gain"] == pytest.approx(
        objectives[best] - objectives[0.0], abs=2e-4)
    assert config["history_length"] == max(blend["factorized_history_length"], 50)


def test_a_weight_is_kept_only_for_a_clear_gain_over_the_factorized_model() -> None:
    from cloud_trainer.models.blend_choice import MIN_GAIN_SE, chosen_weight, objective_gain

    # 4 shoppers; mode new counts 2 of them: shares (d_all / 4 + d_new / 2) / 2 per shopper
    alone = {"all": np.array([0.5, 0.5, 0.0, 1.0]), "new": np.array([0.0, np.nan, 0.5, np.nan])}
    mine = {"all": np.array([1.0, 0.5, 0.0, 1.0]), "new": np.array([0.5, np.nan, 0.5, np.nan])}
    gain, se = objective_gain(mine, alone)
    shares = np.array([(0.5 / 4 + 0.5 / 2) / 2, 0.0, 0.0, 0.0])
    assert gain == pytest.approx(shares.sum()) and se == pytest.approx(np.sqrt(4 * shares.var(ddof=1)))

    def figures(gain: float, se: float, objective: float) -> dict[str, float]:
        return {"objective": objective, "gain": gain, "se(gain)": se}

    base = figures(0.0, 0.0, 0.30)
    clear = {"0.0": base, "0.5": figures(0.05, 0.02, 0.35), "0.7": figures(0.04, 0.01, 0.34)}
    assert chosen_weight(clear)[0] == 0.5  # the best objective (2.5 standard errors), not the clearest
    noisy = {"0.0": base, "0.5": figures(0.05, 0.05 / MIN_GAIN_SE, 0.35)}
    assert chosen_weight(noisy)[0] == 0.0 and "within" in chosen_weight(noisy)[1]
    assert chosen_weight({"0.0": base, "0.2": figures(-0.01, 0.01, 0.29)})[0] == 0.0


def test_the_blend_graph_is_the_standardised_mix_of_the_two_models(blend_run: Path) -> None:
    """Checked against the two models' own Keras scores, standardised over the catalogue with numpy
    (not the graph's covariance arithmetic): the float32 graph returns the same top items, and its
    scores differ from the mix by one constant per shopper (the means it leaves out)."""
    import keras

    from cloud_trainer.blend_training import load_blend
    from cloud_trainer.delivery.export_blend import blend_to_tflite
    from cloud_trainer.delivery.litert import LiteRTModel
    from cloud_trainer.models.dot_product import model_from_weights

    weights = replace(load_blend(blend_run), a=0.4)  # a mix, whatever weight the run chose
    f, lf = weights.factorized, weights.factorized_length
    histories = np.load(blend_run / "histories.npz")
    items, kinds, gaps = histories["items"][:60], histories["kinds"][:60], histories["gaps"][:60]
    present = kinds[:, :lf] > 0
    own = model_from_weights(replace(f, repeat_weight=0.0), lf).predict(
        [items[:, :lf], present.astype(np.float32)], verbose=0)
    transformer = keras.models.load_model(blend_run / "transformer" / "model.keras")
    t_scores = transformer.predict({"history_items": items[:, :50], "history_kinds": kinds[:, :50],
                                    "history_gaps": gaps[:, :50]}, verbose=0)
    t_scores = np.c_[t_scores, np.zeros((len(items), f.num_items - t_scores.shape[1]))]  # no cold items here
    counts = np.stack([np.bincount(row[p], minlength=f.num_items) for row, p in zip(items[:, :lf], present,
                                                                                        strict=True)])
    sd_f = own.std(axis=1, keepdims=True)
    expected = 0.6 * (own + f.repeat_weight * counts) / sd_f + 0.4 * t_scores / t_scores.std(axis=1, keepdims=True)
    model = LiteRTModel(blend_to_tflite(weights, 20, "float32", {}, explanations=True))
    agree = []
    for n in range(len(items)):
        out = model(items[n : n + 1], None, None, history_kinds=kinds[n : n + 1], history_gaps=gaps[n : n + 1])
        got, scores = out["item_indices"][0], out["scores"][0]
        want = np.argsort(-expected[n], kind="stable")[:20]
        agree.append(len(set(got[:10].tolist()) & set(want[:10].tolist())) / 10)
        shift = scores - expected[n][got]
        assert np.ptp(shift) < 1e-3 * np.ptp(expected[n]), (n, shift)
        assert out["contributions"].shape == (1, min(weights.history_length, 50), 20)
    assert np.mean(agree) > 0.98, agree


def test_the_validation_ranking_is_the_served_one(blend_run: Path) -> None:
    """What the weight is chosen on ranks as the agent's path ranks the blend (float32 in LiteRT,
    :func:`shared.recommendation.recommend`): the same holdings, exclusions and repeat term."""
    import keras

    from cloud_trainer.data.events_io import read_events
    from cloud_trainer.delivery.export_blend import blend_to_tflite
    from cloud_trainer.evaluation.served import ServedModel, served_rankings, stored_shoppers
    from cloud_trainer.evaluation.splits import cut_time, train_period
    from cloud_trainer.models import tuning
    from cloud_trainer.models.blend import BlendWeights, TransformerWeights
    from cloud_trainer.models.blend_choice import validation_rankings
    from shared.catalog import Catalog
    from shared.recommendation import Exclude

    table = train_period(read_events(blend_run.parent / "events.csv.gz"), cut_time(TEST_FROM))
    validation = tuning.validation_window(table, {}, 0.1)
    scorer = tuning.ValidationScorer(validation, 7)
    candidate = tuning.Candidate(rank=16, history_length=30, repeat_weight=0.3, recency=0.95)
    transformer = keras.models.load_model(blend_run / "transformer" / "model.keras")
    ranked = validation_rankings(validation, scorer, candidate, transformer, table.item_ids, (0.5,))[0.5]
    index = {item: n for n, item in enumerate(table.item_ids)}
    weights = BlendWeights(scorer.weights(candidate), TransformerWeights.of(
        transformer, np.asarray([index[item] for item in validation.train.item_ids])), 0.5, 30)
    catalog = Catalog(items=tuple(validation.known), popular=tuple(range(10)))
    served = ServedModel(blend_to_tflite(weights, 30, "float32", {}), catalog, weights.history_length)
    shoppers = stored_shoppers(validation.train, validation.data.history, now=validation.start)
    assert len(shoppers) > 20
    for mode, exclude in (("all", Exclude.NONE), ("new", Exclude.PURCHASED)):
        got = served_rankings(served, shoppers, tuning.K, exclude)
        agree = np.mean([len(set(a) & set(b)) / tuning.K for a, b in zip(ranked[mode], got, strict=True)])
        assert agree > 0.99, (mode, agree)


def test_the_blend_exports_through_the_gates_under_the_sequence_contract(blend_bundle: Path) -> None:
    """``auto``: int8, or float16 where int8 fails a gate (said in the manifest)."""
    manifest = manifest_of(blend_bundle)
    assert manifest.model.contract_version == SEQUENCE_CONTRACT_VERSION
    assert manifest.model.variant == "int8" or (manifest.model.variant == "float16"
                                                and "int8" in manifest.training["variants_refused"])
    assert manifest.training["model"] == "blend" and manifest.training["blend_weight"] == 0.4
    parity, gate = manifest.training["parity"], manifest.training["quality_gate"]
    assert isinstance(parity, dict) and parity["ok"] and isinstance(gate, dict) and gate["ok"]


def test_a_real_agent_serves_the_blend_and_explains_b_by_a(blend_agent: AgentProcess) -> None:
    serves_b_because_a(blend_agent, 3000, "&exclude=seen")  # seen: the repeat term would return A itself


@pytest.mark.parametrize(("a", "part"), [(0.0, "factorized"), (1.0, "transformer")])
def test_a_weight_that_leaves_one_model_bundles_that_model_alone(blend_run: Path, keys: Path, tmp_path: Path,
                                                                  a: float, part: str) -> None:
    """The same ranking as the blend's graph at that weight, without the other model's cost."""
    from cloud_trainer.delivery.bundler import BundleOptions, build_bundle
    from shared import CONTRACT_VERSION

    manifest = build_bundle(_with_weight(blend_run, a, tmp_path), keys / "signing.key", tmp_path / "bundle",
                            BundleOptions(variant="auto", version=1))
    assert manifest.training["run"] == part
    version = CONTRACT_VERSION if part == "factorized" else SEQUENCE_CONTRACT_VERSION
    assert manifest.model.contract_version == version


def test_evaluate_scores_a_blend_run_as_served(blend_run: Path, mixed_run: Path) -> None:
    from devtools.trainer_cli import run as trainer

    events = blend_run.parent / "events.csv.gz"
    done = trainer("evaluate", "--run", str(mixed_run), "--events", str(events))
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    evaluation = json.loads((mixed_run / "evaluation.json").read_text())
    served = evaluation["served_row"]
    for mode in ("all", "new"):
        assert evaluation[served][mode]["users"] > 20 and 0.0 < evaluation[served][mode]["recall@20"] <= 1.0
    report = (mixed_run / "report" / "report.md").read_text()
    assert "The blend's weight" in report and "| 0.4 |" in report and "Settings chosen on the validation" in report
