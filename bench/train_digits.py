"""Train the demo model: a small CNN on scikit-learn's digits (8x8 grayscale, 10 classes),
and export it to ONNX the way a user would, exporter noise and all.

This is the only file in the project that imports torch; torch is a bench-only need and
is not in pyproject.toml. To re-create the shipped files:

    .venv/bin/pip install torch==2.13.0      # a CPU wheel is enough
    .venv/bin/python -m bench.train_digits

Writes:
    bench/models/digits_cnn.onnx   the exported model (input "image" [batch,1,8,8] float32,
                                   output "logits" [batch,10]; batch is a dynamic axis)
    bench/models/digits_test.npz   held-out test images ("images" float32 [N,1,8,8], pixel
                                   values scaled to [0,1]) and "labels" (int64 [N])

The export uses the TorchScript exporter (``dynamo=False``) at opset 17 with
``do_constant_folding=False`` so the graph keeps what an unsimplified export has
(BatchNormalization unfused, the ``x.view(x.size(0), -1)`` Shape->Gather->Unsqueeze->
Concat->Reshape chain, Constant nodes): it is the input the Lepton cleanup passes are
demonstrated on. Nothing here simplifies the exported graph.
"""

from __future__ import annotations

import argparse
import collections
import os
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, "models")
SEED = 0
N_SAVED_TEST = 100


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.drop = nn.Dropout(0.25)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = self.pool(x)
        x = x.view(x.size(0), -1)
        x = torch.relu(self.fc1(x))
        x = self.drop(x)
        return self.fc2(x)


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    digits = load_digits()
    # reshape (not [:, None]) so the size-1 channel axis gets a C-order stride; torch
    # otherwise reads the batch as channels_last and x.view() in forward() fails
    x = (digits.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)  # in [0, 1]
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=SEED, stratify=y)
    return x_tr, x_te, y_tr, y_te


def train(x_tr: np.ndarray, y_tr: np.ndarray, epochs: int) -> DigitsCNN:
    torch.manual_seed(SEED)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    gen = torch.Generator().manual_seed(SEED)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    model.eval()
    return model


def accuracy_torch(model: DigitsCNN, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean())


def export(model: DigitsCNN, path: str) -> None:
    dummy = torch.zeros(2, 1, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model,
            (dummy,),
            path,
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            do_constant_folding=False,
            training=torch.onnx.TrainingMode.EVAL,
        )


def accuracy_ort(path: str, x: np.ndarray, y: np.ndarray) -> float:
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {"image": x})[0]
    return float((logits.argmax(1) == y).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--out-dir", default=OUT_DIR)
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

    x_tr, x_te, y_tr, y_te = load_data()
    model = train(x_tr, y_tr, args.epochs)
    acc = accuracy_torch(model, x_te, y_te)
    print(f"torch test accuracy: {acc:.4f} ({len(y_te)} images)")

    os.makedirs(args.out_dir, exist_ok=True)
    onnx_path = os.path.join(args.out_dir, "digits_cnn.onnx")
    export(model, onnx_path)
    m = onnx.load(onnx_path)
    onnx.checker.check_model(m, full_check=True)
    acc_ort = accuracy_ort(onnx_path, x_te, y_te)
    print(f"onnxruntime test accuracy: {acc_ort:.4f}")

    xs, ys = x_te[:N_SAVED_TEST], y_te[:N_SAVED_TEST]
    npz_path = os.path.join(args.out_dir, "digits_test.npz")
    np.savez_compressed(npz_path, images=np.ascontiguousarray(xs, np.float32), labels=ys.astype(np.int64))
    print(
        f"saved test set: {len(ys)} images, torch acc {accuracy_torch(model, xs, ys):.4f}, "
        f"onnxruntime acc {accuracy_ort(onnx_path, xs, ys):.4f}"
    )

    hist = collections.Counter(n.op_type for n in m.graph.node)
    print(f"{onnx_path}: {os.path.getsize(onnx_path)} bytes, {len(m.graph.node)} nodes")
    print("op types:", dict(sorted(hist.items(), key=lambda kv: (-kv[1], kv[0]))))


if __name__ == "__main__":
    main()
