"""cocotb bench of hw.output.OutputStage.

Layers of small random programs (sw.program) are planned and packed by sw.layout (descriptor,
parameter words); the bench feeds the blocks of each layer in the order of
docs/ARCHITECTURE.md ("Blocks, slots, groups") with random accumulators and random valid gaps,
serves the parameter memory with one cycle of read latency, and collects the writes. The
expected memory image is built only from sw.numerics (requantize, maxpool2x2, tile_flags,
apply_flags) and sw.layout (element_index, tile_index): every tile of the layer's output must be
written exactly once, with the right data, flag and lane contents, and nothing else.
"""

import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from hw.compact_output import CompactOutput
from hw.tags import block_layout, descriptor_layout
from sw import layout
from sw import numerics as nx
from sw.program import Layer, Program
from tb.common import config_from_env, pack, to_signed

# -- programs ---------------------------------------------------------------------------------


def _conv(ci, h, w, co, k=3, s=1, p=1, relu=False, pool=False):
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    out = (co, ho // 2, wo // 2) if pool else (co, ho, wo)
    return dict(kind="conv", in_shape=(ci, h, w), out_shape=out, wshape=(co, ci, k, k),
                kernel=k, stride=s, padding=p, relu=relu, pool=pool)


def _fc(in_shape, co, relu=False):
    return dict(kind="fc", in_shape=in_shape, out_shape=(co, 1, 1),
                wshape=(co, int(np.prod(in_shape))), relu=relu, pool=False)


def programs(cfg):
    R, C = cfg.rows, cfg.cols
    W = 2 * C + 3
    a = [_conv(3, 5, W, R + 2, relu=True)]
    a.append(_conv(R + 2, 5, W, R + 1, pool=True))
    a.append(_conv(R + 1, 2, W // 2, C + 1, s=2, relu=True))
    a.append(_fc(a[-1]["out_shape"], 2 * R + 3, relu=True))
    a.append(_fc((2 * R + 3, 1, 1), 7))
    b = [_conv(2, 6, 4 * C + 2, R + 3, relu=True, pool=True)]
    b.append(_conv(R + 3, 3, 2 * C + 1, R - 1, pool=True))
    b.append(_fc(b[-1]["out_shape"], 9))
    c = [_conv(3, 6, 2 * C + 1, R + 1, pool=True, relu=True)]
    d = [_conv(3, 5, 6, 5, s=2)]
    # CHW layers of fewer channels than R (2, 3 and R/2 + 1: their blocks fill part of the
    # rows); the last layer writes HWC (the network's output)
    e = [_conv(3, 6, 2 * C + 2, 2, relu=True, pool=True), _conv(2, 3, C + 1, 3),
         _conv(3, 3, C + 1, R // 2 + 1), _conv(R // 2 + 1, 3, C + 1, 2)]
    # a pooled CHW layer whose last block (an even xg) holds no pixel of the output: conv
    # width 4C+1, pooled 2C, xgs 2·2+1
    f = [_conv(2, 4, 4 * C + 1, R + 1, relu=True, pool=True), _conv(R + 1, 2, 2 * C, 3)]
    out = [a, b, c, d, e, f]
    if cfg.max_width >= 64:
        # one channel of 64×64 in CHW: blocks of C values and a large channel stride, whose
        # first word's address hw/compact_output.py takes longer to work out than the values
        out.append([_conv(1, 64, 64, 1), _conv(1, 64, 64, 1, s=2)])
    return out


def make_program(cfg, specs, rng, epsilon):
    """A Program with zero weights and random requantization parameters; also returns each
    layer's per-channel accumulator magnitude (to draw accumulators that requantize to a
    spread of int8 values). A value's column sum and bias stay within the accumulators, as
    sw/layout.py has it (sw.numerics.accumulator_bound)."""
    top = min(2 ** 27, (2 ** (cfg.acc_bits - 1) - 1) * 2 // (2 * cfg.cols + 1))
    layers, mags = [], []
    for n, sp in enumerate(specs):
        co = sp["out_shape"][0]
        shift = rng.integers(0, 32, co)
        mult = rng.integers(0, 2 ** 16, co)
        mult[rng.random(co) < 0.1] = 0
        mag = np.clip(300.0 * 2.0 ** shift / np.maximum(mult, 1), 1, top).astype(np.int64)
        tiny = rng.random(co) < 0.25      # channels whose values stay near zero (flags)
        mag[tiny] = np.maximum(1, mag[tiny] // 100)
        bias = np.array([rng.integers(-m, m + 1) // 2 for m in mag], dtype=np.int64)
        layers.append(Layer(
            name=f"l{n}", kind=sp["kind"], in_shape=sp["in_shape"], out_shape=sp["out_shape"],
            weight=np.zeros(sp["wshape"], dtype=np.int8), bias=bias, mult=mult, shift=shift,
            in_scale=1.0, out_scale=1.0, kernel=sp.get("kernel", 1),
            stride=sp.get("stride", 1), padding=sp.get("padding", 0), relu=sp["relu"],
            pool=sp["pool"]))
        mags.append(mag)
    prog = Program(cfg, layers, specs[0]["in_shape"], 1.0, epsilon)
    return prog, mags


# -- model ------------------------------------------------------------------------------------


def blocks_and_expectation(cfg, plan, mag, epsilon, rng):
    """The layer's blocks [(tag, acc list)] in hardware order, and the expected writes
    {physical index: (lanes, flag)}."""
    R, C = cfg.rows, cfg.cols
    d, layer = plan.desc, plan.layer
    cogs = d["cogs"]
    co = d["out_c"]
    magp = np.ones(cogs * R, dtype=np.int64)
    magp[:co] = mag
    blocks = []
    if layer.kind == "fc":
        A = np.stack([rng.integers(-magp, magp + 1) for _ in range(C)], axis=1)  # (cogs·R, C)
        for cog in range(cogs):
            blocks.append(({"cog": cog, "y": 0, "xg": 0}, A[cog * R:(cog + 1) * R].reshape(-1)))
        acc = A[:co].sum(axis=1) + layer.bias
        y = nx.requantize(acc[None], layer.mult, layer.shift, relu=layer.relu)[0]
        out = y.reshape(co, 1, 1)
    else:
        rows, xgs = d["rows"], d["xgs"]
        A = rng.integers(-magp[:, None, None], magp[:, None, None] + 1,
                         size=(cogs * R, rows, xgs * C))
        if d["pool"]:
            order = [(cog, 2 * py + dy, xg) for cog in range(cogs) for py in range(rows // 2)
                     for xg in range(xgs) for dy in (0, 1)]
        else:
            order = [(cog, y, xg) for cog in range(cogs) for y in range(rows)
                     for xg in range(xgs)]
        for cog, y, xg in order:
            blk = A[cog * R:(cog + 1) * R, y, xg * C:(xg + 1) * C]
            blocks.append(({"cog": cog, "y": y, "xg": xg}, blk.reshape(-1)))
        acc = A[:co, :, :d["conv_w"]] + layer.bias[:, None, None]
        out = nx.requantize(acc[None], layer.mult, layer.shift, relu=layer.relu)
        if d["pool"]:
            out = nx.maxpool2x2(out)
        out = out[0]
    assert out.shape == tuple(layer.out_shape), (out.shape, layer.out_shape)
    hwc = bool(d["out_hwc"])
    tile = (C, 1, 1) if hwc else (1, 1, C)
    if d["last"]:
        flags = np.zeros(nx.tile_grid(out.shape, tile), dtype=bool)
    else:
        flags = nx.tile_flags(out[None], tile, epsilon)[0]
        out = nx.apply_flags(out[None], flags[None], tile)[0]
    words = np.zeros((cfg.act_words, C), dtype=np.int64)
    idx, lane = layout.element_index(out.shape, hwc, cfg)
    words[idx, lane] = out
    tidx = layout.tile_index(out.shape, hwc, cfg)
    assert len(np.unique(tidx)) == tidx.size
    expected = {int(t): ([int(v) for v in words[t]], bool(f))
                for t, f in zip(tidx.ravel(), flags.ravel())}
    return blocks, expected


# -- driver -----------------------------------------------------------------------------------


_state = {"paddr": 0}    # param_addr seen in the previous cycle


def _lanes(dut, cfg):
    return [(getattr(dut, f"wr__{w}__en"), getattr(dut, f"wr__{w}__index"),
             getattr(dut, f"wr__{w}__data"), getattr(dut, f"wr__{w}__flag"))
            for w in range(cfg.out_words)]


async def run_layer(dut, cfg, plan, image, epsilon, blocks, expected, p_valid, rng, name):
    R, C, NB = cfg.rows, cfg.cols, cfg.act_banks
    bl = block_layout(cfg)
    desc = pack(descriptor_layout(cfg), plan.desc)
    compact = cfg.output == "compact"

    def payload(k, rot):
        """Block k's payload, its accumulators rotated by ``rot`` places as the PE array
        rotates them for the compact output stage's i_step (hw/pe_array.py)."""
        tag, acc = blocks[k]
        acc = [int(v) for v in acc]
        return pack(bl, {"acc": acc[rot % len(acc):] + acc[:rot % len(acc)], "tag": tag})

    rot = 0                  # i_step cycles seen with the current block
    lanes = _lanes(dut, cfg)
    written = {}
    k = 0
    cycles = 0
    accepted_at = []
    holding = False
    idle_since = None        # cycle in which idle was seen with nothing presented
    announced = 0            # i_ready_next of the previous cycle (the stage starts idle)
    per_block = (CompactOutput.block_cycles(cfg) if cfg.output == "compact"
                 else (R // cfg.out_words + 2) * 3)
    timeout = 100 + len(blocks) * per_block / p_valid
    while True:
        await RisingEdge(dut.clk)
        cycles += 1
        assert cycles < timeout, f"{name}: timeout, {k} of {len(blocks)} blocks accepted"
        dut.desc.value = desc          # (constant over the layer)
        dut.epsilon.value = epsilon
        # The parameter memory: one cycle of read latency.
        dut.param_data.value = (image.params[_state["paddr"]]
                                if _state["paddr"] < len(image.params) else 0)
        # a stream source keeps valid (and the payload) until the transfer; no block in the
        # first cycle, when the layer's desc arrives
        valid = cycles > 1 and k < len(blocks) and (holding or rng.random() < p_valid)
        dut.i__valid.value = int(valid)
        dut.i__payload.value = payload(k, rot) if k < len(blocks) else 0
        await ReadOnly()
        _state["paddr"] = int(dut.param_addr.value)
        banks, nflag = set(), 0
        for en, index, data, flag in lanes:
            if not int(en.value):
                continue
            assert idle_since is None, f"{name}: write after idle (cycle {idle_since})"
            i = int(index.value)
            lanes_v = [to_signed(int(data.value) >> (8 * c), 8) for c in range(C)]
            f = bool(int(flag.value))
            nflag += f
            assert i % NB not in banks, f"{name}: two writes to bank {i % NB} in one cycle"
            banks.add(i % NB)
            assert i in expected, f"{name}: write to index {i}, not a word of the output"
            assert i not in written, f"{name}: index {i} written twice"
            written[i] = (lanes_v, f)
            assert (lanes_v, f) == expected[i], \
                f"{name}: word {i}: got {(lanes_v, f)}, expected {expected[i]}"
        assert int(dut.flagged.value) == nflag, f"{name}: flagged {int(dut.flagged.value)}"
        ready = int(dut.i__ready.value)
        assert ready == announced, \
            f"{name}: i.ready {ready}, announced {announced} by i_ready_next"
        announced = int(dut.i_ready_next.value)
        holding = valid and not ready
        if compact and int(dut.i_step.value):
            assert valid, f"{name}: i_step without a block"
            rot += 1
        if valid and int(dut.i__ready.value):
            k += 1
            rot = 0
            accepted_at.append(cycles)
        if valid:
            idle_since = None
            assert not int(dut.idle.value), f"{name}: idle with a block presented"
        elif k == len(blocks) and int(dut.idle.value):
            if idle_since is None:
                idle_since = cycles
            if cycles - idle_since > 8:
                break
    missing = sorted(set(expected) - set(written))
    assert not missing, f"{name}: {len(missing)} words never written, e.g. {missing[:5]}"
    return accepted_at


async def run_all(dut, p_valid, seed_offset, *, check_rate=False):
    cfg, seed = config_from_env()
    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    dut.i__valid.value = 0
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    await ReadOnly()
    _state["paddr"] = int(dut.param_addr.value)
    rng = np.random.default_rng(seed + seed_offset)
    prng = random.Random(seed + seed_offset)
    U = cfg.rows // cfg.out_words
    n = 0
    for pn, specs in enumerate(programs(cfg)):
        epsilon = int(rng.integers(0, 6))
        prog, mags = make_program(cfg, specs, rng, epsilon)
        image = layout.pack_program(prog)
        for ln, p in enumerate(image.plans):
            name = f"program {pn} layer {ln} ({p.layer.describe()}, hwc={p.desc['out_hwc']})"
            blocks, expected = blocks_and_expectation(cfg, p, mags[ln], epsilon, rng)
            acc_at = await run_layer(dut, cfg, p, image, epsilon, blocks, expected, p_valid,
                                     prng, name)
            n += len(expected)
            nf = sum(f for _, f in expected.values())
            nz = sum(any(v) for v, _ in expected.values())
            dut._log.info(f"{name}: {len(blocks)} blocks, {len(expected)} words "
                          f"({nf} flagged, {nz} non-zero), blocks accepted in "
                          f"{acc_at[-1] - acc_at[0] + 1} cycles")
            if check_rate and cfg.output == "compact":
                # hw/compact_output.py: one value at a time, CompactOutput.block_cycles a block
                span = acc_at[-1] - acc_at[0]
                budget = (len(blocks) - 1) * CompactOutput.block_cycles(cfg)
                assert span <= budget, f"{name}: {span} cycles for {len(blocks)} blocks " \
                                       f"(budget {budget})"
            elif check_rate:
                # One block per u_n cycles: each step reads its parameters as it is taken. A
                # CHW layer of fewer channels than R takes only its channels' steps, at least 3
                # (hw/output.py, "Throughput and latency").
                u_n = U
                if U >= 4 and not p.desc["out_hwc"] and p.layer.out_shape[0] < cfg.rows:
                    u_n = max(3, -(-p.layer.out_shape[0] // cfg.out_words))
                budget = len(blocks) * u_n
                span = acc_at[-1] - acc_at[0] + u_n
                assert span <= budget, f"{name}: {span} cycles for {len(blocks)} blocks " \
                                       f"(budget {budget})"
    assert n > 0


@cocotb.test()
async def layers_random_gaps(dut):
    """Every layer kind (conv CHW/HWC, pooled or not, fc, last), blocks with random gaps."""
    await run_all(dut, 0.4, 0)


@cocotb.test()
async def layers_full_rate(dut):
    """Blocks always available: exact results at one block per u_n cycles (at most R/OW)."""
    await run_all(dut, 1.0, 1, check_rate=True)


@cocotb.test()
async def layers_mostly_valid(dut):
    await run_all(dut, 0.85, 2)
