"""Helpers shared by the cocotb benches: configuration hand-over, payload packing, clocking.

The pytest launcher (tests/test_hw_*.py) passes the :class:`sw.config.Config` of the build in
the environment variable ``TILESKIP_CONFIG`` (JSON of ``Config.to_dict()``) and the random seed
in ``TILESKIP_SEED``.
"""

import json
import os

from amaranth import Shape

from sw.config import Config

__all__ = ["CONFIG_ENV", "SEED_ENV", "config_from_env", "config_env", "pack", "unpack",
           "to_signed"]

CONFIG_ENV = "TILESKIP_CONFIG"
SEED_ENV = "TILESKIP_SEED"


def config_env(config, seed=0):
    return {CONFIG_ENV: json.dumps(config.to_dict()), SEED_ENV: str(seed)}


def config_from_env():
    return Config.from_dict(json.loads(os.environ[CONFIG_ENV])), int(os.environ.get(SEED_ENV, 0))


def to_signed(v, bits):
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >> (bits - 1) else v


def pack(layout, values):
    """Pack a nested dict/list of ints into an int following an Amaranth data layout."""
    from amaranth.lib import data
    if isinstance(layout, data.StructLayout):
        word = 0
        for name, field in layout:
            word |= pack(field.shape, values.get(name, 0)) << field.offset
        return word
    if isinstance(layout, data.ArrayLayout):
        esz = _size(layout.elem_shape)
        word = 0
        for k, v in enumerate(values):
            word |= pack(layout.elem_shape, v) << (k * esz)
        return word
    return int(values) & ((1 << Shape.cast(layout).width) - 1)


def unpack(layout, word):
    """Inverse of :func:`pack` (signed fields come back signed)."""
    from amaranth.lib import data
    if isinstance(layout, data.StructLayout):
        return {name: unpack(field.shape, word >> field.offset) for name, field in layout}
    if isinstance(layout, data.ArrayLayout):
        elem = layout.elem_shape
        esz = _size(elem)
        return [unpack(elem, word >> (k * esz)) for k in range(layout.length)]
    shape = Shape.cast(layout)
    v = word & ((1 << shape.width) - 1)
    return to_signed(v, shape.width) if shape.signed else v


def _size(shape):
    from amaranth.lib import data
    return shape.size if isinstance(shape, data.Layout) else Shape.cast(shape).width
