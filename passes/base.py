"""The pass interface, the pass registry, and pipeline text parsing.

A pass is a small class with a kebab-case `name`, options as frozen dataclass fields, and
`run(graph, ctx) -> PassResult`. `PassResult.modified` is true exactly when the graph changed.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from lepton_ir import Graph, UserError


@dataclass(frozen=True)
class PassResult:
    """What a pass did: `modified` exactly when the graph changed; `stats` counts by kind."""

    modified: bool
    stats: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PassContext:
    """Explicit inputs of a pass run: the target description (or None) and global options."""

    target: Any = None
    options: Mapping[str, Any] = field(default_factory=dict)


class Pass:
    """Base class. Subclasses are frozen dataclasses whose fields are the pass's options."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        raise NotImplementedError

    def spec(self) -> str:
        """The pipeline-text form of this pass with its non-default options."""
        opts = []
        if dataclasses.is_dataclass(self):
            for f in dataclasses.fields(self):
                value = getattr(self, f.name)
                if value != f.default:
                    opts.append(f"{f.name}={value}")
        return self.name + ("{" + ",".join(opts) + "}" if opts else "")


REGISTRY: dict[str, type[Pass]] = {}
_KEBAB = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


def register(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a pass available by name in pipeline text."""
    if not _KEBAB.match(cls.name):
        raise ValueError(f"pass name {cls.name!r} is not kebab-case")
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"two passes are named {cls.name!r}")
    REGISTRY[cls.name] = cls
    return cls


class PipelineSyntaxError(UserError):
    """Pipeline text names an unknown pass, an unknown option, or is malformed."""


_ITEM = re.compile(r"\s*([a-z0-9-]+)\s*(?:\{([^{}]*)\})?\s*(?:,|$)")


def parse_pipeline(text: str) -> list[Pass]:
    """Parse `"fold-constants,quantize{mode=int8,bits=8}"` into pass instances."""
    import passes.cleanup  # noqa: F401 - registers the built-in passes

    out: list[Pass] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _ITEM.match(text, pos)
        if not m or m.end() == pos:
            raise PipelineSyntaxError(f"cannot parse pipeline text at {text[pos:]!r}; expected name or name{{k=v,...}}")
        name, opts = m.group(1), m.group(2)
        if name not in REGISTRY:
            raise PipelineSyntaxError(f"unknown pass {name!r}; known passes: {', '.join(sorted(REGISTRY))}")
        out.append(_instantiate(REGISTRY[name], opts or ""))
        pos = m.end()
    return out


def _instantiate(cls: type[Pass], opts: str) -> Pass:
    fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
    kwargs: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in opts.split(","))):
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            known = ", ".join(fields) or "none"
            raise PipelineSyntaxError(f"pass {cls.name!r}: bad option {item!r}; options: {known}")
        kwargs[key] = _coerce(cls.name, key, raw.strip(), fields[key].default)
    return cls(**kwargs)


def _coerce(pass_name: str, key: str, raw: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise PipelineSyntaxError(f"pass {pass_name!r}: option {key}={raw!r} should be {type(default).__name__}") from None
    return raw
