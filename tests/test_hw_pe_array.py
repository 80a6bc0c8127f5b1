"""Runs the cocotb bench tb/test_pe_array.py on Verilator (build once per configuration)."""

import pytest

from hw.pe_array import PEArray
from sw.config import Config
from tb import runner
from tb.common import config_env

SMALL = Config(rows=4, cols=2, tile=(1, 1, 2), act_banks=4, out_words=2, max_channels=16,
               max_width=16, act_words=256, weight_words=256)
TOP = "pe_array"


#: As the up5k build: one shadow (its queue, Config.shadows), the compact output stage's
#: o_step, which rotates the head block, and the compact loader's slot register as stage 0;
#: 18-bit accumulators, which long blocks wrap.
SHADOW1 = SMALL.replace(shadows=1, output="compact", loader="compact", acc_bits=18)


@pytest.fixture(scope="module", params=[SMALL, Config(), SHADOW1],
                ids=["small", "default", "shadow1"])
def sim(request):
    cfg = request.param
    return cfg, runner.build_component(PEArray(cfg), TOP, cfg)


def test_pe_array(sim):
    cfg, r = sim
    runner.test(r, TOP, "tb.test_pe_array", extra_env=config_env(cfg, seed=1))
