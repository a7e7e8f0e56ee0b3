"""Lepton IR -> ONNX. Exact: imported tensors are written back from their original protos.

`save` writes large initializers to one external-data file next to the model when asked,
or automatically when the model would not fit in a 2 GB protobuf.
"""

from __future__ import annotations

import os

import onnx

from lepton_ir.core import Attr, Graph, Node, Value
from lepton_ir.errors import UserError
from lepton_ir.functions import functions_for
from lepton_ir.tensor import Tensor

PROTOBUF_LIMIT = 2**31 - 1
#: Tensors at least this large go to external data when external data is used.
EXTERNAL_MIN_BYTES = 1024


def value_info(v: Value) -> onnx.ValueInfoProto:
    """The ValueInfoProto of `v`: name, tensor type and shape (dims as written), doc string."""
    vi = onnx.ValueInfoProto()
    vi.name = v.name
    if v.dtype is not None:
        tt = vi.type.tensor_type
        tt.elem_type = v.dtype
        if v.shape is not None:
            shape = tt.shape
            shape.SetInParent()
            for d in v.shape:
                dim = shape.dim.add()
                if isinstance(d, int):
                    dim.dim_value = d
                elif isinstance(d, str):
                    dim.dim_param = d
    if v.doc:
        vi.doc_string = v.doc
    return vi


class ProtoWriter:
    """Turns graphs into protos; with `data_file`, streams big tensors into it."""

    def __init__(self, data_file: str | None) -> None:
        self.data_file = data_file
        self.data_name = os.path.basename(data_file) if data_file else ""
        self.offset = 0
        self.fh = open(data_file, "wb") if data_file else None  # noqa: SIM115 - closed in close()

    def close(self) -> None:
        if self.fh:
            self.fh.close()

    def tensor(self, t: Tensor, name: str) -> onnx.TensorProto:
        if self.fh is None or t.nbytes < EXTERNAL_MIN_BYTES or t.dtype == onnx.TensorProto.STRING:
            return t.to_proto(name)
        data = t.raw_bytes()
        pad = (-self.offset) % 64
        self.fh.write(b"\0" * pad)
        self.offset += pad
        proto = onnx.TensorProto()
        proto.name = name
        proto.data_type = t.dtype
        proto.dims.extend(t.shape)
        proto.data_location = onnx.TensorProto.EXTERNAL
        for k, v in (("location", self.data_name), ("offset", str(self.offset)), ("length", str(len(data)))):
            e = proto.external_data.add()
            e.key, e.value = k, v
        self.fh.write(data)
        self.offset += len(data)
        return proto

    def attr(self, name: str, a: Attr) -> onnx.AttributeProto:
        A = onnx.AttributeProto
        if isinstance(a.value, A):
            out = A()
            out.CopyFrom(a.value)
            out.name = name
            return out
        if a.type == A.TENSOR:
            out = A(name=name, type=A.TENSOR)
            out.t.CopyFrom(self.tensor(a.value, a.value.name))
            return out
        if a.type == A.TENSORS:
            out = A(name=name, type=A.TENSORS)
            out.tensors.extend(self.tensor(t, t.name) for t in a.value)
            return out
        if a.type == A.GRAPH:
            out = A(name=name, type=A.GRAPH)
            out.g.CopyFrom(self.graph(a.value))
            return out
        if a.type == A.GRAPHS:
            out = A(name=name, type=A.GRAPHS)
            out.graphs.extend(self.graph(g) for g in a.value)
            return out
        return onnx.helper.make_attribute(name, a.value, attr_type=a.type)

    def node(self, n: Node) -> onnx.NodeProto:
        p = onnx.NodeProto()
        p.op_type = n.op_type
        p.domain = n.domain
        p.name = n.name
        if n.overload:
            p.overload = n.overload
        if n.doc:
            p.doc_string = n.doc
        p.input.extend("" if v is None else v.name for v in n.inputs)
        p.output.extend(v.name for v in n.outputs)
        p.attribute.extend(self.attr(k, a) for k, a in n.attributes.items())
        return p

    def graph(self, g: Graph) -> onnx.GraphProto:
        p = onnx.GraphProto()
        p.name = g.name
        if g.doc:
            p.doc_string = g.doc
        p.input.extend(value_info(v) for v in g.inputs)
        p.output.extend(value_info(v) for v in g.outputs)
        p.initializer.extend(self.tensor(v.const_value, name) for name, v in g.initializers.items())  # type: ignore[arg-type]
        p.node.extend(self.node(n) for n in g)
        outputs = {id(v) for v in g.outputs}
        p.value_info.extend(
            value_info(o) for n in g for o in n.outputs if o.name and o.dtype is not None and id(o) not in outputs
        )
        return p

    def model(self, g: Graph) -> onnx.ModelProto:
        m = onnx.ModelProto()
        m.ir_version = g.ir_version
        m.producer_name = g.producer_name
        m.producer_version = g.producer_version
        if g.model_version:
            m.model_version = g.model_version
        if g.model_domain:
            m.domain = g.model_domain
        if g.model_doc:
            m.doc_string = g.model_doc
        for domain, version in g.opset_imports.items():
            m.opset_import.add(domain=domain, version=version)
        for k, v in g.metadata_props.items():
            m.metadata_props.add(key=k, value=v)
        m.graph.CopyFrom(self.graph(g))
        m.functions.extend(functions_for(g))  # the bodies of the Lepton-domain ops it uses (lepton_ir.functions)
        return m


def to_onnx(graph: Graph) -> onnx.ModelProto:
    """The model as an in-memory ModelProto (all tensor data inline)."""
    return ProtoWriter(None).model(graph)


def save(graph: Graph, path: str | os.PathLike, *, external_data: bool | None = None) -> list[str]:
    """Write the model to `path`; returns the files written.

    external_data: True puts every tensor of >= 1 KiB in `<file>.data` beside the model;
    None (default) does so only when the model would exceed protobuf's 2 GB limit.
    """
    path = os.fspath(path)
    if external_data is None:
        total = sum(v.const_value.nbytes for g in graph.all_graphs() for v in g.initializers.values() if v.const_value)
        external_data = total > PROTOBUF_LIMIT - 64 * 2**20
    data_path = path + ".data" if external_data else None
    _read_tensors_from(graph, {os.path.realpath(p) for p in (path, data_path) if p})
    writer = ProtoWriter(data_path)
    try:
        model = writer.model(graph)
    finally:
        writer.close()
    blob = model.SerializeToString()
    if len(blob) > PROTOBUF_LIMIT:
        raise UserError(f"the model is {len(blob)} bytes, over protobuf's 2 GB limit; save with external_data=True")
    with open(path, "wb") as f:
        f.write(blob)
    return [path] + ([data_path] if data_path else [])


def _read_tensors_from(graph: Graph, files: set[str]) -> None:
    """Read into memory every tensor whose external data lives in one of `files`.

    Saving over the files a model was loaded from (`save(load(p), p)`) truncates them
    before their tensors are read back; this keeps those tensors' data.
    """
    for g in graph.all_graphs():
        tensors = [v.const_value for v in g.initializers.values() if v.const_value is not None]
        for n in g.nodes:
            for a in n.attributes.values():
                if isinstance(a.value, Tensor):
                    tensors.append(a.value)
                elif a.type == onnx.AttributeProto.TENSORS:
                    tensors.extend(a.value)
        for t in tensors:
            if t._external is not None and os.path.realpath(t._external.path) in files:
                t._proto = t._load_proto()
                t._external = None
