"""Lowering to TVM Relax, building per target, exporting the compiled library."""

from lepton.codegen.tvm_build import Library, build, export, relax_pipeline
from lepton.codegen.frontend import CONVERTED_OPS, to_relax, unsupported_nodes

__all__ = ["CONVERTED_OPS", "Library", "build", "export", "relax_pipeline", "to_relax", "unsupported_nodes"]
