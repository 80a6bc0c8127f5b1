"""A compact loader for small FPGAs: the same ports, slots and counters as :class:`hw.loader.Loader`
(docs/ARCHITECTURE.md; ``sw/schedule.py`` counts what it issues), in less logic: on the ``up5k``
configuration 1,253 LUTs and 602 flip-flops where :class:`~hw.loader.Loader` takes 2,454 and
2,695 (results/synth.json), one flag read port per bank instead of ``Kmax``, and one weight
read a cycle (``Config.loader = "compact"``).

Where :class:`~hw.loader.Loader` scans a whole group (``Kmax`` kernel rows) per cycle through a
deep pipeline and an 8-entry FIFO, so that it keeps 100 MHz on ECP5 and hides fully skipped groups
behind the issue of earlier slots, this one scans one *row* at a time (conv: one input channel's
kernel row ``ky``, its ``k`` slots ``kx``; fc: one group of ``NB`` input words) and hands it to
issue through one row register:

::

    S0 (row walk, flag/mask read) ─▶ S1 (row's slot mask) ─▶ RB (issue: one slot per cycle,
    act/weight read) ─▶ D (the slot formed) ─▶ F (the slot on o, until its last bit is known) ─▶ o

* **S0** walks the rows of the layer in the order of the slots (conv: ``for cog, for y, for xg,
  for ci, for ky``, with pooling the two rows of a pool window back to back; fc: ``for cog, for
  g``) and reads the row's flags: the ``NB`` consecutive words from the row's leftmost column,
  one per bank on flag port 0 (ports ``k ≥ 1`` are not used), and its group's weight-skip word.
  The row's first word's address is a register, stepped from row to row (and the layer's steps
  registered from ``desc``, in the cycle after ``start``), so the flag block RAMs' read
  addresses come from registers through one incrementer: no product of counters. The next
  block's first word is a register too, worked out in the row's first cycle (a row stays at
  least two).
* **S1** forms the row's slot mask (a slot is skipped when all the words it reads are flagged,
  or it reads none, or its weight-skip bit is set; with skipping off every slot is issued),
  counts the row's slots, and hands the row to RB whenever RB can take it, without waiting on
  the flags read in that cycle; a row with no slot to issue leaves RB in one cycle, with its
  block's end if it ends its block.
* **RB** issues the row's slots, lowest ``kx`` first, one per cycle: it reads the slot's words
  (each once) and its weight word (conv: one bank). The next slot (one-hot, and its ``kx``)
  is a register, set as the row moves in and as a slot is issued, and each slot's banks come
  with the row from S0 (S1 tests their flags with them), so the reads' addresses and enables
  start from registers. An fc slot takes ``C`` cycles: it goes out
  as ``C`` column slots, column ``j``'s activation (the others 0) with its weight word, bank
  ``j``, its act word read again for each; so every slot has one weight word, which the PE
  array's rows broadcast over their columns (:func:`hw.tags.slot_layout`), and at most one
  weight read port is enabled in any cycle (the core keeps the weights in one single-ported
  memory: the SPRAMs of an iCE40 UltraPlus).
* **D** forms the slot from the read data. **F** holds one slot, which leaves only when it is
  known whether it is its block's last: it ended its block's last row, or D holds the item after
  it (a slot of the same block, or the block's end, which seals it). A block with no issued slot
  becomes one ``zero`` slot (``first = last = 1``, ``act = wgt = 0``). A block's last slot
  leaves only while fewer than ``credits`` blocks are outstanding (the same credit protocol as
  :class:`~hw.loader.Loader`: ``block_done`` pulses). While F cannot take D's item, D holds it
  and RB issues no read, so the read data stays on the memories' outputs. No slot leaves in the
  cycle after a block's last one: the PE array clears its accumulators in that cycle, so they
  need no multiplexer for ``first`` (:class:`~hw.pe_array.PEArray`).

Throughput: one issued conv slot per cycle (fc: one per ``C`` cycles) while rows keep coming,
and a cycle between blocks, and two cycles a layer to take the layer's steps; but a row takes at
least two cycles (S0 moves a row on once S1 is empty), so a 1×1 conv issues a slot every
other cycle, and a row with nothing to issue costs two. So a fully skipped 3×3 group costs 6
cycles instead of 9.

Unlike :class:`~hw.loader.Loader` it does not latch ``desc`` at ``start``: the descriptor must
stay from ``start`` until ``done`` (the core's sequencer changes it only between layers), which
saves a copy of it.

The row's ``NB`` words must cover the columns of all its slots:
``ceil(((C − 1)·max_stride + max_kernel − 1) / C) + 1 ≤ NB`` (:class:`sw.config.Config` checks
it when ``loader = "compact"``).
"""

import functools
import operator

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import Out

from sw.layout import KIND_FC

from .arith import lut_mul
from .loader import _bits, _log2, address_bits, loader_members
from .tags import slot_layout

__all__ = ["CompactLoader"]


class CompactLoader(wiring.Component):
    """Block and slot sequencer of one layer, row by row; the ports of :class:`hw.loader.Loader`."""

    def __init__(self, config, *, credits):
        self.config = config
        self.credits = credits
        self._act_addr_bits, _, self._mask_addr_bits = address_bits(config)
        # wgt_bank: the bank whose weight port is enabled in this cycle, if any; every bank's
        # wgt_addr carries the word's in-bank address. So the core's one weight memory takes its
        # row (in-bank address · C + bank) from registers, without waiting on the enables.
        super().__init__({**loader_members(config),
                          "wgt_bank": Out(range(max(config.cols, 2)))})

    def elaborate(self, platform):
        cfg = self.config
        R, C, NB, KM = cfg.rows, cfg.cols, cfg.act_banks, cfg.max_kernel
        lgC, lgNB = _log2(C), _log2(NB)
        W = max(KM, NB)                              # slots per row, at most
        ch, wd = _bits(cfg.max_channels), _bits(cfg.max_width)
        wt = _bits(cfg.weight_words)
        MBW = self._mask_addr_bits
        # Signed logical addresses and columns (padding goes negative).
        ASW = _bits(2 * cfg.act_words + 4 * (KM + 1) * (cfg.max_width + NB)) + 1
        XW = _bits(2 * (cfg.max_width + C) * cfg.max_stride + 2 * KM) + 1
        m = Module()

        L = self.desc                   # held from start until done (not copied: see above)
        skip = Signal()
        fc = Signal()
        m.d.comb += fc.eq(L.kind == KIND_FC)
        k, s, p = L.kernel, L.stride, L.pad

        # -- S0: the row walk -------------------------------------------------------------------
        # The row's addresses are kept in registers and stepped from row to row, so that none
        # of them is a product of counters: the flag block RAMs' read addresses come from
        # registers through one incrementer. The layer's constant steps come from `desc` one
        # cycle late (`c_*`, registered every cycle): S0's first row needs none of them.
        run = Signal()                  # S0 holds a row
        cog = Signal(ch)
        y = Signal(wd)
        t = Signal()                    # pooled: second row of the pool window
        xg = Signal(wd)
        ci = Signal(ch)
        ky = Signal(range(KM))
        g = Signal(_bits(cfg.act_words))
        wrow = Signal(wt + 1)           # conv: weight index of (ci, ky, kx = 0); fc: of word g·NB
        wcog = Signal(wt + 1)           # the block's first weight index
        mcog = Signal(MBW + 1)          # the cog's first weight-skip word
        mrow = Signal(MBW + 1)          # the row's weight-skip word
        mbit = Signal(range(KM * KM))   # conv: ky·k
        ybase = Signal(signed(XW))      # y·s − p: the input row of ky = 0
        x0 = Signal(signed(XW))         # xg·s·C − p: leftmost column of the row's windows
        yA = Signal(signed(ASW))        # ybase·in_p: its first word
        A = Signal(signed(ASW))         # the row's first word: ci·in_s + (ybase + ky)·in_p
        #                                 + x0 // C (fc: g·NB)
        rot = Signal(lgNB)              # bank of the row's word 0: (A + ci) mod NB (fc: 0)

        # The layer's constants.
        c_sC = Signal(signed(XW))       # s·C: x0's step
        c_sp = Signal(signed(ASW))      # s·in_p: yA's step
        c_yA0 = Signal(signed(ASW))     # −p·in_p: yA of y = 0
        c_dci = Signal(signed(ASW))     # in_s − (k − 1)·in_p: A's step to the next channel
        c_last = {name: Signal(len(field), name=f"c_last_{name}")    # each counter's last value
                  for name, field in (("ky", ky), ("ci", ci), ("g", g), ("xg", xg),
                                      ("y", y), ("cog", cog))}
        m.d.sync += [
            c_sC.eq(lut_mul(s, C)), c_sp.eq(lut_mul(s, L.in_p)), c_yA0.eq(-lut_mul(p, L.in_p)),
            c_dci.eq(L.in_s - lut_mul((k - 1)[:len(k)], L.in_p)),
            c_last["ky"].eq(k - 1), c_last["ci"].eq(L.in_c - 1), c_last["g"].eq(L.groups - 1),
            c_last["xg"].eq(L.xgs - 1), c_last["y"].eq(L.rows - 1), c_last["cog"].eq(L.cogs - 1),
        ]

        iy = Signal(signed(XW))
        m.d.comb += iy.eq(ybase + ky)
        row_ok = Signal()
        m.d.comb += row_ok.eq((iy >= 0) & (iy < L.in_h))
        wlo = Signal(signed(XW))        # the row's first word's column: x0 // C
        m.d.comb += wlo.eq(x0 >> lgC)
        # The word the bank b port reads: the row's word i_b = (b − rot) mod NB.
        bank_addr = []
        for b in range(NB):
            i_b = Signal(lgNB, name=f"i_{b}") if lgNB else Const(0, 1)
            if lgNB:
                m.d.comb += i_b.eq(b - rot)
            bank_addr.append(((A + i_b) >> lgNB)[:self._act_addr_bits])

        # Per slot kx and column j: inside the input, which of the row's words, which lane.
        S0G = data.StructLayout({
            "ok": data.ArrayLayout(C, W),       # [kx] bit j
            "off": data.ArrayLayout(data.ArrayLayout(range(max(NB, 2)), C), W),
            "lane": data.ArrayLayout(data.ArrayLayout(range(max(C, 2)), C), W),
            "ben": data.ArrayLayout(NB, W),     # [kx] the banks it reads
            "exists": W,
        })
        geo = Signal(S0G)

        def bank_of(rot, off):
            """The bank of a row's word ``off`` (its word 0 in bank ``rot``)."""
            return (rot + off)[:lgNB] if lgNB else 0

        for kx in range(W):
            if kx < KM:
                for j in range(C):
                    ix = Signal(signed(XW), name=f"ix_{kx}_{j}")
                    m.d.comb += ix.eq(x0 + lut_mul(s, j) + kx)
                    m.d.comb += [
                        geo.ok[kx][j].eq(~fc & row_ok & (ix >= 0) & (ix < L.in_w)),
                        geo.off[kx][j].eq((ix >> lgC) - wlo),
                        geo.lane[kx][j].eq(ix[:lgC] if lgC else 0),
                    ]
            conv_ben = Const(0, NB)
            if kx < KM:
                bank = [bank_of(rot, geo.off[kx][j]) for j in range(C)]
                conv_ben = Cat(*[Cat(*[geo.ok[kx][j] & (bank[j] == b) for j in range(C)]).any()
                                 for b in range(NB)])
            fc_ben = Const(1 << kx, NB) if kx < NB else Const(0, NB)     # (fc: rot = 0)
            m.d.comb += geo.ben[kx].eq(Mux(fc, fc_ben, conv_ben))
            conv_exists = kx < k if kx < KM else Const(0)
            fc_exists = ((g << lgNB) + kx < L.in_words) if kx < NB else Const(0)
            m.d.comb += geo.exists[kx].eq(Mux(fc, fc_exists, conv_exists))

        last_ky = ky == c_last["ky"]
        last_ci = ci == c_last["ci"]
        last_g = g == c_last["g"]
        last_xg = xg == c_last["xg"]
        last_y = Mux(L.pool, y >= c_last["y"], y == c_last["y"])
        last_cog = cog == c_last["cog"]
        row_last = Mux(fc, last_g, last_ci & last_ky)

        # The next block's window (conv), when this row ends its block.
        y_n, xg_n, t_n = Signal.like(y), Signal.like(xg), Signal.like(t)
        ybase_n, x0_n, yA_n = Signal.like(ybase), Signal.like(x0), Signal.like(yA)
        m.d.comb += [y_n.eq(y), xg_n.eq(xg), t_n.eq(t), ybase_n.eq(ybase), x0_n.eq(x0),
                     yA_n.eq(yA)]
        down = [y_n.eq(y + 1), ybase_n.eq(ybase + s), yA_n.eq(yA + c_sp)]
        right = [xg_n.eq(xg + 1), x0_n.eq(x0 + c_sC)]
        row_start = [xg_n.eq(0), x0_n.eq(-p)] + down
        with m.If(L.pool):
            with m.If(~t):
                m.d.comb += [t_n.eq(1)] + down
            with m.Else():
                m.d.comb += [t_n.eq(0), y_n.eq(y - 1), ybase_n.eq(ybase - s),
                             yA_n.eq(yA - c_sp)] + right
                with m.If(last_xg):
                    m.d.comb += row_start
        with m.Else():
            m.d.comb += right
            with m.If(last_xg):
                m.d.comb += row_start
        block_last = last_xg & Mux(L.pool, t & last_y, last_y)
        prime = Signal()                # the cycle after start: the first block's window
        settle = Signal()               # and the cycle after that: the next A_n is worked out
        with m.If(block_last):
            m.d.comb += [y_n.eq(0), t_n.eq(0), xg_n.eq(0), ybase_n.eq(-p), x0_n.eq(-p),
                         yA_n.eq(c_yA0)]
        # The next block's first row's A, registered: S0's row changes at most every other
        # cycle (advance waits for S1 to be empty; after start, for settle), so A_n has been
        # worked out from the row's registers by the time the row moves on.
        A_n = Signal.like(A)
        m.d.sync += A_n.eq(yA_n + (x0_n >> lgC))

        # -- S1 ----------------------------------------------------------------------------------
        s1_valid = Signal()
        S1 = data.StructLayout({
            "geo": S0G, "last": 1, "cog": ch, "y": wd, "xg": wd,
            "rot": range(max(NB, 2)), "addr": data.ArrayLayout(self._act_addr_bits, NB),
            "w": wt + 1, "mbit": range(KM * KM),
        })
        s1 = Signal(S1)
        s1_ready = Signal()             # S1's row moves on to RB in this cycle
        advance = Signal()              # S0's row moves to S1
        rb_free = Signal()              # RB can take S1's row in this cycle (below)
        # S1's row moves to RB whenever RB can take it, with or without a slot to issue (below);
        # S0's row moves to S1 once S1 is empty. So a row takes at least two cycles, but the
        # walk, its reads and S1's registers wait only on registers, not on RB and F.
        m.d.comb += advance.eq(run & ~s1_valid)

        # Reads of S0's row: flag port 0 of each bank, the weight-skip word.
        for b in range(NB):
            m.d.comb += self.flag_addr[b][0].eq(bank_addr[b])
        m.d.comb += [self.flag_en.eq(advance), self.mask_addr.eq(mrow), self.mask_en.eq(advance)]

        state_idle = Signal(init=1)
        done = Signal()
        m.d.comb += [self.busy.eq(~state_idle), self.done.eq(done)]

        with m.If(self.start):
            d = self.desc
            m.d.sync += [skip.eq(self.skip), state_idle.eq(0), done.eq(0),
                         cog.eq(0), y.eq(0), t.eq(0), xg.eq(0), ci.eq(0), ky.eq(0),
                         g.eq(0), mbit.eq(0),
                         wrow.eq(Mux(d.kind == KIND_FC, d.wbase >> lgC, d.wbase)),
                         wcog.eq(Mux(d.kind == KIND_FC, d.wbase >> lgC, d.wbase)),
                         mcog.eq(d.mbase), mrow.eq(d.mbase), A.eq(0), rot.eq(0)]
            m.d.sync += [run.eq(0), prime.eq(1)]
        with m.Elif(prime):
            # The layer's constants are in: the first row's window and addresses (fc: 0).
            m.d.sync += [settle.eq(1), prime.eq(0)]
            with m.If(~fc):
                A_0 = c_yA0 + (-p >> lgC)
                m.d.sync += [ybase.eq(-p), x0.eq(-p), yA.eq(c_yA0), A.eq(A_0), rot.eq(A_0)]
        with m.Elif(settle):
            m.d.sync += [run.eq(1), settle.eq(0)]
        with m.Elif(advance):
            m.d.sync += [
                s1.geo.eq(geo), s1.last.eq(row_last),
                s1.cog.eq(cog), s1.y.eq(Mux(fc, 0, y)), s1.xg.eq(Mux(fc, 0, xg)),
                s1.rot.eq(rot), s1.w.eq(wrow), s1.mbit.eq(mbit),
            ]
            m.d.sync += [s1.addr[b].eq(bank_addr[b]) for b in range(NB)]
            # The next row (one adder steps A: fc, the next group; conv, the next ky or ci).
            A_step = Mux(fc, NB, Mux(last_ky, c_dci, L.in_p))
            m.d.sync += A.eq(A + A_step)
            with m.If(fc):
                m.d.sync += [wrow.eq(wrow + NB), mrow.eq(mrow + 1), g.eq(g + 1)]
                with m.If(last_g):
                    m.d.sync += [g.eq(0), cog.eq(cog + 1), mcog.eq(mcog + L.groups),
                                 mrow.eq(mcog + L.groups), A.eq(0),
                                 wrow.eq(wcog + L.in_words), wcog.eq(wcog + L.in_words)]
                    with m.If(last_cog):
                        m.d.sync += run.eq(0)
            with m.Else():
                m.d.sync += [ky.eq(ky + 1), mbit.eq(mbit + k), wrow.eq(wrow + k),
                             rot.eq(rot + L.in_p)]
                with m.If(last_ky):
                    m.d.sync += [ky.eq(0), mbit.eq(0), ci.eq(ci + 1), mrow.eq(mrow + 1),
                                 rot.eq(rot + c_dci + 1)]
                    with m.If(last_ci):
                        # The block is done: the next block, from its first row.
                        m.d.sync += [ci.eq(0), wrow.eq(wcog), mrow.eq(mcog),
                                     y.eq(y_n), t.eq(t_n), xg.eq(xg_n), ybase.eq(ybase_n),
                                     x0.eq(x0_n), yA.eq(yA_n), A.eq(A_n), rot.eq(A_n)]
                        with m.If(block_last):
                            m.d.sync += [cog.eq(cog + 1),
                                         wcog.eq(wrow + k), wrow.eq(wrow + k),
                                         mcog.eq(mcog + L.groups), mrow.eq(mcog + L.groups)]
                            with m.If(last_cog):
                                m.d.sync += run.eq(0)
        with m.If(advance):
            m.d.sync += s1_valid.eq(1)
        with m.Elif(s1_ready):
            m.d.sync += s1_valid.eq(0)

        # S1: the row's slot mask from the flags (rotated so that word i is bit i) and the
        # weight-skip word.
        flags = Cat(*[self.flag_data[b][0] for b in range(NB)])     # by bank
        wm = Signal.like(self.mask_data)
        m.d.comb += wm.eq(self.mask_data >> Mux(fc, 0, s1.mbit))
        issue_mask = Signal(W)
        for kx in range(W):
            flagged = (s1.geo.ben[kx] & ~flags) == 0     # every bank it reads (or none)
            wskip = wm[kx] if kx < len(wm) else Const(0)
            m.d.comb += issue_mask[kx].eq(s1.geo.exists[kx]
                                          & ~(skip & (flagged | wskip)))

        # -- RB: the row being issued -------------------------------------------------------------
        rb_valid = Signal()
        rb = Signal(S1)
        rb_mask = Signal(W)                 # slots still to issue
        can_issue = Signal()                # D will have room for the slot (F takes its own: below)
        # RB's next slot, the lowest set bit of rb_mask (one-hot), and its kx: registers, set as
        # a row moves in and as a slot is issued, so that RB's reads start from registers.
        low = Signal(W)
        kx_i = Signal(range(W))

        def lowest(mask):
            one = Cat(*[mask[kx] & ~mask[:kx].any() for kx in range(W)])
            return one, functools.reduce(operator.or_, [Mux(one[kx], kx, 0) for kx in range(W)])
        LW = len(Signal(range(W)))          # bits of a slot's kx
        rb_w_up = Signal(wt + 1 - LW)        # RB's rb.w[LW:] + 1
        one_left = Signal()
        m.d.comb += one_left.eq((rb_mask & ~low) == 0)
        # An fc slot is issued as C column slots, one a cycle: column j's activation (the
        # others 0) and its weight word, bank j (the weights are one single-ported memory in
        # the core, and every slot's weights are one word: tags.slot_layout).
        col = Signal(range(max(C, 2)))      # fc: the slot's column being issued
        issue = Signal()
        m.d.comb += issue.eq(rb_valid & can_issue & rb_mask.any())
        slot_done = Signal()                # the slot's last (conv: only) column slot
        m.d.comb += slot_done.eq(~fc | (col == C - 1))
        with m.If(issue & fc):
            m.d.sync += col.eq(Mux(slot_done, 0, col + 1))
        # A row with nothing to issue leaves in one cycle; if it ends its block, it produces
        # the block's end.
        empty = Signal()
        end_only = Signal()
        m.d.comb += [empty.eq(rb_valid & ~rb_mask.any()),
                     end_only.eq(empty & rb.last & can_issue)]
        m.d.comb += rb_free.eq(~rb_valid | (empty & (~rb.last | can_issue))
                               | (issue & slot_done & one_left))
        # Every row of S1 goes to RB, whether it has a slot to issue or not: its slot mask
        # comes from the flags read in this cycle, and the moves of S1 and S0 do not wait on
        # them.
        m.d.comb += s1_ready.eq(s1_valid & rb_free)
        with m.If(issue & slot_done):
            rest = rb_mask & ~low
            rest_low, rest_kx = lowest(rest)
            m.d.sync += [rb_mask.eq(rest), low.eq(rest_low), kx_i.eq(rest_kx)]
        with m.If(rb_free):
            m.d.sync += rb_valid.eq(0)
        with m.If(s1_ready):
            first_low, first_kx = lowest(issue_mask)
            m.d.sync += [rb_valid.eq(1), rb.eq(s1), rb_mask.eq(issue_mask),
                         rb_w_up.eq(s1.w[LW:] + 1), low.eq(first_low), kx_i.eq(first_kx)]

        # The words each slot of RB's row reads (conv: its columns inside the input are
        # contiguous, so its words run from the first one's to the last one's; fc: one).
        nwords = [Signal(range(NB + 1), name=f"nwords_{kx}") for kx in range(W)]
        for kx in range(W):
            conv_n = Const(0)
            if kx < KM:
                ok = rb.geo.ok[kx]
                first_off = Signal(range(max(NB, 2)), name=f"first_off_{kx}")
                last_off = Signal(range(max(NB, 2)), name=f"last_off_{kx}")
                for j in reversed(range(C)):
                    with m.If(ok[j]):
                        m.d.comb += first_off.eq(rb.geo.off[kx][j])
                for j in range(C):
                    with m.If(ok[j]):
                        m.d.comb += last_off.eq(rb.geo.off[kx][j])
                conv_n = Mux(ok.any(), last_off - first_off + 1, 0)
            m.d.comb += nwords[kx].eq(Mux(fc, 1, conv_n))
        # Counters: S1's row, in the cycle after it moved to RB (from RB's registers, before
        # RB issues any of its slots).
        go1 = Signal()
        m.d.sync += go1.eq(s1_ready)
        slots = sum(rb.geo.exists[kx] for kx in range(W))
        issued = sum(rb_mask[kx] for kx in range(W))
        abytes = sum(Mux(rb_mask[kx], nwords[kx], 0) for kx in range(W))
        m.d.sync += [
            self.issue_slots.eq(Mux(go1, slots, 0)),
            self.issue_slots_skipped.eq(Mux(go1, slots - issued, 0)),
            self.act_bytes_read.eq(Mux(go1, abytes * C, 0)),
            self.weight_bytes_read.eq(Mux(go1, issued * Mux(fc, R * C, R), 0)),
        ]

        # RB's reads for the slot kx_i.
        kx_ok = Signal(C)
        kx_off = [Signal(range(max(NB, 2)), name=f"kx_off_{j}") for j in range(C)]
        kx_lane = [Signal(range(max(C, 2)), name=f"kx_lane_{j}") for j in range(C)]
        for kx in range(W):
            with m.If(low[kx]):
                if kx < KM:
                    m.d.comb += kx_ok.eq(rb.geo.ok[kx])
                    m.d.comb += [kx_off[j].eq(rb.geo.off[kx][j]) for j in range(C)]
                    m.d.comb += [kx_lane[j].eq(rb.geo.lane[kx][j]) for j in range(C)]
        # The bank of each column's word, and the banks read.
        kx_bank = [Signal(range(max(NB, 2)), name=f"kx_bank_{j}") for j in range(C)]
        for j in range(C):
            m.d.comb += kx_bank[j].eq(bank_of(rb.rot, kx_off[j]))
        kx_ben = Signal(NB)
        m.d.comb += kx_ben.eq(functools.reduce(operator.or_, [Mux(low[kx], rb.geo.ben[kx], 0)
                                                              for kx in range(W)]))
        # conv: weight index; fc: in-bank weight address: rb.w + kx_i, its carry out of the low
        # bits selecting rb.w's high bits or their increment (rb_w_up, registered with RB).
        wi = Signal(wt + 1)
        lo = Signal(LW + 1)
        m.d.comb += [lo.eq(rb.w[:LW] + kx_i),
                     wi.eq(Cat(lo[:LW], Mux(lo[LW], rb_w_up, rb.w[LW:])))]
        for b in range(NB):
            m.d.comb += [self.act_addr[b].eq(rb.addr[b]), self.act_en[b].eq(issue & kx_ben[b])]
        wbank = Signal(range(max(C, 2)))    # the weight bank read (fc: the column)
        m.d.comb += wbank.eq(Mux(fc, col, wi[:lgC] if lgC else 0))
        m.d.comb += self.wgt_bank.eq(wbank)
        for j in range(C):
            m.d.comb += [self.wgt_addr[j].eq(Mux(fc, wi, wi >> lgC)),
                         self.wgt_en[j].eq(issue & (wbank == j))]

        # -- D: the slot from the read data -------------------------------------------------------
        d_valid = Signal()                  # a slot or a block's end is in D
        d_slot = Signal()                   # D holds a slot (else only a block's end)
        d_end = Signal()                    # it ends its block
        d_fc = Signal()
        d_tag = Signal.like(self.o.payload.tag)
        d_ok = Signal(C)
        d_bank = [Signal(range(max(NB, 2)), name=f"d_bank_{j}") for j in range(C)]
        d_lane = [Signal(range(max(C, 2)), name=f"d_lane_{j}") for j in range(C)]
        d_kx = Signal(range(W))
        d_wbank = Signal(range(max(C, 2)))
        # D takes RB's slot when it is empty or its own moves on to F (can_issue); else it holds
        # its slot, whose reads then stay on the memories' outputs (no read is issued).
        with m.If(can_issue):
            m.d.sync += [d_valid.eq(issue | end_only), d_slot.eq(issue),
                         d_end.eq(rb.last & rb_free & rb_valid), d_fc.eq(fc),
                         d_tag.cog.eq(rb.cog), d_tag.y.eq(rb.y), d_tag.xg.eq(rb.xg),
                         d_ok.eq(kx_ok), d_kx.eq(kx_i), d_wbank.eq(wbank)]
            m.d.sync += [d_bank[j].eq(kx_bank[j]) for j in range(C)]
            m.d.sync += [d_lane[j].eq(kx_lane[j]) for j in range(C)]
        slot = Signal(slot_layout(cfg))
        words = Array(word.as_value() for word in self.act_data)
        fc_word = words[d_kx[:lgNB] if lgNB else 0]
        m.d.comb += slot.wgt.as_value().eq(
            Array(word.as_value() for word in self.wgt_data)[d_wbank])
        for j in range(C):
            conv_x = Mux(d_ok[j], words[d_bank[j]].word_select(d_lane[j], 8), 0)
            fc_x = Mux(d_wbank == j, fc_word.word_select(j, 8), 0)
            m.d.comb += slot.act[j].eq(Mux(d_fc, fc_x, conv_x))
        m.d.comb += slot.tag.eq(d_tag)

        # -- F: the slot on o; it leaves once its block's last bit is known -----------------------
        # That is when D holds the item after it: a slot of the same block (it is not the last),
        # or the block's end (it is: D's end seals it), unless it was the last slot of its
        # block's last row (d_end). A block with no issued slot becomes one zero slot.
        f = Signal(slot_layout(cfg))
        full = Signal()
        blk_issued = Signal()               # the block in D has had a slot formed
        outstanding = Signal(range(self.credits + 1))
        seal = Signal()                     # D holds the end of F's slot's block
        m.d.comb += seal.eq(d_valid & ~d_slot & blk_issued)
        last = f.last | seal
        pop = Signal()
        # No slot leaves in the cycle after a block's last: the PE array clears its
        # accumulators then instead of loading them on a block's first slot (hw/pe_array.py).
        gap = Signal()
        credit = Signal(init=1)             # outstanding < credits (a register)
        m.d.comb += pop.eq(full & ~gap & (f.last | d_valid) & (~last | credit))
        m.d.sync += gap.eq(pop & last)
        m.d.comb += [self.o.valid.eq(pop), self.o.payload.eq(f), self.o.payload.last.eq(last)]
        outstanding_next = outstanding + (pop & last) - self.block_done
        m.d.sync += [outstanding.eq(outstanding_next),
                     credit.eq(outstanding_next < self.credits)]

        # D's item moves on when F is empty or leaves: a slot or a zero slot into F, or the
        # seal, which leaves with F's slot.
        d_take = Signal()
        m.d.comb += d_take.eq(d_valid & (~full | pop))
        # (= ~d_valid | d_take, written out in registers: RB's issue and its reads wait on it)
        m.d.comb += can_issue.eq(~d_valid | ~full
                                 | (~gap & (credit | (~f.last & (d_slot | ~blk_issued)))))
        new = Signal(slot_layout(cfg))
        m.d.comb += [new.eq(slot), new.first.eq(~blk_issued), new.last.eq(d_end)]
        zero = Signal(slot_layout(cfg))
        m.d.comb += [zero.tag.eq(d_tag), zero.first.eq(1), zero.last.eq(1)]
        with m.If(pop):
            m.d.sync += full.eq(0)
        with m.If(d_take):
            with m.If(d_slot):
                m.d.sync += [f.eq(new), full.eq(1), blk_issued.eq(~d_end)]
            with m.Elif(blk_issued):        # the seal: F's slot left with it
                m.d.sync += blk_issued.eq(0)
            with m.Else():                  # a block with no issued slot: one zero slot
                m.d.sync += [f.eq(zero), full.eq(1)]

        with m.If(~state_idle & ~self.start & ~prime & ~settle & ~run & ~s1_valid & ~rb_valid
                  & ~d_valid & ~full):
            m.d.sync += [state_idle.eq(1), done.eq(1)]
        with m.If(self.start):
            m.d.sync += [blk_issued.eq(0), full.eq(0), d_valid.eq(0), rb_valid.eq(0),
                         s1_valid.eq(0)]
        return m
