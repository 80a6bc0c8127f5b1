"""Runs the cocotb bench tb/test_output.py on Verilator (build once per configuration)."""

import pytest

from hw.compact_output import CompactOutput
from hw.output import OutputStage
from sw.config import Config
from tb import runner
from tb.common import config_env

SMALL = Config(rows=4, cols=2, tile=(1, 1, 2), act_banks=4, out_words=2, max_channels=16,
               max_width=16, act_words=256, weight_words=4096)
#: Six requantization steps per block: the parameter memory's rows per cog (8) are not steps.
STEPS6 = SMALL.replace(rows=12, max_channels=32, act_words=1024)
#: Three words per requantization step (not a power of two), four steps per block; 20-bit
#: accumulators, sign-extended by the stage.
OW3 = Config(rows=12, cols=4, tile=(1, 1, 4), act_banks=4, out_words=3, max_channels=32,
             max_width=32, act_words=1024, weight_words=4096, acc_bits=20)
TOP = "output_stage"


#: hw/compact_output.py, on the up5k build's shape (one word a step, 24-bit accumulators; wide
#: enough for layers of 64×64) and on SMALL's.
COMPACT = Config(rows=8, cols=2, tile=(1, 1, 2), act_banks=4, out_words=1, max_channels=32,
                 max_width=64, act_words=2048, weight_words=4096, output="compact", acc_bits=24)
COMPACT_OW2 = SMALL.replace(output="compact")


@pytest.fixture(scope="module", params=[SMALL, STEPS6, OW3, Config(), COMPACT, COMPACT_OW2],
                ids=["small", "steps6", "ow3", "default", "compact", "compact-ow2"])
def sim(request):
    cfg = request.param
    cls = CompactOutput if cfg.output == "compact" else OutputStage
    return cfg, runner.build_component(cls(cfg), TOP, cfg)


def test_output_stage(sim):
    cfg, r = sim
    runner.test(r, TOP, "tb.test_output", extra_env=config_env(cfg, seed=3))
