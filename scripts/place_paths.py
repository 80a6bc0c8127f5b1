#!/usr/bin/env python3
"""Name the slowest register-to-register paths of an ECP5 placement, before routing.

nextpnr prints an fmax estimate after placement but no path, and routing the whole core takes
tens of minutes. This reads the placed design nextpnr writes (``--no-route --write
placed.json``) and estimates every path: a net's delay is nextpnr-ecp5's own placement estimate
(``Arch::predictDelay``: ``120 ps × (6 + max(dx−5, 0) + max(dy−5, 0) + 2·(min(dx, 5) +
min(dy, 5)))`` over the tile distance, 0 along carry chains and into the wide-function
multiplexers), a cell's is a nominal figure (:data:`CELL_PS`). The absolute sums come out above
nextpnr's estimate (it has the real cell delays and some direct connections); use them to rank
paths and to see which long wires they take, not as an fmax.

Usage::

    python scripts/place_paths.py build/synth_core/ecp5/placed.json [-n 20]
"""

import argparse
import json
import re
import sys

__all__ = ["CELL_PS", "net_delay_ps", "analyse", "main"]

#: Nominal delays (ps): flip-flop clock to Q and setup, a LUT or carry half from any input,
#: the carry chain's FCI → FCO, block RAM clock to data (no output register), an unregistered
#: 18×18 multiply, a multiplier's output register clock to P.
CELL_PS = {"ff_q": 400, "ff_setup": 100, "lut": 300, "carry": 60, "bram_q": 4300, "mult": 4500,
           "mult_q": 1000}

_BEL = re.compile(r"X(\d+)/Y(\d+)/")
#: Flip-flop and block RAM inputs that end a path: everything but the clock. (A MULT18X18D's
#: operands end one when they are registered; its output starts one when it is.)
_CLOCKS = ("CLK", "CLKA", "CLKB", "WCK")


def net_delay_ps(src, dst):
    """nextpnr-ecp5's placement estimate of a net from tile ``src`` to tile ``dst``."""
    dx, dy = abs(src[0] - dst[0]), abs(src[1] - dst[1])
    return 120 * (6 + max(dx - 5, 0) + max(dy - 5, 0) + 2 * (min(dx, 5) + min(dy, 5)))


class _Design:
    def __init__(self, placed):
        mod = placed["modules"]["top"]
        self.loc, self.type, self.inputs = {}, {}, {}
        self.registered = {}        # MULT18X18D: its registered operands and output
        self.driver = {}
        for name, cell in mod["cells"].items():
            bel = _BEL.match(cell.get("attributes", {}).get("NEXTPNR_BEL", ""))
            if not bel:
                continue
            self.loc[name] = (int(bel.group(1)), int(bel.group(2)))
            self.type[name] = cell["type"]
            if cell["type"] == "MULT18X18D":
                params = cell.get("parameters", {})
                self.registered[name] = {
                    reg for reg, param in (("A", "REG_INPUTA_CLK"), ("B", "REG_INPUTB_CLK"),
                                           ("P", "REG_OUTPUT_CLK"), ("P", "REG_PIPELINE_CLK"))
                    if str(params.get(param, "NONE")).strip() != "NONE"}
            dirs = cell.get("port_directions", {})
            ins = self.inputs[name] = []
            for port, bits in cell["connections"].items():
                for bit in bits:
                    if isinstance(bit, str):
                        continue
                    if dirs.get(port) == "output":
                        self.driver[bit] = (name, port)
                    else:
                        ins.append((port, bit))
        self.names = {}
        for net, info in mod["netnames"].items():
            for i, bit in enumerate(info["bits"]):
                if isinstance(bit, int) and (bit not in self.names
                                             or len(net) < len(self.names[bit][0])):
                    self.names[bit] = (net, i)
            if net.startswith("$PACKER_") and ("VCC" in net or "GND" in net):
                for bit in info["bits"]:
                    self.driver.pop(bit, None)     # constants
        self.memo = {}
        self._open = set()

    def net_name(self, bit):
        net, i = self.names.get(bit, ("?", 0))
        return f"{net}[{i}]"

    def hop(self, bit, sink, port):
        """Delay of net ``bit`` into ``port`` of cell ``sink``."""
        _, dport = self.driver[bit]
        if dport == "FCO" or port in ("FXA", "FXB"):
            return 0
        return net_delay_ps(self.loc[self.driver[bit][0]], self.loc[sink])

    def arcs(self, cell, port):
        """(input bit, its port, cell delay) of the combinational arcs into ``cell.port``."""
        kind = self.type[cell]
        if kind == "MULT18X18D":
            regs = self.registered[cell]
            if "P" in regs:
                return []
            return [(bit, p, CELL_PS["mult"]) for p, bit in self.inputs[cell]
                    if re.fullmatch(r"[AB]\d+", p) and p[0] not in regs and bit in self.driver]
        if kind in ("TRELLIS_COMB", "TRELLIS_RAMW"):
            return [(bit, p, CELL_PS["carry"] if (p, port) == ("FCI", "FCO")
                     else 0 if p in ("FXA", "FXB") else CELL_PS["lut"])
                    for p, bit in self.inputs[cell]
                    if bit in self.driver and p not in ("WCK", "WRE")
                    and not p.startswith(("WAD", "WD", "DI"))]
        return []

    def start(self, cell):
        if self.type[cell] == "MULT18X18D":
            regs = self.registered[cell]
            return (CELL_PS["mult_q"] if "P" in regs
                    else CELL_PS["ff_q"] + CELL_PS["mult"] if regs else 0)
        return {"TRELLIS_FF": CELL_PS["ff_q"], "DP16KD": CELL_PS["bram_q"]}.get(self.type[cell], 0)

    def endpoints(self, cell):
        """The input ports of ``cell`` that end a path."""
        kind = self.type[cell]
        if kind == "MULT18X18D":
            regs = self.registered[cell]
            return [(p, bit) for p, bit in self.inputs[cell]
                    if re.fullmatch(r"[AB]\d+", p) and p[0] in regs]
        if kind in ("TRELLIS_FF", "DP16KD"):
            return [(p, bit) for p, bit in self.inputs[cell] if p not in _CLOCKS]
        return []

    def arrival(self, cell, port):
        """(arrival ps at the output, the input bit and port it came through) — iterative, as
        the cones are thousands of cells deep."""
        stack = [(cell, port)]
        while stack:
            key = stack[-1]
            if key in self.memo:
                stack.pop()
                continue
            pending = [self.driver[bit] for bit, _, _ in self.arcs(*key)
                       if self.driver[bit] not in self.memo]
            if pending and key not in self._open:
                self._open.add(key)
                stack.extend(pending)
                continue
            best = (self.start(key[0]), None, None)
            for bit, p, delay in self.arcs(*key):
                t = self.memo.get(self.driver[bit], (0,))[0] + self.hop(bit, key[0], p) + delay
                if t > best[0]:
                    best = (t, bit, p)
            self.memo[key] = best
            self._open.discard(key)
            stack.pop()
        return self.memo[(cell, port)]

    def trace(self, bit, sink, port):
        """The path into ``sink.port`` through net ``bit``: [(net name, from, to, net ps)]."""
        hops = []
        while bit is not None:
            cell, dport = self.driver[bit]
            hops.append((self.net_name(bit), self.loc[cell], self.loc[sink],
                         self.hop(bit, sink, port)))
            _, bit, port = self.arrival(cell, dport)
            sink = cell
        return hops[::-1]


def analyse(placed, count=20):
    """The ``count`` slowest paths, one per endpoint bus: a list of dicts with
    ``ps`` (estimated arrival incl. setup), ``end`` (the endpoint net) and ``hops`` (as
    :meth:`_Design.trace`), slowest first."""
    d = _Design(placed)
    ends = []
    for cell in d.type:
        for port, bit in d.endpoints(cell):
            if bit not in d.driver:
                continue
            t = d.arrival(*d.driver[bit])[0] + d.hop(bit, cell, port) + CELL_PS["ff_setup"]
            ends.append((t, cell, port, bit))
    ends.sort(key=lambda e: -e[0])
    out, seen = [], set()
    for t, cell, port, bit in ends:
        hops = d.trace(bit, cell, port)
        key = _bus(cell)
        if key in seen:
            continue
        seen.add(key)
        out.append({"ps": t, "end": f"{cell}.{port}", "hops": hops})
        if len(out) == count:
            break
    return out


def _bus(name):
    """A net or cell name without what Yosys and nextpnr append, digits as ``#``: the
    registers of one bus (or one array of them) share it."""
    name = re.sub(r"_(LUT4|PFUMX|L6MUX21|TRELLIS|CCU2C|DP16KD|MULT18X18D)(_.*)?$|\[.*", "", name)
    return re.sub(r"\d+", "#", name)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("placed", help="nextpnr --write output of a placed (unrouted) design")
    parser.add_argument("-n", type=int, default=20, help="endpoints to list")
    parser.add_argument("--long", type=float, default=2.5,
                        help="list the nets above this many ns of a path")
    args = parser.parse_args(argv)
    with open(args.placed) as f:
        paths = analyse(json.load(f), args.n)
    for path in paths:
        hops = path["hops"]
        print(f"{path['ps'] / 1000:6.2f} ns  {len(hops):3d} nets  {hops[0][0]}  →  {path['end']}")
        for net, src, dst, ps in hops:
            if ps > args.long * 1000:
                print(f"           {ps / 1000:5.2f} ns  {src} → {dst}  {net}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
