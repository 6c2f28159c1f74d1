"""The settings an agent would run with, and where each came from, for ``edge-agent validate-config``.

Every key of :class:`edge_agent.config.AgentConfig` is listed with its effective value and its
source: ``default``, ``profile`` (the TOML file), ``--set``, or ``environment``. Then the values
that never live in the profile: the API token and the master key (their *origin* only: a secret's
value is never printed; paths to secret files are), and the other environment variables the agent
honours. The output is TOML, so it can be diffed, or saved as a profile.

Loading and checking the profile is :mod:`edge_agent.config`'s job; this module only explains it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_agent import master_key
from edge_agent.config import AgentConfig

#: A setting whose name says it holds a secret itself (not a path to one) is shown as this.
HIDDEN = "<hidden>"
_SECRET_NAME = re.compile(r"(token|secret|password|passphrase|key)$")
#: Environment variables the agent reads, and what for (edge_agent.daemon, master_key, runtime, sd_notify).
API_TOKEN_VARIABLE = "EDGE_AGENT_API_TOKEN"
RUNTIME_VARIABLE = "EDGE_AGENT_RUNTIME"


@dataclass(frozen=True)
class Setting:
    section: str
    name: str
    value: object
    source: str  # default | profile | --set | environment


def _overridden(overrides: Sequence[str]) -> set[tuple[str, str]]:
    keys = set()
    for assignment in overrides:
        section, _, name = assignment.partition("=")[0].strip().partition(".")
        keys.add((section, name))
    return keys


def settings(profile: Path, overrides: Sequence[str], config: AgentConfig) -> list[Setting]:
    """Every key of ``config`` (loaded from ``profile`` and ``overrides``) with its source."""
    raw = tomllib.loads(profile.read_text(encoding="utf-8"))
    from_set = _overridden(overrides)
    found = []
    for section_field in dataclasses.fields(config):
        section = getattr(config, section_field.name)
        in_profile = raw.get(section_field.name, {})
        for f in dataclasses.fields(section):
            key = (section_field.name, f.name)
            source = "--set" if key in from_set else "profile" if f.name in in_profile else "default"
            value = getattr(section, f.name)
            if isinstance(value, str) and _SECRET_NAME.search(f.name) and value:
                value = HIDDEN
            found.append(Setting(section_field.name, f.name, value, source))
    return found


def secrets_and_environment(config: AgentConfig, environ: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(what, effective origin, source) of the values that never come from the profile."""
    rows = []
    if not config.api.default_token:
        rows.append(("api token", "none (api.default_token = false: only api.tokens_file)", "profile"))
    elif environ.get(API_TOKEN_VARIABLE, "").strip():
        rows.append(("api token", f"{API_TOKEN_VARIABLE} (value hidden; api.token_file is not read)", "environment"))
    else:
        rows.append(("api token", f"file {config.token_path} (created if absent)",
                     "default" if not config.api.token_file else "profile"))
    credentials = environ.get("CREDENTIALS_DIRECTORY", "")
    credential = Path(credentials) / master_key.CREDENTIAL_NAME if credentials else None
    if environ.get(master_key.ENVIRONMENT_VARIABLE, "").strip():
        rows.append(("master key", f"{master_key.ENVIRONMENT_VARIABLE} (value hidden; no key file is read)",
                     "environment"))
    elif credential is not None and credential.is_file():
        rows.append(("master key", f"systemd credential {credential}", "environment"))
    else:
        rows.append(("master key", f"file {config.master_key_path}",
                     "profile" if config.history.master_key_file else "default"))
    runtime = environ.get(RUNTIME_VARIABLE, "")
    rows.append(("tflite runtime", f"{runtime} only ({RUNTIME_VARIABLE})" if runtime else
                 "first installed of litert, tflite_runtime, tensorflow", "environment" if runtime else "default"))
    if environ.get("NOTIFY_SOCKET"):
        usec = environ.get("WATCHDOG_USEC", "")
        rows.append(("systemd notify", f"on; watchdog {int(usec) / 1e6:g}s" if usec.isdigit() and int(usec) else
                     "on; no watchdog", "environment"))
    return rows


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a TOML basic string


def render(profile: Path, overrides: Sequence[str], config: AgentConfig,
           environ: Mapping[str, str] | None = None) -> str:
    """The effective settings as TOML, each value followed by its source as a comment."""
    env = os.environ if environ is None else environ
    lines = [f"# {profile}: valid. Effective settings; after each: where it came from "
             "(default, profile, --set, environment)."]
    section = ""
    for s in settings(profile, overrides, config):
        if s.section != section:
            section = s.section
            lines += ["", f"[{section}]"]
        lines.append(f"{s.name} = {_toml_value(s.value)}  # {s.source}")
    lines += ["", "# Not in the profile (secrets are never printed, only where they come from):"]
    lines += [f"#   {what}: {origin}  [{source}]" for what, origin, source in secrets_and_environment(config, env)]
    return "\n".join(lines) + "\n"
