"""Fits managed and clustered brokers: the chunk size is the trainer's (``export --chunk-size``,
``--broker-preset aws-iot``), the subscribe batch the agent's (``mqtt.subscribe_batch``), and topics
stay within the tightest common limits (AWS IoT Core's). Checked on a real Mosquitto's own log of
every packet it received and sent."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from harness import ROOT, manifest_of, publish
from origin_harness import chunks_sent, delivery
from shared import topics
from shared.bundle import CHUNK_SIZE

#: AWS IoT Core: a PUBLISH payload of at most 128 KB, at most 8 topic filters per SUBSCRIBE.
AWS_PAYLOAD_BYTES, AWS_TOPICS_PER_SUBSCRIBE = 128_000, 8


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cloud_trainer.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


def subscribe_batches(log: str, client_id: str = "dev-1") -> list[list[str]]:
    """The topic filters of each SUBSCRIBE ``client_id`` sent, from Mosquitto's log (log_type all)."""
    batches: list[list[str]] = []
    current: list[str] | None = None
    for line in log.splitlines():
        message = line.split(": ", 1)[-1]
        if message == f"Received SUBSCRIBE from {client_id}":
            current = []
            batches.append(current)
        elif current is not None and (found := re.fullmatch(r"\t(\S+) \(QoS \d\)", message)):
            current.append(found[1])
        elif current is not None and not message.startswith(f"{client_id} "):
            current = None
    return batches


def test_topics_fit_the_tightest_common_limits() -> None:
    assert topics.broker_limit_problems(topics.DEFAULT_PREFIX) == []
    assert max(len(t) for t in topics.deepest_topics(topics.DEFAULT_PREFIX)) <= topics.MAX_TOPIC_BYTES
    assert topics.broker_limit_problems("a/b/c") == []  # a three-level prefix still fits
    assert any("'/'" in p for p in topics.broker_limit_problems("a/b/c/d"))
    assert any("bytes" in p for p in topics.broker_limit_problems("p" * 100))


def test_chunk_size_is_checked_on_the_command_line(tmp_path: Path) -> None:
    for bad in ("100", str(CHUNK_SIZE + 1), "big"):
        result = cli("export", "--run", str(tmp_path), "--key", str(tmp_path / "k"), "--chunk-size", bad)
        assert result.returncode == 2 and "--chunk-size" in result.stderr and "1024" in result.stderr
        assert "Traceback" not in result.stderr


def test_aws_iot_preset_and_a_subscribe_batch_of_8(trained_run: Path, keys: Path, tmp_path: Path) -> None:
    """A bundle exported for AWS IoT Core goes over MQTT alone (no origin) to an agent that
    subscribes 8 topics at a time: every chunk the broker sent fits 128 KB, every SUBSCRIBE 8 topics."""
    bundle = tmp_path / "bundle"
    exported = cli("export", "--run", str(trained_run), "--key", str(keys / "signing.key"), "--out", str(bundle),
                   "--version", "4000", "--variant", "int8", "--channel", "canary", "--channel", "stable",
                   "--broker-preset", "aws-iot")
    assert exported.returncode == 0, exported.stderr
    manifest = manifest_of(bundle)
    assert manifest.chunk_size == 120 * 1024
    chunks = sum(len(e.chunks) for e in manifest.files.values())
    assert chunks > AWS_TOPICS_PER_SUBSCRIBE  # so the batches matter
    with delivery(tmp_path / "run", keys, "mqtt.subscribe_batch=8") as run:
        publish(bundle, run.broker)
        run.wait_serving(4000)
        log = run.broker.log.read_text(errors="replace")
    assert chunks_sent(run.broker) == chunks
    sizes = [int(n) for n in re.findall(r"Sending PUBLISH to dev-1 .*/bundle/.*\((\d+) bytes\)\)", log)]
    assert len(sizes) == chunks and max(sizes) <= AWS_PAYLOAD_BYTES
    batches = subscribe_batches(log)
    chunk_batches = [b for b in batches if any("/bundle/" in t for t in b)]
    assert len(chunk_batches) >= chunks // AWS_TOPICS_PER_SUBSCRIBE
    assert all(1 <= len(b) <= AWS_TOPICS_PER_SUBSCRIBE for b in batches), batches
