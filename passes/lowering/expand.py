"""`expand-functions`: replace ONNX operators whose schema defines a function body by that body.

The TVM ONNX frontend has no converter for many ops that ONNX defines as functions of
primitive ops (Celu, Swish, the window functions, the losses, RotaryEmbedding, ...). This
pass inlines those bodies, so the codegen only ever sees primitive ops. The codegen passes
the ops TVM converts as `keep`.

Which nodes: default-domain nodes (subgraphs included) whose op type is selected (in `ops`
when `ops` is given, and never in `keep`) and whose schema, at the model's default-domain
opset, has a function body for that opset (a plain function body, else a context-dependent
one, built by ONNX from the node's attributes and its inputs' known types).

Invariants:
- Semantics: the body is ONNX's definition of the op, instantiated for the node: formal
  inputs bound to the node's inputs (an omitted optional input leaves an empty input in the
  body nodes that read it), `ref_attr_name` attributes replaced by the node's attribute, else
  the schema default, else dropped.
- Opsets: a body is written against its own opset. When the model's opset differs and some
  body op has a different `since_version` at the two opsets, the instantiated body is taken
  through ONNX's version converter to the model's opset; when that fails the node is kept
  (`skipped_opset`). The model's opset imports never change.
- Names: every body node and value gets a fresh model-wide unique name; the node's outputs
  keep their names (graph outputs of any graph included), and their known types.
- Body values are typed by ONNX shape inference of the instantiated body from the node's
  input types (symbols it invents are dropped, so they cannot clash with the model's). When
  every input type is known that inference is strict, and a body it rejects is not used:
  ONNX's own bodies are not always consistent with each other (AffineGrid's body calls
  Range with 1-element tensors, which Range's Loop body cannot take).
- Nested function ops in a body are expanded too (same selection), up to `MAX_DEPTH` levels.
- A node whose body cannot be had is kept and counted: `skipped_unknown_types` (a context-
  dependent body needs input types that are unknown), `skipped_no_body` (ONNX builds none
  for this node), `skipped_opset`, `skipped_invalid_body` (the body does not define an
  output the node has, or strict inference rejects it).
- `stats` counts expanded nodes per op type (nested ones included) plus the skips; nodes
  left behind dead (a body computing an output the node omits) are for `eliminate-dead-code`.
  Idempotent: a second run finds nothing left to expand.
"""

from __future__ import annotations

import functools
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

import onnx
import onnx.shape_inference
import onnx.version_converter
from onnx import helper

from lepton_ir import Graph, Node, Value
from lepton_ir.exporter import ProtoWriter, value_info
from lepton_ir.importer import GraphBuilder
from lepton_ir.rewriter import Event, Rewriter

from passes.base import Pass, PassContext, PassResult, register

#: Bound on nested expansion (a body op that is itself a function op, and so on).
MAX_DEPTH = 8


@dataclass(frozen=True)
class _Body:
    """A function body instantiated for one call signature, still in the function's own names.

    `inputs`/`outputs` are the formal names, "" where the call omits that input/output; the
    nodes read "" for omitted inputs. `types` holds the inferred type of each body value.
    """

    nodes: tuple[onnx.NodeProto, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    types: dict[str, onnx.TypeProto]


@register
@dataclass(frozen=True)
class ExpandFunctions(Pass):
    """Inline the ONNX function body of default-domain ops not in `keep` (only `ops` when given).

    In pipeline text both options are lists of op types: `expand-functions{ops=[Celu,Swish]}`.
    """

    name: ClassVar[str] = "expand-functions"
    summary: ClassVar[str] = "replace ONNX ops defined as functions (Celu, Swish, windows, losses, ...) by their bodies"

    keep: frozenset[str] = frozenset()
    ops: frozenset[str] = frozenset()

    def selects(self, op_type: str) -> bool:
        """Whether a default-domain node of `op_type` is to be expanded (when it has a body)."""
        return (not self.ops or op_type in self.ops) and op_type not in self.keep

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        opset = graph.root().opset_imports.get("")
        if opset is None:
            return PassResult(False, {})
        stats = expand_selected(
            graph, opset,
            lambda n: not n.domain and self.selects(n.op_type) and function_schema(n.op_type, opset) is not None,
            lambda n: function_schema(n.op_type, opset),
            depth=MAX_DEPTH,
        )
        expanded = sum(v for k, v in stats.items() if not k.startswith("skipped_"))
        return PassResult(expanded > 0, dict(stats))


# ----- finding and instantiating bodies ---------------------------------------------------


@functools.lru_cache(maxsize=1024)
def function_schema(op_type: str, opset: int) -> onnx.defs.OpSchema | None:
    """The schema of `op_type` at `opset` when it defines a function body for that opset."""
    try:
        schema = onnx.defs.get_schema(op_type, opset, "")
    except onnx.defs.SchemaError:
        return None
    versions = [*schema.function_opset_versions, *schema.context_dependent_function_opset_versions]
    return schema if any(v <= opset for v in versions) else None


def _body_for(schema: onnx.defs.OpSchema, node: Node, opset: int, cache: dict[bytes, _Body | str]) -> _Body | str:
    """The instantiated body for `node` (cached per call signature), or the reason there is none."""
    call = onnx.NodeProto(op_type=node.op_type)
    call.input.extend(f"i{k}" if v is not None else "" for k, v in enumerate(node.inputs))
    call.output.extend(f"o{k}" if v.name else "" for k, v in enumerate(node.outputs))
    writer = ProtoWriter(None)
    call.attribute.extend(writer.attr(k, a) for k, a in sorted(node.attributes.items()))
    types = [value_info(v).type if v is not None else onnx.TypeProto() for v in node.inputs]
    key = call.SerializeToString() + b"".join(b"|" + t.SerializeToString() for t in types)
    if key not in cache:
        cache[key] = _instantiate(schema, call, types, opset)
    return cache[key]


def _function(schema: onnx.defs.OpSchema, call: onnx.NodeProto, types: list[onnx.TypeProto], opset: int) -> onnx.FunctionProto | None:
    """ONNX's function body for the call at `opset`: the newest plain one at or below it, else
    the newest context-dependent one. None when ONNX builds none."""
    plain = [v for v in schema.function_opset_versions if v <= opset]
    try:
        if plain:
            data = schema.get_function_with_opset_version(max(plain))
        else:
            version = max(v for v in schema.context_dependent_function_opset_versions if v <= opset)
            data = schema.get_context_dependent_function_with_opset_version(
                version, call.SerializeToString(), [t.SerializeToString() for t in types]
            )
    except Exception:  # noqa: BLE001 - builders raise bare C++/binding errors for calls they cannot handle
        return None
    fn = onnx.FunctionProto.FromString(data) if data else None
    return fn if fn is not None and fn.node else None


def _instantiate(schema: onnx.defs.OpSchema, call: onnx.NodeProto, types: list[onnx.TypeProto], opset: int) -> _Body | str:
    """Bind the body to the call: attributes, omitted inputs, opset, types; or a skip reason."""
    fn = _function(schema, call, types, opset)
    if fn is None:
        unknown = any(name and not t.tensor_type.elem_type for name, t in zip(call.input, types, strict=True))
        return "unknown_types" if unknown else "no_body"
    if len(call.input) > len(fn.input) or len(call.output) > len(fn.output):
        return "invalid_body"
    inputs = tuple(f if k < len(call.input) and call.input[k] else "" for k, f in enumerate(fn.input))
    outputs = tuple(f if k < len(call.output) and call.output[k] else "" for k, f in enumerate(fn.output))
    nodes = [onnx.NodeProto() for _ in fn.node]
    for copy, original in zip(nodes, fn.node, strict=True):
        copy.CopyFrom(original)
    attrs = {a.name: a for a in call.attribute}
    for name, a in schema.attributes.items():
        if name not in attrs and a.default_value.type != onnx.AttributeProto.UNDEFINED:
            attrs[name] = a.default_value
    omitted = {f for f, bound in zip(fn.input, inputs, strict=True) if not bound}
    _bind(nodes, attrs, omitted)
    defined = {o for n in nodes for o in n.output}
    if any(o and o not in defined for o in outputs):
        return "invalid_body"
    if any(n.domain not in ("", "ai.onnx") for n in _walk(nodes)):
        return "opset"
    fn_opset = next((i.version for i in fn.opset_import if i.domain in ("", "ai.onnx")), opset)
    model = _body_model(nodes, inputs, outputs, types, fn_opset)
    if fn_opset != opset:
        if any(_since(n.op_type, fn_opset) != _since(n.op_type, opset) for n in _walk(nodes)):
            try:
                model = onnx.version_converter.convert_version(model, opset)
            except Exception:  # noqa: BLE001 - the converter raises bare C++ errors when it has no adapter
                return "opset"
            if model.graph.initializer:  # adapters add Constant nodes; a body has no initializers
                return "opset"
        else:
            model.opset_import[0].version = opset
    types = _infer(model)
    if types is None:
        return "invalid_body"
    return _Body(tuple(model.graph.node), inputs, outputs, types)


def _bind(nodes: Sequence[onnx.NodeProto], attrs: dict[str, onnx.AttributeProto], omitted: set[str]) -> None:
    """In place, subgraphs included: resolve attribute references, blank omitted formal inputs."""
    for n in nodes:
        if omitted:
            for k, name in enumerate(n.input):
                if name in omitted:
                    n.input[k] = ""
        bound = []
        for a in n.attribute:
            if a.ref_attr_name:
                if a.ref_attr_name not in attrs:
                    continue  # neither given nor defaulted: the attribute is absent
                b = onnx.AttributeProto()
                b.CopyFrom(attrs[a.ref_attr_name])
                b.name = a.name
                a = b
            for sub in _subgraphs(a):
                _bind(sub.node, attrs, omitted)
            bound.append(a)
        del n.attribute[:]
        n.attribute.extend(bound)


def _subgraphs(a: onnx.AttributeProto) -> list[onnx.GraphProto]:
    if a.type == onnx.AttributeProto.GRAPH:
        return [a.g]
    return list(a.graphs) if a.type == onnx.AttributeProto.GRAPHS else []


def _walk(nodes: Sequence[onnx.NodeProto]) -> Iterator[onnx.NodeProto]:
    """Every node, subgraph nodes included."""
    for n in nodes:
        yield n
        for a in n.attribute:
            for sub in _subgraphs(a):
                yield from _walk(sub.node)


@functools.lru_cache(maxsize=4096)
def _since(op_type: str, opset: int) -> int:
    """The since_version of `op_type`'s schema at `opset` (-1: no such op)."""
    try:
        return int(onnx.defs.get_schema(op_type, opset, "").since_version)
    except onnx.defs.SchemaError:
        return -1


def _body_model(
    nodes: Sequence[onnx.NodeProto], inputs: Sequence[str], outputs: Sequence[str], types: list[onnx.TypeProto], opset: int
) -> onnx.ModelProto:
    """The body as a model over its bound inputs, typed like the call's inputs."""
    ins = []
    for name, t in zip(inputs, types, strict=False):
        if name:
            vi = onnx.ValueInfoProto(name=name)
            vi.type.CopyFrom(t)
            ins.append(vi)
    outs = [onnx.ValueInfoProto(name=o) for o in outputs if o]
    graph = helper.make_graph(list(nodes), "body", ins, outs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=onnx.IR_VERSION)


def _infer(model: onnx.ModelProto) -> dict[str, onnx.TypeProto] | None:
    """Inferred types of the body's values (symbolic dims not taken from the inputs are cleared);
    None when strict inference finds the body inconsistent with the call's input types. With an
    input of unknown type strict inference cannot judge, and a non-strict one types what it can."""
    typed = all(vi.type.tensor_type.elem_type for vi in model.graph.input)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=typed, strict_mode=typed)
    except Exception:  # noqa: BLE001 - onnx raises InferenceError or bare C++ errors
        return None
    known = {d.dim_param for vi in model.graph.input for d in vi.type.tensor_type.shape.dim if d.dim_param}
    types: dict[str, onnx.TypeProto] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.output]:
        if vi.type.HasField("tensor_type"):
            for d in vi.type.tensor_type.shape.dim:
                if d.dim_param and d.dim_param not in known:
                    d.ClearField("dim_param")
            types[vi.name] = vi.type
    return types


# ----- splicing a body into the graph -----------------------------------------------------


def _splice(rw: Rewriter, g: Graph, node: Node, body: _Body) -> None:
    """Replace `node` in `g` by fresh copies of `body`'s nodes; its outputs keep names and types."""
    builder = GraphBuilder({}, body.types)
    scope: dict[str, Value] = {f: v for f, v in zip(body.inputs, node.inputs, strict=False) if f and v is not None}
    new_nodes = []
    for proto in body.nodes:
        bn = builder.build_node(proto, [scope])
        bn.name = g.fresh_name(f"{node.name}_{proto.op_type}")
        for name, out in zip(proto.output, bn.outputs, strict=True):
            if name:
                scope[name] = out
                out.name = g.fresh_name(f"{node.name}_{name}")
        for sub in bn.subgraphs():
            _rename(g, sub, node.name)
        new_nodes.append(bn)
    value_map = {out: scope[f] for out, f in zip(node.outputs, body.outputs, strict=False) if f and out.name}
    rw.replace([node], new_nodes, value_map, inherit=True)


def expand_selected(
    graph: Graph, opset: int, selects: Callable[[Node], bool], schema_of: Callable[[Node], onnx.defs.OpSchema | None],
    *, depth: int = 1,
) -> Counter[str]:
    """Replace every node `selects` accepts (in every graph) by the function body of `schema_of(node)`.

    The nodes of an inlined body (and of its subgraphs) are offered to `selects` again, up to
    `depth` levels of nesting (1: only the graph's own nodes). Each node is considered once.
    Returns per-op expansion counts and `skipped_<reason>` counts (no schema or body: `skipped_no_body`)."""
    stats: Counter[str] = Counter()
    cache: dict[bytes, _Body | str] = {}
    work: deque[tuple[Node, int]] = deque((n, 0) for g in graph.all_graphs() for n in g)
    inserted: list[Node] = []
    rw = Rewriter(lambda event, n: inserted.append(n) if event is Event.INSERT else None)
    while work:
        node, level = work.popleft()
        g = node.graph
        if g is None or not selects(node):
            continue
        schema = schema_of(node)
        body = _body_for(schema, node, opset, cache) if schema is not None else "no_body"
        if isinstance(body, str):
            stats[f"skipped_{body}"] += 1
            continue
        inserted.clear()
        _splice(rw, g, node, body)
        stats[node.op_type] += 1
        if level + 1 < depth:  # the body's nodes, subgraphs included, are the next level
            work.extend((m, level + 1) for n in inserted for m in _with_inner(n))
    return stats


def _with_inner(node: Node) -> Iterator[Node]:
    """`node`, then every node of its subgraphs."""
    yield node
    for sub in node.subgraphs():
        yield from sub.all_nodes()


def _rename(g: Graph, sub: Graph, prefix: str) -> None:
    """Give every node and value defined in `sub` (and deeper) a fresh name of `g`'s model."""
    for h in sub.all_graphs():
        for v in h.inputs:
            v.name = g.fresh_name(f"{prefix}_{v.name}")
        inits = list(h.initializers.values())
        for v in inits:
            v.name = g.fresh_name(f"{prefix}_{v.name}")
        h.initializers = {v.name: v for v in inits}
        for n in h:
            n.name = g.fresh_name(f"{prefix}_{n.op_type}")
            for o in n.outputs:
                if o.name:
                    o.name = g.fresh_name(f"{prefix}_{o.name}")
