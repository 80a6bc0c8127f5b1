"""The R×C int8 MAC array (docs/ARCHITECTURE.md, "Pipeline").

Four pipeline stages, one slot per cycle, and no stall anywhere:

0. the slot is registered;
1. the products ``act[j] · wgt[r·C + j]`` are registered (one signed 8×8 multiply per PE, with
   a plain output register, so yosys maps it to a DSP block);
2. the products are registered again (stages 0 and 2 let the placer split the long routes to
   and from the DSP blocks, which sit in fixed rows across the chip);
3. the accumulators add them (``first``: load instead of add; ``zero``: add nothing). The last
   slot of a block writes its sum into a shadow register instead (two of them, A and B, a
   queue), which is offered on ``o`` with the slot's tag while the next blocks accumulate.

Latency: a block's ``last`` slot accepted in cycle ``t`` is offered on ``o`` from cycle ``t+4``
(later if an earlier block still waits on ``o``).
Flow control by credit: ``i.ready`` is low only for a block's ``last`` slot while two blocks
whose last slot has been accepted have not yet been taken from ``o`` (so both shadows are
spoken for) and ``o`` does not take one in this cycle; it depends on ``i.payload.last``,
``o.ready`` and registers only. Every other slot is always taken, so the array never holds a
slot and nothing fans out from ``o.ready`` but the queue's own moves. With ``o`` always ready
a last slot is refused only when the two blocks before it both ended in the 3 cycles before
(one-slot blocks); the output stage takes one block per ``R/OW`` cycles and gets them without
a gap when ``R/OW ≥ 4``. ``o.valid`` and ``o.payload`` are registers.
"""

from amaranth import Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
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

        # The slot's control bits, carried along the stages.
        ctl = data.StructLayout({"valid": 1, "first": 1, "last": 1, "zero": 1,
                                 "tag": block_tag(cfg)})
        # Stage 0: the slot; stage 1: the products; stage 2: the products again.
        s0 = Signal(slot_layout(cfg))
        s0_valid = Signal()
        c1, c2 = Signal(ctl), Signal(ctl)
        prod = [Signal(signed(2 * cfg.act_bits), name=f"prod_{k}") for k in range(N)]
        prod2 = [Signal(signed(2 * cfg.act_bits), name=f"prod2_{k}") for k in range(N)]
        # Stage 3: the accumulators and the shadow queue (A is offered on o, B waits behind it).
        acc = [Signal(signed(cfg.acc_bits), name=f"acc_{k}") for k in range(N)]
        shadow_a = Signal(block_layout(cfg))
        shadow_b = Signal(block_layout(cfg))
        a_valid = Signal()
        b_valid = Signal()
        committed = Signal(range(3))     # blocks with their last slot taken on i, not yet on o

        p = self.i.payload
        take_in = Signal()
        take_out = Signal()
        m.d.comb += [
            self.i.ready.eq(~(p.last & (committed == 2) & ~take_out)),
            take_in.eq(self.i.valid & self.i.ready & p.last),
            take_out.eq(self.o.valid & self.o.ready),
            self.o.valid.eq(a_valid),
            self.o.payload.eq(shadow_a),
        ]
        m.d.sync += committed.eq(committed + take_in - take_out)

        m.d.sync += [
            s0.eq(p), s0_valid.eq(self.i.valid & self.i.ready),
            c1.valid.eq(s0_valid), c1.first.eq(s0.first), c1.last.eq(s0.last),
            c1.zero.eq(s0.zero), c1.tag.eq(s0.tag),
            c2.eq(c1),
        ]
        for r in range(R):
            for j in range(C):
                k = r * C + j
                m.d.sync += [prod[k].eq(s0.act[j] * s0.wgt[k]), prod2[k].eq(prod[k])]

        block = Signal(block_layout(cfg))        # stage 3's sum and tag
        for k in range(N):
            m.d.comb += block.acc[k].eq((Mux(c2.first, Const(0, signed(cfg.acc_bits)), acc[k])
                                         + Mux(c2.zero, 0, prod2[k]))[:cfg.acc_bits])
        m.d.comb += block.tag.eq(c2.tag)
        with m.If(c2.valid & ~c2.last):
            m.d.sync += [acc[k].eq(block.acc[k]) for k in range(N)]
        # The queue: A is taken (B moves up), a finished block joins at its tail. The credit
        # on i guarantees a free place for every block that finishes.
        store = c2.valid & c2.last
        with m.If(take_out):
            with m.If(b_valid):
                m.d.sync += shadow_a.eq(shadow_b)
                with m.If(store):
                    m.d.sync += shadow_b.eq(block)
                with m.Else():
                    m.d.sync += b_valid.eq(0)
            with m.Elif(store):
                m.d.sync += shadow_a.eq(block)
            with m.Else():
                m.d.sync += a_valid.eq(0)
        with m.Elif(store):
            with m.If(~a_valid):
                m.d.sync += [shadow_a.eq(block), a_valid.eq(1)]
            with m.Else():
                m.d.sync += [shadow_b.eq(block), b_valid.eq(1)]
        return m
