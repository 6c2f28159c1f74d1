"""The shipped systemd unit is valid, hardened, and agrees with the agent and the device profiles."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.config import load
from edge_agent.liveness import MAX_PROBE_TIMEOUT_S
from edge_agent.master_key import CREDENTIAL_NAME

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "firmware_configs" / "systemd" / "edge-agent.service"
INSTALLED_BIN = "/opt/edge-agent/bin/edge-agent"
DEVICE_PROFILES = ["rpi4.toml", "rpi5.toml", "x86_edge.toml"]


def settings() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def local_copy(tmp_path: Path) -> Path:
    """The unit with the install path pointed at this checkout's venv, so systemd can check the binary."""
    binary = Path(sys.executable).parent / "edge-agent"
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace(INSTALLED_BIN, str(binary)))
    return copy


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing (Debian package systemd)"
    result = subprocess.run([analyze, "verify", str(local_copy(tmp_path))], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_the_unit_is_hardened(tmp_path: Path) -> None:
    unit = settings()
    for key, value in {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "PrivateDevices": "yes", "Restart": "on-failure", "User": "edge-agent", "CapabilityBoundingSet": "",
        "UMask": "0077", "Type": "notify", "NotifyAccess": "main",
    }.items():
        assert unit.get(key) == [value], key
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(local_copy(tmp_path))],
        capture_output=True, text=True,
    )
    exposure = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    assert exposure, result.stdout[-500:] + result.stderr
    assert float(exposure.group(1)) <= 2.0, result.stdout  # systemd's scale: 0 safest, 10 most exposed


def test_the_unit_matches_the_agent_and_profiles() -> None:
    unit = settings()
    # the watchdog must outlast a probe that times out (edge_agent.liveness) and be pinged twice per period
    watchdog = unit["WatchdogSec"][0]
    assert watchdog.endswith("s") and float(watchdog[:-1]) / 2 > MAX_PROBE_TIMEOUT_S, watchdog
    assert "AF_UNIX" in unit["RestrictAddressFamilies"][0].split()  # the notify socket
    credential, _, _ = unit["LoadCredential"][0].partition(":")
    assert credential == CREDENTIAL_NAME  # the agent looks for the master key under this name
    config_path = shlex.split(unit["ExecStart"][0])[-1]
    assert shlex.split(unit["ExecStart"][0])[:3] == [INSTALLED_BIN, "run", "--config"]
    assert shlex.split(unit["ExecStartPre"][0]) == [INSTALLED_BIN, "validate-config", config_path]
    for name in DEVICE_PROFILES:
        config = load(ROOT / "firmware_configs" / name)
        assert config.agent.data_dir == Path("/var/lib") / unit["StateDirectory"][0], name
        assert config.api.host == "127.0.0.1", name


@pytest.mark.parametrize("profile", DEVICE_PROFILES)
def test_the_units_pre_start_check_passes_on_each_device_profile(profile: str) -> None:
    _, *args, _ = shlex.split(settings()["ExecStartPre"][0])
    command = [str(Path(sys.executable).parent / "edge-agent"), *args, str(ROOT / "firmware_configs" / profile)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
