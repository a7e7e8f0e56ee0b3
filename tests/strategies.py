"""Hypothesis strategies that build random, valid ONNX models for Lepton's tests.

Public API
----------
- ``onnx_models(max_nodes=12, opsets=(13, 21), *, value_info=False)``: a strategy for
  ``onnx.ModelProto``. Every model passes ``onnx.checker.check_model(m, full_check=True)``
  and runs in onnxruntime (CPU) on ``random_inputs(m)``.
- ``random_inputs(model, seed=0)``: feeds for every graph input that is not an initializer.
- ``OP_TYPES``: every op type the generator can emit (default ONNX domain).

Only ``onnx.helper``/``numpy_helper`` build the models; no Lepton package is imported, so
the generator is an independent oracle for the importer, the passes and the codegen.

Properties of the models (what the pass tests can rely on):

- opset drawn from ``opsets`` (inclusive, low >= 13; 13..23 checked against onnx 1.23.2 and
  onnxruntime 1.31.1), ops spelled for that opset (axes/split/pads as inputs where the opset
  wants inputs, ``num_outputs`` for Split from 18, Reduce{Mean,Max} axes as input from 18,
  Pad axes from 18, Shape start/end from 15); ir_version is max(8, the opset's minimum).
- static shapes; graph inputs have rank 1..4 and dims 1..6; no value exceeds 4096 elements.
- mostly float32 graphs, sometimes float64; Cast moves between float32/float64 and
  int32/int64 (only values whose bits cannot depend on how arithmetic is reassociated are
  cast to integers, so an optimized graph gives exactly the same integers).
- numerically tame: divisors are ``|x| + 1`` or constants in [0.5, 2]; Exp/Softplus get a
  Clip in front unless their input is known to be small; Sqrt reads ``|x|`` (``|x| + 1``
  when ``x`` is the result of rounding arithmetic); weights are scaled by 1/sqrt(fan_in).
- NaN/Inf only come from constants (literal NaN/Inf, Sqrt of a negative constant, a
  constant divided by a constant zero); such values only flow into ops with unambiguous
  IEEE semantics (Add/Sub/Mul/Div/Abs/Neg/Sqrt, data movement, float Cast). The constants,
  the nodes computing them and the op that mixes them into the graph are named
  ``nonfinite_*``, so a test can tell deliberate NaNs from accidents.
- comparisons are stable: onnxruntime with all graph optimizations vs none agrees within
  DESIGN.md section 6 tolerances (fp32 rtol 1e-4 / atol 1e-5, integers exact, NaN positions
  equal); tests/test_strategies.py checks this.
- onnxruntime quirk avoided: its Relu->Clip fusion throws at session creation for a
  float64 Clip, so a float64 Relu output is clipped with Min/Max instead.
- cleanup-pass fodder, each with decent probability: Identity, inference Dropout, Reshape
  to the same shape, consecutive Reshapes, identity-perm and consecutive Transposes, Cast
  to the same type, all-zero Pad, whole-axis Slice, Mul by 1 / Div by 1 / Add and Sub of 0
  (shape-preserving and broadcasting-grows-the-shape variants), duplicated identical
  nodes, dead nodes and dead Split outputs, unused initializers, PyTorch-style
  ``Shape -> Gather -> Unsqueeze -> Concat(-1) -> Reshape`` chains, constant-only foldable
  subgraphs built from Constant nodes and initializers.
- 1..3 graph inputs, 1..3 distinct graph outputs (never a graph input or an initializer;
  an output may also feed other nodes); node names and value names are unique.

``max_nodes`` is a soft budget: no new step starts once the graph holds ``max_nodes``
nodes (Constant nodes included), but the step under way finishes, so a model can hold up to
about ``max_nodes + 20`` nodes (the Shape chain alone emits up to 16).

All randomness goes through ``draw``: structure is drawn directly (so it shrinks) and the
tensor contents come from a numpy Generator seeded by one drawn integer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import helper, numpy_helper

__all__ = ["OP_TYPES", "onnx_models", "random_inputs"]

F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)
I32 = np.dtype(np.int32)
I64 = np.dtype(np.int64)
FLOATS = frozenset({F32, F64})
INTS = frozenset({I32, I64})
ALL = FLOATS | INTS
ONLY_F32 = frozenset({F32})

MAX_ELEMS = 4096
MAX_RANK = 4
INPUT_BOUND = 3.0  # random_inputs clips floats to [-3, 3]
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
INF = math.inf

# Which element types each op may read here: checked against onnxruntime 1.31's CPU kernels
# (e.g. Conv/AveragePool/LeakyRelu/Erf have no float64 kernel; Relu has no int kernel at 13).
_SUPPORTED: dict[str, frozenset[np.dtype]] = {
    "Add": ALL, "Sub": ALL, "Mul": ALL, "Div": FLOATS, "Max": ALL, "Min": ALL,
    "Relu": FLOATS, "Sigmoid": FLOATS, "Tanh": FLOATS, "Exp": FLOATS, "Sqrt": FLOATS,
    "Abs": ALL, "Neg": ALL, "Clip": ALL,
    "LeakyRelu": ONLY_F32, "Elu": ONLY_F32, "Erf": ONLY_F32, "HardSigmoid": ONLY_F32,
    "Softplus": ONLY_F32,
    "Conv": ONLY_F32, "MatMul": ALL, "Gemm": FLOATS,
    "MaxPool": FLOATS, "AveragePool": ONLY_F32, "GlobalAveragePool": ONLY_F32,
    "GlobalMaxPool": ONLY_F32,
    "Reshape": ALL, "Transpose": ALL, "Concat": ALL, "Slice": ALL, "Split": ALL,
    "Flatten": ALL, "Squeeze": ALL, "Unsqueeze": ALL, "Gather": ALL, "Pad": ALL,
    "Expand": ALL, "Identity": ALL, "Cast": ALL, "Shape": ALL,
    "ReduceSum": ALL, "ReduceMean": FLOATS, "ReduceMax": ALL,
    "Softmax": FLOATS, "BatchNormalization": FLOATS, "Dropout": FLOATS,
}

# Ops that may read a value holding NaN/Inf: their IEEE result is unambiguous, so any
# correct implementation (or constant folder) agrees with onnxruntime.
_NONFINITE_OK = frozenset({
    "Add", "Sub", "Mul", "Div", "Abs", "Neg", "Sqrt", "Identity", "Dropout", "Reshape",
    "Transpose", "Concat", "Slice", "Split", "Flatten", "Squeeze", "Unsqueeze", "Gather",
    "Pad", "Expand", "Cast", "Shape",
})

OP_TYPES: frozenset[str] = frozenset(_SUPPORTED) | {"Constant"}

# Producers that onnxruntime fuses a following Mul/Add/Div into.
_FUSABLE = frozenset({"Conv", "MatMul", "Gemm", "BatchNormalization"})

_UNARY = ("Relu", "Sigmoid", "Tanh", "LeakyRelu", "Exp", "Abs", "Neg", "Sqrt", "Clip",
          "Elu", "HardSigmoid", "Erf", "Softplus")
_BINARY = ("Add", "Sub", "Mul", "Div", "Max", "Min")


def _prod(shape) -> int:
    return int(math.prod(shape))


def _bcast(a, b) -> tuple[int, ...] | None:
    try:
        return tuple(np.broadcast_shapes(tuple(a), tuple(b)))
    except ValueError:
        return None


def _elem(dtype: np.dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


@dataclass(frozen=True)
class _Val:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    finite: bool = True  # False: may hold NaN/Inf
    exact: bool = False  # bits cannot depend on how a pass reassociates arithmetic
    bound: float = INF  # upper bound on |x| (INF: unknown)


class _Builder:
    def __init__(self, draw, opset: int, fdt: np.dtype, rng: np.random.Generator,
                 max_nodes: int = 12):
        self.draw = draw
        self.max_nodes = max_nodes
        self.opset = opset
        self.fdt = fdt
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[_Val] = []
        self.pool: list[_Val] = []  # input-derived values that later nodes may read
        self.vals: dict[str, _Val] = {}
        self.producer: dict[str, onnx.NodeProto] = {}
        self._count = 0
        self.prefix = ""  # "nonfinite_" while building a deliberate NaN/Inf path

    # ---- drawing -----------------------------------------------------------------------
    def choice(self, seq):
        return self.draw(st.sampled_from(list(seq)))

    def ints_in(self, lo: int, hi: int) -> int:
        return self.draw(st.integers(lo, hi))

    def chance(self, pct: int) -> bool:
        """True with probability ~pct%; shrinks to False."""
        return self.draw(st.integers(0, 99)) >= 100 - pct

    def subset(self, items, lo: int, hi: int) -> list:
        """A sorted subset of lo..hi of ``items`` (permutation-based: never rejected)."""
        items = list(items)
        k = self.ints_in(lo, hi)
        return sorted(self.draw(st.permutations(items))[:k])

    def randn(self, shape, dtype, scale: float = 1.0) -> np.ndarray:
        dtype = np.dtype(dtype)
        if dtype.kind in "iu":
            return self.rng.integers(-3, 4, size=shape).astype(dtype)
        return np.asarray(self.rng.standard_normal(shape) * scale).astype(dtype)

    def away_from_zero(self, shape, dtype) -> np.ndarray:
        mag = self.rng.uniform(0.5, 2.0, size=shape)
        sign = np.where(self.rng.random(size=shape) < 0.5, -1.0, 1.0)
        return np.asarray(mag * sign).astype(dtype)

    # ---- building ----------------------------------------------------------------------
    def fresh(self, stem: str) -> str:
        self._count += 1
        return f"{self.prefix}{stem}_{self._count}"

    def emit(self, op: str, inputs, n_out: int = 1, **attrs) -> list[str]:
        names = [i.name if isinstance(i, _Val) else i for i in inputs]
        outs = [self.fresh(op.lower()) for _ in range(n_out)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        node = helper.make_node(op, names, outs, name=self.fresh("node_" + op), **attrs)
        self.nodes.append(node)
        for o in outs:
            self.producer[o] = node
        return outs

    def new(self, name, dtype, shape, *, finite=True, exact=False, bound=INF, live=True) -> _Val:
        v = _Val(name, np.dtype(dtype), tuple(int(d) for d in shape), finite, exact, float(bound))
        self.vals[name] = v
        if live:
            self.pool.append(v)
        return v

    def op(self, op: str, inputs, dtype, shape, *, finite=True, exact=False, bound=INF,
           live=True, **attrs) -> _Val:
        (out,) = self.emit(op, inputs, **attrs)
        return self.new(out, dtype, shape, finite=finite, exact=exact, bound=bound, live=live)

    def like(self, op: str, a: _Val, inputs, *, shape=None, dtype=None, bound=None,
             exact=None, **attrs) -> _Val:
        """An op whose result inherits a's finiteness (and optionally its other facts)."""
        return self.op(op, inputs, a.dtype if dtype is None else dtype,
                       a.shape if shape is None else shape, finite=a.finite,
                       exact=False if exact is None else exact,
                       bound=a.bound if bound is None else bound, **attrs)

    def const(self, arr, *, node=None) -> _Val:
        """A constant as an initializer or a Constant node (drawn unless ``node`` is given)."""
        arr = np.asarray(arr)
        if node is None:
            node = self.chance(35)
        if arr.dtype.kind == "f":
            finite = bool(np.all(np.isfinite(arr)))
            if not finite:
                bound = INF
            else:
                bound = float(np.max(np.abs(arr))) if arr.size else 0.0
        else:
            finite, bound = True, float(np.max(np.abs(arr.astype(np.float64)))) if arr.size else 0.0
        if not node:
            name = self.fresh("init")
            self.inits.append(numpy_helper.from_array(arr, name))
            return self.new(name, arr.dtype, arr.shape, finite=finite, exact=True, bound=bound,
                            live=False)
        name = self.fresh("const")
        attr: dict[str, Any]
        form = self.ints_in(0, 3)  # 0: value=tensor; otherwise the typed short forms
        if form and arr.dtype == F32 and arr.ndim == 0:
            attr = {"value_float": float(arr)}
        elif form and arr.dtype == F32 and arr.ndim == 1 and arr.size:
            attr = {"value_floats": [float(x) for x in arr]}
        elif form and arr.dtype == I64 and arr.ndim == 0:
            attr = {"value_int": int(arr)}
        elif form and arr.dtype == I64 and arr.ndim == 1 and arr.size:
            attr = {"value_ints": [int(x) for x in arr]}
        else:
            attr = {"value": numpy_helper.from_array(arr, name)}
        node_proto = helper.make_node("Constant", [], [name], name=self.fresh("node_Constant"),
                                      **attr)
        self.nodes.append(node_proto)
        self.producer[name] = node_proto
        return self.new(name, arr.dtype, arr.shape, finite=finite, exact=True, bound=bound,
                        live=False)

    def i64(self, values) -> _Val:
        return self.const(np.array(values, dtype=np.int64))

    def scalar(self, x, dtype) -> _Val:
        return self.const(np.array(x, dtype=dtype))

    def pick(self, op: str, pred=None) -> _Val | None:
        ok = _SUPPORTED[op]
        nonfinite_ok = op in _NONFINITE_OK
        cands = [v for v in self.pool if v.dtype in ok and (v.finite or nonfinite_ok)
                 and (pred is None or pred(v))]
        if not cands:
            return None
        if self.chance(40):  # prefer recent values: longer chains
            return cands[-1]
        return cands[self.ints_in(0, len(cands) - 1)]

    def partner_shape(self, shape, *, grow: bool = True) -> tuple[int, ...]:
        """A shape that broadcasts against ``shape``; with ``grow`` it may enlarge the result."""
        shape = tuple(shape)
        r = len(shape)
        kinds = ["same", "scalar", "suffix", "ones"]
        if grow and (r < MAX_RANK or 1 in shape):
            kinds.append("grow")
        kind = self.choice(kinds)
        if kind == "same":
            s = shape
        elif kind == "scalar":
            s = ()
        elif kind == "suffix":
            s = shape[self.ints_in(0, r):]
        elif kind == "ones":
            s = tuple(1 if self.draw(st.booleans()) else d for d in shape)
        else:
            s = self.grow_shape(shape)
        out = _bcast(shape, s)
        if out is None or _prod(out) > MAX_ELEMS:
            return shape
        return s

    def root_op(self, v: _Val) -> str | None:
        """The op behind v, looking through Identity and Dropout."""
        node = self.producer.get(v.name)
        while node is not None and node.op_type in ("Identity", "Dropout"):
            node = self.producer.get(node.input[0])
        return None if node is None else node.op_type

    def grow_shape(self, shape) -> tuple[int, ...]:
        """A shape that broadcasts against ``shape`` to a bigger result (``shape`` if none can)."""
        shape = tuple(shape)
        r = len(shape)
        opts = (["prepend"] if r < MAX_RANK else []) + (["fill"] if 1 in shape else [])
        if not opts:
            return shape
        if self.choice(opts) == "prepend":
            lead = tuple(self.ints_in(2, 4) for _ in range(self.ints_in(1, MAX_RANK - r)))
            s = lead + shape
        else:
            s = tuple(self.ints_in(2, 4) if d == 1 else self.choice([d, 1]) for d in shape)
        out = _bcast(shape, s)
        return s if out is not None and _prod(out) <= MAX_ELEMS else shape

    def clip(self, a: _Val, lo, hi, mode: str = "both") -> _Val:
        if a.dtype != F32 and self.root_op(a) == "Relu":
            # onnxruntime's Relu->Clip fusion throws on non-float32 Clip bounds at session
            # creation; Relu's output is >= 0, so Min/Max with the bound is the same Clip.
            raised = mode == "min" or (mode == "both" and lo > 0)
            if raised:
                a = self.op("Max", [a, self.scalar(lo, a.dtype)], a.dtype, a.shape,
                            exact=a.exact, bound=max(a.bound, abs(lo)))
            if mode != "min":
                top = max(abs(lo), abs(hi)) if raised else abs(hi)
                a = self.op("Min", [a, self.scalar(hi, a.dtype)], a.dtype, a.shape,
                            exact=a.exact, bound=min(a.bound, top))
            return a
        ins: list = [a]
        if mode in ("both", "min"):
            ins.append(self.scalar(lo, a.dtype))
        else:
            ins.append("")
        if mode in ("both", "max"):
            ins.append(self.scalar(hi, a.dtype))
        bound = a.bound
        if mode == "both":
            bound = min(bound, max(abs(lo), abs(hi)))
        else:
            bound = max(bound, abs(lo if mode == "min" else hi))
        return self.op("Clip", ins, a.dtype, a.shape, finite=True, exact=a.exact, bound=bound)

    # ---- elementwise ---------------------------------------------------------------------
    def g_unary(self) -> _Val | None:
        op = self.choice(_UNARY)
        a = self.pick(op)
        if a is None:
            return None
        dt, s = a.dtype, a.shape
        if op in ("Relu", "Abs", "Neg"):
            return self.op(op, [a], dt, s, finite=a.finite, exact=a.exact, bound=a.bound)
        if op in ("Sigmoid", "Tanh", "Erf"):
            return self.op(op, [a], dt, s, bound=1.0)
        if op == "HardSigmoid":
            alpha = self.choice([None, 0.1, 0.25])
            beta = self.choice([None, 0.4, 0.6])
            return self.op(op, [a], dt, s, bound=1.0, alpha=alpha, beta=beta)
        if op == "LeakyRelu":
            return self.op(op, [a], dt, s, bound=a.bound, alpha=self.choice([None, 0.1, 0.2]))
        if op == "Elu":
            return self.op(op, [a], dt, s, bound=max(a.bound, 1.0), alpha=self.choice([None, 0.5]))
        if op in ("Exp", "Softplus"):
            upper = a.bound  # only the upper side matters: exp(-big) underflows to 0
            if upper > (4.0 if op == "Exp" else 20.0):
                upper = float(self.choice([1.0, 2.0, 3.0]))
                a = self.clip(a, -upper, upper, mode=self.choice(["max", "both"]))
            return self.op(op, [a], dt, s, bound=math.exp(upper) if op == "Exp" else upper + 1.0)
        if op == "Sqrt":
            t = self.like("Abs", a, [a], exact=a.exact)
            if a.finite and not a.exact:  # keep away from the infinite slope at 0
                t = self.like("Add", t, [t, self.scalar(1.0, dt)], bound=t.bound + 1)
            return self.like("Sqrt", t, [t], bound=math.sqrt(t.bound + 1))
        # Clip
        if dt.kind == "f":
            lo = float(self.choice([-1.0, -0.5, 0.0, -3.0]))
            hi = lo + float(self.choice([0.5, 1.0, 2.0, 6.0]))
        else:
            lo = int(self.choice([-1, 0, -2]))
            hi = lo + int(self.choice([1, 2, 3]))
        return self.clip(a, lo, hi, mode=self.choice(["both", "min", "max"]))

    def binary_result(self, op, x: _Val, y: _Val, inputs, **extra) -> _Val | None:
        out = _bcast(x.shape, y.shape)
        if out is None or _prod(out) > MAX_ELEMS:
            return None
        if op in ("Add", "Sub"):
            bound = x.bound + y.bound
        elif op == "Mul":
            bound = x.bound * y.bound
        elif op in ("Max", "Min"):
            bound = max(x.bound, y.bound)
        else:  # Div: caller passes the bound
            bound = extra.pop("bound")
        return self.op(op, inputs, x.dtype, out, finite=x.finite and y.finite, bound=bound,
                       exact=extra.pop("exact", False))

    def g_binary(self) -> _Val | None:
        op = self.choice(_BINARY)
        a = self.pick(op)
        if a is None:
            return None
        dt = a.dtype
        b = None
        if self.chance(45):
            b = self.pick(op, lambda v: v.dtype == dt and _bcast(a.shape, v.shape) is not None
                          and _prod(_bcast(a.shape, v.shape)) <= MAX_ELEMS)
            if b is not None and op == "Mul" and a.bound * b.bound > 1e4:
                b = None
        if op == "Div":
            if b is not None:
                ab = self.like("Abs", b, [b], exact=b.exact)
                den = self.like("Add", ab, [ab, self.scalar(1.0, dt)], bound=ab.bound + 1)
                return self.binary_result("Div", a, den, [a, den], bound=a.bound)
            c = self.const(self.away_from_zero(self.partner_shape(a.shape), dt))
            return self.binary_result("Div", a, c, [a, c], bound=a.bound * 2)
        if b is None:
            b = self.const(self.randn(self.partner_shape(a.shape), dt, scale=0.5))
        x, y = (b, a) if self.draw(st.booleans()) else (a, b)
        exact = op in ("Max", "Min") and a.exact and b.exact
        return self.binary_result(op, x, y, [x, y], exact=exact)

    def g_neutral(self, a: _Val | None = None, op: str | None = None) -> _Val | None:
        """x * 1, x / 1, x + 0, x - 0 (0 + x, 1 * x), sometimes broadcasting to a bigger shape;
        sometimes followed by the complementary one (x * 1 + 0)."""
        op = op or self.choice(["Mul", "Add", "Mul", "Add", "Sub", "Div"])
        grow = self.chance(50)
        if a is None:
            a = self.pick(op, (lambda v: len(v.shape) < MAX_RANK or 1 in v.shape) if grow else None)
            a = a or self.pick(op)
            if a is None:
                return None
        s = self.grow_shape(a.shape) if grow else self.partner_shape(a.shape, grow=False)
        c = self.const(np.full(s, 1 if op in ("Mul", "Div") else 0, dtype=a.dtype))
        ins = [c, a] if op in ("Mul", "Add") and self.draw(st.booleans()) else [a, c]
        out = _bcast(a.shape, s)
        v = self.like(op, a, ins, shape=out, exact=a.exact)
        if op in ("Mul", "Add") and self.chance(30):
            v = self.g_neutral(v, "Add" if op == "Mul" else "Mul")
        return v

    # ---- heavy ops -------------------------------------------------------------------------
    def g_conv(self) -> _Val | None:
        a = self.pick("Conv", lambda v: len(v.shape) in (3, 4))
        if a is None:
            return None
        n, c, *sp = a.shape
        group = self.choice([g for g in range(1, c + 1) if c % g == 0])
        m = group * self.ints_in(1, max(1, 6 // group))
        ks, pb, pe, strides, dils, outs = [], [], [], [], [], []
        for d in sp:
            k = self.ints_in(1, 3)
            p0 = self.ints_in(0, min(1, k - 1))
            p1 = self.ints_in(0, min(1, k - 1))
            dil = 2 if (k > 1 and self.chance(15)) else 1
            if d + p0 + p1 - dil * (k - 1) < 1:
                k, p0, p1, dil = 1, 0, 0, 1
            s = self.ints_in(1, 2)
            ks.append(k), pb.append(p0), pe.append(p1), strides.append(s), dils.append(dil)
            outs.append((d + p0 + p1 - dil * (k - 1) - 1) // s + 1)
        out_shape = (n, m, *outs)
        if _prod(out_shape) > MAX_ELEMS:
            return None
        fan_in = (c // group) * _prod(ks)
        w = self.randn((m, c // group, *ks), F32, scale=1.0 / math.sqrt(fan_in))
        ins = [a, self.const(w, node=self.chance(15))]
        bias_bound = 0.0
        if self.chance(60):
            bias = self.randn((m,), F32, scale=0.5)
            bias_bound = float(np.max(np.abs(bias)))
            ins.append(self.const(bias, node=self.chance(15)))
        bound = a.bound * float(np.max(np.abs(w).reshape(m, -1).sum(axis=1))) + bias_bound
        return self.op(
            "Conv", ins, F32, out_shape, bound=bound,
            kernel_shape=ks if self.chance(60) else None,
            pads=(pb + pe) if (any(pb + pe) or self.chance(20)) else None,
            strides=strides if (any(s != 1 for s in strides) or self.chance(20)) else None,
            dilations=dils if (any(x != 1 for x in dils) or self.chance(20)) else None,
            group=group if (group != 1 or self.chance(20)) else None,
        )

    def g_matmul(self) -> _Val | None:
        a = self.pick("MatMul")
        if a is None:
            return None
        k = a.shape[-1]
        mode = self.choice(["weight", "self_t", "pool"])
        if mode == "self_t" and len(a.shape) >= 2 and a.bound * a.bound * k <= 1e5:
            r = len(a.shape)
            perm = list(range(r - 2)) + [r - 1, r - 2]
            at = self.like("Transpose", a, [a], shape=[a.shape[p] for p in perm], exact=a.exact,
                           perm=perm)
            out = a.shape[:-1] + (a.shape[-2],)
            if _prod(out) <= MAX_ELEMS:
                return self.op("MatMul", [a, at], a.dtype, out, bound=a.bound * a.bound * k)
        if mode == "pool" and len(a.shape) >= 2:
            def fits(v: _Val) -> bool:
                if v.dtype != a.dtype or len(v.shape) < 2 or v.shape[-2] != k:
                    return False
                if a.bound * v.bound * k > 1e5:
                    return False
                batch = _bcast(a.shape[:-2], v.shape[:-2])
                return batch is not None and _prod(batch + (a.shape[-2], v.shape[-1])) <= MAX_ELEMS
            b = self.pick("MatMul", fits)
            if b is not None:
                out = _bcast(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])
                return self.op("MatMul", [a, b], a.dtype, out, bound=a.bound * b.bound * k)
        n = self.ints_in(1, 6)
        out = a.shape[:-1] + (n,)
        if _prod(out) > MAX_ELEMS:
            return None
        w = self.randn((k, n), a.dtype, scale=1.0 / math.sqrt(k))
        colsum = float(np.max(np.abs(w.astype(np.float64)).sum(axis=0)))
        return self.op("MatMul", [a, self.const(w, node=self.chance(15))], a.dtype, out,
                       bound=a.bound * colsum)

    def g_gemm(self) -> _Val | None:
        a = self.pick("Gemm", lambda v: len(v.shape) == 2)
        if a is None or self.chance(30):
            src = self.pick("Gemm", lambda v: len(v.shape) >= 1)
            if src is None:
                return None
            a = self.g_flatten(src)
        trans_a = self.draw(st.booleans())
        m, k = reversed(a.shape) if trans_a else a.shape
        n = self.ints_in(1, 6)
        trans_b = self.draw(st.booleans())
        w = self.randn((k, n), a.dtype, scale=1.0 / math.sqrt(k))
        bmat = w.T.copy() if trans_b else w
        alpha = float(self.choice([1.0, 0.5, 2.0, -1.0]))
        beta = float(self.choice([1.0, 0.5, -1.0]))
        ins = [a, self.const(bmat, node=self.chance(15))]
        cb = 0.0
        if self.chance(65):
            cshape = self.choice([(n,), (1, n), (m, n), (m, 1), (1,), ()])
            cval = self.randn(cshape, a.dtype, scale=0.5)
            cb = float(np.max(np.abs(cval))) if cval.size else 0.0
            ins.append(self.const(cval, node=self.chance(15)))
        colsum = float(np.max(np.abs(w.astype(np.float64)).sum(axis=0)))
        bound = abs(alpha) * a.bound * colsum + abs(beta) * cb
        return self.op("Gemm", ins, a.dtype, (m, n), bound=bound,
                       transA=int(trans_a) if (trans_a or self.chance(20)) else None,
                       transB=int(trans_b) if (trans_b or self.chance(20)) else None,
                       alpha=alpha if (alpha != 1.0 or self.chance(20)) else None,
                       beta=beta if (beta != 1.0 or self.chance(20)) else None)

    def g_pool(self) -> _Val | None:
        op = self.choice(["MaxPool", "AveragePool"])
        a = self.pick(op, lambda v: len(v.shape) in (3, 4))
        if a is None:
            return None
        ks, pb, pe, strides, outs = [], [], [], [], []
        for d in a.shape[2:]:
            k = self.ints_in(1, min(3, d))
            p0 = self.ints_in(0, min(1, k - 1))
            p1 = self.ints_in(0, min(1, k - 1))
            s = self.ints_in(1, 2)
            ks.append(k), pb.append(p0), pe.append(p1), strides.append(s)
            outs.append((d + p0 + p1 - k) // s + 1)
        attrs: dict[str, Any] = {
            "kernel_shape": ks,
            "pads": (pb + pe) if (any(pb + pe) or self.chance(20)) else None,
            "strides": strides if (any(s != 1 for s in strides) or self.chance(20)) else None,
        }
        if op == "AveragePool" and self.chance(50):
            attrs["count_include_pad"] = self.ints_in(0, 1)
        exact = op == "MaxPool" and a.exact
        return self.op(op, [a], a.dtype, a.shape[:2] + tuple(outs), bound=a.bound, exact=exact,
                       **attrs)

    def g_global_pool(self) -> _Val | None:
        op = self.choice(["GlobalAveragePool", "GlobalMaxPool"])
        a = self.pick(op, lambda v: len(v.shape) >= 3)
        if a is None:
            return None
        out = a.shape[:2] + (1,) * (len(a.shape) - 2)
        return self.op(op, [a], a.dtype, out, bound=a.bound,
                       exact=(op == "GlobalMaxPool" and a.exact))

    def g_batchnorm(self) -> _Val | None:
        a = self.pick("BatchNormalization", lambda v: len(v.shape) >= 2)
        if a is None:
            return None
        c, dt = a.shape[1], a.dtype
        scale = (self.rng.standard_normal(c) * 0.5 + 1.0).astype(dt)
        bias = self.randn((c,), dt, scale=0.5)
        mean = self.randn((c,), dt, scale=0.5)
        var = self.rng.uniform(0.5, 2.0, size=c).astype(dt)
        eps = self.choice([None, 1e-3])
        ins = [a] + [self.const(t, node=self.chance(15)) for t in (scale, bias, mean, var)]
        bound = float(np.max((a.bound + np.abs(mean)) * np.abs(scale) / np.sqrt(var)
                             + np.abs(bias)))
        training_mode = 0 if (self.opset >= 14 and self.chance(25)) else None
        return self.op("BatchNormalization", ins, dt, a.shape, bound=bound, epsilon=eps,
                       training_mode=training_mode)

    def g_softmax(self) -> _Val | None:
        a = self.pick("Softmax")
        if a is None:
            return None
        r = len(a.shape)
        axis = None if self.chance(30) else self.ints_in(-r, r - 1)
        return self.op("Softmax", [a], a.dtype, a.shape, bound=1.0, axis=axis)

    def g_reduce(self) -> _Val | None:
        op = self.choice(["ReduceSum", "ReduceMean", "ReduceMax"])
        a = self.pick(op)
        if a is None:
            return None
        r = len(a.shape)
        keep = 1 if r == 1 else self.choice([1, 0])
        omit_axes = keep == 1 and self.chance(20)
        axes = list(range(r)) if omit_axes else self.subset(range(r), 1, r if keep else r - 1)
        spelled = [x - r if self.chance(30) else x for x in axes]
        if keep:
            out = tuple(1 if i in axes else d for i, d in enumerate(a.shape))
        else:
            out = tuple(d for i, d in enumerate(a.shape) if i not in axes)
        count = _prod(a.shape) // _prod(out) if keep else _prod(a.shape) // max(1, _prod(out))
        bound = a.bound * count if op == "ReduceSum" else a.bound
        keepdims = keep if (keep == 0 or self.chance(30)) else None
        as_input = op == "ReduceSum" or self.opset >= 18
        ins: list = [a]
        attrs: dict[str, Any] = {"keepdims": keepdims}
        if not omit_axes:
            if as_input:
                ins.append(self.i64(spelled))
            else:
                attrs["axes"] = spelled
        exact = op == "ReduceMax" and a.exact
        return self.op(op, ins, a.dtype, out, bound=bound, exact=exact, **attrs)

    # ---- data movement -------------------------------------------------------------------
    def g_reshape(self, a: _Val | None = None, target=None) -> _Val | None:
        if a is None:
            a = self.pick("Reshape")
            if a is None:
                return None
        if target is None:
            target = a.shape if self.chance(20) else self.choice(_reshape_candidates(a.shape))
        spec = list(target)
        if spec and self.chance(35):
            spec[self.ints_in(0, len(spec) - 1)] = -1
        if self.chance(25):
            spec = [0 if (i < len(a.shape) and x == a.shape[i] and x != -1) else x
                    for i, x in enumerate(spec)]
        return self.like("Reshape", a, [a, self.i64(spec)], shape=target, exact=a.exact)

    def g_double_reshape(self) -> _Val | None:
        a = self.pick("Reshape")
        if a is None:
            return None
        first = self.g_reshape(a)
        back = self.chance(40)
        return self.g_reshape(first, a.shape if back else None)

    def g_transpose(self, a: _Val | None = None, perm=None) -> _Val | None:
        if a is None:
            a = self.pick("Transpose")
            if a is None:
                return None
        r = len(a.shape)
        if perm is None:
            perm = list(range(r)) if self.chance(25) else list(self.draw(st.permutations(range(r))))
        omit = perm == list(reversed(range(r))) and self.chance(50)
        return self.like("Transpose", a, [a], shape=[a.shape[p] for p in perm], exact=a.exact,
                         perm=None if omit else perm)

    def g_double_transpose(self) -> _Val | None:
        a = self.pick("Transpose", lambda v: len(v.shape) >= 2)
        if a is None:
            return None
        t1 = self.g_transpose(a)
        perm1 = list(self.producer[t1.name].attribute[0].ints) if self.producer[t1.name].attribute \
            else list(reversed(range(len(a.shape))))
        inverse = [perm1.index(i) for i in range(len(perm1))]
        return self.g_transpose(t1, inverse if self.chance(50) else None)

    def g_concat(self) -> _Val | None:
        a = self.pick("Concat")
        if a is None:
            return None
        r = len(a.shape)
        axis = self.ints_in(0, r - 1)
        parts = [a]
        for _ in range(self.ints_in(1, 2)):
            kind = self.choice(["self", "pool", "const"])
            if kind == "self":
                parts.append(a)
                continue
            if kind == "pool":
                def same_but_axis(v: _Val) -> bool:
                    return (v.dtype == a.dtype and len(v.shape) == r and all(
                        x == y for i, (x, y) in enumerate(zip(v.shape, a.shape)) if i != axis))
                b = self.pick("Concat", same_but_axis)
                if b is not None:
                    parts.append(b)
                    continue
            shape = list(a.shape)
            shape[axis] = self.ints_in(1, 3)
            parts.append(self.const(self.randn(tuple(shape), a.dtype, scale=0.5)))
        out = list(a.shape)
        out[axis] = sum(p.shape[axis] for p in parts)
        if _prod(out) > MAX_ELEMS:
            return None
        finite = all(p.finite for p in parts)
        return self.op("Concat", parts, a.dtype, out, finite=finite,
                       exact=all(p.exact for p in parts), bound=max(p.bound for p in parts),
                       axis=axis - r if self.chance(30) else axis)

    def g_slice(self, whole: bool | None = None) -> _Val | None:
        a = self.pick("Slice")
        if a is None:
            return None
        r = len(a.shape)
        if whole is None:
            whole = self.chance(25)
        axes = self.subset(range(r), 1, r)
        starts, ends, steps, out = [], [], [], list(a.shape)
        for ax in axes:
            d = a.shape[ax]
            if whole:
                s, e, st_ = 0, self.choice([INT64_MAX, d, d + 5]), 1
            else:
                st_ = self.choice([1, 1, 2, -1])
                s = self.ints_in(-d, d - 1)
                if st_ > 0:
                    e = self.choice([INT64_MAX, self.ints_in(-d, d)])
                else:
                    e = self.choice([INT64_MIN, self.ints_in(-d, d - 1)])
                if len(range(*slice(s, e, st_).indices(d))) < 1:
                    s, e, st_ = 0, d, 1
            starts.append(s), ends.append(e), steps.append(st_)
            out[ax] = len(range(*slice(s, e, st_).indices(d)))
        ins: list = [a, self.i64(starts), self.i64(ends)]
        omit_axes = axes == list(range(r)) and self.chance(40)
        omit_steps = all(x == 1 for x in steps) and self.chance(50)
        if not (omit_axes and omit_steps):
            spelled = [x - r if self.chance(30) else x for x in axes]
            ins.append("" if omit_axes else self.i64(spelled))
        if not omit_steps:
            ins.append(self.i64(steps))
        return self.like("Slice", a, ins, shape=out, exact=a.exact)

    def g_split(self) -> _Val | None:
        a = self.pick("Split", lambda v: max(v.shape) >= 2)
        if a is None:
            return None
        r = len(a.shape)
        axis = self.choice([i for i, d in enumerate(a.shape) if d >= 2])
        d = a.shape[axis]
        n = self.ints_in(2, min(3, d))
        equal = d % n == 0 and self.chance(50)
        if equal:
            sizes = [d // n] * n
        else:
            cuts = self.subset(range(1, d), n - 1, n - 1)
            bounds = [0, *cuts, d]
            sizes = [bounds[i + 1] - bounds[i] for i in range(n)]
        ins: list = [a]
        attrs: dict[str, Any] = {"axis": (axis - r if self.chance(30) else axis)
                                 if (axis != 0 or self.chance(30)) else None}
        if equal and self.chance(60):
            if self.opset >= 18:
                attrs["num_outputs"] = n
        else:
            ins.append(self.i64(sizes))
        outs = self.emit("Split", ins, n_out=n, **attrs)
        vals = []
        for name, size in zip(outs, sizes):
            shape = list(a.shape)
            shape[axis] = size
            vals.append(self.new(name, a.dtype, shape, finite=a.finite, exact=a.exact,
                                 bound=a.bound, live=not (len(vals) and self.chance(20))))
        return vals[0]

    def g_flatten(self, a: _Val | None = None) -> _Val | None:
        if a is None:
            a = self.pick("Flatten")
            if a is None:
                return None
        r = len(a.shape)
        axis = self.ints_in(0, r)
        out = (_prod(a.shape[:axis]), _prod(a.shape[axis:]))
        spelled = axis - r if (axis < r and self.chance(30)) else axis
        return self.like("Flatten", a, [a], shape=out, exact=a.exact,
                         axis=None if (spelled == 1 and self.chance(50)) else spelled)

    def g_squeeze(self) -> _Val | None:
        a = self.pick("Squeeze", lambda v: len(v.shape) >= 2 and 1 in v.shape)
        if a is None:
            return None
        r = len(a.shape)
        ones = [i for i, d in enumerate(a.shape) if d == 1]
        axes = self.subset(ones, 1, min(len(ones), r - 1))
        out = tuple(d for i, d in enumerate(a.shape) if i not in axes)
        ins: list = [a]
        if not (len(axes) == len(ones) and self.chance(30)):
            ins.append(self.i64([x - r if self.chance(30) else x for x in axes]))
        return self.like("Squeeze", a, ins, shape=out, exact=a.exact)

    def g_unsqueeze(self, a: _Val | None = None) -> _Val | None:
        if a is None:
            a = self.pick("Unsqueeze", lambda v: len(v.shape) < MAX_RANK)
            if a is None:
                return None
        r = len(a.shape)
        k = self.ints_in(1, MAX_RANK - r)
        axes = self.subset(range(r + k), k, k)
        it = iter(a.shape)
        out = [1 if i in axes else next(it) for i in range(r + k)]
        spelled = [x - (r + k) if self.chance(30) else x for x in axes]
        return self.like("Unsqueeze", a, [a, self.i64(spelled)], shape=out, exact=a.exact)

    def g_gather(self) -> _Val | None:
        a = self.pick("Gather")
        if a is None:
            return None
        r = len(a.shape)
        axis = self.ints_in(0, r - 1)
        d = a.shape[axis]
        idx_shape = () if (r >= 2 and self.chance(40)) else (self.ints_in(1, 3),)
        idx = self.rng.integers(-d, d, size=idx_shape).astype(self.choice([I64, I32]))
        out = a.shape[:axis] + idx_shape + a.shape[axis + 1:]
        if _prod(out) > MAX_ELEMS:
            return None
        return self.like("Gather", a, [a, self.const(idx)], shape=out, exact=a.exact,
                         axis=axis if (axis != 0 or self.chance(30)) else None)

    def g_pad(self, zero: bool | None = None) -> _Val | None:
        a = self.pick("Pad")
        if a is None:
            return None
        r = len(a.shape)
        mode = self.choice(["constant", "reflect", "edge"])
        if zero is None:
            zero = self.chance(30)
        use_axes = self.opset >= 18 and self.chance(30)
        axes = self.subset(range(r), 1, r) if use_axes else list(range(r))
        before, after, out = [], [], list(a.shape)
        for ax in axes:
            d = a.shape[ax]
            top = 0 if zero else (min(2, d - 1) if mode == "reflect" else 2)
            p0, p1 = self.ints_in(0, top), self.ints_in(0, top)
            before.append(p0), after.append(p1)
            out[ax] = d + p0 + p1
        if _prod(out) > MAX_ELEMS:
            return None
        ins: list = [a, self.i64(before + after)]
        cv = 0.0
        if mode == "constant" and self.chance(50):
            cv = float(self.choice([0, 1, -1])) if a.dtype.kind == "f" else int(self.choice([0, 1]))
            ins.append(self.scalar(cv, a.dtype))
        if use_axes:
            if len(ins) == 2:
                ins.append("")
            ins.append(self.i64([x - r if self.chance(30) else x for x in axes]))
        return self.like("Pad", a, ins, shape=out, bound=max(a.bound, abs(cv)),
                         exact=a.exact,
                         mode=None if (mode == "constant" and self.chance(50)) else mode)

    def g_expand(self) -> _Val | None:
        a = self.pick("Expand")
        if a is None:
            return None
        s = a.shape if self.chance(20) else self.partner_shape(a.shape)
        if s == ():
            s = (1,)
        out = _bcast(a.shape, s)
        return self.like("Expand", a, [a, self.i64(list(s))], shape=out, exact=a.exact)

    # ---- type and trivia ------------------------------------------------------------------
    def g_cast(self, same: bool | None = None) -> _Val | None:
        a = self.pick("Cast")
        if a is None:
            return None
        if same is None:
            same = self.chance(20)
        if same:
            to = a.dtype
        elif a.dtype.kind == "f":
            targets = [F64 if a.dtype == F32 else F32]
            if a.finite and a.exact and a.bound <= 1e6:
                targets += [I64, I32]
            to = self.choice(targets)
        else:
            to = self.choice([self.fdt, F32, F64, I32 if a.dtype == I64 else I64])
        bound = a.bound
        v = self.like("Cast", a, [a], dtype=to, exact=a.exact, bound=bound, to=_elem(to))
        if to != a.dtype and self.chance(30):  # ... and back
            v = self.like("Cast", v, [v], dtype=a.dtype, exact=v.exact, to=_elem(a.dtype))
        return v

    def g_identity(self) -> _Val | None:
        a = self.pick("Identity")
        if a is None:
            return None
        return self.like("Identity", a, [a], exact=a.exact)

    def g_dropout(self) -> _Val | None:
        a = self.pick("Dropout")
        if a is None:
            return None
        ins: list = [a]
        form = self.choice(["plain", "ratio", "ratio_mode"])
        if form != "plain":
            ins.append(self.scalar(self.choice([0.1, 0.5]), self.choice([F32, a.dtype])))
        if form == "ratio_mode":
            ins.append(self.const(np.array(False)))
        outs = self.emit("Dropout", ins, n_out=2 if self.chance(20) else 1)
        if len(outs) == 2:  # the mask: nobody reads it
            self.new(outs[1], np.dtype(bool), a.shape, live=False)
        return self.new(outs[0], a.dtype, a.shape, finite=a.finite, exact=a.exact, bound=a.bound)

    # ---- patterns -------------------------------------------------------------------------
    def g_cast_same(self) -> _Val | None:
        return self.g_cast(same=True)

    def g_zero_pad(self) -> _Val | None:
        return self.g_pad(zero=True)

    def g_whole_slice(self) -> _Val | None:
        return self.g_slice(whole=True)

    def g_shape_chain(self) -> _Val | None:
        """PyTorch export style: Shape -> Gather(const) -> Unsqueeze -> Concat(.., -1) -> Reshape"""
        a = self.pick("Reshape", lambda v: len(v.shape) >= 2)
        if a is None:
            return None
        r = len(a.shape)
        lead = self.chance(70)
        k = self.ints_in(1, r - 1)
        kept = list(range(k)) if lead else list(range(r - k, r))
        start = 0
        if self.opset >= 15 and self.chance(25):
            start = kept[0]
            shp = self.op("Shape", [a], I64, (r - start,), live=False, start=start)
        else:
            shp = self.op("Shape", [a], I64, (r,), live=False)
        m = shp.shape[0]
        pieces = []
        for i in kept:
            j = i - start
            j = j - m if self.chance(25) else j
            if self.chance(30):
                pieces.append(self.op("Gather", [shp, self.i64([j])], I64, (1,), live=False,
                                      axis=0 if self.chance(50) else None))
            else:
                g = self.op("Gather", [shp, self.i64(j)], I64, (), live=False,
                            axis=0 if self.chance(50) else None)
                pieces.append(self.op("Unsqueeze", [g, self.i64([0])], I64, (1,), live=False))
        neg = self.i64([-1])
        parts = pieces + [neg] if lead else [neg] + pieces
        target = self.op("Concat", parts, I64, (k + 1,), live=False, axis=0)
        if lead:
            out = a.shape[:k] + (_prod(a.shape[k:]),)
        else:
            out = (_prod(a.shape[:r - k]),) + a.shape[r - k:]
        return self.like("Reshape", a, [a, target], shape=out, exact=a.exact)

    def const_expr(self, shape, dtype, depth: int) -> _Val:
        """A constant-only subgraph (foldable) producing ``shape``/``dtype``."""
        shape = tuple(shape)
        base = self.choice(["const", "reshape", "concat", "cast"])
        splittable = [i for i, d in enumerate(shape) if d >= 2]
        if base == "reshape" and shape:
            flat = self.const(self.randn((_prod(shape),), dtype, scale=0.5), node=self.chance(70))
            v = self.op("Reshape", [flat, self.i64(list(shape))], dtype, shape, live=False,
                        bound=flat.bound)
        elif base == "concat" and splittable:
            ax = self.choice(splittable)
            cut = self.ints_in(1, shape[ax] - 1)
            s1, s2 = list(shape), list(shape)
            s1[ax], s2[ax] = cut, shape[ax] - cut
            c1 = self.const(self.randn(s1, dtype, scale=0.5), node=self.chance(70))
            c2 = self.const(self.randn(s2, dtype, scale=0.5), node=self.chance(70))
            v = self.op("Concat", [c1, c2], dtype, shape, live=False,
                        bound=max(c1.bound, c2.bound), axis=ax)
        elif base == "cast":
            other = F64 if dtype == F32 else F32
            c = self.const(self.randn(shape, other, scale=0.5), node=self.chance(70))
            v = self.op("Cast", [c], dtype, shape, live=False, bound=c.bound, to=_elem(dtype))
        else:
            v = self.const(self.randn(shape, dtype, scale=0.5), node=self.chance(70))
        for _ in range(depth - 1):
            step = self.choice(["Add", "Mul", "Sub", "Neg", "Abs", "Sqrt", "Exp"])
            if step in ("Add", "Mul", "Sub"):
                cs = shape if self.draw(st.booleans()) else ()
                c = self.const(self.randn(cs, dtype, scale=0.5), node=self.chance(70))
                ins = [v, c] if self.draw(st.booleans()) else [c, v]
                b = v.bound * c.bound if step == "Mul" else v.bound + c.bound
                v = self.op(step, ins, dtype, shape, live=False, bound=b)
            elif step == "Sqrt":
                t = self.op("Abs", [v], dtype, shape, live=False, bound=v.bound)
                v = self.op("Sqrt", [t], dtype, shape, live=False, bound=math.sqrt(v.bound + 1))
            elif step == "Exp":
                if v.bound > 4:
                    continue
                v = self.op("Exp", [v], dtype, shape, live=False, bound=math.exp(v.bound))
            else:
                v = self.op(step, [v], dtype, shape, live=False, bound=v.bound)
        return v

    def g_const_fold(self) -> _Val | None:
        a = self.pick("Add", lambda v: v.dtype.kind == "f")
        if a is None:
            return None
        s = self.partner_shape(a.shape, grow=self.chance(30))
        c = self.const_expr(s, a.dtype, self.ints_in(1, 3))
        op = self.choice(["Add", "Mul", "Sub"])
        if op == "Mul" and a.bound * c.bound > 1e4:
            op = "Add"
        ins = [a, c] if self.draw(st.booleans()) else [c, a]
        return self.binary_result(op, a, c, ins)

    def g_nonfinite(self) -> _Val | None:
        """NaN/Inf from constants only: literal, Sqrt(negative const), const / const-zero.

        Never mixed into the output of Conv/MatMul/Gemm/BatchNormalization: onnxruntime
        folds a following Mul/Add into those (FusedMatMul alpha, Conv weights), which is not
        IEEE-exact with Inf/NaN (and throws for a NaN alpha), so the reference would be
        ill-defined. For the same reason a one-element NaN/Inf is never a Mul factor.
        """
        a = self.pick("Add", lambda v: v.dtype.kind == "f" and self.root_op(v) not in _FUSABLE)
        if a is None:
            return None
        s = self.partner_shape(a.shape)
        dt = a.dtype
        self.prefix = "nonfinite_"
        try:
            mask = np.array(self.rng.random(s) < 0.3, dtype=bool).reshape(s)
            if not mask.any():
                mask.flat[0] = True
            kind = self.choice(["literal", "sqrt", "literal", "div0"])
            if kind == "literal":
                arr = self.randn(s, dt, scale=0.5)
                specials = np.array([np.nan, np.inf, -np.inf], dtype=dt)
                arr = np.where(mask, specials[self.rng.integers(0, 3, size=s)], arr).astype(dt)
                c = self.const(arr)
            elif kind == "sqrt":
                arr = np.abs(self.randn(s, dt, scale=1.0)) + 0.25
                arr = np.where(mask, -arr, arr).astype(dt)
                src = self.const(arr, node=self.chance(70))
                c = self.op("Sqrt", [src], dt, s, live=False, finite=False)
            else:
                num = self.const(self.randn(s, dt, scale=1.0), node=self.chance(70))
                den = np.where(mask, 0.0, self.away_from_zero(s, dt)).astype(dt)
                c = self.op("Div", [num, self.const(den, node=self.chance(70))], dt, s,
                            live=False, finite=False)
            op = self.choice(["Add", "Mul", "Sub"])
            if op == "Mul" and _prod(s) == 1:
                op = "Add"
            ins = [a, c] if self.draw(st.booleans()) else [c, a]
            return self.binary_result(op, a, c, ins)
        finally:
            self.prefix = ""

    _DUPABLE = ("unary", "binary", "transpose", "reshape", "conv", "matmul", "softmax",
                "reduce", "gemm", "slice", "neutral", "cast", "gather")

    def g_duplicate(self) -> _Val | None:
        """The same node (op, inputs, attributes) twice: a CSE target."""
        v = getattr(self, "g_" + self.choice(self._DUPABLE))()
        if v is None:
            return None
        node = self.producer[v.name]
        if len(node.output) != 1:
            return v
        dup = onnx.NodeProto()
        dup.CopyFrom(node)
        dup.name = self.fresh("node_" + node.op_type)
        dup.output[0] = self.fresh(node.op_type.lower())
        self.nodes.append(dup)
        self.producer[dup.output[0]] = dup
        w = self.new(dup.output[0], v.dtype, v.shape, finite=v.finite, exact=v.exact, bound=v.bound)
        how = self.choice(["both", "add", "concat"])
        if how == "add" and v.dtype in _SUPPORTED["Add"]:
            return self.binary_result("Add", v, w, [v, w])
        if how == "concat":
            out = list(v.shape)
            out[0] *= 2
            if _prod(out) <= MAX_ELEMS:
                return self.op("Concat", [v, w], v.dtype, out, finite=v.finite, exact=v.exact,
                               bound=v.bound, axis=0)
        return w

    _DEADABLE = ("unary", "binary", "transpose", "reshape", "conv", "matmul", "reduce",
                 "identity", "cast", "slice", "concat", "gather", "shape_chain")

    def g_dead(self) -> _Val | bool | None:
        """Nodes nobody reads (their values leave the pool, so nothing consumes them)."""
        mark = len(self.pool)
        if self.chance(20):
            self.const(self.randn(self.partner_shape(self.pool[0].shape), self.fdt), node=True)
            return True
        made = False
        for i in range(self.ints_in(1, 2)):
            if i and len(self.nodes) >= self.max_nodes:
                break
            made = getattr(self, "g_" + self.choice(self._DEADABLE))() is not None or made
        del self.pool[mark:]
        return True if made else None

    def g_unused_init(self) -> bool:
        shape = tuple(self.ints_in(1, 4) for _ in range(self.ints_in(0, 2)))
        arr = self.randn(shape, self.choice([self.fdt, I64]))
        self.inits.append(numpy_helper.from_array(arr, self.fresh("unused")))
        return True


def _divisors(n: int) -> list[int]:
    return [d for d in range(2, n) if n % d == 0]


def _reshape_candidates(shape) -> list[tuple[int, ...]]:
    shape = tuple(shape)
    n = _prod(shape)
    r = len(shape)
    cands = {shape, (n,)}
    for i in range(r - 1):
        cands.add(shape[:i] + (shape[i] * shape[i + 1],) + shape[i + 2:])
    if r < MAX_RANK:
        for i, d in enumerate(shape):
            for f in _divisors(d):
                cands.add(shape[:i] + (f, d // f) + shape[i + 1:])
        for i in range(r + 1):
            cands.add(shape[:i] + (1,) + shape[i:])
    squeezed = tuple(d for d in shape if d != 1)
    if squeezed:
        cands.add(squeezed)
    if r >= 2:
        cands.add((shape[0], n // shape[0]))
        cands.add((n // shape[-1], shape[-1]))
    return sorted(c for c in cands if 1 <= len(c) <= MAX_RANK)


# Weighted menu of steps (sampled_from shrinks to the first entry: the simplest).
_STEPS: tuple[str, ...] = (
    ("unary",) * 6 + ("binary",) * 6 + ("conv",) * 3 + ("matmul",) * 2 + ("gemm",) * 2
    + ("pool",) * 2 + ("global_pool",) + ("reshape",) * 2 + ("transpose",) * 2
    + ("concat",) * 2 + ("slice",) * 2 + ("split",) + ("flatten",) + ("squeeze",)
    + ("unsqueeze",) + ("reduce",) * 2 + ("softmax",) + ("batchnorm",) + ("cast",) * 3
    + ("identity",) * 2 + ("dropout",) * 2 + ("gather",) + ("pad",) + ("expand",)
    # patterns for the cleanup passes
    + ("double_transpose", "double_reshape") * 2 + ("cast_same", "zero_pad", "whole_slice")
    + ("neutral",) * 5 + ("duplicate",) * 2 + ("dead",) * 2 + ("unused_init",) * 2
    + ("shape_chain",) * 2 + ("const_fold",) * 2 + ("nonfinite",) * 2
)


def _input_shape(draw) -> tuple[int, ...]:
    rank = draw(st.sampled_from([1, 2, 3, 4, 4, 4]))
    return tuple(draw(st.lists(st.integers(1, 6), min_size=rank, max_size=rank)))


def _ir_version(opset: int) -> int:
    return max(8, helper.find_min_ir_version_for([helper.make_opsetid("", opset)]))


def onnx_models(max_nodes: int = 12, opsets: tuple[int, int] = (13, 21), *,
                value_info: bool = False) -> st.SearchStrategy[onnx.ModelProto]:
    """Random valid ONNX models (see the module docstring for what they contain).

    ``opsets`` is an inclusive (low, high) range, low >= 13. ``max_nodes`` is a soft budget.
    With ``value_info=True`` every intermediate value gets a value_info entry with the
    generator's own dtype and static shape (the tests check those against ONNX shape
    inference in strict mode and against onnxruntime).
    """
    lo, hi = opsets
    newest = onnx.defs.onnx_opset_version()
    if not 13 <= lo <= hi <= newest:
        raise ValueError(f"opsets must be a range within 13..{newest}, got {opsets}")
    if max_nodes < 1:
        raise ValueError(f"max_nodes must be >= 1, got {max_nodes}")
    return _models(max_nodes, lo, hi, value_info)


@st.composite
def _models(draw, max_nodes: int, lo: int, hi: int, value_info: bool) -> onnx.ModelProto:
    # Drawn first: Hypothesis gives the leading choices a near-uniform spread, which keeps
    # most models from collapsing to one node (shrinks toward 1 step).
    n_steps = draw(st.integers(1, max_nodes))
    opset = draw(st.integers(lo, hi))
    fdt = draw(st.sampled_from([F32, F32, F32, F64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    b = _Builder(draw, opset, fdt, rng, max_nodes)

    s0 = _input_shape(draw)
    for i in range(draw(st.integers(1, 3))):
        if i == 0:
            shape = s0
        else:
            kind = draw(st.sampled_from(["same", "partner", "independent"]))
            shape = s0 if kind == "same" else (
                b.partner_shape(s0) if kind == "partner" else _input_shape(draw))
            if not shape:
                shape = s0
        v = b.new(f"input_{i}", fdt, shape, exact=True, bound=INPUT_BOUND)
        b.inputs.append(v)

    for _ in range(n_steps):
        if len(b.nodes) >= max_nodes:
            break
        kind = draw(st.sampled_from(_STEPS))
        if getattr(b, "g_" + kind)() is None:
            if b.g_unary() is None:
                b.g_identity()

    input_names = {v.name for v in b.inputs}
    cands = [v for v in b.pool if v.name not in input_names]
    if not cands:
        b.g_unary() or b.g_identity()
        cands = [v for v in b.pool if v.name not in input_names]
    n_out = draw(st.integers(1, min(3, len(cands))))
    order = draw(st.permutations(range(len(cands) - 1))) if n_out > 1 else []
    outputs = [cands[-1]] + [cands[i] for i in order[: n_out - 1]]

    def vinfo(v: _Val) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(v.name, _elem(v.dtype), list(v.shape))

    init_names = {t.name for t in b.inits}
    out_names = {v.name for v in outputs}
    extra = []
    if value_info:
        extra = [vinfo(v) for v in b.vals.values()
                 if v.name not in input_names | init_names | out_names]
    graph = helper.make_graph(
        b.nodes, "lepton_random", [vinfo(v) for v in b.inputs], [vinfo(v) for v in outputs],
        initializer=b.inits, value_info=extra,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=_ir_version(opset), producer_name="lepton-tests")


def random_inputs(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Feeds for every graph input that is not an initializer (static shapes; a symbolic
    dim becomes 1). Floats are standard normal clipped to [-3, 3]; ints lie in [-3, 3]
    ([0, 6] unsigned); bools are fair coin flips."""
    rng = np.random.default_rng(seed)
    init_names = {t.name for t in model.graph.initializer}
    feeds: dict[str, np.ndarray] = {}
    for vi in model.graph.input:
        if vi.name in init_names:
            continue
        tt = vi.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
        shape = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in tt.shape.dim)
        if dtype.kind == "f":
            arr = np.clip(rng.standard_normal(shape), -INPUT_BOUND, INPUT_BOUND).astype(dtype)
        elif dtype.kind == "b":
            arr = rng.random(shape) < 0.5
        elif dtype.kind == "u":
            arr = rng.integers(0, 7, size=shape).astype(dtype)
        elif dtype.kind == "i":
            arr = rng.integers(-3, 4, size=shape).astype(dtype)
        else:
            raise TypeError(f"random_inputs: unsupported input dtype {dtype} for {vi.name!r}")
        feeds[vi.name] = np.asarray(arr)
    return feeds
