"""Enrolment: ``cloud-trainer fleet enroll`` writes one secret file, ``edge-agent enroll`` installs it, and
the agent joins the TLS broker with it; ``fleet revoke`` puts the certificate on the CRL the broker reads
on reload, and the device is refused while another enrolled device still connects."""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from devtools.processes import AgentProcess, Broker, free_port
from harness import ROOT, make_pki, wait_for
from shared import enrolment, topics

PREFIX = topics.DEFAULT_PREFIX


def trainer(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cloud_trainer.cli", "fleet", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)


def agent_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_agent.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def enrol(pki: Path, keys: Path, device: str, out: Path, port: int) -> Path:
    made = trainer("enroll", device, "--pki", str(pki), "--broker", f"mqtts://127.0.0.1:{port}",
                   "--signing-pub", str(keys / "signing.pub"), "--profile", str(ROOT / "firmware_configs" / "dev.toml"),
                   "--channel", "canary", "--out", str(out))
    assert made.returncode == 0, made.stderr
    return out


def install(file: Path, etc: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return agent_cli("enroll", str(file), "--etc", str(etc), *extra)


def tls_connects(port: int, ca: Path, cert: Path, key: Path, client_id: str) -> bool:
    """Whether the broker accepts a TLS connection with this certificate (CONNACK success)."""
    result: list[Any] = []
    got = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key), tls_version=ssl.PROTOCOL_TLS_CLIENT)
    client.on_connect = lambda c, u, f, rc, p: (result.append(rc), got.set())
    try:
        client.connect("127.0.0.1", port)
        client.loop_start()
        got.wait(5)
        client.loop_stop()
    except (OSError, ssl.SSLError):
        return False
    finally:
        client.disconnect()
    return bool(result) and not result[0].is_failure


class StatusWatcher:
    """The trainer's view of the fleet's status topics (over TLS, with its certificate)."""

    def __init__(self, pki: Path, port: int) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="cloud-trainer", protocol=mqtt.MQTTv5)
        self.client.tls_set(ca_certs=str(pki / "ca.pem"), certfile=str(pki / "clients" / "cloud-trainer.pem"),
                            keyfile=str(pki / "clients" / "cloud-trainer.key"), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.client.on_message = lambda c, u, m: self.seen.append((m.topic.rsplit("/", 1)[-1], json.loads(m.payload)))
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{PREFIX}/+/status/+", qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def online_since(self, device: str, start: int) -> bool:
        return any(d == device and s.get("state") == "online" for d, s in self.seen[start:])

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def start_enrolled_agent(etc: Path, work: Path) -> AgentProcess:
    return AgentProcess(etc / "agent.toml", [f'agent.data_dir="{work / "data"}"'], work)


# -- the file and its installation, without a broker --------------------------------------------------

@pytest.fixture(scope="module")
def enrolled(tmp_path_factory: pytest.TempPathFactory, keys: Path) -> tuple[Path, Path]:
    where = tmp_path_factory.mktemp("enrol")
    make_pki(where / "pki", free_port())
    return where / "pki", enrol(where / "pki", keys, "pi-a", where / "pi-a.enrol", 8883)


def test_the_enrolment_file_is_secret_and_installs_with_the_right_modes(enrolled: tuple[Path, Path],
                                                                        tmp_path: Path) -> None:
    _, file = enrolled
    assert file.stat().st_mode & 0o777 == 0o600
    done = install(file, tmp_path / "etc")
    assert done.returncode == 0, done.stderr
    etc = tmp_path / "etc"
    assert (etc / enrolment.KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert (etc / "tls").stat().st_mode & 0o777 == 0o700
    assert (etc / enrolment.CERT_FILE).read_bytes() == json.loads(file.read_bytes())["files"][enrolment.CERT_FILE]\
        .encode()
    checked = agent_cli("validate-config", str(etc / "agent.toml"))
    assert checked.returncode == 0, checked.stderr
    profile = (etc / "agent.toml").read_text()
    assert 'device_id = "pi-a"' in profile and 'channel = "canary"' in profile
    assert f'key_file = "{etc / enrolment.KEY_FILE}"' in profile


def test_an_existing_enrolment_is_replaced_only_with_force(enrolled: tuple[Path, Path], tmp_path: Path) -> None:
    _, file = enrolled
    etc = tmp_path / "etc"
    assert install(file, etc).returncode == 0
    (etc / enrolment.KEY_FILE).write_bytes(b"the key in use")
    again = install(file, etc)
    assert again.returncode == 2 and "--force" in again.stderr
    assert (etc / enrolment.KEY_FILE).read_bytes() == b"the key in use"  # nothing changed
    assert install(file, etc, "--force").returncode == 0
    assert (etc / enrolment.KEY_FILE).read_bytes() != b"the key in use"


@pytest.mark.parametrize("damage, message", [
    (lambda d, raw: raw[: len(raw) // 2], "not JSON"),
    (lambda d, raw: b'{"hello": "world"}', "not an enrolment file"),
    (lambda d, raw: json.dumps({**d, "version": 99}).encode(), "version 99"),
    (lambda d, raw: json.dumps({**d, "device_id": "pi-b"}).encode(), "not the device"),
    (lambda d, raw: json.dumps({**d, "files": {**d["files"], enrolment.CA_FILE: d["files"][enrolment.CERT_FILE]}})
     .encode(), "not issued by"),
])
def test_a_corrupt_or_foreign_file_is_refused_and_nothing_is_written(
        enrolled: tuple[Path, Path], tmp_path: Path, damage: Any, message: str) -> None:
    _, file = enrolled
    raw = file.read_bytes()
    bad = tmp_path / "bad.enrol"
    bad.write_bytes(damage(json.loads(raw), raw))
    refused = install(bad, tmp_path / "etc")
    assert refused.returncode == 2 and message in refused.stderr, refused.stderr
    assert not (tmp_path / "etc").exists()


def test_a_key_that_is_not_the_certificates_is_refused(enrolled: tuple[Path, Path], keys: Path,
                                                        tmp_path: Path) -> None:
    pki, file = enrolled
    other = enrol(pki, keys, "pi-other", tmp_path / "other.enrol", 8883)
    mixed = json.loads(file.read_bytes())
    mixed["files"][enrolment.KEY_FILE] = json.loads(other.read_bytes())["files"][enrolment.KEY_FILE]
    (tmp_path / "mixed.enrol").write_text(json.dumps(mixed))
    refused = install(tmp_path / "mixed.enrol", tmp_path / "etc")
    assert refused.returncode == 2 and "does not belong" in refused.stderr


# -- against the real TLS broker ---------------------------------------------------------------------

@pytest.mark.slow
def test_an_enrolled_agent_connects_and_a_revoked_one_is_refused_after_a_reload(keys: Path, tmp_path: Path) -> None:
    pki, port = tmp_path / "pki", free_port()
    make_pki(pki, port)
    files = {d: enrol(pki, keys, d, tmp_path / f"{d}.enrol", port) for d in ("pi-a", "pi-b")}
    for device, file in files.items():
        assert install(file, tmp_path / device / "etc").returncode == 0
    broker = Broker(workdir=pki / "data", port=port, config=pki / "mosquitto.conf")
    watcher = StatusWatcher(pki, port)
    agent = None
    try:
        start = len(watcher.seen)
        agent = start_enrolled_agent(tmp_path / "pi-a" / "etc", tmp_path / "pi-a")
        assert wait_for(lambda: watcher.online_since("pi-a", start), 30), watcher.seen
        agent.stop()
        agent = None

        revoked = trainer("revoke", "pi-a", "--pki", str(pki))
        assert revoked.returncode == 0, revoked.stderr
        broker.proc.send_signal(signal.SIGHUP)  # Mosquitto reads crlfile (and the ACL) at start and on reload

        def device_connects(device: str) -> bool:
            etc = tmp_path / device / "etc"
            return tls_connects(port, etc / enrolment.CA_FILE, etc / enrolment.CERT_FILE, etc / enrolment.KEY_FILE,
                                device)

        assert wait_for(lambda: not device_connects("pi-a"), 10), "the revoked device still connects"
        assert device_connects("pi-b")
        start = len(watcher.seen)
        agent = start_enrolled_agent(tmp_path / "pi-b" / "etc", tmp_path / "pi-b")
        assert wait_for(lambda: watcher.online_since("pi-b", start), 30), watcher.seen
        agent.stop()
        agent = start_enrolled_agent(tmp_path / "pi-a" / "etc", tmp_path / "pi-a")
        assert not wait_for(lambda: watcher.online_since("pi-a", start), 5)
    finally:
        if agent is not None:
            agent.stop()
        watcher.close()
        broker.stop()
