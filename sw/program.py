"""The compiled form of a network: layer descriptors and their integer tensors.

A :class:`Program` is what :func:`sw.compile_model` returns and what every backend runs. It is
self-contained (numbers only, no torch module) and can be saved and loaded; ``FORMAT_VERSION``
changes whenever the meaning of a field changes.
"""

import io
import json
from dataclasses import dataclass, field

import numpy as np

from .config import Config

__all__ = ["FORMAT_VERSION", "Layer", "Program", "ProgramError"]

FORMAT_VERSION = 1


class ProgramError(ValueError):
    """A program file or descriptor that cannot be used."""


@dataclass
class Layer:
    """One conv or fully-connected layer with its fused output stage.

    Parameters
    ----------
    name : str
        Module path of the conv/linear in the source model.
    kind : str
        ``"conv"`` or ``"fc"``.
    in_shape : tuple of (int, int, int)
        Input as (C, H, W). For ``fc`` this is the unflattened shape the input tiles are taken on
        (``(N, 1, 1)`` when the input is already a vector).
    out_shape : tuple of (int, int, int)
        Output after pooling, (C, H, W); ``(N, 1, 1)`` for ``fc``.
    weight : ndarray of int8 values
        ``(Co, Ci, K, K)`` for conv, ``(Out, In)`` for fc (``In`` in flattened C, H, W order).
    bias, mult, shift : ndarray
        Per output channel: int32 bias, requantization multiplier and shift.
    in_scale, out_scale : float
        Activation scales of the input and of the (requantized) output.
    mode : str
        Datapath mode; ``"int8"`` (``"binary"`` is reserved for the XNOR-popcount mode).
    """

    name: str
    kind: str
    in_shape: tuple
    out_shape: tuple
    weight: np.ndarray
    bias: np.ndarray
    mult: np.ndarray
    shift: np.ndarray
    in_scale: float
    out_scale: float
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    relu: bool = False
    pool: bool = False
    mode: str = "int8"

    @property
    def conv_shape(self):
        """Output of the conv/FC before pooling, (C, H, W)."""
        if self.kind == "fc":
            return self.out_shape
        _, h, w = self.in_shape
        k, s, p = self.kernel, self.stride, self.padding
        return (self.out_shape[0], (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1)

    @property
    def reduction(self):
        """Products summed into one accumulator."""
        ci, h, w = self.in_shape
        return ci * self.kernel ** 2 if self.kind == "conv" else ci * h * w

    @property
    def macs(self):
        """Dense multiply-accumulates of one image."""
        co, ho, wo = self.conv_shape
        return co * ho * wo * self.reduction

    def describe(self):
        if self.kind == "conv":
            text = (f"conv{self.kernel}x{self.kernel}/s{self.stride}/p{self.padding} "
                    f"{self.in_shape[0]}→{self.out_shape[0]}")
        else:
            text = f"fc {self.reduction}→{self.out_shape[0]}"
        return text + (" relu" if self.relu else "") + (" pool" if self.pool else "")

    _ARRAYS = ("weight", "bias", "mult", "shift")

    def header(self):
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()
                if k not in self._ARRAYS}


@dataclass
class Program:
    """An ordered list of layers, the input quantization and the threshold ε."""

    config: Config
    layers: list
    input_shape: tuple
    input_scale: float
    epsilon: int = 0
    version: int = field(default=FORMAT_VERSION)

    @property
    def output_scale(self):
        return self.layers[-1].out_scale

    @property
    def classes(self):
        return int(np.prod(self.layers[-1].out_shape))

    def with_epsilon(self, epsilon):
        """The same program with another ε (the weights do not depend on it)."""
        if not isinstance(epsilon, int) or epsilon < 0:
            raise ProgramError(f"epsilon must be a non-negative integer, not {epsilon!r}")
        return Program(self.config, self.layers, self.input_shape, self.input_scale, epsilon)

    # -- files --------------------------------------------------------------------------------

    def save(self, path):
        header = {
            "version": self.version, "config": self.config.to_dict(),
            "input_shape": list(self.input_shape), "input_scale": self.input_scale,
            "epsilon": self.epsilon, "layers": [layer.header() for layer in self.layers],
        }
        arrays = {f"{i}.{k}": getattr(layer, k)
                  for i, layer in enumerate(self.layers) for k in Layer._ARRAYS}
        buf = io.BytesIO()
        np.savez(buf, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), **arrays)
        with open(path, "wb") as f:
            f.write(buf.getvalue())

    @classmethod
    def load(cls, path):
        try:
            data = np.load(path, allow_pickle=False)
            header = json.loads(bytes(data["header"]).decode())
        except (OSError, ValueError, KeyError) as e:
            raise ProgramError(f"{path}: not a tileskip program ({e})") from None
        if header.get("version") != FORMAT_VERSION:
            raise ProgramError(f"{path}: program format version {header.get('version')!r}, "
                               f"this tileskip reads version {FORMAT_VERSION}")
        layers = []
        for i, h in enumerate(header["layers"]):
            h = {k: (tuple(v) if isinstance(v, list) else v) for k, v in h.items()}
            layers.append(Layer(**h, **{k: data[f"{i}.{k}"] for k in Layer._ARRAYS}))
        return cls(Config.from_dict(header["config"]), layers, tuple(header["input_shape"]),
                   header["input_scale"], header["epsilon"])
