"""Export a `torch.nn.Module` to a self-contained ONNX `ModelProto` (torch is optional).

The TorchScript exporter (`torch.onnx.export(..., dynamo=False)`) is used: it needs no
`onnxscript`, works offline, and gives the same graph for the same module and inputs.
Being a tracer, it records the ops that ran for `example_inputs`: Python control flow on
tensor values is baked in (torch warns with a `TracerWarning`, which is passed on).

Invariants: the module's train/eval flags (of every submodule) are as before when this
returns or raises; the returned proto holds all weights inline (no external-data
references); graph inputs/outputs carry the names given or the defaults below; every
failure is a `TorchExportError`.
"""

from __future__ import annotations

import inspect
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import onnx

from lepton_ir.errors import UserError

if TYPE_CHECKING:
    import torch

#: An opset both torch's TorchScript exporter and TVM's ONNX frontend take.
DEFAULT_OPSET = 17


class TorchExportError(UserError):
    """A torch module could not be exported to ONNX (torch missing, bad inputs, exporter failure)."""


def export_torch(
    module: torch.nn.Module,
    example_inputs: Any,
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_batch: bool = False,
    opset: int | None = None,
) -> onnx.ModelProto:
    """Trace `module` on `example_inputs` (in eval mode, without gradients) and return the ONNX model.

    `example_inputs` is a tensor, a tuple/list of tensors (positional) or a dict of name ->
    tensor (keyword arguments of `forward`). Input names default to the `forward()`
    parameter names (`input_<i>` where there is none), output names to `output_<i>`.
    With `dynamic_batch`, dim 0 of every input and output is the symbol `batch`.
    """
    torch = _import_torch()
    if not isinstance(module, torch.nn.Module):
        raise TorchExportError(f"export_torch expects a torch.nn.Module, got {type(module).__name__}")
    cls = type(module).__name__
    args, kwargs = _split_inputs(torch, cls, example_inputs)
    params = _forward_params(module)
    if kwargs:
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise TorchExportError(f"{cls}.forward() has no parameter named {', '.join(map(repr, unknown))}")
        kwargs = {p: kwargs[p] for p in params if p in kwargs}  # the exporter orders them by signature
    if input_names is None:
        input_names = [params[i] if i < len(params) else f"input_{i}" for i in range(len(args))] + list(kwargs)

    modes = [(m, m.training) for m in module.modules()]
    log_stream = torch._C._jit_set_onnx_log_output_stream
    try:
        module.eval()
        with torch.no_grad(), tempfile.TemporaryDirectory(prefix="lepton-torch-") as tmp:
            if output_names is None:
                output_names = [f"output_{i}" for i in range(_count_tensors(torch, module(*args, **kwargs)))]
            names = [*input_names, *output_names]
            path = os.path.join(tmp, "model.onnx")
            log_stream("stderr")  # the exporter dumps its IR on failure; keep stdout clean (JSON output)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
                warnings.filterwarnings("ignore", message="The feature will be removed")
                torch.onnx.export(
                    module, args, path, kwargs=kwargs or None, dynamo=False,
                    opset_version=DEFAULT_OPSET if opset is None else opset,
                    input_names=list(input_names), output_names=list(output_names),
                    dynamic_axes={n: {0: "batch"} for n in names} if dynamic_batch else None,
                )
            return onnx.load(path)  # external data (models over 2 GB) is read back inline
    except TorchExportError:
        raise
    except Exception as e:  # noqa: BLE001 - every exporter failure becomes one clear error
        raise TorchExportError(f"torch could not export {cls} to ONNX: {_last_line(e)}") from e
    finally:
        log_stream("stdout")
        for m, training in modes:
            m.training = training


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise TorchExportError(
            "exporting a torch module needs PyTorch: pip install 'lepton-compiler[torch]'"
        ) from None
    return torch


def _split_inputs(torch: Any, cls: str, example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """(positional args, keyword args), every value checked to be a tensor."""
    if example_inputs is None:
        raise TorchExportError(
            f"example_inputs= is required for a torch module ({cls}): the exporter traces forward() on them"
        )
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}
    if isinstance(example_inputs, Mapping):
        kwargs = dict(example_inputs)
    elif isinstance(example_inputs, tuple | list):
        args = tuple(example_inputs)
    else:
        args = (example_inputs,)
    bad = [type(v).__name__ for v in [*args, *kwargs.values()] if not isinstance(v, torch.Tensor)]
    if bad or not (args or kwargs):
        raise TorchExportError(
            f"example_inputs for {cls} must be a tensor, a tuple/list of tensors or a dict of name -> tensor"
            + (f" (got {', '.join(bad)})" if bad else " (got none)")
        )
    return args, kwargs


def _forward_params(module: Any) -> list[str]:
    """Names of `forward`'s parameters that can be passed by position or keyword, in order."""
    try:
        sig = inspect.signature(module.forward)
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in sig.parameters.values() if p.kind in kinds]


def _count_tensors(torch: Any, out: Any) -> int:
    """Tensors in a (nested) tuple/list/dict output, as the exporter flattens it."""
    if isinstance(out, torch.Tensor):
        return 1
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, tuple | list):
        return sum(_count_tensors(torch, o) for o in out)
    return 0


def _last_line(e: BaseException) -> str:
    """The exception's type and the last non-empty line of its message."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[-1] if lines else '(no message)'}"


__all__ = ["DEFAULT_OPSET", "TorchExportError", "export_torch"]
