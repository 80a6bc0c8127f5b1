"""The output stage: bias, requantization, ReLU, saturation, 2×2 max-pool, flags and the
activation writes of one block (docs/ARCHITECTURE.md, "Pipeline"; numerics in sw/numerics.py,
addresses in sw/layout.py).

Ports
-----
``i``
    Block stream from the PE array. The block's accumulators are read straight from
    ``i.payload`` over ``u_n`` cycles (below); the block is accepted (``i.ready``) in its last
    requantization step. ``i.ready`` is a register (high in a block's last step; a source must
    hold a block until it is accepted, as streams do).
``i_ready_next`` (out)
    The value ``i.ready`` takes in the next cycle (for the PE array's copies of it).
``desc``, ``epsilon``
    The current layer's descriptor and ε; constant while ``idle`` is low, and the descriptor
    from the cycle before the layer's first block is on ``i`` (the steps per block are worked
    out from it in registers).
``param_addr`` (out), ``param_data`` (in, ``OW·53`` bits, :func:`hw.tags.param_layout`)
    A read port of the output-parameter memory with one cycle of latency: ``param_data`` in
    cycle ``t`` must be the word at the ``param_addr`` of cycle ``t−1`` (a synchronous read
    port, enabled in every cycle in which a block is on ``i``); the stage registers it before
    use. Each requantization step reads the parameters of its own ``OW`` channels, row
    ``(desc.pbase + cog)·S + step`` (:func:`sw.layout.param_steps`), so a block never waits
    for them. ``param_addr`` is a register; ``param_addr_next`` is the value it takes in the
    next cycle (for a register of the memory's own next to its block RAMs).
``wr[w]`` for ``w < OW``: ``en``, ``index``, ``data``, ``flag``
    Registered write lanes; the lanes enabled in one cycle address distinct banks. A word is
    written exactly once; ``flag`` is the tile's flag bit (its data is then all zeros).
``flagged`` (out, ``bits(OW)``)
    The number of enabled write lanes whose ``flag`` is set, in the same cycle as the writes.
``idle`` (out)
    No block is in flight: ``i.valid`` is low and nothing is being requantized or written
    (a write still on ``wr`` in this cycle is performed at the end of it). At a layer's end,
    once the PE array has delivered its last block, the sequencer waits for ``idle``.

Throughput and latency
----------------------
Requantization handles ``OW`` channels × ``C`` columns per cycle (``OW·C`` products of
32 × 16 bits, each two registered 18 × 18 multiplies), ``u_n`` cycles per block: ``U = R/OW``,
but for a layer written in CHW with fewer output channels than ``R`` (its one channel group
fills only part of the rows) ``ceil(out_c/OW)``, at least 3 — the steps of rows with no
channel are not taken (when ``U ≥ 4``; below that ``u_n = U``). The writer runs concurrently on
the previous block: ``u_n`` cycles (CHW), ``R/OW`` (HWC conv), ``R/(2·OW)`` (HWC pooled),
``R/(C·OW)`` (fc) or none (the first block of a pool pair, an even ``xg`` of a pooled CHW row)
— never more than ``u_n``, so the pipeline never waits for the writer and has no stall signal
at all. A block whose last step is in cycle ``t`` has its first write on ``wr`` in cycle
``t+14`` (``t+15`` when pooled: the 2×2 maximum takes a register stage of its own).

Restrictions (checked): ``cols ≥ 2`` (pooling halves a word), ``OW`` divides ``R/C`` (the ``OW``
words written per cycle in HWC are consecutive channel groups of one pixel).
"""

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from sw.config import ConfigError
from sw.layout import param_steps

from .arith import lut_mul, registered_product, within
from .fanout import KEEP, copies
from .tags import block_layout, block_tag, descriptor_layout, index_width, param_layout

__all__ = ["OutputStage", "output_members", "write_lane_signature"]


def _clog2(n):
    return (n - 1).bit_length()


def write_lane_signature(config):
    """One output write lane (output stage → core), as seen from the output stage."""
    return wiring.Signature({
        "en": Out(1),
        "index": Out(index_width(config)),
        "data": Out(data.ArrayLayout(signed(config.act_bits), config.cols)),
        "flag": Out(1),
    })


def _smax(a, b):
    return Mux(a > b, a, b)


def _smax3(a, b, c):
    """max(a, b, c), its three comparisons side by side (one carry chain deep)."""
    return Mux((a >= b) & (a >= c), a, Mux(b >= c, b, c))


def output_members(config):
    """The members of an output stage's signature (the module docstring): this one's and
    :class:`hw.compact_output.CompactOutput`'s."""
    paddr = _clog2(config.param_words * param_steps(config))   # parameter memory rows
    return {
        "i": In(stream.Signature(block_layout(config))),
        "i_ready_next": Out(1),
        "desc": In(descriptor_layout(config)),
        "epsilon": In(8),
        "param_addr": Out(paddr),
        "param_addr_next": Out(paddr),
        "param_data": In(param_layout(config)),
        "wr": Out(write_lane_signature(config)).array(config.out_words),
        "flagged": Out(range(config.out_words + 1)),
        "idle": Out(1),
    }


class OutputStage(wiring.Component):
    def __init__(self, config):
        R, C, OW = config.rows, config.cols, config.out_words
        if C < 2:
            raise ConfigError("OutputStage needs Config.cols >= 2 (pooling halves a word)")
        if R % C or (R // C) % OW:
            raise ConfigError(f"OutputStage needs out_words ({OW}) to divide rows/cols "
                              f"({R}/{C})")
        self.config = config
        super().__init__(output_members(config))

    def elaborate(self, platform):
        cfg = self.config
        R, C, OW, NB = cfg.rows, cfg.cols, cfg.out_words, cfg.act_banks
        U = R // OW            # requantization steps per block, at most (module docstring)
        H = C // 2
        KB = R // C            # channel groups (HWC words per pixel) per block
        lnb = _clog2(NB)
        m = Module()
        desc = self.desc
        i = self.i
        tagl = block_tag(cfg)
        # A pipeline stage's control: a step of a block, its last one, the block's tag.
        stage = data.StructLayout({"valid": 1, "last": 1, "step": range(U), "tag": tagl})
        act8 = signed(8)

        # ---- requantization pipeline --------------------------------------------------------
        # It never stalls: a block's steps enter stage A0 at most one per cycle, so consecutive
        # blocks reach the hand-off at least u_n cycles apart, and the writer needs at most u_n
        # cycles for a block (module docstring), so it is always free in time.
        step = Signal(range(U), attrs=KEEP)      # not merged into its copies (step_at)
        step_next = Signal(range(U))
        done = Signal()                  # res holds a complete block (geometry in done_geo)
        go = Signal()                    # stage A0 takes a step of the block on i
        m.d.sync += step.eq(step_next)
        # at_last: step is a block's last (u_n − 1); at_ready: i.ready's next value.
        # Within a block (step > 0) the block stays on i, so it is accepted exactly when its
        # last step is taken: i.ready is a register (u_n ≥ 2). Its next value is
        # Mux(go, step == u_n - 2, step == u_n - 1); within a block go is high, so for u_n ≥ 3
        # it is step == u_n - 2 (no path from go to the PE array's copies of it).
        if U >= 4:
            # u_n, the layer's steps per block, lives in registers worked out from the
            # descriptor, u_last = u_n − 1 and u_ready = u_n − 2 (initially those of u_n = U),
            # and the comparisons with them are registers too, loaded from step_next, so that
            # neither step_next nor i_ready_next waits for a comparison of two registers.
            # (u_last and u_ready change only while no block is on i, so step is 0, and at
            # least a cycle before a layer's first block: port desc.)
            groups = ((desc.out_c + OW - 1) >> _clog2(OW) if OW & (OW - 1) == 0
                      else (desc.out_c + OW - 1) // OW)
            u_n = Mux(desc.out_hwc | (desc.out_c >= R), U, Mux(groups < 3, 3, groups))
            u_last = Signal(range(U), init=U - 1)
            u_ready = Signal(range(U), init=U - 2)
            at_last, at_ready = Signal(), Signal()
            m.d.sync += [u_last.eq(u_n - 1), u_ready.eq(u_n - 2),
                         at_last.eq(step_next == u_last), at_ready.eq(step_next == u_ready)]
        else:                            # u_n = U
            u_last = U - 1
            at_last = step == U - 1
            at_ready = step == U - 2 if U >= 3 else go & (step == 0)
        ready = Signal()
        m.d.comb += [
            go.eq(i.valid),
            i.ready.eq(ready),
            step_next.eq(Mux(go, Mux(at_last, 0, step + 1), step)),
            self.i_ready_next.eq(at_ready),
        ]
        m.d.sync += ready.eq(self.i_ready_next)

        # Stages A0 and A1: select the step's accumulators, U to 1, in two steps: A0 by step's
        # two low bits among each group of four (the wires from the whole PE array end in one
        # level of logic), A1 by the others.
        s0, s1 = Signal(stage), Signal(stage)
        x0 = [[[Signal(signed(32), name=f"x0_{w}_{j}_{g}") for g in range(-(-U // 4))]
               for j in range(C)] for w in range(OW)]
        x1 = [[Signal(signed(32), name=f"x1_{w}_{j}") for j in range(C)] for w in range(OW)]
        accs = i.payload.acc
        m.d.sync += [s0.valid.eq(go), s0.last.eq(at_last), s0.step.eq(step),
                     s0.tag.eq(i.payload.tag), s1.eq(s0)]
        # step selects among all R·C accumulators: each column j has a copy of it, and the
        # parameter address one more (hw/fanout.py); they load step's next value, so they equal
        # step (in the first cycle after a reset they may not; no block is on i then). A1's
        # copies load step itself, so they equal s0.step.
        step_at = copies(m, step_next, C + 1, "step")
        step_a1 = copies(m, step, C, "step_a1")
        for w in range(OW):
            rs = list(range(w, R, OW))
            for j in range(C):
                for g, x0g in enumerate(x0[w][j]):
                    m.d.sync += x0g.eq(Array(accs[r * C + j] for r in rs[4 * g:4 * g + 4])
                                       [step_at[j][:2]])
                m.d.sync += x1[w][j].eq(Array(x0[w][j])[step_a1[j][2:]])

        # The parameters of the step A0 takes: its row of the parameter memory is addressed
        # now (param_addr_next), registered in param_addr, read, and registered in pd, which
        # then holds them in the cycle the step's accumulators are in x2, where they are used.
        # (With no block on i the address is anything and no step is taken.)
        pw = _clog2(cfg.param_words)
        pd = Signal.like(self.param_data)
        m.d.comb += self.param_addr_next.eq(Cat(step_at[C],
                                                (desc.pbase + i.payload.tag.cog)[:pw]))
        m.d.sync += [self.param_addr.eq(self.param_addr_next), pd.eq(self.param_data)]
        b2, m2, s2_s = ([getattr(pd[w], f) for w in range(OW)] for f in ("bias", "mult", "shift"))

        # Stage A2: fc: the column sum into column 0.
        s2 = Signal(stage)
        x2 = [[Signal(signed(32), name=f"x2_{w}_{j}") for j in range(C)] for w in range(OW)]
        m.d.sync += s2.eq(s1)
        for w in range(OW):
            fsum = list(x1[w])            # a balanced tree of adds: log2(C) carry chains deep
            while len(fsum) > 1:
                fsum = [(fsum[k] + fsum[k + 1])[:32] if k + 1 < len(fsum) else fsum[k]
                        for k in range(0, len(fsum), 2)]
            fsum = fsum[0].as_signed()
            m.d.sync += x2[w][0].eq(Mux(desc.kind == 1, fsum, x1[w][0]))
            for j in range(1, C):
                m.d.sync += x2[w][j].eq(x1[w][j])

        # The stages after A2: the products (A, B), the rounding (C1, C2), the shift (D1), the
        # saturation (D2); then the block's bytes are in res.
        sa, sb, sc, sc2, sd, se = (Signal(stage, name=n)
                                   for n in ("sa", "sb", "sc", "sc2", "sd", "se"))

        # The geometry of a block's words: worked out from its tag in four stages alongside C1
        # to D2 (d_geo goes with se), at most one small product per stage (in logic,
        # hw.arith.lut_mul), so that the hand-off below only copies registers (done_geo). The
        # word address a0 of the first word is, in CHW, cog·R·out_s + row·out_p + xw, in HWC
        # (row·out_w + col0)·out_q + cog·KB.
        pool, hwc = desc.pool, desc.out_hwc
        aw = max(index_width(cfg), len(desc.out_s)) + 8
        cow = len(desc.out_c) + R.bit_length() + 1
        geo = data.StructLayout({
            "pair": 1,          # first block of a pool pair: to pbuf
            "hold": 1,          # pooled CHW row, even xg (not the last): to hold
            "odd": 1,           # pooled CHW row, odd xg: its left half is in hold
            "a0": aw,           # logical address of the first word
            "co": cow,          # channel (CHW) or channel group k (HWC) of the first word
            "J": C.bit_length(),     # columns (HWC) or 1 (CHW)
            "mask": C,          # CHW: valid pixel lanes; HWC: all ones iff the block has a
                                # pixel (else no word is written)
        })

        # Geometry, stage A: the block's output row and first column, cog·R (from sb's tag).
        a_row = Signal.like(sb.tag.y)
        a_col0 = Signal(len(sb.tag.xg) + C.bit_length())
        a_cogr = Signal(aw)
        m.d.sync += [a_row.eq(Mux(pool, sb.tag.y >> 1, sb.tag.y)),
                     a_col0.eq(Mux(pool, sb.tag.xg * H, sb.tag.xg * C)),
                     a_cogr.eq(lut_mul(sb.tag.cog, R))]
        # Geometry, stage B: row·out_p, cog·R·out_s, row·out_w, col0·out_q, the columns
        # left from col0.
        b_rowp, b_cogs, b_roww, b_col0q = (Signal(aw, name=f"b_{n}")
                                           for n in ("rowp", "cogs", "roww", "col0q"))
        b_ncols = Signal(signed(max(len(desc.out_w), len(desc.conv_w), len(a_col0)) + 2))
        m.d.sync += [b_rowp.eq(lut_mul(a_row, desc.out_p)), b_cogs.eq(lut_mul(a_cogr, desc.out_s)),
                     b_roww.eq(lut_mul(a_row, desc.out_w)), b_col0q.eq(lut_mul(a_col0, desc.out_q)),
                     b_ncols.eq(Mux(pool, desc.out_w, desc.conv_w) - a_col0)]

        # Stages A and B: add the bias, multiply. The 32 × 16-bit product x·m is two products
        # of at most 18 × 18 bits, x_lo·m and x_hi·m (x = x_hi·2¹⁶ + x_lo, x_lo unsigned), each
        # from registered_product: its operand registers are stage A's, its product registers
        # stage B's (on ECP5 both inside a DSP block). Stages C1 and C2 add them up.
        a_s2 = [Signal(5, name=f"a_s2_{w}") for w in range(OW)]
        b_s = [Signal(5, name=f"b_s_{w}") for w in range(OW)]
        b_rnd = [Signal(32, name=f"b_rnd_{w}") for w in range(OW)]
        b_lo = [[None] * C for _ in range(OW)]      # x_lo·m: 32 bits, unsigned
        b_hi = [[None] * C for _ in range(OW)]      # x_hi·m: 32 bits, signed
        m.d.sync += [sa.eq(s2), sb.eq(sa)]
        for w in range(OW):
            m.d.sync += [a_s2[w].eq(s2_s[w]), b_s[w].eq(a_s2[w]),
                         b_rnd[w].eq((Const(1, 33) << a_s2[w])[1:33])]
            mult = Cat(m2[w], Const(0, 1))          # 17 bits: non-negative as signed
            for j in range(C):
                x = (x2[w][j] + b2[w])[:32]
                b_lo[w][j] = registered_product(m, Cat(x[:16], Const(0, 1)), mult,
                                                f"mul_lo_{w}_{j}", platform)[:32]
                b_hi[w][j] = registered_product(m, x[16:], mult,
                                                f"mul_hi_{w}_{j}", platform)[:32].as_signed()

        # Stages C1 and C2: t = x·m + rnd = x_hi·m·2¹⁶ + (x_lo·m + rnd), one carry chain each:
        # C1 adds the rounding constant rnd = 2^(s−1) (registered in stage B) to x_lo·m (33
        # bits), C2 adds the upper 17 bits of that to x_hi·m.
        c_u = [[Signal(33, name=f"c_u_{w}_{j}") for j in range(C)] for w in range(OW)]
        c_h = [[Signal(signed(32), name=f"c_h_{w}_{j}") for j in range(C)] for w in range(OW)]
        c_t = [[Signal(signed(50), name=f"c_t_{w}_{j}") for j in range(C)] for w in range(OW)]
        c_s = [Signal(5, name=f"c_s_{w}") for w in range(OW)]
        c2_s = [Signal(5, name=f"c2_s_{w}") for w in range(OW)]
        m.d.sync += [sc.eq(sb), sc2.eq(sc)]
        for w in range(OW):
            m.d.sync += [c_s[w].eq(b_s[w]), c2_s[w].eq(c_s[w])]
            for j in range(C):
                m.d.sync += [c_u[w][j].eq(b_lo[w][j] + b_rnd[w]), c_h[w][j].eq(b_hi[w][j]),
                             c_t[w][j].eq(Cat(c_u[w][j][:16],
                                              c_h[w][j] + c_u[w][j][16:]).as_signed())]

        # Geometry, stage C: CHW: cog·R·out_s + row·out_p; HWC: row·out_w·out_q and
        # col0·out_q + cog·KB.
        c_chw, c_rowq, c_colq = (Signal(aw, name=f"c_{n}") for n in ("chw", "rowq", "colq"))
        c_ncols = Signal.like(b_ncols)
        m.d.sync += [c_chw.eq(b_cogs + b_rowp), c_rowq.eq(lut_mul(b_roww, desc.out_q)),
                     c_colq.eq(b_col0q + lut_mul(sc2.tag.cog, KB)), c_ncols.eq(b_ncols)]

        # Stage D1: shift.
        d_y = [[Signal(signed(50), name=f"d_y_{w}_{j}") for j in range(C)] for w in range(OW)]
        m.d.sync += sd.eq(sc2)
        for w in range(OW):
            for j in range(C):
                m.d.sync += d_y[w][j].eq(c_t[w][j] >> c2_s[w])

        # Stage D2: ReLU, saturate. y > 127 and y < -128 as reductions of y's bits above the
        # byte (as comparisons they are 50-bit carry chains).
        e_y = [[Signal(act8, name=f"e_y_{w}_{j}") for j in range(C)] for w in range(OW)]
        m.d.sync += se.eq(sd)
        for w in range(OW):
            for j in range(C):
                y = d_y[w][j]
                neg, high = y[-1], y[7:]
                with m.If(desc.relu & neg):
                    m.d.sync += e_y[w][j].eq(0)
                with m.Elif(~neg & high.any()):
                    m.d.sync += e_y[w][j].eq(127)
                with m.Elif(neg & ~high.all()):
                    m.d.sync += e_y[w][j].eq(-128)
                with m.Else():
                    m.d.sync += e_y[w][j].eq(y[:8])

        # Geometry, stage D: the block's (goes with se).
        d_geo = Signal(geo)
        ct = sd.tag
        xw = Mux(pool, ct.xg >> 1, ct.xg)
        cc = Mux(pool, H, C)
        m.d.sync += [d_geo.pair.eq(pool & ~ct.y[0]),
                     d_geo.hold.eq(pool & ct.y[0] & ~hwc & ~ct.xg[0] & (ct.xg != desc.xgs - 1)),
                     d_geo.odd.eq(~hwc & ct.xg[0])]
        with m.If(~hwc):
            m.d.sync += [d_geo.a0.eq(c_chw + xw), d_geo.co.eq(ct.cog * R),
                         d_geo.J.eq(1)]
            for jj in range(C):
                m.d.sync += d_geo.mask[jj].eq(xw * C + jj < Mux(pool, desc.out_w, desc.conv_w))
        with m.Else():
            m.d.sync += [d_geo.a0.eq(c_rowq + c_colq),
                         d_geo.co.eq(ct.cog * KB),
                         d_geo.mask.eq(Mux(c_ncols > 0, -1, 0))]
            with m.If(c_ncols >= cc):
                m.d.sync += d_geo.J.eq(cc)
            with m.Elif(c_ncols <= 0):
                m.d.sync += d_geo.J.eq(1)    # no pixel: mask = 0 disables the words
            with m.Else():
                m.d.sync += d_geo.J.eq(c_ncols)

        # The step's bytes into the result buffer.
        res = [[Signal(act8, name=f"res_{r}_{j}") for j in range(C)] for r in range(R)]
        done_geo = Signal(geo)
        m.d.sync += done.eq(se.valid & se.last)
        with m.If(se.valid & se.last):
            m.d.sync += done_geo.eq(d_geo)
        with m.If(se.valid):
            for u in range(U):
                with m.If(se.step == u):
                    m.d.sync += [res[u * OW + w][j].eq(e_y[w][j])
                                 for w in range(OW) for j in range(C)]

        # ---- hand-off: res → pool buffer / hold buffer / writer ------------------------------
        # pbuf holds the first block of a pool pair as the maxima of its horizontal pairs.
        pbuf = [[Signal(act8, name=f"pbuf_{r}_{q}") for q in range(H)] for r in range(R)]
        hold = [[Signal(act8, name=f"hold_{r}_{q}") for q in range(H)] for r in range(R)]
        wbuf = [[Signal(act8, name=f"wbuf_{r}_{j}") for j in range(C)] for r in range(R)]
        # Pooled blocks are handed off one cycle late, from pm, the registered 2×2 maximum of
        # res and pbuf (res may by then hold the next block's first step, pm does not): its
        # three comparisons side by side, so that the hand-off only selects registers.
        pm = [[Signal(act8, name=f"pm_{r}_{q}") for q in range(H)] for r in range(R)]
        m.d.sync += [pm[r][q].eq(_smax3(res[r][2 * q], res[r][2 * q + 1], pbuf[r][q]))
                     for r in range(R) for q in range(H)]
        late = Signal()
        m.d.sync += late.eq(done & pool & ~done_geo.pair)
        # The hand-off's strobes are registers, worked out a cycle ahead, one copy per row of
        # the buffers (each row's R·C/R bytes get their own). done_geo holds through late (the
        # next block's last step comes u_n ≥ 2 cycles after done). A CHW block of fewer
        # channels than R leaves the rows past them in res as they were; the writer does not
        # read them.
        # take_pair = done & done_geo.pair: res's horizontal maxima → pbuf
        take_pair = copies(m, se.valid & se.last & d_geo.pair, R, "take_pair")
        # take_res = done & ~pool: res → wbuf, the writer starts
        take_res = copies(m, se.valid & se.last & ~pool, R, "take_res")
        # late_hold = late & done_geo.hold: pm → hold
        late_hold = copies(m, done & pool & ~done_geo.pair & done_geo.hold, R, "late_hold")
        # late_write = late & ~done_geo.hold: pm (and hold) → wbuf, the writer starts
        late_write = copies(m, done & pool & ~done_geo.pair & ~done_geo.hold, R, "late_write")
        late_odd = copies(m, done_geo.odd, R, "late_odd")

        wbusy = Signal()

        # Writer registers.
        w_hwc = Signal()
        # The step u within a column and the column j select among all R·C bytes of wbuf: each
        # lane c's bytes get copies of them, w_uc[c] and w_jc[c], which count each from its own
        # value, so Yosys cannot merge them (hw/fanout.py). w_ul and w_jl count the steps and
        # columns still to come down to 0, so that the writer's control tests them for zero.
        w_uc = [Signal(range(max(U, 2)), name=f"w_u_c{c}") for c in range(C)]
        w_jc = [Signal(range(C), name=f"w_j_c{c}") for c in range(C)]
        w_ul = Signal(range(U))             # steps of this column after this one
        w_jl = Signal(range(C))             # columns after this one
        w_a = Signal(aw)                    # logical address of lane 0
        w_jbase = Signal(aw)
        w_co = Signal(cow)                  # channel (CHW) or channel group k (HWC) of lane 0
        w_k0 = Signal(cow)
        w_mask = Signal(C)                  # done_geo.mask of the block being written

        def steps_after_first(is_hwc):
            """w_ul at a column's first step: an HWC column has KB/OW steps, a CHW one u_n."""
            return Mux(is_hwc, KB // OW - 1, u_last)

        # ---- writer ---------------------------------------------------------------------------
        with m.If(wbusy):
            with m.If(w_ul == 0):
                m.d.sync += [w_ul.eq(steps_after_first(w_hwc)), *(x.eq(0) for x in w_uc)]
                with m.If(w_jl == 0):
                    m.d.sync += wbusy.eq(0)      # a hand-off below may restart it
                with m.Else():
                    m.d.sync += [w_jl.eq(w_jl - 1), *(x.eq(x + 1) for x in w_jc),
                                 w_a.eq(w_jbase + desc.out_q),
                                 w_jbase.eq(w_jbase + desc.out_q), w_co.eq(w_k0)]
            with m.Else():
                m.d.sync += [w_ul.eq(w_ul - 1), *(x.eq(x + 1) for x in w_uc), w_co.eq(w_co + OW),
                             w_a.eq(w_a + Mux(w_hwc, OW, desc.out_s * OW))]

        for r in range(R):
            with m.If(take_pair[r]):
                m.d.sync += [pbuf[r][q].eq(_smax(res[r][2 * q], res[r][2 * q + 1]))
                             for q in range(H)]
            with m.If(late_hold[r]):
                m.d.sync += [hold[r][q].eq(pm[r][q]) for q in range(H)]
            with m.If(take_res[r]):
                m.d.sync += [wbuf[r][j].eq(res[r][j]) for j in range(C)]
            with m.If(late_write[r]):
                for j in range(C):
                    with m.If(late_odd[r]):
                        m.d.sync += wbuf[r][j].eq(hold[r][j] if j < H else pm[r][j - H])
                    with m.Else():
                        m.d.sync += wbuf[r][j].eq(pm[r][j] if j < H else 0)
        with m.If(take_res[0] | late_write[0]):
            m.d.sync += [wbusy.eq(1), w_hwc.eq(hwc), *(x.eq(0) for x in w_uc + w_jc),
                         w_ul.eq(steps_after_first(hwc)), w_jl.eq(done_geo.J - 1),
                         w_a.eq(done_geo.a0), w_jbase.eq(done_geo.a0),
                         w_co.eq(done_geo.co), w_k0.eq(done_geo.co),
                         w_mask.eq(done_geo.mask)]

        # Lanes, in three register stages: V selects the words and masks their invalid lanes, S
        # holds which bytes are within ε, the wr registers get their flags.
        eps = self.epsilon
        nflag = []
        v_en = Signal(OW)
        s_en = Signal(OW)
        for w in range(OW):
            lane = self.wr[w]
            co = w_co + w
            a = Signal(aw, name=f"wa_{w}")
            m.d.comb += a.eq(w_a + Mux(w_hwc, w, desc.out_s * w))
            bank = Mux(w_hwc, a, a + co)[:lnb] if lnb else Const(0, 0)
            index = Cat(bank, a[lnb:]) if lnb else a
            # data: CHW wbuf[u·OW + w][c]; HWC wbuf[(u·OW + w)·C + c][j]
            vals = []
            valid = []
            for c in range(C):
                chw_v = Array(wbuf[u * OW + w][c] for u in range(U))[w_uc[c]]
                hwc_v = Array(Array(wbuf[(u * OW + w) * C + c][j] for j in range(C))
                              for u in range(KB // OW))[w_uc[c]][w_jc[c]]
                vals.append(Mux(w_hwc, hwc_v, chw_v))
                valid.append(Mux(w_hwc, co * C + c < desc.out_c, w_mask[c]))
            # w_mask[0]: the word has a pixel at all (a pooled tail block may have none).
            wvalid = Mux(w_hwc, co < desc.out_q, co < desc.out_c) & w_mask[0]
            v_index = Signal.like(lane.index, name=f"v_index_{w}")
            v_data = [Signal(act8, name=f"v_data_{w}_{c}") for c in range(C)]
            m.d.sync += [v_en[w].eq(wbusy & wvalid), v_index.eq(index)]
            m.d.sync += [v_data[c].eq(Mux(valid[c], vals[c], 0)) for c in range(C)]
            s_index = Signal.like(lane.index, name=f"s_index_{w}")
            s_data = [Signal(act8, name=f"s_data_{w}_{c}") for c in range(C)]
            s_small = Signal(C, name=f"s_small_{w}")
            m.d.sync += [s_en[w].eq(v_en[w]), s_index.eq(v_index),
                         s_small.eq(Cat(*[within(x, eps) for x in v_data]))]
            m.d.sync += [s_data[c].eq(v_data[c]) for c in range(C)]
            flag = Signal(name=f"flag_{w}")
            m.d.comb += flag.eq(s_small.all() & ~desc.last)
            m.d.sync += [lane.en.eq(s_en[w]), lane.index.eq(s_index),
                         lane.flag.eq(flag & s_en[w])]
            for c in range(C):
                m.d.sync += lane.data[c].eq(Mux(flag, 0, s_data[c]))
            nflag.append(flag & s_en[w])
        m.d.sync += self.flagged.eq(sum(nflag))

        in_flight = Cat(st.valid for st in (s0, s1, s2, sa, sb, sc, sc2, sd, se))
        m.d.comb += self.idle.eq(~i.valid & ~in_flight.any() & ~done & ~late & ~wbusy
                                 & ~v_en.any() & ~s_en.any())
        return m
