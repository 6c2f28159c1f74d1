"""The wheel carries the device files, and ``edge-agent install-service`` installs them on a device.

The systemd unit and the device profiles live in ``edge_agent/device_files/`` (``firmware_configs/``
links there); a pip install must bring them and the one documented command must put them in place.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edge_agent.cli import main
from edge_agent.service_install import PACKAGED_VENV, PROFILES

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "firmware_configs" / "systemd" / "edge-agent.service"
VENV = str(Path(sys.executable).parent.parent)  # this venv, so systemd-analyze finds the binary


def install_service(root: Path, *args: str) -> int:
    return main(["install-service", "--root", str(root), "--venv", VENV, *args])


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_wheel_carries_the_unit_and_the_profiles(tmp_path: Path) -> None:
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", str(ROOT), "-w",
                            str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = tmp_path.glob("edge_recommender-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name: archive.read(name) for name in archive.namelist() if "/device_files/" in name}
    expected = {"edge_agent/device_files/edge-agent.service": UNIT.read_bytes(),
                "edge_agent/device_files/README.md": (ROOT / "edge_agent/device_files/README.md").read_bytes()}
    for profile in PROFILES:  # the same bytes as the checkout's firmware_configs/ (one source)
        packaged = f"edge_agent/device_files/{profile}.toml"
        expected[packaged] = (ROOT / "firmware_configs" / f"{profile}.toml").read_bytes()
    assert shipped == expected


def test_install_service_writes_the_unit_profile_and_readme(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert install_service(tmp_path, "--profile", "rpi5", "--user", "shop-agent") == 0
    unit = tmp_path / "etc/systemd/system/edge-agent.service"
    profile, readme = tmp_path / "etc/edge-agent/agent.toml", tmp_path / "etc/edge-agent/README.md"
    assert profile.read_bytes() == (ROOT / "firmware_configs/rpi5.toml").read_bytes()
    text = unit.read_text()
    assert f"ExecStart={VENV}/bin/edge-agent run --config /etc/edge-agent/agent.toml" in text.splitlines()
    assert f"ExecStartPre={VENV}/bin/edge-agent validate-config /etc/edge-agent/agent.toml" in text.splitlines()
    assert "User=shop-agent" in text.splitlines() and "Group=shop-agent" in text.splitlines()
    assert "User=edge-agent" not in text and PACKAGED_VENV + "/bin" not in text
    # nothing else changed: with the packaged values put back, the unit is the packaged one
    restored = (text.replace(f"{VENV}/bin/edge-agent", f"{PACKAGED_VENV}/bin/edge-agent")
                .replace("User=shop-agent", "User=edge-agent").replace("Group=shop-agent", "Group=edge-agent"))
    assert restored == UNIT.read_text()
    # Documentation= names a file the install made
    (doc,) = [line.removeprefix("Documentation=file://") for line in text.splitlines()
              if line.startswith("Documentation=")]
    assert tmp_path / doc.lstrip("/") == readme and "install-service" in readme.read_text()
    assert {mode(unit), mode(profile), mode(readme)} == {0o644}
    assert mode(profile.parent) == 0o755
    assert str(unit) in capsys.readouterr().out
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing (Debian package systemd)"
    verify = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr


def test_install_service_refuses_to_overwrite_without_force(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert install_service(tmp_path, "--profile", "rpi4") == 0
    profile = tmp_path / "etc/edge-agent/agent.toml"
    unit = tmp_path / "etc/systemd/system/edge-agent.service"
    profile.write_text("# edited for this device\n")
    unit.unlink()  # the unit alone is missing: still nothing is written, since the profile exists
    capsys.readouterr()
    assert install_service(tmp_path, "--profile", "rpi5") == 2
    assert "agent.toml exists: pass --force" in capsys.readouterr().err  # the unit is gone
    assert profile.read_text() == "# edited for this device\n" and not unit.exists()
    assert install_service(tmp_path, "--profile", "rpi5", "--force") == 0
    assert profile.read_bytes() == (ROOT / "firmware_configs/rpi5.toml").read_bytes() and unit.exists()


def test_no_profile_leaves_agent_toml_to_enrolment(tmp_path: Path) -> None:
    assert install_service(tmp_path, "--no-profile") == 0
    assert (tmp_path / "etc/systemd/system/edge-agent.service").exists()
    assert not (tmp_path / "etc/edge-agent/agent.toml").exists()


@pytest.mark.parametrize("args, message", [
    (["--user", "root\nExecStartPost=/bin/sh"], "is not a system user name"),
    (["--venv", "relative/venv"], "must be an absolute path"),
    (["--venv", "/opt/my venv"], "must be an absolute path"),
])
def test_install_service_rejects_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                             message: str) -> None:
    assert main(["install-service", "--root", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_install_service_needs_an_existing_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert install_service(tmp_path / "missing") == 2
    assert "is not a folder" in capsys.readouterr().err


def test_modes_do_not_depend_on_the_umask(tmp_path: Path) -> None:
    """sudo may run with umask 077: the service user must still read agent.toml and its folder."""
    previous = os.umask(0o077)
    try:
        assert install_service(tmp_path, "--profile", "x86_edge") == 0
    finally:
        os.umask(previous)
    profile = tmp_path / "etc/edge-agent/agent.toml"
    assert mode(profile) == 0o644 and mode(profile.parent) == 0o755 and mode(tmp_path / "etc") == 0o755
    assert mode(tmp_path / "etc/systemd/system/edge-agent.service") == 0o644
