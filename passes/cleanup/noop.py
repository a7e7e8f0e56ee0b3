"""Identity and no-op elimination.

`eliminate-identity` removes `Identity` and inference-form `Dropout`; `eliminate-noop`
removes operators that provably return their data input unchanged (one rule per case).

Invariants shared by both passes:
- A node is removed only when its output has the data input's dtype and (where both are
  static) shape, and its readers and graph-output slots move to the data input through the
  `Rewriter`, so graph-output names never change. When the data input cannot take over an
  output's name (for example a graph input straight to a graph output), the node stays: it
  is never traded for an Identity.
- Results are bit-exact except `x + 0.0` / `0.0 + x` / `x - (-0.0)`, which map -0.0 to
  +0.0 where the original kept -0.0 — numerically equal, within DESIGN.md §6 tolerances.
- Both passes are rule sets on the worklist driver (`passes.rewrite.RewritePass`): a removal
  revisits the readers it rewired (removing a no-op can make a reader's operand constant),
  so one run reaches the fixed point and a second run reports `modified=False`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from lepton_ir import Graph, Node, Value
from lepton_ir.constants import constant_value
from lepton_ir.rewriter import Rewriter, replace_uses_problem

from passes.base import register
from passes.rewrite import Match, RewritePass, Rule, failed, matched, static_shape

INT64_MAX = np.iinfo(np.int64).max


# ----- shared checks --------------------------------------------------------------------


def forward(node: Node, graph: Graph, data: Value | None, *, need_static: bool = False) -> Match:
    """Match that `node`'s output may be replaced by `data`: same dtype, same static shape
    (required when `need_static`, else only compared where both are known), and no graph-output
    renaming problem. Other outputs of `node` must be unused."""
    if data is None:
        return failed("data input is missing")
    out = node.outputs[0]
    if data.dtype is None or out.dtype is None:
        return failed("dtype of input or output is unknown")
    if data.dtype != out.dtype:
        return failed(f"output dtype {out.dtype} differs from input dtype {data.dtype}")
    si, so = static_shape(data), static_shape(out)
    if need_static and (si is None or so is None):
        return failed("input or output shape is not static")
    if si is not None and so is not None and si != so:
        return failed(f"output shape {so} differs from input shape {si}")
    if data.shape is not None and out.shape is not None and len(data.shape) != len(out.shape):
        return failed("output rank differs from input rank")
    for extra in node.outputs[1:]:
        if extra.is_used():
            return failed(f"secondary output {extra.name!r} is used")
    problem = replace_uses_problem(out, data, allow_identity=False)
    if problem is not None:
        return failed(f"output is a graph output and the input cannot take over its name: {problem}")
    return matched(data=data)


def _ints(graph: Graph, node: Node, index: int, attr: str) -> list[int] | None:
    """Integers from input `index` (old opsets: attribute `attr`); None when that input is not
    constant or neither is present (callers tell "absent" apart with `_has`)."""
    if index < len(node.inputs) and node.inputs[index] is not None:
        arr = constant_value(graph, node.inputs[index])
        return None if arr is None else [int(x) for x in np.asarray(arr).reshape(-1)]
    a = node.attr(attr)
    return None if a is None else [int(x) for x in a]


def _has(node: Node, index: int, attr: str) -> bool:
    return (index < len(node.inputs) and node.inputs[index] is not None) or attr in node.attributes


class NoopRule(Rule):
    """A rule whose match binds `data`; the rewrite forwards `data` to the node's readers and removes it."""

    def rewrite(self, rw: Rewriter, node: Node, m: Match) -> None:
        rw.replace([node], [], {node.outputs[0]: m["data"]})


# ----- rules ----------------------------------------------------------------------------


class ReshapeNoop(NoopRule):
    """Reshape whose constant target resolves to the (static) input shape."""

    name = "reshape-same-shape"
    op_types = ("Reshape",)

    def check(self, node: Node, graph: Graph) -> Match:
        shape = static_shape(node.inputs[0])
        if shape is None:
            return failed("input shape is not static")
        target = constant_value(graph, node.inputs[1] if len(node.inputs) > 1 else None)
        if target is None:
            return failed("shape input is not constant")
        t = [int(x) for x in np.asarray(target).reshape(-1)]
        if len(t) != len(shape):
            return failed(f"target rank {len(t)} differs from input rank {len(shape)}")
        allowzero = node.attr("allowzero", 0)
        resolved = [shape[i] if d == 0 and not allowzero else d for i, d in enumerate(t)]
        if resolved.count(-1) == 1:
            known = int(np.prod([d for d in resolved if d != -1]))
            total = int(np.prod(shape))
            resolved = [total // known if d == -1 and known else d for d in resolved]
        if tuple(resolved) != shape:
            return failed(f"target shape {t} resolves to {resolved}, not the input shape {list(shape)}")
        return forward(node, graph, node.inputs[0], need_static=True)


class TransposeNoop(NoopRule):
    """Transpose with the identity permutation (or no perm on rank <= 1)."""

    name = "transpose-identity-perm"
    op_types = ("Transpose",)

    def check(self, node: Node, graph: Graph) -> Match:
        perm = node.attr("perm")
        if perm is None:
            data = node.inputs[0]
            if data is None or data.shape is None or len(data.shape) > 1:
                return failed("no perm (reverses axes) and the input rank is not known to be <= 1")
        elif list(perm) != list(range(len(perm))):
            return failed(f"perm {list(perm)} is not the identity")
        return forward(node, graph, node.inputs[0])


class CastNoop(NoopRule):
    """Cast to the input's own dtype; CastLike whose target has the input's dtype."""

    name = "cast-same-dtype"
    op_types = ("Cast", "CastLike")

    def check(self, node: Node, graph: Graph) -> Match:
        data = node.inputs[0]
        if data is None or data.dtype is None:
            return failed("input dtype is unknown")
        to = node.attr("to") if node.op_type == "Cast" else (node.inputs[1].dtype if node.inputs[1] else None)
        if to is None or to != data.dtype:
            return failed(f"casts dtype {data.dtype} to {to}")
        return forward(node, graph, data)


class PadNoop(NoopRule):
    """Pad with constant all-zero pads (any mode; the `axes` input then selects nothing to pad)."""

    name = "pad-zero"
    op_types = ("Pad",)

    def check(self, node: Node, graph: Graph) -> Match:
        if not _has(node, 1, "pads"):
            return failed("pads are missing")
        pads = _ints(graph, node, 1, "pads")
        if pads is None:
            return failed("pads input is not constant")
        if any(pads):
            return failed(f"pads {pads} are not all zero")
        return forward(node, graph, node.inputs[0])


class SliceNoop(NoopRule):
    """Slice whose constant starts/ends/steps cover every sliced axis whole with step 1."""

    name = "slice-whole"
    op_types = ("Slice",)

    def check(self, node: Node, graph: Graph) -> Match:
        data = node.inputs[0]
        if data is None or data.shape is None:
            return failed("input rank is unknown")
        rank = len(data.shape)
        starts, ends = _ints(graph, node, 1, "starts"), _ints(graph, node, 2, "ends")
        if starts is None or ends is None:
            return failed("starts/ends are not constant")
        axes = _ints(graph, node, 3, "axes") if _has(node, 3, "axes") else list(range(len(starts)))
        steps = _ints(graph, node, 4, "steps") if _has(node, 4, "steps") else [1] * len(starts)
        if axes is None or steps is None:
            return failed("axes/steps are not constant")
        if not len(starts) == len(ends) == len(axes) == len(steps):
            return failed("starts/ends/axes/steps lengths differ")
        for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
            if not -rank <= a < rank:
                return failed(f"axis {a} out of range")
            if st != 1:
                return failed(f"step {st} on axis {a} is not 1")
            dim = data.shape[a % rank]
            if not isinstance(dim, int):
                if s == 0 and e == INT64_MAX:
                    continue
                return failed(f"axis {a} has a dynamic dim and the slice is not [0:INT64_MAX]")
            lo = min(max(s + dim if s < 0 else s, 0), dim)
            hi = min(max(e + dim if e < 0 else e, 0), dim)
            if lo != 0 or hi != dim:
                return failed(f"slice [{s}:{e}] of axis {a} (dim {dim}) is not the whole axis")
        return forward(node, graph, data)


class BinaryNoop(NoopRule):
    """x*1, 1*x, x/1, x+0, 0+x, x-0 with a constant operand that does not broadcast x."""

    name = "binary-identity-operand"
    op_types = ("Mul", "Div", "Add", "Sub")
    # op -> (neutral element, sides the constant may sit on: 1 = right, 0 = left)
    NEUTRAL: ClassVar[dict[str, tuple[int, tuple[int, ...]]]] = {
        "Mul": (1, (1, 0)), "Div": (1, (1,)), "Add": (0, (1, 0)), "Sub": (0, (1,)),
    }

    def check(self, node: Node, graph: Graph) -> Match:
        neutral, sides = self.NEUTRAL[node.op_type]
        reasons = []
        for side in sides:
            c = constant_value(graph, node.inputs[side])
            x = node.inputs[1 - side]
            where = "right" if side else "left"
            if c is None:
                reasons.append(f"{where} operand is not constant")
                continue
            if c.size == 0 or not np.all(c == neutral):
                reasons.append(f"{where} operand is not all {neutral}")
                continue
            sx = static_shape(x)
            if sx is None:
                reasons.append("the other operand's shape is not static")
                continue
            try:
                bshape = tuple(np.broadcast_shapes(sx, c.shape))
            except ValueError:
                reasons.append("operands do not broadcast")
                continue
            if bshape != sx:
                reasons.append(f"broadcasting {list(sx)} with {list(c.shape)} changes the shape to {list(bshape)}")
                continue
            m = forward(node, graph, x, need_static=True)
            if m:
                return m
            reasons.append(m.reason)
        if len(sides) == 1:
            left = constant_value(graph, node.inputs[0])
            if left is not None and left.size and np.all(left == neutral):
                reasons.append(f"a constant {neutral} on the left of {node.op_type} is not a no-op")
        return failed("; ".join(reasons))


class ExpandNoop(NoopRule):
    """Expand whose constant target shape broadcasts to the (static) input shape."""

    name = "expand-same-shape"
    op_types = ("Expand",)

    def check(self, node: Node, graph: Graph) -> Match:
        shape = static_shape(node.inputs[0])
        if shape is None:
            return failed("input shape is not static")
        target = constant_value(graph, node.inputs[1])
        if target is None:
            return failed("shape input is not constant")
        t = tuple(int(x) for x in np.asarray(target).reshape(-1))
        try:
            out = tuple(np.broadcast_shapes(shape, t))
        except ValueError:
            return failed(f"target {list(t)} does not broadcast with {list(shape)}")
        if out != shape:
            return failed(f"expanding {list(shape)} by {list(t)} gives {list(out)}")
        return forward(node, graph, node.inputs[0], need_static=True)


class ConcatNoop(NoopRule):
    """Concat of a single input."""

    name = "concat-single-input"
    op_types = ("Concat",)

    def check(self, node: Node, graph: Graph) -> Match:
        if len(node.inputs) != 1:
            return failed(f"concatenates {len(node.inputs)} inputs")
        return forward(node, graph, node.inputs[0])


class SqueezeNoop(NoopRule):
    """Unsqueeze with empty axes; Squeeze with no/empty axes of an input with no size-1 dim."""

    name = "squeeze-nothing"
    op_types = ("Squeeze", "Unsqueeze")

    def check(self, node: Node, graph: Graph) -> Match:
        data = node.inputs[0]
        axes: Sequence[int] | None = _ints(graph, node, 1, "axes") if _has(node, 1, "axes") else []
        if axes is None:
            return failed("axes input is not constant")
        if axes:
            return failed(f"axes {list(axes)} are not empty")
        if node.op_type == "Squeeze":
            shape = static_shape(data)
            if shape is None:
                return failed("no axes squeezes every size-1 dim and the input shape is not static")
            if 1 in shape:
                return failed(f"no axes squeezes the size-1 dims of {list(shape)}")
        return forward(node, graph, data)


@register
@dataclass(frozen=True)
class EliminateNoop(RewritePass):
    """Remove operators that return their data input unchanged (see each rule's docstring)."""

    name: ClassVar[str] = "eliminate-noop"
    summary: ClassVar[str] = "remove no-op Reshape/Transpose/Cast/Pad/Slice/x*1/x+0/Expand/Concat/Squeeze"
    rules: ClassVar[tuple[Rule, ...]] = (
        ReshapeNoop(), TransposeNoop(), CastNoop(), PadNoop(), SliceNoop(), BinaryNoop(), ExpandNoop(),
        ConcatNoop(), SqueezeNoop(),
    )


# ----- identity ---------------------------------------------------------------------------


def _inference_dropout(node: Node, graph: Graph) -> bool:
    """Dropout that acts as identity: not old-style training (is_test=0), training_mode absent
    or a constant false, and the mask output unused."""
    if graph.root().opset_imports.get("", 17) < 7 and node.attr("is_test", 0) == 0:
        return False  # opset < 7: is_test defaults to 0, i.e. training
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        mode = constant_value(graph, node.inputs[2])
        if mode is None or np.any(mode):
            return False
    return all(not m.is_used() for m in node.outputs[1:])


def _forward_input(node: Node) -> Match:
    """Match that `node`'s single data input can take over its (first) output."""
    data = node.inputs[0] if node.inputs else None
    if data is None:
        return failed("data input is missing")
    problem = replace_uses_problem(node.outputs[0], data, allow_identity=False)
    if problem is not None:
        return failed(problem)
    return matched(data=data)


class IdentityRule(NoopRule):
    """An Identity: its input takes over its readers and output slots."""

    name = "identity_removed"  # the stat key the pass has always reported
    op_types = ("Identity",)

    def check(self, node: Node, graph: Graph) -> Match:
        return _forward_input(node)


class InferenceDropout(NoopRule):
    """A Dropout in inference form (see `_inference_dropout`) whose mask is not read."""

    name = "dropout_removed"
    op_types = ("Dropout",)

    def check(self, node: Node, graph: Graph) -> Match:
        if not _inference_dropout(node, graph):
            return failed("training-mode Dropout, or its mask is read")
        return _forward_input(node)


@register
@dataclass(frozen=True)
class EliminateIdentity(RewritePass):
    """Remove Identity and inference Dropout (mask unused); a Dropout whose mask is read stays."""

    name: ClassVar[str] = "eliminate-identity"
    summary: ClassVar[str] = "remove Identity and inference-mode Dropout"
    rules: ClassVar[tuple[Rule, ...]] = (IdentityRule(), InferenceDropout())
