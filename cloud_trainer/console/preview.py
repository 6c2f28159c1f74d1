"""The console's recommendation preview: a run's exported bundle (``<run>/bundle``) behind the very
function agents answer ``GET /v1/recommendations`` with (:func:`shared.recommendation.recommend`),
through the trainer's served path (:class:`cloud_trainer.evaluation.served.ServedModel`: the
.tflite in LiteRT). No agent code: the trainer does not depend on the edge agent.

Each file is checked against the bundle's manifest (length and sha256), and with a public key the
manifest's signature too, as an agent would before loading it. Loaded models are kept per run.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from cloud_trainer.console.report_view import BUNDLE_DIR
from cloud_trainer.evaluation.served import HistoryEvent, ServedModel
from shared.bundle import CATALOG_FILE, ENVELOPE_FILE, MODEL_FILE, Manifest, check_file, parse_manifest
from shared.catalog import parse_catalog
from shared.events import EventKind
from shared.recommendation import Exclude, RecommendationResult, recommend
from shared.signing import load_public_key, verify

#: Most item ids one preview takes (an agent keeps 200 events of a shopper).
MAX_HISTORY = 200
MAX_K = 100
_SEPARATORS = re.compile(r"[\s,;]+")


class PreviewError(ValueError):
    """The preview cannot be made: what to fix is in the message."""


@dataclass(frozen=True)
class PreviewRequest:
    history: list[str]  # item ids, oldest first
    kind: EventKind
    k: int
    exclude: Exclude
    category: str | None


def parse_request(items: str, kind: str, k: str, exclude: str, category: str) -> PreviewRequest:
    """The form's fields, checked: item ids separated by spaces, commas or new lines."""
    history = [i for i in _SEPARATORS.split(items.strip()) if i][:MAX_HISTORY]
    try:
        count = int(k or 10)
        event_kind = EventKind(kind or EventKind.VIEW.value)
        excluded = Exclude(exclude or Exclude.NONE.value)
    except ValueError as e:
        raise PreviewError(f"bad preview request: {e}") from None
    if not 1 <= count <= MAX_K:
        raise PreviewError(f"k must be between 1 and {MAX_K}")
    return PreviewRequest(history, event_kind, count, excluded, category.strip() or None)


@dataclass(frozen=True)
class Preview:
    manifest: Manifest
    result: RecommendationResult
    unknown: list[str]  # history items the model does not know (ignored, as the agent ignores them)


def load_bundle(bundle: Path, public_key: Path | None = None) -> tuple[Manifest, ServedModel]:
    envelope = (bundle / ENVELOPE_FILE).read_bytes()
    if public_key is not None:
        signed = verify(envelope, load_public_key(public_key.read_bytes()))
    else:
        signed = json.loads(envelope)["signed"]
    manifest = parse_manifest(signed)
    model_bytes, catalog_bytes = (bundle / MODEL_FILE).read_bytes(), (bundle / CATALOG_FILE).read_bytes()
    check_file(manifest, MODEL_FILE, model_bytes)
    check_file(manifest, CATALOG_FILE, catalog_bytes)
    catalog = parse_catalog(catalog_bytes, manifest.model.num_items, manifest.model.history_only_items)
    return manifest, ServedModel(model_bytes, catalog, manifest.model.history_length, manifest.version)


class Previewer:
    """Bundles of runs, loaded on first use and kept (a newer export of a run is loaded again)."""

    def __init__(self, public_key: Path | None = None) -> None:
        self._public_key = public_key
        self._lock = threading.Lock()
        self._loaded: dict[Path, tuple[float, Manifest, ServedModel]] = {}

    def _model(self, run: Path) -> tuple[Manifest, ServedModel]:
        bundle = run / BUNDLE_DIR
        try:
            stamp = (bundle / ENVELOPE_FILE).stat().st_mtime
        except OSError:
            raise PreviewError(f"run {run.name} has no bundle: export it (cloud-trainer export --run RUN)") from None
        with self._lock:
            kept = self._loaded.get(run)
            if kept is None or kept[0] != stamp:
                try:
                    kept = (stamp, *load_bundle(bundle, self._public_key))
                except (OSError, ValueError, KeyError, RuntimeError) as e:
                    raise PreviewError(f"run {run.name}'s bundle cannot be loaded: {e}") from e
                self._loaded[run] = kept
            return kept[1], kept[2]

    def preview(self, run: Path, request: PreviewRequest) -> Preview:
        manifest, model = self._model(run)
        history = [HistoryEvent(item, request.kind) for item in request.history]
        with self._lock:  # one LiteRT interpreter per model: one query at a time
            result = recommend(model, history, request.k, request.exclude, request.category)
        unknown = [item for item in request.history if item not in model.item_index]
        return Preview(manifest, result, unknown)
