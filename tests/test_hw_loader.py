"""hw/loader.py and hw/compact_loader.py on Verilator: the cocotb bench tb/test_loader.py, one
build per configuration."""

import json

import pytest

from sw.config import Config

SMALL = Config(rows=4, cols=2, tile=(1, 1, 2), act_banks=4, out_words=2, max_channels=16,
               max_width=16, act_words=512, weight_words=1024, mask_words=256, param_words=32)

#: Wider words, 16 banks (groups of 16 > Kmax² slots for fc), R = 2·C.
WIDE = Config(rows=8, cols=4, tile=(1, 1, 4), act_banks=16, out_words=4, max_channels=16,
              max_width=16, act_words=1024, weight_words=2048, mask_words=512, param_words=32)

COCOTB_TESTS = ("test_all_layers_dense_and_sparse", "test_pruned_weights", "test_random_layers",
                "test_throughput")


#: hw/compact_loader.py, on the same shapes.
COMPACT = SMALL.replace(loader="compact")
WIDE_COMPACT = WIDE.replace(loader="compact")


@pytest.fixture(scope="module", params=[SMALL, WIDE, COMPACT, WIDE_COMPACT],
                ids=["small", "wide", "compact", "wide-compact"])
def sim(request):
    from hw.compact_loader import CompactLoader
    from hw.loader import Loader
    from hw.pe_array import PEArray
    from tb import runner

    cfg = request.param
    cls = CompactLoader if cfg.loader == "compact" else Loader
    sim = runner.build_component(cls(cfg, credits=PEArray.credits(cfg)), "loader", cfg,
                                 internals=False)
    env = {"TILESKIP_CONFIG": json.dumps(cfg.to_dict()),
           "TILESKIP_LOADER_PERF": str(sim.build_dir / "perf.jsonl")}
    return runner, sim, env, sim.build_dir


@pytest.mark.parametrize("testcase", COCOTB_TESTS)
def test_loader(sim, testcase):
    runner, build, env, build_dir = sim
    if testcase == "test_throughput":
        (build_dir / "perf.jsonl").unlink(missing_ok=True)
    runner.test(build, "loader", "tb.test_loader", testcase=testcase, extra_env=env, seed=1)


def test_pack_program_places_conv_weights():
    """The bench's weight image (written from docs/ARCHITECTURE.md) equals pack_program's."""
    import numpy as np

    from sw import layout
    from tb.test_loader import LAYERS, make_program, weight_memory

    prog = make_program(SMALL, LAYERS[:10], np.random.default_rng(0), prune=0.0)
    image = layout.pack_program(prog)
    assert np.array_equal(weight_memory(image, SMALL), image.weights)

