"""What a target TOML may say: fields and their types, allowed values, options.

`check` accepts exactly the well-formed descriptions (after `base` merging); every rejection is a
TargetError naming the file and the field.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from passes.base import PipelineSyntaxError, parse_pipeline
from targets import host
from targets.errors import TargetError

HOST = "host"  # the value a CPU target gives a field to have it detected from this machine
DEVICES = {"x86": "cpu", "arm": "cpu", "cuda": "cuda", "opencl": "opencl"}  # kind -> TVM runtime device
_TVM_KINDS = {"x86": "llvm", "arm": "llvm", "cuda": "cuda", "opencl": "opencl"}
_EXPORTS = {
    "x86": ("shared-library", "cross-library"),
    "arm": ("shared-library", "cross-library"),
    "cuda": ("cuda",),
    "opencl": ("opencl-source",),
}
_LAYOUTS = ("NCHW", "NHWC")
_DTYPES = ("float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool")


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_table(v: Any) -> bool:
    return isinstance(v, dict)


def _is_strs(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# Top-level key -> (check of its TOML value, how to say the expected type in a message).
_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "name": (_is_str, "a string"),
    "description": (_is_str, "a string"),
    "kind": (_is_str, "a string"),
    "device": (_is_str, "a string"),
    "tvm": (_is_table, "a table"),
    "host": (_is_table, "a table"),
    "features": (lambda v: v == HOST or _is_strs(v), 'a list of strings or "host"'),
    "vector_lanes": (lambda v: v == HOST or _is_int(v), 'an integer or "host"'),
    "layout": (_is_str, "a string"),
    "dtypes": (_is_strs, "a list of strings"),
    "pipeline": (_is_str, "a string"),
    "export": (_is_str, "a string"),
    "tuning_key": (_is_str, "a string"),
    "options": (_is_table, "a table"),
}
_OPTIONAL = frozenset({"host", "options"})


@dataclass(frozen=True)
class Option:
    """A target option: the `[tvm]` key it sets and the parser of its value (raises ValueError)."""

    tvm_key: str
    parse: Callable[[Any], Any]


def _parse_arch(value: Any) -> str:
    if not (isinstance(value, str) and re.fullmatch(r"sm_\d+", value)):
        raise ValueError("expected a CUDA arch like sm_80")
    return value


def _parse_cores(value: Any) -> int:
    if value == HOST:
        return host.cpu().cores
    if isinstance(value, bool) or not re.fullmatch(r"\d+", str(value)) or int(value) < 1:
        raise ValueError('expected a positive integer or "host"')
    return int(value)


OPTIONS = {"arch": Option("arch", _parse_arch), "num_cores": Option("num-cores", _parse_cores)}


def check(path: Path, data: dict[str, Any]) -> None:
    """Raise TargetError naming `path` and the field unless `data` is a well-formed description."""

    def bad(field: str, problem: str) -> TargetError:
        return TargetError(f"{path}: field {field!r} {problem}")

    for key in data:
        if key not in _FIELDS:
            raise bad(key, f"is not a target field; fields: base, {', '.join(_FIELDS)}")
    for key, (ok, what) in _FIELDS.items():
        if key not in data and key not in _OPTIONAL:
            raise bad(key, "is missing")
        if key in data and not ok(data[key]):
            raise bad(key, f"should be {what}, got {data[key]!r}")
    kind = data["kind"]
    _one_of(bad, "kind", kind, tuple(DEVICES))
    gpu = DEVICES[kind] != "cpu"
    _one_of(bad, "device", data["device"], (DEVICES[kind],))
    _one_of(bad, "layout", data["layout"], _LAYOUTS)
    _one_of(bad, "export", data["export"], _EXPORTS[kind])
    for dtype in data["dtypes"]:
        _one_of(bad, "dtypes", dtype, _DTYPES)
    if _is_int(data["vector_lanes"]) and data["vector_lanes"] < (0 if gpu else 1):
        raise bad("vector_lanes", f"should be at least {0 if gpu else 1}, got {data['vector_lanes']}")
    if gpu != ("host" in data):
        raise bad("host", "is required for GPU kinds" if gpu else "is only for GPU kinds")
    if data["tvm"].get("kind") != _TVM_KINDS[kind]:
        got = data["tvm"].get("kind")
        raise bad("tvm", f"should have kind = {_TVM_KINDS[kind]!r} for a {kind} target, got {got!r}")
    completed = {"features": data["features"], "vector_lanes": data["vector_lanes"],
                 "tuning_key": data["tuning_key"], "tvm": data["tvm"].get("mcpu")}
    for key, value in completed.items():
        if gpu and value == HOST:
            raise bad(key, f'cannot be "host" for a {kind} target; host completion is for CPU targets')
    for option in data.get("options", {}):
        if option not in OPTIONS:
            raise bad("options", f"declares {option!r}; supported options: {', '.join(OPTIONS)}")
        if OPTIONS[option].tvm_key in data["tvm"]:
            key = OPTIONS[option].tvm_key
            raise bad("tvm", f"sets {key!r}, which option {option!r} sets; give its default in [options]")
    try:
        parse_pipeline(data["pipeline"])
    except PipelineSyntaxError as e:
        raise bad("pipeline", str(e)) from None


def _one_of(bad: Callable[[str, str], TargetError], field: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise bad(field, f"is {value!r}; expected one of: {', '.join(allowed)}")
