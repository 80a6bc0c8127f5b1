"""The ``sim`` backend: the gateware, verilated, behind the host protocol.

* :func:`build_sim` generates ``hw.top.Top``'s Verilog and compiles it with the C++ harness
  ``tb/harness/harness.cpp`` into ``build/sim/<key>/harness`` (cached by the configuration, the
  Verilog text, the harness source and the trace flag; a file lock serialises builds).
* :class:`Device` is the host driver of ``sw/protocol.py`` over a byte transport (the harness'
  pipes here; a serial port offers the same ``write``/``read`` and drives the same class).
* :class:`SimBackend` is ``Accelerator("sim")``: it uploads a program once, then per image
  writes the input, runs, and reads the outputs and the hardware counters back. Results come
  only from the device's read replies.
"""

import collections
import concurrent.futures
import contextlib
import hashlib
import json
import os
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from . import layout, schedule
from . import numerics as nx
from . import protocol as proto
from .layout import COUNTERS, Region
from .protocol import Op, ProtocolError, Status

__all__ = ["build_sim", "Device", "PipeTransport", "SimProcess", "SimBackend", "ProtocolError",
           "BuildError", "HARNESS"]

ROOT = Path(__file__).resolve().parent.parent
#: The C++ harness source.
HARNESS = ROOT / "tb" / "harness" / "harness.cpp"
#: Where the builds go (``$TILESKIP_BUILD_DIR`` overrides ``<repo>/build``).
BUILD_DIR = Path(os.environ.get("TILESKIP_BUILD_DIR", ROOT / "build")) / "sim"

#: Verilator options: see ``tb/runner.py`` for why each is there. ``-fno-dfg`` (no data-flow
#: graph optimisation) makes this design's model ~12% fewer instructions and ~6% faster.
VERILATOR_ARGS = ("-O3", "-fno-dfg", "--x-assign", "fast", "--x-initial", "fast", "-Wno-fatal",
                  "-Wno-WIDTHEXPAND", "--output-split", "5000")
#: C++ optimisation of the model, the Verilator runtime and the harness (make's OPT_FAST and
#: OPT_GLOBAL, default -Os; -CFLAGS, which make adds to every compilation, also carries
#: CXX_ARCH). -O3 is ~5% faster than -O2 on the default configuration, -march=native another
#: 10-15% (the build is made on, and cached for, the machine that runs it).
CXX_OPT = "-O3"
CXX_ARCH = "-march=native"
JOBS = 2


class BuildError(RuntimeError):
    """The Verilator build of the simulator failed."""


# -- build ------------------------------------------------------------------------------------

def _top(config):
    from hw.top import Top
    # No reset port: Verilator would re-evaluate every register's next-state logic (all of it
    # depends on ``rst``) in each eval(); the registers' initial values are their reset values.
    return Top(config, reset_less=True)


def _verilog(config):
    from hw.build import verilog
    return verilog(_top(config), "top")


def _verilator_version():
    import importlib.metadata
    try:
        return importlib.metadata.version("verilator")
    except importlib.metadata.PackageNotFoundError:
        return None


def _key(config, verilog, trace):
    h = hashlib.sha256()
    for part in (config.key(), verilog, HARNESS.read_text(), f"trace={bool(trace)}",
                 json.dumps([VERILATOR_ARGS, CXX_OPT, CXX_ARCH, _verilator_version()])):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def _have_header(name):
    res = subprocess.run(["c++", "-x", "c++", "-E", "-"], input=f"#include <{name}>\n",
                         capture_output=True, text=True)
    return res.returncode == 0


def build_sim(config, trace=False, *, log=None):
    """Build the simulator of ``config`` (``trace``: with FST tracing); return the binary.

    The build directory is keyed by the configuration, the Verilog text, the harness source and
    the trace flag; a finished build is reused. When no Python source under ``hw/`` or ``sw/``
    changed since, the Verilog is not even generated (that takes ~8 s for the default
    configuration). ``log`` (a callable) hears about a build being started.
    """
    # Fast path: the same Python sources built before (generating the Verilog takes seconds).
    index = BUILD_DIR / "index" / f"{_source_key(config, trace)}.json"
    with contextlib.suppress(OSError, ValueError, KeyError):
        out = BUILD_DIR / json.loads(index.read_text())["key"]
        if (out / "done.json").is_file() and (out / "harness").is_file():
            return out / "harness"
    text = _verilog(config)
    key = _key(config, text, trace)
    out = BUILD_DIR / key
    binary = out / "harness"
    stamp = out / "done.json"
    if stamp.is_file() and binary.is_file():
        _write_index(index, key)
        return binary
    from tb.runner import _build_lock, ensure_verilator, file_lock
    with file_lock(BUILD_DIR / f"{key}.lock"):
        if stamp.is_file() and binary.is_file():
            return binary      # built by someone else while we waited
        if log:
            log(f"building the simulator in {out} (a few minutes)")
        ensure_verilator()
        if trace and not _have_header("lz4.h"):
            raise BuildError("FST tracing needs the LZ4 headers and library, which Verilator's "
                             "FST writer links (Debian/Ubuntu: apt-get install liblz4-dev)")
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        (out / "top.v").write_text(text)
        shutil.copy(HARNESS, out / "harness.cpp")
        cmd = ["verilator", "--cc", "--exe", "--build", *VERILATOR_ARGS,
               "--top-module", "top", "--prefix", "Vtop", "--Mdir", str(out / "obj"),
               "-o", str(binary), "-j", str(JOBS), "-CFLAGS", f"{CXX_OPT} {CXX_ARCH}",
               "--MAKEFLAGS", "CFG_CXXFLAGS_PCH_I=-include",
               "--MAKEFLAGS", f"OPT_FAST={CXX_OPT}", "--MAKEFLAGS", f"OPT_GLOBAL={CXX_OPT}",
               "--MAKEFLAGS", f"PYTHON3={sys.executable}"]
        if trace:
            cmd += ["--trace-fst", "--trace-structs"]
        cmd += [str(out / "top.v"), str(out / "harness.cpp")]
        with _build_lock(), open(out / "build.log", "w") as logf:
            t0 = time.monotonic()        # after waiting for another build
            logf.write(" ".join(cmd) + "\n")
            logf.flush()
            res = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=out)
        seconds = time.monotonic() - t0
        if res.returncode != 0 or not binary.is_file():
            tail = "".join((out / "build.log").read_text(errors="replace")
                           .splitlines(True)[-40:])
            raise BuildError(f"Verilator build of the simulator failed ({res.returncode}); "
                             f"log {out / 'build.log'}:\n{tail}")
        stamp.write_text(json.dumps({"config": config.to_dict(), "trace": bool(trace),
                                     "build_s": round(seconds, 1)}, indent=1) + "\n")
    _write_index(index, key)
    return binary


def _source_key(config, trace):
    """Hash of everything the Verilog is generated from: the configuration, the Python
    sources of hw/ and sw/, the amaranth version, plus the harness and build options."""
    import importlib.metadata
    h = hashlib.sha256()
    for path in sorted([*(ROOT / "hw").glob("*.py"), *(ROOT / "sw").glob("*.py")]):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    for part in (config.key(), HARNESS.read_text(), f"trace={bool(trace)}",
                 importlib.metadata.version("amaranth"),
                 json.dumps([VERILATOR_ARGS, CXX_OPT, CXX_ARCH, _verilator_version()])):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:24]


def _write_index(index, key):
    index.parent.mkdir(parents=True, exist_ok=True)
    tmp = index.with_name(index.name + f".{os.getpid()}")
    tmp.write_text(json.dumps({"key": key}) + "\n")
    tmp.replace(index)


# -- transport --------------------------------------------------------------------------------

class PipeTransport:
    """Bytes to and from a child process' stdin/stdout.

    ``write`` never blocks on a full pipe while the child waits for us to read: what arrives
    meanwhile is kept for ``read``. A serial port wrapper needs the same two methods.
    """

    def __init__(self, proc):
        self.proc = proc
        self._wfd = proc.stdin.fileno()
        self._rfd = proc.stdout.fileno()
        os.set_blocking(self._wfd, False)
        self._pending = bytearray()
        self.closed = False

    def write(self, data):
        view = memoryview(bytes(data))
        while view:
            r, w, _ = select.select([self._rfd], [self._wfd], [], 1.0)
            if r:
                self._fill()
            if w:
                try:
                    n = os.write(self._wfd, view)
                except BlockingIOError:
                    continue
                except BrokenPipeError:
                    raise ProtocolError("the simulator has exited") from None
                view = view[n:]
            if not (r or w) and self.proc.poll() is not None:
                raise ProtocolError("the simulator has exited")

    def _fill(self):
        chunk = os.read(self._rfd, 1 << 16)
        if not chunk:
            self.closed = True
        self._pending += chunk

    def read(self, timeout):
        """Whatever bytes are available, waiting up to ``timeout`` s (None: forever) for
        some; ``b""`` on a timeout. Raises :class:`ProtocolError` when the child has gone."""
        if not self._pending and not self.closed:
            r, _, _ = select.select([self._rfd], [], [], timeout)
            if r:
                self._fill()
        if not self._pending and self.closed:
            raise ProtocolError("the simulator closed its output (it has exited)")
        data, self._pending = bytes(self._pending), bytearray()
        return data


# -- the host driver --------------------------------------------------------------------------

class Device:
    """The accelerator behind the framed protocol of ``sw/protocol.py``.

    Every command gets a fresh sequence number (1 … 255); replies with other numbers (strays,
    errors of garbage frames) are skipped. An error reply to our own command raises
    :class:`ProtocolError` with its :class:`~sw.protocol.Status` (``.status``) and name.
    """

    #: Most commands in flight at once (sequence numbers in flight must be distinct).
    WINDOW = 96

    def __init__(self, transport, *, timeout=30.0, run_timeout=None):
        self.transport = transport
        self.timeout = timeout
        self.run_timeout = run_timeout
        self._seq = 0
        self._deframer = proto.Deframer()
        self._frames = []
        self.skipped = []         # (status, seq, payload) of replies nobody waited for
        self._inflight = set()    # seqs sent and not yet collected
        self._early = {}          # seq → (status, payload) arrived before its collect()
        self._config = None

    # -- framing --
    def next_seq(self):
        self._seq = self._seq % 255 + 1
        return self._seq

    def read_reply(self, timeout=None):
        """The next reply frame as (status, seq, payload); raises on a timeout."""
        timeout = self.timeout if timeout is None else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._frames:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            data = self.transport.read(left)
            if data:
                self._frames += self._deframer.feed(data)
            elif deadline is not None and time.monotonic() >= deadline:
                raise ProtocolError(f"no reply from the device within {timeout} s")
        return proto.parse_reply(self._frames.pop(0))

    def drain(self, quiet=0.2):
        """Skip every reply that arrives until the device has been quiet for ``quiet`` s."""
        while True:
            try:
                self.skipped.append(self.read_reply(timeout=quiet))
            except ProtocolError as e:
                if "no reply" in str(e):
                    return
                raise

    def send(self, commands):
        """Send ``[(op, payload), …]`` back to back (at most :data:`WINDOW` in flight in
        all); return a ticket for :meth:`collect`."""
        if len(self._inflight) + len(commands) > self.WINDOW:
            raise ValueError(f"more than {self.WINDOW} commands in flight")
        ticket, wire = [], bytearray()
        for op, payload in commands:
            seq = self.next_seq()
            ticket.append((op, seq))
            self._inflight.add(seq)
            wire += proto.command(op, seq, payload)
        self.transport.write(wire)
        return ticket

    def collect(self, ticket, timeouts=None):
        """The reply payloads of a ticket from :meth:`send`; raises :class:`ProtocolError`
        for the first error reply, after every reply of the ticket has arrived."""
        got = {}
        try:
            for i, (_, seq) in enumerate(ticket):
                timeout = self.timeout if timeouts is None else timeouts[i]
                while seq not in got:
                    if seq in self._early:
                        got[seq] = self._early.pop(seq)
                        break
                    status, rseq, payload = self.read_reply(timeout)
                    if rseq == seq:
                        got[seq] = (status, payload)
                    elif rseq in self._inflight and rseq not in self._early:
                        self._early[rseq] = (status, payload)   # another ticket's
                    else:
                        self.skipped.append((status, rseq, payload))
        finally:
            for _, seq in ticket:
                self._inflight.discard(seq)
                if seq not in got:
                    self._early.pop(seq, None)
        for op, seq in ticket:
            status, _ = got[seq]
            if status != Status.OK:
                name = Op(op).name if op in Op._value2member_map_ else f"op {op:#x}"
                raise ProtocolError(f"{name} (seq {seq}) failed: {status.name}", status)
        return [got[seq][1] for _, seq in ticket]

    def abandon(self):
        """Forget the commands in flight (after an error): their replies will be skipped."""
        self._inflight.clear()
        self._early.clear()

    def transact(self, commands, timeouts=None):
        """Send commands and collect their replies (in windows of :data:`WINDOW`)."""
        out = []
        for i in range(0, len(commands), self.WINDOW):
            part = slice(i, i + self.WINDOW)
            out += self.collect(self.send(commands[part]),
                                None if timeouts is None else timeouts[part])
        return out

    def request(self, op, payload=b"", timeout=None):
        return self.transact([(op, payload)], None if timeout is None else [timeout])[0]

    # -- commands --
    def info(self):
        """(HW_VERSION, Config) the device reports."""
        payload = self.request(Op.INFO)
        words = struct.unpack(f"<{len(payload) // 4}I", payload)
        self._config = layout.config_from_words(list(words[1:]))
        return words[0], self._config

    @property
    def config(self):
        if self._config is None:
            self.info()
        return self._config

    def _width(self, region):
        return proto.word_bytes(layout.region_map(self.config)[Region(region)][0])

    def write_commands(self, region, index, words):
        """WRITE commands (op, payload) for ``words``: ints, or a uint8 array (n, word bytes)
        of their little-endian bytes; split into frames of at most MAX_PAYLOAD."""
        wb = self._width(region)
        if isinstance(words, np.ndarray) and words.ndim == 2:
            raw = np.ascontiguousarray(words, dtype=np.uint8)
            if raw.shape[1] != wb:
                raise ValueError(f"words of {raw.shape[1]} bytes, region {Region(region).name} "
                                 f"has {wb}")
            n = len(raw)
            data = raw.tobytes()
        else:
            words = [int(w) for w in words]
            n = len(words)
            data = b"".join(w.to_bytes(wb, "little") for w in words)
        per = (proto.MAX_PAYLOAD - 7) // wb
        cmds = []
        for i in range(0, n, per):
            k = min(per, n - i)
            cmds.append((Op.WRITE, struct.pack("<BIH", int(region), index + i, k)
                         + data[i * wb:(i + k) * wb]))
        return cmds

    def read_commands(self, region, index, count):
        per = proto.MAX_PAYLOAD // self._width(region)
        return [(Op.READ, struct.pack("<BIH", int(region), index + i, min(per, count - i)))
                for i in range(0, count, per)]

    def write(self, region, index, words):
        self.transact(self.write_commands(region, index, words))

    def read_bytes(self, region, index, count):
        """Words as a uint8 array (count, word bytes)."""
        payloads = self.transact(self.read_commands(region, index, count))
        wb = self._width(region)
        return np.frombuffer(b"".join(payloads), dtype=np.uint8).reshape(count, wb)

    def read(self, region, index, count):
        raw = self.read_bytes(region, index, count)
        return [int.from_bytes(r.tobytes(), "little") for r in raw]

    def run(self, layers, skip, epsilon, timeout=None):
        """Run ``layers`` layers; the status word (as a dict) once the run has finished."""
        word = layout.run_word(layers, skip, epsilon)
        payload = self.request(Op.RUN, struct.pack("<I", word),
                               timeout=self.run_timeout if timeout is None else timeout)
        return layout.unpack_status(int.from_bytes(payload, "little"))

    def status(self):
        return layout.unpack_status(int.from_bytes(self.request(Op.STATUS), "little"))


# -- the simulator process --------------------------------------------------------------------

class SimProcess:
    """A running simulator (``build_sim``'s binary) and a :class:`Device` on its pipes."""

    def __init__(self, binary, *, trace=None, timeout=30.0, run_timeout=None):
        args = [str(binary)]
        if trace:
            args += ["--trace-fst", str(trace)]
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, bufsize=0)
        self.device = Device(PipeTransport(self.proc), timeout=timeout, run_timeout=run_timeout)
        self.cycles = None

    def stderr(self):
        """What the simulator has written on stderr (its cycle count once it has ended)."""
        if self._stderr.closed:
            return self._stderr_text
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def close(self, timeout=30.0):
        """End the simulation (EOF on its input); return its exit status."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for line in self.stderr().splitlines():
            if line.startswith("cycles "):
                self.cycles = int(line.split()[1])
        with contextlib.suppress(OSError):
            self.proc.stdout.close()
        if not self._stderr.closed:
            self._stderr_text = self.stderr()
            self._stderr.close()
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# -- the backend ------------------------------------------------------------------------------

def _static_stats(program):
    """Per-image counts the hardware does not keep (macs, ideal cycles, tiles, dense bytes)."""
    tile = program.config.tile
    flags = [nx.tile_flags(np.zeros((1,) + tuple(layer.in_shape), dtype=np.int64),
                           nx.layer_tile(layer.kind, tile), 0) & False
             for layer in program.layers]
    return schedule.network_stats(program, flags, skip=False)


def _image_digest(image):
    h = hashlib.sha256(image.weights.tobytes())
    h.update(repr((image.masks, image.params, image.descriptors)).encode())
    return h.hexdigest()


def _word_bytes(values, nbytes):
    """Python ints → uint8 array (n, nbytes), little-endian."""
    return np.frombuffer(b"".join(int(v).to_bytes(nbytes, "little") for v in values),
                         dtype=np.uint8).reshape(len(values), nbytes)


class SimBackend:
    """``Accelerator("sim", trace=None, progress=None, workers=None)``.

    ``trace``: path of an FST trace of the whole session (builds the tracing simulator; one
    simulator process).
    ``progress``: show a progress bar over the images (None: when stderr is a terminal).
    ``workers``: simulator processes that share a batch's images (None: one per CPU core, at
    most one per image). Each is a whole accelerator with the program uploaded; the images of a
    batch are split into contiguous parts, and results and counters are gathered in order.
    ``device``: a :class:`Device` to run on (e.g. one on a serial port, or a running
    :class:`SimProcess`' device) instead of building and starting simulators.
    The simulator processes live as long as the backend (:meth:`close`), and a program is
    uploaded once to each for as many runs as use it.
    """

    name = "sim"

    def __init__(self, trace=None, progress=None, timeout=60.0, run_timeout=None, device=None,
                 workers=None):
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers must be a positive integer, not {workers!r}")
        if device is not None and workers not in (None, 1):
            raise ValueError("workers: a given device is one accelerator (workers=1)")
        self.device = device      # a Device to use instead of simulators of our own
        self.trace = trace
        self.progress = progress
        self.timeout = timeout
        self.run_timeout = run_timeout
        self.workers = workers
        self._sims = []
        self._sim_config = None
        self._uploaded = {}       # id(device) → digest of the program image it holds
        self.extra = None
        self.build_s = None

    def _log(self, msg):
        print(f"tileskip: {msg}", file=sys.stderr, flush=True)

    def _want(self, n):
        """How many simulator processes a batch of ``n`` images runs on."""
        if self.trace:
            return 1
        k = self.workers if self.workers is not None else (os.cpu_count() or 1)
        return max(1, min(k, n))

    def _processes(self, config, k):
        alive = [p for p in self._sims if p.proc.poll() is None]
        if self._sim_config != config or len(alive) != len(self._sims):
            self.close()
        if len(self._sims) < k:
            t0 = time.monotonic()
            binary = build_sim(config, trace=bool(self.trace), log=self._log)
            self.build_s = time.monotonic() - t0
            while len(self._sims) < k:
                self._sims.append(SimProcess(binary, trace=self.trace, timeout=self.timeout,
                                             run_timeout=self.run_timeout))
            self._sim_config = config
        return self._sims[:k]

    def close(self):
        for sim in self._sims:
            sim.close()
        self._sims = []
        self._uploaded = {}

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()

    def _check(self, dev, config):
        version, hw = dev.info()
        want = layout.config_words(config)
        got = layout.config_words(hw)
        if version != layout.HW_VERSION or want != got:
            names = layout._REPORTED
            diff = ", ".join(f"{n} {w} vs {g}" for n, w, g in zip(names, want, got) if w != g)
            raise ProtocolError(
                f"the device (HW_VERSION {version}, {dict(zip(names, got))}) does not match the "
                f"program (HW_VERSION {layout.HW_VERSION}, {dict(zip(names, want))})"
                + (f": program vs device {diff}" if diff else ""))

    def _upload(self, dev, program):
        cfg = program.config
        image = layout.pack_program(program)
        digest = _image_digest(image)
        if self._uploaded.get(id(dev)) == digest:
            return image
        R, C = cfg.rows, cfg.cols
        used = max(p.desc["wbase"] + p.weight_words for p in image.plans)
        used = -(-used // C) * C
        flat = image.weights.transpose(1, 0, 2).reshape(-1, R)[:used]
        cmds = dev.write_commands(Region.WEIGHT, 0,
                                  layout.chunk_bytes(cfg, Region.WEIGHT, flat.view(np.uint8)))
        rows = layout.memory_map(cfg)
        for region, values in ((Region.MASK, image.masks), (Region.PARAM, image.params),
                               (Region.DESC, image.descriptors)):
            data = _word_bytes(values, proto.word_bytes(rows[region][0]))
            if region in layout.CHUNKED:
                data = layout.chunk_bytes(cfg, region, data)
            cmds += dev.write_commands(region, 0, data)
        dev.transact(cmds)
        self._uploaded[id(dev)] = digest
        return image

    def run(self, program, xq, skip):
        cfg = program.config
        n = len(xq)
        if self.device is not None:
            devices = [self.device]
        else:
            devices = [sim.device for sim in self._processes(cfg, self._want(n))]
        t0 = time.monotonic()
        for dev in devices:
            self._check(dev, cfg)
            image = self._upload(dev, program)
        plans = image.plans
        L, NB = len(plans), cfg.act_banks
        words, flags, flagged = layout.pack_input(program, xq)
        in_n = -(-plans[0].in_words // NB) * NB
        out_n = -(-plans[-1].out_words // NB) * NB
        out_region = Region.ACT0 if L % 2 == 0 else Region.ACT1
        ahead = out_region != Region.ACT0      # the next input may be written before read-back
        ncount = L * len(COUNTERS)
        outputs = np.zeros((n, cfg.act_words, cfg.cols), dtype=np.int8)
        counts = np.zeros((n, L, len(COUNTERS)), dtype=np.int64)
        cycles = np.zeros(n, dtype=np.int64)
        run_word = struct.pack("<I", layout.run_word(L, skip, program.epsilon))
        bar = None
        if n > 1 and self.progress is not False:
            from tqdm import tqdm
            bar = tqdm(total=n, unit="img", desc="sim", leave=False,
                       disable=None if self.progress is None else False)
        bar_lock = threading.Lock()
        failed = threading.Event()

        def run_part(dev, images):
            """Run ``images`` (indices) on ``dev``, filling outputs, counts and cycles."""
            reads = (dev.read_commands(out_region, 0, out_n)
                     + dev.read_commands(Region.COUNT, 0, ncount))

            def writes(i):
                return (dev.write_commands(Region.ACT0, 0, words[i, :in_n].view(np.uint8))
                        + dev.write_commands(Region.FLAG0, 0,
                                             flags[i, :in_n].astype(np.uint8)[:, None]))

            def commands(k):
                """Image images[k]'s commands: its input (unless sent with the previous image's),
                the run, and the read-back; when the output is not in the input's buffer, the
                next image's input goes before the read-back, so that the device receives it
                during the run."""
                i = images[k]
                cmds = writes(i) if k == 0 or not ahead else []
                k_run = len(cmds)
                cmds.append((Op.RUN, run_word))
                if ahead and k + 1 < len(images):
                    cmds += writes(images[k + 1])
                k_read = len(cmds)
                cmds += reads
                timeouts = [self.timeout] * len(cmds)
                timeouts[k_run] = self.run_timeout
                return cmds, (k_run, k_read), timeouts

            def finish(i, replies, at):
                k_run, k_read = at
                status = layout.unpack_status(int.from_bytes(replies[k_run], "little"))
                if status["error"] or not status["done"] or status["busy"]:
                    raise ProtocolError(f"image {i}: the run ended with status {status}")
                cycles[i] = status["cycles"]
                rest = b"".join(replies[k_read:])
                ob = out_n * cfg.cols
                outputs[i, :out_n] = np.frombuffer(rest[:ob], dtype=np.int8).reshape(out_n, -1)
                counts[i] = np.frombuffer(rest[ob:], dtype="<u4").reshape(L, len(COUNTERS))
                if bar is not None:
                    with bar_lock:
                        bar.update()

            # Two images in flight: the device starts on the next image while we unpack one.
            inflight = collections.deque()
            try:
                for k, i in enumerate(images):
                    if failed.is_set():
                        break                # another part failed: its error is raised
                    cmds, k_run, timeouts = commands(k)
                    if 2 * len(cmds) > dev.WINDOW:
                        finish(i, dev.transact(cmds, timeouts), k_run)
                        continue
                    inflight.append((i, dev.send(cmds), k_run, timeouts))
                    if len(inflight) == 2:
                        j, ticket, k, t = inflight.popleft()
                        finish(j, dev.collect(ticket, t), k)
                while inflight:
                    j, ticket, k, t = inflight.popleft()
                    finish(j, dev.collect(ticket, t), k)
            except BaseException:
                failed.set()
                dev.abandon()
                raise

        # Contiguous parts, one per device, each driven by a thread (they wait on pipes).
        parts = np.array_split(np.arange(n), len(devices))
        try:
            if len(devices) == 1:
                run_part(devices[0], parts[0])
            else:
                with concurrent.futures.ThreadPoolExecutor(len(devices)) as pool:
                    for job in [pool.submit(run_part, d, p) for d, p in zip(devices, parts)]:
                        job.result()
        finally:
            if bar is not None:
                bar.close()
        wall = time.monotonic() - t0
        raw = layout.unpack_output(program, outputs)
        total = counts.sum(axis=0)       # (L, counters)
        col = {name: i for i, name in enumerate(COUNTERS)}
        layers = []
        for li, static in enumerate(_static_stats(program)):
            hw = {name: int(total[li, col[name]]) for name in COUNTERS}
            layers.append({
                "macs": static["macs"] * n,
                "ideal_cycles": static["ideal_cycles"] * n,
                "act_tiles": static["act_tiles"] * n,
                "act_tiles_flagged": (int(flagged.sum()) if li == 0 else
                                      int(total[li - 1, col["out_tiles_flagged"]])),
                "act_bytes_dense": static["act_bytes_dense"] * n,
                "act_bytes_read": hw["act_bytes_read"],
                "weight_bytes_read": hw["weight_bytes_read"],
                "issue_slots": hw["issue_slots"],
                "issue_slots_skipped": hw["issue_slots_skipped"],
                "busy_cycles": hw["busy_cycles"],
            })
        cycles = int(cycles.sum())
        self.extra = {"sim": {"cycles": cycles, "wall_s": round(wall, 3),
                              "cycles_per_s": round(cycles / wall) if wall > 0 else None,
                              "workers": len(devices)}}
        return raw, layers
