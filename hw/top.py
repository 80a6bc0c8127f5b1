"""The whole device as a simulator or a board sees it: the host interface in front of the core.

``Top(config)`` has one byte stream in (``rx``), one out (``tx``) and a ``busy`` flag; it is what
``sw/sim.py`` verilates, and what a board wrapper puts behind a UART.
"""

from amaranth.hdl import ClockDomain, Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .core import Core
from .host import HostInterface

__all__ = ["Top"]


class Top(wiring.Component):
    """Host interface + core.

    Members
    -------
    rx : In(stream.Signature(8))
        Command bytes (framed as in ``sw/protocol.py``).
    tx : Out(stream.Signature(8))
        Reply bytes.
    busy : Out(1)
        The device has work in hand that needs no further input: a run is in progress, the
        host interface is checking, executing or answering a frame or holds a whole frame
        waiting for its turn, or a reply byte is waiting. A simulator may stop clocking while
        it is low and no input is pending; nothing changes then.

    With ``reset_less=True`` (the simulator's build) the ``sync`` domain is defined inside, with
    no reset: the only domain port is ``clk`` and every register starts from its initial value.
    Without a reset input, Verilator does not re-evaluate all the next-state logic (which
    otherwise depends on ``rst``) on every ``eval()``, which nearly halves the cost of a cycle.
    """

    def __init__(self, config, *, reset_less=False):
        self.config = config
        self.reset_less = reset_less
        members = {
            "rx": In(stream.Signature(8)),
            "tx": Out(stream.Signature(8)),
            "busy": Out(1),
        }
        if reset_less:
            members["clk"] = In(1)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        if self.reset_less:
            m.domains.sync = sync = ClockDomain("sync", reset_less=True)
            m.d.comb += sync.clk.eq(self.clk)
        m.submodules.host = host = HostInterface(self.config)
        m.submodules.core = core = Core(self.config)
        wiring.connect(m, host.cmd, core.cmd)
        wiring.connect(m, core.rsp, host.rsp)
        wiring.connect(m, wiring.flipped(self.rx), host.rx)
        wiring.connect(m, host.tx, wiring.flipped(self.tx))
        m.d.comb += self.busy.eq(core.busy | host.busy | host.tx.valid)
        return m
