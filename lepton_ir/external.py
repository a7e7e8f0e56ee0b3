"""Safe resolution of ONNX external data.

A model's external data may only come from regular files inside the model's own folder:
no absolute paths, no `..`, no symlinks anywhere on the way, no hard links, and every
offset/length must lie inside the file. Nothing is read here; only checked.
"""

from __future__ import annotations

import os
import re
import stat

import onnx

from lepton_ir.errors import UnsafeExternalDataError
from lepton_ir.tensor import ExternalRegion

_DRIVE = re.compile(r"^[A-Za-z]:")


def external_entries(tensor: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def resolve_external(tensor: onnx.TensorProto, base_dir: str | None, expected_nbytes: int) -> ExternalRegion:
    """Check `tensor`'s external-data reference against `base_dir` and return the byte region."""
    what = f"tensor {tensor.name!r}"
    entries = external_entries(tensor)
    location = entries.get("location", "")
    if base_dir is None:
        raise UnsafeExternalDataError(
            f"{what} keeps its data in external file {location!r}, but the model was not given as a path; "
            "load it from its file so the data can be found next to it"
        )
    if not location:
        raise UnsafeExternalDataError(f"{what} is marked EXTERNAL but names no location")
    if "\0" in location or os.path.isabs(location) or location.startswith(("/", "\\")) or _DRIVE.match(location):
        raise UnsafeExternalDataError(f"{what}: external data path {location!r} is absolute; it must be relative to the model's folder")
    parts = location.replace("\\", "/").split("/")
    if any(p == ".." for p in parts):
        raise UnsafeExternalDataError(f"{what}: external data path {location!r} leaves the model's folder ('..')")
    base = os.path.realpath(base_dir)
    path = base
    for part in parts:
        if part in ("", "."):
            continue
        path = os.path.join(path, part)
        if os.path.islink(path):
            raise UnsafeExternalDataError(f"{what}: external data path {location!r} goes through a symbolic link ({part!r})")
    if os.path.commonpath([base, os.path.realpath(path)]) != base:
        raise UnsafeExternalDataError(f"{what}: external data path {location!r} resolves outside the model's folder")
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        raise UnsafeExternalDataError(f"{what}: external data file {location!r} is missing from {base_dir!r}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeExternalDataError(f"{what}: external data path {location!r} is not a regular file")
    if st.st_nlink > 1:
        raise UnsafeExternalDataError(
            f"{what}: external data file {location!r} is a hard link ({st.st_nlink} links); copy the file instead"
        )
    try:
        offset = int(entries.get("offset", "0"))
        length = int(entries["length"]) if "length" in entries else st.st_size - offset
    except ValueError:
        raise UnsafeExternalDataError(f"{what}: external data offset/length are not integers: {entries}") from None
    if offset < 0 or length < 0 or offset + length > st.st_size:
        raise UnsafeExternalDataError(
            f"{what}: external data range offset={offset} length={length} lies past the end of "
            f"{location!r} ({st.st_size} bytes); the file is truncated or the model is corrupt"
        )
    if length != expected_nbytes:
        raise UnsafeExternalDataError(
            f"{what}: external data holds {length} bytes but its dtype and shape {list(tensor.dims)} need {expected_nbytes}"
        )
    return ExternalRegion(path=path, offset=offset, length=length)
