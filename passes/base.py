"""The pass interface, the pass registry, and pipeline text parsing.

A pass is a small class with a kebab-case `name`, options as frozen dataclass fields, and
`run(graph, ctx) -> PassResult`. `PassResult.modified` is true exactly when the graph changed.
A pass is either *repeatable* (`repeat = True`: cleanup-like, run inside a fixed-point stage
with its neighbours) or *one-shot* (`repeat = False`: layout, quantize, prune; run once, where
the pipeline names it).

Pipeline text: `name` or `name{key=value,...}` items separated by commas. Option values are
typed by the dataclass field: bool, int, float, str, `Literal[...]` (one of the listed
values), `X | None` (`none` for None), and tuples or frozensets written `[a,b,c]`. Data that is not text
(calibration sets, budgets as objects) is not a pipeline option: it travels in `ctx.data`.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from lepton_ir import Graph, UserError


@dataclass(frozen=True)
class RuleStats:
    """One rule's work in one pass run: nodes it was checked on, times it fired, seconds spent."""

    tried: int
    matched: int
    seconds: float


@dataclass(frozen=True)
class PassResult:
    """What a pass did: `modified` exactly when the graph changed; `stats` counts by kind;
    `rules` per-rule work for rule-based passes; `notes` lines a user should read (what was left alone and why)."""

    modified: bool
    stats: Mapping[str, int] = field(default_factory=dict)
    rules: Mapping[str, RuleStats] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class PassContext:
    """Explicit inputs of a pass run: the target description (or None), global options, and
    data a pass needs that is not pipeline text (for example a calibration set), by name."""

    target: Any = None
    options: Mapping[str, Any] = field(default_factory=dict)
    data: Mapping[str, Any] = field(default_factory=dict)


class Pass:
    """Base class. Subclasses are frozen dataclasses whose fields are the pass's options."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    repeat: ClassVar[bool] = True

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        raise NotImplementedError

    def spec(self) -> str:
        """The pipeline-text form of this pass with its non-default options."""
        opts = []
        if dataclasses.is_dataclass(self):
            for f in dataclasses.fields(self):
                value = getattr(self, f.name)
                if value != f.default:
                    opts.append(f"{f.name}={_format(value)}")
        return self.name + ("{" + ",".join(opts) + "}" if opts else "")


def _format(value: Any) -> str:
    if isinstance(value, tuple | list):
        return "[" + ",".join(_format(v) for v in value) + "]"
    if isinstance(value, frozenset | set):
        return "[" + ",".join(sorted(_format(v) for v in value)) + "]"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


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


def parse_pipeline(text: str) -> list[Pass]:
    """Parse `"fold-constants,quantize{mode=int8,exclude=[/head/*]}"` into pass instances."""
    out: list[Pass] = []
    for name, opts in _items(text.strip()):
        if name not in REGISTRY:
            raise PipelineSyntaxError(f"unknown pass {name!r}; known passes: {', '.join(sorted(REGISTRY))}")
        out.append(_instantiate(REGISTRY[name], opts))
    return out


_NAME = re.compile(r"\s*([a-z0-9-]+)\s*")


def _items(text: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """Split pipeline text into `(name, [(key, raw value), ...])`, honouring `{...}` and `[...]`."""
    items = []
    pos = 0
    while pos < len(text):
        m = _NAME.match(text, pos)
        if not m or not m.group(1):
            raise PipelineSyntaxError(f"cannot parse pipeline text at {text[pos:]!r}; expected name or name{{k=v,...}}")
        name, pos = m.group(1), m.end()
        opts: list[tuple[str, str]] = []
        if pos < len(text) and text[pos] == "{":
            close = _closing(text, pos, "{", "}")
            opts = [_key_value(name, part) for part in _split_top(text[pos + 1 : close])]
            pos = close + 1
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos < len(text):
            if text[pos] != ",":
                raise PipelineSyntaxError(f"cannot parse pipeline text at {text[pos:]!r}; expected ',' between passes")
            pos += 1
        items.append((name, opts))
    return items


def _closing(text: str, pos: int, open_: str, close: str) -> int:
    depth = 0
    for i in range(pos, len(text)):
        depth += (text[i] == open_) - (text[i] == close)
        if depth == 0:
            return i
    raise PipelineSyntaxError(f"cannot parse pipeline text: unbalanced {open_!r} at {text[pos:]!r}")


def _split_top(text: str) -> list[str]:
    """Split at commas outside `[...]`; empty parts dropped."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if depth < 0:
            raise PipelineSyntaxError(f"unbalanced ']' in options {text!r}")
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if depth:
        raise PipelineSyntaxError(f"unbalanced '[' in options {text!r}")
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def _key_value(pass_name: str, item: str) -> tuple[str, str]:
    key, sep, raw = item.partition("=")
    if not sep:
        raise PipelineSyntaxError(f"pass {pass_name!r}: bad option {item!r}; write key=value")
    return key.strip().replace("-", "_"), raw.strip()


def _instantiate(cls: type[Pass], opts: list[tuple[str, str]]) -> Pass:
    fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
    hints = typing.get_type_hints(cls) if fields else {}
    kwargs: dict[str, Any] = {}
    for key, raw in opts:
        if key not in fields:
            known = ", ".join(fields) or "none"
            raise PipelineSyntaxError(f"pass {cls.name!r}: unknown option {key!r}; options: {known}")
        kwargs[key] = coerce_option(cls.name, key, raw, hints.get(key, str))
    return cls(**kwargs)


def coerce_option(pass_name: str, key: str, raw: str, hint: Any) -> Any:
    """`raw` (pipeline text) as a value of type `hint`; `PipelineSyntaxError` saying what was expected."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if raw.lower() == "none" and len(inner) < len(args):
            return None
        for a in inner:
            try:
                return coerce_option(pass_name, key, raw, a)
            except PipelineSyntaxError:
                continue
        raise PipelineSyntaxError(f"pass {pass_name!r}: option {key}={raw!r} should be {_hint_name(hint)}")
    if origin is Literal:
        for a in args:
            if str(a) == raw or (isinstance(a, str) and a.lower() == raw.lower()):
                return a
        raise PipelineSyntaxError(f"pass {pass_name!r}: option {key}={raw!r} should be one of {', '.join(map(str, args))}")
    if origin in (tuple, frozenset):
        if not (raw.startswith("[") and raw.endswith("]")):
            raw = f"[{raw}]"  # a single item may be written bare
        elem = args[0] if args else str
        items = [coerce_option(pass_name, key, part, elem) for part in _split_top(raw[1:-1])]
        return tuple(items) if origin is tuple else frozenset(items)
    try:
        if hint is bool:
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1")
        if hint is int:
            return int(raw)
        if hint is float:
            return float(raw)
    except ValueError:
        raise PipelineSyntaxError(f"pass {pass_name!r}: option {key}={raw!r} should be {hint.__name__}") from None
    if hint is str:
        return raw
    raise PipelineSyntaxError(f"pass {pass_name!r}: option {key} has type {_hint_name(hint)}, which pipeline text cannot give")


def _hint_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
