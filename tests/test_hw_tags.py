"""The shared payload layouts of hw/tags.py agree with sw/layout.py bit for bit."""

import random

import pytest
from amaranth import Shape

from hw.tags import (
    block_layout,
    block_tag,
    descriptor_layout,
    index_width,
    param_layout,
    slot_layout,
)
from sw import layout
from sw.config import CONFIGS, Config
from tb.common import pack, unpack

CFGS = [*CONFIGS.values(), Config(rows=4, cols=2, tile=(1, 1, 2), out_words=2, max_channels=16,
                                  max_width=16, act_words=256, weight_words=256)]


@pytest.mark.parametrize("cfg", CFGS)
def test_widths(cfg):
    ch, wd = layout._bits(cfg.max_channels), layout._bits(cfg.max_width)
    tag = block_tag(cfg)
    assert [(n, Shape.cast(f.shape).width) for n, f in tag] == [("cog", ch), ("y", wd),
                                                                 ("xg", wd)]
    R, C = cfg.rows, cfg.cols
    # the compact loader's slots carry one weight a row (hw/compact_loader.py)
    weights = R if cfg.loader == "compact" else R * C
    assert slot_layout(cfg).size == 8 * C + 8 * weights + 2 + tag.size
    assert block_layout(cfg).size == cfg.acc_bits * R * C + tag.size
    assert param_layout(cfg).size == cfg.out_words * layout.PARAM_BITS
    assert (1 << index_width(cfg)) >= cfg.act_words


@pytest.mark.parametrize("cfg", CFGS)
def test_descriptor_and_params_match_packers(cfg):
    rng = random.Random(0)
    fields = layout.descriptor_fields(cfg)
    for _ in range(20):
        values = {n: rng.randrange(1 << b) for n, b in fields}
        word = layout.pack_fields(fields, values)
        assert pack(descriptor_layout(cfg), values) == word
        assert unpack(descriptor_layout(cfg), word) == values
        lanes = [{"bias": rng.randrange(-2 ** 31, 2 ** 31), "mult": rng.randrange(1 << 16),
                  "shift": rng.randrange(32)} for _ in range(cfg.out_words)]
        ref = sum(layout.pack_fields(layout.PARAM_FIELDS, dict(d, bias=d["bias"] & 0xFFFFFFFF))
                  << (r * layout.PARAM_BITS) for r, d in enumerate(lanes))
        assert pack(param_layout(cfg), lanes) == ref
        assert unpack(param_layout(cfg), ref) == lanes
