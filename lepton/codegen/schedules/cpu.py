"""CPU schedule rules: register-tiled, vectorized, parallel kernels for conv/matmul and injective ops.

Each rule gets one fused PrimFunc (after Relax legalization and fusion) and returns a
schedule, or None to leave the function to the next rule. A rule never raises: any
schedule error means "not my pattern" (the function then falls through to TVM's dlight
rules and, at worst, stays unscheduled, which is correct but slow).

`TiledReduction` takes functions with exactly one reduction block whose iterators are
spatial-then-reduction (conv2d, depthwise conv, pooling windows, matmul, batch matmul,
dense), optional injective producers (padding) and an injective epilogue of the same
spatial shape (bias, activation, residual add). The epilogue's output is tiled as
`[..., U, V]`: V is the innermost axis (contiguous in memory, vectorized with the target's
fp32 lanes: output channels in NHWC), U another output axis (for 4-d convolutions axis 1 or 2,
whichever holds more accumulators; the row axis for matmuls), unrolled so U x V/lanes
accumulators stay in registers. The reduction is computed into that register tile (`local`
scope) at the tile's loop, reduction loops outside the tile, and the epilogue is applied on
write-back. Outer loops run in parallel. Producers run as parallel, vectorized stages of their
own, except those writing bool values, which are inlined into their consumers where TVM allows
(a vectorized store of a bool intermediate computed wrong results: fully masked attention
rows). The tile decisions (U's axis for convolutions, V, U) are a template:
`TiledReduction` takes the defaults, `tiled_reduction_space` draws them with
`sample_categorical` for tuning (`lepton.tuning`), index 0 being the default.

`Injective` takes functions of spatial blocks only (elementwise, broadcast, transpose,
concat, pad, ...): everything is inlined into the output block, whose loops are fused,
split by the vector width (when it divides the extent) and run in parallel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tvm import s_tir, tirx
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target

_SPATIAL, _REDUCE = 0, 2  # tirx.IterVar types
#: Loop orders of the tiled template: the tiles of the vectorized axis (output channels in NHWC, columns of a
#: matmul) innermost (the default: each pixel/row tile's inputs stay in cache while every weight panel passes),
#: or outermost (each thread keeps one weight panel in cache while it sweeps the pixels/rows; better where
#: the weights are large: BERT-small 24.7 -> 22.4 ms, but ResNet-18 15.6 -> 16.4 ms, so tuning chooses).
_VECTOR_TILES_INSIDE, _VECTOR_TILES_OUTSIDE = 0, 1
LOOP_ORDER_NAMES = {_VECTOR_TILES_INSIDE: "V-inner", _VECTOR_TILES_OUTSIDE: "V-outer"}  # for tuning reports
#: Vector registers of the targets: 32 on AVX-512 and AArch64, 16 on AVX2/SSE (`Target.vector_registers`).
#: The default register tile holds at most 3/4 of them as accumulators, the rest hold inputs (24 of 32; on 16
#: registers 24 accumulators spilled to the stack in every conv/matmul tile: ResNet-18 1.35x onnxruntime on
#: an AVX2 EPYC); tuning candidates go up to all of them.
DEFAULT_REGISTERS = 32


def cpu_rules(lanes: int, registers: int = DEFAULT_REGISTERS) -> list[CPUScheduleRule]:
    """Lepton's CPU rules in order of precedence, for `lanes` fp32 lanes per vector and `registers` vector registers."""
    return [TiledReduction(lanes, registers), Injective(lanes)]


class _Rule(CPUScheduleRule):
    def __init__(self, lanes: int, registers: int = DEFAULT_REGISTERS) -> None:
        super().__init__()
        self.lanes = max(1, int(lanes))
        self.registers = max(4, int(registers))

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        try:
            return self._schedule(s_tir.Schedule(func))
        except Exception:  # noqa: BLE001 - s_tir raises ScheduleError/TVMError/ValueError for patterns it cannot do
            return None

    def _schedule(self, sch: s_tir.Schedule) -> s_tir.Schedule | None:
        raise NotImplementedError


class TiledReduction(_Rule):
    """Conv / matmul-like functions: one S..SR..R reduction block plus injective pro- and epilogue."""

    def _schedule(self, sch: s_tir.Schedule) -> s_tir.Schedule | None:
        return tiled_reduction(sch, self.lanes, _default_pick, self.registers)


#: How the template takes a decision: `pick(sch, candidates)` -> (split factor or axis for the schedule,
#: its value for the template's own control flow). `candidates[0]` is always the default rule's choice.
Pick = Callable[[s_tir.Schedule, list[int]], tuple["int | tirx.PrimExpr", int]]


def _default_pick(_sch: s_tir.Schedule, candidates: list[int]) -> tuple[int, int]:
    return candidates[0], candidates[0]


def tiled_reduction_space(sch: s_tir.Schedule, lanes: int, decisions: Sequence[int] = (),
                          registers: int = DEFAULT_REGISTERS) -> s_tir.Schedule:
    """`TiledReduction`'s template with its decisions drawn by `sch.sample_categorical`, for MetaSchedule.

    Decisions, in the order they are taken (each list puts the default rule's choice first, index 0):
    the register-tile axis (4-d convolutions only: axis 1 or 2), the vector tile V (divisors of the
    innermost axis: multiples of the lanes up to 4 vectors, else partial vectors), the register tile U
    (divisors of the register axis with U x ceil(V / lanes) <= `registers` accumulators), and the loop order
    (V's tiles outside or inside the other parallel loops).
    `decisions[i]` fixes the i-th (index into its candidates); missing ones are 0, so the default
    decisions give exactly the default rule's schedule, and the trace records every decision.
    Raises ValueError where the template does not apply (a design space must not be silently empty).
    """
    taken = iter(decisions)

    def pick(s: s_tir.Schedule, candidates: list[int]) -> tuple[tirx.PrimExpr, int]:
        rv = s.sample_categorical(candidates, [1.0 / len(candidates)] * len(candidates), decision=next(taken, 0))
        return rv, int(s.get(rv))

    if tiled_reduction(sch, lanes, pick, registers) is None:
        raise ValueError("the function is not a conv/matmul-like reduction Lepton's template takes")
    return sch


def tiled_reduction(sch: s_tir.Schedule, lanes: int, pick: Pick, registers: int = DEFAULT_REGISTERS) -> s_tir.Schedule | None:
    """The tiled conv/matmul schedule (module docstring), its tile decisions taken by `pick`; None if not applicable."""
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    kinds = [_kinds(sch, b) for b in blocks]
    reds = [i for i, k in enumerate(kinds) if "R" in k]
    if len(reds) != 1:
        return None
    r = reds[0]
    red, kind = blocks[r], kinds[r]
    ns = len(kind) - len(kind.lstrip("S"))
    nr = len(kind) - ns
    if ns < 2 or kind[ns:] != "R" * nr:
        return None
    extents = _extents(sch, red)
    if any(not isinstance(e, int) for e in extents[ns:]):
        return None
    epilogue = blocks[r + 1 :]
    if any(kinds[i] != "S" * ns for i in range(r + 1, len(blocks))):
        return None
    if any(_extents(sch, b) != extents[:ns] for b in epilogue):
        return None
    vec_axis = ns - 1
    reg_axes = _register_axes(extents[:ns], nr, lanes, registers)
    for b in epilogue[:-1]:
        sch.compute_inline(b)
    if epilogue:
        last = epilogue[-1]
        sch.set_scope(red, 0, "local")
    else:
        last = sch.cache_write(red, 0, "local")  # the copy-out block; `red` now writes the local buffer
    _, reg_axis = pick(sch, reg_axes) if len(reg_axes) > 1 else (reg_axes[0], reg_axes[0])
    v_ext, u_ext = extents[vec_axis], extents[reg_axis]
    if not isinstance(v_ext, int) or not isinstance(u_ext, int):
        return None
    v_factor, vt = pick(sch, _vector_tiles(v_ext, lanes, u_ext, registers))
    u_factor, ut = pick(sch, _register_tiles(u_ext, -(-vt // lanes), registers))
    _, order = pick(sch, [_VECTOR_TILES_INSIDE, _VECTOR_TILES_OUTSIDE])

    loops = sch.get_loops(last)
    if len(loops) != ns:
        return None
    u_o, u_i = sch.split(loops[reg_axis], [None, u_factor])
    v_o, v_i = sch.split(loops[vec_axis], [None, v_factor])
    outer = [u_o if i == reg_axis else loops[i] for i in range(ns) if i != vec_axis]
    if order == _VECTOR_TILES_OUTSIDE:
        sch.reorder(v_o, *outer, u_i, v_i)
        at = _parallel_outer(sch, [v_o, *outer])
    else:
        sch.reorder(*outer, v_o, u_i, v_i)
        _parallel_outer(sch, outer)
        at = v_o
    sch.compute_at(red, at, preserve_unit_loops=True)
    inner = _loops_under(sch, red, at)  # one per block iterator, in iterator order (unit loops kept)
    if len(inner) != ns + nr:
        return None
    spatial_inner, red_loops = inner[:ns], inner[ns:]
    sch.reorder(*red_loops, *spatial_inner)
    if vt > 1:
        sch.vectorize(spatial_inner[vec_axis])
    if ut > 1:
        sch.unroll(spatial_inner[reg_axis])
    sch.vectorize(v_i)
    sch.decompose_reduction(red, red_loops[0])
    for b in blocks[:r]:
        if not (_writes_bool(sch, b) and _inlined(sch, b)):
            _parallel_vectorize(sch, b, lanes)
    return sch


class Injective(_Rule):
    """Functions whose blocks are all spatial: inline into the outputs, then fuse, parallelize, vectorize."""

    def _schedule(self, sch: s_tir.Schedule) -> s_tir.Schedule | None:
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        if not blocks or any("R" in _kinds(sch, b) for b in blocks):
            return None
        for b in blocks[:-1]:
            if not _read_reversed(sch, b):
                _inlined(sch, b)  # an output or a multi-consumer block stays a stage of its own
        for b in sch.get_child_blocks(sch.get_sblock("root")):
            _parallel_vectorize(sch, b, self.lanes)
        return sch


def _register_axes(spatial: list, nr: int, lanes: int, registers: int) -> list[int]:
    """Candidate register-tile axes, best default first: the row axis for matmuls (one reduction axis);
    for 4-d convolutions axis 1 or 2 (output channels and rows in NCHW, rows and columns in NHWC),
    whichever holds more accumulators under the default tiles (ties keep axis 1)."""
    ns = len(spatial)
    if not (nr >= 2 and ns == 4):
        return [ns - 2]
    v = spatial[-1]

    def accumulators(axis: int) -> int:
        u = spatial[axis]
        if not isinstance(u, int) or not isinstance(v, int):
            return 0
        vectors = -(-_vector_tile(v, lanes, u, registers) // lanes)
        return _register_tiles(u, vectors, registers)[0] * vectors

    return sorted([1, 2], key=lambda a: -accumulators(a))


def _read_reversed(sch: s_tir.Schedule, block: s_tir.SBlockRV) -> bool:
    """Whether a consumer reads `block`'s output at an index `c - v` (a reversed Slice). Such a block is not
    inlined: TVM 0.27's simplifier rewrites floormod(c - v, d) (from a reshape inlined into the reversed read)
    to -floormod(v, -d), dropping c, when it flattens buffers, and the kernel reads the wrong elements
    (tests/regressions: fuzzer find 2466a653bb91)."""
    written = [region.source for region in sch.get(block).writes]
    return any(
        any(region.source.same_as(w) for w in written)
        and any(isinstance(r.min, tirx.Sub) and not isinstance(r.min.b, tirx.IntImm) for r in region.region)
        for consumer in sch.get_consumers(block)
        for region in sch.get(consumer).reads
    )


def _writes_bool(sch: s_tir.Schedule, block: s_tir.SBlockRV) -> bool:
    return any(str(region.source.dtype) == "bool" for region in sch.get(block).writes)


def _inlined(sch: s_tir.Schedule, block: s_tir.SBlockRV) -> bool:
    """Inline `block` into its consumers if TVM allows; whether it did."""
    try:
        sch.compute_inline(block)
    except Exception:  # noqa: BLE001 - s_tir refuses blocks it cannot inline
        return False
    return True


def _kinds(sch: s_tir.Schedule, block: s_tir.SBlockRV) -> str:
    kinds = []
    for iv in sch.get(block).iter_vars:
        if iv.iter_type == _SPATIAL:
            kinds.append("S")
        elif iv.iter_type == _REDUCE:
            kinds.append("R")
        else:
            kinds.append("O")
    return "".join(kinds)


def _extents(sch: s_tir.Schedule, block: s_tir.SBlockRV) -> list[int | object]:
    out: list[int | object] = []
    for iv in sch.get(block).iter_vars:
        e = iv.dom.extent
        out.append(int(e) if isinstance(e, tirx.IntImm) else e)
    return out


def _loops_under(sch: s_tir.Schedule, block: s_tir.SBlockRV, loop: s_tir.LoopRV) -> list[s_tir.LoopRV]:
    """The loops around `block` that are nested inside `loop`."""
    target = sch.get(loop)
    loops = sch.get_loops(block)
    for i, lp in enumerate(loops):
        if sch.get(lp).same_as(target):
            return list(loops[i + 1 :])
    raise ValueError("block is not under the loop")


def _vector_tile(extent: int, lanes: int, rows: int, registers: int) -> int:
    """Default tile of the vectorized axis for a register axis of `rows`: among the multiples of the lanes
    up to 4 vectors that divide `extent` (4 only on wide axes), the one whose default register tile holds
    the most accumulators (ties: the wider); with no such multiple, the largest divisor <= lanes (one
    possibly partial vector: 56 -> 14, 7 -> 7)."""
    whole = [lanes * m for m in (4, 2, 1) if extent % (lanes * m) == 0 and (m < 4 or extent >= 8 * lanes)]
    if not whole:
        return _divisor_at_most(extent, lanes)
    return max(whole, key=lambda v: (_register_tiles(rows, v // lanes, registers)[0] * (v // lanes), v))


def _vector_tiles(extent: int, lanes: int, rows: int, registers: int) -> list[int]:
    """Vector tile candidates: the default `_vector_tile` first, then the other multiples of the lanes up to
    4 vectors that divide the extent, or (no multiple divides it) its divisors between half a vector and 4."""
    default = _vector_tile(extent, lanes, rows, registers)
    divisors = [d for d in range(1, min(extent, 4 * lanes) + 1) if extent % d == 0]
    whole = [d for d in divisors if d % lanes == 0]
    others = whole if whole else [d for d in divisors if d >= lanes // 2]
    return [default, *(d for d in others if d != default)]


def _register_tiles(extent: int, vectors: int, registers: int) -> list[int]:
    """Register tile candidates for `vectors` vectors per row: the default (at most 16 rows and 3/4 of the
    `registers` as accumulators) first, then every divisor of the extent within `registers` accumulators."""
    default = _divisor_at_most(extent, max(1, min(16, registers * 3 // 4 // vectors)))
    others = [d for d in range(1, min(extent, registers // vectors) + 1) if extent % d == 0 and d != default]
    return [default, *others]


def _divisor_at_most(n: int, cap: int) -> int:
    """The largest divisor of n that is at most cap (1 if n < 1)."""
    for d in range(min(n, cap), 0, -1):
        if n % d == 0:
            return d
    return 1


def _parallel_vectorize(sch: s_tir.Schedule, block: s_tir.SBlockRV, lanes: int) -> None:
    """Run a block's outer loops (fused) in parallel and vectorize its innermost loop.

    The innermost loop stays a loop of its own (no div/mod of a fused index per element):
    split by the lanes when they divide it, vectorized whole when it is at most 4 vectors.
    """
    loops = sch.get_loops(block)
    if not loops:
        return
    *outer, last = loops
    extent = sch.get(last).extent
    n = int(extent) if isinstance(extent, tirx.IntImm) else None
    if n is not None and n % lanes == 0 and n > lanes:
        rest, vec = sch.split(last, [None, lanes])
        outer.append(rest)
        sch.vectorize(vec)
    elif n is not None and 1 < n <= 4 * lanes:
        sch.vectorize(last)
    _parallel_outer(sch, outer)


def _parallel_outer(sch: s_tir.Schedule, outer: Sequence[s_tir.LoopRV]) -> s_tir.LoopRV | None:
    """Run `outer` (a perfect nest, outermost first) in parallel: fused when every extent is constant; else
    only the outermost loop, because a fused index divided again by symbolic extents makes TVM's LLVM
    codegen take minutes (found by the differential fuzzer: tests/regressions/). Returns the innermost
    loop of the nest as it is now (the fused loop, or the last of `outer`)."""
    if not outer:
        return None
    if len(outer) > 1 and all(isinstance(sch.get(lp).extent, tirx.IntImm) for lp in outer):
        fused = sch.fuse(*outer)
        sch.parallel(fused)
        return fused
    sch.parallel(outer[0])
    return outer[-1]
