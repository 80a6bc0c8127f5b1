"""Runs the cocotb bench tb/test_core.py (whole networks through the core) on Verilator,
one build per configuration."""

import pytest

from hw.core import Core
from sw.config import Config
from tb import runner
from tb.common import config_env

SMALL = Config(rows=4, cols=2, tile=(1, 1, 2), act_banks=4, out_words=2, max_channels=16,
               max_width=16, act_words=512, weight_words=4096, mask_words=512, param_words=32,
               max_layers=8)
#: Sixteen requantization steps per block (one word a step); CHW layers of fewer channels
#: take as many as they have, at least 3.
ROWS16 = SMALL.replace(rows=16, out_words=1, max_channels=64, act_words=2048)
TOP = "core"


#: As the up5k build: the compact loader and output stage (hw/compact_loader.py,
#: hw/compact_output.py) and host bus, one shadow per PE, 24-bit accumulators, and 8 rows:
#: weight rows of two host words, which hold the descriptors and counters too
#: (hw.core.shared_regions).
COMPACT = SMALL.replace(rows=8, max_channels=32, loader="compact", output="compact",
                        bus="compact", shadows=1, acc_bits=24)


@pytest.fixture(scope="module", params=[SMALL, ROWS16, COMPACT], ids=["small", "rows16", "compact"])
def sim(request):
    cfg = request.param
    return cfg, runner.build_component(Core(cfg), TOP, cfg, internals=False)


@pytest.mark.parametrize("seed", [1, 2])
def test_core_networks(sim, seed):
    cfg, r = sim
    runner.test(r, TOP, "tb.test_core", extra_env=config_env(cfg, seed=seed))
