"""Shared fixtures: real data slices, one small trained model per session, signing keys, brokers."""

from __future__ import annotations

import gzip
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devtools.processes import AgentProcess, Broker  # noqa: E402
from devtools.processes import broker as local_broker  # noqa: E402
from harness import serving_agent  # noqa: E402

# The emulated Raspberry Pi target (tests/arm64) runs only from `make test-arm64`, which builds its
# root file system and sets this variable; `make test` never collects it.
collect_ignore = [] if os.environ.get("EDGE_REC_ARM64_ROOTFS") else ["arm64"]

DATASETS = Path(os.environ.get("EDGE_REC_DATASETS", ROOT.parent / "shared" / "datasets"))
ONLINE_RETAIL = DATASETS / "online_retail" / "online_retail.csv.gz"
RETAILROCKET = DATASETS / "retailrocket_sample" / "sample_events.csv"
SLICE_ROWS = 60_000  # about five weeks of Online Retail: enough to learn something, quick to train


@pytest.fixture(scope="session")
def datasets() -> Path:
    if not ONLINE_RETAIL.exists():
        pytest.fail(f"datasets not found at {DATASETS}; set EDGE_REC_DATASETS to the shared datasets folder")
    return DATASETS


@pytest.fixture(scope="session")
def retail_slice(datasets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first SLICE_ROWS rows of the real Online Retail file, as the same gzipped CSV format."""
    path = tmp_path_factory.mktemp("data") / "online_retail_slice.csv.gz"
    with gzip.open(ONLINE_RETAIL, "rt", encoding="utf-8") as src, gzip.open(path, "wt", encoding="utf-8") as dst:
        for n, line in enumerate(src):
            if n > SLICE_ROWS:
                break
            dst.write(line)
    return path


@pytest.fixture(scope="session")
def prepared(retail_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cloud_trainer.data.converters import prepare_online_retail

    out = tmp_path_factory.mktemp("prepared")
    prepare_online_retail(retail_slice, out)
    return out


@pytest.fixture(scope="session")
def trained_run(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cloud_trainer.train import TrainConfig, train

    run = tmp_path_factory.mktemp("run")
    config = TrainConfig(
        events=str(prepared / "events.csv.gz"), items=str(prepared / "items.csv"),
        dim=16, epochs=3, batch_size=1024, learning_rate=5e-3, calibration_histories=256, tune=False,
    )
    train(config, run)
    return run


@pytest.fixture(scope="session")
def synthetic_shop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(events, items) of a generated shop with 100 categories where re-purchases are rare
    (devtools/synthetic_shop.py): 180 days, about 70,000 events."""
    from devtools.synthetic_shop import ShopSpec, write

    return write(ShopSpec(users=2500, items=3000, categories=100, tastes=20, seed=11),
                 tmp_path_factory.mktemp("synthetic_shop"))


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from shared.signing import generate_private_key, private_key_pem, public_key_pem

    folder = tmp_path_factory.mktemp("keys")
    key = generate_private_key()
    (folder / "signing.key").write_bytes(private_key_pem(key))
    (folder / "signing.key").chmod(0o600)
    (folder / "signing.pub").write_bytes(public_key_pem(key.public_key()))
    return folder


def make_bundle(run: Path, keys: Path, out: Path, version: int, variant: str = "int8", fleet: str = "default") -> Path:
    from cloud_trainer.delivery.bundler import BundleOptions, build_bundle
    from shared.topics import CHANNELS

    build_bundle(run, keys / "signing.key", out, BundleOptions(variant=variant, version=version, fleet=fleet,
                                                                    channels=CHANNELS))
    return out


@pytest.fixture(scope="session")
def int8_bundle(trained_run: Path, keys: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(trained_run, keys, tmp_path_factory.mktemp("bundle-int8"), version=1000)


@pytest.fixture
def broker() -> Iterator[Broker]:
    with local_broker() as b:
        yield b


@pytest.fixture
def agent_with_model(broker: Broker, int8_bundle: Path, keys: Path, tmp_path: Path) -> Iterator[AgentProcess]:
    with serving_agent(int8_bundle, broker, keys, tmp_path) as agent:  # a late joiner: retained messages
        yield agent
