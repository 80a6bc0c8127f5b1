"""cocotb bench of hw.pe_array.PEArray: random slots, valid gaps, back-pressure and a source
at the credit limit.

The expected blocks come from an integer model of the contract (docs/ARCHITECTURE.md, "Module
interfaces"): acc[r·C + j] = Σ over the block's slots of act[j] · wgt[r·C + j] (``first``
starts from 0), wrapped to ``Config.acc_bits`` bits, delivered in order with the ``last`` slot's
tag. A block with no issued slot is one slot of zeros, as the loader sends it.
"""

import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from hw.pe_array import PEArray
from hw.tags import block_layout, slot_layout
from tb.common import config_from_env, pack, unpack


def _blocks(cfg, rng, n_blocks, *, big=False):
    """Random blocks: a list of (slots, expected acc, tag)."""
    R, C = cfg.rows, cfg.cols
    compact = cfg.loader == "compact"
    NW = R if compact else R * C        # the slot's weights
    out = []
    for _ in range(n_blocks):
        tag = {"cog": rng.randrange(cfg.max_channels + 1),
               "y": rng.randrange(cfg.max_width + 1), "xg": rng.randrange(cfg.max_width + 1)}
        kind = rng.random()
        if kind < 0.15:      # a block with no issued slot
            slots = [dict(act=[0] * C, wgt=[0] * NW)]
        else:
            n = rng.randint(1, 40 if big else 6)
            slots = []
            for _ in range(n):
                lo = -128 if rng.random() < 0.5 else -3
                act = [rng.randint(lo, -lo - 1) for _ in range(C)]
                if compact:              # one weight a row (hw/tags.slot_layout)
                    wgt = [rng.randint(-128, 127) for _ in range(R)]
                elif rng.random() < 0.5:   # conv: broadcast w[r] over j
                    w = [rng.randint(-128, 127) for _ in range(R)]
                    wgt = [w[r] for r in range(R) for _ in range(C)]
                else:
                    wgt = [rng.randint(-128, 127) for _ in range(R * C)]
                slots.append(dict(act=act, wgt=wgt))
        acc = np.zeros(R * C, dtype=np.int64)
        for s in slots:
            a = np.array(s["act"], dtype=np.int64)
            w = np.array(s["wgt"], dtype=np.int64).reshape(R, NW // R)   # compact: broadcast
            acc += (w * a[None, :]).reshape(-1)
        acc = ((acc + 2 ** (cfg.acc_bits - 1)) % 2 ** cfg.acc_bits) - 2 ** (cfg.acc_bits - 1)
        for k, s in enumerate(slots):
            s["first"] = int(k == 0)
            s["last"] = int(k == len(slots) - 1)
            s["tag"] = tag if s["last"] else {   # only the last slot's tag counts
                "cog": rng.randrange(cfg.max_channels + 1), "y": 0, "xg": 0}
        out.append((slots, [int(v) for v in acc], tag))
    return out


async def _run(dut, cfg, blocks, p_valid, p_ready, *, check_full_rate=False):
    """Send the blocks' slots with random gaps, as a source that keeps the credit rule at its
    limit: a last slot goes out whenever fewer than ``PEArray.credits`` blocks whose last slot
    was sent have been seen taken from ``o`` (up to the cycle before). Take blocks with
    probability ``p_ready`` (decided a cycle ahead and announced on ``o_ready_next``, as the
    output stage does) and check them all, in order. With the compact loader, nothing is sent
    in the cycle after a last slot, as that loader does (the array clears its accumulators
    then)."""
    sl, bl = slot_layout(cfg), block_layout(cfg)
    await RisingEdge(dut.clk)    # leave a ReadOnly phase before driving
    dut.rst.value = 1
    dut.i__valid.value = 0
    dut.o__ready.value = 0
    dut.o_ready_next.value = 0
    if cfg.output == "compact":
        dut.o_step.value = 0
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    rng = random.Random(len(blocks) * 7919 + int(p_valid * 100) + int(p_ready * 10))
    slots = [pack(sl, s) for b in blocks for s in b[0]]
    lasts = [s["last"] for b in blocks for s in b[0]]
    expected = [(b[1], b[2]) for b in blocks]
    got = []
    k = 0
    cycles = 0
    held = 0                # cycles a slot was held back for want of credit
    finished = 0            # last slots sent
    credits = PEArray.credits(cfg)
    ready = 0               # o.ready in this cycle, announced in the previous one
    gaps = cfg.loader == "compact"
    after_last = False      # a last slot was sent in the previous cycle
    timeout = 200 + 20 * len(slots) / min(p_valid, p_ready)
    # With the compact output stage, o_step rotates the head block (at random here); a block
    # taken after r steps has its accumulators rotated r places.
    stepping = cfg.output == "compact"
    steps, rotations = 0, []
    while len(got) < len(expected):
        await RisingEdge(dut.clk)
        cycles += 1
        assert cycles < timeout, f"timeout: {len(got)} of {len(expected)} blocks"
        credit = k < len(slots) and not (lasts[k] and finished - len(got) >= credits)
        valid = credit and not (gaps and after_last) and rng.random() < p_valid
        held += k < len(slots) and not credit
        dut.i__valid.value = int(valid)
        dut.i__payload.value = slots[k] if k < len(slots) else 0
        dut.o__ready.value = ready
        ready = int(rng.random() < p_ready)
        dut.o_ready_next.value = ready
        if stepping:
            dut.o_step.value = int(rng.random() < 0.5)
        await ReadOnly()
        after_last = valid and lasts[k]
        if valid:
            finished += lasts[k]
            k += 1
        if int(dut.o__valid.value) and int(dut.o__ready.value):
            got.append(unpack(bl, int(dut.o__payload.value)))
            rotations.append(steps)
            steps = 0
        elif stepping and int(dut.o__valid.value):
            steps += int(dut.o_step.value)
    for n, ((acc, tag), g) in enumerate(zip(expected, got)):
        if stepping:
            r = rotations[n] % len(acc)
            acc = acc[r:] + acc[:r]
        assert g["tag"] == tag, f"block {n}: tag {g['tag']} != {tag}"
        assert g["acc"] == acc, f"block {n}: acc {g['acc']} != {acc}"
    if check_full_rate:
        assert held == 0, f"{held} slots held for credit at full rate"
        # one slot per cycle (and the compact loader's cycle between blocks): the last block
        # leaves 5 cycles after its last slot
        bound = len(slots) + (len(blocks) if gaps else 0) + 6
        assert cycles <= bound, f"{cycles} cycles for {len(slots)} slots"
    for _ in range(3):    # nothing more comes out
        await RisingEdge(dut.clk)
        await ReadOnly()
        assert not int(dut.o__valid.value), "spurious block"
    return cycles


@cocotb.test()
async def full_rate(dut):
    """No gaps, no back-pressure: one slot per cycle, never held for credit, with blocks long
    enough that the credits cover the 6 cycles from a block's last slot to the source seeing it
    taken: at least ceil(6 / credits) slots, and 3 (shorter blocks back to back wait for
    credit, see single_slot_blocks)."""
    cfg, seed = config_from_env()
    Clock(dut.clk, 10, unit="ns").start()
    rng = random.Random(seed)
    shortest = max(3, -(-6 // PEArray.credits(cfg)))
    blocks = []
    while len(blocks) < 40:
        b = _blocks(cfg, rng, 1)[0]
        if len(b[0]) >= shortest:
            blocks.append(b)
    await _run(dut, cfg, blocks, 1.0, 1.0, check_full_rate=True)


@cocotb.test()
async def random_stalls(dut):
    """Random valid gaps and back-pressure, long blocks (wrapping around stays exact)."""
    cfg, seed = config_from_env()
    Clock(dut.clk, 10, unit="ns").start()
    rng = random.Random(seed + 1)
    for p_valid, p_ready in ((0.7, 0.5), (1.0, 0.2), (0.3, 0.9), (1.0, 0.05)):
        blocks = _blocks(cfg, rng, 30, big=p_ready > 0.5)
        await _run(dut, cfg, blocks, p_valid, p_ready)


@cocotb.test()
async def single_slot_blocks(dut):
    """Back-to-back one-slot blocks with back-pressure: the shadows fill up and every block
    still comes out right (a source at the credit limit)."""
    cfg, seed = config_from_env()
    Clock(dut.clk, 10, unit="ns").start()
    rng = random.Random(seed + 2)
    blocks = []
    while len(blocks) < 40:
        b = _blocks(cfg, rng, 1)[0]
        if len(b[0]) == 1:
            blocks.append(b)
    await _run(dut, cfg, blocks, 1.0, 0.5)
