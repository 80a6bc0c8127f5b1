"""A single-ported memory: the iCE40 UltraPlus's SPRAMs on that device, a memory elsewhere.

:class:`SinglePortMemory` has a read port and a write port in the shape of
:class:`amaranth.lib.memory.Memory`'s (``read.addr``, ``read.en``, ``read.data`` with one cycle
of latency, held while ``read.en`` is low; ``write.addr``, ``write.data``, ``write.en`` with one
bit per ``granularity`` bits), used as one port: the user never reads and writes in the same
cycle, and presents the same address on both ports while it writes.

On an iCE40 UltraPlus it is built from SB_SPRAM256KA blocks (16K words of 16 bits each, side by
side for the width): Yosys does not map such a memory to them by itself. Elsewhere (ECP5, and the
Verilog the simulators build) it is a :class:`~amaranth.lib.memory.Memory` with the two ports.
"""

from types import SimpleNamespace

from amaranth import Cat, ClockSignal, Const, Elaboratable, Instance, Module, Mux, Signal, unsigned
from amaranth.lib.memory import Memory

from .arith import _has_mac16

__all__ = ["SinglePortMemory", "SPRAM_DEPTH", "SPRAM_WIDTH"]

SPRAM_DEPTH = 16384
SPRAM_WIDTH = 16


class SinglePortMemory(Elaboratable):
    def __init__(self, width, depth, *, granularity=None):
        self.width, self.depth = width, depth
        self.granularity = granularity or width
        assert width % self.granularity == 0
        abits = max(1, (depth - 1).bit_length())
        self.read = SimpleNamespace(addr=Signal(abits, name="read_addr"),
                                    en=Signal(init=1, name="read_en"),
                                    data=Signal(width, name="read_data"))
        self.write = SimpleNamespace(addr=Signal(abits, name="write_addr"),
                                     data=Signal(width, name="write_data"),
                                     en=Signal(width // self.granularity, name="write_en"))

    @staticmethod
    def uses_spram(platform, width, depth, granularity):
        return (_has_mac16(platform) and depth <= SPRAM_DEPTH and width % SPRAM_WIDTH == 0
                and (granularity or width) % SPRAM_WIDTH == 0)

    def elaborate(self, platform):
        m = Module()
        rd, wr = self.read, self.write
        if not self.uses_spram(platform, self.width, self.depth, self.granularity):
            m.submodules.mem = mem = Memory(shape=unsigned(self.width), depth=self.depth,
                                            init=[])
            r = mem.read_port()
            w = mem.write_port(granularity=self.granularity
                               if self.granularity < self.width else None)
            m.d.comb += [r.addr.eq(rd.addr), r.en.eq(rd.en), rd.data.eq(r.data),
                         w.addr.eq(wr.addr), w.data.eq(wr.data), w.en.eq(wr.en)]
            return m
        # One address for both ports (the user presents the same one while it writes); a
        # block holds its output while not selected, as a read port does while not enabled.
        writing = wr.en.any()
        addr = Signal(14)
        m.d.comb += addr.eq(Mux(writing, wr.addr, rd.addr))
        per_lane = self.granularity // SPRAM_WIDTH
        outs = []
        for n in range(self.width // SPRAM_WIDTH):
            out = Signal(SPRAM_WIDTH, name=f"spram_{n}_out")
            m.submodules[f"spram_{n}"] = Instance(
                "SB_SPRAM256KA",
                i_ADDRESS=addr, i_DATAIN=wr.data.word_select(n, SPRAM_WIDTH),
                i_MASKWREN=Const(0b1111, 4), i_WREN=wr.en[n // per_lane],
                i_CHIPSELECT=rd.en | writing, i_CLOCK=ClockSignal("sync"),
                i_STANDBY=0, i_SLEEP=0, i_POWEROFF=1, o_DATAOUT=out)
            outs.append(out)
        m.d.comb += rd.data.eq(Cat(*outs))
        return m
