"""The host protocol: framed commands over a plain byte stream (a pipe in simulation, a UART on
a board). Written once here; the gateware decoder (``hw/host.py``) takes every constant from
this module.

Framing (HDLC-like byte stuffing): a frame is ``FLAG body FLAG`` with ``FLAG = 0x7E``; inside
the body ``0x7E`` and ``0x7D`` are sent as ``0x7D, byte ^ 0x20``. Any ``FLAG`` ends the frame in
progress, so garbage or a truncated frame costs at most an error reply and never swallows the
next frame; empty frames (two flags in a row) are ignored.

Body, all integers little-endian::

    command frame:  op (1) | seq (1) | length (2) | payload (length) | crc16 (2)
    reply frame:    status (1) | seq (1) | length (2) | payload (length) | crc16 (2)

``crc16`` is CRC-16/CCITT-FALSE (polynomial 0x1021, initial 0xFFFF) over everything before it.
``length`` is at most :data:`MAX_PAYLOAD`. Every command gets exactly one reply with its ``seq``;
a frame that fails its checks gets an error reply and changes nothing (its ``seq`` is echoed as
received, 0 when the frame was too short to have one).

Commands (payload → reply payload):

* ``INFO``: none → ``HW_VERSION`` and the configuration words, 4 bytes each.
* ``WRITE``: region (1) | index (4) | count (2) | count words → none. Each word takes
  ``ceil(width / 8)`` bytes of the region (``sw.layout.region_map``); excess high bits must be 0.
* ``READ``: region (1) | index (4) | count (2) → count words.
* ``RUN``: the run word (``sw.layout.run_word``, 4 bytes) → the status word (a CTRL word:
  ``sw.layout.STATUS_FIELDS``, 5 bytes), sent when the run has finished.
* ``STATUS``: none → the status word.
"""

import enum
import struct

__all__ = ["FLAG", "ESC", "MAX_PAYLOAD", "Op", "Status", "ProtocolError", "crc16", "stuff",
           "Deframer", "command", "parse_reply", "word_bytes"]

FLAG = 0x7E
ESC = 0x7D
ESC_XOR = 0x20
#: Largest payload of a command or reply, in bytes (the device buffers a whole frame before it
#: acts on it, so that a frame failing its checks changes nothing).
MAX_PAYLOAD = 1024
HEADER = 4
TRAILER = 2


class Op(enum.IntEnum):
    INFO = 0x01
    WRITE = 0x02
    READ = 0x03
    RUN = 0x04
    STATUS = 0x05


class Status(enum.IntEnum):
    OK = 0x00
    BAD_CRC = 0x01          #: checksum mismatch
    BAD_LENGTH = 0x02       #: frame shorter or longer than its length field says
    TOO_LONG = 0x03         #: length field above MAX_PAYLOAD
    UNKNOWN_OP = 0x04
    BAD_REGION = 0x05       #: no such region, or not writable
    OUT_OF_RANGE = 0x06     #: index + count beyond the region, or a word with excess bits
    BUSY = 0x07             #: the accelerator is running
    BAD_ARGUMENT = 0x08     #: payload of the wrong size for the command


class ProtocolError(IOError):
    """A reply that is malformed or reports an error."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


def crc16(data, crc=0xFFFF):
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def stuff(body):
    """One frame on the wire: flag, stuffed body, flag."""
    out = bytearray([FLAG])
    for b in body:
        if b in (FLAG, ESC):
            out += bytes([ESC, b ^ ESC_XOR])
        else:
            out.append(b)
    out.append(FLAG)
    return bytes(out)


def _frame(code, seq, payload):
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    body = struct.pack("<BBH", code, seq & 0xFF, len(payload)) + bytes(payload)
    return stuff(body + struct.pack("<H", crc16(body)))


def command(op, seq, payload=b""):
    """A command frame, ready for the wire (``op`` may be any byte, to test the device)."""
    return _frame(int(op), seq, payload)


class Deframer:
    """Incremental decoder of stuffed frames: feed bytes, collect frame bodies."""

    def __init__(self):
        self._buf = bytearray()
        self._esc = False
        self._in_frame = False

    def feed(self, data):
        frames = []
        for b in data:
            if b == FLAG:
                if self._in_frame and self._buf:
                    frames.append(bytes(self._buf))
                self._buf.clear()
                self._esc = False
                self._in_frame = True
            elif self._in_frame:
                if self._esc:
                    self._buf.append(b ^ ESC_XOR)
                    self._esc = False
                elif b == ESC:
                    self._esc = True
                else:
                    self._buf.append(b)
        return frames


def parse_reply(body):
    """(status, seq, payload) of a reply body; raises :class:`ProtocolError` if malformed."""
    if len(body) < HEADER + TRAILER:
        raise ProtocolError(f"reply of {len(body)} bytes is shorter than a header and checksum")
    status, seq, length = struct.unpack_from("<BBH", body)
    if crc16(body[:-TRAILER]) != struct.unpack_from("<H", body, len(body) - TRAILER)[0]:
        raise ProtocolError("reply checksum mismatch")
    if length != len(body) - HEADER - TRAILER:
        raise ProtocolError(f"reply length field {length} does not match its "
                            f"{len(body) - HEADER - TRAILER} payload bytes")
    try:
        status = Status(status)
    except ValueError:
        raise ProtocolError(f"unknown reply status {status:#x}") from None
    return status, seq, bytes(body[HEADER:-TRAILER])


def word_bytes(width):
    """Bytes a word of ``width`` bits takes on the wire."""
    return (width + 7) // 8
