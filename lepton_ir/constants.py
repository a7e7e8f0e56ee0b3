"""Compile-time constants: the one lookup every pass uses.

A value is a constant when it is an initializer that is not an overridable graph input (of
its graph or an enclosing one), or the output of a `Constant` node (dense forms; sparse and
string forms are not constants here).
"""

from __future__ import annotations

import numpy as np

from lepton_ir.core import Graph, Node, Value
from lepton_ir.tensor import Tensor


def constant_tensor(graph: Graph, value: Value | None) -> Tensor | None:
    """`value`'s constant as a `Tensor` (initializer data is not materialized), or None."""
    if value is None:
        return None
    if value.const_value is not None:
        g: Graph | None = graph
        while g is not None:
            if g.is_graph_input(value):
                return None
            g = g.parent.graph if g.parent is not None else None
        return value.const_value
    node = value.producer
    if node is not None and node.op_type == "Constant" and not node.domain:
        return constant_node_tensor(node)
    return None


def constant_value(graph: Graph, value: Value | None) -> np.ndarray | None:
    """`value`'s constant as a numpy array, or None (same rule as `constant_tensor`)."""
    t = constant_tensor(graph, value)
    return None if t is None else t.numpy()


def is_constant(graph: Graph, value: Value | None) -> bool:
    return constant_tensor(graph, value) is not None


def constant_node_tensor(node: Node) -> Tensor | None:
    """The value of a `Constant` node with exactly one dense attribute form, else None."""
    if len(node.attributes) != 1:
        return None
    key, a = next(iter(node.attributes.items()))
    if key == "value":
        return a.value if isinstance(a.value, Tensor) else None
    arrays = {
        "value_float": np.float32, "value_floats": np.float32, "value_int": np.int64, "value_ints": np.int64,
    }
    if key in arrays:
        return Tensor.from_numpy(np.array(a.value, dtype=arrays[key]))
    return None
