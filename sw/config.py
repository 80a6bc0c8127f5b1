"""The one configuration object of tileskip.

A handful of base parameters; everything else (widths, depths, tile counts) is derived here and
nowhere else. The gateware in ``hw/``, the compiler and the runtime all take a :class:`Config`.

The PE array is output-stationary: ``rows`` output channels × ``cols`` neighbouring output pixels
of one output row per pass. An activation *tile* is ``tile = (channels, rows, pixels)`` of a layer's
input; the default, one channel × one row × ``cols`` pixels aligned to the input's columns, is the
granularity at which real feature maps have all-zero tiles (see README, "Why this tile").
"""

import dataclasses
import json
from dataclasses import dataclass

__all__ = ["Config", "ConfigError", "CONFIGS"]


class ConfigError(ValueError):
    """A configuration that cannot be built or does not fit a program."""


#: Micro-architectures of the loader, the output stage and the host bus (``Config.loader``,
#: ``Config.output``, ``Config.bus``).
LOADERS = ("pipelined", "compact")


def _is_pow2(x):
    return x > 0 and (x & (x - 1)) == 0


@dataclass(frozen=True)
class Config:
    """Base parameters of one accelerator build.

    Parameters
    ----------
    rows : int
        PE array rows: output channels computed per pass.
    cols : int
        PE array columns: neighbouring output pixels per pass (one input tile wide).
    tile : tuple of (int, int, int)
        Activation tile as (channels, rows, pixels). The hardware supports ``(1, 1, cols)``;
        coarser tiles stay expressible in the golden model for comparison.
    act_words : int
        Depth of each of the two ping-pong activation buffers, in words of ``cols`` int8 values.
    act_banks : int
        Banks per activation buffer (power of two); a slot reads at most this many words at once.
    weight_words : int
        Depth of the weight memory, in words of ``rows`` int8 values.
    mask_words : int
        Depth of the weight-skip mask memory (one word per group of slots).
    param_words : int
        Groups of ``rows`` output channels whose parameters the output-parameter memory holds
        (its rows hold ``out_words`` channels each: :func:`sw.layout.param_steps`).
    max_layers : int
        Layer descriptors held on chip.
    max_channels : int
        Largest channel count (input or output) of a layer.
    max_width : int
        Largest feature-map height or width (and vector length ÷ ``cols``) of a layer.
    max_kernel : int
        Largest square kernel.
    max_stride : int
        Largest stride.
    out_words : int
        Output-stage throughput: output words (``cols`` values of one channel) requantized per
        cycle.
    shadows : int
        Finished blocks the PE array holds behind its accumulators (its queue,
        ``hw.pe_array.PEArray.credits``); 0: as many as keep blocks of ``rows/out_words``
        cycles flowing at full rate (2 for ``ecp5``, 3 for ``default``). Fewer save
        ``rows·cols·acc_bits`` flip-flops each, and a block of few slots then waits for the one
        before it to be taken by the output stage.
    output : str
        The output stage's micro-architecture: ``"pipelined"`` (``hw/output.py``: ``out_words``
        words a cycle, its products in DSP blocks) or ``"compact"`` (``hw/compact_output.py``:
        one value at a time, products in logic, for small FPGAs). The same results and writes.
    loader : str
        The loader's micro-architecture: ``"pipelined"`` (``hw/loader.py``: a whole group of
        slots scanned per cycle, fully skipped groups hidden behind issue; built for 100 MHz on
        ECP5) or ``"compact"`` (``hw/compact_loader.py``: one kernel row at a time, less logic,
        one flag read port per bank and one weight word per cycle, so that the weights can be
        one single-ported memory, for small FPGAs). Both issue the same slots and count the
        same; only the cycles differ.
    bus : str
        The host bus's micro-architecture (``hw/core.py``): ``"pipelined"`` (a command a cycle
        through seven register stages and a response FIFO, built for 100 MHz on ECP5) or
        ``"compact"`` (the same stages, one command at a time, with no FIFO and no copies of
        the command or of the read data, for small FPGAs). The same commands and responses.
    acc_bits : int
        The accumulators' width, 16 to 32. The numerics contract's accumulator is int32
        (``sw/numerics.py``); narrower ones compute the same for every layer whose sums cannot
        leave them (:func:`sw.numerics.accumulator_bound`), and ``sw/layout.py`` refuses the
        others. Each bit less saves ``rows·cols`` accumulator and shadow bits with their adders.
    counter_bits : int
        The hardware counters' width, 16 to 32 (the host reads them as 32-bit words, zero
        extended). ``sw/layout.py`` refuses a layer whose exact counters could pass
        ``2^counter_bits − 1`` with skipping off; the cycle counters (``busy_cycles``, the run's
        cycles) stop there instead of wrapping. Each bit less saves seven counter bits with
        their adders.
    """

    rows: int = 16
    cols: int = 4
    tile: tuple = (1, 1, 4)
    act_words: int = 2048
    act_banks: int = 4
    weight_words: int = 4096
    mask_words: int = 1024
    param_words: int = 64
    max_layers: int = 16
    max_channels: int = 256
    max_width: int = 64
    max_kernel: int = 3
    max_stride: int = 2
    out_words: int = 2
    shadows: int = 0
    output: str = "pipelined"
    loader: str = "pipelined"
    bus: str = "pipelined"

    acc_bits: int = 32
    counter_bits: int = 32

    # Numerics widths; fixed by the numerics contract (sw/numerics.py), kept here so the hardware
    # derives its port widths from the same object.
    act_bits: int = 8
    weight_bits: int = 8
    mult_bits: int = 16
    shift_bits: int = 5

    def __post_init__(self):
        for name in ("rows", "cols", "act_words", "act_banks", "weight_words", "mask_words",
                     "param_words", "max_layers",
                     "max_channels", "max_width", "max_kernel", "max_stride", "out_words"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"Config.{name} must be a positive integer, not {value!r}")
        if not isinstance(self.shadows, int) or isinstance(self.shadows, bool) or self.shadows < 0:
            raise ConfigError(f"Config.shadows must be a non-negative integer, not "
                              f"{self.shadows!r}")
        for name in ("acc_bits", "counter_bits"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 16 <= value <= 32:
                raise ConfigError(f"Config.{name} must be an integer from 16 to 32, not "
                                  f"{value!r}")
        for name in ("output", "loader", "bus"):
            if getattr(self, name) not in LOADERS:
                raise ConfigError(f"Config.{name} must be one of "
                                  f"{', '.join(map(repr, LOADERS))}, not {getattr(self, name)!r}")
        tile = tuple(self.tile)
        if len(tile) != 3 or not all(isinstance(t, int) and t > 0 for t in tile):
            raise ConfigError(f"Config.tile must be three positive integers "
                              f"(channels, rows, pixels), not {self.tile!r}")
        object.__setattr__(self, "tile", tile)
        if not _is_pow2(self.cols):
            raise ConfigError(f"Config.cols must be a power of two, not {self.cols}")
        if not _is_pow2(self.act_banks):
            raise ConfigError(f"Config.act_banks must be a power of two, not {self.act_banks}")
        if self.act_words % self.act_banks:
            raise ConfigError(f"Config.act_words ({self.act_words}) must be a multiple of "
                              f"act_banks ({self.act_banks})")
        if self.rows % self.out_words:
            raise ConfigError(f"Config.rows ({self.rows}) must be a multiple of "
                              f"out_words ({self.out_words})")
        if self.out_words > self.act_banks:
            raise ConfigError(f"Config.out_words ({self.out_words}) cannot exceed "
                              f"act_banks ({self.act_banks}): one write per bank and cycle")
        # A strided window of `cols` pixels must fit the banks read in one cycle.
        span = (self.cols - 1) * self.max_stride + 1
        if -(-(span - 1) // self.cols) + 1 > self.act_banks:
            raise ConfigError(f"Config.act_banks ({self.act_banks}) is too few for a window of "
                              f"{self.cols} pixels at stride {self.max_stride}")
        # The compact loader reads a whole kernel row's windows at once.
        row = span + self.max_kernel - 1
        if self.loader == "compact" and -(-(row - 1) // self.cols) + 1 > self.act_banks:
            raise ConfigError(f"Config.act_banks ({self.act_banks}) is too few for the compact "
                              f"loader: a kernel row of {self.cols} windows at stride "
                              f"{self.max_stride} and kernel {self.max_kernel} spans "
                              f"{-(-(row - 1) // self.cols) + 1} words")

    # -- derived ------------------------------------------------------------------------------

    @property
    def pes(self):
        """Number of processing elements (MACs per cycle)."""
        return self.rows * self.cols

    @property
    def hw_tile(self):
        """The tile the hardware implements: one channel × one row × ``cols`` pixels."""
        return (1, 1, self.cols)

    @property
    def group_bits(self):
        """Slots per group: a conv input channel's kernel window, or ``act_banks`` fc words."""
        return max(self.max_kernel ** 2, self.act_banks)

    @property
    def tile_is_hw(self):
        return self.tile == self.hw_tile

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        d = dict(d)
        if "tile" in d:
            d["tile"] = tuple(d["tile"])
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown configuration keys: {', '.join(sorted(unknown))}")
        return cls(**d)

    def key(self):
        """A stable string that names this configuration (for build caches)."""
        return json.dumps(self.to_dict(), sort_keys=True)


#: Named configurations. ``default`` is what the simulator and benchmarks use.
CONFIGS = {
    "default": Config(),
    # ECP5-85F (ULX3S): 128 int8 MACs.
    "ecp5": Config(rows=32, cols=4, tile=(1, 1, 4), act_words=4096, weight_words=4096),
    # iCE40UP5K (iCEBreaker): 16 MACs on the 8 SB_MAC16 (two 8×8 products each).
    # The demo network's 20 groups of 8 output channels take 32 parameter words (4 block
    # RAMs, where 64 take 7); its largest accumulator bound, 2,142,988, takes 23 bits; it has
    # 5 layers of at most 64 channels (larger limits: 82 more logic cells, a block RAM). Its
    # largest count is 451,584 weight bytes (layer 1), its slowest layer 137,219 cycles: 24-bit
    # counters (at fc9b578 161 logic cells fewer than 32-bit ones, with which it does not fit).
    "up5k": Config(rows=8, cols=2, tile=(1, 1, 2), act_words=2048, act_banks=4,
                   weight_words=8192, param_words=32, out_words=1, max_width=32, shadows=1,
                   max_channels=64, max_layers=8, mask_words=512,
                   output="compact", loader="compact", bus="compact", acc_bits=24,
                   counter_bits=24),
}
