"""Bundle files over HTTP(S) from an origin (a real nginx), control over MQTT (a real Mosquitto).

The trainer's ``publish --origin DIR --origin-url BASE`` writes the files and signs their URLs into
the manifest; a real agent fetches them with Range requests, resumes after a cut, and falls back to
MQTT chunks when the origin is away. The broker's own log counts the chunks it sent the agent.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cloud_trainer.delivery.broker import BrokerConnection, BrokerOptions
from devtools.origin_server import Tls, nginx
from devtools.processes import broker as local_broker
from harness import ROOT, make_pki, manifest_of, wait_for
from origin_harness import (
    SMALL_CHUNKS,
    chunks_sent,
    delivery,
    origin_file,
    publish_with_origin,
    same_files,
    served_ranges,
    signed_urls,
    small_chunked,
)
from shared import topics
from shared.bundle import CATALOG_FILE, ENVELOPE_FILE, MODEL_FILE, parse_manifest
from shared.errors import MalformedManifest
from shared.manifest import MAX_URLS


# -- the manifest ------------------------------------------------------------------------------------
def test_urls_are_signed_optional_and_checked(int8_bundle: Path) -> None:
    text = json.loads((int8_bundle / ENVELOPE_FILE).read_bytes())["signed"]
    assert '"urls"' not in text  # a manifest without origin is what it always was
    data = json.loads(text)
    data["files"][MODEL_FILE]["urls"] = ["https://cdn.example.com/default/1000/model.tflite"]
    parsed = parse_manifest(json.dumps(data))
    assert parsed.files[MODEL_FILE].urls == ("https://cdn.example.com/default/1000/model.tflite",)
    assert '"urls"' in parsed.to_json() and parse_manifest(parsed.to_json()) == parsed
    for bad in (["ftp://cdn.example.com/f"], ["/relative/path"], ["https://user:pw@cdn.example.com/f"],
                ["https://cdn.example.com/f#frag"], ["https://cdn.example.com/a b"], "https://one.example.com/f",
                ["https://cdn.example.com/f"] * (MAX_URLS + 1), [7]):
        data["files"][MODEL_FILE]["urls"] = bad
        with pytest.raises(MalformedManifest, match="urls"):
            parse_manifest(json.dumps(data))


# -- delivery over the origin ---------------------------------------------------------------------------
def test_agent_gets_the_bundle_from_the_origin_not_the_broker(int8_bundle: Path, keys: Path, tmp_path: Path) -> None:
    bundle = small_chunked(int8_bundle, keys, tmp_path / "v2000", 2000)
    root = tmp_path / "origin"
    root.mkdir()
    with nginx(root) as server, delivery(tmp_path / "run", keys) as run:
        publish_with_origin(bundle, run.broker, keys, root, server.url)
        assert origin_file(root, bundle).read_bytes() == (bundle / MODEL_FILE).read_bytes()
        reason = run.wait_serving(2000)
        chunks = sum(len(e.chunks) for e in manifest_of(bundle).files.values())
        assert f"{chunks} chunks received ({chunks} from the origin, 0 over MQTT)" in reason, reason
        assert chunks_sent(run.broker) == 0  # the broker sent the agent no chunk at all
        assert same_files(bundle, run.installed(2000))
        ranges = served_ranges(server)
        assert ranges and all(status == 206 and header.startswith("bytes=") for status, header, _ in ranges)
        assert sum(sent for _, _, sent in ranges) == (bundle / MODEL_FILE).stat().st_size  # each byte once


def test_https_origin_with_a_private_ca(int8_bundle: Path, keys: Path, tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    make_pki(pki, 8883)  # a CA and a server certificate for 127.0.0.1 (the fleet's PKI script)
    bundle = small_chunked(int8_bundle, keys, tmp_path / "v2001", 2001)
    root = tmp_path / "origin"
    root.mkdir()
    with nginx(root, Tls(pki / "server.pem", pki / "server.key")) as server, \
            delivery(tmp_path / "run", keys, f'origin.ca_file="{pki / "ca.pem"}"') as run:
        assert server.url.startswith("https://")
        publish_with_origin(bundle, run.broker, keys, root, server.url)
        assert "0 over MQTT" in run.wait_serving(2001)
        assert chunks_sent(run.broker) == 0
        assert same_files(bundle, run.installed(2001))


def test_https_origin_the_agent_cannot_verify_falls_back(int8_bundle: Path, keys: Path, tmp_path: Path) -> None:
    """Without the private CA (the system store only), the certificate is refused: MQTT chunks."""
    pki = tmp_path / "pki"
    make_pki(pki, 8883)
    bundle = small_chunked(int8_bundle, keys, tmp_path / "v2002", 2002)
    root = tmp_path / "origin"
    root.mkdir()
    with nginx(root, Tls(pki / "server.pem", pki / "server.key")) as server, delivery(tmp_path / "run", keys) as run:
        publish_with_origin(bundle, run.broker, keys, root, server.url)
        assert "0 from the origin" in run.wait_serving(2002)
        assert chunks_sent(run.broker) > 0
        assert "CERTIFICATE_VERIFY_FAILED" in run.agent.log()
        assert same_files(bundle, run.installed(2002))


def test_a_cut_resumes_where_it_stopped(int8_bundle: Path, keys: Path, tmp_path: Path) -> None:
    """The origin serves the model cut at 60% (as a dropped transfer leaves it), then the whole file:
    the agent keeps the chunks it verified and asks only for the rest; nothing over MQTT."""
    bundle = small_chunked(int8_bundle, keys, tmp_path / "v2003", 2003)
    root = tmp_path / "origin"
    root.mkdir()
    model = (bundle / MODEL_FILE).read_bytes()
    cut = len(model) * 6 // 10
    with nginx(root) as server, delivery(tmp_path / "run", keys, "origin.retries=5", "origin.retry_after_s=2") as run:
        publish_with_origin(bundle, run.broker, keys, root, server.url)
        served = origin_file(root, bundle)
        served.write_bytes(model[:cut])  # the origin lost the end of the file
        assert wait_for(lambda: any(status in (206, 416) and sent < SMALL_CHUNKS * 4
                                    for status, _, sent in served_ranges(server)), 30), server.requests()
        served.write_bytes(model)  # back; the agent retries after 2 s
        assert "0 over MQTT" in run.wait_serving(2003)
        assert chunks_sent(run.broker) == 0
        assert same_files(bundle, run.installed(2003))
        after = [header for status, header, _ in served_ranges(server) if status == 206][-1]
        resumed_at = int(after.removeprefix("bytes=").split("-")[0])
        assert resumed_at >= cut - cut % SMALL_CHUNKS - SMALL_CHUNKS * 4, (after, cut)  # not from the start


def test_origin_down_falls_back_to_mqtt_chunks(int8_bundle: Path, keys: Path, tmp_path: Path) -> None:
    bundle = small_chunked(int8_bundle, keys, tmp_path / "v2004", 2004)
    root = tmp_path / "origin"
    root.mkdir()
    with nginx(root) as server, delivery(tmp_path / "run", keys) as run:
        url = server.url
        server.stop()  # nothing listens there any more
        started = time.monotonic()
        publish_with_origin(bundle, run.broker, keys, root, url)
        reason = run.wait_serving(2004)
        assert "0 from the origin" in reason and time.monotonic() - started < 30
        assert chunks_sent(run.broker) == sum(len(e.chunks) for e in manifest_of(bundle).files.values())
        assert same_files(bundle, run.installed(2004))


def test_origin_disabled_takes_mqtt_only(int8_bundle: Path, keys: Path, tmp_path: Path) -> None:
    bundle = small_chunked(int8_bundle, keys, tmp_path / "v2005", 2005)
    root = tmp_path / "origin"
    root.mkdir()
    with nginx(root) as server, delivery(tmp_path / "run", keys, "origin.enabled=false") as run:
        publish_with_origin(bundle, run.broker, keys, root, server.url)
        assert "0 from the origin" in run.wait_serving(2005)
        assert served_ranges(server) == [] and chunks_sent(run.broker) > 0


# -- the trainer's side ---------------------------------------------------------------------------------
def test_publish_origin_layout_is_immutable_and_needs_the_key(int8_bundle: Path, keys: Path, tmp_path: Path) -> None:
    bundle = small_chunked(int8_bundle, keys, tmp_path / "v2006", 2006)
    root = tmp_path / "origin"
    with local_broker() as broker:
        def publish(*extra: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "cloud_trainer.cli", "publish", "--bundle", str(bundle),
                                   "--broker", broker.url, "--origin", str(root), *extra],
                                  capture_output=True, text=True, cwd=ROOT, timeout=60)

        refused = publish("--origin-url", "https://cdn.example.com/b")
        assert refused.returncode != 0 and "--key" in refused.stderr and "Traceback" not in refused.stderr
        assert publish("--origin-url", "https://cdn.example.com/b/", "--key", str(keys / "signing.key")).returncode == 0
        for name in (MODEL_FILE, CATALOG_FILE):
            assert (root / "default" / "2006" / name).read_bytes() == (bundle / name).read_bytes()
        with BrokerConnection(BrokerOptions(broker.url, client_id="reader")) as connection:
            published = connection.retained(topics.manifest_topic(topics.DEFAULT_PREFIX, "default"))
        assert published is not None
        assert signed_urls(published) == {name: [f"https://cdn.example.com/b/default/2006/{name}"]
                                          for name in (MODEL_FILE, CATALOG_FILE)}
        (root / "default" / "2006" / CATALOG_FILE).write_bytes(b"other bytes")
        clash = publish("--key", str(keys / "signing.key"))
        assert clash.returncode != 0 and "immutable" in clash.stderr and "Traceback" not in clash.stderr
    assert signed_urls((bundle / ENVELOPE_FILE).read_bytes())[MODEL_FILE] == []  # the bundle folder is unchanged


def test_export_signs_the_urls_and_the_chunk_size(int8_bundle: Path, keys: Path, tmp_path: Path) -> None:
    """``export --origin-url --chunk-size``: the URLs and the chunk hashes are in the manifest signed at
    export (so ``publish --origin DIR`` needs no key)."""
    from cloud_trainer.delivery.bundler import BundleOptions, write_bundle
    from shared.signing import load_public_key, verify

    source = manifest_of(int8_bundle)
    options = BundleOptions(version=2100, channels=("stable",), chunk_size=4096,
                            origin_url="https://cdn.example.com/edge/")
    write_bundle(tmp_path / "b", (int8_bundle / MODEL_FILE).read_bytes(), (int8_bundle / CATALOG_FILE).read_bytes(),
                 source.model, keys / "signing.key", options, {})
    signed = (tmp_path / "b" / ENVELOPE_FILE).read_bytes()
    manifest = parse_manifest(verify(signed, load_public_key((keys / "signing.pub").read_bytes())))
    assert manifest.chunk_size == 4096
    assert len(manifest.files[MODEL_FILE].chunks) == -(-source.files[MODEL_FILE].length // 4096)
    assert manifest.files[CATALOG_FILE].urls == ("https://cdn.example.com/edge/default/2100/catalog.json",)
