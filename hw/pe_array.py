"""The R×C int8 MAC array (docs/ARCHITECTURE.md, "Pipeline").

Two pipeline stages, one slot per cycle:

1. the products ``act[j] · wgt[r·C + j]`` are registered (one signed 8×8 multiply per PE, with
   a plain output register, so yosys maps it to a DSP block);
2. the accumulators add them (``first``: load instead of add; ``zero``: add nothing). The last
   slot of a block writes its sum into the shadow register instead, which is offered on ``o``
   with the slot's tag while the next block already accumulates (double buffering).

Latency: a block's ``last`` slot accepted in cycle ``t`` is offered on ``o`` from cycle ``t+2``.
``i.ready`` is low only when the slot in stage 2 ends a block while the shadow still holds a
block that ``o`` does not accept in this cycle; it depends combinationally on ``o.ready`` (and on
registers), never on ``i.valid``. The stall holds stage 1 only: the accumulators are written
only by slots that do not end a block, which never stall. ``o.valid`` and ``o.payload`` are
registers.
"""

from amaranth import Const, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .tags import block_layout, block_tag, slot_layout

__all__ = ["PEArray"]


class PEArray(wiring.Component):
    def __init__(self, config):
        self.config = config
        super().__init__({
            "i": In(stream.Signature(slot_layout(config))),
            "o": Out(stream.Signature(block_layout(config))),
        })

    def elaborate(self, platform):
        cfg = self.config
        R, C = cfg.rows, cfg.cols
        N = R * C
        m = Module()

        # Stage 1 registers: products and the slot's control bits.
        prod = [Signal(signed(2 * cfg.act_bits), name=f"prod_{k}") for k in range(N)]
        s1_valid = Signal()
        s1_first = Signal()
        s1_last = Signal()
        s1_zero = Signal()
        s1_tag = Signal(block_tag(cfg))
        # Stage 2: the accumulators and the shadow block.
        acc = [Signal(signed(cfg.acc_bits), name=f"acc_{k}") for k in range(N)]
        shadow = Signal(block_layout(cfg))
        shadow_valid = Signal()

        stall = Signal()
        m.d.comb += [
            stall.eq(s1_valid & s1_last & shadow_valid & ~self.o.ready),
            self.i.ready.eq(~stall),
            self.o.valid.eq(shadow_valid),
            self.o.payload.eq(shadow),
        ]

        with m.If(self.o.valid & self.o.ready):
            m.d.sync += shadow_valid.eq(0)

        p = self.i.payload
        with m.If(~stall):
            m.d.sync += [
                s1_valid.eq(self.i.valid),
                s1_first.eq(p.first),
                s1_last.eq(p.last),
                s1_zero.eq(p.zero),
                s1_tag.eq(p.tag),
            ]
            for r in range(R):
                for j in range(C):
                    m.d.sync += prod[r * C + j].eq(p.act[j] * p.wgt[r * C + j])
        # Only a block's last slot can stall, and it goes to the shadow: the accumulators never
        # need the stall (a narrow enable instead of one fanning out from o.ready).
        for k in range(N):
            total = (Mux(s1_first, Const(0, signed(cfg.acc_bits)), acc[k])
                     + Mux(s1_zero, 0, prod[k]))[:cfg.acc_bits]
            with m.If(s1_valid & ~s1_last):
                m.d.sync += acc[k].eq(total)
            with m.If(s1_valid & s1_last & ~stall):
                m.d.sync += shadow.acc[k].eq(total)
        with m.If(s1_valid & s1_last & ~stall):
            m.d.sync += [shadow.tag.eq(s1_tag), shadow_valid.eq(1)]
        return m
