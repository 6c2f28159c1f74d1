"""Loading a bundle into the interpreter: every file checked against its manifest, the catalog
parsed, the model loaded and self-tested (see :class:`edge_agent.loaded_model.LoadedModel`)."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.loaded_model import LoadedModel
from edge_agent.model_store import ModelStore
from shared.bundle import CATALOG_FILE, MODEL_FILE, Manifest, check_file, parse_manifest
from shared.catalog import parse_catalog
from shared.errors import BundleError
from shared.signing import TrustedKeys, verify


def load_bundle(manifest: Manifest, files: dict[str, bytes], num_threads: int) -> LoadedModel:
    for name in manifest.files:
        check_file(manifest, name, files.get(name, b""))
    catalog = parse_catalog(files[CATALOG_FILE], manifest.model.num_items, manifest.model.history_only_items)
    return LoadedModel(manifest, files[MODEL_FILE], catalog, num_threads=num_threads)


def load_installed(store: ModelStore, version: int, trusted_key: Ed25519PublicKey | TrustedKeys,
                   num_threads: int) -> LoadedModel:
    """An installed version, its envelope verified again (the disk is not trusted more than the broker;
    a key rotated out since it was installed still vouches for it, a revoked one does not)."""
    envelope, files = store.read_version(version)
    manifest = parse_manifest(verify(envelope, trusted_key, stored=True))
    if manifest.version != version:
        raise BundleError(f"installed folder {version} holds version {manifest.version}")
    return load_bundle(manifest, files, num_threads)
