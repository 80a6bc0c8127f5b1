#!/usr/bin/env python3
"""Move the register behind an ECP5 block RAM's read port into the block RAM.

An ECP5 DP16KD without its output register (``REGMODE_x = "NOREG"``, which is how Yosys maps
every memory) has a clock-to-data delay of 5.8 ns at speed grade 6, so a register fed by it
misses 100 MHz as soon as its wire is longer than about 4 ns, and the block RAMs sit in fixed
rows across the chip. With ``REGMODE_x = "OUTREG"`` the block RAM registers its read data
itself, with a short clock-to-out, the delay that register saw before. The core registers every
block RAM read port's data before it uses it (hw/loader.py's E stage, hw/core.py's F stage,
hw/output.py's ``pd``), so this is the same circuit, cycle for cycle: Yosys has no pass for it,
so :func:`absorb` does it to the netlist between Yosys and nextpnr.

A port ``x`` (``A`` or ``B``) of a DP16KD is absorbed when

* it is not registered yet, its clock is not inverted and its ``RSTx`` is tied low;
* every ``DOx`` output that anything reads is read by exactly one flip-flop (``TRELLIS_FF``,
  on its ``DI``), and by nothing else;
* those flip-flops share the port's clock and one clock enable (or none), have no set/reset
  (``LSR`` tied low), start at 0 (as the block RAM's output register does) and follow the
  global set/reset (``GSR``) as the block RAM does (Amaranth's ECP5 platform resets the
  ``sync`` domain through it).

Then the flip-flops go, their outputs are driven by the block RAM's ``DOx``, ``REGMODE_x``
becomes ``OUTREG`` and the flip-flops' clock enable drives ``OCEx`` (the output register's).
The read latch behind it keeps its own enable (``CEx``): the output register takes the latch's
data in every enabled cycle, as the flip-flop took ``DOx``. Block RAMs in pseudo-dual-port mode
(36 bits wide, both halves on ``CLKB``) are left alone.

:func:`scripts.synth.synthesize` runs it on every ECP5 netlist. Usage::

    python scripts/bram_outreg.py top.json [--summary outreg.json]   # rewrites top.json
"""

import argparse
import collections
import json
import sys

__all__ = ["absorb"]


def _top(netlist):
    tops = [m for m in netlist["modules"].values() if "top" in m.get("attributes", {})]
    if len(tops) != 1:
        raise ValueError(f"the netlist has {len(tops)} top modules, not one")
    return tops[0]


def _param(cell, name, default=""):
    """A cell parameter as Yosys writes it: strings may end in a space, numbers are bits."""
    return str(cell["parameters"].get(name, default)).strip()


def _width(cell, name):
    value = _param(cell, name, "18")
    return int(value, 2) if set(value) <= {"0", "1"} and len(value) > 2 else int(value)


def _readers(module):
    """Bit → [(cell name, port)] of everything that reads it (None: a top-level port)."""
    readers = collections.defaultdict(list)
    for name, cell in module["cells"].items():
        for port, bits in cell["connections"].items():
            if cell["port_directions"].get(port) != "output":
                for bit in bits:
                    if isinstance(bit, int):
                        readers[bit].append((name, port))
    for port in module["ports"].values():
        if port["direction"] != "input":
            for bit in port["bits"]:
                if isinstance(bit, int):
                    readers[bit].append((None, "port"))
    return readers


def _plan(cells, readers, ram, side):
    """("absorbed", {DO pin: flip-flop name}, clock enable bits) or (reason, None, None)."""
    conn = ram["connections"]
    if _param(ram, f"REGMODE_{side}", "NOREG") != "NOREG":
        return "registered already", None, None
    if 36 in (_width(ram, "DATA_WIDTH_A"), _width(ram, "DATA_WIDTH_B")):
        return "pseudo-dual-port", None, None
    if _param(ram, f"CLK{side}MUX", f"CLK{side}") != f"CLK{side}":
        return "inverted clock", None, None
    if conn.get(f"RST{side}", ["0"]) != ["0"]:
        return "reset", None, None
    clock = conn.get(f"CLK{side}")
    ffs, enables = {}, set()
    for n in range(18):
        bits = conn.get(f"DO{side}{n}")
        if not bits or not isinstance(bits[0], int) or not readers.get(bits[0]):
            continue
        users = readers[bits[0]]
        name, port = users[0]
        ff = cells.get(name)
        if len(users) != 1 or ff is None or ff["type"] != "TRELLIS_FF" or port != "DI":
            return "read by logic", None, None
        fc = ff["connections"]
        if fc.get("CLK") != clock or _param(ff, "CLKMUX", "CLK") != "CLK":
            return "other clock", None, None
        if fc.get("LSR", ["0"]) != ["0"] or _param(ff, "LSRMUX", "LSR") != "LSR":
            return "register with reset", None, None
        if _param(ff, "REGSET", "RESET") != "RESET":
            return "register starts at 1", None, None
        if _param(ff, "GSR", "ENABLED") != _param(ram, "GSR", "ENABLED"):
            return "other global reset", None, None
        cemux = _param(ff, "CEMUX", "1")
        if cemux == "1":
            enables.add(("1",))
        elif cemux == "CE":
            enables.add(tuple(fc["CE"]))
        else:
            return "inverted clock enable", None, None
        ffs[f"DO{side}{n}"] = name
    if not ffs:
        return "unused", None, None
    if len(enables) != 1:
        return "several clock enables", None, None
    return "absorbed", ffs, list(enables.pop())


def absorb(netlist):
    """Absorb the registers behind the DP16KD read ports of ``netlist`` (Yosys JSON, changed
    in place). Returns {outcome: ports} (outcome ``"absorbed"`` or why a port was not) and
    the number of flip-flops removed under ``"flip-flops"``."""
    module = _top(netlist)
    cells = module["cells"]
    readers = _readers(module)
    outcome = collections.Counter()
    for ram in [c for c in cells.values() if c["type"] == "DP16KD"]:
        for side in "AB":
            what, ffs, enable = _plan(cells, readers, ram, side)
            outcome[what] += 1
            if ffs is None:
                continue
            for pin, name in ffs.items():
                ram["connections"][pin] = cells.pop(name)["connections"]["Q"]
            ram["parameters"][f"REGMODE_{side}"] = "OUTREG"
            ram["connections"][f"OCE{side}"] = enable
            outcome["flip-flops"] += len(ffs)
    return dict(outcome)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("netlist", help="Yosys JSON netlist, rewritten in place")
    parser.add_argument("--summary", metavar="PATH", help="write what was done here (JSON)")
    args = parser.parse_args(argv)
    with open(args.netlist) as f:
        netlist = json.load(f)
    outcome = absorb(netlist)
    with open(args.netlist, "w") as f:
        json.dump(netlist, f)
    if args.summary:
        with open(args.summary, "w") as f:
            json.dump(outcome, f, indent=1, sort_keys=True)
    print("bram_outreg: " + (", ".join(f"{k}: {v}" for k, v in sorted(outcome.items()))
                             or "no DP16KD"), file=sys.stderr)


if __name__ == "__main__":
    main()
