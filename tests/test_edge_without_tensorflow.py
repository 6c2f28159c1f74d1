"""The agent loads and runs a real bundle with LiteRT and never imports TensorFlow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import sys
from pathlib import Path
from edge_agent import api, cli, daemon, mqtt_link  # every agent module a running agent uses
from edge_agent.bundle_loader import load_bundle
from shared.recommendation import recommend
from shared.bundle import ENVELOPE_FILE, parse_manifest
from shared.signing import load_public_key, verify

bundle, pub = Path(sys.argv[1]), Path(sys.argv[2])
manifest = parse_manifest(verify((bundle / ENVELOPE_FILE).read_bytes(), load_public_key(pub.read_bytes())))
files = {name: (bundle / name).read_bytes() for name in manifest.files}
model = load_bundle(manifest, files, num_threads=1)

class E:
    def __init__(self, item_id):
        from shared.events import EventKind
        self.item_id, self.kind, self.timestamp = item_id, EventKind.PURCHASE, None

result = recommend(model, [E(model.catalog.items[3].id)], 5)
assert len(result.items) == 5 and not result.fallback
print("runtime", model.runtime)
loaded = sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow.") or m == "keras")
print("tensorflow modules:", loaded)
sys.exit(1 if loaded else 0)
"""


def test_agent_runs_a_bundle_without_tensorflow(int8_bundle: Path, keys: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(int8_bundle), str(keys / "signing.pub")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "runtime litert" in result.stdout
    assert "tensorflow modules: []" in result.stdout
