"""cocotb bench of hw.core.Core: whole networks through the host bus.

Random small networks are compiled by the sw compiler, packed by sw.layout, written into the
core over its bus, run with one run command, and read back. Every output byte must equal the
golden model's, and every exact counter the schedule model's (sw.schedule); busy cycles must
stay within a stated bound of the issued slots. The bus itself is checked too: erroneous
accesses are refused and change nothing.
"""

import random

import cocotb
import numpy as np
import torch
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge
from torch import nn

from hw.compact_output import CompactOutput
from hw.core import bus_layouts, shared_regions
from hw.pe_array import PEArray
from sw import compile_model, layout
from sw.golden import forward
from sw.layout import COUNTERS, Region
from sw.runtime import quantize_input
from sw.schedule import network_stats
from tb.common import config_from_env, pack, unpack


class Bus:
    """Drives the core's cmd/rsp bus, one access at a time (its response may take any number of
    cycles)."""

    def __init__(self, dut, cfg):
        self.dut, self.cfg = dut, cfg
        self.cmd_layout, self.rsp_layout = bus_layouts(cfg)
        dut.rsp__ready.value = 1
        dut.cmd__valid.value = 0

    async def issue(self, write, region, index, data=0):
        """Offer one command until it is taken (cmd.valid stays high; the caller lowers it)."""
        dut = self.dut
        dut.cmd__payload.value = pack(self.cmd_layout, {"write": int(write), "region": region,
                                                        "index": index, "data": data})
        dut.cmd__valid.value = 1
        while True:
            await ReadOnly()
            ready = dut.cmd__ready.value == 1
            await RisingEdge(dut.clk)
            if ready:
                break

    async def access(self, write, region, index, data=0):
        dut = self.dut
        await self.issue(write, region, index, data)
        dut.cmd__valid.value = 0
        for _ in range(12):     # the host bus's seven stages and the FIFO's, and some to spare
            await ReadOnly()
            if dut.rsp__valid.value == 1:
                break
            await RisingEdge(dut.clk)
        else:
            raise AssertionError(f"no response to {(write, region, index)}")
        rsp = unpack(self.rsp_layout, int(dut.rsp__payload.value))
        await RisingEdge(dut.clk)
        return rsp["data"], rsp["error"]

    async def write(self, region, index, data):
        _, err = await self.access(True, region, index, data)
        assert not err, f"write to {Region(region).name}[{index}] refused"

    async def read(self, region, index):
        value, err = await self.access(False, region, index)
        assert not err, f"read of {Region(region).name}[{index}] refused"
        return value


def _word(values):
    """int8 lanes → an int, lane 0 lowest."""
    return sum((int(v) & 0xFF) << (8 * i) for i, v in enumerate(values))


def _lanes(word, n):
    return [((word >> (8 * i)) & 0xFF) - (256 if (word >> (8 * i)) & 0x80 else 0)
            for i in range(n)]


async def load_program(bus, program):
    cfg = program.config
    image = layout.pack_program(program)

    async def write_rows(region, rows):
        for i, word in enumerate(layout.row_words(cfg, region, rows)):
            await bus.write(region, i, word)

    await write_rows(Region.DESC, image.descriptors)
    used = max(p.desc["wbase"] + p.weight_words for p in image.plans)
    # Zero words too: an earlier program's weights may be there.
    await write_rows(Region.WEIGHT, [_word(image.weights[index % cfg.cols, index // cfg.cols])
                                     for index in range(used)])
    for i, word in enumerate(image.masks):
        await bus.write(Region.MASK, i, word)
    await write_rows(Region.PARAM, image.params)
    return image


async def wait_for_run(bus, limit, pause=50):
    """Poll the run's status, every ``pause`` cycles, until it is no longer busy; return it. A
    run still busy after ``limit`` cycles fails."""
    while True:
        status = layout.unpack_status(await bus.read(Region.CTRL, 0))
        if not status["busy"]:
            return status
        assert status["cycles"] <= limit, (f"still busy after {status['cycles']} cycles "
                                           f"(bound {limit})")
        for _ in range(pause):
            await RisingEdge(bus.dut.clk)


def run_limit(program, stats):
    """Cycles a run may take: twice its layers' busy-cycle bounds (busy_bound, given the
    schedule model's counts), and a generous allowance for the sequencer between them."""
    return 2 * sum(busy_bound(program, i, s["issue_slots"] - s["issue_slots_skipped"])
                   for i, s in enumerate(stats)) + 1000


async def run_image(bus, program, xq, skip, limit):
    """One image through the core; returns (raw outputs, per-layer counters, run cycles).
    A run still busy after ``limit`` cycles fails."""
    cfg = program.config
    words, flags, _ = layout.pack_input(program, xq[None])
    first = program.layers[0]
    idx = np.unique(layout.element_index(tuple(first.in_shape), first.kind == "fc", cfg)[0])
    for i in idx:
        await bus.write(Region.ACT0, int(i), _word(words[0, i]))
        await bus.write(Region.FLAG0, int(i), int(flags[0, i]))
    n = len(program.layers)
    await bus.write(Region.CTRL, 0, layout.run_word(n, skip, program.epsilon))
    status = await wait_for_run(bus, limit)
    assert status["done"] and not status["error"], status
    last = program.layers[-1]
    oidx, lane = layout.element_index(tuple(last.out_shape), True, cfg)
    out_words = {}
    for i in np.unique(oidx):
        out_words[int(i)] = _lanes(await bus.read(Region.ACT0 + n % 2, int(i)), cfg.cols)
    raw = np.array([out_words[int(i)][int(j)] for i, j in zip(oidx.ravel(), lane.ravel())])
    counts = []
    for layer in range(n):
        counts.append({name: await bus.read(Region.COUNT, layer * len(COUNTERS) + c)
                       for c, name in enumerate(COUNTERS)})
    return raw, counts, status["cycles"]


def random_network(rng, cfg):
    """A small random chain: convs (odd sizes, strides, 1×1, pooling), then fc layers."""
    torch.manual_seed(rng.randrange(1 << 30))
    ci = rng.randint(1, 5)
    size = rng.randint(5, min(cfg.max_width, 12))
    layers, c, h = [], ci, size
    for _ in range(rng.randint(1, 3)):
        k = rng.choice([1, 3, 3])
        s = rng.choice([1, 1, 2])
        p = rng.choice([0, 1]) if k == 3 else 0
        co = rng.randint(1, 2 * cfg.rows + 3)
        if (h + 2 * p - k) // s + 1 < 1:
            break
        conv = nn.Conv2d(c, co, k, stride=s, padding=p)
        with torch.no_grad():
            if rng.random() < 0.5:      # pruned weights: whole output channels and kernel taps
                conv.weight[torch.rand(co) < 0.3] = 0
                conv.weight[:, :, torch.rand(k) < 0.3] = 0
        layers += [conv, nn.ReLU()] if rng.random() < 0.8 else [conv]
        h = (h + 2 * p - k) // s + 1
        c = co
        if h >= 2 and rng.random() < 0.5:
            layers.append(nn.MaxPool2d(2))
            h //= 2
    layers.append(nn.Flatten())
    f = c * h * h
    for _ in range(rng.randint(0, 2)):
        o = rng.randint(2, 2 * cfg.rows + 5)
        layers += [nn.Linear(f, o), nn.ReLU()]
        f = o
    layers.append(nn.Linear(f, rng.randint(2, 12)))
    return nn.Sequential(*layers).eval(), ci, size


def sparse_input(rng, n, ci, size):
    """Inputs with all-zero regions, no zeros at all, and everything in between."""
    x = torch.relu(torch.randn(n, ci, size, size) - rng.uniform(-0.5, 1.5))
    x[0] = torch.rand(ci, size, size) + 0.1          # no zeros
    if n > 1:
        x[1, :, : size // 2] = 0                      # a zero half
    if n > 2:
        x[2] = 0                                      # all zero
    return x


def busy_bound(program, i, issued):
    """The stated bound on layer i's busy cycles (docs/ARCHITECTURE.md, "Counters"): per block,
    its issued slots plus one scan cycle per group (the compact loader: two per kernel row)
    plus its output time (R/OW steps; the compact output stage: CompactOutput.block_cycles;
    with Config.shadows set, also the credit loop's), plus the pipeline's latency and the last
    block's writes."""
    cfg = program.config
    plan = layout.plan(program)[i]
    d = plan.desc
    blocks = d["cogs"] * d["rows"] * d["xgs"]
    U = cfg.rows // cfg.out_words
    rows_per_group = (d["kernel"] if cfg.loader == "compact"
                      and d["kind"] == layout.KIND_CONV else 1)
    scans = plan.groups * rows_per_group * (2 if cfg.loader == "compact" else 1)
    loop = PEArray.CREDIT_LOOP if cfg.shadows else 0
    out = CompactOutput.block_cycles(cfg) if cfg.output == "compact" else U
    # the compact loader reads an fc slot's C weight words in C cycles
    per_slot = cfg.cols if cfg.loader == "compact" and d["kind"] == layout.KIND_FC else 1
    return issued * per_slot + blocks * (scans + out + 1 + loop) + out + 36


async def check_program(bus, program, x, skip):
    """Run every image of ``x``, assert outputs and counters; return the per-image counters."""
    xq = quantize_input(program, x)
    raw, flags = forward(program, xq)
    await load_program(bus, program)
    all_counts = []
    for n in range(len(xq)):
        expect = network_stats(program, [f[n:n + 1] for f in flags], skip=skip)
        bounds = [busy_bound(program, i, s["issue_slots"] - s["issue_slots_skipped"])
                  for i, s in enumerate(expect)]
        got, counts, cycles = await run_image(bus, program, xq[n], skip,
                                              limit=run_limit(program, expect))
        all_counts.append(counts)
        assert np.array_equal(got, raw[n]), f"image {n}: {got} != {raw[n]}"
        for i, (hw, sw_) in enumerate(zip(counts, expect)):
            for key in ("issue_slots", "issue_slots_skipped", "act_bytes_read",
                        "weight_bytes_read"):
                assert hw[key] == sw_[key], f"image {n} layer {i} {key}: {hw[key]} != {sw_[key]}"
            if i + 1 < len(flags):
                assert hw["out_tiles_flagged"] == int(flags[i + 1][n].sum()), (n, i)
            assert 0 < hw["busy_cycles"] <= bounds[i], (n, i, hw["busy_cycles"], bounds[i])
        assert cycles >= sum(c["busy_cycles"] for c in counts)
    return all_counts


async def start(dut):
    """Clock the core; return (config, seed, bus)."""
    cfg, seed = config_from_env()
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    bus = Bus(dut, cfg)
    await RisingEdge(dut.clk)
    return cfg, seed, bus


@cocotb.test()
async def test_random_networks(dut):
    cfg, seed, bus = await start(dut)
    rng = random.Random(seed)
    for trial in range(4):
        model, ci, size = random_network(rng, cfg)
        x = sparse_input(rng, 3, ci, size)
        program = compile_model(model, x, epsilon=rng.choice([0, 0, 1, 3]), config=cfg)
        await check_program(bus, program, x, skip=bool(trial % 2 == 0 or rng.random() < 0.5))


@cocotb.test()
async def test_epsilon_boundaries(dut):
    """Tiles exactly at ±ε are flagged, tiles with a ±(ε+1) are not."""
    cfg, seed, bus = await start(dut)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(2, cfg.rows, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(cfg.rows * 6 * (2 * cfg.cols + 1), 5)).eval()
    eps = 3
    calib = torch.rand(1, 2, 6, 2 * cfg.cols + 1) * 2 - 1
    program = compile_model(model, calib, epsilon=eps, config=cfg)
    s = program.input_scale
    q = torch.randint(-eps, eps + 1, (2, 2, 6, 2 * cfg.cols + 1)).double()
    q[1, 0, 2, 1] = eps + 1
    q[1, 1, 4, 0] = -(eps + 1)
    x = (q * s).float()
    await check_program(bus, program, x, skip=True)
    await check_program(bus, program, x, skip=False)


@cocotb.test()
async def test_bus_errors_change_nothing(dut):
    cfg, _, bus = await start(dut)
    regions = layout.region_map(cfg)
    await bus.write(Region.MASK, 3, 5)
    for write, region, index, value in [
        (True, Region.MASK, cfg.mask_words, 1),             # out of range
        (True, Region.MASK, 3, 1 << cfg.group_bits),          # excess bits
        (True, Region.COUNT, 0, 1),                           # read only
        (True, Region.CTRL, 1, 1),                            # read only
        (True, 12, 0, 1),                                     # no such region
        (False, Region.PARAM, regions[Region.PARAM][1], 0),
    ]:
        _, err = await bus.access(write, region, index, value)
        assert err, (write, region, index)
    assert await bus.read(Region.MASK, 3) == 5
    assert await bus.read(Region.CTRL, 1) == layout.HW_VERSION
    words = [await bus.read(Region.CTRL, 2 + i) for i in range(len(layout.config_words(cfg)))]
    assert words == layout.config_words(cfg)
    assert regions[Region.MASK][1] == cfg.mask_words


@cocotb.test()
async def test_wide_rows_read_back(dut):
    """Rows of the regions wider than a host word (weights: one per bank; parameters; layer
    descriptors) read back word by word as written; the words past a row's width read 0 and
    ignore writes."""
    cfg, seed, bus = await start(dut)
    rng = random.Random(seed)
    for region in layout.CHUNKED:
        width, nrows = layout.memory_map(cfg)[region]
        k = layout.chunk_shift(width)
        rows = sorted({0, nrows - 1, *(rng.randrange(nrows) for _ in range(2 * cfg.cols))})
        values = {row: rng.getrandbits(width) for row in rows}
        for row, value in values.items():
            for i, word in enumerate(layout.row_words(cfg, region, [value])):
                beyond = i * layout.CHUNK_BITS >= width
                await bus.write(region, row << k | i, rng.getrandbits(32) if beyond else word)
        for row, value in values.items():
            words = [await bus.read(region, row << k | i) for i in range(1 << k)]
            assert words == layout.row_words(cfg, region, [value]), (Region(region).name, row)


@cocotb.test()
async def test_memories_refused_while_running(dut):
    """While a run is in progress every memory access and a second run command are refused
    and change nothing (the counters may be read, unless they lie in the weight memory:
    hw.core.shared_regions); the run's outputs are still exact."""
    cfg, seed, bus = await start(dut)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, cfg.rows, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(cfg.rows * 6 * 6, 5)).eval()
    x = torch.rand(1, 3, 6, 6)
    program = compile_model(model, x, config=cfg)
    xq = quantize_input(program, x)
    raw, tile_flags = forward(program, xq)
    image = await load_program(bus, program)
    words, flags, _ = layout.pack_input(program, xq)
    first = program.layers[0]
    for i in np.unique(layout.element_index(tuple(first.in_shape), False, cfg)[0]):
        await bus.write(Region.ACT0, int(i), _word(words[0, i]))
        await bus.write(Region.FLAG0, int(i), int(flags[0, i]))
    n = len(program.layers)
    await bus.write(Region.CTRL, 0, layout.run_word(n, False, program.epsilon))
    for write, region, index, value in [
        (True, Region.MASK, 0, image.masks[0] ^ 1), (False, Region.MASK, 0, 0),
        (True, Region.ACT0, 0, 0x55), (False, Region.ACT1, 0, 0),
        (True, Region.PARAM, 0, 0), (True, Region.WEIGHT, 0, 0),
        (True, Region.DESC, 0, 0), (False, Region.DESC, 0, 0),
        (True, Region.CTRL, 0, layout.run_word(n, True, 0)),
    ] + ([(False, Region.COUNT, 0, 0)] if shared_regions(cfg) else []):
        assert layout.unpack_status(await bus.read(Region.CTRL, 0))["busy"]
        _, err = await bus.access(write, region, index, value)
        assert err, (write, Region(region).name, index)
    await wait_for_run(bus, run_limit(program, network_stats(program, tile_flags, skip=False)),
                       pause=0)
    assert await bus.read(Region.MASK, 0) == image.masks[0]
    oidx, lane = layout.element_index(tuple(program.layers[-1].out_shape), True, cfg)
    got = [_lanes(await bus.read(Region.ACT0 + n % 2, int(i)), cfg.cols)[int(j)]
           for i, j in zip(oidx.ravel(), lane.ravel())]
    assert got == list(raw[0]), (got, raw[0])


@cocotb.test()
async def test_weight_sparsity_alone(dut):
    """Pruned weights on an input without a single zero: slots are skipped, cycles saved."""
    cfg, seed, bus = await start(dut)
    torch.manual_seed(seed)
    conv = nn.Conv2d(4, cfg.rows, 3, padding=1)
    with torch.no_grad():
        conv.weight[:, 1:3] = 0                       # half the input channels pruned
        conv.weight[:, :, 0, :] = 0                   # and the top row of every kernel
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(cfg.rows * 4 * 2 * cfg.cols, 3)).eval()
    x = torch.rand(2, 4, 4, 2 * cfg.cols) + 0.5       # no zeros anywhere
    program = compile_model(model, x, config=cfg)
    off = await check_program(bus, program, x, skip=False)
    on = await check_program(bus, program, x, skip=True)
    for a, b in zip(on, off):
        assert a[0]["issue_slots_skipped"] > a[0]["issue_slots"] // 2
        assert b[0]["issue_slots_skipped"] == 0
        assert a[0]["busy_cycles"] < b[0]["busy_cycles"]


@cocotb.test()
async def test_output_paced_layers(dut):
    """Layers of one slot per block, where the output stage sets the pace and the PE array's
    queue is full: exact results. CHW layers of fewer output channels than rows take only
    their channels' requantization steps (hw/output.py; hw/compact_output.py: their values):
    fewer cycles a block than with all R channels (for R/OW ≥ 4)."""
    cfg, seed, bus = await start(dut)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    size = cfg.max_width
    model = nn.Sequential(nn.Conv2d(1, 3, 1), nn.ReLU(),
                          nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(2, cfg.rows, 1), nn.ReLU(),
                          nn.Conv2d(cfg.rows, 5, 3, padding=1), nn.Flatten(),
                          nn.Linear(5 * (size // 2) ** 2, 4)).eval()
    x = sparse_input(rng, 3, 1, size)
    program = compile_model(model, x, config=cfg)
    plans = layout.plan(program)
    assert [p.desc["out_hwc"] for p in plans[:3]] == [0, 0, 0]
    # A block's output time with all R channels: R/OW steps, or CompactOutput.block_cycles.
    U = (CompactOutput.block_cycles(cfg) if cfg.output == "compact"
         else cfg.rows // cfg.out_words)
    for skip in (False, True):
        counts = await check_program(bus, program, x, skip=skip)
        if U >= 4 and not skip:
            # one channel × 1×1: one slot per block, so the output stage sets the pace
            d = plans[0].desc
            blocks = d["cogs"] * d["rows"] * d["xgs"]
            for c in counts:
                assert c[0]["busy_cycles"] < blocks * U, (c[0]["busy_cycles"], blocks * U)


@cocotb.test()
async def test_bus_back_to_back_with_stalls(dut):
    """Commands offered every cycle, responses taken at random: every response arrives in
    order, reads see the writes before them, a refused write changes nothing."""
    cfg, seed, bus = await start(dut)
    rng = random.Random(seed)
    regions = layout.region_map(cfg)
    width, depth = regions[Region.MASK]
    assert depth >= 8
    model = {}
    commands = []
    for _ in range(300):
        index = rng.randrange(8)
        if rng.random() < 0.5:
            value = rng.getrandbits(width + (rng.random() < 0.2))     # some with excess bits
            ok = value < 1 << width
            if ok:
                model[index] = value
            commands.append((True, index, value, (0, not ok)))
        else:
            commands.append((False, index, 0, (model.get(index, 0), False)))
    for index in range(8):                      # known contents to start from
        await bus.write(Region.MASK, index, 0)
    rsp_layout = bus.rsp_layout
    got = []

    async def take():
        while len(got) < len(commands):
            dut.rsp__ready.value = int(rng.random() < 0.6)
            await ReadOnly()
            if dut.rsp__valid.value == 1 and dut.rsp__ready.value == 1:
                rsp = unpack(rsp_layout, int(dut.rsp__payload.value))
                got.append((rsp["data"], bool(rsp["error"])))
            await RisingEdge(dut.clk)

    taker = cocotb.start_soon(take())
    for write, index, value, _ in commands:
        await bus.issue(write, Region.MASK, index, value)
    dut.cmd__valid.value = 0
    for _ in range(4 * len(commands)):
        if taker.done():
            break
        await RisingEdge(dut.clk)
    assert taker.done(), f"{len(got)} of {len(commands)} responses"
    assert got == [expect for *_, expect in commands]
    dut.rsp__ready.value = 1
