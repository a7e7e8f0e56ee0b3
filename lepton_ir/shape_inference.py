"""Re-run ONNX shape inference on a graph that passes have changed, and refine value types.

Import-time inference cannot see through shape computations (`Shape -> Gather -> Concat ->
Reshape`) whose data it does not know; once passes have folded them into constants, a
second inference finds static shapes there, which in turn lets more folding happen.

`refresh_shapes(graph)`:
- builds a *light* ModelProto of the current graph: nodes (subgraphs included), graph
  inputs/outputs, the current value types as value_info, and only the initializers (and
  `Constant` node tensors) of at most 4096 bytes; bigger ones become typed inputs of the
  main graph (names are unique model-wide, so a subgraph still sees them). No weight data
  is copied or read.
- runs ONE strict inference, with data propagation under the importer's guard (no known
  1-D value longer than `importer.DATA_PROP_MAX_LEN`; the lengths come from the current
  types, which the importer already checked). The importer's `_infer_types` runs two
  inferences (strict, then with data propagation) and reads every inferred type back;
  on a 10k-node graph that doubled the cost, so it is not reused. When strict mode
  rejects a graph that passes produced, non-strict inference instead. Never raises: a
  graph inference cannot handle simply keeps its types.
- refines node outputs only (graph inputs and initializers are never touched), and only
  makes them more specific: a dtype or shape of None takes the inferred one; per dim, an
  int stays, a None or a symbol takes an inferred int, a None takes an inferred symbol.
  An int is never replaced by another int; a value whose inferred dtype or rank disagrees
  with ours keeps its type. Values without a dtype keep shape None (a shape without a
  dtype is not exported, so it would be an invisible change).
- skips inference altogether when every node output already has a dtype and a static
  shape (nothing could become more specific).

Symbols: the current types go in as value_info, so ONNX's symbol generator knows every
existing `dim_param` and never hands out one of them for a different dim; a symbol that
comes back on a dim we did not know was propagated from a dim that carries it.
"""

from __future__ import annotations

import math

import onnx

from lepton_ir.core import Graph, Node, Value
from lepton_ir.exporter import ProtoWriter
from lepton_ir.importer import DATA_PROP_MAX_LEN, dtype_and_shape
from lepton_ir.structure import all_graphs
from lepton_ir.tensor import Tensor
from lepton_ir.types import Dim, Shape, dtype_bits

#: Initializers and Constant tensors above this many bytes are replaced by typed inputs.
LIGHT_MAX_BYTES = 4096


def refresh_shapes(graph: Graph) -> int:
    """Re-infer the types of `graph` (subgraphs included); returns how many values got more specific."""
    root = graph.root()
    pending = [o for g in root.all_graphs() for n in g for o in n.outputs if o.name and not _complete(o)]
    if not pending:
        return 0
    types = infer_types(root, {o.name for o in pending})
    changed = 0
    for o in pending:
        t = types.get(o.name)
        if t is not None and _refine(o, t):
            changed += 1
    return changed


def infer_types(graph: Graph, names: set[str] | None = None) -> dict[str, onnx.TypeProto]:
    """ONNX's inferred type of the named values (default: all) of `graph`, a root graph.

    One inference, strict, with data propagation unless a 1-D value is longer than the
    importer's limit; if strict mode rejects the graph, the same non-strict. {} if even
    that fails.
    """
    writer = _LightWriter()
    model = writer.model(graph)
    data_prop = writer.longest_1d <= DATA_PROP_MAX_LEN
    inferred = None
    for strict in (True, False):
        try:
            inferred = onnx.shape_inference.infer_shapes(model, check_type=strict, strict_mode=strict, data_prop=data_prop)
            break
        except Exception:  # noqa: BLE001 - onnx raises InferenceError, ValidationError or bare C++ errors
            continue
    if inferred is None:
        return {}
    types: dict[str, onnx.TypeProto] = {}
    graphs = all_graphs(inferred.graph) if writer.nested else [inferred.graph]
    for g in graphs:
        for vis in (g.value_info, g.output):
            for vi in vis:
                if (names is None or vi.name in names) and vi.name not in types:
                    types[vi.name] = vi.type
    for vi in writer.hoisted_constants:  # outputs of big Constant nodes: their type is the tensor's
        if names is None or vi.name in names:
            types[vi.name] = vi.type
    return types


def light_model(graph: Graph) -> onnx.ModelProto:
    """`graph` as a ModelProto for inference: small tensors inline, big ones as typed main-graph inputs."""
    return _LightWriter().model(graph)


class _LightWriter(ProtoWriter):
    """An exporter that writes no big tensor: those become typed inputs of the main graph."""

    def __init__(self) -> None:
        super().__init__(None)
        self.hoisted: list[onnx.ValueInfoProto] = []  # big initializers
        self.hoisted_constants: list[onnx.ValueInfoProto] = []  # outputs of big Constant nodes
        self.longest_1d = 0  # the longest known 1-D value or initializer (data propagation guard)
        self.nested = False  # whether any subgraph was written

    def model(self, g: Graph) -> onnx.ModelProto:
        m = onnx.ModelProto()
        m.ir_version = g.ir_version
        for domain, version in g.opset_imports.items():
            m.opset_import.add(domain=domain, version=version)
        self._fill(m.graph, g)
        m.graph.input.extend(self.hoisted)
        m.graph.input.extend(self.hoisted_constants)
        return m

    def graph(self, g: Graph) -> onnx.GraphProto:  # called by `ProtoWriter.attr` for subgraphs
        self.nested = True
        p = onnx.GraphProto()
        self._fill(p, g)
        return p

    def _fill(self, p: onnx.GraphProto, g: Graph) -> None:
        p.name = g.name
        for v in g.inputs:
            self._value_info(p.input.add(), v)
        for v in g.outputs:
            self._value_info(p.output.add(), v)
        for name, v in g.initializers.items():
            t = v.const_value
            assert t is not None
            self._note_length(t.shape)
            if _nbytes(t) <= LIGHT_MAX_BYTES or t.dtype == onnx.TensorProto.STRING:
                p.initializer.append(t.to_proto(name))
            elif not g.is_graph_input(v):
                self.hoisted.append(onnx.helper.make_tensor_value_info(name, t.dtype, list(t.shape)))
        outputs = {id(v) for v in g.outputs}
        add_node, add_info = p.node.add, p.value_info.add
        for n in g:
            big = _big_constant(n)
            if big is not None and id(n.outputs[0]) not in outputs:
                self.hoisted_constants.append(onnx.helper.make_tensor_value_info(n.outputs[0].name, big.dtype, list(big.shape)))
                continue
            proto = add_node(
                op_type=n.op_type, domain=n.domain,
                input=["" if v is None else v.name for v in n.inputs], output=[o.name for o in n.outputs],
            )
            if n.attributes:
                proto.attribute.extend([self.attr(k, a) for k, a in n.attributes.items()])
            for o in n.outputs:
                if o.name and o.dtype is not None and id(o) not in outputs:
                    self._value_info(add_info(), o)

    def _value_info(self, vi: onnx.ValueInfoProto, v: Value) -> None:
        """`lepton_ir.exporter.value_info`, written in place (no doc strings); notes 1-D lengths."""
        vi.name = v.name
        if v.dtype is None:
            return
        tt = vi.type.tensor_type
        tt.elem_type = v.dtype
        if v.shape is None:
            return
        tt.shape.SetInParent()
        dims = tt.shape.dim
        for d in v.shape:
            if isinstance(d, int):
                dims.add(dim_value=d)
            elif isinstance(d, str):
                dims.add(dim_param=d)
            else:
                dims.add()
        self._note_length(v.shape)

    def _note_length(self, shape: Shape | tuple[int, ...]) -> None:
        if shape is not None and len(shape) == 1 and isinstance(shape[0], int) and shape[0] > self.longest_1d:
            self.longest_1d = shape[0]


def _nbytes(t: Tensor) -> int:
    return (math.prod(t.shape) * dtype_bits(t.dtype) + 7) // 8


def _big_constant(n: Node) -> Tensor | None:
    """The tensor of a `Constant` node holding more than LIGHT_MAX_BYTES (its type is all inference needs)."""
    if n.op_type != "Constant" or n.domain or len(n.outputs) != 1 or not n.outputs[0].name:
        return None
    a = n.attributes.get("value")
    if a is None or not isinstance(a.value, Tensor) or a.value.dtype == onnx.TensorProto.STRING:
        return None
    return a.value if _nbytes(a.value) > LIGHT_MAX_BYTES else None


def _complete(v: Value) -> bool:
    return v.dtype is not None and v.shape is not None and all(isinstance(d, int) for d in v.shape)


def _refine(v: Value, t: onnx.TypeProto) -> bool:
    """Make `v`'s type more specific with the inferred `t`; True when it changed."""
    dtype, shape = dtype_and_shape(t)
    if v.dtype is not None and dtype is not None and dtype != v.dtype:
        return False  # inference disagrees: keep ours, shape included
    new_dtype = v.dtype if v.dtype is not None else dtype
    if new_dtype is None:
        return False
    new_shape = _refine_shape(v.shape, shape)
    if new_dtype == v.dtype and new_shape == v.shape:
        return False
    v.dtype, v.shape = new_dtype, new_shape
    return True


def _refine_shape(ours: Shape, theirs: Shape) -> Shape:
    if theirs is None:
        return ours
    theirs = tuple(_clean(d) for d in theirs)
    if ours is None:
        return theirs
    if len(ours) != len(theirs):
        return ours
    return tuple(_refine_dim(a, b) for a, b in zip(ours, theirs, strict=True))


def _clean(d: Dim) -> Dim:
    """An inferred dim as we keep it: negative ints and empty symbols are unknown."""
    if isinstance(d, int):
        return d if d >= 0 else None
    return d or None


def _refine_dim(ours: Dim, theirs: Dim) -> Dim:
    if isinstance(ours, int):
        return ours
    if isinstance(theirs, int):
        return theirs
    if ours is None:
        return theirs
    return ours
