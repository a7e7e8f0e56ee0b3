"""Write `bench/models/digits_split.npz`: the digits CNN's whole train/test split, for calibration and accuracy.

The split is `bench/train_digits.py`'s (scikit-learn's bundled digits, pixels / 16, 75/25 stratified,
`random_state=0`), so calibration uses training images and accuracy is measured on all 450 held-out
ones. scikit-learn is needed only to re-create the file (like torch for training, it is not a project
dependency):

    python -m venv /tmp/sk && /tmp/sk/bin/pip install scikit-learn==1.9.1
    /tmp/sk/bin/python bench/digits_split.py

Arrays: `train_images` float32 [1347, 1, 8, 8], `train_labels` int64, `test_images` float32 [450, 1, 8, 8],
`test_labels` int64. Pixels are stored as uint8 sixteenths (`*_pixels`) to keep the file small; `load()`
returns them as float32 in [0, 1].
"""

from __future__ import annotations

import os

import numpy as np

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models", "digits_split.npz")


def load() -> dict[str, np.ndarray]:
    """The split: images float32 in [0, 1] as the model takes them, labels int64."""
    with np.load(PATH) as z:
        return {
            "train_images": z["train_pixels"].astype(np.float32) / 16.0,
            "train_labels": z["train_labels"].astype(np.int64),
            "test_images": z["test_pixels"].astype(np.float32) / 16.0,
            "test_labels": z["test_labels"].astype(np.int64),
        }


def main() -> None:
    from sklearn.datasets import load_digits  # noqa: PLC0415 - only this script needs scikit-learn
    from sklearn.model_selection import train_test_split  # noqa: PLC0415

    digits = load_digits()
    pixels = digits.images.astype(np.uint8).reshape(-1, 1, 8, 8)  # integers 0..16
    x_tr, x_te, y_tr, y_te = train_test_split(pixels, digits.target, test_size=0.25, random_state=0,
                                              stratify=digits.target)
    np.savez_compressed(PATH, train_pixels=x_tr, train_labels=y_tr.astype(np.int64), test_pixels=x_te,
                        test_labels=y_te.astype(np.int64))
    print(f"wrote {PATH} ({os.path.getsize(PATH)} bytes): {len(x_tr)} train, {len(x_te)} test images")


if __name__ == "__main__":
    main()
