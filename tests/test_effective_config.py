"""``edge-agent validate-config FILE [--set k=v]`` prints the effective settings, each with its source,
as TOML that loads back to the same configuration; secrets from the environment are never printed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from edge_agent.config import from_mapping, load
from edge_agent.master_key import CREDENTIAL_NAME

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "firmware_configs" / "rpi4.toml"
TOKEN = "tok-" + "s3cr3t" * 5
MASTER_KEY = "ab" * 32
SECRET_VARIABLES = ("EDGE_AGENT_API_TOKEN", "EDGE_AGENT_MASTER_KEY", "CREDENTIALS_DIRECTORY", "EDGE_AGENT_RUNTIME",
                    "NOTIFY_SOCKET", "WATCHDOG_USEC")


def validate(*args: str, env: dict[str, str] | None = None) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in SECRET_VARIABLES}
    result = subprocess.run([sys.executable, "-m", "edge_agent.cli", "validate-config", str(PROFILE), *args],
                            capture_output=True, text=True, cwd=ROOT, env={**clean, **(env or {})}, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def source_of(output: str, section: str, key: str) -> str:
    body = output.split(f"[{section}]\n", 1)[1]
    match = re.search(rf"^{key} = .*  # (\S+)$", body, re.MULTILINE)
    assert match, (section, key)
    return match.group(1)


def test_the_output_is_toml_that_loads_back_to_the_same_configuration() -> None:
    overrides = ["api.port=9001", 'agent.log_format="json"']
    output = validate(*[a for o in overrides for a in ("--set", o)])
    assert from_mapping(tomllib.loads(output)) == load(PROFILE, overrides)


def test_each_setting_says_where_it_came_from() -> None:
    output = validate("--set", "api.port=9001")
    assert source_of(output, "api", "port") == "--set"
    assert source_of(output, "agent", "device_id") == "profile"  # rpi4.toml sets it
    assert source_of(output, "agent", "channel") == "default"  # rpi4.toml does not
    assert source_of(output, "api", "threads") == "profile"
    assert "api token: file /var/lib/edge-agent/api-token" in output and "[default]" in output


def test_secrets_from_the_environment_are_named_never_printed(tmp_path: Path) -> None:
    output = validate(env={"EDGE_AGENT_API_TOKEN": TOKEN, "EDGE_AGENT_MASTER_KEY": MASTER_KEY,
                           "EDGE_AGENT_RUNTIME": "tflite_runtime"})
    assert TOKEN not in output and MASTER_KEY not in output and "s3cr3t" not in output
    assert "api token: EDGE_AGENT_API_TOKEN (value hidden; api.token_file is not read)  [environment]" in output
    assert "master key: EDGE_AGENT_MASTER_KEY (value hidden; no key file is read)  [environment]" in output
    assert "tflite runtime: tflite_runtime only (EDGE_AGENT_RUNTIME)  [environment]" in output


def test_a_systemd_credential_is_shown_by_its_path(tmp_path: Path) -> None:
    (tmp_path / CREDENTIAL_NAME).write_bytes(os.urandom(32))
    output = validate(env={"CREDENTIALS_DIRECTORY": str(tmp_path), "NOTIFY_SOCKET": "/run/x",
                           "WATCHDOG_USEC": "30000000"})
    assert f"master key: systemd credential {tmp_path / CREDENTIAL_NAME}  [environment]" in output
    assert "systemd notify: on; watchdog 30s  [environment]" in output
