"""ONNX -> Lepton IR, with every check a hostile or broken file needs.

Order: parse -> every string is UTF-8 -> version/opset/domain checks -> anonymous dims (`-1`, "?")
made unknown -> structural checks on the protobuf (clear, named errors: duplicates, undefined inputs, cycles; nodes sorted) ->
local functions inlined -> tensor sizes and external data checked (never read, except the
few tensors held in node attributes or subgraphs, which the checker needs inline) -> onnx
checker and strict shape inference on a light copy without the weights -> IR.
Nothing is ever written.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import onnx
import onnx.inliner
from google.protobuf.message import DecodeError, Message

from lepton_ir.core import Attr, Graph, Node, Value
from lepton_ir.errors import InvalidModelError, ModelLoadError, UnsupportedModelError
from lepton_ir.external import resolve_external
from lepton_ir.structure import all_graphs, all_node_protos, check_and_sort, node_subgraphs
from lepton_ir.tensor import Tensor, read_region
from lepton_ir.types import Shape, dtype_bits
from lepton_ir.verifier import verify

#: Operator-set domains Lepton takes (besides domains of the model's own functions).
KNOWN_DOMAINS = {"": onnx.defs.onnx_opset_version(), "ai.onnx.ml": 5, "com.microsoft": 1, "lepton": 1,
                 "ai.onnx.preview": 1, "ai.onnx.preview.training": 1}  # ONNX's own preview domains
MIN_IR_VERSION = 3
ModelSource = str | os.PathLike | bytes | onnx.ModelProto


def load(source: ModelSource, *, base_dir: str | None = None) -> Graph:
    """Import a model from a path, bytes or ModelProto into a verified `Graph`.

    External data is resolved relative to the model file's folder (or `base_dir` for bytes
    and protos) and is read lazily, only when a tensor's value is needed.
    """
    model, base_dir = _parse(source, base_dir)
    _check_text(model, "model")
    _drop_unused_domains(model)
    _check_versions(model)
    _check_value_types(model.graph)
    _anonymous_dims_unknown(model)
    sorted_nodes = check_and_sort(model.graph)
    del model.graph.node[:]
    model.graph.node.extend(sorted_nodes)
    if model.functions:
        model = _inline(model)
    regions = _check_tensors(model, base_dir)
    light = _light_copy(model, regions)
    _run_checker(light)
    types = _infer_types(light)
    graph = GraphBuilder(regions, types).build_model(model)
    if os.environ.get("LEPTON_DEBUG") == "1":  # the builder keeps the invariants; tests check that
        verify(graph)
    return graph


def _parse(source: ModelSource, base_dir: str | None) -> tuple[onnx.ModelProto, str | None]:
    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)
        what = "the ModelProto"
    elif isinstance(source, bytes | bytearray | memoryview):
        model = _parse_bytes(bytes(source), "the given bytes")
        what = "the given bytes"
    elif isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise ModelLoadError(f"model file {path!r} does not exist")
        if not os.path.isfile(path):
            raise ModelLoadError(f"{path!r} is not a file")
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ModelLoadError(f"cannot read model file {path!r}: {e.strerror or e}") from None
        model = _parse_bytes(data, f"model file {path!r}")
        what = f"model file {path!r}"
        if base_dir is None:
            base_dir = os.path.dirname(os.path.abspath(path))
    else:
        raise ModelLoadError(f"cannot load a model from {type(source).__name__}; give a path, bytes or onnx.ModelProto")
    if not model.HasField("graph") or model.ir_version == 0:
        raise ModelLoadError(f"{what} is not an ONNX model (no graph or no ir_version); is it truncated or another format?")
    return model, base_dir


def _parse_bytes(data: bytes, what: str) -> onnx.ModelProto:
    if not data:
        raise ModelLoadError(f"{what} is empty (0 bytes)")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ModelLoadError(f"{what} is not a valid ONNX protobuf ({len(data)} bytes; truncated or not ONNX): {e}") from None
    return model


def _check_text(msg: Message, path: str) -> None:
    """Every string field (names, op types, domains, doc strings) must be UTF-8 text.

    protobuf hands back invalid UTF-8 as `bytes`, which would flow into the IR as names.
    Only string and message fields are read: tensor data (bytes fields) is never touched.
    """
    if isinstance(msg, onnx.NodeProto) and _plain_text_node(msg):
        return
    strings, messages = _text_fields(msg.DESCRIPTOR)
    for name, repeated in strings:
        values = getattr(msg, name) if repeated else [getattr(msg, name)]
        for i, v in enumerate(values):
            if not isinstance(v, str):
                where = f"{path}.{name}" + (f"[{i}]" if repeated else "")
                raise InvalidModelError(f"{where} ({bytes(v[:40])!r}) is not valid UTF-8 text; the file is corrupt")
    for name, repeated in messages:
        if repeated:
            for i, m in enumerate(getattr(msg, name)):
                _check_text(m, f"{path}.{name}[{i}]")
        elif msg.HasField(name):
            _check_text(getattr(msg, name), f"{path}.{name}")


def _plain_text_node(n: onnx.NodeProto) -> bool:
    """Fast path for the common node: every string is text and no attribute nests messages."""
    if not all(type(x) is str for x in (n.name, n.op_type, n.domain, n.doc_string, n.overload, *n.input, *n.output)):
        return False
    for a in n.attribute:
        if a.type not in _FLAT_ATTRS or type(a.name) is not str or type(a.doc_string) is not str or type(a.ref_attr_name) is not str:
            return False
    return True


_FLAT_ATTRS = {
    onnx.AttributeProto.INT, onnx.AttributeProto.INTS, onnx.AttributeProto.FLOAT, onnx.AttributeProto.FLOATS,
    onnx.AttributeProto.STRING, onnx.AttributeProto.STRINGS,
}


def _text_fields(descriptor: object) -> tuple[list[tuple[str, bool]], list[tuple[str, bool]]]:
    key = descriptor.full_name  # type: ignore[attr-defined]
    if key not in _TEXT_FIELDS:
        strings, messages = [], []
        for f in descriptor.fields:  # type: ignore[attr-defined]
            repeated = f.is_repeated if hasattr(f, "is_repeated") else f.label == f.LABEL_REPEATED
            if f.type == f.TYPE_STRING:
                strings.append((f.name, repeated))
            elif f.type == f.TYPE_MESSAGE:
                messages.append((f.name, repeated))
        _TEXT_FIELDS[key] = (strings, messages)
    return _TEXT_FIELDS[key]


_TEXT_FIELDS: dict[str, tuple[list[tuple[str, bool]], list[tuple[str, bool]]]] = {}


def _drop_unused_domains(model: onnx.ModelProto) -> None:
    """Forget opset imports of domains Lepton does not know that no node uses: onnxruntime's quantization
    tools, for one, import `ai.onnx.training` into every model they write without using it."""
    used = {n.domain for n in all_node_protos(model.graph)}
    used |= {n.domain for f in model.functions for n in f.node} | {f.domain for f in model.functions}
    keep = [i for i in model.opset_import
            if ("" if i.domain == "ai.onnx" else i.domain) in KNOWN_DOMAINS or i.domain in used]
    if len(keep) < len(model.opset_import):
        del model.opset_import[:]
        model.opset_import.extend(keep)


def _check_versions(model: onnx.ModelProto) -> None:
    if not MIN_IR_VERSION <= model.ir_version <= onnx.IR_VERSION:
        raise UnsupportedModelError(
            f"model IR version {model.ir_version} is not supported (Lepton takes {MIN_IR_VERSION}..{onnx.IR_VERSION}); "
            "re-export the model with a current exporter"
        )
    function_domains = {f.domain for f in model.functions}
    for imp in model.opset_import:
        domain = "" if imp.domain == "ai.onnx" else imp.domain
        if domain in function_domains:
            continue
        if domain not in KNOWN_DOMAINS:
            raise UnsupportedModelError(
                f"operator domain {imp.domain!r} (version {imp.version}) is not supported; "
                f"supported domains: {sorted(d or 'ai.onnx' for d in KNOWN_DOMAINS)}"
            )
        if imp.version > KNOWN_DOMAINS[domain] or imp.version < 1:
            raise UnsupportedModelError(
                f"opset {imp.version} of domain {imp.domain or 'ai.onnx'!r} is not supported "
                f"(Lepton takes 1..{KNOWN_DOMAINS[domain]}); convert the model to a supported opset"
            )
    imported = {"" if i.domain == "ai.onnx" else i.domain for i in model.opset_import}
    bad = [
        f"{n.name or '<unnamed>'} ({n.domain}::{n.op_type})"
        for n in all_node_protos(model.graph)
        if ("" if n.domain == "ai.onnx" else n.domain) not in imported
    ]
    if bad:
        raise UnsupportedModelError(f"nodes use operator domains the model does not import: {', '.join(bad[:20])}")


def _check_value_types(graph: onnx.GraphProto) -> None:
    for g in all_graphs(graph):
        for sp in g.sparse_initializer:
            raise UnsupportedModelError(
                f"sparse initializer {sp.values.name!r} is not supported; store it as a dense initializer"
            )
    for vi in list(graph.input) + list(graph.output):
        kind = vi.type.WhichOneof("value")
        if kind != "tensor_type":
            raise UnsupportedModelError(
                f"graph {'input' if vi in graph.input else 'output'} {vi.name!r} has {kind or 'no'} type; "
                "Lepton compiles tensor inputs and outputs only (no sequence, map, optional or sparse types)"
            )
        if vi.type.tensor_type.elem_type not in onnx.TensorProto.DataType.values():
            raise InvalidModelError(
                f"graph input/output {vi.name!r} has an unknown element type ({vi.type.tensor_type.elem_type})"
            )
        if vi.type.tensor_type.elem_type == onnx.TensorProto.STRING:
            raise UnsupportedModelError(f"graph input/output {vi.name!r} is a string tensor; string tensors are not supported")


def _anonymous_dims_unknown(model: onnx.ModelProto) -> None:
    """In place, in the value infos of every graph and function: a `dim_value` below 0 (paddle2onnx writes
    dynamic dims as -1; onnxruntime reads them as dynamic) and a `dim_param` of "?" (paddle2onnx's name for
    "unknown", given to several unrelated dims of one input) become unknown dims. After this no negative static
    dim exists, and no two dims are tied together by the placeholder "?"."""
    bodies = [g for f in model.functions for n in f.node for g in node_subgraphs(n)]
    graphs = [g for top in (model.graph, *bodies) for g in all_graphs(top)]
    infos = [vi for g in graphs for vi in (*g.input, *g.output, *g.value_info)]
    for vi in [*infos, *(vi for f in model.functions for vi in f.value_info)]:
        _clear_anonymous(vi.type)


def _clear_anonymous(t: onnx.TypeProto) -> None:
    kind = t.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        for d in getattr(t, kind).shape.dim:
            which = d.WhichOneof("value")
            if (which == "dim_value" and d.dim_value < 0) or (which == "dim_param" and d.dim_param == "?"):
                d.ClearField(which)
    elif kind in ("sequence_type", "optional_type"):
        _clear_anonymous(getattr(t, kind).elem_type)
    elif kind == "map_type":
        _clear_anonymous(t.map_type.value_type)


def _all_tensor_protos(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    for g in all_graphs(model.graph):
        yield from g.initializer
        for node in g.node:
            for a in node.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    yield a.t
                elif a.type == onnx.AttributeProto.TENSORS:
                    yield from a.tensors


def _check_tensors(model: onnx.ModelProto, base_dir: str | None) -> dict[int, tuple[onnx.TensorProto, object]]:
    """Check every tensor's data size; resolve external data. Returns regions keyed by proto id.

    Each entry keeps its proto alive: protobuf hands out a new wrapper object (and so,
    maybe, a recycled id) each time a message is reached unless the last one is still
    referenced, so a bare `id()` key could attach one tensor's data to another tensor.
    """
    regions: dict[int, tuple[onnx.TensorProto, object]] = {}
    for t in _all_tensor_protos(model):
        if any(d < 0 for d in t.dims):
            raise InvalidModelError(f"tensor {t.name!r} has a negative dimension {list(t.dims)}")
        if t.data_type == onnx.TensorProto.UNDEFINED or t.data_type not in onnx.TensorProto.DataType.values():
            raise InvalidModelError(f"tensor {t.name!r} has an undefined data type ({t.data_type})")
        if t.data_type == onnx.TensorProto.STRING:
            continue
        size = math.prod(t.dims)  # python ints: a huge declared shape must not wrap around
        nbytes = (size * dtype_bits(t.data_type) + 7) // 8
        if t.data_location == onnx.TensorProto.EXTERNAL:
            regions[id(t)] = (t, resolve_external(t, base_dir, nbytes))
        elif t.HasField("raw_data"):
            if len(t.raw_data) != nbytes:
                raise InvalidModelError(
                    f"tensor {t.name!r} declares shape {list(t.dims)} ({nbytes} bytes) but holds {len(t.raw_data)} bytes"
                )
        else:
            field = onnx.helper.tensor_dtype_to_field(t.data_type)
            count = len(getattr(t, field))
            if count != _typed_count(t.data_type, size):
                raise InvalidModelError(f"tensor {t.name!r} declares shape {list(t.dims)} ({size} elements) but holds {count} values")
    return regions


def _typed_count(dtype: int, size: int) -> int:
    """How many entries of its typed field (int32_data, float_data, ...) a tensor of `size` elements holds."""
    bits = dtype_bits(dtype)
    if bits < 8 and bits != 6:  # 4-bit and 2-bit types are packed into the bytes of int32_data
        per = 8 // bits
        return (size + per - 1) // per
    if dtype in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128):
        return 2 * size
    return size


def _inline(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.inliner.inline_local_functions(model)
    except Exception as e:  # noqa: BLE001 - the inliner raises bare C++ errors
        raise InvalidModelError(f"cannot inline the model's local functions: {e}") from None


def _run_checker(model: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(model, full_check=False)
    except (onnx.checker.ValidationError, ValueError) as e:
        raise InvalidModelError(f"the ONNX checker rejects the model: {_first_line(e)}") from None


def _infer_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """Strict shape inference; the inferred type of every named value (value_info and outputs).

    Data propagation (which resolves Shape->...->Reshape targets) allocates per element of
    1-D tensors, so it runs only when no 1-D value is longer than `DATA_PROP_MAX_LEN`:
    a huge declared shape must not exhaust memory.
    """
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        if _max_1d_length(inferred) <= DATA_PROP_MAX_LEN:
            inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError, ValueError) as e:
        raise InvalidModelError(f"shape inference fails, the model is inconsistent: {_first_line(e)}") from None
    types: dict[str, onnx.TypeProto] = {}
    for g in all_graphs(inferred.graph):
        for vi in list(g.value_info) + list(g.output):
            types.setdefault(vi.name, vi.type)
    return types


DATA_PROP_MAX_LEN = 1 << 16


def _max_1d_length(model: onnx.ModelProto) -> int:
    longest = 0
    for g in all_graphs(model.graph):
        for vi in [*g.input, *g.value_info, *g.output]:
            dims = vi.type.tensor_type.shape.dim
            if len(dims) == 1 and dims[0].HasField("dim_value"):
                longest = max(longest, dims[0].dim_value)
        for t in g.initializer:
            if len(t.dims) == 1:
                longest = max(longest, t.dims[0])
    return longest


def _light_copy(model: onnx.ModelProto, regions: dict[int, tuple[onnx.TensorProto, object]]) -> onnx.ModelProto:
    """The model with its large and external initializers turned into typed graph inputs.

    The checker and shape inference never need weight values (only small shape tensors),
    and onnx would otherwise copy every weight and resolve external files against the
    process's working directory. Top-level graph only; subgraph initializers are small.
    """
    light = onnx.ModelProto(ir_version=model.ir_version)
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    g, lg = model.graph, light.graph
    lg.name = g.name
    lg.node.extend(g.node)
    lg.input.extend(g.input)
    lg.output.extend(g.output)
    lg.value_info.extend(g.value_info)
    lg.sparse_initializer.extend(g.sparse_initializer)
    inputs = {vi.name for vi in g.input}
    for t in g.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL and t.ByteSize() <= _LIGHT_MAX_BYTES:
            lg.initializer.append(t)
        elif t.name not in inputs:
            lg.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    # External tensors still in the copy (node attributes, subgraph initializers) get their
    # checked data inline: onnx would look for their files relative to the working directory.
    for src, dst in zip(_nested_tensor_protos(g), _nested_tensor_protos(lg), strict=True):
        entry = regions.get(id(src))
        if entry is not None and entry[0] is src:
            del dst.external_data[:]
            dst.data_location = onnx.TensorProto.DEFAULT
            dst.raw_data = read_region(entry[1])  # type: ignore[arg-type]
    return light


def _nested_tensor_protos(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Node attribute tensors of every graph and initializers of subgraphs, in a fixed order."""
    for g in all_graphs(graph):
        if g is not graph:
            yield from g.initializer
        for node in g.node:
            for a in node.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    yield a.t
                elif a.type == onnx.AttributeProto.TENSORS:
                    yield from a.tensors


_LIGHT_MAX_BYTES = 4096


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def dtype_and_shape(t: onnx.TypeProto) -> tuple[int | None, Shape]:
    """The element type and shape of a tensor type (None for what it leaves unknown, or for a non-tensor type)."""
    if t.WhichOneof("value") != "tensor_type":
        return None, None
    tt = t.tensor_type
    dtype = tt.elem_type or None
    if not tt.HasField("shape"):
        return dtype, None
    dims: list[int | str | None] = []
    for d in tt.shape.dim:
        which = d.WhichOneof("value")
        dims.append(d.dim_value if which == "dim_value" else d.dim_param if which == "dim_param" else None)
    return dtype, tuple(dims)


class GraphBuilder:
    """Builds IR graphs from checked, sorted, shape-inferred protos."""

    def __init__(self, regions: dict[int, tuple[onnx.TensorProto, object]], types: dict[str, onnx.TypeProto]) -> None:
        self.regions = regions
        self.types = types
        self.names: set[str] = set()  # every name in the model; shared by all graphs built
        self.node_names: set[str] = set()

    def tensor(self, t: onnx.TensorProto) -> Tensor:
        entry = self.regions.get(id(t))
        return Tensor.from_proto(t, entry[1] if entry is not None and entry[0] is t else None)  # type: ignore[arg-type]

    def build_model(self, model: onnx.ModelProto) -> Graph:
        opsets = {("" if i.domain == "ai.onnx" else i.domain): i.version for i in model.opset_import}
        for g in all_graphs(model.graph):
            self.names.update(v.name for v in g.input)
            self.names.update(t.name for t in g.initializer)
            for n in g.node:
                self.names.add(n.name)
                self.names.update(n.output)
        graph = self.build_graph(model.graph, scope=[])
        graph.opset_imports = opsets
        graph.ir_version = model.ir_version
        graph.producer_name = model.producer_name
        graph.producer_version = model.producer_version
        graph.model_version = model.model_version
        graph.model_domain = model.domain
        graph.model_doc = model.doc_string
        graph.metadata_props = {p.key: p.value for p in model.metadata_props}
        return graph

    def build_graph(self, gp: onnx.GraphProto, scope: list[dict[str, Value]]) -> Graph:
        local: dict[str, Value] = {}
        chain = [*scope, local]
        graph = Graph(gp.name or "main")
        graph._names = self.names
        graph.doc = gp.doc_string
        for t in gp.initializer:
            v = Value(t.name, t.data_type, tuple(t.dims), const_value=self.tensor(t))
            local[t.name] = v
            graph.add_initializer(v)
        for vi in gp.input:
            if vi.name in local:
                v = local[vi.name]  # an initializer that is also an (overridable) input
                if vi.type.HasField("tensor_type"):  # its declared type says what a feed may be
                    dtype, shape = dtype_and_shape(vi.type)
                    v.dtype, v.shape = dtype or v.dtype, shape
            else:
                dtype, shape = dtype_and_shape(vi.type)
                v = Value(vi.name, dtype, shape)
                local[vi.name] = v
            v.doc = vi.doc_string
            graph.inputs.append(v)
        for np_ in gp.node:
            node = self.build_node(np_, chain)
            if not node.name or node.name in self.node_names:
                node.name = graph.fresh_name(node.name or np_.op_type.lower())
            self.node_names.add(node.name)
            omitted = [o for o in node.outputs if not o.name]
            graph.append(node)
            for o in omitted:
                o.name = ""  # an omitted optional output stays omitted on export
            for o in node.outputs:
                if o.name:
                    local[o.name] = o
        for vi in gp.output:
            v = self.lookup(vi.name, chain)
            dtype, shape = dtype_and_shape(vi.type)
            if v.dtype is None:
                v.dtype = dtype
            if shape is not None and v.shape is None:
                v.shape = shape
            if vi.doc_string:
                v.doc = vi.doc_string
            graph.outputs = (*graph.outputs, v)
        return graph

    def lookup(self, name: str, chain: list[dict[str, Value]]) -> Value:
        for scope in reversed(chain):
            if name in scope:
                return scope[name]
        raise InvalidModelError(f"value {name!r} is used but never defined")  # structure check makes this unreachable

    def build_node(self, np_: onnx.NodeProto, chain: list[dict[str, Value]]) -> Node:
        inputs = [self.lookup(n, chain) if n else None for n in np_.input]
        outputs = []
        for name in np_.output:
            dtype, shape = dtype_and_shape(self.types[name]) if name in self.types else (None, None)
            outputs.append(Value(name, dtype, shape))
        attrs = {a.name: self.attr(a, chain) for a in np_.attribute}
        node = Node(np_.domain, np_.op_type, inputs, attrs, outputs=outputs, name=np_.name)
        node.overload = np_.overload
        node.doc = np_.doc_string
        return node

    def attr(self, a: onnx.AttributeProto, chain: list[dict[str, Value]]) -> Attr:
        A = onnx.AttributeProto
        if a.ref_attr_name:
            raise UnsupportedModelError(f"attribute {a.name!r} refers to a function attribute outside a function")
        if a.type == A.TENSOR:
            return Attr(a.type, self.tensor(a.t))
        if a.type == A.TENSORS:
            return Attr(a.type, [self.tensor(t) for t in a.tensors])
        if a.type == A.GRAPH:
            return Attr(a.type, self.build_graph(a.g, chain))
        if a.type == A.GRAPHS:
            return Attr(a.type, [self.build_graph(g, chain) for g in a.graphs])
        if a.type in (A.SPARSE_TENSOR, A.SPARSE_TENSORS, A.TYPE_PROTO, A.TYPE_PROTOS):
            raw = A()
            raw.CopyFrom(a)
            return Attr(a.type, raw)
        return Attr(a.type, onnx.helper.get_attribute_value(a))
