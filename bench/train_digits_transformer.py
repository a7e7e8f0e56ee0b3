"""Train the second shipped model: a small transformer encoder on the digits, each image's 8 rows as 8 tokens.

    .venv/bin/python -m bench.train_digits_transformer      # default: 150 epochs, seed 0; about a minute on 2 cores

Data: `bench/models/digits_split.npz` (the digits CNN's train/test split, `bench/digits_split.py`), so no
download and no scikit-learn. Architecture: Linear(8 -> 32) token embedding + a learned position embedding,
2 pre-norm `nn.TransformerEncoderLayer`s (d_model 32, 4 heads, feed-forward 64, GELU, dropout 0.1), mean over
tokens, LayerNorm, Linear(32 -> 10). AdamW (lr 3e-3, weight decay 1e-2), batch 64.

Exported with the TorchScript exporter at opset 17 (`do_constant_folding=False`: the graph keeps its exporter
noise for the cleanup and fusion passes) as `bench/models/digits_transformer.onnx`: input `image` float32
[batch, 1, 8, 8], output `logits` [batch, 10], `batch` dynamic. It is what the quantization bench runs
MatMul-heavy int8 on (attention, LayerNorm, GELU), next to the CNN.
"""

from __future__ import annotations

import argparse
import os
import warnings

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from bench.digits_split import load

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "models", "digits_transformer.onnx")
SEED = 0


class DigitsTransformer(nn.Module):
    def __init__(self, d: int = 32, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(8, d)
        self.pos = nn.Parameter(torch.zeros(1, 8, d))
        layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=2 * d, dropout=0.1, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(image.reshape(image.shape[0], 8, 8)) + self.pos
        return self.head(self.norm(self.encoder(tokens).mean(dim=1)))


def train(x: np.ndarray, y: np.ndarray, epochs: int) -> DigitsTransformer:
    torch.manual_seed(SEED)
    model = DigitsTransformer()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    loss_fn = nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(SEED)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            loss_fn(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=150)
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    d = load()
    model = train(d["train_images"], d["train_labels"], args.epochs)
    with torch.no_grad():
        acc = float((model(torch.from_numpy(d["test_images"])).argmax(1).numpy() == d["test_labels"]).mean())
    print(f"torch test accuracy: {acc:.4f} ({len(d['test_labels'])} images)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(2, 1, 8, 8),), OUT, dynamo=False, opset_version=17, input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                          do_constant_folding=False, training=torch.onnx.TrainingMode.EVAL)
    sess = ort.InferenceSession(OUT, providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {"image": d["test_images"]})[0]
    print(f"onnxruntime test accuracy: {float((logits.argmax(1) == d['test_labels']).mean()):.4f}; "
          f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
