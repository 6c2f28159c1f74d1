"""The hashed locks (requirements/*.lock, ``make lock``) pin every package of each install, with hashes.

``pip install --require-hashes -r requirements/edge.lock`` is the device install (docs/install.md);
these checks catch a lock edited by hand, one generated without hashes, or one gone stale after a
dependency was added to pyproject.toml.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCKS = {"edge.lock": ["edge"], "trainer.lock": ["trainer"], "dev.lock": ["edge", "trainer", "dev"]}
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


def pins(lock: Path) -> dict[str, tuple[Requirement, list[str]]]:
    """Each requirement of ``lock`` (continuation lines joined, comments dropped) with its hashes."""
    text = re.sub(r"\\\n", " ", lock.read_text())
    found: dict[str, tuple[Requirement, list[str]]] = {}
    for line in text.splitlines():
        line = line.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        assert not line.startswith("-"), f"{lock.name}: an option line {line!r} (index URLs stay out of the lock)"
        spec, *options = line.split(" --hash=")
        requirement = Requirement(spec.strip())
        found[canonicalize_name(requirement.name)] = (requirement, [f"--hash={o.strip()}" for o in options])
    return found


def declared(extras: list[str]) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [*project["dependencies"], *(d for e in extras for d in project["optional-dependencies"][e])]
    return {canonicalize_name(Requirement(n).name) for n in names}


@pytest.mark.parametrize("name", sorted(LOCKS))
def test_every_requirement_is_pinned_with_hashes(name: str) -> None:
    locked = pins(ROOT / "requirements" / name)
    assert len(locked) > 10, name
    for package, (requirement, hashes) in locked.items():
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"{name}: {package} is not pinned: {requirement}"
        assert hashes and all(HASH.fullmatch(h) for h in hashes), f"{name}: {package} has no sha256 hash"


@pytest.mark.parametrize("name", sorted(LOCKS))
def test_the_lock_covers_what_pyproject_declares(name: str) -> None:
    missing = declared(LOCKS[name]) - set(pins(ROOT / "requirements" / name))
    assert not missing, f"{name} lacks {sorted(missing)}: run 'make lock'"


def test_the_locked_versions_satisfy_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    locked = pins(ROOT / "requirements" / "dev.lock")
    wanted = [*project["dependencies"], *(d for deps in project["optional-dependencies"].values() for d in deps)]
    for line in wanted:
        requirement = Requirement(line)
        (pin,) = locked[canonicalize_name(requirement.name)][0].specifier
        assert requirement.specifier.contains(pin.version, prereleases=True), f"{pin.version} breaks {requirement}"


def test_the_edge_lock_has_no_tensorflow() -> None:
    assert not [p for p in pins(ROOT / "requirements" / "edge.lock") if p.startswith(("tensorflow", "keras"))]
