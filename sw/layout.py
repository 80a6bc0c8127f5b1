"""How a Program lies in the accelerator's memories (see docs/ARCHITECTURE.md).

The descriptor format is written once here, as an ordered field list; the gateware builds its
``data.StructLayout`` from :func:`descriptor_fields` and the host packs with :func:`pack_fields`.
Everything that places a value in a memory — activations, flags, weights, weight-skip masks,
output parameters — is computed here and nowhere else.
"""

import enum
from dataclasses import dataclass

import numpy as np

from .config import ConfigError
from .numerics import accumulator_bound, layer_tile, tile_flags

__all__ = ["LayoutError", "LayerPlan", "plan", "descriptor_fields", "pack_fields",
           "unpack_fields", "MemoryImage", "pack_program", "pack_input", "unpack_output",
           "element_index", "tile_index", "param_steps", "Region", "memory_map", "region_map",
           "CHUNKED", "CHUNK_BITS", "chunk_shift", "chunk_bytes", "row_words", "COUNTERS",
           "COUNTER_BITS", "HW_VERSION", "config_words", "run_word", "unpack_status",
           "KIND_CONV", "KIND_FC", "MODE_INT8", "MODE_BINARY"]

KIND_CONV, KIND_FC = 0, 1
MODE_INT8, MODE_BINARY = 0, 1


class LayoutError(ConfigError):
    """A program that does not fit the accelerator's configuration."""


def _cdiv(a, b):
    return -(-a // b)


def _bits(n):
    """Bits to hold the values 0 … n."""
    return max(1, int(n).bit_length())


def descriptor_fields(config):
    """Ordered ``(name, bits)`` of one layer descriptor, least significant field first."""
    ch, wd = _bits(config.max_channels), _bits(config.max_width)
    act = _bits(config.act_words)
    wt = _bits(config.weight_words)
    return [
        ("kind", 1), ("mode", 2), ("relu", 1), ("pool", 1), ("last", 1), ("out_hwc", 1),
        ("kernel", _bits(config.max_kernel)), ("stride", _bits(config.max_stride)),
        ("pad", _bits(config.max_kernel)),
        ("in_c", ch), ("in_h", wd), ("in_w", wd), ("in_p", wd), ("in_s", act), ("in_words", act),
        ("out_c", ch), ("conv_h", wd), ("conv_w", wd), ("rows", wd), ("xgs", wd),
        ("cogs", ch), ("groups", act),
        ("out_h", wd), ("out_w", wd), ("out_p", wd), ("out_s", act), ("out_q", ch),
        ("wbase", wt), ("mbase", wt), ("pbase", wt),
    ]


def pack_fields(fields, values):
    """Pack a dict into an int, fields in order from bit 0; refuses values that do not fit."""
    word, shift = 0, 0
    for name, bits in fields:
        v = int(values[name])
        if not 0 <= v < (1 << bits):
            raise LayoutError(f"descriptor field {name}={v} does not fit in {bits} bits")
        word |= v << shift
        shift += bits
    return word


def unpack_fields(fields, word):
    out, shift = {}, 0
    for name, bits in fields:
        out[name] = (word >> shift) & ((1 << bits) - 1)
        shift += bits
    return out


@dataclass
class LayerPlan:
    """Where one layer's tensors live and how it is iterated."""

    layer: object
    index: int
    desc: dict         # descriptor field values
    in_words: int      # words of the input tensor's layout (incl. plane padding)
    out_words: int     # words of the output tensor's layout
    weight_words: int  # weight words (conv) or rows × C (fc)
    groups: int        # groups per cog
    slots_per_block: int


def _words(shape, hwc, config):
    ch, h, w = shape
    if hwc:
        return h * w * _cdiv(ch, config.cols)
    return ch * _round_up(h * _cdiv(w, config.cols), config.act_banks)


def _round_up(x, m):
    return _cdiv(x, m) * m


def _check(cond, where, what):
    if not cond:
        raise LayoutError(f"layer {where}: {what}")


def plan(program):
    """Plan every layer's descriptor and memory placement; raise :class:`LayoutError` naming the
    layer and the limit when anything does not fit the configuration."""
    cfg = program.config
    R, C, NB = cfg.rows, cfg.cols, cfg.act_banks
    if not cfg.tile_is_hw:
        raise LayoutError(f"the hardware implements tiles {cfg.hw_tile}, the program's "
                          f"configuration has {cfg.tile}")
    if R % C:
        raise LayoutError(f"Config.rows ({R}) must be a multiple of Config.cols ({C})")
    if len(program.layers) > cfg.max_layers:
        raise LayoutError(f"{len(program.layers)} layers, the accelerator holds "
                          f"{cfg.max_layers}")
    plans, wbase, mbase, pbase = [], 0, 0, 0
    layers = program.layers
    for i, layer in enumerate(layers):
        where = f"{i} ('{layer.name}')"
        _check(layer.mode == "int8", where,
               f"mode '{layer.mode}' is not supported by this accelerator (int8 only)")
        acc_max = 2 ** (cfg.acc_bits - 1) - 1
        bound = accumulator_bound(layer.weight, layer.bias)
        _check(bound <= acc_max, where,
               f"its accumulators can reach {bound} (Σ|w|·128 + |bias|), beyond the "
               f"accelerator's {cfg.acc_bits}-bit accumulators ({acc_max})")
        last = i == len(layers) - 1
        out_hwc = last or layers[i + 1].kind == "fc"
        in_hwc = layer.kind == "fc"
        ci, hi, wi = layer.in_shape
        co, ho, wo = layer.conv_shape
        oc, oh, ow = layer.out_shape
        for name, v, lim in (("input channels", ci, cfg.max_channels),
                             ("output channels", co, cfg.max_channels),
                             ("input height", hi, cfg.max_width),
                             ("input width", wi, cfg.max_width)):
            _check(v <= lim, where, f"{name} {v} exceed the accelerator's {lim}")
        in_words = _words((ci, hi, wi), in_hwc, cfg)
        out_words = _words((oc, oh, ow), out_hwc, cfg)
        cogs = _cdiv(co, R)
        if layer.kind == "conv":
            k, s, p = layer.kernel, layer.stride, layer.padding
            _check(k <= cfg.max_kernel, where, f"kernel {k} exceeds the accelerator's "
                                               f"{cfg.max_kernel}")
            _check(s <= cfg.max_stride, where, f"stride {s} exceeds the accelerator's "
                                               f"{cfg.max_stride}")
            span = (C - 1) * s + k
            _check(_cdiv(span - 1, C) + 1 <= NB, where,
                   f"a window of {span} pixels spans more than {NB} words")
            rows = 2 * (ho // 2) if layer.pool else ho
            xgs = _cdiv(wo, C)
            groups = ci
            slots = ci * k * k
            wwords = cogs * ci * k * k
            nw = 0
        else:
            k, s, p = 1, 1, 0
            rows, xgs = 1, 1
            nw = in_words
            groups = _cdiv(nw, NB)
            slots = nw
            wwords = cogs * nw * C
            wbase = _round_up(wbase, C)
        desc = {
            "kind": KIND_CONV if layer.kind == "conv" else KIND_FC, "mode": MODE_INT8,
            "relu": int(layer.relu), "pool": int(layer.pool), "last": int(last),
            "out_hwc": int(out_hwc), "kernel": k, "stride": s, "pad": p,
            "in_c": ci, "in_h": hi, "in_w": wi, "in_p": _cdiv(wi, C),
            "in_s": _round_up(hi * _cdiv(wi, C), NB), "in_words": nw,
            "out_c": co, "conv_h": ho, "conv_w": wo, "rows": rows, "xgs": xgs,
            "cogs": cogs, "groups": groups,
            "out_h": oh, "out_w": ow, "out_p": _cdiv(ow, C),
            "out_s": _round_up(oh * _cdiv(ow, C), NB), "out_q": _cdiv(oc, C),
            "wbase": wbase, "mbase": mbase, "pbase": pbase,
        }
        # The counters (Config.counter_bits): the layer's slots with skipping off, and at
        # most that many times a slot's bytes.
        n_slots = cogs * rows * xgs * slots
        count_max = n_slots * max(NB * C, R * C if layer.kind == "fc" else R)
        _check(count_max < 2 ** cfg.counter_bits, where,
               f"its counters could reach {count_max} ({n_slots} slots), beyond the "
               f"accelerator's {cfg.counter_bits}-bit counters")
        for what, n in (("input", in_words), ("output", out_words)):
            _check(n <= cfg.act_words, where, f"the {what} needs {n} activation words, a buffer "
                                              f"holds {cfg.act_words}")
        plans.append(LayerPlan(layer, i, desc, in_words, out_words, wwords, groups, slots))
        wbase += wwords
        mbase += cogs * groups
        pbase += cogs
        for what, used, depth in (("weights", wbase, cfg.weight_words),
                                  ("weight-skip masks", mbase, cfg.mask_words),
                                  ("output parameters", pbase, cfg.param_words)):
            _check(used <= depth, where, f"{what} need {used} words in all, the memory holds "
                                         f"{depth}")
    fields = descriptor_fields(cfg)
    for p in plans:
        pack_fields(fields, p.desc)   # refuses a value too wide for its field
    return plans


# -- addresses --------------------------------------------------------------------------------

def _phys(a, bank, nb):
    """Host-visible index of the word with logical address ``a`` lying in ``bank``."""
    return (a // nb) * nb + bank


def element_index(shape, hwc, config):
    """For every element of a ``(Ch, H, W)`` tensor: (physical word index, lane) arrays."""
    ch, h, w = shape
    C, NB = config.cols, config.act_banks
    c, y, x = np.meshgrid(np.arange(ch), np.arange(h), np.arange(w), indexing="ij")
    if hwc:
        q = _cdiv(ch, C)
        a = (y * w + x) * q + c // C
        return _phys(a, a % NB, NB), c % C
    p = _cdiv(w, C)
    s = _round_up(h * p, NB)
    a = c * s + y * p + x // C
    return _phys(a, (a + c) % NB, NB), x % C


def tile_index(shape, hwc, config):
    """Physical word index of every tile, shaped like the tile grid of :func:`tile_flags`."""
    ch, h, w = shape
    C, NB = config.cols, config.act_banks
    if hwc:
        k, y, x = np.meshgrid(np.arange(_cdiv(ch, C)), np.arange(h), np.arange(w), indexing="ij")
        a = (y * w + x) * _cdiv(ch, C) + k
        return _phys(a, a % NB, NB)
    c, y, xw = np.meshgrid(np.arange(ch), np.arange(h), np.arange(_cdiv(w, C)), indexing="ij")
    a = c * _round_up(h * _cdiv(w, C), NB) + y * _cdiv(w, C) + xw
    return _phys(a, (a + c) % NB, NB)


# -- memory images ----------------------------------------------------------------------------

@dataclass
class MemoryImage:
    """Everything the host writes before a run, except the input activations.

    ``weights`` is (cols, weight_words / cols, rows) int8: bank, in-bank address, lane.
    ``masks`` and ``params`` are lists of ints (one memory word each), ``descriptors`` likewise.
    """

    weights: np.ndarray
    masks: list
    params: list
    descriptors: list
    plans: list


#: Bit widths of one output-parameter lane: bias, multiplier, shift (least significant first).
PARAM_FIELDS = (("bias", 32), ("mult", 16), ("shift", 5))
PARAM_BITS = sum(b for _, b in PARAM_FIELDS)


def param_steps(config):
    """Rows of the output-parameter memory per ``cog``: the output stage's ``rows / out_words``
    requantization steps, rounded up to a power of two. Row ``(pbase + cog) · param_steps +
    step`` holds the ``out_words`` lanes of output channels ``cog · rows + step · out_words
    + w``; the rows past the last step are zero."""
    return 1 << (config.rows // config.out_words - 1).bit_length()


def _fc_weight_rows(layer, config, nw):
    """fc weights as (cogs, Nw, C, R): input word, input lane, output lane."""
    R, C = config.rows, config.cols
    ci, h, w = layer.in_shape
    co = layer.weight.shape[0]
    q = _cdiv(ci, C)
    wt = layer.weight.reshape(co, ci, h, w)
    out = np.zeros((_cdiv(co, R) * R, nw, C), dtype=np.int8)
    word = np.arange(nw)
    pix, k = word // q, word % q
    y, x = pix // w, pix % w
    for j in range(C):
        c = k * C + j
        ok = c < ci
        out[:co, word[ok], j] = wt[:, c[ok], y[ok], x[ok]]
    return out.reshape(-1, R, nw, C).transpose(0, 2, 3, 1)


def pack_program(program):
    """Weights, weight-skip masks, output parameters and descriptors of ``program``."""
    cfg = program.config
    R, C, NB, OW = cfg.rows, cfg.cols, cfg.act_banks, cfg.out_words
    steps = param_steps(cfg)
    plans = plan(program)
    weights = np.zeros((C, cfg.weight_words // C, R), dtype=np.int8)
    masks = [0] * (plans[-1].desc["mbase"] + plans[-1].desc["cogs"] * plans[-1].groups)
    params = []
    for p in plans:
        layer, d = p.layer, p.desc
        co = layer.weight.shape[0]
        cogs = d["cogs"]
        if layer.kind == "conv":
            k = layer.kernel
            w = np.zeros((cogs * R,) + layer.weight.shape[1:], dtype=np.int8)
            w[:co] = layer.weight
            # (cog, ci, ky, kx, r): slot-major, lane-minor.
            w = w.reshape(cogs, R, d["in_c"], k, k).transpose(0, 2, 3, 4, 1)
            index = d["wbase"] + np.arange(p.weight_words)    # word index → (bank, address)
            weights[index % C, index // C] = w.reshape(-1, R)
            zero = ~w.reshape(cogs, d["in_c"], k * k, R).any(axis=3)
        else:
            nw = d["in_words"]
            w = _fc_weight_rows(layer, cfg, nw)
            row0 = d["wbase"] // C
            weights[:, row0:row0 + cogs * nw] = w.reshape(cogs * nw, C, R).transpose(1, 0, 2)
            zero_w = ~w.any(axis=(2, 3))                     # (cogs, nw)
            pad = p.groups * NB - nw
            zero = np.pad(zero_w, ((0, 0), (0, pad))).reshape(cogs, p.groups, NB)
        for cog in range(cogs):
            for g in range(p.groups):
                bits = zero[cog, g]
                masks[d["mbase"] + cog * p.groups + g] = int(
                    sum(1 << b for b in range(len(bits)) if bits[b]))
        for cog in range(cogs):
            for step in range(steps):
                word = 0
                for w in range(OW):
                    c = cog * R + step * OW + w
                    lane = ({"bias": int(layer.bias[c]) & 0xFFFFFFFF,
                             "mult": int(layer.mult[c]), "shift": int(layer.shift[c])}
                            if step * OW < R and c < co else
                            {"bias": 0, "mult": 0, "shift": 0})
                    word |= pack_fields(PARAM_FIELDS, lane) << (w * PARAM_BITS)
                params.append(word)
    fields = descriptor_fields(cfg)
    descriptors = [pack_fields(fields, p.desc) for p in plans]
    return MemoryImage(weights, masks, params, descriptors, plans)


def pack_input(program, xq):
    """The network input (N, C, H, W) ints → (words (N, act_words, cols) int8, flags (N,
    act_words) bool, flagged-tile counts (N,)), physically indexed, flagged tiles zeroed."""
    cfg = program.config
    first = program.layers[0]
    hwc = first.kind == "fc"
    shape = tuple(first.in_shape)
    x = np.asarray(xq).reshape((len(xq),) + shape)
    tile = layer_tile(first.kind, cfg.tile)
    f = tile_flags(x, tile, program.epsilon)
    rep = np.repeat(np.repeat(np.repeat(f, tile[0], 1), tile[1], 2), tile[2], 3)
    x = np.where(rep[:, :shape[0], :shape[1], :shape[2]], 0, x)
    n = len(x)
    words = np.zeros((n, cfg.act_words, cfg.cols), dtype=np.int8)
    idx, lane = element_index(shape, hwc, cfg)
    words[:, idx, lane] = x
    flags = np.zeros((n, cfg.act_words), dtype=bool)
    flags[:, tile_index(shape, hwc, cfg)] = f
    return words, flags, f.reshape(n, -1).sum(axis=1)


def unpack_output(program, words):
    """The last layer's output words (N, act_words, cols) → raw outputs (N, classes) int64."""
    last = program.layers[-1]
    idx, lane = element_index(tuple(last.out_shape), True, program.config)
    out = np.asarray(words)[:, idx, lane].astype(np.int64)
    return out.reshape(len(out), -1)   # (C, H, W) order, as PyTorch flattens


# -- the device's memory map ------------------------------------------------------------------

#: Version of the gateware's memory map and descriptor format, reported by the device.
HW_VERSION = 5


class Region(enum.IntEnum):
    """Regions of the device's memory map, as the host bus addresses them."""
    ACT0 = 0     #: activation buffer A, physical word index
    ACT1 = 1     #: activation buffer B
    FLAG0 = 2    #: tile flags of buffer A (1 bit per word)
    FLAG1 = 3    #: tile flags of buffer B
    WEIGHT = 4   #: weight memory, row = in-bank address × cols + bank (CHUNKED)
    MASK = 5     #: weight-skip masks
    PARAM = 6    #: output parameters, row = (pbase + cog) · param_steps + step (CHUNKED)
    DESC = 7     #: layer descriptors (CHUNKED)
    COUNT = 8    #: per-layer counters (read only), index = layer × len(COUNTERS) + counter
    CTRL = 9     #: 0: run (write) / status (read); 1: HW_VERSION; 2…: config_words (read only)


#: Per-layer hardware counters, in their order in the COUNT region.
COUNTERS = ("busy_cycles", "issue_slots", "issue_slots_skipped", "act_bytes_read",
            "weight_bytes_read", "out_tiles_flagged")
COUNTER_BITS = 32

#: Config fields the device reports (CTRL index 2 …), in this order: those that decide how a
#: program is packed and which programs it can run (acc_bits: which layers' sums it holds).
_REPORTED = ("rows", "cols", "act_words", "act_banks", "weight_words", "mask_words",
             "param_words", "max_layers", "max_channels", "max_width", "max_kernel", "max_stride",
             "out_words", "acc_bits")


def config_words(config):
    """The configuration as the device reports it."""
    return [getattr(config, f) for f in _REPORTED]


def config_from_words(words):
    """Rebuild a Config from the device's report (the tile is the hardware's)."""
    from .config import Config
    values = dict(zip(_REPORTED, words))
    return Config(tile=(1, 1, values["cols"]), **values)


def memory_map(config):
    """{Region: (row width in bits, rows)} of the device's memories (and CTRL's registers)."""
    return {
        Region.ACT0: (config.cols * 8, config.act_words),
        Region.ACT1: (config.cols * 8, config.act_words),
        Region.FLAG0: (1, config.act_words),
        Region.FLAG1: (1, config.act_words),
        Region.WEIGHT: (config.rows * 8, config.weight_words),
        Region.MASK: (config.group_bits, config.mask_words),
        Region.PARAM: (config.out_words * PARAM_BITS, config.param_words * param_steps(config)),
        Region.DESC: (sum(b for _, b in descriptor_fields(config)), config.max_layers),
        Region.COUNT: (COUNTER_BITS, config.max_layers * len(COUNTERS)),
        Region.CTRL: (sum(b for _, b in STATUS_FIELDS), 2 + len(_REPORTED)),
    }


#: Regions whose rows are wider than the host bus. The host sees each row as ``2**k`` words of
#: CHUNK_BITS (:func:`chunk_shift`), word ``row << k | chunk`` holding bits ``chunk × 32 …`` of
#: the row (little-endian, so a row's bytes are its words' bytes in order); words past the row's
#: width read as 0 and ignore writes.
CHUNKED = (Region.WEIGHT, Region.PARAM, Region.DESC)
CHUNK_BITS = 32


def chunk_shift(width):
    """log2 of the host words per row of a CHUNKED region whose rows are ``width`` bits."""
    return (_cdiv(width, CHUNK_BITS) - 1).bit_length()


def region_map(config):
    """{Region: (width in bits, depth in words)} of the memory map as the host addresses it."""
    out = {}
    for region, (width, rows) in memory_map(config).items():
        if region in CHUNKED:
            out[region] = (CHUNK_BITS, rows << chunk_shift(width))
        else:
            out[region] = (width, rows)
    return out


def chunk_bytes(config, region, rows):
    """Rows of a CHUNKED ``region`` as little-endian bytes (uint8 array (n, row bytes)) → its
    host words' bytes (uint8 array (n << k, 4)), each row padded to whole words."""
    k = chunk_shift(memory_map(config)[region][0])
    rows = np.asarray(rows, dtype=np.uint8)
    pad = (CHUNK_BITS // 8 << k) - rows.shape[1]
    return np.pad(rows, ((0, 0), (0, pad))).reshape(-1, CHUNK_BITS // 8)


def row_words(config, region, rows):
    """Host words of consecutive rows (ints) of a CHUNKED ``region``, from its first word."""
    width = memory_map(config)[region][0]
    n = 1 << chunk_shift(width)
    mask = (1 << CHUNK_BITS) - 1
    return [row >> (CHUNK_BITS * k) & mask for row in rows for k in range(n)]


#: The run command (CTRL index 0, written) and the status word (read).
RUN_FIELDS = (("layers", 8), ("skip", 1), ("epsilon", 8))
STATUS_FIELDS = (("busy", 1), ("done", 1), ("error", 1), ("reserved", 5), ("cycles", 32))


def run_word(layers, skip, epsilon):
    if not 0 <= epsilon < 256:
        raise LayoutError(f"epsilon {epsilon} does not fit the device's 8-bit threshold")
    return pack_fields(RUN_FIELDS, {"layers": layers, "skip": int(skip), "epsilon": epsilon})


def unpack_status(word):
    return unpack_fields(STATUS_FIELDS, word)
