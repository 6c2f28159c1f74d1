"""Bundle files on an origin (a folder any web server serves, object storage behind a CDN), and
their URLs in the signed manifest.

Layout, immutable: ``<dir>/<fleet>/<version>/<file>``, and each file's URL is
``<base>/<fleet>/<version>/<file>``. A version's files never change once written (a rewrite with
other bytes is refused), so a CDN may cache them for ever. Agents fetch each file with HTTP Range
requests and check every chunk against the manifest (:mod:`edge_agent.origin_fetch`): the origin
is not trusted, like the broker.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from pathlib import Path

from cloud_trainer.errors import ReleaseError
from shared.bundle import MalformedManifest, Manifest, check_file, sha256_hex
from shared.manifest import check_origin_url

#: Broker families with limits a bundle's chunks must fit (``export --broker-preset``).
#: AWS IoT Core: a PUBLISH payload of at most 128 KB (and at most 8 topics per SUBSCRIBE, which is
#: the agents' ``mqtt.subscribe_batch``); 120 KiB chunks fit it whichever KB is meant.
CHUNK_SIZE_PRESETS = {"mosquitto": 256 * 1024, "aws-iot": 120 * 1024}


def file_url(base: str, fleet: str, version: int, name: str) -> str:
    return f"{base.rstrip('/')}/{fleet}/{int(version)}/{name}"


def with_origin(manifest: Manifest, base: str) -> Manifest:
    """``manifest`` whose every file lists its URL under ``base`` (to be signed)."""
    try:
        check_origin_url(base.rstrip("/") + "/", "--origin-url")
        files = {name: replace(entry, urls=(check_origin_url(file_url(base, manifest.fleet, manifest.version, name),
                                                             f"the URL of {name}"),))
                 for name, entry in manifest.files.items()}
    except MalformedManifest as e:
        raise ReleaseError(str(e)) from None
    return replace(manifest, files=files)


def write_origin(folder: Path, manifest: Manifest, files: dict[str, bytes]) -> list[Path]:
    """Write ``files`` under ``folder/<fleet>/<version>/`` (each checked against ``manifest`` first;
    atomically; one already there with the same bytes is kept). Returns the paths written."""
    target = folder / manifest.fleet / str(manifest.version)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in files.items():
        check_file(manifest, name, data)
        path = target / name
        if path.exists():
            if sha256_hex(path.read_bytes()) != sha256_hex(data):
                raise ReleaseError(f"{path} exists with other bytes: origin files are immutable, publish a new "
                                   "version instead")
            continue
        fd, tmp = tempfile.mkstemp(dir=target, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # served by a web server running as another user
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(path)
    return written
