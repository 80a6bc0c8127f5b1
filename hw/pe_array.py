"""The R×C int8 MAC array (docs/ARCHITECTURE.md, "Pipeline").

Four pipeline stages, one slot per cycle, and no stall anywhere:

0. the slot is registered, its activations once per row of PEs (each copy feeds ``C`` DSP
   blocks instead of one register feeding ``R·C`` of them across the chip);
1. the products ``act[j] · wgt[r·C + j]`` are registered (one signed 8×8 multiply per PE, with
   a plain output register, so yosys maps it to a DSP block);
2. the products are registered again (stages 0 and 2 let the placer split the long routes to
   and from the DSP blocks, which sit in fixed rows across the chip);
3. the accumulators add them (``first``: load instead of add; ``zero``: add nothing). The last
   slot of a block writes its sum into a shadow register instead (a queue of
   :attr:`PEArray.CREDITS` of them); the queue's head is offered on ``o`` with the slot's tag
   while the next blocks accumulate.

Latency: a block's ``last`` slot on ``i`` in cycle ``t`` is offered on ``o`` from cycle ``t+4``
(later if an earlier block still waits on ``o``).
Flow control by credit: ``i`` has no ``ready``; every slot is taken. The source must hold back
a block's ``last`` slot while :attr:`CREDITS` blocks whose last slot it sent have not yet been
taken from ``o`` (the loader does, counting the taken blocks with a delay), so a finished
block always finds a free shadow. Nothing fans out from ``o.ready`` but the queue's own moves.
``o.valid`` and ``o.payload`` are registers.
"""

from amaranth import Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .fanout import copies
from .tags import block_layout, block_tag, slot_layout

__all__ = ["PEArray"]


class PEArray(wiring.Component):
    #: Finished blocks the array can hold: blocks a source may have sent (their last slot)
    #: and not yet seen taken from ``o``. The loader's credit loop (issue → ``o`` → taken by
    #: the output stage → back) takes ``R/OW + 11`` cycles, so three keep blocks of ``R/OW``
    #: cycles flowing without a gap for ``R/OW ≥ 6`` (every named configuration has 8 or more;
    #: smaller ones pay a few cycles per block).
    CREDITS = 3

    def __init__(self, config):
        self.config = config
        super().__init__({
            "i": In(stream.Signature(slot_layout(config), always_ready=True)),
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
        s0 = Signal(slot_layout(cfg))           # s0.act unused: each row has its copy
        s0_valid = Signal()
        act = copies(m, self.i.payload.act.as_value(), R, "act")
        c1, c2 = Signal(ctl), Signal(ctl)
        prod = [Signal(signed(2 * cfg.act_bits), name=f"prod_{k}") for k in range(N)]
        prod2 = [Signal(signed(2 * cfg.act_bits), name=f"prod2_{k}") for k in range(N)]
        # Stage 3: the accumulators and the shadow queue (shadow[0], its head, is on o).
        acc = [Signal(signed(cfg.acc_bits), name=f"acc_{k}") for k in range(N)]
        shadow = [Signal(block_layout(cfg), name=f"shadow_{q}") for q in range(self.CREDITS)]
        queued = Signal(range(self.CREDITS + 1))
        head_valid = Signal()                    # queued != 0, as a register

        take_out = Signal()
        m.d.comb += [
            take_out.eq(self.o.valid & self.o.ready),
            self.o.valid.eq(head_valid),
            self.o.payload.eq(shadow[0]),
        ]

        m.d.sync += [
            s0.eq(self.i.payload), s0_valid.eq(self.i.valid),
            c1.valid.eq(s0_valid), c1.first.eq(s0.first), c1.last.eq(s0.last),
            c1.zero.eq(s0.zero), c1.tag.eq(s0.tag),
            c2.eq(c1),
        ]
        for r in range(R):
            for j in range(C):
                k = r * C + j
                a = act[r].word_select(j, cfg.act_bits).as_signed()
                m.d.sync += [prod[k].eq(a * s0.wgt[k]), prod2[k].eq(prod[k])]

        block = Signal(block_layout(cfg))        # stage 3's sum and tag
        for k in range(N):
            m.d.comb += block.acc[k].eq((Mux(c2.first, Const(0, signed(cfg.acc_bits)), acc[k])
                                         + Mux(c2.zero, 0, prod2[k]))[:cfg.acc_bits])
        m.d.comb += block.tag.eq(c2.tag)
        with m.If(c2.valid & ~c2.last):
            m.d.sync += [acc[k].eq(block.acc[k]) for k in range(N)]
        # The queue moves up when its head is taken; a finished block joins at its tail. The
        # source's credit guarantees a free place for every block that finishes.
        store = c2.valid & c2.last
        tail = Signal.like(queued)
        m.d.comb += tail.eq(queued - take_out)
        m.d.sync += [queued.eq(tail + store), head_valid.eq((tail != 0) | store)]
        for q in range(self.CREDITS):
            with m.If(store & (tail == q)):
                m.d.sync += shadow[q].eq(block)
            if q + 1 < self.CREDITS:
                with m.Elif(take_out):
                    m.d.sync += shadow[q].eq(shadow[q + 1])
        return m
