"""The "sim" backend: the Verilated Top (host interface + core) behind sw/sim.py's Device.

One simulator build for the small configuration (module-scoped); the protocol is abused through
the Device's raw transport without any reset in between, and a compiled network must still give
the golden backend's outputs afterwards.
"""

import struct

import numpy as np
import pytest
import torch
from torch import nn

from sw import Accelerator, Config, compile_model, layout
from sw import protocol as proto
from sw.layout import Region
from sw.protocol import Op, Status
from sw.runtime import STAT_KEYS, outputs_sha256

SMALL = Config(rows=4, cols=2, tile=(1, 1, 2), act_banks=4, out_words=2, max_channels=16,
               max_width=16, act_words=256, weight_words=512, mask_words=64, param_words=16,
               max_layers=4)
REGIONS = layout.region_map(SMALL)


@pytest.fixture(scope="module")
def simproc():
    from sw.sim import SimProcess, build_sim
    proc = SimProcess(build_sim(SMALL), timeout=20.0, run_timeout=60.0)
    yield proc
    assert proc.close() == 0, proc.stderr()


@pytest.fixture(scope="module")
def tiny():
    """A small conv–pool–conv(stride 2)–fc network with pruned weights and zero input tiles."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 3 * 3, 10)).eval()
    with torch.no_grad():
        model[0].weight[1, :, 0, :] = 0           # a zero kernel row
        model[3].weight[:, 2] = 0                 # input channel 2: a skipped group
        model[6].weight[:, 8:16] = 0              # fc words with zero weights
    x = torch.rand(12, 1, 10, 10)
    x[:, :, :3] = 0                               # zero tiles in the input
    x[:, :, :, 7:] = 0
    program = compile_model(model, x, config=SMALL)
    return program, x


def _raw(dev, wire, n):
    dev.transport.write(wire)
    return [dev.read_reply() for _ in range(n)]


def _body(op, seq, payload, length=None, crc=None):
    body = struct.pack("<BBH", op, seq, len(payload) if length is None else length) + payload
    return body + struct.pack("<H", proto.crc16(body) if crc is None else crc)


def _write_payload(region, index, words):
    wb = proto.word_bytes(REGIONS[region][0]) if region in REGIONS else 1
    return (struct.pack("<BIH", region, index, len(words))
            + b"".join(w.to_bytes(wb, "little") for w in words))


def test_info_reports_the_configuration(simproc):
    version, cfg = simproc.device.info()
    assert version == layout.HW_VERSION
    assert layout.config_words(cfg) == layout.config_words(SMALL)


def test_write_read_every_writable_region(simproc):
    dev = simproc.device
    rng = np.random.default_rng(1)
    for region in (Region.ACT1, Region.FLAG1, Region.WEIGHT, Region.MASK, Region.PARAM,
                   Region.DESC):
        width, depth = REGIONS[region]
        n = min(depth, 300)        # more than one frame for the wide regions
        words = [int.from_bytes(rng.bytes(proto.word_bytes(width)), "little")
                 & ((1 << width) - 1) for _ in range(n)]
        dev.write(region, depth - n, words)
        if region in layout.CHUNKED:
            # A row is 2**k words; the bits past the row's width are not stored.
            row_width = layout.memory_map(SMALL)[region][0]
            k = layout.chunk_shift(row_width)
            words = [w & ((1 << max(0, min(32, row_width - 32 * (i % (1 << k))))) - 1)
                     for i, w in enumerate(words, depth - n)]
        assert dev.read(region, depth - n, n) == words, region.name


def test_the_two_buffers_are_distinct(simproc):
    """Each bank holds both ping-pong buffers (the buffer is its memory's top address bit):
    words written to the same indices of the two buffers read back each as written, for
    activations and flags."""
    dev = simproc.device
    rng = np.random.default_rng(2)
    for a, b in ((Region.ACT0, Region.ACT1), (Region.FLAG0, Region.FLAG1)):
        width, depth = REGIONS[a]
        n = min(depth, 16)
        ones = (1 << width) - 1
        words = [int.from_bytes(rng.bytes(proto.word_bytes(width)), "little") & ones
                 for _ in range(n)]
        for start in (0, depth - n):
            dev.write(a, start, words)
            dev.write(b, start, [w ^ ones for w in words])
            assert dev.read(a, start, n) == words, a.name
            assert dev.read(b, start, n) == [w ^ ones for w in words], b.name


def test_protocol_errors_change_nothing_and_do_not_need_a_reset(simproc, tiny):
    dev = simproc.device
    dev.drain()
    weights = list(range(1, 17))
    dev.write(Region.WEIGHT, 8, weights)
    flags = [1, 0, 1, 1]
    dev.write(Region.FLAG0, 4, flags)

    def ok_after(replies, *expect):
        """Each bad input's reply, then a valid command must still work."""
        got = [(r[0], r[1]) for r in replies]
        assert got == list(expect), got
        assert dev.read(Region.WEIGHT, 8, 16) == weights
        assert dev.read(Region.FLAG0, 4, 4) == flags
        assert dev.status()["busy"] == 0

    wr = _write_payload(Region.WEIGHT, 8, [0xDEADBEEF] * 4)
    flag, esc = proto.FLAG, proto.ESC
    # Garbage between frames: a frame too short to have a seq, then one with a bad checksum.
    ok_after(_raw(dev, bytes([flag, 0x55, flag]), 1), (Status.BAD_LENGTH, 0))
    ok_after(_raw(dev, bytes([flag, 0x01, 0x33, 0x10, 0x20, 0x30, 0x40, 0x50, flag]), 1),
             (Status.BAD_CRC, 0x33))
    # Bytes after a closing flag open a frame; the next command's flag ends it.
    ok_after(_raw(dev, bytes(range(1, 40)) + proto.command(Op.STATUS, 7), 2),
             (Status.BAD_CRC, 2), (Status.OK, 7))
    # A truncated WRITE (its tail lost), followed at once by the next frame.
    cut = proto.command(Op.WRITE, 21, wr)[:-6]
    ok_after(_raw(dev, cut + proto.command(Op.STATUS, 22), 2),
             (Status.BAD_CRC, 21), (Status.OK, 22))
    # A dangling escape before the flag.
    ok_after(_raw(dev, bytes([flag, 0x05, 0x09, esc, flag]), 1), (Status.BAD_LENGTH, 0x09))
    # Bad checksum on an otherwise valid WRITE: nothing written.
    ok_after(_raw(dev, proto.stuff(_body(Op.WRITE, 23, wr, crc=0x1234)), 1),
             (Status.BAD_CRC, 23))
    # Unknown operations (valid checksum).
    ok_after(_raw(dev, proto.command(0x42, 24) + proto.command(0x00, 25, b"xy"), 2),
             (Status.UNKNOWN_OP, 24), (Status.UNKNOWN_OP, 25))
    # Length field above MAX_PAYLOAD, and a frame longer than any buffer.
    ok_after(_raw(dev, proto.stuff(_body(Op.WRITE, 26, wr, length=proto.MAX_PAYLOAD + 1)), 1),
             (Status.TOO_LONG, 26))
    huge = _body(Op.WRITE, 27, _write_payload(Region.WEIGHT, 0, [7] * 300), length=5)
    ok_after(_raw(dev, proto.stuff(huge), 1), (Status.TOO_LONG, 27))
    # Length field disagreeing with the frame.
    ok_after(_raw(dev, proto.stuff(_body(Op.WRITE, 28, wr, length=len(wr) - 1)), 1),
             (Status.BAD_LENGTH, 28))
    # Wrong payload sizes for the operation.
    bad_args = [proto.command(Op.INFO, 30, b"\0"), proto.command(Op.STATUS, 31, b"\0\0"),
                proto.command(Op.RUN, 32, b"\1\0\0"), proto.command(Op.READ, 33, b"\4\0"),
                proto.command(Op.WRITE, 34, wr[:-1]),
                proto.command(Op.READ, 35, struct.pack("<BIH", Region.WEIGHT, 0, 1) + b"\0")]
    ok_after(_raw(dev, b"".join(bad_args), len(bad_args)),
             *[(Status.BAD_ARGUMENT, s) for s in range(30, 36)])
    # Regions: unknown, read-only.
    bad_regions = [proto.command(Op.READ, 40, struct.pack("<BIH", 10, 0, 1)),
                   proto.command(Op.READ, 41, struct.pack("<BIH", 0xFF, 0, 1)),
                   proto.command(Op.WRITE, 42, _write_payload(Region.COUNT, 0, [1])),
                   proto.command(Op.WRITE, 43, _write_payload(Region.CTRL, 0, [1]))]
    ok_after(_raw(dev, b"".join(bad_regions), 4),
             *[(Status.BAD_REGION, s) for s in range(40, 44)])
    # Out of range: index, index + count, excess bits in a word (not even the valid words
    # before it are written).
    depth = REGIONS[Region.WEIGHT][1]
    wb = proto.word_bytes(REGIONS[Region.WEIGHT][0])
    per = proto.MAX_PAYLOAD // wb
    ranges = [proto.command(Op.READ, 50, struct.pack("<BIH", Region.WEIGHT, depth, 1)),
              proto.command(Op.READ, 51, struct.pack("<BIH", Region.WEIGHT, depth - 1, 2)),
              proto.command(Op.READ, 52, struct.pack("<BIH", Region.WEIGHT, 0xFFFFFFFF, 1)),
              proto.command(Op.WRITE, 53, _write_payload(Region.WEIGHT, depth - 1, [1, 2])),
              proto.command(Op.WRITE, 54, _write_payload(Region.FLAG0, 4, [0, 0, 2])),
              proto.command(Op.WRITE, 55, _write_payload(Region.MASK, 0,
                                                         [1 << REGIONS[Region.MASK][0]]))]
    ok_after(_raw(dev, b"".join(ranges), len(ranges)),
             *[(Status.OUT_OF_RANGE, s) for s in range(50, 56)])
    # A read whose reply would exceed MAX_PAYLOAD.
    ok_after(_raw(dev, proto.command(Op.READ, 56, struct.pack("<BIH", Region.WEIGHT, 0,
                                                              per + 1)), 1),
             (Status.TOO_LONG, 56))
    # Device raises with the status for its own commands; other seqs were skipped.
    with pytest.raises(proto.ProtocolError) as err:
        dev.read(Region.COUNT, REGIONS[Region.COUNT][1], 1)
    assert err.value.status == Status.OUT_OF_RANGE and "OUT_OF_RANGE" in str(err.value)

    # After all that, without a reset, a network gives the golden outputs.
    program, x = tiny
    sim = Accelerator("sim", device=dev).run(program, x)
    gold = Accelerator("golden").run(program, x)
    assert outputs_sha256(sim.raw) == outputs_sha256(gold.raw)


@pytest.mark.parametrize("skip", [True, False], ids=["skip", "noskip"])
@pytest.mark.parametrize("epsilon", [0, 3])
def test_network_matches_golden(simproc, tiny, skip, epsilon):
    program, x = tiny
    program = program.with_epsilon(epsilon)
    acc = Accelerator("sim", device=simproc.device)
    sim = acc.run(program, x, skip=skip)
    gold = Accelerator("golden").run(program, x, skip=skip)
    assert np.array_equal(sim.raw, gold.raw)
    assert outputs_sha256(sim.raw) == outputs_sha256(gold.raw)
    for layer_sim, layer_gold in zip(sim.stats["layers"], gold.stats["layers"]):
        for k in STAT_KEYS:
            if k == "busy_cycles":
                assert layer_sim[k] > 0
                assert layer_gold[k] is None
            else:
                assert layer_sim[k] == layer_gold[k], (layer_sim["name"], k)
    extra = sim.stats["extra"]["sim"]
    assert extra["cycles"] >= sim.stats["totals"]["busy_cycles"]
    assert extra["wall_s"] > 0 and extra["cycles_per_s"] > 0


def test_even_layer_count(simproc):
    """With an even number of layers the output lands in the input's buffer: each image's
    output is read back before the next input is written."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 10)).eval()
    x = torch.rand(5, 1, 6, 6)
    x[:, :, :2] = 0
    program = compile_model(model, x, config=SMALL)
    assert len(program.layers) % 2 == 0
    sim = Accelerator("sim", device=simproc.device).run(program, x)
    gold = Accelerator("golden").run(program, x)
    assert np.array_equal(sim.raw, gold.raw)
    for layer_sim, layer_gold in zip(sim.stats["layers"], gold.stats["layers"]):
        assert layer_sim["issue_slots"] == layer_gold["issue_slots"]


def test_own_simulators_share_a_batch(simproc, tiny):
    """Accelerator("sim", workers=3) builds (cached) and starts simulators of its own and splits
    the images between them: outputs in order and every counter as on one device."""
    # Fresh devices and one that has run other things: busy cycles too must be the same.
    program, x = tiny
    acc = Accelerator("sim", workers=3, progress=False)
    try:
        many = acc.run(program, x[:7])
        assert len(acc.backend._sims) == 3
    finally:
        acc.backend.close()
    one = Accelerator("sim", device=simproc.device)
    one.run(program, x[7:])
    one = one.run(program, x[:7])
    assert np.array_equal(many.raw, Accelerator("golden").run(program, x[:7]).raw)
    assert many.stats["layers"] == one.stats["layers"]
    assert many.stats["extra"]["sim"]["workers"] == 3
    assert many.stats["extra"]["sim"]["cycles"] == one.stats["extra"]["sim"]["cycles"]


def test_workers_must_be_positive_and_own_simulators(simproc):
    with pytest.raises(ValueError, match="workers must be a positive integer, not 0"):
        Accelerator("sim", workers=0)
    with pytest.raises(ValueError, match="a given device is one accelerator"):
        Accelerator("sim", workers=2, device=simproc.device)


def test_config_mismatch_is_refused(simproc, tiny):
    from sw.program import Program
    from sw.sim import SimBackend
    program, x = tiny
    wrong = Program(SMALL.replace(param_words=32), program.layers, program.input_shape,
                    program.input_scale, 0)
    with pytest.raises(proto.ProtocolError, match="param_words 32 vs 16"):
        SimBackend(device=simproc.device).run(wrong, layout_input(program, x[:1]), True)


def layout_input(program, x):
    from sw.runtime import quantize_input
    return quantize_input(program, x)
