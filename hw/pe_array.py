"""The R×C int8 MAC array (docs/ARCHITECTURE.md, "Pipeline").

Five pipeline stages, one slot per cycle, and no stall anywhere:

0. the slot is registered, its activations once per row of PEs (each copy feeds ``C`` DSP
   blocks instead of one register feeding ``R·C`` of them across the chip);
1. each PE's operands ``act[j]`` and ``wgt[r·C + j]`` are registered;
2. their product is registered (one signed 8×8 multiply per PE,
   :func:`hw.arith.registered_products`: on ECP5 a MULT18X18D with its input and output
   registers, so stages 1 and 2 are inside the DSP block and the wires to and from it run
   between registers only; on the iCE40 UltraPlus the same in an SB_MAC16 shared by two
   neighbouring PEs of a row);
3. the accumulators add them (``first``: load instead of add; with the compact loader, which
   leaves a cycle between blocks, they are cleared in that cycle instead, as the block moves
   out, and ``first`` is not used);
4. a block whose last slot was added moves from the accumulators into a shadow register (a
   queue of :meth:`PEArray.credits` of them), while the next block accumulates; the queue's
   head is offered on ``o`` with the block's tag. Each PE has its own copy of the control of
   stages 3 and 4 (hw/fanout.py: which shadow takes the finished block, whether the queue
   moves up), next to its accumulator and shadows, so no one register switches the whole
   array.

Latency: a block's ``last`` slot on ``i`` in cycle ``t`` is offered on ``o`` from cycle ``t+5``
(later if an earlier block still waits on ``o``). With the compact loader (``Config.loader =
"compact"``), whose slot register is the array's stage 0, from ``t+4``.
Flow control by credit: ``i`` has no ``ready``; every slot is taken. The source must hold back
a block's ``last`` slot while :meth:`credits` blocks whose last slot it sent have not yet been
taken from ``o`` (the loader does, counting the taken blocks with a delay), so a finished
block always finds a free shadow. ``o.valid`` and ``o.payload`` are registers.
``o_ready_next`` announces ``o.ready`` one cycle ahead: in every cycle it must equal the value
``o.ready`` has in the next one (the output stage knows it). The PEs' copies of the queue's
decisions are worked out from it, so ``o.ready`` itself drives only the queue's counter and its
tags.

With the compact output stage (``Config.output = "compact"``), which takes one value at a time,
the array also has ``o_step``: in a cycle in which it is high (and no block moves into the
head), the head block's accumulators rotate by one, ``acc[k] ← acc[(k + 1) mod R·C]``, so that
the value the output stage wants next is always ``acc[0]``. That saves the output stage an
``R·C``-way multiplexer of 32-bit values; each head register gains an input on the
multiplexer in front of it, which its load already needs.
"""

import itertools

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .arith import registered_products
from .fanout import KEEP, copies
from .tags import block_layout, block_tag, slot_layout

__all__ = ["PEArray"]


class PEArray(wiring.Component):
    #: Cycles the loader's credit loop (issue → ``o`` → taken by the output stage → back)
    #: takes beyond a block's own ``R/OW`` requantization steps.
    CREDIT_LOOP = 13

    @classmethod
    def credits(cls, config):
        """Finished blocks the array holds: blocks a source may have sent (their last slot)
        and not yet seen taken from ``o``. ``Config.shadows``, or if that is 0 enough that
        blocks of ``R/OW`` cycles (the output stage's pace) flow without a gap through the
        credit loop of ``R/OW + CREDIT_LOOP`` cycles: 2 for ``ecp5``, 3 for ``default``."""
        if config.shadows:
            return config.shadows
        steps = config.rows // config.out_words
        return 1 + -(-cls.CREDIT_LOOP // steps)

    def __init__(self, config):
        self.config = config
        members = {
            "i": In(stream.Signature(slot_layout(config), always_ready=True)),
            "o": Out(stream.Signature(block_layout(config))),
            "o_ready_next": In(1),
        }
        if config.output == "compact":
            members["o_step"] = In(1)
        super().__init__(members)

    def elaborate(self, platform):
        cfg = self.config
        R, C = cfg.rows, cfg.cols
        N = R * C
        Q = self.credits(cfg)
        m = Module()

        # The slot's control bits, carried along the stages.
        ctl = data.StructLayout({"valid": 1, "first": 1, "last": 1, "tag": block_tag(cfg)})
        # Stage 0: the slot's weights and control; each row's copy of its activations. The
        # compact loader's slot register, next to a small array, is its stage 0 itself.
        p = self.i.payload
        c0 = Signal(ctl)
        if cfg.loader == "compact":
            s0_wgt, act = p.wgt, [p.act.as_value()] * R
            stage0 = m.d.comb
        else:
            s0_wgt = Signal.like(p.wgt)
            act = copies(m, p.act.as_value(), R, "act")
            stage0 = m.d.sync
            stage0 += s0_wgt.eq(p.wgt)
        stage0 += [c0.valid.eq(self.i.valid), c0.first.eq(p.first), c0.last.eq(p.last),
                   c0.tag.eq(p.tag)]
        # c2's control bits and the queue's decisions have a copy per PE (below): KEEP stops them
        # from merging into one of those (hw/fanout.py).
        c1, c2 = Signal(ctl), Signal(ctl, attrs=KEEP)
        m.d.sync += [c1.eq(c0), c2.eq(c1)]
        # Stages 1 and 2: the products (PE k is row k // C, column k % C).
        # (With the compact loader, one weight a row: tags.slot_layout.)
        share = C if cfg.loader == "compact" else 1     # PEs a weight feeds
        operands = [(act[k // C].word_select(k % C, cfg.act_bits), s0_wgt[k // share])
                    for k in range(N)]
        prod = [p[:2 * cfg.act_bits].as_signed()
                for p in registered_products(m, operands, "mul", platform)]

        # Stage 3: the accumulators add the products. Stage 4: a block whose last slot was
        # added in stage 3 moves from the accumulators into the shadow queue (shadow[0], its
        # head, is on o), so only registers feed the queue. The queue moves up when its head is
        # taken; a finished block joins at its tail. The source's credit guarantees a free
        # place for every block that finishes.
        acc = [Signal(signed(cfg.acc_bits), name=f"acc_{k}") for k in range(N)]
        shadow = [Signal(block_layout(cfg), name=f"shadow_{q}") for q in range(Q)]
        queued = Signal(range(Q + 1), attrs=KEEP)
        head_valid = Signal(attrs=KEEP)         # queued != 0
        store = Signal(attrs=KEEP)              # stage 4: a finished block, to the queue
        store_tag = Signal.like(c2.tag)
        take = Signal()
        tail = Signal(range(Q + 1))
        m.d.sync += [store.eq(c2.valid & c2.last), store_tag.eq(c2.tag)]
        m.d.comb += [
            self.o.valid.eq(head_valid),
            self.o.payload.eq(shadow[0]),
            take.eq(head_valid & self.o.ready),
            tail.eq(queued - take),
        ]
        queued_next = tail + store
        head_next = (tail != 0) | store
        m.d.sync += [queued.eq(queued_next), head_valid.eq(head_next)]
        after_take = Mux(take, shadow[1].tag, shadow[0].tag) if Q > 1 else shadow[0].tag
        m.d.sync += shadow[0].tag.eq(Mux(store & (tail == 0), store_tag, after_take))
        for q in range(1, Q):
            with m.If(store & (tail == q)):
                m.d.sync += shadow[q].tag.eq(store_tag)
            if q + 1 < Q:
                with m.Elif(take):
                    m.d.sync += shadow[q].tag.eq(shadow[q + 1].tag)

        # Each PE's copy of stage 3's control (c2) and of stage 4's decisions: which shadow the
        # finished block goes into (load), whether the queue moves up (shift). Registers loaded
        # with those values worked out for the next cycle (from the next values of store,
        # queued, head_valid and o.ready), so each PE only decodes its own bits.
        # The next cycle's tail and take, from queued (head_valid is queued ≠ 0), o.ready, store
        # and o_ready_next: a table (a few LUTs) instead of three carry chains of arithmetic.
        pctl = data.StructLayout({"valid": 1, "first": 1, "load": Q, "shift": 1})
        pnext = Signal(pctl)
        take_next = Signal()
        tail_next = Signal(Q)                   # one-hot
        w = len(queued)
        with m.Switch(Cat(queued, self.o.ready, store, self.o_ready_next)):
            for n, ready, st, ready_next in itertools.product(range(Q + 1), *[(0, 1)] * 3):
                tl = n - (n != 0 and ready) + st     # queued_next
                tk = int(tl != 0 and ready_next)     # take_next
                with m.Case(n | ready << w | st << (w + 1) | ready_next << (w + 2)):
                    if tl - tk < Q:
                        m.d.comb += tail_next.eq(1 << (tl - tk))
                    m.d.comb += take_next.eq(tk)
        m.d.comb += [pnext.valid.eq(c1.valid), pnext.first.eq(c1.first),
                     pnext.load.eq(Mux(c2.valid & c2.last, tail_next, 0)),
                     pnext.shift.eq(take_next)]
        for k, ctl_k in enumerate(copies(m, pnext.as_value(), N, "pe")):
            pc = data.View(pctl, ctl_k)
            if cfg.loader == "compact":     # cleared as the block leaves, in the loader's gap
                with m.If(pc.load.any()):
                    m.d.sync += acc[k].eq(0)
                with m.Elif(pc.valid):
                    m.d.sync += acc[k].eq((acc[k] + prod[k])[:cfg.acc_bits])
            else:
                with m.If(pc.valid):
                    m.d.sync += acc[k].eq((Mux(pc.first, Const(0, signed(cfg.acc_bits)), acc[k])
                                           + prod[k])[:cfg.acc_bits])
            for q in range(Q):
                with m.If(pc.load[q]):
                    m.d.sync += shadow[q].acc[k].eq(acc[k])
                if q + 1 < Q:
                    with m.Elif(pc.shift):
                        m.d.sync += shadow[q].acc[k].eq(shadow[q + 1].acc[k])
                if q == 0 and cfg.output == "compact":
                    with m.Elif(self.o_step):
                        m.d.sync += shadow[0].acc[k].eq(shadow[0].acc[(k + 1) % N])
        return m
