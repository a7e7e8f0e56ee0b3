"""Layout passes: `convert-layout` (channels-last regions around 2-d convolutions).

Importing this package registers the pass and the Lepton-domain NHWC ops' ONNX function bodies.
"""

from passes.layout import functions  # noqa: F401 - registers the NhwcConv/... function bodies
from passes.layout.convert import METADATA_KEY, ConvertLayout, layout_plan, with_layout_pass

__all__ = ["METADATA_KEY", "ConvertLayout", "layout_plan", "with_layout_pass"]
