"""`lower-recurrent`: unroll LSTM, GRU and RNN with a static sequence length into primitive ops.

TVM 0.27's ONNX frontend has no converter for the recurrent ops. Once the sequence length is
a static int (after `input_shapes` pins it), this pass replaces each node by its ONNX-spec
equations, one step per time step:

- the input projection of every step, `X·W^T + (Wb + Rb)` for all directions, is one MatMul
  (hoisted out of the recurrence), split per step with `Gather` along the time axis;
- each step is `MatMul(H, R^T)` plus elementwise ops: LSTM gates in iofc order (peepholes
  P[iof], `input_forget` coupling f = 1 - i), GRU gates in zrh order (`linear_before_reset`
  keeps Rbh inside the reset product), RNN one gate;
- `clip` bounds every gate's pre-activation (`Min`/`Max`, after bias and peephole terms, as
  onnxruntime does); the cell state itself is not clipped;
- activations per direction (defaults Sigmoid/Tanh/Tanh, Sigmoid/Tanh, Tanh), with
  `activation_alpha`/`activation_beta` consumed in order by the activations that take them
  (onnxruntime's defaults where the lists run out: LeakyRelu 0.01, HardSigmoid 0.2/0.5,
  Elu 1.0, otherwise 0);
- directions forward / reverse / bidirectional (the reverse one walks time backwards),
  layout 0 (`[seq, batch, ...]`) and 1 (`[batch, seq, ...]`);
- `sequence_lens` by masking: at step t a batch row with length <= t keeps its state and
  outputs zeros; Y_h/Y_c of a length-0 row are zeros (onnxruntime's semantics). Running the
  reverse direction over global time S-1..0 with that mask is the same as reversing each
  row's own valid prefix. Constant lengths that all equal the sequence length are dropped;
- missing initial states are zeros, which the first step folds away (no zero tensor is made,
  so the batch dim may stay symbolic).

Only Y, Y_h, Y_c outputs the node names are built. Weight preparation (transposes, bias sums)
is emitted as ops on W/R/B/P, which `fold-constants` folds when they are initializers.

Nodes left alone (counted in `stats` as `skipped_<reason>`): symbolic or unknown sequence
length, unknown hidden size, unknown activations, non-float X, rank != 3. `reason(node)`
says why a node cannot be lowered; the codegen's unsupported-op report uses it, so a
symbolic sequence length is reported with the input dim to pin.

Opset-portable: only ops whose form is the same from opset 9 on are used, plus Split in its
attribute (< 13) or input (>= 13) form.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx

from lepton_ir import Graph, Node, Value
from lepton_ir.constants import constant_value
from lepton_ir.rewriter import Builder, Rewriter
from lepton_ir.types import Dim, Shape, np_dtype

from passes.base import Pass, PassContext, PassResult, register

RECURRENT_OPS = ("LSTM", "GRU", "RNN")
BOOL = onnx.TensorProto.BOOL

#: Gates per op and the activations each direction takes (ONNX defaults).
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_DEFAULT_ACTS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",)}

#: activation (lower case) -> (takes alpha, takes beta, default alpha, default beta), as onnxruntime.
_ACTIVATIONS = {
    "relu": (False, False, 0.0, 0.0),
    "tanh": (False, False, 0.0, 0.0),
    "sigmoid": (False, False, 0.0, 0.0),
    "affine": (True, True, 0.0, 0.0),
    "leakyrelu": (True, False, 0.01, 0.0),
    "thresholdedrelu": (True, False, 0.0, 0.0),
    "scaledtanh": (True, True, 0.0, 0.0),
    "hardsigmoid": (True, True, 0.2, 0.5),
    "elu": (True, False, 1.0, 0.0),
    "softsign": (False, False, 0.0, 0.0),
    "softplus": (False, False, 0.0, 0.0),
}

_Act = tuple[str, float, float]  # (lower-case name, alpha, beta)


@dataclass(frozen=True)
class _Plan:
    """Everything the unrolling needs about one node, checked."""

    op: str
    hidden: int
    seq: int
    directions: tuple[str, ...]  # "forward" / "reverse" per direction index
    layout: int
    acts: tuple[tuple[_Act, ...], ...]  # per direction
    clip: float | None
    linear_before_reset: bool
    input_forget: bool
    lens: Value | None  # sequence_lens when masking is needed
    lens_positive: bool  # every length is known to be >= 1


@register
@dataclass(frozen=True)
class LowerRecurrent(Pass):
    """Unroll LSTM/GRU/RNN nodes whose sequence length is static into MatMul and elementwise ops."""

    name: ClassVar[str] = "lower-recurrent"
    summary: ClassVar[str] = "unroll LSTM/GRU/RNN with a static sequence length (input projection hoisted into one MatMul)"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        stats: Counter[str] = Counter()
        opset = graph.root().opset_imports.get("", 1)
        rw = Rewriter()
        for g in list(graph.all_graphs()):
            for node in g:
                if node.domain or node.op_type not in RECURRENT_OPS or node.graph is not g:
                    continue
                plan = _plan(node, g, opset)
                if isinstance(plan, str):
                    stats[f"skipped_{_reason_key(plan)}"] += 1
                    continue
                _lower(rw, g, node, plan)
                stats[node.op_type] += 1
        lowered = sum(v for k, v in stats.items() if not k.startswith("skipped_"))
        return PassResult(lowered > 0, dict(stats))


def reason(node: Node) -> str | None:
    """Why `lower-recurrent` leaves `node` alone (None: it is not a recurrent op, or it can be lowered)."""
    if node.domain or node.op_type not in RECURRENT_OPS or node.graph is None:
        return None
    plan = _plan(node, node.graph, node.graph.root().opset_imports.get("", 1))
    if not isinstance(plan, str):
        return None
    return (
        f"TVM has no {node.op_type} converter, and Lepton unrolls {node.op_type} only when it can: {plan}"
    )


def _reason_key(text: str) -> str:
    for key in ("sequence length", "hidden size", "activation", "element type", "rank", "W or R", "direction", "opset"):
        if key in text:
            return key.replace(" ", "_")
    return "other"


# ----- checking a node ----------------------------------------------------------------


def _plan(node: Node, g: Graph, opset: int) -> _Plan | str:
    op = node.op_type
    ins = list(node.inputs) + [None] * 8
    x, w, r = ins[0], ins[1], ins[2]
    if x is None or w is None or r is None:
        return "input X, W or R is missing"
    if x.dtype is None or np_dtype(x.dtype).kind != "f":
        return f"X {x.name!r} has element type other than float (or unknown)"
    if x.shape is None or len(x.shape) != 3:
        return f"X {x.name!r} has unknown rank or a rank other than 3"
    layout = int(node.attr("layout", 0))
    if layout not in (0, 1):
        return f"layout={layout} is not 0 or 1"
    t_axis = 0 if layout == 0 else 1
    seq = x.shape[t_axis]
    if not isinstance(seq, int):
        return _symbolic_seq(node, x, t_axis, seq)
    if seq < 1:
        return f"the sequence length of X {x.name!r} is {seq}; a zero-length sequence is not unrolled"
    hidden = node.attr("hidden_size")
    if hidden is None and r.shape is not None and len(r.shape) == 3 and isinstance(r.shape[2], int):
        hidden = r.shape[2]
    if hidden is None or int(hidden) < 1:
        return "the hidden size is unknown (no hidden_size attribute and R's shape is not static)"
    hidden = int(hidden)
    direction = node.attr("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else str(direction)
    dirs = {"forward": ("forward",), "reverse": ("reverse",), "bidirectional": ("forward", "reverse")}.get(direction)
    if dirs is None:
        return f"direction {direction!r} is not forward, reverse or bidirectional"
    acts = _activations(node, op, len(dirs))
    if isinstance(acts, str):
        return acts
    clip = node.attr("clip")
    lens, positive = ins[4], True
    if lens is not None:
        if opset < 9:
            return f"sequence_lens needs Where (opset >= 9); the model's opset is {opset}"
        arr = constant_value(g, lens)
        if arr is not None:
            vals = np.asarray(arr).reshape(-1)
            if vals.size and np.all(vals == seq):
                lens = None  # every row runs the whole sequence: nothing to mask
            else:
                positive = bool(vals.size) and bool(np.all(vals >= 1))
        else:
            positive = False
    return _Plan(
        op=op, hidden=hidden, seq=seq, directions=dirs, layout=layout, acts=acts,
        clip=None if clip is None else float(clip),
        linear_before_reset=bool(node.attr("linear_before_reset", 0)) if op == "GRU" else False,
        input_forget=bool(node.attr("input_forget", 0)) if op == "LSTM" else False,
        lens=lens, lens_positive=positive,
    )


def _symbolic_seq(node: Node, x: Value, axis: int, dim: Dim) -> str:
    """The reason text for a sequence length that is not a static int, naming the input dim to pin."""
    root = node.graph.root() if node.graph is not None else None
    carriers = []
    if isinstance(dim, str) and dim and root is not None:
        for v in root.inputs:
            for i, d in enumerate(v.shape or ()):
                if d == dim:
                    carriers.append((v, i))
    where = f"dim {axis} of X {x.name!r}"
    if carriers:
        v, i = carriers[0]
        example = ",".join(str(d) if isinstance(d, int) else f"<{d or '?'}>" for d in v.shape)
        named = "; ".join(f"input {c.name!r} dim {k}" for c, k in carriers)
        return (
            f"its sequence length ({where}) is the symbolic dim {dim!r} ({named}); pin it to a fixed length with "
            f"--input-shape {v.name}:{example} (input_shapes={{{v.name!r}: [...]}} in Python)"
        )
    dynamic = []
    if root is not None:
        for v in root.inputs:
            dyn = [str(i) for i, d in enumerate(v.shape or ()) if not isinstance(d, int)]
            if v.shape is None or dyn:
                dynamic.append(f"{v.name!r} dim {','.join(dyn)}" if v.shape is not None else f"{v.name!r} (rank unknown)")
    hint = (" (symbolic model inputs: " + "; ".join(dynamic) + ")") if dynamic else ""
    return (
        f"its sequence length ({where}) is not known at compile time; pin the model's input shapes with "
        f"--input-shape NAME:D1,D2,... (input_shapes= in Python) so it becomes static{hint}"
    )


def _activations(node: Node, op: str, ndir: int) -> tuple[tuple[_Act, ...], ...] | str:
    per = len(_DEFAULT_ACTS[op])
    names = node.attr("activations")
    if names is None:
        names = list(_DEFAULT_ACTS[op]) * ndir
    else:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        if len(names) == per and ndir == 2:
            names = names * 2
        if len(names) != per * ndir:
            return f"activations lists {len(names)} functions; {op} with {ndir} direction(s) takes {per * ndir}"
    alphas = list(node.attr("activation_alpha", []) or [])
    betas = list(node.attr("activation_beta", []) or [])
    out: list[_Act] = []
    for n in names:
        key = n.lower()
        if key not in _ACTIVATIONS:
            return f"activation {n!r} is not one ONNX defines for {op}"
        takes_a, takes_b, da, db = _ACTIVATIONS[key]
        a = float(alphas.pop(0)) if takes_a and alphas else da
        b = float(betas.pop(0)) if takes_b and betas else db
        out.append((key, a, b))
    return tuple(tuple(out[d * per : (d + 1) * per]) for d in range(ndir))


# ----- building the unrolled graph ------------------------------------------------------


def _opset(b: Builder) -> int:
    return b.graph.root().opset_imports.get("", 1)


def _const(b: Builder, value: object, dtype: np.dtype | None = None, name: str = "const") -> Value:
    """A constant of `dtype`, by default the element type the cell computes in (`b.dtype`)."""
    return b.const(np.asarray(value, dtype=np_dtype(b.dtype) if dtype is None else dtype), name)


def _i64(b: Builder, value: object) -> Value:
    return b.const(np.asarray(value, dtype=np.int64), "idx")


def _split(b: Builder, x: Value, sizes: Sequence[int], axis: int, shapes: Sequence[Shape]) -> list[Value]:
    """`x` split along `axis` into `sizes` (Split's attribute form before opset 13, its input form after)."""
    if len(sizes) == 1:
        return [x]
    if _opset(b) >= 13:
        outs = b.op("Split", [x, _i64(b, list(sizes))], {"axis": axis}, num_outputs=len(sizes), shapes=shapes)
    else:
        outs = b.op("Split", [x], {"axis": axis, "split": list(sizes)}, num_outputs=len(sizes), shapes=shapes)
    return list(outs)


def _add(b: Builder, x: Value | None, y: Value | None, shape: Shape) -> Value | None:
    """`x + y`, where a None operand is a zero."""
    if x is None:
        return y
    if y is None:
        return x
    return b.Add(x, y, shape=shape)


def _activation(b: Builder, x: Value, act: _Act, shape: Shape) -> Value:
    name, alpha, beta = act
    simple = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "softsign": "Softsign", "softplus": "Softplus"}
    if name in simple:
        return b.op(simple[name], [x], shape=shape)
    if name == "leakyrelu":
        return b.LeakyRelu(x, shape=shape, alpha=alpha)
    if name == "thresholdedrelu":
        return b.ThresholdedRelu(x, shape=shape, alpha=alpha)
    if name == "elu":
        return b.Elu(x, shape=shape, alpha=alpha)
    if name == "hardsigmoid":
        return b.HardSigmoid(x, shape=shape, alpha=alpha, beta=beta)
    if name == "affine":
        return b.Add(b.Mul(x, _const(b, alpha), shape=shape), _const(b, beta), shape=shape)
    if name == "scaledtanh":
        t = b.Tanh(b.Mul(x, _const(b, beta), shape=shape), shape=shape)
        return b.Mul(t, _const(b, alpha), shape=shape)
    raise AssertionError(name)  # _activations accepted only the names above


def _lower(rw: Rewriter, g: Graph, node: Node, plan: _Plan) -> None:
    x = node.inputs[0]
    assert x is not None and x.shape is not None and x.dtype is not None
    b = Builder(g, node.name or node.op_type, dtype=x.dtype)  # the cell computes in X's type
    ins = list(node.inputs) + [None] * 8
    w, r, bias, init_h = ins[1], ins[2], ins[3], ins[5]
    init_c, peep = (ins[6], ins[7]) if plan.op == "LSTM" else (None, None)
    H, S, nd, G = plan.hidden, plan.seq, len(plan.directions), _GATES[plan.op]
    GH = G * H
    t_axis = 0 if plan.layout == 0 else 1
    batch: Dim = x.shape[1 - t_axis]
    row: Shape = (batch, H)

    # Hoisted input projection: X [.., I] x Wcat [I, nd*GH] (+ bias) for every step and direction.
    wt = b.Transpose(w, perm=[2, 0, 1])  # [I, nd, GH]
    wcat = b.Reshape(wt, _i64(b, [0, -1]))  # [I, nd*GH]
    proj_shape = tuple(x.shape[:2]) + (nd * GH,)
    xw = b.MatMul(x, wcat, shape=proj_shape)
    rbh = None  # GRU linear_before_reset: Rb[h] per direction, added inside the reset product
    if bias is not None:
        if plan.op == "GRU" and plan.linear_before_reset:
            # Wb[zr] + Rb[zr] and Wb[h] are hoisted; Rb[h] stays inside r . (Ht-1 R_h^T + Rb[h]).
            wb_zr, wb_h, rb_zr, rbh = _split(b, bias, [2 * H, H, 2 * H, H], 1, [(nd, 2 * H), (nd, H)] * 2)
            total = b.Concat(b.Add(wb_zr, rb_zr, shape=(nd, 2 * H)), wb_h, shape=(nd, GH), axis=1)
        else:
            wb, rb = _split(b, bias, [GH, GH], 1, [(nd, GH), (nd, GH)])
            total = b.Add(wb, rb, shape=(nd, GH))
        xw = b.Add(xw, b.Reshape(total, _i64(b, [-1]), shape=(nd * GH,)), shape=proj_shape)

    masks: list[Value | None] = [None] * S
    lens_ok = None
    if plan.lens is not None:
        lens = plan.lens
        ldt = np_dtype(lens.dtype) if lens.dtype is not None else np.dtype(np.int32)
        for t in range(S):
            less = b.Less(_const(b, t, ldt, "step"), lens, shape=(batch,), dtype=BOOL)
            masks[t] = b.Reshape(less, _i64(b, [-1, 1]), shape=(batch, 1), dtype=BOOL)
        if not plan.lens_positive:
            less = b.Less(_const(b, 0, ldt, "step"), lens, shape=(batch,), dtype=BOOL)
            lens_ok = b.Reshape(less, _i64(b, [-1, 1]), shape=(batch, 1), dtype=BOOL)
    zero = _const(b, 0.0, name="zero") if plan.lens is not None else None

    ys, hs, cs = [], [], []
    for d, direction in enumerate(plan.directions):
        xw_d = xw
        if nd > 1:
            per_dir = b.Reshape(xw, _i64(b, [0, 0, nd, GH]), shape=tuple(x.shape[:2]) + (nd, GH))
            xw_d = b.Gather(per_dir, _i64(b, d), shape=tuple(x.shape[:2]) + (GH,), axis=2)
        rt = b.Transpose(b.Gather(r, _i64(b, d), shape=(GH, H), axis=0), shape=(H, GH), perm=[1, 0])
        h_state = None if init_h is None else _state(b, init_h, d, plan.layout, row)
        c_state = None if init_c is None else _state(b, init_c, d, plan.layout, row)
        peeps = None
        if peep is not None:
            p_d = b.Gather(peep, _i64(b, d), shape=(3 * H,), axis=0)
            peeps = _split(b, p_d, [H, H, H], 0, [(H,)] * 3)
        rbh_d = None if rbh is None else b.Gather(rbh, _i64(b, d), shape=(H,), axis=0)
        step_ctx = _Step(b, plan, plan.acts[d], rt, peeps, rbh_d, row)
        outs: list[Value | None] = [None] * S
        order = range(S) if direction == "forward" else range(S - 1, -1, -1)
        for t in order:
            xw_t = b.Gather(xw_d, _i64(b, t), shape=(batch, GH), axis=t_axis)
            h_new, c_new = step_ctx.step(xw_t, h_state, c_state)
            mask = masks[t]
            if mask is None:
                outs[t], h_state, c_state = h_new, h_new, c_new
                continue
            outs[t] = b.Where(mask, h_new, zero, shape=row)
            h_state = b.Where(mask, h_new, h_state if h_state is not None else zero, shape=row)
            if c_new is not None:
                c_state = b.Where(mask, c_new, c_state if c_state is not None else zero, shape=row)
        if lens_ok is not None:
            h_state = b.Where(lens_ok, h_state, zero, shape=row)
            if c_state is not None:
                c_state = b.Where(lens_ok, c_state, zero, shape=row)
        ys.append(outs)
        hs.append(h_state)
        cs.append(c_state)

    new: dict[Value, Value] = {}
    outputs = list(node.outputs)
    if len(outputs) > 0 and outputs[0].name:
        new[outputs[0]] = _stack_y(b, ys, plan, batch)
    if len(outputs) > 1 and outputs[1].name:
        new[outputs[1]] = _stack_state(b, hs, plan, batch)
    if len(outputs) > 2 and outputs[2].name and plan.op == "LSTM":
        new[outputs[2]] = _stack_state(b, cs, plan, batch)
    rw.replace([node], b.nodes, new, inherit=True)  # Y, Y_h, Y_c keep their names and types


def _state(b: Builder, init: Value, d: int, layout: int, row: Shape) -> Value:
    """Direction d's initial state [batch, H] from `[nd, batch, H]` (layout 0) or `[batch, nd, H]` (layout 1)."""
    return b.Gather(init, _i64(b, d), shape=row, axis=0 if layout == 0 else 1)


class _Step:
    """One time step of one direction; a None state is the zero initial state."""

    def __init__(self, b: Builder, plan: _Plan, acts: tuple[_Act, ...], rt: Value,
                 peeps: list[Value] | None, rbh: Value | None, row: Shape) -> None:
        self.b, self.plan, self.acts, self.rt, self.peeps, self.rbh, self.row = b, plan, acts, rt, peeps, rbh, row
        H = plan.hidden
        batch = row[0] if row else None
        self.batch = batch
        if plan.op == "GRU" and not plan.linear_before_reset:
            # (r . H) R_h^T needs R_h^T on its own; Ht-1 R_zr^T uses the first 2H columns.
            self.rt_zr, self.rt_h = _split(b, rt, [2 * H, H], 1, [(H, 2 * H), (H, H)])

    def clip(self, x: Value, shape: Shape) -> Value:
        b, c = self.b, self.plan.clip
        if c is None:
            return x
        lo = b.Max(x, _const(b, -c, name="clip_lo"), shape=shape)
        return b.Min(lo, _const(b, c, name="clip_hi"), shape=shape)

    def step(self, xw_t: Value, h: Value | None, c: Value | None) -> tuple[Value, Value | None]:
        return {"LSTM": self._lstm, "GRU": self._gru, "RNN": self._rnn}[self.plan.op](xw_t, h, c)

    def _rnn(self, xw_t: Value, h: Value | None, c: Value | None) -> tuple[Value, None]:
        b, row = self.b, self.row
        pre = xw_t if h is None else b.Add(xw_t, b.MatMul(h, self.rt, shape=row), shape=row)
        return _activation(b, self.clip(pre, row), self.acts[0], row), None

    def _gru(self, xw_t: Value, h: Value | None, c: Value | None) -> tuple[Value, None]:
        b, row, H, nb = self.b, self.row, self.plan.hidden, self.batch
        f, g = self.acts
        zr_shape, two = (nb, 2 * H), [(nb, 2 * H), (nb, H)]
        xw_zr, xw_h = _split(b, xw_t, [2 * H, H], 1, two)
        if self.plan.linear_before_reset:
            if h is not None:
                hr_zr, hr_h = _split(b, b.MatMul(h, self.rt, shape=(nb, 3 * H)), [2 * H, H], 1, two)
            else:
                hr_zr, hr_h = None, None
            zr = _activation(b, self.clip(_add(b, xw_zr, hr_zr, zr_shape), zr_shape), f, zr_shape)
            z, r = _split(b, zr, [H, H], 1, [row, row])
            inner = _add(b, hr_h, self.rbh, row)  # Ht-1 R_h^T + Rb_h
            pre = xw_h if inner is None else b.Add(xw_h, b.Mul(r, inner, shape=row), shape=row)
        else:
            hr_zr = None if h is None else b.MatMul(h, self.rt_zr, shape=zr_shape)
            zr = _activation(b, self.clip(_add(b, xw_zr, hr_zr, zr_shape), zr_shape), f, zr_shape)
            z, r = _split(b, zr, [H, H], 1, [row, row])
            pre = xw_h if h is None else b.Add(xw_h, b.MatMul(b.Mul(r, h, shape=row), self.rt_h, shape=row), shape=row)
        cand = _activation(b, self.clip(pre, row), g, row)
        keep = b.Mul(b.Sub(_const(b, 1.0, name="one"), z, shape=row), cand, shape=row)  # (1 - z) . h~
        return (keep if h is None else b.Add(keep, b.Mul(z, h, shape=row), shape=row)), None

    def _lstm(self, xw_t: Value, h: Value | None, c: Value | None) -> tuple[Value, Value]:
        b, row, H, nb = self.b, self.row, self.plan.hidden, self.batch
        f, g, hact = self.acts
        gates = xw_t if h is None else b.Add(xw_t, b.MatMul(h, self.rt, shape=(nb, 4 * H)), shape=(nb, 4 * H))
        if self.peeps is None:
            # No peepholes: clip all gates at once and apply f to i, o, f together.
            gates = self.clip(gates, (nb, 4 * H))
            if self.plan.input_forget or c is None:
                iof_pre, c_pre = _split(b, gates, [2 * H, 2 * H], 1, [(nb, 2 * H), (nb, 2 * H)])
                io = _activation(b, iof_pre, f, (nb, 2 * H))
                i, o = _split(b, io, [H, H], 1, [row, row])
                c_pre = _split(b, c_pre, [H, H], 1, [row, row])[1]  # drop f's slot
                fg = None
            else:
                iof_pre, c_pre = _split(b, gates, [3 * H, H], 1, [(nb, 3 * H), row])
                i, o, fg = _split(b, _activation(b, iof_pre, f, (nb, 3 * H)), [H, H, H], 1, [row] * 3)
        else:
            pi, po, pf = self.peeps
            i_pre, o_pre, f_pre, c_pre = _split(b, gates, [H, H, H, H], 1, [row] * 4)
            if c is not None:
                i_pre = b.Add(i_pre, b.Mul(pi, c, shape=row), shape=row)
                f_pre = b.Add(f_pre, b.Mul(pf, c, shape=row), shape=row)
            i = _activation(b, self.clip(i_pre, row), f, row)
            fg = None if self.plan.input_forget or c is None else _activation(b, self.clip(f_pre, row), f, row)
            c_pre = self.clip(c_pre, row)
            o = None
        if self.plan.input_forget and c is not None:
            fg = b.Sub(_const(b, 1.0, name="one"), i, shape=row)
        cell = _activation(b, c_pre, g, row)
        c_new = b.Mul(i, cell, shape=row)
        if c is not None:
            c_new = b.Add(b.Mul(fg, c, shape=row), c_new, shape=row)
        if o is None:  # peepholes: the output gate sees the new cell state
            o_pre = b.Add(o_pre, b.Mul(po, c_new, shape=row), shape=row)
            o = _activation(b, self.clip(o_pre, row), f, row)
        return b.Mul(o, _activation(b, c_new, hact, row), shape=row), c_new


def _stack_y(b: Builder, ys: list[list[Value | None]], plan: _Plan, batch: Dim) -> Value:
    """Y: `[seq, nd, batch, H]` (layout 0) or `[batch, seq, nd, H]` (layout 1) from per-step `[batch, H]`."""
    H, S, nd = plan.hidden, plan.seq, len(ys)
    per_dir = []
    for outs in ys:
        if plan.layout == 0:
            cat = b.op("Concat", list(outs), {"axis": 0}) if S > 1 else outs[0]  # [S*batch, H]
            per_dir.append(b.Reshape(cat, _i64(b, [S, 1, -1, H]), shape=(S, 1, batch, H)))
        else:
            cat = b.op("Concat", list(outs), {"axis": 1}) if S > 1 else outs[0]  # [batch, S*H]
            per_dir.append(b.Reshape(cat, _i64(b, [-1, S, 1, H]), shape=(batch, S, 1, H)))
    if nd == 1:
        return per_dir[0]
    axis = 1 if plan.layout == 0 else 2
    shape = (S, nd, batch, H) if plan.layout == 0 else (batch, S, nd, H)
    return b.op("Concat", per_dir, {"axis": axis}, shape=shape)


def _stack_state(b: Builder, states: list[Value | None], plan: _Plan, batch: Dim) -> Value:
    """Y_h / Y_c: `[nd, batch, H]` (layout 0) or `[batch, nd, H]` (layout 1) from per-direction `[batch, H]`."""
    H, nd = plan.hidden, len(states)
    assert all(s is not None for s in states)
    if plan.layout == 0:
        cat = b.op("Concat", list(states), {"axis": 0}) if nd > 1 else states[0]
        return b.Reshape(cat, _i64(b, [nd, -1, H]), shape=(nd, batch, H))
    cat = b.op("Concat", list(states), {"axis": 1}) if nd > 1 else states[0]
    return b.Reshape(cat, _i64(b, [-1, nd, H]), shape=(batch, nd, H))
