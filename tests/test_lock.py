"""The lock pins every installed package: what a fresh clone installs cannot drift with new releases."""

from __future__ import annotations

import importlib.metadata
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
LOCKS = ("requirements.lock", "requirements-models.lock")
#: Installed by the Makefile itself, not from a lock: the project (editable) and pip (pinned in the Makefile).
NOT_LOCKED = {"lepton-compiler", "pip"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins() -> dict[str, set[str]]:
    pins: dict[str, set[str]] = {}
    for lock in LOCKS:
        for line in (ROOT / lock).read_text().splitlines():
            m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
            if m:
                pins.setdefault(_norm(m.group(1)), set()).add(m.group(2))
    return pins


def test_every_installed_package_is_pinned() -> None:
    pins = _pins()
    assert "onnx" in pins and "ml-dtypes" in pins  # transitive ones too
    unpinned, drifted = [], []
    for dist in importlib.metadata.distributions():
        name = _norm(dist.metadata["Name"])
        if name in NOT_LOCKED:
            continue
        version = dist.version.split("+")[0]  # a local build (torch 2.14.1+cu130) is the pinned release
        if name not in pins:
            unpinned.append(f"{name}=={dist.version}")
        elif version not in pins[name]:
            drifted.append(f"{name}=={dist.version} (lock: {sorted(pins[name])})")
    assert not unpinned and not drifted, f"not in the lock: {unpinned}; other version than the lock: {drifted}; run `make install`"


def test_lock_pins_exact_versions() -> None:
    for lock in LOCKS:
        for line in (ROOT / lock).read_text().splitlines():
            if line.strip() and not line.lstrip().startswith(("#", "--")):
                assert "==" in line, f"{lock}: {line!r} is not an exact pin"
