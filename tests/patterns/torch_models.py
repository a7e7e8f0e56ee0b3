"""PyTorch exports of real-model patterns (built at test time; needs torch).

Each builder traces a small module with the TorchScript exporter (`dynamo=False`, like
`lepton.torch_export`) and marks batch and, where the model has one, sequence dims
symbolic, so the exported graph computes its Reshape targets, masks and ranges from
`Shape` at run time, as real exports do.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import onnx

from patterns.base import Pattern

try:
    import torch
    from torch import nn
except ImportError:  # pragma: no cover - the corpus is skipped without torch
    torch = None  # type: ignore[assignment]
    nn = None  # type: ignore[assignment]

B, S = 2, 5  # pinned batch and sequence length


def export(
    module: Any,
    example: Sequence[Any],
    names: Sequence[str],
    dynamic: Mapping[str, Mapping[int, str]],
    outputs: Sequence[str] = ("y",),
    opset: int = 17,
) -> onnx.ModelProto:
    """Trace `module` (eval mode, no grad) to ONNX with the given symbolic dims."""
    torch.manual_seed(0)
    module.eval()
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, tuple(example), buf, dynamo=False, opset_version=opset,
            input_names=list(names), output_names=list(outputs), dynamic_axes={**dynamic},
        )
    return onnx.load_from_string(buf.getvalue())


def _seeded(cls: Any, *args: Any, **kwargs: Any) -> Any:
    torch.manual_seed(0)
    return cls(*args, **kwargs)


# ----- (a) CNN with x.view(x.size(0), -1) ---------------------------------------------


class FlattenCNN(nn.Module if nn else object):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x: Any) -> Any:
        x = torch.max_pool2d(torch.relu(self.conv(x)), 2)
        return self.fc(x.view(x.size(0), -1))


def cnn_flatten() -> onnx.ModelProto:
    return export(_seeded(FlattenCNN), [torch.randn(B, 3, 8, 8)], ["x"], {"x": {0: "batch"}, "y": {0: "batch"}})


# ----- (b) transformer encoder layers -------------------------------------------------


class MaskedSelfAttention(nn.Module if nn else object):  # type: ignore[misc]
    """BERT-style: heads split from x.shape, additive mask `(1 - mask[:, None, None, :]) * -10000`,
    plus a `masked_fill` of the same mask."""

    def __init__(self, d: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.h, self.dk = heads, d // heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)

    def forward(self, x: Any, mask: Any) -> Any:
        b, s, d = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (t.view(b, s, self.h, self.dk).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-1, -2) / (self.dk ** 0.5)
        ext = (1.0 - mask[:, None, None, :].to(x.dtype)) * -10000.0
        scores = scores + ext
        scores = scores.masked_fill(mask[:, None, None, :] == 0, -1e4)
        ctx = torch.softmax(scores, dim=-1) @ v
        ctx = ctx.transpose(1, 2).reshape(b, s, d)
        return self.norm(x + self.out(ctx))


def attention_mask() -> onnx.ModelProto:
    dyn = {"x": {0: "batch", 1: "seq"}, "mask": {0: "batch", 1: "seq"}, "y": {0: "batch", 1: "seq"}}
    mask = torch.ones(B, S, dtype=torch.int64)
    return export(_seeded(MaskedSelfAttention), [torch.randn(B, S, 16), mask], ["x", "mask"], dyn)


class EncoderLayer(nn.Module if nn else object):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True)

    def forward(self, x: Any, pad: Any) -> Any:
        return self.layer(x, src_key_padding_mask=pad)


def transformer_encoder() -> onnx.ModelProto:
    dyn = {"x": {0: "batch", 1: "seq"}, "pad": {0: "batch", 1: "seq"}, "y": {0: "batch", 1: "seq"}}
    pad = torch.zeros(B, S, dtype=torch.bool)
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused fast path has no ONNX export
    try:
        return export(_seeded(EncoderLayer), [torch.randn(B, S, 16), pad], ["x", "pad"], dyn)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)


class HFBertAttention(nn.Module if nn else object):  # type: ignore[misc]
    """Hugging Face BERT style: `x.size()[:-1] + (h, d)` views, mask `(1 - m) * finfo.min`."""

    def __init__(self) -> None:
        super().__init__()
        self.h, self.d = 2, 8
        self.q, self.k, self.v = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)

    def heads(self, x: Any) -> Any:
        return x.view(x.size()[:-1] + (self.h, self.d)).permute(0, 2, 1, 3)

    def forward(self, x: Any, mask: Any) -> Any:
        ext = (1.0 - mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        q, k, v = self.heads(self.q(x)), self.heads(self.k(x)), self.heads(self.v(x))
        w = q @ k.transpose(-1, -2) / (self.d ** 0.5) + ext
        c = (w.softmax(-1) @ v).permute(0, 2, 1, 3).contiguous()
        return c.view(c.size()[:-2] + (16,))


def hf_bert_attention() -> onnx.ModelProto:
    dyn = {"x": {0: "batch", 1: "seq"}, "mask": {0: "batch", 1: "seq"}, "y": {0: "batch", 1: "seq"}}
    return export(_seeded(HFBertAttention), [torch.randn(B, S, 16), torch.ones(B, S, dtype=torch.int64)], ["x", "mask"], dyn)


class CausalAttention(nn.Module if nn else object):  # type: ignore[misc]
    """Causal mask from `torch.arange(x.size(1))` comparisons and `masked_fill(-inf)`."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(16, 48)

    def forward(self, x: Any) -> Any:
        n = x.size(1)
        i = torch.arange(n)
        future = i[None, :] > i[:, None]
        q, k, v = self.qkv(x).split(16, dim=-1)
        scores = (q @ k.transpose(1, 2)).masked_fill(future, float("-inf"))
        return scores.softmax(-1) @ v


def causal_attention() -> onnx.ModelProto:
    return export(_seeded(CausalAttention), [torch.randn(B, S, 16)], ["x"], {"x": {0: "batch", 1: "seq"}, "y": {0: "batch", 1: "seq"}})


# ----- (c) recurrent layers -----------------------------------------------------------


class Recurrent(nn.Module if nn else object):  # type: ignore[misc]
    """`kind` in LSTM/GRU/RNN; with `with_state` the initial states are model inputs."""

    def __init__(self, kind: str, with_state: bool, **kw: Any) -> None:
        super().__init__()
        self.kind, self.with_state = kind, with_state
        self.rnn = getattr(nn, kind)(**kw)

    def forward(self, x: Any, *state: Any) -> Any:
        if not self.with_state:
            y, _ = self.rnn(x)
            return y
        y, hn = self.rnn(x, state if self.kind == "LSTM" else state[0])
        return (y, *hn) if self.kind == "LSTM" else (y, hn)


def recurrent(kind: str, *, with_state: bool = False, layers: int = 1, bidirectional: bool = False,
              batch_first: bool = False, **kw: Any) -> onnx.ModelProto:
    inp, hid = 4, 3
    m = _seeded(Recurrent, kind, with_state, input_size=inp, hidden_size=hid, num_layers=layers,
                bidirectional=bidirectional, batch_first=batch_first, **kw)
    x = torch.randn(B, S, inp) if batch_first else torch.randn(S, B, inp)
    bdim, sdim = (0, 1) if batch_first else (1, 0)
    dyn = {"x": {bdim: "batch", sdim: "seq"}, "y": {bdim: "batch", sdim: "seq"}}
    args, names, outs = [x], ["x"], ["y"]
    if with_state:
        nstate = 2 if kind == "LSTM" else 1
        for i, n in enumerate(["h0", "c0"][:nstate]):
            args.append(torch.randn(layers * (2 if bidirectional else 1), B, hid))
            names.append(n)
            outs.append(["hn", "cn"][i])
            dyn[n] = {1: "batch"}
            dyn[outs[-1]] = {1: "batch"}
    return export(m, args, names, dyn, outputs=outs)


def _rnn_shapes(batch_first: bool, state: int, layers: int = 1, bidirectional: bool = False) -> dict[str, list[int]]:
    out = {"x": [B, S, 4] if batch_first else [S, B, 4]}
    for n in ["h0", "c0"][:state]:
        out[n] = [layers * (2 if bidirectional else 1), B, 3]
    return out


# ----- (d) multi-head reshapes from x.shape -------------------------------------------


class HeadSplit(nn.Module if nn else object):  # type: ignore[misc]
    def __init__(self, heads: int = 4) -> None:
        super().__init__()
        self.h = heads
        self.proj = nn.Linear(16, 16)

    def forward(self, x: Any) -> Any:
        b, s, hd = x.shape
        y = self.proj(x).reshape(b, s, self.h, hd // self.h).permute(0, 2, 3, 1)  # [b, h, d, s]
        y = torch.relu(y).permute(0, 3, 1, 2).reshape(b, s, -1)
        return y.reshape(x.size(0) * x.size(1), hd).sum(-1).view(b, -1)


def multihead_reshape() -> onnx.ModelProto:
    return export(_seeded(HeadSplit), [torch.randn(B, S, 16)], ["x"], {"x": {0: "batch", 1: "seq"}, "y": {0: "batch", 1: "seq"}})


# ----- (e) arange / expand / repeat from runtime shapes -------------------------------


class Positions(nn.Module if nn else object):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(32, 8)

    def forward(self, x: Any) -> Any:
        b, s, _ = x.shape
        pos = torch.arange(s, device=x.device).unsqueeze(0).expand(b, s)
        y = x + self.emb(pos)
        y = y.repeat(1, 2, 1) * torch.arange(2 * s, dtype=x.dtype).view(1, -1, 1)
        return y.expand(2, b, 2 * s, 8).reshape(2 * b, 2 * s, 8)


def arange_expand_repeat() -> onnx.ModelProto:
    return export(_seeded(Positions), [torch.randn(B, S, 8)], ["x"], {"x": {0: "batch", 1: "seq"}, "y": {0: "b2", 1: "s2"}})


class InterpolateToSize(nn.Module if nn else object):  # type: ignore[misc]
    """`F.interpolate(x, size=(h * 2, w * 2))`: Resize with output sizes computed from dims."""

    def forward(self, x: Any) -> Any:
        return torch.nn.functional.interpolate(x, size=(x.size(2) * 2, x.size(3) * 2), mode="nearest")


def interpolate_size() -> onnx.ModelProto:
    return export(InterpolateToSize(), [torch.randn(B, 3, 4, 5)], ["x"], {"x": {0: "batch", 2: "h", 3: "w"}, "y": {0: "batch"}})


# ----- (f) LayerNorm / GELU -----------------------------------------------------------


class NormGelu(nn.Module if nn else object):  # type: ignore[misc]
    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        self.norm = nn.LayerNorm(16)
        self.fc = nn.Linear(16, 16)
        self.act = nn.GELU(approximate=approximate)

    def forward(self, x: Any) -> Any:
        return self.norm(x + self.act(self.fc(x)))


def layernorm_gelu(opset: int = 17, approximate: str = "none") -> onnx.ModelProto:
    return export(_seeded(NormGelu, approximate), [torch.randn(B, S, 16)], ["x"],
                  {"x": {0: "batch", 1: "seq"}, "y": {0: "batch", 1: "seq"}}, opset=opset)


def torch_patterns() -> list[Pattern]:
    """The PyTorch corpus; empty when torch is not installed."""
    if torch is None:
        return []
    bs = {"x": [B, S, 16]}
    pats = [
        Pattern("cnn_flatten", cnn_flatten, {"x": [B, 3, 8, 8]}, "CNN, x.view(x.size(0), -1), symbolic batch"),
        Pattern("attention_mask", attention_mask, {"x": [B, S, 16], "mask": [B, S]},
                "hand-written attention, (1 - mask[:,None,None,:]) * -1e4 and masked_fill, symbolic batch/seq"),
        Pattern("transformer_encoder", transformer_encoder, {"x": [B, S, 16], "pad": [B, S]},
                "nn.TransformerEncoderLayer with src_key_padding_mask, symbolic batch/seq"),
        Pattern("hf_bert_attention", hf_bert_attention, {"x": [B, S, 16], "mask": [B, S]},
                "Hugging Face BERT self-attention: size()[:-1] + (h, d) views, (1 - mask) * finfo.min"),
        Pattern("causal_attention", causal_attention, bs, "causal mask from torch.arange(x.size(1)) and masked_fill(-inf)"),
        Pattern("multihead_reshape", multihead_reshape, bs, "x.reshape(b, s, h, d).permute(...) from x.shape"),
        Pattern("arange_expand_repeat", arange_expand_repeat, {"x": [B, S, 8]}, "torch.arange/expand/repeat from x.shape"),
        Pattern("interpolate_size", interpolate_size, {"x": [B, 3, 4, 5]},
                "F.interpolate(size=(h * 2, w * 2)): Resize sizes computed from symbolic dims"),
        Pattern("layernorm_gelu", layernorm_gelu, bs, "nn.LayerNorm + nn.GELU (opset 17: LayerNormalization op, Erf GELU)"),
        Pattern("layernorm_gelu_tanh_op20", lambda: layernorm_gelu(20, "tanh"), bs,
                "nn.LayerNorm + nn.GELU(tanh) at opset 20 (Gelu op)"),
        Pattern("layernorm_gelu_op13", lambda: layernorm_gelu(13), bs, "nn.LayerNorm + nn.GELU at opset 13 (decomposed)"),
    ]
    rnn = [
        ("lstm", "LSTM", {}, False, 1, False, False),
        ("lstm_state", "LSTM", {}, True, 1, False, False),
        ("lstm_2layer_bidir", "LSTM", {}, False, 2, True, False),
        ("lstm_2layer_bidir_state_bf", "LSTM", {}, True, 2, True, True),
        ("gru", "GRU", {}, False, 1, False, False),
        ("gru_bidir_state_bf", "GRU", {}, True, 1, True, True),
        ("rnn_tanh_2layer", "RNN", {}, False, 2, False, False),
        ("rnn_relu_bidir_state", "RNN", {"nonlinearity": "relu"}, True, 1, True, False),
    ]
    for name, kind, kw, state, layers, bidir, bf in rnn:
        def build(kind=kind, kw=kw, state=state, layers=layers, bidir=bidir, bf=bf) -> onnx.ModelProto:
            return recurrent(kind, with_state=state, layers=layers, bidirectional=bidir, batch_first=bf, **kw)
        nstate = (2 if kind == "LSTM" else 1) if state else 0
        pats.append(Pattern(f"torch_{name}", build, _rnn_shapes(bf, nstate, layers, bidir),
                            f"nn.{kind} layers={layers} bidirectional={bidir} batch_first={bf} initial state={state} {kw or ''}"))
    return pats
