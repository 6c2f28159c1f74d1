"""Profiles validate; mistakes are errors that name the key; the CLI says so without a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.config import load
from edge_agent.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
PROFILES = sorted((ROOT / "firmware_configs").glob("*.toml"))


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_every_shipped_profile_is_valid(profile: Path) -> None:
    config = load(profile)
    assert config.api.host == "127.0.0.1"  # secure default: loopback only


def test_shipped_profiles_cover_the_target_hardware() -> None:
    assert {"dev.toml", "rpi4.toml", "rpi5.toml", "x86_edge.toml"} <= {p.name for p in PROFILES}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[api]\nprot = 8080\n", r"api\.prot: unknown key"),
        ("[api]\nport = 'eighty'\n", r"api\.port: must be an integer"),
        ("[api]\nport = 70000\n", r"api\.port: must be from 1 to 65535"),
        ("[model]\nvariant = 'int4'\n", r"model\.variant: must be one of int8, float16, float32"),
        ("[agent]\nfleet = 'a/b'\n", r"agent\.fleet"),
        ("[apii]\n", r"apii: unknown section"),
        ("api = 3\n", r"api: must be a table"),
        ("[api\n", r"not valid TOML"),
    ],
)
def test_mistakes_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load(path)


def test_overrides_are_typed_and_validated(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("")
    assert load(path, ["api.port=8081", "mqtt.url=mqtt://10.0.0.1:1883"]).api.port == 8081
    with pytest.raises(ConfigError, match=r"api\.port"):
        load(path, ["api.port=x"])


def test_validate_config_cli(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[history]\nmax_events_per_user = -1\n")
    result = subprocess.run([sys.executable, "-m", "edge_agent.cli", "validate-config", str(bad)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert "history.max_events_per_user: must be from 1" in result.stderr
    assert "Traceback" not in result.stderr
    good = subprocess.run([sys.executable, "-m", "edge_agent.cli", "validate-config", str(PROFILES[0])],
                          capture_output=True, text=True, cwd=ROOT)
    assert good.returncode == 0, good.stderr


def test_a_path_the_agent_cannot_use_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    from shared.signing import generate_private_key, public_key_pem

    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "fleet.pub").write_bytes(public_key_pem(generate_private_key().public_key()))
    result = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(ROOT / "firmware_configs" / "dev.toml"),
         "--set", f'agent.data_dir="{tmp_path / "data"}"', "--set", f'api.token_file="{tmp_path / "a-file" / "t"}"',
         "--set", f'model.trusted_public_key="{tmp_path / "fleet.pub"}"', "--set", 'mqtt.url="mqtt://127.0.0.1:1"'],
        capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "edge-agent: cannot start:" in result.stderr and "a-file" in result.stderr
    assert "Traceback" not in result.stderr


def _schema() -> list[tuple[str, str, type, dict[str, object]]]:
    """(section, key, type, metadata) of every field of the configuration schema."""
    import dataclasses
    import typing

    from edge_agent.config import AgentConfig

    fields = []
    for section in dataclasses.fields(AgentConfig):
        section_type = typing.get_type_hints(AgentConfig)[section.name]
        hints = typing.get_type_hints(section_type)
        fields += [(section.name, f.name, hints[f.name], dict(f.metadata)) for f in dataclasses.fields(section_type)]
    return fields


def _bad_values() -> list[tuple[str, str, object]]:
    """(section, key, value) for every field given a wrong type, and for every bounded field a value
    just outside its range or its choices."""
    wrong_for = {int: "'seven'", float: "'fast'", str: "12", Path: "[1, 2]", bool: "'yes'"}
    cases: list[tuple[str, str, object]] = []
    for section, key, kind, meta in _schema():
        cases.append((section, key, wrong_for[kind]))
        if meta.get("lo") is not None:
            cases.append((section, key, int(meta["lo"]) - 1))  # type: ignore[call-overload]
        if meta.get("hi") is not None:
            cases.append((section, key, int(meta["hi"]) + 1))  # type: ignore[call-overload]
        if meta.get("choices"):
            cases.append((section, key, "'none-of-these'"))
    return cases


@pytest.mark.parametrize(("section", "key", "value"), _bad_values(), ids=lambda v: str(v))
def test_every_field_rejects_a_wrong_type_or_value_naming_its_key(tmp_path: Path, section: str, key: str,
                                                                  value: object) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f"[{section}]\n{key} = {value}\n")
    with pytest.raises(ConfigError, match=rf"^{section}\.{key}: must be"):
        load(path)


# -- issue 22: every value the agent parses later is validated; every config error exits 2 -------

BAD_VALUES = [
    ('mqtt.url="http://nowhere"', "mqtt.url"),
    ('mqtt.url="mqtt://host:99999"', "mqtt.url"),
    ('mqtt.url="mqtt://host:0"', "mqtt.url"),
    ('mqtt.url="nowhere"', "mqtt.url"),
    ('mqtt.url="mqtt://:1883"', "mqtt.url"),
    ('mqtt.url="mqtt://user:pw@host:1883/x"', "mqtt.url"),
    ('api.host="not a host"', "api.host"),
    ('api.host=""', "api.host"),
    ('api.host="-bad-.example"', "api.host"),
    ('mqtt.topic_prefix="a/#/+"', "mqtt.topic_prefix"),
    ('mqtt.topic_prefix="a/+"', "mqtt.topic_prefix"),
    ('mqtt.topic_prefix=""', "mqtt.topic_prefix"),
    ('mqtt.topic_prefix="a//b"', "mqtt.topic_prefix"),
    ('mqtt.topic_prefix="edge-rec/v1/"', "mqtt.topic_prefix"),
    ('mqtt.topic_prefix="$SYS/x"', "mqtt.topic_prefix"),
    ('mqtt.ca_file="/etc/ca.pem"', "mqtt.ca_file"),  # TLS files with a plain mqtt:// URL
]


@pytest.mark.parametrize(("override", "key"), BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_values_parsed_later_are_validated_and_exit_2(tmp_path: Path, override: str, key: str) -> None:
    profile = ROOT / "firmware_configs" / "dev.toml"
    for command in (["validate-config", str(profile)], ["run", "--config", str(profile)]):
        result = subprocess.run([sys.executable, "-m", "edge_agent.cli", *command, "--set", override,
                                 "--set", f'agent.data_dir="{tmp_path / "data"}"'],
                                capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert f"invalid configuration: {key}: " in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("trouble", ["host that does not resolve", "port in use", "key not PEM"])
def test_run_problems_found_at_start_exit_2_with_a_message(tmp_path: Path, trouble: str) -> None:
    from devtools.processes import free_port
    from shared.signing import generate_private_key, public_key_pem

    (tmp_path / "fleet.pub").write_bytes(b"junk" if trouble == "key not PEM" else
                                         public_key_pem(generate_private_key().public_key()))
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1] if trouble == "port in use" else free_port()
    host = "nowhere.invalid" if trouble == "host that does not resolve" else "127.0.0.1"
    try:
        result = subprocess.run(
            [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(ROOT / "firmware_configs" / "dev.toml"),
             "--set", f'agent.data_dir="{tmp_path / "data"}"',
             "--set", f'model.trusted_public_key="{tmp_path}/fleet.pub"',
             "--set", 'mqtt.url="mqtt://127.0.0.1:9"', "--set", f'api.host="{host}"', "--set", f"api.port={port}"],
            capture_output=True, text=True, cwd=ROOT, timeout=60)
    finally:
        busy.close()
    assert result.returncode == 2, result.stderr
    assert "edge-agent: cannot start: " in result.stderr and "Traceback" not in result.stderr
