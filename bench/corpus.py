"""A corpus of models from the wild: real architectures exported in-process, and ONNX files PyPI packages ship.

    python -m bench.corpus [--models NAME,...] [--quick] [--repeat 5] [--inner 10]

Each entry builds an `onnx.ModelProto` the way users get one: torchvision architectures
(`weights=None`) and Hugging Face transformers built from a config (nothing downloaded), exported
with both PyTorch exporters (TorchScript `dynamo=False`, and `dynamo=True`) at opsets spread
over 11-21, with `dim_param` dims and paddle2onnx-style `dim_value: -1` dims; and the
paddle2onnx (PaddleOCR) and Silero VAD models the installed `rapidocr-onnxruntime` and
`silero-vad` packages ship, read from their folders (the packages are never imported: their
dependencies are not installed). Entries whose source is missing raise `Unavailable`.

`python -m bench.corpus` compiles every entry for x86 (verified against onnxruntime), arm,
cuda and opencl, times the x86 module against onnxruntime (`bench.latency.time_blocks`:
blocks of consecutive calls, tools alternating block by block, medians), and writes
bench/results/corpus.json and a Markdown table. `tests/test_corpus.py` runs the same matrix.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import onnx

TARGETS = ("x86", "arm", "cuda", "opencl")
RESULTS = os.path.join(os.path.dirname(__file__), "results")


class Unavailable(Exception):
    """The entry's source (a package, torch, transformers) is not installed here; the message says which."""


@dataclass(frozen=True)
class Entry:
    """One corpus model: how to build it, the input shapes to pin, and what its export must contain."""

    name: str
    source: str  # where the architecture comes from and which exporter wrote the ONNX
    build: Callable[[], onnx.ModelProto]
    input_shapes: dict[str, list[int]]
    quick: bool = False  # in `make test`; the rest is slow (`make test-all`)
    expect_ops: tuple[str, ...] = ()  # ops the export must keep (why the model is in the corpus)
    inputs: Callable[[], dict[str, np.ndarray]] | None = None  # verification inputs where synthesis cannot know
    xfail: Mapping[str, str] = field(default_factory=dict)  # target -> precise cause, for known unsupported cases

    def model(self) -> onnx.ModelProto:
        """The exported (or packaged) model; `Unavailable` when a package its builder needs is not installed."""
        try:
            return self.build()
        except ImportError as e:
            raise Unavailable(f"{e.name or e} is not installed (pip install 'lepton-compiler[corpus]')") from None


# ----- PyTorch exports -----------------------------------------------------------------------


def _torch() -> Any:
    import torch  # imported where a builder runs: the packaged models need no torch

    return torch


def export_torch(
    module: Any,
    inputs: Mapping[str, Any],
    outputs: Sequence[str],
    *,
    opset: int,
    dynamo: bool = False,
    dynamic: Mapping[str, Mapping[int, str]] | None = None,
    keep_batchnorm: bool = False,
) -> onnx.ModelProto:
    """Export `module` (eval mode, no grad) with one of torch's two exporters.

    `inputs` are `forward`'s keyword arguments (name -> example tensor, in signature order); they name
    the graph inputs.
    `keep_batchnorm` exports with `training=TrainingMode.PRESERVE` and no constant folding, so the
    TorchScript exporter leaves BatchNormalization nodes instead of folding them into the convolutions.
    """
    torch = _torch()
    module.eval()
    buf = io.BytesIO()
    kwargs: dict[str, Any] = {"opset_version": opset, "input_names": list(inputs), "output_names": list(outputs),
                              "dynamic_axes": dict(dynamic) if dynamic else None}
    if keep_batchnorm:
        kwargs.update(training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            program = torch.onnx.export(module, (), kwargs=dict(inputs), dynamo=True, verbose=False, **kwargs)
            return program.model_proto
        torch.onnx.export(module, (), buf, kwargs=dict(inputs), dynamo=False, **kwargs)
    return onnx.load_from_string(buf.getvalue())


def _seeded(make: Callable[[], Any]) -> Any:
    _torch().manual_seed(0)
    return make()


def _image(size: int, channels: int = 3) -> Any:
    return _torch().randn(1, channels, size, size, generator=_torch().Generator().manual_seed(0))


_BATCH = {"x": {0: "batch"}, "y": {0: "batch"}}


def resnet18_bn() -> onnx.ModelProto:
    """torchvision ResNet-18, BatchNormalization left unfolded, TorchScript at opset 11."""
    from torchvision.models import resnet18

    model = _seeded(lambda: resnet18(weights=None, num_classes=10))
    return export_torch(model, {"x": _image(64)}, ["y"], opset=11, dynamic=_BATCH, keep_batchnorm=True)


def mobilenet_v3_small() -> onnx.ModelProto:
    """torchvision MobileNetV3-Small (HardSwish, HardSigmoid squeeze-excite), dynamo exporter at opset 18."""
    from torchvision.models import mobilenet_v3_small as make

    model = _seeded(lambda: make(weights=None, num_classes=10))
    return export_torch(model, {"x": _image(96)}, ["y"], opset=18, dynamo=True)


def mobilenet_v3_paddle_style() -> onnx.ModelProto:
    """MobileNetV3-Small exported by TorchScript at opset 14, batch written as `dim_value: -1` (paddle2onnx style)."""
    from torchvision.models import mobilenet_v3_small as make

    model = export_torch(_seeded(lambda: make(weights=None, num_classes=10)), {"x": _image(64)}, ["y"],
                         opset=14, dynamic=_BATCH)
    return minus_one_dims(model)


def efficientnet_b0() -> onnx.ModelProto:
    """torchvision EfficientNet-B0 (SiLU, squeeze-excite, depthwise), TorchScript at opset 13."""
    from torchvision.models import efficientnet_b0 as make

    return export_torch(_seeded(lambda: make(weights=None, num_classes=10)), {"x": _image(64)}, ["y"],
                        opset=13, dynamic=_BATCH)


def deeplabv3_mobilenet() -> onnx.ModelProto:
    """torchvision DeepLabV3 (MobileNetV3-Large backbone, dilated convs, ASPP, Resize), TorchScript opset 17."""
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large as make

    nn = _torch().nn

    class Out(nn.Module):
        """The segmentation model's `out` (its forward returns a dict)."""

        def __init__(self) -> None:
            super().__init__()
            self.model = make(weights=None, weights_backbone=None, num_classes=4, aux_loss=False)

        def forward(self, x: Any) -> Any:
            return self.model(x)["out"]

    return export_torch(_seeded(Out), {"x": _image(64)}, ["y"], opset=17)


def _unet_module() -> Any:
    torch = _torch()
    nn = torch.nn

    def block(i: int, o: int) -> Any:
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                             nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

    class UNet(nn.Module):
        """Two-level U-Net: max-pool encoder, ConvTranspose2d (stride 2) decoder with skip concatenation."""

        def __init__(self) -> None:
            super().__init__()
            self.e1, self.e2, self.mid = block(3, 16), block(16, 32), block(32, 64)
            self.up2, self.d2 = nn.ConvTranspose2d(64, 32, 2, stride=2), block(64, 32)
            self.up1, self.d1 = nn.ConvTranspose2d(32, 16, 2, stride=2), block(32, 16)
            self.head = nn.Conv2d(16, 2, 1)

        def forward(self, x: Any) -> Any:
            s1 = self.e1(x)
            s2 = self.e2(torch.max_pool2d(s1, 2))
            m = self.mid(torch.max_pool2d(s2, 2))
            y = self.d2(torch.cat([self.up2(m), s2], 1))
            return self.head(self.d1(torch.cat([self.up1(y), s1], 1)))

    return UNet()


def unet_convtranspose() -> onnx.ModelProto:
    """A U-Net decoder with ConvTranspose2d, TorchScript at opset 15, BatchNormalization kept, batch and spatial
    dims symbolic."""
    dyn = {"x": {0: "batch", 2: "h", 3: "w"}, "y": {0: "batch", 2: "h", 3: "w"}}
    return export_torch(_seeded(_unet_module), {"x": _image(64)}, ["y"], opset=15, dynamic=dyn, keep_batchnorm=True)


def vit_small() -> onnx.ModelProto:
    """torchvision VisionTransformer (2 layers, hidden 32, patches 8 on 32x32), dynamo exporter at opset 20."""
    from torchvision.models import VisionTransformer

    model = _seeded(lambda: VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                              mlp_dim=64, num_classes=10))
    return export_torch(model, {"x": _image(32)}, ["y"], opset=20, dynamo=True)


def _detr_module() -> Any:
    torch = _torch()
    nn = torch.nn

    class DetrEncoder(nn.Module):
        """DETR's encoder layer over CNN features: positional embedding added to queries and keys only."""

        def __init__(self, d: int = 32, heads: int = 4, hw: int = 8) -> None:
            super().__init__()
            self.backbone = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
                                          nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU())
            self.proj = nn.Conv2d(32, d, 1)
            self.pos = nn.Parameter(torch.randn(hw * hw, 1, d))
            self.attn = nn.MultiheadAttention(d, heads, dropout=0.0)
            self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.ffn = nn.Sequential(nn.Linear(d, 64), nn.ReLU(), nn.Linear(64, d))

        def forward(self, x: Any) -> Any:
            src = self.proj(self.backbone(x)).flatten(2).permute(2, 0, 1)  # [hw, batch, d]
            q = k = src + self.pos
            src = self.norm1(src + self.attn(q, k, src, need_weights=False)[0])
            return self.norm2(src + self.ffn(src))

    return DetrEncoder()


def detr_encoder() -> onnx.ModelProto:
    """A DETR-style encoder attention block (nn.MultiheadAttention, pos-embedded q/k), TorchScript at opset 14,
    batch written as `dim_value: -1`."""
    model = export_torch(_seeded(_detr_module), {"x": _image(32)}, ["y"], opset=14,
                         dynamic={"x": {0: "batch"}, "y": {1: "batch"}})
    return minus_one_dims(model)


# ----- Hugging Face transformers, from configs (nothing downloaded) --------------------------

_SEQ = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}


def _token_inputs(names: Sequence[str], batch: int = 1, seq: int = 16, vocab: int = 100) -> dict[str, Any]:
    """Token ids, an attention mask with its last quarter padded, token types: the inputs `names` asks for."""
    torch = _torch()
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(batch, seq, dtype=torch.int64)
    mask[:, seq - seq // 4:] = 0
    every = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return {n: every[n] for n in names}


@dataclass(frozen=True)
class BertSize:
    """A BERT-family configuration: the corpus entries use the default (2 layers, hidden 32, sequence 16);
    `bench.fusion` passes Google's BERT-Tiny shape (L=2, H=128, A=2, FFN 512) at sequence 64."""

    hidden: int = 32
    layers: int = 2
    heads: int = 2
    ffn: int = 64
    seq: int = 16

    def input_shapes(self, names: Sequence[str]) -> dict[str, list[int]]:
        return {n: [1, self.seq] for n in names}


BERT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
DISTILBERT_INPUTS = ("input_ids", "attention_mask")


def _bert_model(size: BertSize) -> Any:
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=100, hidden_size=size.hidden, num_hidden_layers=size.layers,
                     num_attention_heads=size.heads, intermediate_size=size.ffn,
                     max_position_embeddings=max(64, size.seq))
    return _seeded(lambda: BertModel(cfg, add_pooling_layer=True))


def _distilbert_model(size: BertSize) -> Any:
    from transformers import DistilBertConfig, DistilBertModel

    cfg = DistilBertConfig(vocab_size=100, dim=size.hidden, n_layers=size.layers, n_heads=size.heads,
                           hidden_dim=size.ffn, max_position_embeddings=max(64, size.seq))
    return _seeded(lambda: DistilBertModel(cfg))


def bert_tiny(size: BertSize = BertSize()) -> onnx.ModelProto:
    """Hugging Face BertModel (2 layers, hidden 32) with attention mask and token types, TorchScript at opset 16."""
    dyn = {**_SEQ, "token_type_ids": {0: "batch", 1: "seq"}, "last_hidden_state": {0: "batch", 1: "seq"},
           "pooler_output": {0: "batch"}}
    return export_torch(_bert_model(size), _token_inputs(BERT_INPUTS, seq=size.seq),
                        ["last_hidden_state", "pooler_output"], opset=16, dynamic=dyn)


def bert_tiny_dynamo(size: BertSize = BertSize()) -> onnx.ModelProto:
    """The same BertModel (attention mask, token types) through the dynamo exporter at opset 18."""
    return export_torch(_bert_model(size), _token_inputs(BERT_INPUTS, seq=size.seq),
                        ["last_hidden_state", "pooler_output"], opset=18, dynamo=True)


def distilbert_tiny(size: BertSize = BertSize()) -> onnx.ModelProto:
    """Hugging Face DistilBertModel (2 layers, dim 32) with attention mask, dynamo exporter at opset 19."""
    return export_torch(_distilbert_model(size), _token_inputs(DISTILBERT_INPUTS, seq=size.seq),
                        ["last_hidden_state"], opset=19, dynamo=True)


def distilbert_tiny_torchscript(size: BertSize = BertSize()) -> onnx.ModelProto:
    """The same DistilBertModel (attention mask) through the TorchScript exporter at opset 14, batch and sequence
    symbolic."""
    dyn = {**_SEQ, "last_hidden_state": {0: "batch", 1: "seq"}}
    return export_torch(_distilbert_model(size), _token_inputs(DISTILBERT_INPUTS, seq=size.seq),
                        ["last_hidden_state"], opset=14, dynamic=dyn)


def _gpt2(*, traced: bool) -> Any:
    """Hugging Face GPT2LMHeadModel (2 layers, n_embd 32, use_cache=False) as `(input_ids, attention_mask) -> logits`.

    `traced`: for the TorchScript tracer, which cannot trace the `vmap` in transformers' mask builder, the causal
    and padding mask is built by transformers' own vmap-free `sdpa_mask_without_vmap` (what its ExecuTorch export uses).
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=100, n_positions=64, n_embd=32, n_layer=2, n_head=2, use_cache=False)
    if traced:
        from transformers.integrations.executorch import sdpa_mask_without_vmap
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        ALL_MASK_ATTENTION_FUNCTIONS.register("sdpa_without_vmap", sdpa_mask_without_vmap)
        ALL_ATTENTION_FUNCTIONS.register("sdpa_without_vmap", ALL_ATTENTION_FUNCTIONS["sdpa"])
        cfg._attn_implementation = "sdpa_without_vmap"

    class Logits(_torch().nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lm = GPT2LMHeadModel(cfg)

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.lm(input_ids=input_ids, attention_mask=attention_mask).logits

    return _seeded(Logits)


def gpt2_tiny() -> onnx.ModelProto:
    """GPT-2 with an attention mask, TorchScript at opset 17, batch and sequence symbolic."""
    dyn = {**_SEQ, "logits": {0: "batch", 1: "seq"}}
    return export_torch(_gpt2(traced=True), _token_inputs(["input_ids", "attention_mask"]), ["logits"], opset=17,
                        dynamic=dyn)


def gpt2_tiny_dynamo() -> onnx.ModelProto:
    """The same GPT-2 through the dynamo exporter at opset 21."""
    return export_torch(_gpt2(traced=False), _token_inputs(["input_ids", "attention_mask"]), ["logits"], opset=21,
                        dynamo=True)


def minus_one_dims(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite every `dim_param` of the graph's inputs and outputs as `dim_value: -1`, as paddle2onnx writes them."""
    for vi in [*model.graph.input, *model.graph.output]:
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param"):
                d.dim_value = -1
    return model


# ----- ONNX files that PyPI packages ship -------------------------------------------------------


def package_file(package: str, *parts: str) -> str:
    """Path of a data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise Unavailable(f"package {package!r} is not installed (`make install`: requirements-models.lock)")
    path = os.path.join(list(spec.submodule_search_locations)[0], *parts)
    if not os.path.isfile(path):
        raise Unavailable(f"{package} is installed but ships no {os.path.join(*parts)}")
    return path


def _packaged(package: str, *parts: str) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        return onnx.load(package_file(package, *parts))

    build.__doc__ = f"{'/'.join(parts)} from the {package} package"
    return build


def _silero_inputs() -> dict[str, np.ndarray]:
    """A 32 ms chunk at 16 kHz, zero state, and `sr` = 16000 (synthesis would draw 0 or 1, a rate the model rejects)."""
    rng = np.random.default_rng(0)
    return {"input": (0.1 * rng.standard_normal((1, 512))).astype(np.float32),
            "state": np.zeros((2, 1, 128), np.float32), "sr": np.asarray(16000, np.int64)}


_OCR = ("rapidocr_onnxruntime", "models")
_SILERO_IF = (
    "UnsupportedOpsError (LSTM): the LSTMs sit in If branches nested in the sample-rate If, and their X comes from "
    "Ifs whose conditions are constants; Lepton does not inline an If with a constant condition, so those Ifs' "
    "outputs keep an unknown rank and lower-recurrent cannot unroll the LSTM (X 'decoder/rnn/Unsqueeze_3_output_0')"
)

CORPUS: tuple[Entry, ...] = (
    Entry("resnet18_bn", "torchvision / TorchScript", resnet18_bn, {"x": [1, 3, 64, 64]},
          expect_ops=("BatchNormalization",)),
    Entry("mobilenet_v3_small", "torchvision / dynamo", mobilenet_v3_small, {"x": [1, 3, 96, 96]}, quick=True,
          expect_ops=("HardSwish",)),
    Entry("mobilenet_v3_dim-1", "torchvision / TorchScript, paddle-style -1 batch", mobilenet_v3_paddle_style,
          {"x": [1, 3, 64, 64]}, expect_ops=("HardSwish",)),
    Entry("efficientnet_b0", "torchvision / TorchScript", efficientnet_b0, {"x": [1, 3, 64, 64]}),
    Entry("deeplabv3_mobilenet", "torchvision / TorchScript", deeplabv3_mobilenet, {"x": [1, 3, 64, 64]},
          expect_ops=("Resize",)),
    Entry("unet_convtranspose", "U-Net (torch.nn) / TorchScript", unet_convtranspose, {"x": [1, 3, 64, 64]}, quick=True,
          expect_ops=("ConvTranspose", "BatchNormalization")),
    Entry("vit_small", "torchvision VisionTransformer / dynamo", vit_small, {"x": [1, 3, 32, 32]}, quick=True),
    Entry("detr_encoder", "DETR encoder block (torch.nn) / TorchScript, -1 batch", detr_encoder, {"x": [1, 3, 32, 32]},
          quick=True, expect_ops=("Softmax",)),
    Entry("bert_tiny", "transformers BertModel / TorchScript", bert_tiny,
          {"input_ids": [1, 16], "attention_mask": [1, 16], "token_type_ids": [1, 16]}, quick=True),
    Entry("distilbert_tiny", "transformers DistilBertModel / dynamo", distilbert_tiny,
          {"input_ids": [1, 16], "attention_mask": [1, 16]}),
    Entry("gpt2_tiny", "transformers GPT2LMHeadModel / TorchScript", gpt2_tiny,
          {"input_ids": [1, 16], "attention_mask": [1, 16]}, quick=True),
    Entry("gpt2_tiny_dynamo", "transformers GPT2LMHeadModel / dynamo", gpt2_tiny_dynamo,
          {"input_ids": [1, 16], "attention_mask": [1, 16]}),
    Entry("paddleocr_det", "PaddleOCR v4 det / paddle2onnx (rapidocr)", _packaged(*_OCR, "ch_PP-OCRv4_det_infer.onnx"),
          {"x": [1, 3, 64, 64]}, expect_ops=("ConvTranspose",)),
    Entry("paddleocr_rec", "PaddleOCR v4 rec / paddle2onnx (rapidocr)", _packaged(*_OCR, "ch_PP-OCRv4_rec_infer.onnx"),
          {"x": [1, 3, 48, 96]}),
    Entry("paddleocr_cls", "PaddleOCR v2 cls / paddle2onnx (rapidocr), -1 batch",
          _packaged(*_OCR, "ch_ppocr_mobile_v2.0_cls_infer.onnx"), {"x": [1, 3, 48, 192]}),
    Entry("silero_vad", "Silero VAD / spox (silero-vad)", _packaged("silero_vad", "data", "silero_vad.onnx"),
          {"input": [1, 512], "state": [2, 1, 128]}, inputs=_silero_inputs, xfail=dict.fromkeys(TARGETS, _SILERO_IF)),
    Entry("silero_vad_16k_static", "Silero VAD 16 kHz, OpenVINO variant / spox (silero-vad)",
          _packaged("silero_vad", "data", "silero_vad_openvino_16k.onnx"), {}, expect_ops=("LSTM",)),
)
BY_NAME = {e.name: e for e in CORPUS}

#: The BERT-family exports the corpus has from one exporter only, from the other one: with `bert_tiny` and
#: `distilbert_tiny` they give both exporters' forms of both models (masks included) to `bench.nodecount` and
#: `bench.fusion`. Not in CORPUS (the four-target matrix of `tests/test_corpus.py`).
MASKED_BERT_EXTRA: tuple[Entry, ...] = (
    Entry("bert_tiny_dynamo", "transformers BertModel / dynamo", bert_tiny_dynamo,
          {"input_ids": [1, 16], "attention_mask": [1, 16], "token_type_ids": [1, 16]}),
    Entry("distilbert_tiny_ts", "transformers DistilBertModel / TorchScript", distilbert_tiny_torchscript,
          {"input_ids": [1, 16], "attention_mask": [1, 16]}),
)


# ----- the benchmark: compile every entry for every target, time x86 against onnxruntime -----------------------


def _first_lines(e: BaseException, n: int = 2) -> str:
    """The error's type and its first `n` non-empty lines (Lepton's errors name the node, op and reason there)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {' '.join(lines[:n]) or '(no message)'}"[:500]


def run_entry(entry: Entry, repeat: int, inner: int) -> dict[str, Any]:
    """One table row: the export's opset and size, each target's compile outcome, x86 latency next to onnxruntime."""
    import lepton
    import targets
    from bench.latency import ort_runner, time_blocks
    from lepton.errors import VerificationError
    from lepton.artifact import read_verify_bundle

    row: dict[str, Any] = {"model": entry.name, "source": entry.source, "quick": entry.quick}
    try:
        model = entry.model()
    except Unavailable as e:
        row["skipped"] = str(e)
        return row
    except Exception as e:  # noqa: BLE001 - an exporter failing on a model is a result too
        row["skipped"] = f"the export failed: {_first_lines(e)}"
        return row
    row["opset"] = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    row["nodes"] = len(model.graph.node)
    row["targets"] = {}
    x86 = None
    for target in TARGETS:
        t0 = time.perf_counter()
        verify = target == "x86"
        inputs = entry.inputs() if entry.inputs and verify else None
        try:
            res = lepton.compile(model, target, input_shapes=entry.input_shapes, use_cache=False, verify=verify,
                                 verify_inputs=inputs)
            row["targets"][target] = {"compiles": True}
            if verify:
                x86, row["verifies_x86"] = res, True
        except VerificationError as e:  # built, but its outputs differ from onnxruntime's
            row["targets"][target] = {"compiles": True, "error": _first_lines(e)}
            row["verifies_x86"] = False
        except Exception as e:  # noqa: BLE001 - a failing model is a result, not a crash of the benchmark
            row["targets"][target] = {"compiles": False, "error": _first_lines(e)}
            if verify:
                row["verifies_x86"] = False
        row["targets"][target]["seconds"] = round(time.perf_counter() - t0, 1)
    if x86 is not None:
        feeds, _ = read_verify_bundle(x86.manifest)  # the inputs compile verified on
        ort = ort_runner(model, int(targets.resolve("x86").options.get("num_cores", os.cpu_count() or 1)))
        runners = {"onnxruntime": lambda: ort(feeds), "lepton": lambda: x86.run(feeds)}
        rounds = time_blocks(runners, repeat, dict.fromkeys(runners, inner))
        row["onnxruntime_ms"] = statistics.median(rounds["onnxruntime"])
        row["lepton_ms"] = statistics.median(rounds["lepton"])
        row["ratio"] = row["lepton_ms"] / row["onnxruntime_ms"]
    return row


def table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table of `run_entry` rows, then each failure's first line."""
    head = ("| model | source / exporter | opset | nodes | x86 | arm | cuda | opencl | verifies x86 | Lepton ms "
            "| onnxruntime ms | ratio |\n|---|---|---:|---:|---|---|---|---|---|---:|---:|---:|")
    lines, notes = [head], []
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['model']} | {r['source']} | - | - | skipped: {r['skipped']} |" + " - |" * 7)
            continue
        cells, errors = [], {}
        for t in TARGETS:
            res = r["targets"][t]
            cells.append("yes" if res["compiles"] else "**no**")
            if "error" in res:  # the same error on several targets is listed once
                errors.setdefault(res["error"].replace(f"'{t}'", "'<target>'"), []).append(t)
        notes += [f"- {r['model']} ({', '.join(ts)}): {err}" for err, ts in errors.items()]
        timing = f"{r['lepton_ms']:.2f} | {r['onnxruntime_ms']:.2f} | {r['ratio']:.2f}" if "ratio" in r else "- | - | -"
        lines.append(f"| {r['model']} | {r['source']} | {r['opset']} | {r['nodes']} | {' | '.join(cells)} | "
                     f"{'yes' if r['verifies_x86'] else '**no**'} | {timing} |")
    return "\n".join(lines + ([""] + notes if notes else []))


def main(argv: list[str] | None = None) -> None:
    from targets.host import cpu_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="", help="comma-separated entry names (default: all)")
    p.add_argument("--quick", action="store_true", help="only the entries `make test` runs")
    p.add_argument("--repeat", type=int, default=5, help="blocks per tool")
    p.add_argument("--inner", type=int, default=10, help="consecutive calls per block")
    args = p.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    unknown = sorted(set(names) - set(BY_NAME))
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    entries = [e for e in CORPUS if (not names or e.name in names) and (e.quick or not args.quick)]
    started = datetime.now(UTC)
    rows = []
    for entry in entries:
        print(f"corpus: {entry.name} ...", flush=True)
        rows.append(run_entry(entry, args.repeat, args.inner))
    os.makedirs(RESULTS, exist_ok=True)
    meta = {"started": started.isoformat(timespec="seconds"), "cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)),
            "repeat": args.repeat, "inner": args.inner}
    with open(os.path.join(RESULTS, "corpus.json"), "w") as f:
        json.dump({**meta, "rows": rows}, f, indent=2)
    print(f"{meta['started']}, {meta['cpu']}\n{table(rows)}")


if __name__ == "__main__":
    main()
