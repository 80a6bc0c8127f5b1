"""A compact output stage for small FPGAs: the ports, results and writes of
:class:`hw.output.OutputStage` (bias, requantization, ReLU, saturation, 2×2 max-pool, flags and
the activation writes; numerics in sw/numerics.py, addresses in sw/layout.py), one value at a
time and without a DSP block (``Config.output = "compact"``).

A block is handled in two phases, one after the other:

* **requantize**: each of the block's values (conv: ``R × C``, only the rows with a channel;
  fc: ``R`` column sums) in turn: ``x = acc + bias`` is registered (fc: the row's ``C``
  accumulators added one a cycle), the product ``x·m`` is built two bits of ``m`` a cycle
  (shift-and-add in logic, each digit's multiple of ``x`` registered before it is added), then
  shifted, rounded, rectified and saturated into the result buffer ``res``: 10 cycles a value
  (fc: ``9 + C``), and 2 more for the block's first parameters. While a value's product is
  built, the next value's parameters are read and the previous value is rounded and
  saturated. The accumulators are read in their order, each from ``acc[0]`` while the PE array
  rotates the block one place a read (``i_step``, :class:`hw.pe_array.PEArray`'s ``o_step``):
  no multiplexer selects among them. The block is accepted (``i.ready``, a register) as its
  last value is read.
* **write**: the rows of ``res`` (and, pooled, of the first block's horizontal maxima ``pbuf``
  and of the left halves of pooled words ``hold``), kept in two small memories (block RAMs on
  the iCE40), are read one row a cycle, a turn, and the words are formed from the row read:
  CHW, a word a turn; HWC and fc, a word of ``C`` rows' values of one pixel, one lane a turn,
  in a pass of ``R`` turns per pixel; on lane ``wr[0]`` (the other lanes stay idle). A pooled
  block that writes nothing takes its pair maxima into ``pbuf``, or its 2×2 maxima into
  ``hold``, in a pass of its own. The word addresses are kept incrementally from a base worked
  out while the block is requantized.

So a block takes about ``10·values + R`` cycles (HWC: ``+ R·pixels``), where
:class:`~hw.output.OutputStage` takes ``u_n``; the PE array's credit rule makes the loader wait
for it.
"""

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import Out

from sw.layout import KIND_FC, param_steps

from .arith import lut_mul, within
from .output import _clog2, _smax, _smax3, output_members
from .tags import index_width

__all__ = ["CompactOutput"]

#: Yosys maps a memory with this attribute to block RAM, however small.
BLOCK_RAM = {"ram_style": "block"}


class CompactOutput(wiring.Component):
    """One value at a time; the ports of :class:`hw.output.OutputStage`."""

    #: Bits of the multiplier ``m`` taken per cycle: one adder of the multiplicand's width to
    #: form the digit's multiple. On up5k the core then takes 5,157 of the chip's 5,280 logic
    #: cells (fc9b578); one bit a cycle took 72 fewer at e9e3095, for 8 cycles a value more.
    DIGIT = 2

    @classmethod
    def block_cycles(cls, config):
        """Cycles a block takes at most, from its first cycle on ``i`` to the cycle after its
        last write: 2 for the first value's parameters, per value 1 (x) + the product's digits
        + 1, the last value's three post stages, then up to ``C`` passes of ``R`` turns (one for
        each HWC pixel) and the cycle to take the next block."""
        return (2 + config.rows * config.cols * (2 + cls._digits(config)) + 3
                + config.rows * config.cols + 2)

    @classmethod
    def _digits(cls, config):
        """Cycles of a product: the multiplier's bits, ``DIGIT`` a cycle."""
        return -(-config.mult_bits // cls.DIGIT)

    def __init__(self, config):
        self.config = config
        super().__init__({**output_members(config), "i_step": Out(1)})

    def elaborate(self, platform):
        cfg = self.config
        R, C, OW, NB = cfg.rows, cfg.cols, cfg.out_words, cfg.act_banks
        H = C // 2
        KB = R // C                     # channel groups (HWC words per pixel) per block
        lnb = _clog2(NB)
        S = param_steps(cfg)
        D = self.DIGIT
        DIGITS = self._digits(cfg)
        m = Module()
        desc, i = self.desc, self.i
        tag = i.payload.tag
        fc = desc.kind == KIND_FC
        act8 = signed(8)

        # -- requantize -----------------------------------------------------------------------
        # The value being requantized: row r, column j (fc: j = 0, the column sum); its phase.
        phase = Signal(range(4))            # 0, 1: parameters read; 2: x loaded; 3: ×m
        r = Signal(range(R))
        j = Signal(range(C))
        busy = Signal()                     # a block is being requantized
        turning = Signal()                  # the rows turn: a block is being written (below)
        ready = Signal()
        m.d.comb += i.ready.eq(ready)
        # The block's tag, from its first cycle on i (the next block may be on i before this
        # one's last value is done).
        b_cog, b_y, b_xg = (Signal.like(tag.cog), Signal.like(tag.y), Signal.like(tag.xg))
        # Rows with a channel: CHW layers of fewer channels than R skip the rest.
        # (The last one, registered: it is first needed cycles after the block's tag is taken.)
        last_r = Signal(range(R))
        m.d.sync += last_r.eq(Mux(desc.out_hwc | fc, R,
                                  Mux(desc.out_c - lut_mul(b_cog, R) < R,
                                      desc.out_c - lut_mul(b_cog, R), R)) - 1)
        last_j = Mux(fc, 1, j == C - 1)
        last_value = (r == last_r) & last_j
        start = Signal()
        pending = Signal()                  # a block's values are being requantized
        m.d.comb += start.eq(i.valid & ~pending & ~turning & ~ready)

        # Parameters of row r: word (pbase + cog)·S + r // OW, lane r % OW.
        pw = _clog2(cfg.param_words)
        step = r // OW if OW & (OW - 1) else r >> _clog2(OW)
        lane_w = r % OW if OW & (OW - 1) else (r[:_clog2(OW)] if OW > 1 else Const(0))
        step_f = Signal(max(1, _clog2(S)))
        m.d.comb += step_f.eq(step)
        m.d.comb += self.param_addr_next.eq(
            Cat(step_f, (desc.pbase + b_cog)[:pw]) if S > 1 else (desc.pbase + b_cog)[:pw])
        m.d.sync += self.param_addr.eq(self.param_addr_next)
        lanes = Array(self.param_data[w] for w in range(OW))
        par = lanes[lane_w]

        # The values are taken in the order of the block's accumulators, r·C + j, each from
        # acc[0] as the PE array rotates them (i_step; hw/pe_array.py).
        head = i.payload.acc[0]

        x = Signal(signed(cfg.acc_bits))
        mult = Signal(DIGITS * D)          # its digits still to take, the next one on top
        shift = Signal(5)
        prod = Signal(signed(cfg.acc_bits + len(par.mult) + 1))
        # the product's digits, most significant first: mult shifts up a digit a cycle
        digit = Signal(D)
        dn = Signal(range(DIGITS + 1))
        m.d.comb += digit.eq(mult[-D:])
        # digit·x, registered: prod takes it a cycle later (so its adder has one operand
        # besides itself), and the digits take DIGITS + 1 cycles.
        dx = Signal(signed(cfg.acc_bits + D))
        # The value whose product is being built: its row, column and whether it is the block's
        # last (r and j move on to the next value's as its product begins, so that the next
        # value's parameters are read meanwhile).
        cur_r, cur_j, cur_last = Signal.like(r), Signal.like(j), Signal()

        # Post-processing of a finished product: shift, round, saturate (three stages).
        p_valid = Signal(3)
        p_r = [Signal(range(R), name=f"p_r{n}") for n in range(3)]
        p_j = [Signal(range(C), name=f"p_j{n}") for n in range(3)]
        p_s = Signal(5)
        q_lo = Signal(signed(10))           # q = floor(prod / 2^(s−1)): its low bits,
        q_big = Signal()                    # whether it does not fit them,
        q_neg = Signal()                    # and its sign
        yv = Signal(signed(10))
        sat = Signal(act8)
        # The block's results, a row of C values per word of a small memory (a block RAM):
        # written a value at a time, read a row a turn (below).
        m.submodules.res = res_mem = Memory(shape=8 * C, depth=R, init=[], attrs=BLOCK_RAM)
        res_w, res_r = res_mem.write_port(granularity=8), res_mem.read_port()

        m.d.sync += [ready.eq(self.i_ready_next), p_valid.eq(p_valid << 1)]
        with m.If(start):
            m.d.sync += [busy.eq(1), phase.eq(0), r.eq(0), j.eq(0)]
        with m.If(busy):
            with m.Switch(phase):
                with m.Case(0):             # the block's first row's parameter address is
                    m.d.sync += phase.eq(1)     # registered,
                with m.Case(1):             # read,
                    m.d.sync += phase.eq(2)
                with m.Case(2):             # and here: x = acc + bias (fc: + the row's C
                    m.d.comb += self.i_step.eq(1)   # columns, one a cycle, j counting them)
                    m.d.sync += x.eq((Mux(fc & (j != 0), x, par.bias) + head)[:cfg.acc_bits])
                    with m.If(fc & (j != C - 1)):
                        m.d.sync += j.eq(j + 1)
                    with m.Else():
                        m.d.sync += [mult.eq(par.mult), shift.eq(par.shift), prod.eq(0),
                                     dx.eq(0), dn.eq(DIGITS), phase.eq(3),
                                     cur_r.eq(r), cur_j.eq(Mux(fc, 0, j)),
                                     cur_last.eq(last_value)]
                        with m.If(last_value):
                            m.d.comb += self.i_ready_next.eq(1)
                        with m.Elif(last_j):
                            m.d.sync += [j.eq(0), r.eq(r + 1)]
                        with m.Else():
                            m.d.sync += j.eq(j + 1)
                with m.Default():           # prod = prod·2^D + the last digit·x
                    m.d.sync += [prod.eq((prod << D) + dx), dn.eq(dn - 1),
                                 mult.eq(mult << D),
                                 dx.eq(sum(Mux(digit[b], x << b, 0) for b in range(D)))]
                    with m.If(dn == 0):
                        m.d.sync += [p_valid[0].eq(1), p_r[0].eq(cur_r), p_j[0].eq(cur_j),
                                     p_s.eq(shift), phase.eq(2)]
                        with m.If(cur_last):
                            m.d.sync += busy.eq(0)
        # prod is complete in the cycle after dn reached 0: stage 0 shifts it.
        # Rounding half up, (prod + 2^(s−1)) >> s, is (q + 1) >> 1 with q = floor(prod / 2^(s−1))
        # = (2·prod) >> s (s = 0 too): one shift, then an increment of q's 10 low bits (a q
        # beyond them saturates: it stands in as -256 or 255).
        q = Cat(Const(0, 1), prod).as_signed() >> p_s
        m.d.sync += [q_lo.eq(q[:10]), q_big.eq(q[9:].any() & ~q[9:].all()), q_neg.eq(q[-1]),
                     p_r[1].eq(p_r[0]), p_j[1].eq(p_j[0]),
                     yv.eq(Mux(q_big, Mux(q_neg, -256, 255), (q_lo + 1) >> 1)),
                     p_r[2].eq(p_r[1]), p_j[2].eq(p_j[1])]
        neg, high = yv[-1], yv[7:]
        m.d.comb += sat.eq(Mux(desc.relu & neg, 0,
                               Mux(~neg & high.any(), 127,
                                   Mux(neg & ~high.all(), -128, yv[:8]))))
        m.d.comb += [res_w.addr.eq(p_r[2]), res_w.data.eq(Cat(*[sat] * C)),
                     res_w.en.eq(Mux(p_valid[2], 1 << p_j[2], 0))]
        requant_done = Signal()             # the last value of the block reached res
        with m.If(start):
            m.d.sync += pending.eq(1)
        base_ready = Signal()               # the block's first word's address is known
        m.d.comb += requant_done.eq(pending & ~busy & ~p_valid.any() & base_ready)

        # -- write ----------------------------------------------------------------------------
        pool, hwc = desc.pool, desc.out_hwc
        with m.If(start):
            m.d.sync += [b_cog.eq(tag.cog), b_y.eq(tag.y), b_xg.eq(tag.xg)]
        # pbuf and hold, a row of each in a word of another small memory.
        m.submodules.pooled = ph_mem = Memory(shape=16 * H, depth=R, init=[], attrs=BLOCK_RAM)
        ph_w, ph_r = ph_mem.write_port(granularity=8 * H), ph_mem.read_port()
        # A pass reads the rows of res, pbuf and hold one a cycle, row tr in turn tr (read a
        # cycle ahead), and writes the row's new pbuf or hold back in its place; all that a
        # word or the pooling needs is taken from that row ("row 0" below: the memories' read
        # data), and a pass leaves the rows where they were.
        res0 = [res_r.data[8 * c:8 * c + 8].as_signed() for c in range(C)]
        pbuf0 = [ph_r.data[8 * q:8 * q + 8].as_signed() for q in range(H)]
        hold0 = [ph_r.data[8 * (H + q):8 * (H + q) + 8].as_signed() for q in range(H)]
        pm = [_smax3(res0[2 * q], res0[2 * q + 1], pbuf0[q]) for q in range(H)]
        first_of_pair = pool & ~b_y[0]
        xw = Mux(pool, b_xg >> 1, b_xg)
        to_hold = pool & ~hwc & ~fc & ~b_xg[0] & (b_xg != desc.xgs - 1)
        # A pass turns the rows once around (tr: its turns). A write pass writes a word a turn
        # (CHW: row 0's) or, HWC and fc, collects a word of C rows' values of one pixel (wr_p),
        # a lane a turn, and writes it with its last lane: a pass per pixel of the block. A
        # pooling pass writes nothing: it takes row 0's pair maxima into pbuf, or its 2×2
        # maxima into hold, as the rows go round.
        t_write, t_pbuf, t_hold = Signal(), Signal(), Signal()
        tr = Signal(range(R))
        wr_p = Signal(range(C))
        lgC = _clog2(C)
        lane_i = tr[:lgC] if lgC else Const(0, 1)     # HWC: the lane of row 0's value
        wr_k = tr[lgC:]                                 # HWC: the word's channel group
        # Addresses: CHW: a = (cog·R + r)·out_s + row·out_p + xw, channel cog·R + r;
        # HWC: a = (row·out_w + x)·out_q + cog·KB + k. Bases worked out while requantizing.
        aw = max(index_width(cfg), len(desc.out_s)) + 8
        row = Mux(pool, b_y >> 1, b_y)
        base = Signal(aw)
        wa = Signal(aw)                     # the word's logical address
        wch = Signal(len(desc.out_c) + R.bit_length() + 1)   # CHW: the word's channel
        x0 = Mux(pool, lut_mul(b_xg, H), lut_mul(b_xg, C))     # the block's first pixel
        k0 = lut_mul(b_cog, KB)                                  # its first channel group
        # The base takes two products of a register and a descriptor field, built from the
        # cycle after the block's start, one bit of the field a cycle (shift-and-add, lowest
        # bit first, a product ending with the field's last set bit): CHW: xw + (cog·R)·out_s
        # + row·out_p; HWC: k0 + t·out_q with t = x0 + row·out_w; fc: k0. The block's writes
        # wait for it (only a block of few values and a large layer is ever that quick).
        fields = (desc.out_s, desc.out_p, desc.out_w, desc.out_q)
        ma = Signal(aw)                     # the multiplicand, a place further left a cycle
        mb = Signal(max(len(f) for f in fields))    # the field's bits still to take
        products = Signal(range(3))         # products still to build
        init = Signal()
        m.d.sync += init.eq(start)
        with m.If(init):
            with m.If(fc):
                m.d.sync += [base.eq(k0), products.eq(0)]
            with m.Elif(hwc):
                m.d.sync += [base.eq(x0), ma.eq(row), mb.eq(desc.out_w), products.eq(2)]
            with m.Else():
                m.d.sync += [base.eq(xw), ma.eq(lut_mul(b_cog, R)), mb.eq(desc.out_s),
                             products.eq(2)]
        with m.Elif(mb != 0):
            with m.If(mb[0]):
                m.d.sync += base.eq(base + ma)
            m.d.sync += [ma.eq(ma << 1), mb.eq(mb >> 1)]
        with m.Elif(products == 2):
            m.d.sync += products.eq(1)
            with m.If(hwc):                 # t done: base = k0 + t·out_q
                m.d.sync += [ma.eq(base), base.eq(k0), mb.eq(desc.out_q)]
            with m.Else():
                m.d.sync += [ma.eq(row), mb.eq(desc.out_p)]
        with m.Elif(products == 1):
            m.d.sync += products.eq(0)
        m.d.comb += base_ready.eq(~init & (products == 0))
        with m.If(requant_done):
            m.d.sync += [pending.eq(0), turning.eq(1), tr.eq(0), wr_p.eq(0),
                         t_pbuf.eq(first_of_pair), t_hold.eq(~first_of_pair & to_hold),
                         t_write.eq(~first_of_pair & ~to_hold), wa.eq(base),
                         wch.eq(lut_mul(b_cog, R))]
        next_row = Mux(turning & (tr != R - 1), tr + 1, 0)
        m.d.comb += [res_r.addr.eq(next_row), ph_r.addr.eq(next_row), ph_w.addr.eq(tr),
                     ph_w.data.eq(Cat(*[_smax(res0[2 * q], res0[2 * q + 1]) for q in range(H)],
                                      *pm)),
                     ph_w.en.eq(Cat(turning & t_pbuf, turning & t_hold))]

        # The word's lanes and whether it exists.
        npix = Mux(pool, H, C)
        hw_mode = hwc | fc
        v = Mux(pool, Array(pm)[wr_p[:max(1, _clog2(H))] if H > 1 else 0],
                Array(res0)[wr_p])      # HWC: row 0's value of the pixel (fc: one, wr_p = 0)
        hw_lanes = [Signal(act8, name=f"hw_lane_{c}") for c in range(C - 1)]
        for c in range(C - 1):
            with m.If(turning & (lane_i == c)):
                m.d.sync += hw_lanes[c].eq(v)
        hwc_vals = hw_lanes + [v]
        chw_vals = []
        for c in range(C):
            if c < H:
                pooled = Mux(b_xg[0], hold0[c], pm[c])
            else:
                pooled = Mux(b_xg[0], pm[c - H], 0)
            chw_vals.append(Mux(pool, pooled, res0[c]))
        k_abs = k0 + wr_k
        xw0 = lut_mul(xw, C)                # CHW: the word's first pixel
        vals, valid = [], []
        for c in range(C):
            vals.append(Mux(hw_mode, hwc_vals[c], chw_vals[c]))
            valid.append(Mux(hw_mode, lut_mul(k_abs, C) + c < desc.out_c,
                             xw0 + c < desc.out_w))
        # (a pooled CHW row's last block, of an even xg, may hold no pixel of the output)
        exists = Mux(hw_mode, (k_abs < desc.out_q) & (fc | (x0 + wr_p < desc.out_w)),
                     (wch < desc.out_c) & (xw0 < desc.out_w))
        bank = Mux(hw_mode, wa, wa + wch)[:lnb] if lnb else Const(0, 0)
        index = Cat(bank, wa[lnb:]) if lnb else wa
        # The word is registered (w_*), then flagged and written a cycle later.
        w_en = Signal()
        w_index = Signal.like(index)
        w_data = [Signal(act8, name=f"w_data_{c}") for c in range(C)]
        m.d.sync += [w_en.eq(turning & t_write & (~hw_mode | (lane_i == C - 1)) & exists),
                     w_index.eq(index)]
        m.d.sync += [w_data[c].eq(Mux(valid[c], vals[c], 0)) for c in range(C)]
        small = Cat(*[within(v, self.epsilon) for v in w_data])
        flag = small.all() & ~desc.last
        lane = self.wr[0]
        m.d.sync += [lane.en.eq(w_en), lane.index.eq(w_index), lane.flag.eq(w_en & flag),
                     self.flagged.eq(w_en & flag)]
        m.d.sync += [lane.data[c].eq(Mux(flag, 0, w_data[c])) for c in range(C)]

        # The next word, the next turn.
        with m.If(turning):
            m.d.sync += tr.eq(tr + 1)
            with m.If(t_write & hw_mode & (lane_i == C - 1)):
                m.d.sync += wa.eq(wa + 1)
            with m.If(t_write & ~hw_mode):
                m.d.sync += [wa.eq(wa + desc.out_s), wch.eq(wch + 1)]
            with m.If(tr == R - 1):
                m.d.sync += tr.eq(0)
                with m.If(t_write & hw_mode & ~fc & (wr_p != npix - 1)):
                    m.d.sync += [wr_p.eq(wr_p + 1), wa.eq(wa - (KB - 1) + desc.out_q)]
                with m.Else():
                    m.d.sync += turning.eq(0)

        m.d.comb += self.idle.eq(~i.valid & ~busy & ~pending & ~turning & ~ready
                                 & ~w_en & ~lane.en)
        return m
