"""The memory layout and the schedule model, against plain loop-by-loop enumerations written
from docs/ARCHITECTURE.md."""

import re

import numpy as np
import pytest
import torch
from hypothesis import given, reject, settings
from hypothesis import strategies as st
from torch import nn

from sw import Config, compile_model, layout
from sw import numerics as nx
from sw.golden import forward
from sw.program import Program
from sw.runtime import quantize_input
from sw.schedule import network_stats

SMALL = Config(rows=4, cols=2, tile=(1, 1, 2), act_banks=4, out_words=2, max_channels=16,
               max_width=16, act_words=512, weight_words=4096, mask_words=512, param_words=32)


@given(st.integers(1, 9), st.integers(1, 7), st.integers(1, 11), st.booleans(),
       st.sampled_from([SMALL, Config()]))
def test_layout_is_injective_and_bank_conflict_free(ch, h, w, hwc, cfg):
    idx, lane = layout.element_index((ch, h, w), hwc, cfg)
    keys = idx * cfg.cols + lane
    assert len(np.unique(keys)) == keys.size          # no two elements share a byte
    NB = cfg.act_banks
    if hwc:
        return
    # A row's consecutive words lie in distinct banks …
    words = layout.tile_index((ch, h, w), False, cfg)  # (ch, h, P)
    for c in range(ch):
        for y in range(h):
            row = words[c, y]
            for s in range(len(row)):
                win = row[s:s + NB]
                assert len(set(win % NB)) == len(win)
    # … and so are the words of NB consecutive channels at one position.
    for c0 in range(0, ch):
        group = words[c0:c0 + min(NB, cfg.out_words), :, :]
        banks = group % NB
        for y in range(h):
            for xw in range(words.shape[2]):
                assert len(set(banks[:, y, xw])) == group.shape[0]


def _brute_layer(plan, phys_flags, cfg, skip):
    """Slot by slot, as the architecture document states it; pruned weights straight from the
    layer's weight tensor."""
    d, R, C, NB = plan.desc, cfg.rows, cfg.cols, cfg.act_banks
    wt = plan.layer.weight
    issued = skipped = act = wbytes = 0
    if plan.layer.kind == "conv":
        k, s, p = d["kernel"], d["stride"], d["pad"]
        for cog in range(d["cogs"]):
            for y in range(d["rows"]):
                for xg in range(d["xgs"]):
                    for ci in range(d["in_c"]):
                        for ky in range(k):
                            for kx in range(k):
                                iy = y * s + ky - p
                                words = set()
                                for j in range(C):
                                    ix = (xg * C + j) * s + kx - p
                                    if 0 <= iy < d["in_h"] and 0 <= ix < d["in_w"]:
                                        a = ci * d["in_s"] + iy * d["in_p"] + ix // C
                                        words.add((a // NB) * NB + (a + ci) % NB)
                                dense = len(words) * C
                                pruned = not wt[cog * R:cog * R + R, ci, ky, kx].any()
                                skip_it = skip and (all(phys_flags[w] for w in words)
                                                    or pruned)
                                if skip_it:
                                    skipped += 1
                                else:
                                    issued += 1
                                    act += dense
                                    wbytes += R
        return issued, skipped, act, wbytes
    ch, h, wd = plan.layer.in_shape
    q = -(-ch // C)
    for cog in range(d["cogs"]):
        for w in range(d["in_words"]):
            pix, k = divmod(w, q)
            y, x = divmod(pix, wd)
            feats = [c * h * wd + y * wd + x for c in range(k * C, min(k * C + C, ch))]
            pruned = not wt[cog * R:cog * R + R][:, feats].any()
            if skip and (phys_flags[w] or pruned):
                skipped += 1
            else:
                issued += 1
                act += C
                wbytes += R * C
    return issued, skipped, act, wbytes


def _random_program(seed, cfg):
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    ci = int(rng.integers(1, 6))
    co = int(rng.integers(1, 10))
    k = int(rng.choice([1, 3]))
    stride = int(rng.integers(1, 3))
    pad = int(rng.integers(0, 2)) if k == 3 else 0
    size = int(rng.integers(max(k, 3), 12))
    pool = bool(rng.integers(0, 2)) and size >= 4
    conv = nn.Conv2d(ci, co, k, stride=stride, padding=pad)
    with torch.no_grad():
        conv.weight[rng.random(co) < 0.3] = 0          # pruned output channels
        conv.weight[:, rng.random(ci) < 0.3] = 0       # pruned input channels
    layers = [conv, nn.ReLU()]
    ho = (size + 2 * pad - k) // stride + 1
    if pool and ho >= 2:
        layers.append(nn.MaxPool2d(2))
        ho //= 2
    fc = nn.Linear(co * ho * ho, int(rng.integers(1, 9)))
    with torch.no_grad():
        fc.weight[:, rng.random(fc.in_features) < 0.4] = 0
    model = nn.Sequential(*layers, nn.Flatten(), fc).eval()
    x = torch.relu(torch.randn(3, ci, size, size) - 0.5)
    x[0] = 0
    return compile_model(model, x, epsilon=int(rng.integers(0, 4)), config=cfg), x


@settings(deadline=None, max_examples=30)
@given(st.integers(0, 10 ** 6), st.booleans())
def test_schedule_matches_slot_by_slot_enumeration(seed, skip):
    program, x = _random_program(seed, SMALL)
    xq = quantize_input(program, x)
    _, flags = forward(program, xq)
    try:
        image = layout.pack_program(program)
    except layout.LayoutError:
        reject()        # the random network does not fit SMALL's buffers
    stats = network_stats(program, flags, skip=skip)
    for plan, f, st_ in zip(image.plans, flags, stats):
        hwc = plan.layer.kind == "fc"
        tiles = layout.tile_index(tuple(plan.layer.in_shape), hwc, SMALL)
        totals = np.zeros(4, dtype=np.int64)
        for n in range(len(f)):
            phys = np.zeros(SMALL.act_words, dtype=bool)
            phys[tiles.ravel()] = f[n].ravel()
            totals += _brute_layer(plan, phys, SMALL, skip)
        issued, skipped, act, wbytes = totals
        assert st_["issue_slots"] == issued + skipped
        assert st_["issue_slots_skipped"] == skipped
        assert st_["act_bytes_read"] == act
        assert st_["weight_bytes_read"] == wbytes
        if not skip:
            assert st_["act_bytes_dense"] == act and skipped == 0


def test_pack_input_round_trip_and_flags():
    program, x = _random_program(7, SMALL)
    xq = quantize_input(program, x)
    words, flags, counts = layout.pack_input(program, xq)
    first = program.layers[0]
    tile = nx.layer_tile(first.kind, SMALL.tile)
    f = nx.tile_flags(xq, tile, program.epsilon)
    expect = nx.apply_flags(xq, f, tile)
    idx, lane = layout.element_index(tuple(first.in_shape), False, SMALL)
    assert np.array_equal(words[:, idx, lane], expect)
    assert np.array_equal(counts, f.reshape(len(f), -1).sum(1))
    assert flags.sum() == f.sum()
    # Flagged words are stored as zeros.
    assert not words[flags].any()


@pytest.mark.parametrize("cfg", [SMALL, SMALL.replace(rows=12, max_channels=32)],
                         ids=["2 steps", "6 steps"])
def test_parameter_rows_hold_each_steps_channels(cfg):
    """Row (pbase + cog)·S + step holds channels cog·R + step·OW + w in lane w (S = R/OW
    rounded up to a power of two: 2 and 8 here); every other row and lane is zero."""
    R, OW = cfg.rows, cfg.out_words
    S = {2: 2, 6: 8}[R // OW]
    assert layout.param_steps(cfg) == S
    program, _ = _random_program(11, cfg)
    image = layout.pack_program(program)
    assert len(image.params) == sum(p.desc["cogs"] for p in image.plans) * S
    assert layout.memory_map(cfg)[layout.Region.PARAM] == (OW * 53, cfg.param_words * S)
    lanes = {}
    for row, word in enumerate(image.params):
        for w in range(OW):
            lanes[row, w] = layout.unpack_fields(layout.PARAM_FIELDS, word >> (w * 53))
    expected = {}
    for plan in image.plans:
        layer = plan.layer
        for c in range(layer.weight.shape[0]):
            row = (plan.desc["pbase"] + c // R) * S + c % R // OW
            expected[row, c % R % OW] = {"bias": int(layer.bias[c]) & 0xFFFFFFFF,
                                         "mult": int(layer.mult[c]), "shift": int(layer.shift[c])}
    zero = {"bias": 0, "mult": 0, "shift": 0}
    assert {k: expected.get(k, zero) for k in lanes} == lanes
    assert len(expected) == sum(p.layer.weight.shape[0] for p in image.plans)


def test_layout_refuses_what_does_not_fit():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1)).eval()
    program = compile_model(model, torch.rand(1, 1, 40, 40), config=SMALL)
    with pytest.raises(layout.LayoutError, match=r"layer 0 \('0'\): input height 40 exceed"):
        layout.plan(program)
    tiny = SMALL.replace(act_words=64)
    program = compile_model(model, torch.rand(1, 1, 12, 12), config=tiny)
    with pytest.raises(layout.LayoutError, match="activation words"):
        layout.plan(program)


def test_layout_refuses_layers_beyond_the_accumulators():
    program, _ = _random_program(4, SMALL)
    bounds = [nx.accumulator_bound(lay.weight, lay.bias) for lay in program.layers]
    worst = int(np.argmax(bounds))
    bits = bounds[worst].bit_length() + 1        # the narrowest signed width that holds it
    assert bits - 1 >= 16                        # Config's narrowest
    for acc_bits, fits in ((bits, True), (bits - 1, False)):
        narrow = Program(SMALL.replace(acc_bits=acc_bits), program.layers, program.input_shape,
                         program.input_scale, program.epsilon)
        if fits:
            layout.plan(narrow)
        else:       # the first layer beyond them is named
            i = next(i for i, b in enumerate(bounds) if b.bit_length() + 1 > acc_bits)
            with pytest.raises(layout.LayoutError,
                               match=rf"layer {i} \('{program.layers[i].name}'\): its "
                                     rf"accumulators can reach {bounds[i]} .* {acc_bits}-bit"):
                layout.plan(narrow)


def test_layout_refuses_layers_beyond_the_counters():
    """A layer that could count past Config.counter_bits is refused, naming it; a width it is
    accepted at holds what it counts (skipping off: every slot)."""
    model = nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)).eval()
    x = torch.rand(1, 4, 16, 16)
    program = compile_model(model, x, config=SMALL.replace(counter_bits=18))
    _, flags = forward(program, quantize_input(program, x))
    stats = network_stats(program, flags, skip=False)[0]
    counts = [stats[k] for k in ("issue_slots", "act_bytes_read", "weight_bytes_read")]
    assert 2 ** 16 <= max(counts) < 2 ** 18     # 16-bit counters would not hold them
    for bits in range(16, 33):
        narrow = Program(SMALL.replace(counter_bits=bits), program.layers, program.input_shape,
                         program.input_scale, program.epsilon)
        try:
            layout.plan(narrow)
        except layout.LayoutError as e:
            assert re.fullmatch(rf"layer 0 \('0'\): its counters could reach \d+ "
                                rf"\({stats['issue_slots']} slots\), beyond the "
                                rf"accelerator's {bits}-bit counters", str(e)), str(e)
        else:
            assert max(counts) < 2 ** bits, bits
    with pytest.raises(layout.LayoutError, match="16-bit counters"):
        layout.plan(Program(SMALL.replace(counter_bits=16), program.layers, program.input_shape,
                            program.input_scale, program.epsilon))


def test_binary_mode_is_refused_until_the_datapath_has_it():
    program, _ = _random_program(3, SMALL)
    program.layers[0].mode = "binary"
    with pytest.raises(layout.LayoutError, match="mode 'binary' is not supported"):
        layout.pack_program(program)
