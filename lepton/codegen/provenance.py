"""Which ONNX node produced which Relax code, by the names that survive into TVM's errors.

TVM's ONNX frontend converts one node at a time (`lepton.codegen.frontend`); `Provenance.record` then walks
that node's Relax code, from its outputs back to its inputs, and notes the Relax operators it calls and the
PrimFuncs it emits. These names are what TVM's build errors show: the pipeline keeps Relax operator names
(`R.nn.conv2d_transpose(...)` in an "Offending call"); legalization names a kernel after its operator's last
name part (`conv2d_transpose`) or a name of its own (`_KERNEL_NAMES`), with a numeric suffix where names
repeat (`add3`); fusion joins its parts' names behind `fused_` (`fused_conv2d10_add8`).
Invariant: the nodes `kernel_nodes` names produced a part of the kernel's name.
"""

from __future__ import annotations

import tvm
from tvm import relax

from lepton.errors import SourceNode

#: Kernel names legalization gives operators besides their last name part and "tir_" + that part
#: (TVM's unary math, `lepton.codegen.vector_math`).
_KERNEL_NAMES: dict[str, tuple[str, ...]] = {
    "relax.permute_dims": ("transpose",),
    "relax.astype": ("cast",),
    "relax.nn.softmax": ("_softmax",),  # lepton.codegen.vector_math
    "relax.nn.log_softmax": ("_softmax",),
}

#: Operators that call a kernel or a packed function rather than compute: their callee is what matters.
CALL_OPS = frozenset({
    "relax.call_tir", "relax.call_tir_inplace", "relax.call_tir_with_grad", "relax.call_dps_packed",
    "relax.call_pure_packed", "relax.call_inplace_packed", "relax.call_builtin_with_ctx",
})


class Provenance:
    """The ONNX nodes behind each Relax operator and each kernel-name part, in conversion order."""

    def __init__(self) -> None:
        self._ops: dict[str, dict[SourceNode, None]] = {}  # ordered sets of nodes
        self._parts: dict[str, dict[SourceNode, None]] = {}
        self._claimed: dict[int, relax.Expr] = {}  # expressions some node's walk reached (kept alive by the dict)

    def record(self, node: SourceNode, bb: relax.BlockBuilder, inputs: list[relax.Expr | None], result: object) -> None:
        """Note the operators and kernels `result` (the node's converted outputs) computes from `inputs`.

        The walk follows variables to their bindings in `bb` and stops at the inputs, at constants and
        parameters, and at code an earlier node's walk reached, so code is attributed to one node only.
        """
        stop = {e.__chandle__() for e in inputs if isinstance(e, relax.Expr)}
        stack = list(result) if isinstance(result, list | tuple) else [result]
        while stack:
            e = stack.pop()
            if not isinstance(e, relax.Expr):
                continue
            key = e.__chandle__()
            if key in stop or key in self._claimed:
                continue
            self._claimed[key] = e
            if isinstance(e, relax.Var):
                bound = bb.lookup_binding(e)
                if bound is not None:
                    stack.append(bound)
            elif isinstance(e, relax.Call):
                self._note_call(node, e)
                stack.extend(e.args)
            elif isinstance(e, relax.Tuple):
                stack.extend(e.fields)
            elif isinstance(e, relax.TupleGetItem):
                stack.append(e.tuple_value)

    def _note_call(self, node: SourceNode, call: relax.Call) -> None:
        if isinstance(call.op, tvm.ir.Op):
            op = str(call.op.name)
            if op not in CALL_OPS:
                _add(self._ops, op, node)
                short = op.rsplit(".", 1)[-1]
                for part in (short, "tir_" + short, *_KERNEL_NAMES.get(op, ())):
                    _add(self._parts, part, node)
            elif call.args and isinstance(call.args[0], tvm.ir.GlobalVar):
                _add(self._parts, _base_name(str(call.args[0].name_hint)), node)
        elif isinstance(call.op, tvm.ir.GlobalVar):
            _add(self._parts, _base_name(str(call.op.name_hint)), node)

    def op_nodes(self, op: str) -> list[SourceNode]:
        """The nodes whose code calls the Relax operator `op` (for example "relax.nn.conv2d")."""
        return list(self._ops.get(op, ()))

    def kernel_nodes(self, name: str, whole: bool = False) -> list[SourceNode] | None:
        """The nodes behind the kernel (PrimFunc) `name`; None if no part of the name was recorded (with
        `whole`: if not every part was).

        Parts no node produced (a Lepton pass's own ops: Winograd's `strided_slice`) are passed over. A fused
        kernel's parts may each come from many nodes (every `add` of a model); the nodes named are those of its
        most specific parts, the ones the fewest nodes produce.
        """
        words = name.removeprefix("fused_").split("_")
        covered, parts = self._split(words)
        if not parts or (whole and covered < len(words)):
            return None
        fewest = min(len(self._parts[p]) for p in parts)
        return list(dict.fromkeys(n for p in parts if len(self._parts[p]) == fewest for n in self._parts[p]))

    def _split(self, words: list[str]) -> tuple[int, list[str]]:
        """The recorded parts the "_"-joined `words` are made of (each perhaps with a numeric suffix), and how
        many words they cover: the split that covers the most words, in the fewest parts."""
        # best[i]: (words covered, -parts, parts) over the first i words
        best: list[tuple[int, int, list[str]]] = [(0, 0, [])]
        for end in range(1, len(words) + 1):
            covered, neg, parts = best[end - 1]
            options = [(covered, neg, parts)]  # word end-1 left out
            for start in range(end):
                part = self._part("_".join(words[start:end]))
                if part is not None:
                    covered, neg, parts = best[start]
                    options.append((covered + end - start, neg - 1, [*parts, part]))
            best.append(max(options, key=lambda o: (o[0], o[1])))
        return best[-1][0], best[-1][2]

    def _part(self, text: str) -> str | None:
        """The recorded part `text` names, itself or without TVM's numeric suffix ("conv2d10" -> "conv2d")."""
        for candidate in (text, _base_name(text)):
            if candidate in self._parts:
                return candidate
        return None


def _add(table: dict[str, dict[SourceNode, None]], key: str, node: SourceNode) -> None:
    table.setdefault(key, {})[node] = None


def _base_name(name: str) -> str:
    """A kernel name without the numeric suffix TVM adds to repeated names ("add3" -> "add")."""
    return name.rstrip("0123456789") or name
