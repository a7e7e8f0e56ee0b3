"""Reading target TOML files: `base` merging, validation, host completion, options.

A file may name a `base` (a shipped target name, or a .toml path relative to the file); the
child's top-level keys replace the base's, except `[tvm]` and `[options]`, merged key by key.
CPU targets may say "host" for `features`, `vector_lanes`, `tuning_key` and `[tvm] mcpu`: these
are completed from this machine (or the kind's baseline on another kind of machine).
"""

from __future__ import annotations

import difflib
import os
import platform
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from targets import host
from targets.errors import TargetError
from targets.model import FrozenMap, Target
from targets.schema import HOST, OPTIONS, check

_DIR = Path(__file__).resolve().parent
_BRACES = re.compile(r"\s*([^{}]*?)\s*(?:\{([^{}]*)\})?\s*")


def known() -> list[str]:
    """The names of the shipped targets."""
    return sorted(p.stem for p in _DIR.glob("*.toml"))


def resolve(spec: Target | str | os.PathLike[str], **options: Any) -> Target:
    """A Target from a Target (as is), "auto", a shipped name, a .toml path, or `name{key=value,...}`.

    Keyword options override options given in braces. Raises TargetError for anything wrong.
    """
    if isinstance(spec, Target):
        if options:
            raise TargetError(f"target {spec.name!r} is already resolved; options {sorted(options)} cannot apply")
        return spec
    if isinstance(spec, os.PathLike):
        return _load(Path(spec), options)
    if not isinstance(spec, str):
        raise TargetError(f"a target is a name, a .toml file or a Target, not {type(spec).__name__}")
    if os.path.isfile(spec):
        return _load(Path(spec), options)
    m = _BRACES.fullmatch(spec)
    if m is None:
        raise TargetError(f"cannot parse target {spec!r}; expected name or name{{key=value,...}}")
    name, opts = m.group(1), _parse_options(spec, m.group(2) or "")
    opts.update(options)
    if name == "auto":
        return _auto(opts)
    if name in known():
        return _load(_DIR / f"{name}.toml", opts)
    if name.endswith(".toml") or os.sep in name:
        return _load(Path(name), opts)
    hint = difflib.get_close_matches(name, [*known(), "auto"], n=1)
    raise TargetError(
        f"unknown target {name!r}{f' (did you mean {hint[0]!r}?)' if hint else ''}; "
        f"known targets: auto, {', '.join(known())}, or a path to a .toml file"
    )


def _auto(options: dict[str, Any]) -> Target:
    """A usable CUDA GPU, else this machine's CPU."""
    arch = host.cuda_arch()
    if arch is not None:
        return _load(_DIR / "cuda.toml", {"arch": arch, **options})
    kind = host.cpu().kind
    if kind is None:
        machine = platform.machine()
        raise TargetError(f"cannot detect a target for this {machine} machine; name one: {', '.join(known())}")
    return _load(_DIR / f"{kind}.toml", options)


def _parse_options(spec: str, text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TargetError(f"target {spec!r}: option {item!r} should be key=value")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def _load(path: Path, options: Mapping[str, Any]) -> Target:
    data = _read_merged(path, frozenset())
    check(path, data)
    target = _build(path, data, {k.replace("-", "_"): v for k, v in options.items()})
    try:
        target.tvm_target()
    except Exception as e:  # noqa: BLE001 - any TVM complaint is the file's fault
        raise TargetError(f"{path}: [tvm] or [host] is not a valid TVM target: {e}") from None
    return target


def _read(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise TargetError(f"target file {str(path)!r} does not exist") from None
    except OSError as e:
        raise TargetError(f"cannot read target file {str(path)!r}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise TargetError(f"{path}: invalid TOML: {e}") from None


def _read_merged(path: Path, seen: frozenset[Path]) -> dict[str, Any]:
    data = _read(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise TargetError(f"{path}: field 'base' should be a string, got {base!r}")
    if base in known():
        base_path = _DIR / f"{base}.toml"
    elif base.endswith(".toml"):
        base_path = path.parent / base
    else:
        raise TargetError(f"{path}: base {base!r} is neither a shipped target ({', '.join(known())}) nor a .toml file")
    if base_path.resolve() in seen | {path.resolve()}:
        raise TargetError(f"{path}: base {base!r} leads back to this file")
    merged = _read_merged(base_path, seen | {path.resolve()})
    for table in ("tvm", "options"):
        if isinstance(merged.get(table), dict) and isinstance(data.get(table), dict):
            data[table] = {**merged[table], **data[table]}
    return {**merged, **data}


def _build(path: Path, data: dict[str, Any], options: dict[str, Any]) -> Target:
    kind, declared = data["kind"], data.get("options", {})
    for key in options:
        if key not in declared:
            raise TargetError(
                f"{path}: target {data['name']!r} has no option {key!r}; options: {', '.join(declared) or 'none'}"
            )
    resolved: dict[str, Any] = {}
    for key, default in declared.items():
        value = options.get(key, default)
        try:
            resolved[key] = OPTIONS[key].parse(value)
        except ValueError as e:
            raise TargetError(f"{path}: option {key}={value!r}: {e}") from None
    tvm_cfg = {**data["tvm"], **{OPTIONS[k].tvm_key: v for k, v in resolved.items()}}
    if tvm_cfg.get("mcpu") == HOST:
        tvm_cfg["mcpu"] = host.host_mcpu(kind)
    _check_mcpu(path, "tvm", tvm_cfg)
    if "host" in data:
        _check_mcpu(path, "host", data["host"])
    features = host.host_features(kind) if data["features"] == HOST else tuple(data["features"])
    return Target(
        name=data["name"],
        description=data["description"],
        kind=kind,
        device=data["device"],
        tvm=FrozenMap(tvm_cfg),
        host=FrozenMap(data["host"]) if "host" in data else None,
        features=features,
        vector_lanes=_lanes(kind, features) if data["vector_lanes"] == HOST else data["vector_lanes"],
        layout=data["layout"],
        dtypes=tuple(data["dtypes"]),
        pipeline=data["pipeline"],
        export=data["export"],
        tuning_key=_tuning_key(kind, features) if data["tuning_key"] == HOST else data["tuning_key"],
        options=FrozenMap(resolved),
        source=str(path),
    )


def _check_mcpu(path: Path, table: str, cfg: Mapping[str, Any]) -> None:
    """TVM accepts any mcpu string silently; ask LLVM whether it knows the cpu for the triple."""
    mcpu = cfg.get("mcpu")
    if cfg.get("kind") != "llvm" or mcpu is None:
        return
    from tvm.target import codegen

    triple = str(cfg.get("mtriple") or codegen.llvm_get_system_triple())
    if not isinstance(mcpu, str) or not codegen.llvm_is_valid_cpu(mcpu, triple):
        raise TargetError(f"{path}: [{table}] mcpu {mcpu!r} is not a cpu LLVM knows for {triple}")


def _lanes(kind: str, features: tuple[str, ...]) -> int:
    """fp32 SIMD lanes implied by the features: AVX-512 16, AVX 8, SSE/NEON 4."""
    have = {host.normalize(f) for f in features}
    if kind == "x86":
        return 16 if "avx512f" in have else 8 if "avx" in have or "avx2" in have else 4
    return 4


def _tuning_key(kind: str, features: tuple[str, ...]) -> str:
    """The key of the shipped variant these features satisfy: x86-avx512-fp32, x86-avx2-fp32, arm-dotprod-fp32..."""
    have = {host.normalize(f) for f in features}
    if kind == "x86":
        level = "avx512" if "avx512f" in have else "avx2" if {"avx2", "fma"} <= have else None
    else:
        level = "dotprod" if "dotprod" in have else None
    return "-".join(filter(None, (kind, level, "fp32")))
