"""The resolved target description: a frozen, hashable value built by `targets.loader`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from targets import host

if TYPE_CHECKING:
    import tvm


class FrozenMap(Mapping[str, Any]):
    """A read-only, hashable mapping; nested lists become tuples and nested tables FrozenMaps."""

    __slots__ = ("_items",)

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._items = {k: freeze(v) for k, v in data.items()}

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __repr__(self) -> str:
        return f"FrozenMap({self._items!r})"


def freeze(value: Any) -> Any:
    """Lists to tuples and dicts to FrozenMaps, recursively."""
    if isinstance(value, Mapping):
        return FrozenMap(value)
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """The JSON-ready inverse of `freeze`: tuples to lists, mappings to dicts."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class Target:
    """A compilation target, fully resolved: no "host" placeholders and options substituted.

    `tvm` and `host` are the TVM target config dicts (`host` is set exactly for GPU kinds);
    `options` holds the resolved values of the options the TOML declares; `source` is the TOML path.
    """

    name: str
    description: str
    kind: str
    device: str
    tvm: FrozenMap
    host: FrozenMap | None
    features: tuple[str, ...]
    vector_lanes: int
    layout: str
    dtypes: tuple[str, ...]
    pipeline: str
    export: str
    tuning_key: str
    options: FrozenMap
    source: str

    @property
    def vector_registers(self) -> int:
        """SIMD registers a CPU kernel can tile into: 32 on AVX-512 and AArch64 (NEON), 16 on other x86 (AVX2, SSE)."""
        if self.kind == "arm":
            return 32
        return 32 if "avx512f" in {host.normalize(f) for f in self.features} else 16

    def tvm_target(self) -> tvm.target.Target:
        """The TVM target, with its host target for GPU kinds."""
        import tvm

        if self.host is None:
            return tvm.target.Target(thaw(self.tvm))
        return tvm.target.Target(thaw(self.tvm), host=tvm.target.Target(thaw(self.host)))

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain JSON types (lists and dicts)."""
        return {f.name: thaw(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def key(self) -> str:
        """sha256 of the canonical JSON of `to_dict()` without `source`: equal descriptions, equal keys."""
        data = self.to_dict()
        del data["source"]
        return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def runs_here(self) -> bool:
        """Whether modules for this target can execute on this machine. Never raises."""
        if self.kind in ("x86", "arm"):
            return host.cpu().kind == self.kind and host.has_features(self.features)
        if self.kind == "cuda":
            arch = host.cuda_arch()
            return arch is not None and _sm(arch) >= _sm(str(self.tvm.get("arch", "sm_0")))
        return host.opencl_usable()


def _sm(arch: str) -> int:
    m = re.match(r"sm_(\d+)", arch)
    return int(m.group(1)) if m else 0
