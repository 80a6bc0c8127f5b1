"""The host interface gateware (hw/host.py) against the protocol of sw/protocol.py, with a model
of the core's bus, in Amaranth's simulator."""

import struct

from amaranth.sim import Simulator

from hw.host import HostInterface
from sw import Config, layout
from sw import protocol as proto
from sw.layout import Region

CFG = Config(rows=4, cols=2, tile=(1, 1, 2), act_banks=4, out_words=2, max_channels=16,
             max_width=16, act_words=64, weight_words=64, mask_words=16, param_words=8,
             max_layers=4)
REGIONS = layout.region_map(CFG)


class BusModel:
    """The core's bus: memories as dicts; a run takes a few polls."""

    def __init__(self):
        self.mem = {r: {} for r in Region}
        self.runs = []
        self.busy_polls = 0
        self.writes = 0
        self.refuse_after = None     # refuse every memory write after this many

    def access(self, write, region, index, data):
        if write and region != Region.CTRL:
            self.writes += 1
            if self.refuse_after is not None and self.writes > self.refuse_after:
                return 0, True
        if write:
            if region == Region.CTRL:
                self.runs.append(data)
                self.busy_polls = 3
            else:
                self.mem[region][index] = data
            return 0, False
        if region == Region.CTRL:
            if index == 0:
                busy = self.busy_polls > 0
                self.busy_polls = max(0, self.busy_polls - 1)
                return (busy | (not busy) << 1 | 1234 << 8), False
            return (layout.HW_VERSION if index == 1 else
                    layout.config_words(CFG)[index - 2]), False
        return self.mem[region].get(index, 0), False


def run_exchange(wire_in, expect_frames, bus=None):
    """Feed bytes to the interface; return the reply bodies (and the bus model)."""
    dut = HostInterface(CFG)
    bus = bus or BusModel()
    replies = []

    async def until_taken(ctx, ready):
        """Wait for the clock edge at which ``ready`` is high (the transfer happens there)."""
        while True:
            _, _, taken = await ctx.tick().sample(ready)
            if taken:
                return

    async def host(ctx):
        for b in wire_in:
            ctx.set(dut.rx.valid, 1)
            ctx.set(dut.rx.payload, b)
            await until_taken(ctx, dut.rx.ready)
        ctx.set(dut.rx.valid, 0)

    async def core(ctx):
        # Like hw.core.Core: a command is taken when no response is pending or the pending one
        # is being taken; its response is offered from the next cycle on.
        p = dut.cmd.payload
        pending = None
        while True:
            ctx.set(dut.rsp.valid, pending is not None)
            if pending is not None:
                ctx.set(dut.rsp.payload.data, pending[0])
                ctx.set(dut.rsp.payload.error, pending[1])
            ctx.set(dut.cmd.ready, pending is None or ctx.get(dut.rsp.ready))
            _, _, cv, cr, rv, rr, w, r, i, d = await ctx.tick().sample(
                dut.cmd.valid, dut.cmd.ready, dut.rsp.valid, dut.rsp.ready,
                p.write, p.region, p.index, p.data)
            if rv and rr:
                pending = None
            if cv and cr:
                pending = bus.access(w, Region(r), i, d)

    async def sink(ctx):
        deframer = proto.Deframer()
        ctx.set(dut.tx.ready, 1)
        for _ in range(100_000):        # a hung interface fails instead of running forever
            if len(replies) == expect_frames:
                break
            valid, payload = ctx.get(dut.tx.valid), ctx.get(dut.tx.payload)
            await ctx.tick()
            if valid:
                replies.extend(deframer.feed([payload]))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(host, background=True)
    sim.add_testbench(core, background=True)
    sim.add_testbench(sink)
    sim.run()
    assert len(replies) == expect_frames, replies
    return [proto.parse_reply(r) for r in replies], bus


def _write(region, index, words, seq=1):
    wb = proto.word_bytes(REGIONS[region][0]) if region in REGIONS else 1
    payload = struct.pack("<BIH", region, index, len(words))
    payload += b"".join(w.to_bytes(wb, "little") for w in words)
    return proto.command(proto.Op.WRITE, seq, payload)


def _read(region, index, count, seq=2):
    return proto.command(proto.Op.READ, seq, struct.pack("<BIH", region, index, count))


def test_info_write_read_run():
    wire = (proto.command(proto.Op.INFO, 9)
            + _write(Region.WEIGHT, 3, [0x7E7D0102, 0xFFFFFFFF], seq=10)
            + _read(Region.WEIGHT, 3, 2, seq=11)
            + proto.command(proto.Op.RUN, 12, struct.pack("<I", layout.run_word(2, True, 3))))
    (info, wr, rd, run), bus = run_exchange(wire, 4)
    assert info[:2] == (proto.Status.OK, 9)
    words = struct.unpack(f"<{len(info[2]) // 4}I", info[2])
    assert list(words) == [layout.HW_VERSION] + layout.config_words(CFG)
    assert wr == (proto.Status.OK, 10, b"")
    assert rd[:2] == (proto.Status.OK, 11)
    assert rd[2] == (0x7E7D0102).to_bytes(4, "little") + (0xFFFFFFFF).to_bytes(4, "little")
    assert bus.mem[Region.WEIGHT] == {3: 0x7E7D0102, 4: 0xFFFFFFFF}
    assert run[:2] == (proto.Status.OK, 12)
    status = layout.unpack_status(int.from_bytes(run[2], "little"))
    assert status["busy"] == 0 and status["done"] == 1 and status["cycles"] == 1234
    assert bus.runs == [layout.run_word(2, True, 3)]


BAD_FRAMES = [
    (b"\x7e\x01\x02\x03\x7e", proto.Status.BAD_LENGTH),                      # too short
    (b"\x7egarbage bytes\x7e", proto.Status.BAD_CRC),
    (_write(Region.MASK, 0, [1])[:-3] + b"\x7e", proto.Status.BAD_CRC),    # truncated
    (proto.command(0x55, 3), proto.Status.UNKNOWN_OP),
    (_write(Region.COUNT, 0, [1]), proto.Status.BAD_REGION),               # read only
    (_write(14, 0, [1]), proto.Status.BAD_REGION),
    (_write(Region.MASK, CFG.mask_words - 1, [1, 2]), proto.Status.OUT_OF_RANGE),
    (_write(Region.FLAG0, 0, [1, 2]), proto.Status.OUT_OF_RANGE),            # 2 > 1 bit
    (_write(Region.MASK, 0, [1, 1 << REGIONS[Region.MASK][0], 1]),           # bit above
     proto.Status.OUT_OF_RANGE),
    (proto.command(proto.Op.READ, 4, b"\x00"), proto.Status.BAD_ARGUMENT),
    (proto.command(proto.Op.STATUS, 4, b"\x00"), proto.Status.BAD_ARGUMENT),
]


def test_errors_change_nothing_and_the_next_frame_works():
    # Every bad frame is followed by a good one, with no reset in between.
    wire = b"".join(bad + _read(Region.MASK, 0, 2, seq=70 + i)
                    for i, (bad, _) in enumerate(BAD_FRAMES))
    replies, bus = run_exchange(wire, 2 * len(BAD_FRAMES), _preloaded())
    for i, (_, status) in enumerate(BAD_FRAMES):
        err, ok = replies[2 * i], replies[2 * i + 1]
        assert err[0] == status, (i, err)
        assert ok == (proto.Status.OK, 70 + i, bytes([5, 0, 6, 0]))
    assert bus.mem[Region.MASK] == {0: 5, 1: 6}
    assert bus.mem[Region.FLAG0] == {}


def test_a_refused_word_ends_the_write():
    # The core refuses writes while it runs: the words before the refusal are written, the reply
    # says BUSY, and the next frame works. Words go out back to back, so the word after the
    # refused one is already offered as the refusal comes back (the running core refuses it
    # too); no further word is sent.
    bus = _preloaded()
    bus.refuse_after = 2
    wire = (_write(Region.FLAG0, 0, [1, 0, 1, 1, 0], seq=20)      # one word per cycle
            + _read(Region.MASK, 0, 2, seq=21))
    (err, ok), bus = run_exchange(wire, 2, bus)
    assert err == (proto.Status.BUSY, 20, b"")
    assert bus.mem[Region.FLAG0] == {0: 1, 1: 0}
    assert bus.writes == 4         # two written, two refused, none after
    assert ok == (proto.Status.OK, 21, bytes([5, 0, 6, 0]))


def _preloaded():
    bus = BusModel()
    bus.mem[Region.MASK] = {0: 5, 1: 6}
    return bus


def test_oversize_frame_is_refused():
    body = struct.pack("<BBH", proto.Op.WRITE, 5, 2000) + bytes(2000)
    wire = proto.stuff(body + struct.pack("<H", proto.crc16(body)))
    (err, ok), _ = run_exchange(wire + proto.command(proto.Op.STATUS, 6), 2)
    assert err[0] == proto.Status.TOO_LONG
    assert ok[:2] == (proto.Status.OK, 6)


def test_crc_step_equals_the_software_crc():
    import random

    from amaranth.hdl import Module, Signal

    from hw.host import crc16_step

    m = Module()
    c, b, o = Signal(16), Signal(8), Signal(16)
    m.d.comb += o.eq(crc16_step(c, b))
    sim = Simulator(m)

    async def bench(ctx):
        rng = random.Random(1)
        for cv, bv in [(0xFFFF, 0), (0, 0xFF), (0x8000, 0x80)] + [
                (rng.randrange(1 << 16), rng.randrange(256)) for _ in range(300)]:
            ctx.set(c, cv)
            ctx.set(b, bv)
            assert ctx.get(o) == proto.crc16(bytes([bv]), cv), (cv, bv)

    sim.add_testbench(bench)
    sim.run()
