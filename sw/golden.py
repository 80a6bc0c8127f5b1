"""The golden model: a :class:`~sw.program.Program` executed with the numerics contract.

This is the reference every hardware backend is compared against, output byte for output byte.
"""

import numpy as np

from . import numerics as nx

__all__ = ["forward", "layer_forward"]


def _tiled_view(layer, x):
    """The layer input as the (N, C, H, W) tensor its tiles are taken on."""
    return x.reshape((x.shape[0],) + tuple(layer.in_shape))


def layer_forward(layer, x, tile, epsilon):
    """One layer on int8 input ``x`` (N, C, H, W). Returns ``(output, input_flags)``.

    The input's flagged tiles (every ``|x| ≤ ε``, in the layer's tile, ``tile`` being the
    configured one) are zeroed before the MACs.
    """
    x = _tiled_view(layer, x)
    tile = nx.layer_tile(layer.kind, tile)
    flags = nx.tile_flags(x, tile, epsilon)
    x = nx.apply_flags(x, flags, tile)
    if layer.kind == "conv":
        acc = nx.conv2d_acc(x, layer.weight, layer.bias, stride=layer.stride,
                            padding=layer.padding)
    else:
        acc = nx.linear_acc(x.reshape(x.shape[0], -1), layer.weight, layer.bias)
    y = nx.requantize(acc, layer.mult, layer.shift, relu=layer.relu)
    if layer.pool:
        y = nx.maxpool2x2(y)
    return y.reshape((y.shape[0],) + tuple(layer.out_shape)), flags


def forward(program, xq):
    """Run ``program`` on quantized input ``xq`` (N, C, H, W) → (raw outputs (N, classes) int64,
    list of each layer's input flags)."""
    tile = program.config.tile
    flags = []
    x = np.asarray(xq, dtype=np.int64)
    for layer in program.layers:
        x, f = layer_forward(layer, x, tile, program.epsilon)
        flags.append(f)
    return x.reshape(x.shape[0], -1), flags
