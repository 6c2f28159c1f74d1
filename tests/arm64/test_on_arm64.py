"""The agent on Raspberry Pi OS 64-bit, emulated: a Debian bookworm arm64 root file system under qemu.

Run by ``make test-arm64`` (never by ``make test``), which builds the root file system once
(``devtools/arm64_rootfs.sh``, cached under ~/.cache) and points EDGE_REC_ARM64_ROOTFS at it.
Each run works on a fresh copy of it and, inside:

1. installs the agent by running the shell block of docs/install.md's Raspberry Pi section as written
   (requirements/edge.lock with --require-hashes, the package --no-deps, edge-agent install-service;
   no TensorFlow), except what needs a running systemd, which a chroot
   does not have: the unit's ExecStart is run instead, as its user, with its credential;
2. runs the agent's own tests that need no TensorFlow;
3. plays the demo's edge half: the host trains and exports the model from Online Retail and
   publishes it through a Mosquitto on the host (TLS with device certificates, as the Pi profile
   sets up); the arm64 agent receives it, serves recommendations over HTTP and keeps the shoppers'
   history encrypted;
4. compares the arm64 agent's answers with an x86 agent's for the same bundle and histories.

Figures (wall times, install size, the comparison, the model's operations and memory traffic per
request with a Pi 4 / Pi 5 latency estimate from memory bandwidth) go to bench/results/arm64.json.
Timings under emulation are not Pi timings and are not reported as such.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from devtools.model_cost import model_cost
from devtools.processes import AgentProcess, Broker, free_port
from harness import ROOT, SecureBroker, make_pki

RESULTS = ROOT / "bench" / "results" / "arm64.json"
SRC = "/opt/src/edge-recommender"  # where docs/install.md's /path/to/edge-recommender (lock, package) points
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PI_DEVICE, X86_DEVICE = "pi-arm64", "box-x86"
# The CPUs qemu emulates: a Pi 4's Cortex-A72 and a Pi 5's Cortex-A76. qemu's default ("max")
# advertises every newer extension (SVE, SME, i8mm...); LiteRT's XNNPACK kernels picked for that CPU
# gave wrong int8 answers under qemu 7.2 (the same top items for every shopper), while the Pi CPUs'
# kernels match x86 exactly. So each arm64 program runs with QEMU_CPU set to a Pi's CPU.
PI4_CPU, PI5_CPU = "cortex-a72", "cortex-a76"
CUSTOMERS = 40  # real Online Retail customers whose answers are compared between arm64 and x86
EDGE_TESTS = [  # the agent's tests that need no TensorFlow (the trainer never runs on a Pi)
    "tests/test_catalog.py", "tests/test_config.py", "tests/test_events.py", "tests/test_history_store.py",
    "tests/test_history_durability.py", "tests/test_recommendation_json.py", "tests/test_recommender.py",
    "tests/test_update_channel.py",
]
# qemu-user shows ARM programs the host's x86 /proc/cpuinfo, on which LiteRT crashes while creating
# its interpreter (see ../shared/docs/facts.md): a Raspberry Pi 4's is bound over it.
PI4_CPUINFO = "".join(
    f"processor\t: {n}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\n"
    "CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n" for n in range(4)
) + "Hardware\t: BCM2835\nRevision\t: c03114\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n"

FIGURES: dict[str, object] = {}


@dataclass
class Pi:
    """A fresh copy of the cached arm64 root file system, with /proc, /sys, /dev and ``shared`` (a
    host folder, at the same path inside) mounted."""

    root: Path
    shared: Path
    mounts: list[Path] = field(default_factory=list)

    def mount(self, *args: str, target: Path) -> None:
        subprocess.run(["mount", *args, str(target)], check=True, capture_output=True)
        self.mounts.append(target)

    def inside(self, path: str | Path) -> Path:
        return self.root / str(path).lstrip("/")

    def run(self, script: str, timeout: float, user: str = "root", cwd: str = "/",
            cpu: str = PI4_CPU) -> subprocess.CompletedProcess[str]:
        """``script`` (sh) in the chroot with a clean environment, as a Pi owner's shell would run it."""
        command = ["chroot", *([f"--userspec={user}:{user}"] if user != "root" else []), str(self.root),
                   "/usr/bin/env", "-i", f"PATH={PATH}", "HOME=/root", "LANG=C.UTF-8", f"QEMU_CPU={cpu}",
                   "sh", "-c", f"cd {cwd} && {script}"]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)

    def unmount_all(self) -> None:
        for target in reversed(self.mounts):
            subprocess.run(["umount", "--lazy", str(target)], check=False, capture_output=True)
        self.mounts.clear()


def readme_install_block() -> str:
    """The shell block of the install guide's Raspberry Pi section (docs/install.md)."""
    text = (ROOT / "docs" / "install.md").read_text()
    section = text[text.index("## Install on a Raspberry Pi"):]
    return section[section.index("```sh\n") + 6 : section.index("```\n", section.index("```sh\n") + 6)]


def runnable_in_a_chroot(block: str) -> tuple[str, list[str]]:
    """The README's lines with the source path filled in; the systemd and log lines are set aside
    (no systemd runs in a chroot): the test runs the unit's ExecStart instead."""
    kept, skipped = [], []
    for line in block.splitlines():
        command = line.split("  #")[0].strip()
        if not command:
            continue
        if re.search(r"\b(systemctl|journalctl)\b", command) or command.startswith("sudo cat"):
            skipped.append(command)
            continue
        kept.append(command.replace("/path/to/edge-recommender", SRC))
    return " && ".join(kept), skipped


def unit_exec_start() -> list[str]:
    unit = (ROOT / "firmware_configs" / "systemd" / "edge-agent.service").read_text()
    return re.search(r"^ExecStart=(.+)$", unit, re.MULTILINE).group(1).split()  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def pi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pi]:
    cached = Path(os.environ["EDGE_REC_ARM64_ROOTFS"])
    work = tmp_path_factory.mktemp("pi")
    # shared with the agent's service user, so on a path it can traverse (pytest's folders are 0700)
    machine = Pi(work / "rootfs", Path(tempfile.mkdtemp(prefix="edge-rec-arm64-")))
    machine.shared.chmod(0o777)
    started = time.monotonic()
    subprocess.run(["cp", "-a", "--reflink=auto", str(cached), str(machine.root)], check=True)
    try:
        machine.mount("-t", "proc", "proc", target=machine.inside("/proc"))
        (work / "cpuinfo").write_text(PI4_CPUINFO)
        machine.mount("--bind", str(work / "cpuinfo"), target=machine.inside("/proc/cpuinfo"))
        machine.mount("--rbind", "/sys", target=machine.inside("/sys"))
        machine.mount("--rbind", "/dev", target=machine.inside("/dev"))
        machine.inside(machine.shared).mkdir(parents=True)
        machine.mount("--bind", str(machine.shared), target=machine.inside(machine.shared))
        shutil.copy("/etc/resolv.conf", machine.inside("/etc/resolv.conf"))
        # this checkout's committed files, as a clone would give them
        files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        machine.inside(SRC).mkdir(parents=True)
        subprocess.run(["tar", "--null", "-T", "-", "-cf", "-"], input=files, cwd=ROOT, check=True,
                       stdout=open(work / "src.tar", "wb"))  # noqa: SIM115 - closed by the process exit
        subprocess.run(["tar", "-xf", str(work / "src.tar"), "-C", str(machine.inside(SRC))], check=True)
        arch = machine.run("uname -m && python3 --version", timeout=120)
        assert arch.returncode == 0 and arch.stdout.split()[0] == "aarch64", arch
        FIGURES["python"] = arch.stdout.split("\n")[1]
        FIGURES["rootfs_copy_s"] = round(time.monotonic() - started, 1)
        yield machine
    finally:
        machine.unmount_all()
        shutil.rmtree(machine.root, ignore_errors=True)
        shutil.rmtree(machine.shared, ignore_errors=True)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(FIGURES, indent=1) + "\n")


@pytest.fixture(scope="module")
def installed(pi: Pi, keys: Path) -> Pi:
    """The agent installed on the emulated Pi by the README's own commands."""
    shutil.copy(keys / "signing.pub", pi.inside(SRC) / "model-signing.pub")  # the fleet's public key
    script, skipped = runnable_in_a_chroot(readme_install_block())
    started = time.monotonic()
    result = pi.run(script, timeout=1800, cwd=SRC)
    assert result.returncode == 0, f"README install failed on arm64:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    FIGURES["readme_install_s_emulated"] = round(time.monotonic() - started, 1)
    FIGURES["readme_lines_not_run_in_a_chroot"] = skipped
    venv = pi.inside("/opt/edge-agent")
    FIGURES["edge_install_bytes_arm64"] = int(subprocess.run(["du", "-sb", str(venv)], capture_output=True,
                                                             text=True, check=True).stdout.split()[0])
    site = next(venv.glob("lib/python3*/site-packages"))
    FIGURES["largest_packages_arm64_mb"] = {
        p.name: round(int(subprocess.run(["du", "-sb", str(p)], capture_output=True, text=True).stdout.split()[0])
                      / 1e6, 1)
        for p in site.iterdir() if p.is_dir() and p.name in ("ai_edge_litert", "numpy", "cryptography", "flask")
    }
    return pi


def test_the_readme_installs_the_edge_extra_without_tensorflow(installed: Pi) -> None:
    packages = installed.run("/opt/edge-agent/bin/pip list --format=freeze", timeout=300)
    assert packages.returncode == 0, packages.stderr
    names = {line.split("==")[0].lower() for line in packages.stdout.split()}
    assert {"ai-edge-litert", "numpy", "cryptography", "paho-mqtt", "flask", "waitress", "granian"} <= names
    assert not {n for n in names if n.startswith(("tensorflow", "keras", "tf-"))}
    machine = installed.run("/opt/edge-agent/bin/python -c 'import platform; print(platform.machine())'", 300)
    assert machine.stdout.strip() == "aarch64"
    user = installed.run("id -u edge-agent", timeout=60)
    assert user.returncode == 0  # the README made the service user
    # the lock pinned every package (pip check) and install-service put the packaged unit and profile in place
    check = installed.run("/opt/edge-agent/bin/pip check", timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = installed.inside("/etc/systemd/system/edge-agent.service").read_text()
    assert "ExecStart=/opt/edge-agent/bin/edge-agent run --config /etc/edge-agent/agent.toml" in unit.splitlines()
    profile = installed.inside("/etc/edge-agent/agent.toml").read_bytes()
    assert profile == (ROOT / "firmware_configs/rpi4.toml").read_bytes()
    for profile in ("rpi4.toml", "rpi5.toml"):  # the README's profile choice for a Pi 4 and a Pi 5
        valid = installed.run(f"/opt/edge-agent/bin/edge-agent validate-config firmware_configs/{profile}", 300,
                              cwd=SRC)
        assert valid.returncode == 0, valid.stderr


def test_the_agents_own_tests_pass_on_arm64(installed: Pi) -> None:
    """The tests that need no TensorFlow, with pytest added to the agent's venv after it was measured."""
    started = time.monotonic()
    setup = installed.run("/opt/edge-agent/bin/pip install --quiet pytest hypothesis", timeout=900)
    assert setup.returncode == 0, setup.stderr[-3000:]
    result = installed.run(f"/opt/edge-agent/bin/python -m pytest -q -p no:cacheprovider {' '.join(EDGE_TESTS)}",
                           timeout=2400, cwd=SRC)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-500:]
    FIGURES["edge_tests_on_arm64"] = {"modules": EDGE_TESTS, "summary": summary,
                                      "wall_s_emulated": round(time.monotonic() - started, 1)}
    assert result.returncode == 0, result.stdout[-5000:]
    assert "passed" in summary and "failed" not in summary and "skipped" not in summary


# -- the demo's edge half -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_bundle(tmp_path_factory: pytest.TempPathFactory, datasets: Path) -> tuple[Path, Path]:
    """The demo's trainer half on the host: keys, Online Retail, the default model, an int8 bundle."""
    work = tmp_path_factory.mktemp("trainer")

    def cli(*args: str) -> None:
        result = subprocess.run([sys.executable, "-m", "cloud_trainer.cli", *args], capture_output=True, text=True,
                                cwd=ROOT, timeout=1200)
        assert result.returncode == 0, result.stderr[-3000:]

    cli("keygen", "--out", str(work / "keys"))
    cli("prepare", "online-retail", "--input", str(datasets / "online_retail" / "online_retail.csv.gz"),
        "--out", str(work / "data"))
    cli("train", "--events", str(work / "data/events.csv.gz"), "--items", str(work / "data/items.csv"),
        "--out", str(work / "run"))
    cli("export", "--run", str(work / "run"), "--key", str(work / "keys/signing.key"), "--out",
        str(work / "bundle"), "--variant", "int8", "--channel", "stable")
    model = (work / "bundle" / "model.tflite").read_bytes()
    FIGURES["model_bytes"] = len(model)
    FIGURES["model_cost_per_request"] = model_cost(model)
    return work / "bundle", work


@pytest.fixture(scope="module")
def fleet_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    pki, port = tmp_path_factory.mktemp("pki"), free_port()
    make_pki(pki, port, "--device", PI_DEVICE, "--device", X86_DEVICE)
    broker = Broker(workdir=pki / "data", port=port, config=pki / "mosquitto.conf")
    try:
        yield SecureBroker(broker, pki)
    finally:
        broker.stop()


def real_histories(events_csv: Path, count: int) -> dict[str, list[dict[str, object]]]:
    """The last 30 purchases of ``count`` real customers (the most active ones), replayed as recent."""
    import csv
    import gzip

    by_user: dict[str, list[dict[str, str]]] = {}
    with gzip.open(events_csv, "rt", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            by_user.setdefault(row["user_id"], []).append(row)
    chosen = sorted(by_user, key=lambda u: (-len(by_user[u]), u))[:count]
    now = time.time()
    histories = {}
    for user in chosen:
        rows = sorted(by_user[user], key=lambda r: r["timestamp"])[-30:]  # ISO 8601 UTC: sorts as text
        histories[user] = [{"user_id": user, "item_id": r["item_id"], "event": r["event"],
                            "timestamp": now - 60 * (len(rows) - n)} for n, r in enumerate(rows)]
    return histories


def recommendations(agent: AgentProcess, user: str) -> dict:  # type: ignore[type-arg]
    status, body = agent.request("GET", f"/v1/recommendations?user_id={user}&k=20")
    assert status == 200, body
    return json.loads(body)  # type: ignore[no-any-return]


def test_the_demo_edge_half_on_arm64_matches_x86(
    installed: Pi, demo_bundle: tuple[Path, Path], fleet_broker: SecureBroker, tmp_path: Path
) -> None:
    bundle, trainer = demo_bundle
    published = subprocess.run([sys.executable, "-m", "cloud_trainer.cli", "publish", "--bundle", str(bundle),
                                *fleet_broker.tls_args("cloud-trainer")], capture_output=True, text=True, cwd=ROOT,
                               timeout=120)
    assert published.returncode == 0, published.stderr
    pki = fleet_broker.pki
    # What an operator copies onto the Pi (README): the fleet key, the device's TLS files, the unit's credential.
    shutil.copy(trainer / "keys" / "signing.pub", installed.inside("/etc/edge-agent/model-signing.pub"))
    for source, target in ((pki / "ca.pem", "ca.pem"), (pki / "clients" / f"{PI_DEVICE}.pem", "device.pem"),
                           (pki / "clients" / f"{PI_DEVICE}.key", "device.key")):
        shutil.copy(source, installed.inside(f"/etc/edge-agent/tls/{target}"))
    # systemd's part, by hand: StateDirectory=, LoadCredential= (copied where the service user reads it).
    state = installed.run("install -d -m 0700 -o edge-agent -g edge-agent /var/lib/edge-agent "
                          "/run/credentials/edge-agent.service && chgrp -R edge-agent /etc/edge-agent/tls && "
                          "chmod 0640 /etc/edge-agent/tls/* && install -m 0400 -o edge-agent "
                          "/etc/edge-agent/credentials/master.key "
                          "/run/credentials/edge-agent.service/edge-agent-master-key", timeout=120)
    assert state.returncode == 0, state.stderr
    shared = installed.shared  # the service user writes its API token here
    exec_start = unit_exec_start()
    assert exec_start[-2:] == ["--config", "/etc/edge-agent/agent.toml"]
    pi_command = ["chroot", "--userspec=edge-agent:edge-agent", str(installed.root), "/usr/bin/env", "-i",
                  f"PATH={PATH}", "CREDENTIALS_DIRECTORY=/run/credentials/edge-agent.service", "LANG=C.UTF-8",
                  f"QEMU_CPU={PI4_CPU}", exec_start[0]]
    started = time.monotonic()
    pi_agent = AgentProcess(Path(exec_start[-1]), [f'agent.device_id="{PI_DEVICE}"',
                                                   f'mqtt.url="{fleet_broker.url}"'],
                            shared, command=pi_command, start_timeout=600)
    x86_agent = AgentProcess(ROOT / "firmware_configs" / "rpi4.toml", [
        *fleet_broker.agent_overrides(X86_DEVICE), f'agent.data_dir="{tmp_path / "x86"}"',
        f'model.trusted_public_key="{trainer / "keys" / "signing.pub"}"',
        f'history.master_key_file="{tmp_path / "x86.key"}"'], tmp_path)
    try:
        pi_agent.wait_ready(600)
        FIGURES["pi_agent_start_to_ready_with_model_s_emulated"] = round(time.monotonic() - started, 1)
        x86_agent.wait_ready(120)
        model = json.loads(pi_agent.request("GET", "/v1/model")[1])
        assert model["runtime"] == "litert", model["runtime"]
        histories = real_histories(trainer / "data" / "events.csv.gz", CUSTOMERS)
        compared = []
        for user, events in histories.items():
            for agent in (pi_agent, x86_agent):
                status, body = agent.request("POST", "/v1/events", json.dumps({"events": events}).encode())
                assert status == 200, body
            on_pi, on_x86 = recommendations(pi_agent, user), recommendations(x86_agent, user)
            assert on_pi["fallback"] is False and on_x86["fallback"] is False
            compared.append({
                "user": user,

                "pi": [(i["id"], i["score"], (i["because"] or {}).get("id")) for i in on_pi["items"]],
                "x86": [(i["id"], i["score"], (i["because"] or {}).get("id")) for i in on_x86["items"]],
            })
        (tmp_path / "arm64-vs-x86.json").write_text(json.dumps(compared))  # for a look when it fails
        same_ids = sum([i[0] for i in c["pi"]] == [i[0] for i in c["x86"]] for c in compared)
        gaps = [abs(a[1] - b[1]) for c in compared for a, b in zip(c["pi"], c["x86"], strict=True)]
        score_range = max(max(i[1] for i in c["x86"]) - min(i[1] for i in c["x86"]) for c in compared)
        FIGURES["arm64_vs_x86_agents_over_http"] = {
            "customers": len(compared), "identical_top20_ids": same_ids, "largest_score_difference": max(gaps),
            "score_range_top20": round(score_range, 4), "model_version": model["version"], "pi_cpu": PI4_CPU,
        }
        for c in compared:
            assert [i[0] for i in c["pi"]] == [i[0] for i in c["x86"]], c
            assert [i[2] for i in c["pi"]] == [i[2] for i in c["x86"]], c
        # int8 kernels are integer arithmetic: the same on both; a float rounding step at most
        assert max(gaps) <= 1e-4 * max(score_range, 1.0), (max(gaps), score_range)
        # encrypted at rest: no posted item id, no customer id readable in the Pi's history database
        stored = b"".join(p.read_bytes() for p in installed.inside("/var/lib/edge-agent").glob("history*"))
        assert stored, "no history database on the Pi"
        for user, events in list(histories.items())[:10]:
            assert user.encode() not in stored
            for event in events:
                assert f'"{event["item_id"]}"'.encode() not in stored
        status, body = pi_agent.request("DELETE", f"/v1/users/{next(iter(histories))}")
        assert status == 200 and json.loads(body)["deleted"] > 0
    finally:
        pi_agent.stop()
        x86_agent.stop()
    assert "Traceback" not in pi_agent.log(), pi_agent.log()[-3000:]


SCORE_SCRIPT = """
import json, sys
from pathlib import Path
from edge_agent.history_store import StoredEvent
from edge_agent.loaded_model import LoadedModel
from shared.recommendation import recommend
from shared.bundle import parse_manifest
from shared.catalog import parse_catalog
from shared.events import parse_kind
bundle, histories = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
manifest = parse_manifest(json.loads((bundle / "manifest.envelope").read_bytes())["signed"])
catalog = parse_catalog((bundle / "catalog.json").read_bytes(), manifest.model.num_items)
model = LoadedModel(manifest, (bundle / "model.tflite").read_bytes(), catalog, num_threads=int(sys.argv[3]))
answers = {}
for user, events in histories.items():
    stored = [StoredEvent(e["item_id"], parse_kind(e["event"]), e["timestamp"]) for e in events]
    result = recommend(model, stored, 20)
    answers[user] = [(r.item.id, r.score, r.because.id if r.because else None) for r in result.items]
print(json.dumps({"runtime": model.runtime, "answers": answers}))
"""


def test_int8_answers_on_pi4_and_pi5_cpus_match_x86(installed: Pi, demo_bundle: tuple[Path, Path]) -> None:
    """The same bundle and real histories through the agent's scoring path in-process: on x86 here,
    and on arm64 emulating a Pi 4's and a Pi 5's CPU, with each profile's interpreter threads."""
    bundle, trainer = demo_bundle
    work = installed.shared / "scoring"
    shutil.copytree(bundle, work / "bundle")
    histories = real_histories(trainer / "data" / "events.csv.gz", CUSTOMERS * 5)
    (work / "histories.json").write_text(json.dumps(histories))
    (work / "score.py").write_text(SCORE_SCRIPT)
    args = f"{work / 'bundle'} {work / 'histories.json'}"
    x86 = subprocess.run([sys.executable, str(work / "score.py"), *args.split(), "2"], capture_output=True,
                         text=True, cwd=ROOT, timeout=600)
    assert x86.returncode == 0, x86.stderr[-3000:]
    expected = json.loads(x86.stdout)["answers"]
    summary = {}
    for cpu, threads in ((PI4_CPU, 2), (PI5_CPU, 2)):
        on_arm = installed.run(f"/opt/edge-agent/bin/python {work / 'score.py'} {args} {threads}", timeout=1800,
                               cpu=cpu)
        assert on_arm.returncode == 0, on_arm.stderr[-3000:]
        answer = json.loads(on_arm.stdout)
        assert answer["runtime"] == "litert"
        got = answer["answers"]
        identical = sum([a[0] for a in got[u]] == [b[0] for b in expected[u]] for u in expected)
        gap = max(abs(a[1] - b[1]) for u in expected for a, b in zip(got[u], expected[u], strict=True))
        spread = max(max(b[1] for b in expected[u]) - min(b[1] for b in expected[u]) for u in expected)
        summary[cpu] = {"shoppers": len(expected), "identical_top20_ids_and_order": identical,
                        "identical_explanations": sum([a[2] for a in got[u]] == [b[2] for b in expected[u]]
                                                      for u in expected),
                        "largest_score_difference": gap, "score_range_top20": round(spread, 4)}
        for user in expected:
            assert [a[0] for a in got[user]] == [b[0] for b in expected[user]], (cpu, user)
            assert [a[2] for a in got[user]] == [b[2] for b in expected[user]], (cpu, user)
        assert gap <= 1e-4 * max(spread, 1.0), (cpu, gap, spread)  # float32 rounding of a dequantized score
    FIGURES["arm64_vs_x86_in_process"] = summary
