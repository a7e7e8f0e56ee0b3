"""The compile cache: finished artifacts stored under `cache_dir()/<key>`.

Invariants: an entry appears only whole (copied into a staging folder, then renamed into place);
`lookup` returns an entry only after its manifest and every file hash check out, and deletes a
corrupted one. The key covers the model, the target, the options, the tool versions, Lepton's version and
the content of its code (a changed pass or schedule never reuses an artifact of the old one).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from lepton.artifact import (
    FORMAT,
    MANIFEST,
    check_files,
    lepton_version,
    listed_path,
    read_manifest,
    sha256_file,
    tool_versions,
)
from lepton.errors import ArtifactError, TamperedArtifactError
from lepton_ir.errors import InternalError

_KEY = re.compile(r"[0-9a-f]{64}")


def cache_dir() -> Path:
    """`$LEPTON_CACHE_DIR`, else `$XDG_CACHE_HOME/lepton/compiled`, else `~/.cache/lepton/compiled`."""
    if os.environ.get("LEPTON_CACHE_DIR"):
        return Path(os.environ["LEPTON_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lepton" / "compiled"


#: Lepton's packages: every file in them (sources, target TOMLs, shipped tuning databases) is part of the key.
_PACKAGES = ("lepton", "lepton_ir", "passes", "targets")


@functools.cache
def code_fingerprint() -> str:
    """sha256 over the relative paths and contents of every file of Lepton's packages (bytecode caches aside).

    The version number alone is not enough: a changed pass, schedule or tuning database under the same
    version must never be served an artifact the previous code built."""
    digest = hashlib.sha256()
    for package in _PACKAGES:
        spec = importlib.util.find_spec(package)
        roots = list(spec.submodule_search_locations or []) if spec is not None else []
        for root in map(Path, roots):
            for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
                digest.update(f"{package}/{path.relative_to(root).as_posix()}\0".encode())
                digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def cache_key(source_sha256: str, target_key: str, options: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of the inputs, the tool versions, Lepton's version and its code
    (`code_fingerprint`).

    `options` must be JSON-serializable (TypeError otherwise); key order does not matter.
    """
    payload = {"format": FORMAT, "source": source_sha256, "target": target_key, "options": options,
               "tools": tool_versions(), "lepton": lepton_version(), "code": code_fingerprint()}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def lookup(key: str) -> Path | None:
    """The cached artifact folder for `key` when it is intact, else None (a corrupted entry is deleted)."""
    entry = _entry(key)
    if not entry.is_dir():
        return None
    try:
        check_files(entry, read_manifest(entry))
    except ArtifactError:
        _discard(entry)
        return None
    return entry


def store(key: str, artifact_dir: str | os.PathLike[str]) -> Path:
    """Copy the artifact into the cache under `key` and return the entry.

    Safe against concurrent stores of the same key: the first complete entry wins, later ones are dropped.
    """
    entry = _entry(key)
    entry.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{key[:12]}-", dir=entry.parent))
    try:
        copy_artifact(artifact_dir, staging / "entry")
        for _ in range(2):
            try:
                os.rename(staging / "entry", entry)
                return entry
            except OSError:  # the entry exists: another store won, or it is corrupted
                if lookup(key) is not None:
                    return entry
        raise InternalError(f"could not store cache entry {entry}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def copy_artifact(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Copy the manifest and the files it lists from `src` to `dst` (empty or absent), checking each
    file's hash as it is copied. On failure `dst` is left as it was found (absent or empty)."""
    src, dst = Path(src), Path(dst)
    manifest = read_manifest(src)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ArtifactError(f"{dst} exists and is not an empty folder; choose another output folder or empty it")
    created = not dst.exists()
    dst.mkdir(parents=True, exist_ok=True)
    try:
        for rel, sha in manifest.files.items():
            _copy_checked(listed_path(src, rel), listed_path(dst, rel), sha)
        shutil.copyfile(src / MANIFEST, dst / MANIFEST, follow_symlinks=False)
    except BaseException:
        _empty(dst, remove=created)
        raise


def _copy_checked(src: Path, dst: Path, sha256: str) -> None:
    if src.is_symlink() or not src.is_file():
        raise ArtifactError(f"{src} is listed in the manifest but is not a plain file")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst, follow_symlinks=False)
    actual = sha256_file(dst)
    if actual != sha256:
        raise TamperedArtifactError(f"{src} does not match the manifest (sha256 {actual[:16]}..., manifest says {sha256[:16]}...)")


def _entry(key: str) -> Path:
    if not _KEY.fullmatch(key):
        raise InternalError(f"cache key must be a sha256 hex digest, got {key!r}")
    return cache_dir() / key


def _discard(entry: Path) -> None:
    """Remove an entry: renamed away first, so concurrent lookups see a miss, never half a folder."""
    trash = entry.with_name(f".trash-{entry.name}-{os.getpid()}-{id(entry)}")
    try:
        os.rename(entry, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def _empty(folder: Path, *, remove: bool) -> None:
    if remove:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
