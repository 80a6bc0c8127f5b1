"""Payload layouts shared by every hardware module (docs/ARCHITECTURE.md, "Module interfaces").

All widths come from one :class:`sw.config.Config`; ``ch``/``wd`` are the widths of
``max_channels``/``max_width`` exactly as in :func:`sw.layout.descriptor_fields`.
"""

from amaranth import signed, unsigned
from amaranth.lib import data

from sw import layout as _layout

__all__ = ["block_tag", "slot_layout", "block_layout", "descriptor_layout", "param_layout",
           "index_width"]


def _bits(n):
    """Bits to hold the values 0 … n (the same rule as ``sw.layout._bits``)."""
    return _layout._bits(n)


def block_tag(config):
    """The tag of a block: ``cog`` (output-channel group), ``y`` (output row), ``xg``."""
    ch, wd = _bits(config.max_channels), _bits(config.max_width)
    return data.StructLayout({"cog": ch, "y": wd, "xg": wd})


def slot_layout(config):
    """Payload of the slot stream (loader → PE array): ``act[j]`` and ``wgt[r·C + j]``.

    With the compact loader (``Config.loader = "compact"``), ``wgt[r]``: one weight per row,
    the same for every column, as every conv slot has; it issues an fc slot as ``C`` column
    slots, column ``j``'s activation (the others 0) with its weights (hw/compact_loader.py)."""
    R, C = config.rows, config.cols
    return data.StructLayout({
        "act": data.ArrayLayout(signed(config.act_bits), C),
        "wgt": data.ArrayLayout(signed(config.weight_bits),
                                R if config.loader == "compact" else R * C),
        "first": 1,
        "last": 1,
        "tag": block_tag(config),
    })


def block_layout(config):
    """Payload of the block stream (PE array → output stage): ``acc[r·C + j]`` and the tag."""
    R, C = config.rows, config.cols
    return data.StructLayout({
        "acc": data.ArrayLayout(signed(config.acc_bits), R * C),
        "tag": block_tag(config),
    })


def descriptor_layout(config):
    """One layer descriptor, field for field as :func:`sw.layout.descriptor_fields`."""
    return data.StructLayout(dict(_layout.descriptor_fields(config)))


def param_layout(config):
    """One output-parameter word: ``out_words`` lanes of (bias, mult, shift), lane w at bit
    w·53, each lane least significant field first (``sw.layout.PARAM_FIELDS``)."""
    widths = dict(_layout.PARAM_FIELDS)
    lane = data.StructLayout({"bias": signed(widths["bias"]), "mult": unsigned(widths["mult"]),
                              "shift": unsigned(widths["shift"])})
    assert lane.size == _layout.PARAM_BITS
    return data.ArrayLayout(lane, config.out_words)


def index_width(config):
    """Width of a physical activation word index (``0 … act_words − 1``)."""
    return _bits(config.act_words - 1)
