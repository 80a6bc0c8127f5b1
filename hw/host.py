"""The host interface: the framed byte-stream protocol of ``sw/protocol.py`` in front of the
core's command/response bus.

A frame is received whole into a buffer (so that a frame failing any check changes nothing;
there are two, so the next frame arrives while one is executed), checked (length, checksum,
operation, arguments, ranges, excess bits of every word), then executed word by word on the
core's bus, and answered with one reply frame. Reply payloads come only from the core's
responses.
"""

import functools
import operator

from amaranth.hdl import Cat, Module, Mux, Signal, Value, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from sw import layout
from sw import protocol as proto
from sw.layout import Region

from .core import bus_layouts

__all__ = ["HostInterface", "crc16_step"]

_FRAME_BYTES = proto.HEADER + proto.MAX_PAYLOAD + proto.TRAILER
_ARGS = 7          # region (1) | index (4) | count (2)


# The CRC is linear over GF(2): each output bit is the XOR of the input bits whose one-hot
# contribution (computed with the software CRC) has that bit set. Unrolling the bit-serial form
# instead nests each step's value three times, 3**8 nodes per byte.
_CRC_COLUMNS = [proto.crc16(b"\x00", 1 << k) for k in range(16)]
_BYTE_COLUMNS = [proto.crc16(bytes([1 << k]), 0) for k in range(8)]


def crc16_step(crc, byte):
    """One byte of CRC-16/CCITT-FALSE, as combinational logic (equal to ``sw.protocol.crc16``)."""
    crc, byte = Value.cast(crc), Value.cast(byte)
    bits = []
    for i in range(16):
        terms = ([crc[k] for k in range(16) if _CRC_COLUMNS[k] >> i & 1]
                 + [byte[k] for k in range(8) if _BYTE_COLUMNS[k] >> i & 1])
        bits.append(functools.reduce(operator.xor, terms))
    return Cat(*bits)


class HostInterface(wiring.Component):
    """Protocol decoder and reply encoder.

    Members
    -------
    rx : In(stream.Signature(8))
        Bytes from the host. A frame is received while the previous one is executed and
        answered; not ready while a whole frame waits for its turn.
    tx : Out(stream.Signature(8))
        Reply bytes to the host.
    cmd : Out(stream.Signature(bus command))
    rsp : In(stream.Signature(bus response))
        The core's host bus (:class:`hw.core.Core`).
    busy : Out(1)
        A frame is being executed or answered, or waits for its turn.
    """

    def __init__(self, config):
        self.config = config
        cmd, rsp = bus_layouts(config)
        super().__init__({
            "rx": In(stream.Signature(8)),
            "tx": Out(stream.Signature(8)),
            "cmd": Out(stream.Signature(cmd)),
            "rsp": In(stream.Signature(rsp)),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        cfg = self.config
        regions = layout.region_map(cfg)
        max_wb = max(proto.word_bytes(w) for w, _ in regions.values())
        m = Module()

        # Two frame buffers: one frame is received while the previous one is executed.
        m.submodules.buf = buf = Memory(shape=unsigned(8), depth=2 * _FRAME_BYTES, init=[])
        buf_w = buf.write_port()
        buf_r = buf.read_port()

        def region_facts(region):
            """Facts of a region byte: bytes per word, depth, bits of a word's last byte that
            must be zero, writable, known."""
            wb = Signal(range(max_wb + 1))
            depth = Signal(32)
            top_mask = Signal(8)
            writable = Signal()
            known = Signal()
            with m.Switch(region):
                for r, (width, d) in regions.items():
                    with m.Case(r):
                        m.d.comb += [wb.eq(proto.word_bytes(width)), depth.eq(d), known.eq(1),
                                     writable.eq(r < Region.COUNT),
                                     top_mask.eq((0xFF << (width % 8 or 8)) & 0xFF)]
            return wb, depth, top_mask, writable, known

        # -- receive: unstuff into a buffer, keeping the header and a running checksum --------
        rx_bank = Signal()                       # the buffer being received into
        r_n = Signal(range(_FRAME_BYTES + 2))    # body bytes received (saturates past the buffer)
        r_overflow = Signal()
        esc = Signal()
        in_frame = Signal()
        last2 = Signal(16)                       # the two latest bytes: the checksum at the end
        crc = Signal(16, init=0xFFFF)            # over all but the two latest bytes
        r_header = Signal(8 * (proto.HEADER + _ARGS))   # op | seq | length | arguments
        vb = Signal(range(max_wb))               # byte of its word of the byte leaving last2
        r_excess = Signal()                      # a payload word has bits above its width
        pending = Signal()                       # a whole frame waits for the executor
        take = Signal()                          # the executor takes it (and the buffer)
        r_wb, _, r_top_mask, _, r_known = region_facts(r_header[8 * proto.HEADER:][:8])

        byte = Signal(8)
        got = Signal()
        m.d.comb += [self.rx.ready.eq(~pending), byte.eq(self.rx.payload)]
        restart = Signal()     # forget the frame in progress and start a new one
        with m.If(restart | take):
            m.d.sync += [in_frame.eq(1), esc.eq(0), r_n.eq(0), r_overflow.eq(0),
                         crc.eq(0xFFFF), vb.eq(0), r_excess.eq(0)]
        with m.If(take):
            m.d.sync += [pending.eq(0), rx_bank.eq(~rx_bank)]
        with m.If(self.rx.valid & self.rx.ready):
            with m.If(self.rx.payload == proto.FLAG):
                # A flag ends the frame in progress (kept for the executor) or opens one.
                with m.If(in_frame & (r_n != 0)):
                    m.d.sync += pending.eq(1)
                with m.Else():
                    m.d.comb += restart.eq(1)
            with m.Elif(in_frame):
                with m.If(esc | (self.rx.payload != proto.ESC)):
                    m.d.comb += got.eq(1)
                    with m.If(esc):
                        m.d.comb += byte.eq(self.rx.payload ^ proto.ESC_XOR)
                m.d.sync += esc.eq(~esc & (self.rx.payload == proto.ESC))
        with m.If(got):
            m.d.sync += last2.eq(Cat(last2[8:], byte))
            with m.If(r_n >= 2):
                m.d.sync += crc.eq(crc16_step(crc, last2[:8]))
            # The byte leaving last2 is not the checksum: if it is a WRITE's payload byte, the
            # last byte of a word must have no bits above the region's width.
            with m.If(r_known & (r_n >= proto.HEADER + _ARGS + 2)):
                with m.If(vb == r_wb - 1):
                    m.d.sync += [vb.eq(0),
                                 r_excess.eq(r_excess | (last2[:8] & r_top_mask).any())]
                with m.Else():
                    m.d.sync += vb.eq(vb + 1)
            with m.If(r_n < _FRAME_BYTES):
                m.d.comb += [buf_w.addr.eq(r_n + Mux(rx_bank, _FRAME_BYTES, 0)),
                             buf_w.data.eq(byte), buf_w.en.eq(1)]
                m.d.sync += r_n.eq(r_n + 1)
            with m.Else():
                m.d.sync += r_overflow.eq(1)
            with m.Switch(r_n):
                for i in range(proto.HEADER + _ARGS):
                    with m.Case(i):
                        m.d.sync += r_header[8 * i:8 * i + 8].eq(byte)

        # -- the frame being executed, as the receiver handed it over ---------------------------
        x_bank = Signal()
        n = Signal.like(r_n)
        overflow = Signal()
        crc_ok = Signal()
        header = Signal.like(r_header)
        excess = Signal()
        with m.If(take):
            m.d.sync += [x_bank.eq(rx_bank), n.eq(r_n), overflow.eq(r_overflow),
                         crc_ok.eq(crc == last2), header.eq(r_header), excess.eq(r_excess)]
        op = header[:8]
        seq = Signal(8)
        length = header[16:32]
        arg = header[8 * proto.HEADER:]
        region = arg[:8]
        index = arg[8:40]
        count = arg[40:56]
        payload_len = Signal(16)
        m.d.comb += payload_len.eq(n - proto.HEADER - proto.TRAILER)
        wb, depth, _, writable, known = region_facts(region)

        # -- the reply ------------------------------------------------------------------------
        status = Signal(8)
        rlen = Signal(16)
        tx_byte = Signal(8)                      # next body byte to send (before stuffing)
        tx_crc = Signal(16)
        tx_stuffed = Signal()                    # the escape was sent, the byte comes next

        # Bus traffic: `words` commands, `wi` issued; responses fill `word` for replies.
        words = Signal(16)
        wi = Signal(16)
        word = Signal(len(self.cmd.payload.data))
        bi = Signal(range(max_wb + 1))
        pos = Signal(range(_FRAME_BYTES + 1))
        end = Signal(range(_FRAME_BYTES + 1))    # WRITE: the buffer position after the words
        have = Signal()                          # WRITE: buf_r.data is the byte at pos - 1
        full = Signal()                          # WRITE: `word` is whole, to be issued
        acks = Signal(16)                        # WRITE: responses received
        failed = Signal()                        # WRITE: the core refused a word
        run_status = Signal.like(word)
        status_bytes = proto.word_bytes(regions[Region.CTRL][0])   # a CTRL word's

        cmd = self.cmd.payload
        info_words = 1 + len(layout.config_words(cfg))

        stuffing = Signal()
        m.d.comb += stuffing.eq(((tx_byte == proto.FLAG) | (tx_byte == proto.ESC)) & ~tx_stuffed)

        def send(m, value, next_state, *, sent=(), last=True):
            """Send one body byte, escaped if it must be; once it is out, do ``sent`` and, if
            ``last``, go to ``next_state``. The checksum covers the unescaped byte."""
            m.d.comb += [tx_byte.eq(value), self.tx.valid.eq(1),
                         self.tx.payload.eq(Mux(stuffing, proto.ESC,
                                                tx_byte ^ Mux(tx_stuffed, proto.ESC_XOR, 0)))]
            with m.If(self.tx.ready):
                with m.If(stuffing):
                    m.d.sync += tx_stuffed.eq(1)
                with m.Else():
                    m.d.sync += [tx_stuffed.eq(0), tx_crc.eq(crc16_step(tx_crc, value)),
                                 *sent]
                    with m.If(last):
                        m.next = next_state

        with m.FSM() as fsm:
            m.d.comb += self.busy.eq(pending | ~fsm.ongoing("IDLE"))
            with m.State("IDLE"):
                with m.If(pending):
                    m.d.comb += take.eq(1)
                    m.d.sync += seq.eq(r_header[8:16])
                    m.next = "CHECK"
            with m.State("CHECK"):
                m.d.sync += [status.eq(proto.Status.OK), rlen.eq(0), wi.eq(0),
                             tx_crc.eq(0xFFFF), tx_stuffed.eq(0)]
                with m.If(n < proto.HEADER + proto.TRAILER):
                    m.d.sync += status.eq(proto.Status.BAD_LENGTH)
                    with m.If(n < 2):
                        m.d.sync += seq.eq(0)
                    m.next = "REPLY"
                with m.Elif(overflow):
                    m.d.sync += status.eq(proto.Status.TOO_LONG)
                    m.next = "REPLY"
                with m.Elif(~crc_ok):
                    m.d.sync += status.eq(proto.Status.BAD_CRC)
                    m.next = "REPLY"
                with m.Elif(length > proto.MAX_PAYLOAD):
                    m.d.sync += status.eq(proto.Status.TOO_LONG)
                    m.next = "REPLY"
                with m.Elif(length != payload_len):
                    m.d.sync += status.eq(proto.Status.BAD_LENGTH)
                    m.next = "REPLY"
                with m.Else():
                    m.next = "DECODE"
            with m.State("DECODE"):
                m.next = "REPLY"
                with m.Switch(op):
                    with m.Case(proto.Op.INFO, proto.Op.STATUS):
                        with m.If(length != 0):
                            m.d.sync += status.eq(proto.Status.BAD_ARGUMENT)
                        with m.Elif(op == proto.Op.INFO):
                            m.d.sync += [words.eq(info_words), rlen.eq(4 * info_words)]
                        with m.Else():
                            m.d.sync += [words.eq(1), rlen.eq(status_bytes)]
                    with m.Case(proto.Op.READ, proto.Op.WRITE):
                        is_write = op == proto.Op.WRITE
                        expect = Mux(is_write, _ARGS + count * wb, _ARGS)
                        with m.If(length < _ARGS):
                            m.d.sync += status.eq(proto.Status.BAD_ARGUMENT)
                        with m.Elif(~known | (is_write & ~writable)):
                            m.d.sync += status.eq(proto.Status.BAD_REGION)
                        with m.Elif(length != expect):
                            m.d.sync += status.eq(proto.Status.BAD_ARGUMENT)
                        with m.Elif((index >= depth) | (count > depth - index)):
                            m.d.sync += status.eq(proto.Status.OUT_OF_RANGE)
                        with m.Elif(~is_write & (count * wb > proto.MAX_PAYLOAD)):
                            m.d.sync += status.eq(proto.Status.TOO_LONG)
                        with m.Elif(is_write & excess):
                            m.d.sync += status.eq(proto.Status.OUT_OF_RANGE)
                        with m.Elif(is_write):
                            m.d.sync += [words.eq(count), wi.eq(0), acks.eq(0), bi.eq(0),
                                         word.eq(0), full.eq(0), have.eq(0),
                                         pos.eq(proto.HEADER + _ARGS),
                                         end.eq(proto.HEADER + _ARGS + count * wb)]
                            m.next = "BUS"
                        with m.Else():
                            m.d.sync += [words.eq(count), rlen.eq(count * wb)]
                    with m.Case(proto.Op.RUN):
                        with m.If(length != 4):
                            m.d.sync += status.eq(proto.Status.BAD_ARGUMENT)
                        with m.Else():
                            m.next = "RUN"
                    with m.Default():
                        m.d.sync += status.eq(proto.Status.UNKNOWN_OP)

            # WRITE (its words were checked for excess bits as they arrived): a pipeline that
            # reads one buffer byte per cycle into `word` and issues each whole word while the
            # next one is gathered; it stalls only while the core does not take a command.
            with m.State("BUS"):
                stall = Signal()
                accept = Signal()
                m.d.comb += [self.cmd.valid.eq(full & ~failed), cmd.write.eq(1),
                             cmd.region.eq(region), cmd.index.eq(index + wi),
                             cmd.data.eq(word), self.rsp.ready.eq(1),
                             accept.eq(self.cmd.valid & self.cmd.ready),
                             stall.eq(full & ~accept),
                             buf_r.addr.eq(pos + Mux(x_bank, _FRAME_BYTES, 0)),
                             buf_r.en.eq(~stall)]
                with m.If(accept):
                    m.d.sync += [wi.eq(wi + 1), full.eq(0)]
                with m.If(~stall):
                    m.d.sync += have.eq(pos != end)
                    with m.If(pos != end):
                        m.d.sync += pos.eq(pos + 1)
                    with m.If(have):
                        m.d.sync += word.word_select(bi, 8).eq(buf_r.data)
                        with m.If(bi + 1 == wb):
                            m.d.sync += [bi.eq(0), full.eq(1)]
                        with m.Else():
                            m.d.sync += bi.eq(bi + 1)
                with m.If(self.rsp.valid):
                    m.d.sync += acks.eq(acks + 1)
                    with m.If(self.rsp.payload.error):
                        # Only a core refusing a checked command gets here: it is running.
                        # Nothing more is issued; the answers still due are awaited.
                        m.d.sync += [status.eq(proto.Status.BUSY), failed.eq(1)]
                done = Signal()
                refused = failed | (self.rsp.valid & self.rsp.payload.error)
                m.d.comb += done.eq(acks + self.rsp.valid == Mux(refused, wi, words))
                with m.If(done & ~accept):
                    m.d.sync += failed.eq(0)
                    m.next = "REPLY"

            # RUN: write the run word, then poll the status until the run is over.
            with m.State("RUN"):
                m.d.comb += [self.cmd.valid.eq(1), cmd.write.eq(1), cmd.region.eq(Region.CTRL),
                             cmd.index.eq(0), cmd.data.eq(arg[:32])]
                with m.If(self.cmd.ready):
                    m.next = "RUN_ACK"
            with m.State("RUN_ACK"):
                m.d.comb += self.rsp.ready.eq(1)
                with m.If(self.rsp.valid):
                    with m.If(self.rsp.payload.error):
                        m.d.sync += status.eq(proto.Status.BUSY)
                        m.next = "REPLY"
                    with m.Else():
                        m.next = "POLL"
            with m.State("POLL"):
                m.d.comb += [self.cmd.valid.eq(1), cmd.region.eq(Region.CTRL), cmd.index.eq(0)]
                with m.If(self.cmd.ready):
                    m.next = "POLL_ACK"
            with m.State("POLL_ACK"):
                m.d.comb += self.rsp.ready.eq(1)
                with m.If(self.rsp.valid):
                    with m.If(self.rsp.payload.data[0]):
                        m.next = "POLL"
                    with m.Else():
                        m.d.sync += [run_status.eq(self.rsp.payload.data), rlen.eq(status_bytes),
                                     words.eq(0)]
                        m.next = "REPLY"

            # The reply: flag, header, payload, checksum, flag; body bytes stuffed.
            with m.State("REPLY"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(proto.FLAG)]
                with m.If(self.tx.ready):
                    m.d.sync += [tx_crc.eq(0xFFFF), tx_stuffed.eq(0), bi.eq(0), wi.eq(0)]
                    m.next = "SEND_STATUS"
            for state, value, nxt in (("SEND_STATUS", status, "SEND_SEQ"),
                                      ("SEND_SEQ", seq, "SEND_LEN0"),
                                      ("SEND_LEN0", rlen[:8], "SEND_LEN1"),
                                      ("SEND_LEN1", rlen[8:], "PAYLOAD")):
                with m.State(state):
                    send(m, value, nxt)
            with m.State("PAYLOAD"):
                # Reads, INFO and STATUS fetch each word from the core as its bytes are due.
                with m.If(rlen == 0):
                    m.next = "SEND_CRC0"
                with m.Elif(op == proto.Op.RUN):
                    m.d.sync += word.eq(run_status)
                    m.next = "SEND_WORD"
                with m.Else():
                    m.next = "FETCH"
            with m.State("FETCH"):
                with m.If(wi == words):
                    m.next = "SEND_CRC0"
                with m.Else():
                    m.d.comb += self.cmd.valid.eq(1)
                    with m.Switch(op):
                        with m.Case(proto.Op.INFO):
                            m.d.comb += [cmd.region.eq(Region.CTRL), cmd.index.eq(wi + 1)]
                        with m.Case(proto.Op.STATUS):
                            m.d.comb += [cmd.region.eq(Region.CTRL), cmd.index.eq(0)]
                        with m.Default():
                            m.d.comb += [cmd.region.eq(region), cmd.index.eq(index + wi)]
                    with m.If(self.cmd.ready):
                        m.next = "FETCH_ACK"
            with m.State("FETCH_ACK"):
                m.d.comb += self.rsp.ready.eq(1)
                with m.If(self.rsp.valid):
                    m.d.sync += [word.eq(self.rsp.payload.data), bi.eq(0), wi.eq(wi + 1)]
                    m.next = "SEND_WORD"
            with m.State("SEND_WORD"):
                nbytes = Signal(range(max_wb + 1))
                with m.Switch(op):
                    with m.Case(proto.Op.INFO):
                        m.d.comb += nbytes.eq(4)
                    with m.Case(proto.Op.STATUS, proto.Op.RUN):
                        m.d.comb += nbytes.eq(status_bytes)
                    with m.Default():
                        m.d.comb += nbytes.eq(wb)
                send(m, word.word_select(bi, 8), "NEXT_WORD", sent=[bi.eq(bi + 1)],
                     last=bi + 1 == nbytes)
            with m.State("NEXT_WORD"):
                with m.If(op == proto.Op.RUN):
                    m.next = "SEND_CRC0"
                with m.Else():
                    m.next = "FETCH"
            crc_hi = Signal(8)
            with m.State("SEND_CRC0"):
                # The running checksum moves on as this byte goes out: keep its high byte.
                send(m, tx_crc[:8], "SEND_CRC1", sent=[crc_hi.eq(tx_crc[8:])])
            with m.State("SEND_CRC1"):
                send(m, crc_hi, "END")
            with m.State("END"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(proto.FLAG)]
                with m.If(self.tx.ready):
                    m.next = "IDLE"
        return m
