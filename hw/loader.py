"""The loader: enumerates a layer's blocks and slots, skips, fetches, and streams slots to the PE
array (docs/ARCHITECTURE.md, "Blocks, slots, groups" and "Pipeline"; ``sw/schedule.py`` is the
exact model of what it issues, reads and counts).

Pipeline
--------
::

    S0 ─▶ P ─▶ Q ─▶ S1 ─▶ S2 ─▶ S3 ─▶ FIFO ─▶ issue ─▶ W ─▶ X ─▶ A ─▶ R ─▶ D ─▶ E ─▶ O ─▶ o

* **S0** walks the groups of the layer (conv: ``for cog, for y, for xg, for ci`` — with pooling
  ``for cog, for py, for xg, for y in (2py, 2py+1), for ci``; fc: ``for cog, for g``), one group
  per cycle, with incrementally kept addresses (no multiplier in the loop) and a register per
  loop that says whether it is at its end (no comparison of a counter with its bound before a
  decision). **P** (a register stage, for timing) works out the group's flag addresses (conv:
  ``K`` rows × ``NB`` consecutive words, one read port per row and bank; fc: the group's ``NB``
  words on port 0) and which of its kernel rows and columns fall inside the input; **Q** holds
  them and the weight-skip mask address in the registers that drive the read ports (the flag
  block RAMs may sit anywhere on the chip).
* **S1** gets the flags and the mask word from the memories and registers them; **S2** forms
  the group's slot mask (bit ``ky·Kmax + kx`` for conv, bit ``i`` = word ``g·NB + i`` for fc):
  all slots of the group when skipping is off, else those reading at least one unflagged word
  whose weight-skip bit is clear; **S3** holds the group with its mask, counts its slots and
  pushes it into a small FIFO if it is non-empty (S2's mask logic and the FIFO's enables are
  apart on the chip, next to the flag memories and to issue respectively); empty groups are
  dropped, except the last group of a block, which marks the end of the block: it *seals* the
  FIFO's tail entry (the block's last non-empty group) as the block's last, or, when the block
  has no issued slot, pushes a ``zero`` entry. S0 only starts a group when the FIFO has room
  for everything in flight (P, Q, S1, S2, S3; one register counts the FIFO's entries and those
  groups), so S3 never stalls.
* **issue** takes the FIFO head and emits one slot per cycle, lowest set bit first. It emits a
  group's final slot only once it knows whether that slot ends the block (the entry is followed
  by another entry, or it has been sealed), which costs nothing unless the scan has fallen
  behind (then the block cannot end earlier anyway). It registers the slot's bit index and its
  group's entry (**W**, next to issue); **X** holds them with the slot's kernel row and column
  and weight offset, looked up from the bit; A's registers get the rest (words, lanes).
* **A** works out the activation and weight read addresses, **R** holds them in registers
  that drive the read ports (so only wires run to the block RAMs, which may sit anywhere on
  the chip), **D** receives the data (1-cycle read
  latency), **E** registers it (so no logic follows the block RAMs' outputs) and forms the slot
  from it, **O** holds the slot on ``o``. W, X, A, D, E and O advance every cycle: nothing
  after issue ever stalls.

Flow control by credit: ``o`` has no ``ready`` (the PE array takes every slot). Instead the
loader keeps at most ``credits`` blocks *outstanding* — blocks whose last slot it has issued
and whose ``block_done`` pulse it has not yet received — and holds a block's last slot in
issue while ``credits`` are outstanding. The consumer pulses ``block_done`` once per block when
the block has left it (the core: when the PE array's block is taken by the output stage,
through a register); a pulse may come any number of cycles late, which only costs throughput.
So the only signal from downstream is a registered pulse, and the stages after issue have no
enable at all.

Timing: with ``start`` high in cycle ``t`` the first slot is offered on ``o`` in cycle ``t+16``
(latch, setup, init, S0, P, Q, S1, S2, S3, issue, W, X → A, R, D, E, O); ``done`` rises 2
cycles after the last slot is on ``o``, so start → done takes
``max(issued slots, scan cycles) + 17`` cycles when credits come back in time (a block's last
slot issued in cycle ``c`` is on ``o`` in cycle ``c+7``).
Steady state: one issued slot per cycle, also across block boundaries; a group whose every slot
is skipped costs one scan cycle, hidden behind the issue of earlier slots (a block with no
issued slot at all costs its number of groups). ``o.valid`` and ``o.payload`` are registers.
The slot of a ``zero`` entry (a block with no issued slot) has ``first = last = 1`` and
``act = wgt = 0``, so it adds nothing.

Memory interfaces (all reads have 1-cycle latency: the data of the address presented with an
enabled read in cycle ``t`` is on the data input in cycle ``t+1`` and stays there until the next
enabled read of that port):

* ``act_addr[b]``, ``act_en[b]``, ``act_data[b]`` (``b < NB``): the input activation buffer's data
  banks; ``act_data`` is a word of ``C`` int8 lanes (lane 0 in the low byte), in-bank address =
  physical index div ``NB``. ``act_en`` is high exactly for the words really fetched (the words
  an issued slot reads, flagged ones included, as ``sw/schedule.py`` counts them); the data is
  used only in the cycle after the read, so the port's enable may also be tied high.
* ``flag_addr[b][k]``, ``flag_data[b][k]`` (``k < Kmax``), ``flag_en``: the flag banks of the
  same buffer, ``Kmax`` read ports per bank; ``flag_en`` is high in the cycles the loader reads
  them (the data is used only in the cycle after, so no hold is needed and tying the ports'
  enables high is fine). fc layers use port 0 only.
* ``wgt_addr[j]``, ``wgt_en[j]``, ``wgt_data[j]`` (``j < C``): the weight banks, words of ``R``
  int8 lanes, enabled like ``act_en``.
* ``mask_addr``, ``mask_en``, ``mask_data``: the weight-skip mask memory (``G`` bits per word),
  read like the flags.

Control: ``start`` (one-cycle pulse; latches ``desc`` and ``skip`` and restarts the loader),
``busy`` (from the cycle after ``start`` until the layer is done), ``done`` (level: high from
the second cycle after the last slot of the layer was on ``o`` until the next
``start``; low after reset).

Counters: ``issue_slots``, ``issue_slots_skipped``, ``act_bytes_read``, ``weight_bytes_read``
are *increments* in this cycle (registers, zero while idle: add them up from ``start`` on; the
sums are complete when ``done`` rises and equal ``sw.schedule.layer_stats``). The slot counts and
the weight bytes are counted one cycle after a group's slot mask is formed (S2), the activation
bytes one cycle after the words are fetched (R).
"""

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from sw.layout import KIND_FC

from .arith import lut_mul
from .fanout import copies
from .tags import descriptor_layout, slot_layout

__all__ = ["Loader", "FIFO_DEPTH", "address_bits", "loader_members"]

#: Groups buffered between scan and issue.
FIFO_DEPTH = 8


def _bits(n):
    """Bits to hold the values 0 … n."""
    return max(1, int(n).bit_length())


def _log2(n):
    assert n > 0 and n & (n - 1) == 0
    return n.bit_length() - 1


def _cdiv(a, b):
    return -(-a // b)


def _popcount(v, width):
    total = Const(0, 1)
    for i in range(width):
        total = total + v[i]
    return total


def _at_most_one(v, width):
    """Whether at most one of the ``width`` bits of ``v`` is set: LUTs only, where
    ``(v & ~lowest) == 0`` would go through the carry chain of ``v & -v``."""
    return ~Cat(*[v[i] & v[i + 1:width].any() for i in range(width - 1)]).any()


def _low(v, n):
    """The ``n`` low bits of ``v`` as an unsigned value (zero-width safe)."""
    return v[:n] if n else Const(0, 1)


def address_bits(config):
    """Widths of a loader's (activation bank, weight bank, weight-skip mask) read addresses."""
    return (_bits(config.act_words // config.act_banks - 1),
            _bits(config.weight_words // config.cols - 1), _bits(config.mask_words - 1))


def loader_members(config):
    """The members of a loader's signature (the module docstring): this one's and
    :class:`hw.compact_loader.CompactLoader`'s."""
    cfg = config
    R, C, NB, K = cfg.rows, cfg.cols, cfg.act_banks, cfg.max_kernel
    G = cfg.group_bits
    act_bits, wgt_bits, mask_bits = address_bits(cfg)
    return {
        "desc": In(descriptor_layout(cfg)),
        "skip": In(1),
        "start": In(1),
        "busy": Out(1),
        "done": Out(1),
        "o": Out(stream.Signature(slot_layout(cfg), always_ready=True)),
        "block_done": In(1),
        # activation data banks
        "act_addr": Out(act_bits).array(NB),
        "act_en": Out(1).array(NB),
        "act_data": In(data.ArrayLayout(signed(8), C)).array(NB),
        # flag banks: Kmax read ports per bank
        "flag_addr": Out(act_bits).array(NB, K),
        "flag_en": Out(1),
        "flag_data": In(1).array(NB, K),
        # weight banks
        "wgt_addr": Out(wgt_bits).array(C),
        "wgt_en": Out(1).array(C),
        "wgt_data": In(data.ArrayLayout(signed(8), R)).array(C),
        # weight-skip masks
        "mask_addr": Out(mask_bits),
        "mask_en": Out(1),
        "mask_data": In(G),
        # counter increments
        "issue_slots": Out(_bits(G)),
        "issue_slots_skipped": Out(_bits(G)),
        "act_bytes_read": Out(_bits(NB * C)),
        "weight_bytes_read": Out(_bits(G * R * C)),
    }


class Loader(wiring.Component):
    """Block and slot sequencer of one layer; see the module docstring for the interfaces."""

    def __init__(self, config, *, credits):
        self.config = config
        self.credits = credits
        self._act_addr_bits, self._wgt_addr_bits, self._mask_addr_bits = address_bits(config)
        super().__init__(loader_members(config))

    def elaborate(self, platform):
        cfg = self.config
        R, C, NB, KM = cfg.rows, cfg.cols, cfg.act_banks, cfg.max_kernel
        G = cfg.group_bits
        lgNB, lgC = _log2(NB), _log2(C)
        D = FIFO_DEPTH
        ch, wd = _bits(cfg.max_channels), _bits(cfg.max_width)
        wt = _bits(cfg.weight_words)
        IBW, WBW, MBW = self._act_addr_bits, self._wgt_addr_bits, self._mask_addr_bits
        # Signed logical activation addresses (padding rows/columns go negative).
        ASW = _bits(2 * cfg.act_words + 4 * (KM + 1) * (cfg.max_width + NB)) + 1
        XW = _bits(2 * (cfg.max_width + C) * cfg.max_stride + 2 * KM) + 1   # signed columns/rows
        m = Module()

        # -- layer constants ------------------------------------------------------------------
        L = Signal(descriptor_layout(cfg))
        skip = Signal()
        is_fc = Signal()
        kk = Signal(range(KM * KM + 1))
        cikk = Signal(wt + 1)                       # Ci·K²
        sP = Signal(ASW)                            # s·P
        rstep = Signal(ASW)                         # row address step per block row step
        ystep = Signal(2)
        iystep = Signal(XW)
        xstep = Signal(XW)                          # C·s
        x0 = Signal(signed(XW))                     # −ceil(p / C): first word of xg = 0
        pP = Signal(ASW)                            # p·P
        kyP = [Signal(ASW, name=f"kyP{k}") for k in range(KM)]
        inK = [Signal(name=f"inK{k}") for k in range(KM)]
        # per (kx, j): column offset j·s + kx − p, word offset from the group's first word,
        # and lane within the word
        dx = [[Signal(signed(XW), name=f"dx{kx}_{j}") for j in range(C)] for kx in range(KM)]
        offw = [[Signal(range(max(NB, 2)), name=f"offw{kx}_{j}") for j in range(C)]
                for kx in range(KM)]
        lane = [[Signal(range(max(C, 2)), name=f"lane{kx}_{j}") for j in range(C)]
                for kx in range(KM)]
        soff = [Signal(range(KM * KM + 1), name=f"soff{b}") for b in range(KM * KM)]

        js = [Signal(XW, name=f"js{j}") for j in range(C)]     # j·s, for the INIT cycle
        # The loop bounds, for S0's registers that say whether a loop is at its last value
        # (below): a counter at its penultimate value (bound − 2) moves to the last one.
        ci_pen = Signal.like(L.in_c)                # in_c − 2
        g_pen = Signal.like(L.groups)               # groups − 2
        xg_pen = Signal.like(L.xgs)                 # xgs − 2
        cog_pen = Signal.like(L.cogs)               # cogs − 2
        grp_one = Signal()                          # one group per block (conv: in_c = 1)
        xg_one = Signal()                           # xgs = 1
        cog_one = Signal()                          # cogs = 1
        y_lim2 = Signal(signed(len(L.rows) + 2))    # rows − 2·ystep: yb < y_lim2 iff yb + ystep
                                                    # leaves rows to do
        y_more0 = Signal()                          # rows > ystep: yb = 0 leaves rows to do
        k_ = L.kernel
        s_ = L.stride
        p_ = L.pad
        pc = Signal(range(KM + C + 1))              # ceil(p / C)
        m.d.comb += pc.eq((p_ + (C - 1)) >> lgC)

        # -- state ----------------------------------------------------------------------------
        state = Signal(range(5))     # idle, setup (layer constants), init (iteration), scan, drain
        IDLE, SETUP, INIT, SCAN, DRAIN = 0, 1, 2, 3, 4
        done = Signal()
        m.d.comb += [self.busy.eq(state != IDLE), self.done.eq(done)]

        # S0 iteration registers
        cog = Signal(ch)
        yb = Signal(wd)
        ysub = Signal()
        xg = Signal(wd)
        ci = Signal(ch)
        g = Signal(_bits(cfg.act_words))
        chanS = Signal(signed(ASW))
        rowA = Signal(signed(ASW))
        iyb = Signal(signed(XW))
        xw0 = Signal(signed(XW))
        xcol = Signal(signed(XW))
        maddr = Signal(MBW + 1)
        mrow = Signal(MBW + 1)
        wcog = Signal(wt + 1)
        wgrp = Signal(wt + 1)
        gNB = Signal(_bits(cfg.act_words) + lgNB + 1)
        wrowc = Signal(wt + 1)
        wrow = Signal(wt + 1)

        # -- FIFO of groups -------------------------------------------------------------------
        E = data.StructLayout({
            "mask": G, "zero": 1, "last": 1,
            "cog": ch, "y": wd, "xg": wd, "ci": ch,
            "tk": data.ArrayLayout(signed(ASW), KM),   # first word of row ky (P, S1: tk[0])
            "rowv": KM, "colv": KM * C, "used": KM * NB,
            "wb": wt + 1,
        })
        # The entries are a memory read asynchronously (LUT RAM on ECP5: one write enable
        # instead of one per entry, and no wide multiplexer after them); their `last` bits,
        # which a seal sets after the push, are registers.
        m.submodules.fifo = fifo = Memory(shape=E, depth=D, init=[])
        fifo_w, fifo_r = fifo.write_port(), fifo.read_port(domain="comb")
        lasts = Signal(D)
        wtail = Signal(range(D))                # the tail entry (the last one pushed)
        wptr = Signal(range(D))
        rptr = Signal(range(D))
        level = Signal(range(D + 1))
        level_nz = Signal()                     # level != 0
        level_ge2 = Signal()                    # level >= 2
        # level + the groups in P, Q, S1, S2 and S3, + the group popped in the previous cycle
        # (pop_r): so that its next value does not wait for pop, late in its cycle.
        occupied = Signal(range(D + 2))
        pop_r = Signal()
        tail_sealed = Signal()
        push = Signal()
        push_e = Signal(E)
        seal = Signal()
        pop = Signal()

        # -- P registers: the group's read addresses and validity ---------------------------
        p_valid = Signal()
        p = Signal(E)
        p_blast = Signal()
        p_tky = [Signal(signed(ASW), name=f"p_tky{k}") for k in range(KM)]
        p_rotk = [Signal(range(max(NB, 2)), name=f"p_rotk{k}") for k in range(KM)]
        p_fcv = Signal(NB)
        p_maddr = Signal(MBW + 1)
        # -- Q registers: P's group; the flag and mask read addresses drive the ports ---------
        q_valid = Signal()
        q = Signal(E)
        q_blast = Signal()
        q_rotk = [Signal(range(max(NB, 2)), name=f"q_rotk{k}") for k in range(KM)]
        q_fcv = Signal(NB)

        # -- S1 registers ---------------------------------------------------------------------
        s1_valid = Signal()
        s1 = Signal(E)                          # mask/zero/last unused; last = block's last group
        s1_blast = Signal()
        s1_rotk = [Signal(range(max(NB, 2)), name=f"s1_rotk{k}") for k in range(KM)]
        s1_fcv = Signal(NB)
        # -- S2 registers: S1's group and its flag and mask words, straight from the memories --
        s2_valid = Signal()
        s2 = Signal(E)
        s2_blast = Signal()
        s2_rotk = [Signal(range(max(NB, 2)), name=f"s2_rotk{k}") for k in range(KM)]
        s2_fcv = Signal(NB)
        s2_flags = [[Signal(name=f"s2_flag{b}_{k}") for k in range(KM)] for b in range(NB)]
        s2_wm = Signal(G)
        # -- S3 registers: S2's group with its slot mask, pushed into the FIFO from here -------
        s3_valid = Signal()
        s3 = Signal(E)                          # last: the block's last group
        s3_some = Signal()                      # the mask has a slot
        s3_total = Signal(range(G + 1))         # the group's slots, skipped or not
        blk_has = Signal()

        # -- X, A, D and O stages -------------------------------------------------------------
        o_valid = Signal()
        w_valid, w_first, w_last = Signal(), Signal(), Signal()
        we = Signal(E)                          # the issued slot's group (mask unused)
        w_idx = Signal(range(max(G, 2)))        # its bit
        w_low = Signal(NB)
        x_valid, x_first, x_last = Signal(), Signal(), Signal()
        xe = Signal(E)
        x_idx = Signal(range(max(G, 2)))
        x_low = Signal(NB)
        x_ky = Signal(range(max(KM, 2)))        # conv: the slot's kernel row and column
        x_kx = Signal(range(max(KM, 2)))
        x_soff = Signal(range(max(G, KM * KM, 2)))   # its offset in the group's weights
        a_valid, a_zero, a_first, a_last = Signal(), Signal(), Signal(), Signal()
        a_cog, a_y, a_xg = Signal(ch), Signal(wd), Signal(wd)
        a_t = Signal(signed(ASW))
        a_rot = Signal(range(max(NB, 2)))
        a_used = Signal(NB)
        a_o = [Signal(range(max(NB, 2)), name=f"a_o{j}") for j in range(C)]
        a_l = [Signal(range(max(C, 2)), name=f"a_l{j}") for j in range(C)]
        a_v = [Signal(name=f"a_v{j}") for j in range(C)]
        a_wb = Signal(wt + 1)
        a_soff = Signal(range(max(G, KM * KM, 2)))

        # ==== setup: layer constants ===========================================================
        kk_now = Signal(range(KM * KM + 1))     # K², from a table (no multiplier)
        m.d.comb += kk_now.eq(Array([Const(k * k, range(KM * KM + 1))
                                     for k in range(2 ** len(k_))])[k_])
        with m.If(state == SETUP):
            m.d.sync += [
                is_fc.eq(L.kind == KIND_FC),
                kk.eq(kk_now),
                cikk.eq(lut_mul(L.in_c, kk_now)),
                sP.eq(lut_mul(s_, L.in_p)),
                rstep.eq(lut_mul(Mux(L.pool, 2 * s_, s_), L.in_p)),
                ystep.eq(Mux(L.pool, 2, 1)),
                iystep.eq(Mux(L.pool, 2 * s_, s_)),
                xstep.eq(C * s_),
                x0.eq(-pc),
                pP.eq(lut_mul(p_, L.in_p)),
            ]
            for k in range(KM):
                m.d.sync += [kyP[k].eq(lut_mul(L.in_p, k)), inK[k].eq(k < k_)]
            m.d.sync += [js[j].eq(lut_mul(s_, j)) for j in range(C)]
            m.d.sync += [ci_pen.eq(L.in_c - 2), g_pen.eq(L.groups - 2),
                         xg_pen.eq(L.xgs - 2), cog_pen.eq(L.cogs - 2),
                         grp_one.eq(Mux(L.kind == KIND_FC, L.groups == 1, L.in_c == 1)),
                         xg_one.eq(L.xgs == 1), cog_one.eq(L.cogs == 1)]
            for b in range(KM * KM):
                m.d.sync += soff[b].eq((b // KM) * k_ + b % KM)

        # ==== S0: walk the groups ==============================================================
        # Registers that say whether a loop is at its last value (ci or g: the block's last
        # group; xg; cog) or whether yb leaves rows to do, and the group's first word t_base
        # (fc: gNB; conv: chanS + rowA + ysub·sP + xw0), each worked out with the counters' next
        # values, so that S0's decisions and addresses start from registers.
        blast = Signal()
        xg_end = Signal()
        y_more = Signal()
        cog_end = Signal()
        t_base = Signal(signed(ASW))
        rot_base = Signal(range(max(NB, 2)))
        m.d.comb += rot_base.eq(Mux(is_fc, 0, _low(ci, lgNB)))
        tky = [Signal(signed(ASW), name=f"tky{k}") for k in range(KM)]
        rotk = [Signal(range(max(NB, 2)), name=f"rotk{k}") for k in range(KM)]
        for k in range(KM):
            m.d.comb += [
                tky[k].eq(t_base + Mux(is_fc, 0, kyP[k])),
                rotk[k].eq(_low(tky[k] + rot_base, lgNB)),
            ]
            for b in range(NB):
                ib = _low(b - p_rotk[k], lgNB)
                m.d.sync += self.flag_addr[b][k].eq((p_tky[k] + ib)[lgNB:lgNB + IBW])
        m.d.sync += self.mask_addr.eq(p_maddr)

        s0_fire = Signal()
        m.d.comb += s0_fire.eq((state == SCAN) & (occupied - pop_r < D))
        m.d.comb += [self.flag_en.eq(q_valid), self.mask_en.eq(q_valid)]

        # Row / column validity and the words each kx reads (relative to the group's first
        # word), worked out from P's input row and column into Q.
        p_iy0 = Signal(signed(XW))
        p_xcol = Signal(signed(XW))
        rowv = Signal(KM)
        colv = Signal(KM * C)
        used = Signal(KM * NB)
        for k in range(KM):
            iy = p_iy0 + k
            m.d.comb += rowv[k].eq(Mux(is_fc, int(k == 0), inK[k] & (iy >= 0) & (iy < L.in_h)))
        for kx in range(KM):
            for j in range(C):
                ix = p_xcol + dx[kx][j]
                m.d.comb += colv[kx * C + j].eq(inK[kx] & (ix >= 0) & (ix < L.in_w))
            for o in range(NB):
                le = Cat(*[colv[kx * C + j] & (offw[kx][j] <= o) for j in range(C)]).any()
                ge = Cat(*[colv[kx * C + j] & (offw[kx][j] >= o) for j in range(C)]).any()
                m.d.comb += used[kx * NB + o].eq(le & ge)
        fcv = Signal(NB)
        for i in range(NB):
            m.d.comb += fcv[i].eq(gNB + i < L.in_words)

        m.d.sync += [s1_valid.eq(q_valid), q_valid.eq(p_valid), p_valid.eq(s0_fire)]
        with m.If(p_valid):
            m.d.sync += [q.eq(p), q_blast.eq(p_blast), q_fcv.eq(p_fcv),
                         q.rowv.eq(rowv), q.colv.eq(colv), q.used.eq(used)]
            m.d.sync += [q_rotk[k].eq(p_rotk[k]) for k in range(KM)]
        with m.If(q_valid):
            m.d.sync += [s1.eq(q), s1_blast.eq(q_blast), s1_fcv.eq(q_fcv)]
            m.d.sync += [s1_rotk[k].eq(q_rotk[k]) for k in range(KM)]
        m.d.sync += s2_valid.eq(s1_valid)
        with m.If(s1_valid):
            m.d.sync += [s2.eq(s1), s2_blast.eq(s1_blast), s2_fcv.eq(s1_fcv),
                         s2_wm.eq(self.mask_data)]
            m.d.sync += [s2_rotk[k].eq(s1_rotk[k]) for k in range(KM)]
            m.d.sync += [s2_flags[b][k].eq(self.flag_data[b][k])
                         for b in range(NB) for k in range(KM)]
        with m.If(s0_fire):
            m.d.sync += [
                p.cog.eq(cog), p.y.eq(Mux(is_fc, 0, yb + ysub)), p.xg.eq(Mux(is_fc, 0, xg)),
                p.ci.eq(Mux(is_fc, 0, ci)), p.tk[0].eq(t_base),
                p_iy0.eq(iyb + Mux(ysub, s_, 0)), p_xcol.eq(xcol),
                p.wb.eq(Mux(is_fc, wrow, wgrp)),
                p_blast.eq(blast), p_fcv.eq(fcv), p_maddr.eq(maddr),
            ]
            m.d.sync += [p_tky[k].eq(tky[k]) for k in range(KM)]
            m.d.sync += [p_rotk[k].eq(rotk[k]) for k in range(KM)]
            with m.If(is_fc):
                m.d.sync += maddr.eq(maddr + 1)
                with m.If(~blast):
                    m.d.sync += [g.eq(g + 1), gNB.eq(gNB + NB), wrow.eq(wrow + NB),
                                 blast.eq(g == g_pen), t_base.eq(t_base + NB)]
                with m.Else():
                    m.d.sync += [g.eq(0), gNB.eq(0), blast.eq(grp_one), t_base.eq(0)]
                    with m.If(~cog_end):
                        m.d.sync += [cog.eq(cog + 1), cog_end.eq(cog == cog_pen),
                                     wrowc.eq(wrowc + L.in_words), wrow.eq(wrowc + L.in_words)]
                    with m.Else():
                        m.d.sync += state.eq(DRAIN)
            with m.Elif(~blast):
                m.d.sync += [ci.eq(ci + 1), chanS.eq(chanS + L.in_s), maddr.eq(maddr + 1),
                             wgrp.eq(wgrp + kk), blast.eq(ci == ci_pen),
                             t_base.eq(t_base + L.in_s)]
            with m.Else():
                m.d.sync += [ci.eq(0), chanS.eq(0), maddr.eq(mrow), wgrp.eq(wcog),
                             blast.eq(grp_one)]
                # The next group's first word: chanS = 0, and rowA, ysub and xw0 as they move.
                half = L.pool & ~ysub
                row_next = Mux(half, rowA + sP, Mux(xg_end, Mux(y_more, rowA + rstep, -pP), rowA))
                col_next = Mux(half, xw0, Mux(xg_end, x0, xw0 + s_))
                m.d.sync += t_base.eq(row_next + col_next)
                with m.If(half):
                    m.d.sync += ysub.eq(1)
                with m.Else():
                    m.d.sync += ysub.eq(0)
                    with m.If(~xg_end):
                        m.d.sync += [xg.eq(xg + 1), xw0.eq(xw0 + s_), xcol.eq(xcol + xstep),
                                     xg_end.eq(xg == xg_pen)]
                    with m.Else():
                        m.d.sync += [xg.eq(0), xw0.eq(x0), xcol.eq(0), xg_end.eq(xg_one)]
                        with m.If(y_more):
                            m.d.sync += [yb.eq(yb + ystep), rowA.eq(rowA + rstep),
                                         iyb.eq(iyb + iystep), y_more.eq(yb < y_lim2)]
                        with m.Else():
                            m.d.sync += [yb.eq(0), rowA.eq(-pP), iyb.eq(-p_),
                                         y_more.eq(y_more0)]
                            with m.If(~cog_end):
                                m.d.sync += [cog.eq(cog + 1), cog_end.eq(cog == cog_pen),
                                             mrow.eq(mrow + L.groups),
                                             maddr.eq(mrow + L.groups), wcog.eq(wcog + cikk),
                                             wgrp.eq(wcog + cikk)]
                            with m.Else():
                                m.d.sync += state.eq(DRAIN)

        # ==== S2: slot mask of the group =======================================================
        fr = [Signal(NB, name=f"fr{k}") for k in range(KM)]    # flags of row k, word i
        for k in range(KM):
            col = Array([s2_flags[b][k] for b in range(NB)])
            for i in range(NB):
                m.d.comb += fr[k][i].eq(col[_low(s2_rotk[k] + i, lgNB)])
        wm = s2_wm
        conv_mask = Signal(G)
        for ky in range(KM):
            for kx in range(KM):
                b = ky * KM + kx
                wbit = wm.bit_select(soff[b], 1)
                live = (s2.rowv[ky] & (s2.used[kx * NB:(kx + 1) * NB] & ~fr[ky]).any()
                        & ~wbit)
                m.d.comb += conv_mask[b].eq(inK[ky] & inK[kx] & (~skip | live))
        fc_mask = Signal(G)
        for i in range(NB):
            m.d.comb += fc_mask[i].eq(s2_fcv[i] & (~skip | (~fr[0][i] & ~wm[i])))
        gmask = Signal(G)
        m.d.comb += gmask.eq(Mux(is_fc, fc_mask, conv_mask))
        m.d.sync += s3_valid.eq(s2_valid)
        with m.If(s2_valid):
            m.d.sync += [s3.eq(s2), s3.mask.eq(gmask), s3.zero.eq(0), s3.last.eq(s2_blast),
                         s3_some.eq(gmask != 0),
                         s3_total.eq(Mux(is_fc, _popcount(s2_fcv, NB), kk))]
            m.d.sync += [s3.tk[k].eq(s2.tk[0] + Mux(is_fc, 0, kyP[k])) for k in range(KM)]

        # ==== S3: into the FIFO ================================================================
        issued = Signal(range(G + 1))
        m.d.comb += issued.eq(_popcount(s3.mask, G))
        # counter increments, registered
        m.d.sync += [
            self.issue_slots.eq(Mux(s3_valid, s3_total, 0)),
            self.issue_slots_skipped.eq(Mux(s3_valid, s3_total - issued, 0)),
            self.weight_bytes_read.eq(Mux(s3_valid, Mux(is_fc, issued * (R * C), issued * R), 0)),
        ]
        with m.If(s3_valid):
            m.d.comb += push_e.eq(s3)
            with m.If(s3_some):
                m.d.comb += push.eq(1)
                m.d.sync += [tail_sealed.eq(s3.last), blk_has.eq(~s3.last)]
            with m.Elif(s3.last):
                m.d.sync += [tail_sealed.eq(1), blk_has.eq(0)]
                with m.If(blk_has):
                    m.d.comb += seal.eq(1)
                with m.Else():
                    m.d.comb += [push.eq(1), push_e.zero.eq(1)]

        # FIFO bookkeeping
        m.d.comb += [fifo_w.addr.eq(wptr), fifo_w.data.eq(push_e), fifo_w.en.eq(push)]
        with m.If(push):
            m.d.sync += [lasts.bit_select(wptr, 1).eq(push_e.last), wtail.eq(wptr)]
        with m.If(seal):
            m.d.sync += lasts.bit_select(wtail, 1).eq(1)
        with m.If(push):
            m.d.sync += wptr.eq(Mux(wptr == D - 1, 0, wptr + 1))
        with m.If(pop):
            m.d.sync += rptr.eq(Mux(rptr == D - 1, 0, rptr + 1))
        # pop comes late (the head's mask, read from LUT RAM in this cycle): level and its flags
        # choose by pop between two next values worked out without it; occupied takes it a
        # cycle later, through pop_r.
        kept = level + push
        m.d.sync += [level.eq(Mux(pop, kept - 1, kept)),
                     level_nz.eq(Mux(pop, kept > 1, kept > 0)),
                     level_ge2.eq(Mux(pop, kept > 2, kept > 1)),
                     pop_r.eq(pop), occupied.eq(occupied + s0_fire - (s3_valid & ~push) - pop_r)]

        # ==== issue ============================================================================
        head = Signal(E)
        m.d.comb += [fifo_r.addr.eq(rptr), head.eq(fifo_r.data),
                     head.last.eq(lasts.bit_select(rptr, 1))]
        done_bits = Signal(G)
        started = Signal()
        rem = Signal(G)
        low = Signal(G)
        idx = Signal(range(max(G, 2)))
        final = Signal()
        sealed = Signal()
        ends = Signal()                  # the head's final slot ends its block
        outstanding = Signal(range(self.credits + 1))
        fire_i = Signal()
        m.d.comb += [
            rem.eq(head.mask & ~done_bits),
            low.eq(rem & (~rem + 1)[:G]),
            final.eq(_at_most_one(rem, G)),
            sealed.eq(level_ge2 | tail_sealed),
            ends.eq(final & head.last),
            fire_i.eq(level_nz & (~final | sealed) & ~(ends & (outstanding == self.credits))),
            pop.eq(fire_i & final),
            idx.eq(Cat(*[Cat(*[low[b] for b in range(G) if (b >> n) & 1]).any()
                         for n in range(max(1, (G - 1).bit_length()))])),
        ]
        with m.If(fire_i):
            m.d.sync += [done_bits.eq(Mux(final, 0, done_bits | low)), started.eq(~ends)]
        m.d.sync += [w_valid.eq(fire_i), w_first.eq(~started), w_last.eq(ends),
                     we.eq(head), w_idx.eq(idx), w_low.eq(low[:NB])]
        m.d.sync += outstanding.eq(outstanding + (fire_i & ends) - self.block_done)

        # ==== W → X: the kernel row and column and the weight offset of bit w_idx ==============
        ky_t = Array([Const(min(b // KM, KM - 1), range(KM)) for b in range(max(G, 2))])
        kx_t = Array([Const(b % KM, range(KM)) for b in range(max(G, 2))])
        soff_t = Array(soff + [Const(0)] * (max(G, 2) - KM * KM))
        m.d.sync += [x_valid.eq(w_valid), x_first.eq(w_first), x_last.eq(w_last), xe.eq(we),
                     x_idx.eq(w_idx), x_low.eq(w_low), x_ky.eq(ky_t[w_idx]), x_kx.eq(kx_t[w_idx]),
                     x_soff.eq(Mux(is_fc, w_idx, soff_t[w_idx]))]

        # ==== X: decode the slot ===============================================================
        rv = xe.rowv.bit_select(x_ky, 1)
        m.d.sync += [
            a_valid.eq(x_valid), a_zero.eq(xe.zero), a_first.eq(x_first), a_last.eq(x_last),
            a_cog.eq(xe.cog), a_y.eq(xe.y), a_xg.eq(xe.xg),
        ]
        with m.If(is_fc):
            m.d.sync += [a_t.eq(xe.tk[0]), a_rot.eq(0), a_used.eq(x_low),
                         a_wb.eq(xe.wb), a_soff.eq(x_soff)]
            for j in range(C):
                m.d.sync += [a_o[j].eq(x_idx), a_l[j].eq(j), a_v[j].eq(~xe.zero)]
        with m.Else():
            m.d.sync += [
                a_t.eq(xe.tk[x_ky]),
                a_rot.eq(_low(xe.ci, lgNB)),
                a_used.eq(Mux(rv, xe.used.word_select(x_kx, NB), 0)),
                a_wb.eq(xe.wb), a_soff.eq(x_soff),
            ]
            for j in range(C):
                m.d.sync += [
                    a_o[j].eq(Array([offw[x][j] for x in range(KM)])[x_kx]),
                    a_l[j].eq(Array([lane[x][j] for x in range(KM)])[x_kx]),
                    a_v[j].eq(rv & xe.colv.bit_select(x_kx * C + j, 1) & ~xe.zero),
                ]

        # ==== A: read addresses, into the port registers of R ===================================
        rd = Signal()
        m.d.comb += rd.eq(a_valid & ~a_zero)
        act_en = Signal(NB)
        for b in range(NB):
            ib = _low(b - a_t - a_rot, lgNB)
            m.d.comb += act_en[b].eq(rd & a_used.bit_select(ib, 1))
            m.d.sync += [self.act_addr[b].eq((a_t + ib)[lgNB:lgNB + IBW]),
                         self.act_en[b].eq(act_en[b])]
        m.d.sync += self.act_bytes_read.eq(_popcount(Cat(*self.act_en), NB) * C)
        a_widx = Signal(wt + 1)
        m.d.comb += a_widx.eq(a_wb + a_soff)
        wbank = Signal(range(max(C, 2)))
        m.d.comb += wbank.eq(_low(a_widx, lgC))
        for j in range(C):
            m.d.sync += [
                self.wgt_addr[j].eq(Mux(is_fc, a_widx, a_widx[lgC:])[:WBW]),
                self.wgt_en[j].eq(rd & (is_fc | (wbank == j))),
            ]

        # ==== R: the read ports' registers are on the memories =================================
        r_valid, r_zero, r_first, r_last = Signal(), Signal(), Signal(), Signal()
        r_cog, r_y, r_xg = Signal(ch), Signal(wd), Signal(wd)
        r_bank = [Signal(range(max(NB, 2)), name=f"r_bank{j}") for j in range(C)]
        r_l = [Signal(range(max(C, 2)), name=f"r_l{j}") for j in range(C)]
        r_v = [Signal(name=f"r_v{j}") for j in range(C)]
        r_wbank = Signal(range(max(C, 2)))
        m.d.sync += [
            r_valid.eq(a_valid), r_zero.eq(a_zero), r_first.eq(a_first),
            r_last.eq(a_last), r_cog.eq(a_cog), r_y.eq(a_y), r_xg.eq(a_xg),
            r_wbank.eq(wbank),
        ]
        for j in range(C):
            m.d.sync += [r_bank[j].eq(_low(a_t + a_rot + a_o[j], lgNB)), r_l[j].eq(a_l[j]),
                         r_v[j].eq(a_v[j])]

        # ==== D (the memories' data arrives) and E (D's slot with that data registered, so
        # nothing follows the block RAMs): R's fields, delayed ==============================
        def delay(prefix, src):
            """Register ``src`` (a signal or a list of them) as stage ``prefix``'s copy."""
            if isinstance(src, list):
                return [delay(prefix, x) for x in src]
            dst = Signal.like(src, name=prefix + src.name[1:])
            m.d.sync += dst.eq(src)
            return dst

        d_valid, d_zero, d_first, d_last, d_cog, d_y, d_xg, d_wbank, d_bank, d_l, d_v = (
            delay("d", x) for x in (r_valid, r_zero, r_first, r_last, r_cog, r_y, r_xg,
                                    r_wbank, r_bank, r_l, r_v))
        e_valid, e_first, e_last, e_cog, e_y, e_xg, e_bank, e_l, e_v = (
            delay("e", x) for x in (d_valid, d_first, d_last, d_cog, d_y, d_xg, d_bank, d_l,
                                    d_v))
        e_act = [Signal(8 * C, name=f"e_act{b}") for b in range(NB)]
        e_wgt = [Signal(8 * R, name=f"e_wgt{j}") for j in range(C)]
        m.d.sync += [e_act[b].eq(self.act_data[b]) for b in range(NB)]
        m.d.sync += [e_wgt[j].eq(self.wgt_data[j]) for j in range(C)]

        pl = Signal(slot_layout(cfg))           # E's slot
        act_words = Array(e_act)
        for j in range(C):
            word = Signal(8 * C, name=f"e_word{j}")
            m.d.comb += [
                word.eq(act_words[e_bank[j]]),
                pl.act[j].eq(Mux(e_v[j], word.word_select(e_l[j], 8).as_signed(), 0)),
            ]
        # Each row of weights has copies of its own of what selects them (a slot's bank, whether
        # it is zero, and is_fc, which holds still through a layer): they fan out to all the
        # weight bits, which lie as far apart as the weight banks' block RAMs.
        for r, sel in enumerate(copies(m, Cat(d_wbank, d_zero, is_fc), R, "e_wsel")):
            wbank, zero, fc = sel[:len(d_wbank)], sel[len(d_wbank)], sel[-1]
            row = Array(word[8 * r:8 * r + 8] for word in e_wgt)[wbank]
            for j in range(C):
                v = Mux(fc, e_wgt[j][8 * r:8 * r + 8], row)
                m.d.comb += pl.wgt[r * C + j].eq(Mux(zero, 0, v.as_signed()))
        m.d.comb += [
            pl.first.eq(e_first), pl.last.eq(e_last),
            pl.tag.cog.eq(e_cog), pl.tag.y.eq(e_y), pl.tag.xg.eq(e_xg),
        ]

        # ==== O: the slot on o =================================================================
        m.d.sync += [o_valid.eq(e_valid), self.o.payload.eq(pl)]
        m.d.comb += self.o.valid.eq(o_valid)

        # ==== control ==========================================================================
        with m.If(state == SETUP):
            m.d.sync += state.eq(INIT)
        with m.If(state == INIT):
            m.d.sync += [y_lim2.eq(L.rows - 2 * ystep), y_more0.eq(L.rows > ystep),
                         y_more.eq(L.rows > ystep), blast.eq(grp_one), xg_end.eq(xg_one),
                         cog_end.eq(cog_one), t_base.eq(Mux(is_fc, 0, x0 - pP))]
            for kx in range(KM):
                for j in range(C):
                    q = js[j] + kx - p_ + C * pc          # ≥ 0
                    m.d.sync += [
                        dx[kx][j].eq(js[j] + kx - p_),
                        offw[kx][j].eq(q >> lgC),
                        lane[kx][j].eq(q & (C - 1)),
                    ]
            m.d.sync += [
                cog.eq(0), yb.eq(0), ysub.eq(0), xg.eq(0), ci.eq(0), g.eq(0),
                chanS.eq(0), rowA.eq(-pP), iyb.eq(-p_), xw0.eq(-pc), xcol.eq(0),
                maddr.eq(L.mbase), mrow.eq(L.mbase), wcog.eq(L.wbase), wgrp.eq(L.wbase),
                gNB.eq(0), wrowc.eq(L.wbase >> lgC), wrow.eq(L.wbase >> lgC),
            ]
            empty = (L.cogs == 0) | ((L.kind != KIND_FC)
                                     & ((L.rows == 0) | (L.xgs == 0) | (L.in_c == 0)))
            m.d.sync += state.eq(Mux(empty, DRAIN, SCAN))
        with m.If((state == DRAIN) & ~p_valid & ~q_valid & ~s1_valid & ~s2_valid & ~s3_valid
                  & ~level_nz & ~w_valid & ~x_valid & ~a_valid & ~r_valid & ~d_valid
                  & ~e_valid & ~o_valid):
            m.d.sync += [state.eq(IDLE), done.eq(1)]
        with m.If(self.start):
            m.d.sync += [
                L.eq(self.desc), skip.eq(self.skip), state.eq(SETUP), done.eq(0),
                p_valid.eq(0), q_valid.eq(0), s1_valid.eq(0), s2_valid.eq(0), s3_valid.eq(0),
                wptr.eq(0), rptr.eq(0), level.eq(0), level_nz.eq(0), level_ge2.eq(0),
                occupied.eq(0), pop_r.eq(0),
                tail_sealed.eq(0), blk_has.eq(0), done_bits.eq(0), started.eq(0), w_valid.eq(0),
                x_valid.eq(0), a_valid.eq(0), r_valid.eq(0), d_valid.eq(0), e_valid.eq(0),
                o_valid.eq(0),
                self.issue_slots.eq(0), self.issue_slots_skipped.eq(0),
                self.weight_bytes_read.eq(0), self.act_bytes_read.eq(0),
            ]
        return m
