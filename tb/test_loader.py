"""cocotb bench of hw/loader.py (run from tests/test_hw_loader.py).

The memories are modelled here in Python (1-cycle read latency, data held while a port's enable
is low), filled from ``sw.layout`` (element_index/tile_index for activations and flags,
pack_program for weights and weight-skip masks). The slots on ``o`` are checked one by one
against an enumeration written from docs/ARCHITECTURE.md, with the words each slot reads taken
from ``sw.schedule.slot_words``; the counters against ``sw.schedule.layer_stats``.

The configuration comes in the environment variable ``TILESKIP_CONFIG`` (JSON of
``Config.to_dict()``). Cycle counts (start → done) are appended, one JSON line per layer run,
to the file named by ``TILESKIP_LOADER_PERF`` if set.
"""

import json
import os

import cocotb
import numpy as np
from amaranth.hdl import Shape
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly

from hw.pe_array import PEArray
from hw.tags import slot_layout
from sw import layout, schedule
from sw import numerics as nx
from sw.config import Config
from sw.program import Layer, Program


def _config():
    return Config.from_dict(json.loads(os.environ["TILESKIP_CONFIG"]))


def _cdiv(a, b):
    return -(-a // b)


# -- programs -----------------------------------------------------------------------------------

def _conv(name, ci, h, w, co, k, s, p, pool=False):
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    out = (co, ho // 2, wo // 2) if pool else (co, ho, wo)
    return dict(name=name, kind="conv", in_shape=(ci, h, w), out_shape=out, kernel=k, stride=s,
                padding=p, pool=pool, wshape=(co, ci, k, k))


def _fc(name, ci, h, w, co):
    return dict(name=name, kind="fc", in_shape=(ci, h, w), out_shape=(co, 1, 1),
                wshape=(co, ci * h * w))


#: The layers under test, by name.
LAYERS = [
    _conv("c3s1p1", 3, 5, 7, 6, 3, 1, 1),
    _conv("c3s2p1", 5, 7, 9, 4, 3, 2, 1),
    _conv("c1x1", 9, 4, 5, 5, 1, 1, 0),
    _conv("c3pool", 8, 6, 6, 4, 3, 1, 1, pool=True),
    _conv("c3p0odd", 2, 5, 11, 3, 3, 1, 0),
    _conv("c2s2", 3, 6, 7, 4, 2, 2, 0),
    _fc("fc", 5, 3, 3, 6),
    _conv("c3poolodd", 4, 7, 5, 3, 3, 1, 1, pool=True),
    _conv("c3ci1", 1, 6, 5, 5, 3, 1, 1),
    _fc("fcvec", 13, 1, 1, 5),
    _conv("perf", 16, 8, 8, 8, 3, 1, 1),
    _conv("perf1x1", 16, 6, 8, 4, 1, 1, 0),
    _fc("perffc", 16, 4, 4, 4),
]


def make_program(cfg, specs, rng, prune):
    """A Program of ``specs`` with random int8 weights; ``prune``: fraction of slots (conv:
    (ci, ky, kx) over all output channels; fc: input words) whose weights are all zero, or
    "all" for an all-zero layer."""
    layers = []
    for sp in specs:
        wt = rng.integers(-127, 128, size=sp["wshape"]).astype(np.int8)
        if prune == "all":
            wt[:] = 0
        elif prune:
            if sp["kind"] == "conv":
                kill = rng.random(sp["wshape"][1:]) < prune
                wt[:, kill] = 0
                # and some single output channels
                wt[rng.random(wt.shape) < prune / 4] = 0
            else:
                kill = rng.random(sp["wshape"][1]) < prune
                wt[:, kill] = 0
        co = sp["wshape"][0]
        layers.append(Layer(
            name=sp["name"], kind=sp["kind"], in_shape=sp["in_shape"],
            out_shape=sp["out_shape"], weight=wt, bias=np.zeros(co, np.int64),
            mult=np.ones(co, np.int64), shift=np.zeros(co, np.int64), in_scale=1.0,
            out_scale=1.0, kernel=sp.get("kernel", 1), stride=sp.get("stride", 1),
            padding=sp.get("padding", 0), pool=sp.get("pool", False)))
    return Program(cfg, layers, layers[0].in_shape, 1.0, 0)


def make_input(layer, cfg, rng, mode, eps=3):
    """An input tensor (Ci, H, W) and its tile flags (tile grid), flagged tiles zeroed."""
    shape = tuple(layer.in_shape)
    tile = nx.layer_tile(layer.kind, cfg.hw_tile)
    if mode == "zeros":
        x = np.zeros(shape, np.int64)
    elif mode == "dense":        # no value within ε of zero
        x = rng.integers(eps + 1, 128, size=shape) * rng.choice([-1, 1], size=shape)
    elif mode == "eps":          # only ±ε and ±(ε+1): flags decided by ε
        mag = np.where(rng.random(shape) < 0.85, eps, eps + 1)
        x = mag * rng.choice([-1, 1], size=shape)
    elif mode == "random":       # about half the tiles zero
        x = rng.integers(-128, 128, size=shape)
        grid = nx.tile_grid(shape, tile)
        keep = rng.random(grid) < 0.5
        x = nx.apply_flags(x[None], ~keep[None], tile)[0]
    else:
        raise ValueError(mode)
    flags = nx.tile_flags(x[None], tile, eps)[0]
    x = nx.apply_flags(x[None], flags[None], tile)[0]
    return x.astype(np.int64), flags


def weight_memory(image, cfg):
    """The weight banks (C, depth, R) as docs/ARCHITECTURE.md ("Weights") places them.

    fc rows are taken from ``pack_program``; conv words are placed here from the layer's
    weights, independently of ``pack_program`` (tests/test_hw_loader.py checks they agree).
    """
    R, C = cfg.rows, cfg.cols
    mem = np.array(image.weights, copy=True)
    for p in image.plans:
        d, layer = p.desc, p.layer
        if layer.kind != "conv":
            continue
        k, ci_n = d["kernel"], d["in_c"]
        wt = layer.weight
        for cog in range(d["cogs"]):
            for ci in range(ci_n):
                for ky in range(k):
                    for kx in range(k):
                        idx = d["wbase"] + ((cog * ci_n + ci) * k + ky) * k + kx
                        word = np.zeros(R, np.int8)
                        n = min(R, wt.shape[0] - cog * R)
                        word[:n] = wt[cog * R:cog * R + n, ci, ky, kx]
                        mem[idx % C, idx // C] = word
    return mem


# -- expected behaviour -------------------------------------------------------------------------

def expected(plan, image, cfg, x, phys_flags, skip, rows=None):
    """The slots the loader hands over, in order: (cog, y, xg, first, last, act, wgt).

    ``rows`` (a dict), if given, gets ``"cycles"``: what hw/compact_loader.py takes to issue
    them, row by row (conv: one ``ci`` and ``ky``; fc: a group), ``C`` cycles an fc slot, one a
    conv slot, and at least two a row."""
    row_cycles = 0
    d, layer = plan.desc, plan.layer
    R, C, NB = cfg.rows, cfg.cols, cfg.act_banks
    words = schedule.slot_words(plan, cfg)
    masks = image.masks
    wt = layer.weight.astype(np.int64)
    co = wt.shape[0]
    out = []

    compact = cfg.loader == "compact"

    def block(cog, y, xg, slots):
        live = [s for s in slots if s is not None]
        if compact and layer.kind == "fc":
            # hw/compact_loader.py: an fc slot goes out as C column slots, one weight a row
            live = [(tuple(a if i == j else 0 for i, a in enumerate(act)),
                     tuple(wgt[r * C + j] for r in range(R)))
                    for act, wgt in live for j in range(C)]
        if not live:
            out.append((cog, y, xg, 1, 1, (0,) * C, (0,) * (R if compact else R * C)))
            return
        for i, (act, wgt) in enumerate(live):
            out.append((cog, y, xg, int(i == 0), int(i == len(live) - 1), act, wgt))

    if layer.kind == "conv":
        k, s, p = d["kernel"], d["stride"], d["pad"]
        ci_n, hi, wi = layer.in_shape
        if d["pool"]:
            order = [(py * 2 + t, xg) for py in range(d["rows"] // 2) for xg in range(d["xgs"])
                     for t in (0, 1)]
        else:
            order = [(y, xg) for y in range(d["rows"]) for xg in range(d["xgs"])]
        for cog in range(d["cogs"]):
            for y, xg in order:
                slots = []
                for ci in range(ci_n):
                    mword = masks[d["mbase"] + cog * d["groups"] + ci]
                    for ky in range(k):
                        for kx in range(k):
                            wds = words[y, xg, ci, ky, kx]
                            wds = wds[wds >= 0]
                            sk = skip and (bool(phys_flags[wds].all())
                                           or (mword >> (ky * k + kx)) & 1)
                            if sk:
                                slots.append(None)
                                continue
                            iy = y * s + ky - p
                            act = []
                            for j in range(C):
                                ix = (xg * C + j) * s + kx - p
                                ok = 0 <= iy < hi and 0 <= ix < wi
                                act.append(int(x[ci, iy, ix]) if ok else 0)
                            wgt = []
                            for r in range(R):
                                c = cog * R + r
                                v = int(wt[c, ci, ky, kx]) if c < co else 0
                                wgt += [v] * (1 if compact else C)
                            slots.append((tuple(act), tuple(wgt)))
                        row_cycles += max(2, sum(sl is not None for sl in slots[-k:]))
                block(cog, y, xg, slots)
    else:
        ci_n, h, w = layer.in_shape
        q = _cdiv(ci_n, C)
        nw = d["in_words"]
        for cog in range(d["cogs"]):
            slots = []
            for wd in range(nw):
                mword = masks[d["mbase"] + cog * d["groups"] + wd // NB]
                if skip and (phys_flags[words[wd, 0]] or (mword >> (wd % NB)) & 1):
                    slots.append(None)
                    continue
                pix, kq = divmod(wd, q)
                yy, xx = divmod(pix, w)
                act, wgt = [], [0] * (R * C)
                for j in range(C):
                    c = kq * C + j
                    act.append(int(x[c, yy, xx]) if c < ci_n else 0)
                    for r in range(R):
                        o = cog * R + r
                        if c < ci_n and o < co:
                            wgt[r * C + j] = int(wt[o, (c * h + yy) * w + xx])
                slots.append((tuple(act), tuple(wgt)))
            row_cycles += sum(max(2, C * sum(sl is not None for sl in slots[g:g + NB]))
                              for g in range(0, len(slots), NB))
            block(cog, 0, 0, slots)
    if rows is not None:
        rows["cycles"] = row_cycles
    return out


# -- the bench ----------------------------------------------------------------------------------

class Bench:
    """Handles, memory models and the per-cycle loop."""

    def __init__(self, dut, cfg):
        self.dut, self.cfg = dut, cfg
        self.credits = PEArray.credits(cfg)     # as the core builds the loader
        C, NB, K = cfg.cols, cfg.act_banks, cfg.max_kernel
        g = lambda n: getattr(dut, n)  # noqa: E731
        self.act_addr = [g(f"act_addr__{b}") for b in range(NB)]
        self.act_en = [g(f"act_en__{b}") for b in range(NB)]
        self.act_data = [g(f"act_data__{b}") for b in range(NB)]
        self.flag_addr = [[g(f"flag_addr__{b}__{k}") for k in range(K)] for b in range(NB)]
        self.flag_data = [[g(f"flag_data__{b}__{k}") for k in range(K)] for b in range(NB)]
        self.wgt_addr = [g(f"wgt_addr__{j}") for j in range(C)]
        self.wgt_en = [g(f"wgt_en__{j}") for j in range(C)]
        self.wgt_data = [g(f"wgt_data__{j}") for j in range(C)]
        self.counters = {n: g(n) for n in ("issue_slots", "issue_slots_skipped",
                                           "act_bytes_read", "weight_bytes_read")}
        lay = slot_layout(cfg)
        self.fields = {}
        for name in ("act", "wgt", "first", "last"):
            f = lay[name]
            self.fields[name] = (f.offset, Shape.cast(f.shape).width)
        tag = lay["tag"]
        for name in ("cog", "y", "xg"):
            f = tag.shape[name]
            self.fields[name] = (tag.offset + f.offset, Shape.cast(f.shape).width)
        # memory outputs (held between enabled reads)
        self.o_act = [0] * NB
        self.o_flag = [[0] * K for _ in range(NB)]
        self.o_wgt = [0] * C
        self.o_mask = 0

    def load(self, words, flags, weights, masks):
        """words: (act_words, C) int8 by physical index; flags: (act_words,) bool;
        weights: (C, depth, R) int8; masks: list of ints."""
        C = self.cfg.cols
        self.m_act = [int.from_bytes(bytes(np.asarray(w, np.int8).view(np.uint8)), "little")
                      for w in words]
        self.m_flag = [int(f) for f in flags]
        self.m_wgt = [[int.from_bytes(bytes(np.asarray(wd, np.int8).view(np.uint8)), "little")
                       for wd in bank] for bank in weights]
        self.m_mask = list(masks)
        assert len(self.m_act[0].to_bytes(C, "little")) == C

    def _field(self, v, name):
        off, width = self.fields[name]
        return (v >> off) & ((1 << width) - 1)

    def decode(self, v):
        C = self.cfg.cols
        act = self._field(v, "act")
        wgt = self._field(v, "wgt")
        sb = lambda b: b - 256 if b >= 128 else b  # noqa: E731
        return (self._field(v, "cog"), self._field(v, "y"), self._field(v, "xg"),
                self._field(v, "first"), self._field(v, "last"),
                tuple(sb((act >> (8 * j)) & 255) for j in range(C)),
                tuple(sb((wgt >> (8 * i)) & 255) for i in range(self.fields["wgt"][1] // 8)))

    def drive_memories(self):
        cfg = self.cfg
        for b in range(cfg.act_banks):
            self.act_data[b].value = self.o_act[b]
            for k in range(cfg.max_kernel):
                self.flag_data[b][k].value = self.o_flag[b][k]
        for j in range(cfg.cols):
            self.wgt_data[j].value = self.o_wgt[j]
        self.dut.mask_data.value = self.o_mask

    def sample_memories(self, rng):
        """In ReadOnly: the reads of this cycle give the outputs of the next."""
        cfg, dut = self.cfg, self.dut
        NB = cfg.act_banks
        junk = lambda: int(rng.integers(0, 1 << 62))  # noqa: E731
        for b in range(NB):
            if int(self.act_en[b].value):
                a = int(self.act_addr[b].value) * NB + b
                assert a < len(self.m_act), f"act read out of range: bank {b} index {a}"
                self.o_act[b] = self.m_act[a]
        if int(dut.flag_en.value):
            for b in range(NB):
                for k in range(cfg.max_kernel):
                    a = int(self.flag_addr[b][k].value) * NB + b
                    self.o_flag[b][k] = self.m_flag[a] if a < len(self.m_flag) else junk() & 1
        for j in range(cfg.cols):
            if int(self.wgt_en[j].value):
                a = int(self.wgt_addr[j].value)
                assert a < len(self.m_wgt[j]), f"weight read out of range: bank {j} addr {a}"
                self.o_wgt[j] = self.m_wgt[j][a]
        if int(dut.mask_en.value):
            a = int(dut.mask_addr.value)
            self.o_mask = self.m_mask[a] if a < len(self.m_mask) else junk() & 0x1FF

    async def run(self, desc, skip, rng, lag=(0, 0), max_cycles=200_000):
        """Run one layer; return (slots handed over, counter sums, cycles start → done).

        The bench is the consumer of ``o``: it pulses ``block_done`` for each block ``1 + d``
        cycles after the block's last slot was on ``o``, ``d`` drawn from ``lag`` (inclusive),
        pulses in order and one per cycle at most; and it checks that never more than
        ``credits`` blocks are on their way (last slot seen, pulse not yet given), and that the
        compact loader sends nothing in the cycle after a last slot (hw/pe_array.py clears
        its accumulators then)."""
        dut = self.dut
        await FallingEdge(dut.clk)
        dut.desc.value = desc
        dut.skip.value = int(skip)
        dut.start.value = 1
        dut.block_done.value = 0
        self.drive_memories()
        await ReadOnly()
        self.sample_memories(rng)
        slots, sums = [], dict.fromkeys(self.counters, 0)
        cycles = 0
        due = []                # cycles at which the pending blocks' pulses are given
        after_last = False      # a last slot was on o in the previous cycle
        while True:
            await FallingEdge(dut.clk)
            cycles += 1
            dut.start.value = 0
            pulse = bool(due) and due[0] <= cycles
            if pulse:
                due.pop(0)
            dut.block_done.value = int(pulse)
            self.drive_memories()
            await ReadOnly()
            if int(dut.done.value) and not due:
                break
            assert cycles < max_cycles, "the loader did not finish"
            for n, h in self.counters.items():
                sums[n] += int(h.value)
            valid = int(dut.o__valid.value)
            assert not (valid and after_last and self.cfg.loader == "compact"), \
                f"a slot in the cycle after a block's last, cycle {cycles}"
            after_last = False
            if valid:
                slot = self.decode(int(dut.o__payload.value))
                after_last = bool(slot[4])
                slots.append(slot)
                if slot[4]:     # last
                    due.append(max([cycles + 1 + int(rng.integers(lag[0], lag[1] + 1))]
                                   + [d + 1 for d in due[-1:]]))
                    assert len(due) <= self.credits, \
                        f"{len(due)} blocks on their way, credits {self.credits}"
            self.sample_memories(rng)
        return slots, sums, cycles


def _phys_memories(plan, cfg, x, flags, rng):
    """Activation words and flags (physical index) of the layer input, junk elsewhere."""
    hwc = plan.layer.kind == "fc"
    shape = tuple(plan.layer.in_shape)
    C = cfg.cols
    words = rng.integers(-128, 128, size=(cfg.act_words, C)).astype(np.int8)
    idx = layout.tile_index(shape, hwc, cfg)
    words[idx.ravel()] = 0                 # tails of partial words are zero
    eidx, lane = layout.element_index(shape, hwc, cfg)
    words[eidx, lane] = x
    phys = rng.random(cfg.act_words) < 0.5  # junk flags outside the tensor
    phys[idx.ravel()] = flags.ravel()
    return words, phys


async def _setup(dut):
    cfg = _config()
    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    dut.start.value = 0
    dut.block_done.value = 0
    await FallingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    await FallingEdge(dut.clk)
    return cfg, Bench(dut, cfg)


def _log_perf(entry):
    path = os.environ.get("TILESKIP_LOADER_PERF")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(entry) + "\n")


async def check_layer(bench, cfg, prog, index, mode, skip, rng, lag=(0, 0), tag=""):
    image = layout.pack_program(prog)
    plan = image.plans[index]
    x, flags = make_input(plan.layer, cfg, rng, mode)
    words, phys = _phys_memories(plan, cfg, x, flags, rng)
    bench.load(words, phys, weight_memory(image, cfg), image.masks)
    got, sums, cycles = await bench.run(image.descriptors[index], skip, rng, lag)
    rows = {}
    want = expected(plan, image, cfg, x, phys, skip, rows)
    name = f"{plan.layer.name} mode={mode} skip={skip} {tag}"
    for i, (g, w) in enumerate(zip(got, want)):
        assert g == w, (f"{name}: slot {i} of {len(want)} differs:\n  got  {g}\n  want {w}")
    assert len(got) == len(want), f"{name}: {len(got)} slots handed over, {len(want)} expected"
    stats = schedule.layer_stats(plan, image, flags[None], cfg, skip=skip)
    for n in sums:
        assert sums[n] == stats[n], f"{name}: counter {n} = {sums[n]}, model {stats[n]}"
    entry = dict(layer=plan.layer.name, mode=mode, skip=skip, lag=lag, tag=tag,
                 cycles=cycles, slots=stats["issue_slots"],
                 issued=stats["issue_slots"] - stats["issue_slots_skipped"],
                 handed=len(got), blocks=sum(s[4] for s in got), groups=plan.groups,
                 row_cycles=rows["cycles"])
    _log_perf(entry)
    if lag == (0, 0):
        bench.dut._log.info("%s: %d cycles start→done, %d slots, %d issued, %d handed over",
                            name, cycles, entry["slots"], entry["issued"], len(got))
    return entry


def _specs(*names):
    by = {sp["name"]: sp for sp in LAYERS}
    return [by[n] for n in names]


SMALL = ("c3s1p1", "c3s2p1", "c1x1", "c3pool", "c3p0odd", "c2s2", "fc", "c3poolodd", "c3ci1",
         "fcvec")


@cocotb.test()
async def test_all_layers_dense_and_sparse(dut):
    """Every small layer, skipping off and on, every sparsity pattern, credits back late."""
    cfg, bench = await _setup(dut)
    rng = np.random.default_rng(1)
    prog = make_program(cfg, _specs(*SMALL), rng, prune=0.0)
    for i in range(len(SMALL)):
        for mode in ("dense", "random", "eps", "zeros"):
            for skip in (False, True):
                await check_layer(bench, cfg, prog, i, mode, skip, rng, lag=(0, 30))


@cocotb.test()
async def test_pruned_weights(dut):
    """Partly pruned and all-zero weights (weight-skip masks), with and without flags."""
    cfg, bench = await _setup(dut)
    rng = np.random.default_rng(2)
    for prune in (0.4, "all"):
        prog = make_program(cfg, _specs(*SMALL), rng, prune=prune)
        for i in range(len(SMALL)):
            for mode in ("dense", "random"):
                for skip in (False, True):
                    await check_layer(bench, cfg, prog, i, mode, skip, rng, lag=(5, 20),
                                      tag=f"prune={prune}")


@cocotb.test()
async def test_random_layers(dut):
    """Random shapes, seeds and credit lags; layers placed at nonzero weight/mask bases."""
    cfg, bench = await _setup(dut)
    rng = np.random.default_rng(int(os.environ.get("TILESKIP_LOADER_SEED", 3)))
    for trial in range(int(os.environ.get("TILESKIP_LOADER_TRIALS", 6))):
        specs = []
        for n in range(3):
            k = int(rng.integers(1, cfg.max_kernel + 1))
            s = int(rng.integers(1, cfg.max_stride + 1))
            p = int(rng.integers(0, k))
            h = int(rng.integers(k, 9))
            w = int(rng.integers(k, 12))
            ci = int(rng.integers(1, 7))
            co = int(rng.integers(1, 10))
            pool = bool(rng.random() < 0.3) and (h + 2 * p - k) // s + 1 >= 2
            if rng.random() < 0.25:
                specs.append(_fc(f"rfc{trial}_{n}", ci, int(rng.integers(1, 4)),
                                 int(rng.integers(1, 4)), co))
            else:
                specs.append(_conv(f"r{trial}_{n}", ci, h, w, co, k, s, p, pool=pool))
        prog = make_program(cfg, specs, rng, prune=float(rng.choice([0.0, 0.3])))
        for i in range(len(specs)):
            mode = str(rng.choice(["dense", "random", "eps", "zeros"]))
            await check_layer(bench, cfg, prog, i, mode, bool(rng.random() < 0.7), rng,
                              lag=[(0, 0), (0, 40), (10, 12)][int(rng.integers(3))],
                              tag=f"t{trial}")


@cocotb.test()
async def test_throughput(dut):
    """Cycles from start to done against slots, with credits returned at once."""
    cfg, bench = await _setup(dut)
    rng = np.random.default_rng(4)
    names = ("perf", "perf1x1", "perffc", "c3s1p1", "fc")
    prog = make_program(cfg, _specs(*names), rng, prune=0.0)
    for i, name in enumerate(names):
        res = {}
        for mode in ("dense", "random", "zeros"):
            for skip in (False, True):
                res[mode, skip] = await check_layer(bench, cfg, prog, i, mode, skip, rng,
                                                    tag="perf")
        dense = res["dense", False]
        # skipping off: one slot per cycle, block boundaries without bubbles (plus the
        # pipeline's latency, hw/loader.py "Timing"); the compact loader: row by row, at
        # least two cycles a row, C cycles an fc slot, a cycle between blocks (a skipped slot
        # costs nothing, a row with fewer than two issued slots two cycles)
        if cfg.loader == "compact":
            bound = {key: r["row_cycles"] + r["blocks"] + 18 for key, r in res.items()}
        else:
            bound = {key: r["slots"] + 18 for key, r in res.items()}
        assert dense["cycles"] <= bound["dense", False], dense
        for mode in ("dense", "random", "zeros"):
            off, on = res[mode, False], res[mode, True]
            assert off["cycles"] <= bound[mode, False], off
            # skipping never costs cycles
            assert on["cycles"] <= off["cycles"] + 2, (off, on)
        if cfg.loader == "compact":
            for mode in ("random", "zeros"):
                assert res[mode, True]["cycles"] <= bound[mode, True], res[mode, True]
            continue
        rnd_off, rnd_on = res["random", False], res["random", True]
        skipped = rnd_on["slots"] - rnd_on["issued"]
        if name in ("perf",) and skipped:
            drop = (rnd_off["cycles"] - rnd_on["cycles"]) / skipped
            assert drop >= 0.95, (name, drop, rnd_off, rnd_on)


@cocotb.test(skip="TILESKIP_LOADER_PROGRAM" not in os.environ)
async def test_program(dut):
    """A saved Program (path in TILESKIP_LOADER_PROGRAM, built for this configuration) on the
    quantized inputs in TILESKIP_LOADER_INPUT (.npy, N×C×H×W): every layer's real input from the
    golden model, skipping off and on, slots and counters checked, cycles logged."""
    from sw import golden

    cfg, bench = await _setup(dut)
    prog = Program.load(os.environ["TILESKIP_LOADER_PROGRAM"])
    assert prog.config == cfg, "the program was compiled for another configuration"
    image = layout.pack_program(prog)
    wmem = weight_memory(image, cfg)
    rng = np.random.default_rng(0)
    xs = np.load(os.environ["TILESKIP_LOADER_INPUT"])
    for n in range(len(xs)):
        x = xs[n:n + 1].astype(np.int64)
        for i, (layer, plan) in enumerate(zip(prog.layers, image.plans)):
            y, flags = golden.layer_forward(layer, x, cfg.tile, prog.epsilon)
            tile = nx.layer_tile(layer.kind, cfg.tile)
            xin = nx.apply_flags(x.reshape((1,) + tuple(layer.in_shape)), flags, tile)[0]
            words, phys = _phys_memories(plan, cfg, xin, flags[0], rng)
            bench.load(words, phys, wmem, image.masks)
            res = {}
            for skip in (False, True):
                got, sums, cycles = await bench.run(image.descriptors[i], skip, rng)
                assert got == expected(plan, image, cfg, xin, phys, skip), (n, i, skip)
                stats = schedule.layer_stats(plan, image, flags, cfg, skip=skip)
                for k in sums:
                    assert sums[k] == stats[k], (n, i, skip, k, sums[k], stats[k])
                res[skip] = dict(cycles=cycles, slots=stats["issue_slots"],
                                 skipped=stats["issue_slots_skipped"])
            off, on = res[False], res[True]
            entry = dict(image=n, layer=i, desc=layer.describe(), slots=off["slots"],
                         skipped=on["skipped"], cycles_off=off["cycles"],
                         cycles_on=on["cycles"])
            _log_perf(entry)
            dut._log.info("%s", entry)
            x = y
