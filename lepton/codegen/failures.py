"""TVM failures as `CodegenError`s that say what failed: the ONNX nodes, TVM's reason, the pass.

TVM's text (an exception's message, a tool's output) is read for the line that states the error
(`error_line`: not the IR it prints, not a traceback frame) and for the Relax operators and kernels it
names before any IR dump (`named`); a `Provenance` maps those names to ONNX nodes. A name that maps to no
node is still reported, as what TVM named. The full text goes into the error's `details`; the errors are
raised `from None` (no traceback from inside TVM), TVM's exception stays reachable as `__context__`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import tvm

from lepton.codegen.provenance import CALL_OPS, Provenance
from lepton.errors import CodegenError, SourceNode

#: Lines that are not the statement of an error: traceback frames, IR comments and IR.
_NOISE = re.compile(r"""
    \s*(Traceback\b|File\ "|\d+:\ |\#|\^+$|[~^\s]+$)     # Python/C++ traceback frames, markers; IR comments
    | \s*(R|T|I)\.\w                                      # TVMScript: R.nn.conv2d(...), T.handle
    | \s*[@%]?\w+(\ *:\ *R\.\w.*)?\ =\ \S                 # IR bindings: lv = ..., x: R.Tensor = ...
    | \s*(def|class|with|return|@)\b                      # IR blocks
    | \s*[(){}\[\]]                                       # IR punctuation
""", re.VERBOSE)
#: An exception line at the end of a Python traceback.
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Failure)\b: \S")
#: A line that says it states an error ("error:", "fatal error:", "InternalError:", "error #20").
_ERROR_WORD = re.compile(r"(\b[Ee]rror|Error|\bERROR)\b\s*[:#]")
#: Where an IR dump starts in TVM's text; names after it are the module's, not the error's.
_DUMP = re.compile(r"^\s*(#\s*from tvm\.script|@I\.ir_module|@R\.function|@T\.prim_func|class Module\b|# Metadata)")
#: A Relax operator: `R.nn.conv2d` in TVMScript, `relax.nn.conv2d` in prose (a registered name).
_RELAX_OP = re.compile(r"\b(?:R|relax)\.([a-z_][\w.]*[a-z_0-9])")
#: A kernel for sure: a fused kernel, a global function (`cls.NAME`, `@NAME`).
_KERNEL = re.compile(r"\b(fused_\w+)|\bcls\.(\w+)|@(\w+)")
#: Perhaps a kernel: a quoted name, a name after "PrimFunc"/"function"; counted only where it maps to nodes.
_MAYBE_KERNEL = re.compile(r"[`'\"](\w+)[`'\"]|\b(?:PrimFunc|[Ff]unction|func|kernel)\s+(\w+)")
#: Advice that follows the statement of an error in the same line ("... directly. Run the appropriate pass").
_SENTENCE_END = re.compile(r"(?<=[a-z0-9)\]])\.\s+(?=[A-Z])")


def error_line(text: str) -> str:
    """The line of a tool's `text` that states the error: the exception line closing a Python traceback, else
    the first line that is not a traceback frame, IR or an IR comment, preferring one that says "error:"
    (a compiler's warnings come first); "" if the text is empty."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if any(ln.startswith("Traceback") for ln in lines):
        exceptions = [ln for ln in lines if _EXCEPTION.match(ln)]
        if exceptions:
            return exceptions[-1]
    statements = [ln for ln in lines if not _NOISE.match(ln)] or lines
    return next((ln for ln in statements if _ERROR_WORD.search(ln)), statements[0] if statements else "")


def tool_failure(what: str, text: str) -> CodegenError:
    """The CodegenError for a tool (TVM's exporter, nvcc, an OpenCL compiler) that failed with output `text`:
    the message is `what` and the line of the text that states the error; `details` hold the whole text."""
    reason = error_line(text)
    return CodegenError(f"{what}: {reason[:500]}" if reason else what, reason=reason, details=text)


def named(text: str, provenance: Provenance | None = None) -> list[str]:
    """The Relax operators ("relax.nn.conv2d_transpose") and kernels ("fused_conv2d_add") `text` names
    before any IR dump, in order; call wrappers (`R.call_tir`) count only when nothing else is named, and a
    name that is perhaps a kernel (`_MAYBE_KERNEL`) only where `provenance` maps all of it to nodes."""
    lines = []
    for line in text.splitlines():
        if _DUMP.match(line):
            break
        lines.append(line)
    head = "\n".join(lines)
    found: dict[int, str] = {}  # by position in the text
    for m in _RELAX_OP.finditer(head):
        name = "relax." + m[1]
        if _is_op(name):
            found.setdefault(m.start(), name)
    for m in _KERNEL.finditer(head):
        found.setdefault(m.start(), next(g for g in m.groups() if g))
    for m in _MAYBE_KERNEL.finditer(head):
        name = next(g for g in m.groups() if g)
        if provenance is not None and provenance.kernel_nodes(name, whole=True):
            found.setdefault(m.start(), name)
    names = list(dict.fromkeys(found[k] for k in sorted(found)))
    return [n for n in names if n not in CALL_OPS] or names


def _is_op(name: str) -> bool:
    try:
        tvm.ir.Op.get(name)
    except Exception:  # noqa: BLE001 - TVM raises its own error type for an unregistered name
        return False
    return True


def codegen_error(e: BaseException, target: str, provenance: Provenance | None, tvm_pass: str = "") -> CodegenError:
    """The CodegenError for TVM's exception `e` building a module for `target` (in `tvm_pass`, if known): its
    first line names the ONNX nodes behind what TVM's text names and TVM's reason; `details` hold TVM's full
    text."""
    said = str(e).strip()
    details = f"{type(e).__name__}: {said}" if said else type(e).__name__
    # TVM's error types say nothing (InternalError); a Python error's type is part of what it says (KeyError)
    text = said if said and type(e).__module__.startswith("tvm") else details
    reason = _statement(error_line(text))
    names = named(text, provenance)
    nodes: list[SourceNode] = []
    unmapped = []
    for name in names:
        found = _nodes_of(name, provenance)
        if found:
            nodes += [n for n in found if n not in nodes]
        elif name not in CALL_OPS:
            unmapped.append(name)
    shown = [n for n in names if n not in reason]
    if shown:
        reason += ": " + ", ".join(shown[:3]) + (f" and {len(shown) - 3} more" if len(shown) > 3 else "")
    where = _describe(nodes) if nodes else "the module"
    place = f" in pass {tvm_pass}" if tvm_pass else ""
    message = f"TVM failed to build {where} for target {target!r}{place}: {reason[:500]}"
    if unmapped:
        message += f"\nLepton cannot trace {', '.join(unmapped[:5])} (named by TVM) to an ONNX node"
    elif not nodes:
        message += "\nTVM's text names no Relax operator or kernel that Lepton can trace to an ONNX node"
    return CodegenError(message, reason=reason, nodes=nodes, named=names, tvm_pass=tvm_pass, details=details)


def _statement(line: str) -> str:
    """The statement of an error without the advice TVM puts after it in the same line."""
    return _SENTENCE_END.split(line, 1)[0].rstrip(".")


def _nodes_of(name: str, provenance: Provenance | None) -> list[SourceNode]:
    if provenance is None:
        return []
    if name.startswith("relax."):
        return provenance.op_nodes(name)
    return provenance.kernel_nodes(name) or []


def _describe(nodes: list[SourceNode]) -> str:
    listed = ", ".join(map(str, nodes[:5])) + (f" and {len(nodes) - 5} more" if len(nodes) > 5 else "")
    return ("node " if len(nodes) == 1 else "nodes ") + listed


@tvm.instrument.pass_instrument
class _PassTracker:
    """The TVM passes running now, outermost first (a pass that raised stays on the stack)."""

    def __init__(self) -> None:
        self.running: list[str] = []

    def run_before_pass(self, _mod: tvm.IRModule, info: tvm.transform.PassInfo) -> None:
        self.running.append(str(info.name))

    def run_after_pass(self, _mod: tvm.IRModule, info: tvm.transform.PassInfo) -> None:
        """Pop `info`'s pass, and any above it that raised inside it and was caught there."""
        name = str(info.name)
        if name in self.running:
            del self.running[len(self.running) - 1 - self.running[::-1].index(name):]


@contextlib.contextmanager
def tvm_failures(target: str, provenance: Provenance | None) -> Iterator[None]:
    """Run TVM passes inside: any exception but a CodegenError becomes `codegen_error`'s, with the pass that
    failed. The passes run in a copy of the current PassContext with a pass tracker added."""
    tracker = _PassTracker()
    cur = tvm.transform.PassContext.current()
    ctx = tvm.transform.PassContext(opt_level=cur.opt_level, required_pass=list(cur.required_pass),
                                    disabled_pass=list(cur.disabled_pass), instruments=[*cur.instruments, tracker],
                                    config=dict(cur.config))
    try:
        with ctx:
            yield
    except CodegenError:
        raise
    except Exception as e:  # noqa: BLE001 - TVM raises many types; report one
        raise codegen_error(e, target, provenance, tracker.running[-1] if tracker.running else "") from None
