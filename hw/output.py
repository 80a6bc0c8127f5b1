"""The output stage: bias, requantization, ReLU, saturation, 2×2 max-pool, flags and the
activation writes of one block (docs/ARCHITECTURE.md, "Pipeline"; numerics in sw/numerics.py,
addresses in sw/layout.py).

Ports
-----
``i``
    Block stream from the PE array. The block's accumulators are read straight from
    ``i.payload`` over ``R/OW`` cycles; the block is accepted (``i.ready``) in its last
    requantization step. ``i.ready`` depends on ``i.valid``, ``i.payload.tag``, ``desc`` and
    registers only (never on anything downstream).
``desc``, ``epsilon``
    The current layer's descriptor and ε; they must stay constant while ``idle`` is low.
``start``
    High for a cycle when a layer starts (with its ``desc``, before its first block): the
    parameter port's history is forgotten (it may have served someone else meanwhile) and the
    parameters of ``cog`` 0 are fetched, so a layer's timing never depends on what ran before.
``param_addr`` (out), ``param_data`` (in, ``R·53`` bits, :func:`hw.tags.param_layout`)
    A read port of the output-parameter memory with one cycle of latency: ``param_data`` in
    cycle ``t`` must be the word at the ``param_addr`` of cycle ``t−1`` (a synchronous read
    port, enabled always since the last ``start``). ``param_addr = desc.pbase + cog``, the
    ``cog`` of the block on ``i`` or, while there is none, of the layer's previous block (0
    before its first). A block waits one cycle for its parameters only when its ``cog``
    differs from the previous block's.
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
Requantization handles ``OW`` channels × ``C`` columns per cycle (``OW·C`` multipliers of
32 × 16 bits), ``R/OW`` cycles per block; the writer runs concurrently on the previous block:
``R/OW`` cycles (CHW, HWC conv), ``R/(2·OW)`` (HWC pooled), ``R/(C·OW)`` (fc) or none (the first
block of a pool pair, an even ``xg`` of a pooled CHW row). A block whose last step is in cycle
``t`` has its first write on ``wr`` in cycle ``t+7``.

Restrictions (checked): ``cols ≥ 2`` (pooling halves a word), ``OW`` divides ``R/C`` (the ``OW``
words written per cycle in HWC are consecutive channel groups of one pixel).
"""

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from sw.config import ConfigError

from .tags import block_layout, block_tag, descriptor_layout, index_width, param_layout

__all__ = ["OutputStage", "write_lane_signature"]


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


class OutputStage(wiring.Component):
    def __init__(self, config):
        R, C, OW = config.rows, config.cols, config.out_words
        if C < 2:
            raise ConfigError("OutputStage needs Config.cols >= 2 (pooling halves a word)")
        if R % C or (R // C) % OW:
            raise ConfigError(f"OutputStage needs out_words ({OW}) to divide rows/cols "
                              f"({R}/{C})")
        self.config = config
        super().__init__({
            "i": In(stream.Signature(block_layout(config))),
            "desc": In(descriptor_layout(config)),
            "epsilon": In(8),
            "start": In(1),
            "param_addr": Out(config.param_words.bit_length()),
            "param_data": In(param_layout(config)),
            "wr": Out(write_lane_signature(config)).array(OW),
            "flagged": Out(range(OW + 1)),
            "idle": Out(1),
        })

    def elaborate(self, platform):
        cfg = self.config
        R, C, OW, NB = cfg.rows, cfg.cols, cfg.out_words, cfg.act_banks
        U = R // OW            # requantization steps per block
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

        # ---- parameters: param_data belongs to last cycle's param_addr ----------------------
        paddr_q = Signal.like(self.param_addr)
        paddr_ok = Signal()
        cog_q = Signal.like(i.payload.tag.cog)      # the layer's previous block's cog
        m.d.comb += self.param_addr.eq(desc.pbase + Mux(i.valid, i.payload.tag.cog, cog_q))
        m.d.sync += [paddr_q.eq(self.param_addr), paddr_ok.eq(1)]
        with m.If(i.valid):
            m.d.sync += cog_q.eq(i.payload.tag.cog)
        with m.If(self.start):
            m.d.sync += [cog_q.eq(0), paddr_ok.eq(0)]
        params_ready = Signal()
        m.d.comb += params_ready.eq(paddr_ok & (paddr_q == self.param_addr))

        # ---- requantization pipeline --------------------------------------------------------
        step = Signal(range(U))
        done = Signal()                  # res holds a complete block (geometry in done_geo)
        adv = Signal()                   # the pipeline advances this cycle
        go = Signal()                    # stage A takes a step of the block on i
        m.d.comb += [
            go.eq(i.valid & params_ready & adv),
            i.ready.eq(go & (step == U - 1)),
        ]

        # Stage A: select accumulators (+ fc column sum) and add the bias.
        sa = Signal(stage)
        a_x = [[Signal(signed(32), name=f"a_x_{w}_{j}") for j in range(C)] for w in range(OW)]
        a_m = [Signal(16, name=f"a_m_{w}") for w in range(OW)]
        a_s = [Signal(5, name=f"a_s_{w}") for w in range(OW)]
        accs = i.payload.acc
        pd = self.param_data
        with m.If(adv):
            m.d.sync += [sa.valid.eq(go), sa.last.eq(step == U - 1), sa.step.eq(step),
                         sa.tag.eq(i.payload.tag)]
            with m.If(go):
                m.d.sync += step.eq(Mux(step == U - 1, 0, step + 1))
            for w in range(OW):
                bias = Array(pd[r].bias for r in range(w, R, OW))[step]
                mult = Array(pd[r].mult for r in range(w, R, OW))[step]
                shift = Array(pd[r].shift for r in range(w, R, OW))[step]
                for j in range(C):
                    x = Array(accs[r * C + j] for r in range(w, R, OW))[step]
                    if j == 0:
                        fsum = Array(sum(accs[r * C + jj] for jj in range(C))[:32].as_signed()
                                     for r in range(w, R, OW))[step]
                        x = Mux(desc.kind == 1, fsum, x)
                    m.d.sync += a_x[w][j].eq((x + bias)[:32].as_signed())
                m.d.sync += [a_m[w].eq(mult), a_s[w].eq(shift)]

        # Stage B: multiply.
        sb = Signal(stage)
        b_p = [[Signal(signed(49), name=f"b_p_{w}_{j}") for j in range(C)] for w in range(OW)]
        b_s = [Signal(5, name=f"b_s_{w}") for w in range(OW)]
        with m.If(adv):
            m.d.sync += sb.eq(sa)
            for w in range(OW):
                m.d.sync += b_s[w].eq(a_s[w])
                for j in range(C):
                    m.d.sync += b_p[w][j].eq(a_x[w][j] * a_m[w])

        # The geometry of a block's words is worked out from its tag in stages C and D, so that
        # the hand-off below only copies registers (done_geo).
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

        # Stage C: add the rounding constant; products of the block's geometry.
        sc = Signal(stage)
        c_t = [[Signal(signed(50), name=f"c_t_{w}_{j}") for j in range(C)] for w in range(OW)]
        c_s = [Signal(5, name=f"c_s_{w}") for w in range(OW)]
        c_rowp = Signal(aw)             # CHW: row · out_p
        c_cogs = Signal(aw)             # CHW: cog · R · out_s
        c_pix = Signal(aw)              # HWC: pixel index of the first column
        c_ncols = Signal(signed(len(desc.out_w) + len(sb.tag.xg) + C.bit_length() + 2))
        row = Mux(pool, sb.tag.y >> 1, sb.tag.y)
        col0 = Mux(pool, sb.tag.xg * H, sb.tag.xg * C)
        with m.If(adv):
            m.d.sync += [sc.eq(sb),
                         c_rowp.eq(row * desc.out_p), c_cogs.eq(sb.tag.cog * R * desc.out_s),
                         c_pix.eq(row * desc.out_w + col0),
                         c_ncols.eq(Mux(pool, desc.out_w, desc.conv_w) - col0)]
            for w in range(OW):
                rnd = (Const(1, 33) << b_s[w])[1:33]
                m.d.sync += c_s[w].eq(b_s[w])
                for j in range(C):
                    m.d.sync += c_t[w][j].eq(b_p[w][j] + rnd)

        # Stage D: shift, ReLU, saturate into the result buffer; the block's geometry.
        res = [[Signal(act8, name=f"res_{r}_{j}") for j in range(C)] for r in range(R)]
        done_geo = Signal(geo)
        ct = sc.tag
        xw = Mux(pool, ct.xg >> 1, ct.xg)
        cc = Mux(pool, H, C)
        with m.If(adv & sc.valid & sc.last):
            m.d.sync += [done.eq(1),
                         done_geo.pair.eq(pool & ~ct.y[0]),
                         done_geo.hold.eq(pool & ct.y[0] & ~hwc & ~ct.xg[0]
                                          & (ct.xg != desc.xgs - 1)),
                         done_geo.odd.eq(~hwc & ct.xg[0])]
            with m.If(~hwc):
                m.d.sync += [done_geo.a0.eq(c_cogs + c_rowp + xw), done_geo.co.eq(ct.cog * R),
                             done_geo.J.eq(1)]
                for jj in range(C):
                    m.d.sync += done_geo.mask[jj].eq(xw * C + jj < Mux(pool, desc.out_w,
                                                                         desc.conv_w))
            with m.Else():
                m.d.sync += [done_geo.a0.eq(c_pix * desc.out_q + ct.cog * KB),
                             done_geo.co.eq(ct.cog * KB),
                             done_geo.mask.eq(Mux(c_ncols > 0, -1, 0))]
                with m.If(c_ncols >= cc):
                    m.d.sync += done_geo.J.eq(cc)
                with m.Elif(c_ncols <= 0):
                    m.d.sync += done_geo.J.eq(1)    # no pixel: mask = 0 disables the words
                with m.Else():
                    m.d.sync += done_geo.J.eq(c_ncols)
        with m.If(adv & sc.valid):
            for w in range(OW):
                for j in range(C):
                    y = Signal(signed(50), name=f"y_{w}_{j}")
                    m.d.comb += y.eq(c_t[w][j] >> c_s[w])
                    ys = Signal(act8, name=f"ys_{w}_{j}")
                    with m.If(desc.relu & (y < 0)):
                        m.d.comb += ys.eq(0)
                    with m.Elif(y > 127):
                        m.d.comb += ys.eq(127)
                    with m.Elif(y < -128):
                        m.d.comb += ys.eq(-128)
                    with m.Else():
                        m.d.comb += ys.eq(y[:8])
                    for u in range(U):
                        with m.If(sc.step == u):
                            m.d.sync += res[u * OW + w][j].eq(ys)

        # ---- hand-off: res → pool buffer / hold buffer / writer ------------------------------
        pbuf = [[Signal(act8, name=f"pbuf_{r}_{j}") for j in range(C)] for r in range(R)]
        hold = [[Signal(act8, name=f"hold_{r}_{q}") for q in range(H)] for r in range(R)]
        wbuf = [[Signal(act8, name=f"wbuf_{r}_{j}") for j in range(C)] for r in range(R)]
        pm = [[_smax(_smax(res[r][2 * q], pbuf[r][2 * q]),
                     _smax(res[r][2 * q + 1], pbuf[r][2 * q + 1])) for q in range(H)]
              for r in range(R)]

        need_writer = Signal()
        m.d.comb += need_writer.eq(done & ~done_geo.pair & ~done_geo.hold)

        wbusy = Signal()
        wlast = Signal()
        m.d.comb += adv.eq(~(need_writer & wbusy & ~wlast))

        # Writer registers.
        w_hwc = Signal()
        w_u = Signal(range(max(U, 2)))
        w_U = Signal(range(U + 1))          # steps per column
        w_j = Signal(range(C))
        w_J = Signal(range(C + 1))          # columns (HWC) or 1 (CHW)
        w_a = Signal(aw)                    # logical address of lane 0
        w_jbase = Signal(aw)
        w_co = Signal(cow)                  # channel (CHW) or channel group k (HWC) of lane 0
        w_k0 = Signal(cow)
        w_mask = Signal(C)                  # done_geo.mask of the block being written

        # ---- writer ---------------------------------------------------------------------------
        m.d.comb += wlast.eq(wbusy & (w_u == w_U - 1) & (w_j == w_J - 1))
        with m.If(wbusy):
            with m.If(w_u == w_U - 1):
                m.d.sync += w_u.eq(0)
                with m.If(w_j == w_J - 1):
                    m.d.sync += wbusy.eq(0)      # a hand-off below may restart it
                with m.Else():
                    m.d.sync += [w_j.eq(w_j + 1), w_a.eq(w_jbase + desc.out_q),
                                 w_jbase.eq(w_jbase + desc.out_q), w_co.eq(w_k0)]
            with m.Else():
                m.d.sync += [w_u.eq(w_u + 1), w_co.eq(w_co + OW),
                             w_a.eq(w_a + Mux(w_hwc, OW, desc.out_s * OW))]

        with m.If(done & adv):
            # Stage D may complete the next block in this very cycle (R/OW = 1).
            m.d.sync += done.eq(sc.valid & sc.last)
            with m.If(done_geo.pair):
                for r in range(R):
                    for j in range(C):
                        m.d.sync += pbuf[r][j].eq(res[r][j])
            with m.Elif(done_geo.hold):
                for r in range(R):
                    for q in range(H):
                        m.d.sync += hold[r][q].eq(pm[r][q])
            with m.Else():
                for r in range(R):
                    for j in range(C):
                        with m.If(~pool):
                            m.d.sync += wbuf[r][j].eq(res[r][j])
                        with m.Elif(done_geo.odd):
                            m.d.sync += wbuf[r][j].eq(hold[r][j] if j < H else pm[r][j - H])
                        with m.Else():
                            m.d.sync += wbuf[r][j].eq(pm[r][j] if j < H else 0)
                m.d.sync += [wbusy.eq(1), w_hwc.eq(hwc), w_u.eq(0), w_j.eq(0),
                             w_U.eq(Mux(hwc, KB // OW, U)), w_J.eq(done_geo.J),
                             w_a.eq(done_geo.a0), w_jbase.eq(done_geo.a0),
                             w_co.eq(done_geo.co), w_k0.eq(done_geo.co),
                             w_mask.eq(done_geo.mask)]

        # Lanes, in two register stages: V selects the words and masks their invalid lanes, the
        # wr registers get their flags.
        eps = self.epsilon
        nflag = []
        v_en = Signal(OW)
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
                chw_v = Array(wbuf[u * OW + w][c] for u in range(U))[w_u]
                hwc_v = Array(Array(wbuf[(u * OW + w) * C + c][j] for j in range(C))
                              for u in range(KB // OW))[w_u][w_j]
                vals.append(Mux(w_hwc, hwc_v, chw_v))
                valid.append(Mux(w_hwc, co * C + c < desc.out_c, w_mask[c]))
            # w_mask[0]: the word has a pixel at all (a pooled tail block may have none).
            wvalid = Mux(w_hwc, co < desc.out_q, co < desc.out_c) & w_mask[0]
            v_index = Signal.like(lane.index, name=f"v_index_{w}")
            v_data = [Signal(act8, name=f"v_data_{w}_{c}") for c in range(C)]
            m.d.sync += [v_en[w].eq(wbusy & wvalid), v_index.eq(index)]
            m.d.sync += [v_data[c].eq(Mux(valid[c], vals[c], 0)) for c in range(C)]
            small = Cat(*[Mux(x < 0, -x, x) <= eps for x in v_data])
            flag = Signal(name=f"flag_{w}")
            m.d.comb += flag.eq(small.all() & ~desc.last)
            m.d.sync += [lane.en.eq(v_en[w]), lane.index.eq(v_index),
                         lane.flag.eq(flag & v_en[w])]
            for c in range(C):
                m.d.sync += lane.data[c].eq(Mux(flag, 0, v_data[c]))
            nflag.append(flag & v_en[w])
        m.d.sync += self.flagged.eq(sum(nflag))

        m.d.comb += self.idle.eq(~i.valid & ~sa.valid & ~sb.valid & ~sc.valid
                                  & ~done & ~wbusy & ~v_en.any())
        return m
