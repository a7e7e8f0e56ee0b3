"""A readable text form of a graph: one line per node, with types."""

from __future__ import annotations

import numpy as np

from lepton_ir.core import Attr, Graph, Node, Value
from lepton_ir.tensor import Tensor
from lepton_ir.types import dtype_name, format_shape


def _type(v: Value) -> str:
    return f"{dtype_name(v.dtype)}{format_shape(v.shape)}"


def _attr(a: Attr) -> str:
    val = a.value
    if isinstance(val, Tensor):
        if val.size <= 8:
            return f"{dtype_name(val.dtype)}{list(val.shape)} {np.array2string(val.numpy().ravel(), separator=',')}"
        return f"<{dtype_name(val.dtype)}{list(val.shape)}>"
    if isinstance(val, Graph):
        return f"<graph {val.name}>"
    if isinstance(val, bytes):
        return repr(val.decode(errors="replace"))
    if isinstance(val, list) and len(val) > 12:
        return f"[{', '.join(map(str, val[:12]))}, ... ({len(val)})]"
    return str(val)


def format_node(node: Node) -> str:
    outs = ", ".join(f"%{o.name or '_'}: {_type(o)}" for o in node.outputs)
    ins = ", ".join("_" if v is None else f"%{v.name}" for v in node.inputs)
    op = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
    attrs = ", ".join(f"{k}={_attr(a)}" for k, a in node.attributes.items())
    return f"{outs} = {op}({ins}){' {' + attrs + '}' if attrs else ''}  # {node.name}"


def format_graph(graph: Graph, indent: str = "") -> str:
    lines = []
    opsets = ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in graph.opset_imports.items())
    lines.append(f"{indent}graph {graph.name} ({len(graph)} nodes{'; ' + opsets if graph.parent is None else ''}) {{")
    for v in graph.inputs:
        lines.append(f"{indent}  input %{v.name}: {_type(v)}")
    n_init = len(graph.initializers)
    if n_init:
        size = sum(v.const_value.nbytes for v in graph.initializers.values() if v.const_value is not None)
        lines.append(f"{indent}  {n_init} initializers, {size / 1e6:.2f} MB")
    for node in graph:
        lines.append(f"{indent}  {format_node(node)}")
        for sub in node.subgraphs():
            lines.append(format_graph(sub, indent + "    "))
    lines.append(f"{indent}  return {', '.join('%' + v.name for v in graph.outputs)}")
    lines.append(f"{indent}}}")
    return "\n".join(lines)
