"""A compact loader for small FPGAs: the same ports, slots and counters as :class:`hw.loader.Loader`
(docs/ARCHITECTURE.md; ``sw/schedule.py`` counts what it issues), in less logic: on the ``up5k``
configuration 1,253 LUTs and 602 flip-flops where :class:`~hw.loader.Loader` takes 2,454 and
2,695 (results/synth.json), one flag read port per bank instead of ``Kmax``, and one weight
read a cycle (``Config.loader = "compact"``).

Where :class:`~hw.loader.Loader` scans a whole group (``Kmax`` kernel rows) per cycle through a
deep pipeline and an 8-entry FIFO, so that it keeps 100 MHz on ECP5 and hides fully skipped groups
behind the issue of earlier slots, this one scans one *row* per cycle (conv: one input channel's
kernel row ``ky``, its ``k`` slots ``kx``; fc: one group of ``NB`` input words) and hands it to
issue through one row register:

::

    S0 (row walk, flag/mask read) ─▶ S1 (row's slot mask) ─▶ RB (issue: one slot per cycle,
    act/weight read) ─▶ D (the slot formed) ─▶ F (the slot on o, until its last bit is known) ─▶ o

* **S0** walks the rows of the layer in the order of the slots (conv: ``for cog, for y, for xg,
  for ci, for ky``, with pooling the two rows of a pool window back to back; fc: ``for cog, for
  g``) and reads the row's flags: the ``NB`` consecutive words from the row's leftmost column,
  one per bank on flag port 0 (ports ``k ≥ 1`` are not used), and its group's weight-skip word.
* **S1** forms the row's slot mask (a slot is skipped when all the words it reads are flagged,
  or it reads none, or its weight-skip bit is set; with skipping off every slot is issued),
  counts the row's slots, and hands the row to RB; a row with no slot to issue is dropped (it
  cost its scan cycle) unless it ends its block.
* **RB** issues the row's slots, lowest ``kx`` first, one per cycle: it reads the slot's words
  (each once) and its weight word (conv: one bank). An fc slot takes ``C`` cycles: it reads
  its ``C`` weight words one a cycle, bank ``C − 1`` last, as it issues; so at most one weight
  read port is enabled in any cycle, and a weight word is used in the cycle after its read
  (the core keeps the weights in one single-ported memory: the SPRAMs of an iCE40 UltraPlus).
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
and a cycle between blocks; a row with nothing to issue costs one scan cycle, hidden when the
row before it has at least three slots to issue. So a fully skipped 3×3 group costs at most 3
cycles instead of 9.

Unlike :class:`~hw.loader.Loader` it does not latch ``desc`` at ``start``: the descriptor must
stay from ``start`` until ``done`` (the core's sequencer changes it only between layers), which
saves a copy of it.

The row's ``NB`` words must cover the columns of all its slots:
``ceil(((C − 1)·max_stride + max_kernel − 1) / C) + 1 ≤ NB`` (:class:`sw.config.Config` checks
it when ``loader = "compact"``).
"""

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, wiring

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
        super().__init__(loader_members(config))

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
        run = Signal()                  # S0 holds a row
        cog = Signal(ch)
        y = Signal(wd)
        t = Signal()                    # pooled: second row of the pool window
        xg = Signal(wd)
        ci = Signal(ch)
        ky = Signal(range(KM))
        g = Signal(_bits(cfg.act_words))
        chan = Signal(ASW)              # ci·S
        wrow = Signal(wt + 1)           # conv: weight index of (ci, ky, kx = 0); fc: of word g·NB
        wcog = Signal(wt + 1)           # the block's first weight index
        mcog = Signal(MBW + 1)          # the cog's first weight-skip word
        mrow = Signal(MBW + 1)          # the row's weight-skip word
        mbit = Signal(range(KM * KM))   # conv: ky·k

        iy = Signal(signed(XW))
        x0 = Signal(signed(XW))         # leftmost column of the row's windows
        m.d.comb += [iy.eq(lut_mul(y, s) + ky - p), x0.eq(lut_mul(xg, s) * C - p)]
        row_ok = Signal()
        m.d.comb += row_ok.eq((iy >= 0) & (iy < L.in_h))
        wlo = Signal(signed(XW))        # the row's first word (column x0 // C)
        m.d.comb += wlo.eq(x0 >> lgC)
        # Logical address of the row's first word, and the word the bank b port reads.
        A = Signal(signed(ASW))
        m.d.comb += A.eq(Mux(fc, g << lgNB, chan + lut_mul(iy[:wd], L.in_p) + wlo))
        rot = Signal(lgNB)              # bank of the row's word 0
        m.d.comb += rot.eq(Mux(fc, 0, A + ci))
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
            "exists": W,
        })
        geo = Signal(S0G)
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
            conv_exists = kx < k if kx < KM else Const(0)
            fc_exists = ((g << lgNB) + kx < L.in_words) if kx < NB else Const(0)
            m.d.comb += geo.exists[kx].eq(Mux(fc, fc_exists, conv_exists))

        last_ky = ky == k - 1
        last_ci = ci == L.in_c - 1
        last_g = g == L.groups - 1
        last_xg = xg == L.xgs - 1
        last_y = Mux(L.pool, y + 1 >= L.rows, y == L.rows - 1)
        last_cog = cog == L.cogs - 1
        row_last = Mux(fc, last_g, last_ci & last_ky)

        # -- S1 ----------------------------------------------------------------------------------
        s1_valid = Signal()
        S1 = data.StructLayout({
            "geo": S0G, "last": 1, "cog": ch, "y": wd, "xg": wd,
            "rot": range(max(NB, 2)), "addr": data.ArrayLayout(self._act_addr_bits, NB),
            "w": wt + 1, "mbit": range(KM * KM),
        })
        s1 = Signal(S1)
        s1_ready = Signal()             # S1's row moves on (to RB, or dropped) in this cycle
        advance = Signal()              # S0's row moves to S1
        rb_free = Signal()              # RB can take S1's row in this cycle (below)
        # Not when S1's row is dropped (it has nothing to issue): that is known only from the
        # flags read in this cycle, and S0's next row, its reads and its counters would wait on
        # them. A dropped row leaves S1 empty for a cycle instead.
        m.d.comb += advance.eq(run & (~s1_valid | rb_free))

        # Reads of S0's row: flag port 0 of each bank, the weight-skip word.
        for b in range(NB):
            m.d.comb += self.flag_addr[b][0].eq(bank_addr[b])
        m.d.comb += [self.flag_en.eq(advance), self.mask_addr.eq(mrow), self.mask_en.eq(advance)]

        state_idle = Signal(init=1)
        done = Signal()
        m.d.comb += [self.busy.eq(~state_idle), self.done.eq(done)]

        with m.If(self.start):
            m.d.sync += [skip.eq(self.skip), state_idle.eq(0), done.eq(0),
                         run.eq(1), cog.eq(0), y.eq(0), t.eq(0), xg.eq(0), ci.eq(0), ky.eq(0),
                         g.eq(0), chan.eq(0), mbit.eq(0),
                         wrow.eq(Mux(self.desc.kind == KIND_FC, self.desc.wbase >> lgC,
                                     self.desc.wbase)),
                         wcog.eq(Mux(self.desc.kind == KIND_FC, self.desc.wbase >> lgC,
                                     self.desc.wbase)),
                         mcog.eq(self.desc.mbase), mrow.eq(self.desc.mbase)]
        with m.Elif(advance):
            m.d.sync += [
                s1.geo.eq(geo), s1.last.eq(row_last),
                s1.cog.eq(cog), s1.y.eq(Mux(fc, 0, y)), s1.xg.eq(Mux(fc, 0, xg)),
                s1.rot.eq(rot), s1.w.eq(wrow), s1.mbit.eq(mbit),
            ]
            m.d.sync += [s1.addr[b].eq(bank_addr[b]) for b in range(NB)]
            # The next row.
            with m.If(fc):
                m.d.sync += [wrow.eq(wrow + NB), mrow.eq(mrow + 1), g.eq(g + 1)]
                with m.If(last_g):
                    m.d.sync += [g.eq(0), cog.eq(cog + 1), mcog.eq(mcog + L.groups),
                                 mrow.eq(mcog + L.groups),
                                 wrow.eq(wcog + L.in_words), wcog.eq(wcog + L.in_words)]
                    with m.If(last_cog):
                        m.d.sync += run.eq(0)
            with m.Else():
                m.d.sync += [ky.eq(ky + 1), mbit.eq(mbit + k), wrow.eq(wrow + k)]
                with m.If(last_ky):
                    m.d.sync += [ky.eq(0), mbit.eq(0), ci.eq(ci + 1), chan.eq(chan + L.in_s),
                                 mrow.eq(mrow + 1)]
                    with m.If(last_ci):
                        # The block is done: the next block, from its first row.
                        m.d.sync += [ci.eq(0), chan.eq(0), wrow.eq(wcog), mrow.eq(mcog)]
                        with m.If(L.pool):
                            with m.If(~t):
                                m.d.sync += [t.eq(1), y.eq(y + 1)]
                            with m.Else():
                                m.d.sync += [t.eq(0), y.eq(y - 1), xg.eq(xg + 1)]
                                with m.If(last_xg):
                                    m.d.sync += [xg.eq(0), y.eq(y + 1)]
                        with m.Else():
                            m.d.sync += xg.eq(xg + 1)
                            with m.If(last_xg):
                                m.d.sync += [xg.eq(0), y.eq(y + 1)]
                        block_last = last_xg & Mux(L.pool, t & last_y, last_y)
                        with m.If(block_last):
                            m.d.sync += [y.eq(0), t.eq(0), xg.eq(0), cog.eq(cog + 1),
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
        flags = Cat(*[self.flag_data[b][0] for b in range(NB)])
        wflag = Signal(NB)
        if lgNB:
            m.d.comb += wflag.eq((Cat(flags, flags) >> s1.rot)[:NB])
        else:
            m.d.comb += wflag.eq(flags)
        wm = Signal.like(self.mask_data)
        m.d.comb += wm.eq(self.mask_data >> Mux(fc, 0, s1.mbit))
        issue_mask = Signal(W)
        nwords = [Signal(range(NB + 1), name=f"nwords_{kx}") for kx in range(W)]
        for kx in range(W):
            ok = s1.geo.ok[kx] if kx < KM else Const(0, C)
            if kx < KM:
                # Columns inside the input are contiguous: the slot's words run from the first
                # one's to the last one's.
                first_off = Signal(range(max(NB, 2)), name=f"first_off_{kx}")
                last_off = Signal(range(max(NB, 2)), name=f"last_off_{kx}")
                for j in reversed(range(C)):
                    with m.If(ok[j]):
                        m.d.comb += first_off.eq(s1.geo.off[kx][j])
                for j in range(C):
                    with m.If(ok[j]):
                        m.d.comb += last_off.eq(s1.geo.off[kx][j])
                conv_n = Mux(ok.any(), last_off - first_off + 1, 0)
                conv_flagged = Cat(*[~ok[j] | wflag.bit_select(s1.geo.off[kx][j], 1)
                                     for j in range(C)]).all()
            else:
                conv_n, conv_flagged = Const(0), Const(1)
            fc_flagged = wflag[kx] if kx < NB else Const(1)
            m.d.comb += nwords[kx].eq(Mux(fc, 1, conv_n))
            flagged = Mux(fc, fc_flagged, conv_flagged)
            wskip = wm[kx] if kx < len(wm) else Const(0)
            m.d.comb += issue_mask[kx].eq(s1.geo.exists[kx]
                                          & ~(skip & (flagged | wskip)))

        # -- RB: the row being issued -------------------------------------------------------------
        rb_valid = Signal()
        rb = Signal(S1)
        rb_mask = Signal(W)                 # slots still to issue
        can_issue = Signal()                # D will have room for the slot (F takes its own: below)
        low = Signal(W)                     # lowest set bit of rb_mask
        m.d.comb += low.eq(rb_mask & -rb_mask)
        one_left = Signal()
        m.d.comb += one_left.eq((rb_mask & ~low) == 0)
        # An fc slot reads its C weight words one a cycle (the weights are one single-ported
        # memory in the core): banks 0 … C−2 in the cycles before the slot issues (fetch), bank
        # C−1 as it issues.
        fph = Signal(range(C))              # the fc slot's next weight bank
        fetch = Signal()
        m.d.comb += fetch.eq(rb_valid & can_issue & rb_mask.any() & fc & (fph != C - 1))
        with m.If(fetch):
            m.d.sync += fph.eq(fph + 1)
        issue = Signal()
        m.d.comb += issue.eq(rb_valid & can_issue & rb_mask.any() & (~fc | (fph == C - 1)))
        with m.If(issue):
            m.d.sync += fph.eq(0)
        # An empty row that ends its block only produces the block's end.
        end_only = Signal()
        m.d.comb += end_only.eq(rb_valid & can_issue & ~rb_mask.any())
        m.d.comb += rb_free.eq(~rb_valid | end_only | (issue & one_left))
        keep = Signal()                     # S1's row goes to RB (else it is dropped)
        m.d.comb += [keep.eq(issue_mask.any() | s1.last),
                     s1_ready.eq(s1_valid & (~keep | rb_free))]
        with m.If(issue):
            m.d.sync += rb_mask.eq(rb_mask & ~low)
        with m.If(rb_free):
            m.d.sync += rb_valid.eq(0)
        with m.If(s1_ready & keep):
            m.d.sync += [rb_valid.eq(1), rb.eq(s1), rb_mask.eq(issue_mask)]

        # Counters: S1's row as it moves on.
        slots = sum(s1.geo.exists[kx] for kx in range(W))
        issued = sum(issue_mask[kx] for kx in range(W))
        abytes = sum(Mux(issue_mask[kx], nwords[kx], 0) for kx in range(W))
        go1 = s1_ready
        m.d.sync += [
            self.issue_slots.eq(Mux(go1, slots, 0)),
            self.issue_slots_skipped.eq(Mux(go1, slots - issued, 0)),
            self.act_bytes_read.eq(Mux(go1, abytes * C, 0)),
            self.weight_bytes_read.eq(Mux(go1, issued * Mux(fc, R * C, R), 0)),
        ]

        # RB's reads for the slot kx = the lowest bit of rb_mask.
        kx_ok = Signal(C)
        kx_off = [Signal(range(max(NB, 2)), name=f"kx_off_{j}") for j in range(C)]
        kx_lane = [Signal(range(max(C, 2)), name=f"kx_lane_{j}") for j in range(C)]
        kx_i = Signal(range(W))
        for kx in range(W):
            with m.If(low[kx]):
                m.d.comb += kx_i.eq(kx)
                if kx < KM:
                    m.d.comb += kx_ok.eq(rb.geo.ok[kx])
                    m.d.comb += [kx_off[j].eq(rb.geo.off[kx][j]) for j in range(C)]
                    m.d.comb += [kx_lane[j].eq(rb.geo.lane[kx][j]) for j in range(C)]
        # The bank of each column's word, and the banks read.
        kx_bank = [Signal(range(max(NB, 2)), name=f"kx_bank_{j}") for j in range(C)]
        for j in range(C):
            m.d.comb += kx_bank[j].eq((rb.rot + kx_off[j])[:lgNB] if lgNB else 0)
        wi = Signal(wt + 1)                 # conv: weight index; fc: in-bank weight address
        m.d.comb += wi.eq(rb.w + kx_i)
        for b in range(NB):
            conv_en = Cat(*[kx_ok[j] & (kx_bank[j] == b) for j in range(C)]).any()
            m.d.comb += [self.act_addr[b].eq(rb.addr[b]),
                         self.act_en[b].eq(issue & Mux(fc, kx_i == b, conv_en))]
        wbank = Signal(range(max(C, 2)))
        m.d.comb += wbank.eq(wi[:lgC] if lgC else 0)
        for j in range(C):
            m.d.comb += [self.wgt_addr[j].eq(Mux(fc, wi, wi >> lgC)),
                         self.wgt_en[j].eq(Mux(fc, (fetch | issue) & (fph == j),
                                               issue & (wbank == j)))]
        # The fc slot's words of banks 0 … C−2, taken in the cycle after each is read.
        wlat = [Signal(R * 8, name=f"wlat_{j}") for j in range(C - 1)]
        fetched = Signal(range(C))
        fetched_valid = Signal()
        m.d.sync += [fetched.eq(fph), fetched_valid.eq(fetch)]
        for j in range(C - 1):
            with m.If(fetched_valid & (fetched == j)):
                m.d.sync += wlat[j].eq(self.wgt_data[j].as_value())

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
        conv_wgt = Array(word.as_value() for word in self.wgt_data)[d_wbank]
        for j in range(C):
            conv_x = Mux(d_ok[j], words[d_bank[j]].word_select(d_lane[j], 8), 0)
            m.d.comb += slot.act[j].eq(Mux(d_fc, fc_word.word_select(j, 8), conv_x))
            for r in range(R):
                fc_w = (wlat[j].word_select(r, 8) if j < C - 1
                        else self.wgt_data[j].as_value().word_select(r, 8))
                m.d.comb += slot.wgt[r * C + j].eq(Mux(d_fc, fc_w, conv_wgt.word_select(r, 8)))
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
        m.d.comb += pop.eq(full & ~gap & (f.last | d_valid)
                           & (~last | (outstanding < self.credits)))
        m.d.sync += gap.eq(pop & last)
        m.d.comb += [self.o.valid.eq(pop), self.o.payload.eq(f), self.o.payload.last.eq(last)]
        m.d.sync += outstanding.eq(outstanding + (pop & last) - self.block_done)

        # D's item moves on when F is empty or leaves: a slot or a zero slot into F, or the
        # seal, which leaves with F's slot.
        d_take = Signal()
        m.d.comb += [d_take.eq(d_valid & (~full | pop)), can_issue.eq(~d_valid | d_take)]
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

        with m.If(~state_idle & ~self.start & ~run & ~s1_valid & ~rb_valid & ~d_valid
                  & ~full):
            m.d.sync += [state_idle.eq(1), done.eq(1)]
        with m.If(self.start):
            m.d.sync += [blk_issued.eq(0), full.eq(0), d_valid.eq(0), rb_valid.eq(0),
                         s1_valid.eq(0)]
        return m
