"""Runs the cocotb bench tb/test_output.py on Verilator (build once per configuration)."""

import hashlib
from pathlib import Path

import pytest

from hw.build import write_verilog
from hw.output import OutputStage
from sw.config import Config
from tb import runner
from tb.common import config_env

ROOT = Path(__file__).resolve().parents[1]
SMALL = Config(rows=4, cols=2, tile=(1, 1, 2), act_banks=4, out_words=2, max_channels=16,
               max_width=16, act_words=256, weight_words=4096)
TOP = "output_stage"


@pytest.fixture(scope="module", params=[SMALL, Config()], ids=["small", "default"])
def sim(request):
    cfg = request.param
    key = hashlib.sha256(cfg.key().encode()).hexdigest()[:12]
    build_dir = ROOT / "build" / "tb_output" / key
    src = write_verilog(OutputStage(cfg), TOP, build_dir)
    return cfg, runner.build(TOP, [src], build_dir)


def test_output_stage(sim):
    cfg, r = sim
    runner.test(r, TOP, "tb.test_output", extra_env=config_env(cfg, seed=3))
