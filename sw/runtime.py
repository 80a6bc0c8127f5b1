"""One device API over several backends.

``Accelerator(backend).run(program, x)`` quantizes a float NCHW batch with the program's input
scale, runs it, and returns a :class:`Result` with the dequantized outputs, the raw integer outputs
and per-layer statistics. Backends differ only in where the integers are computed.
"""

import hashlib
from dataclasses import dataclass

import numpy as np

from . import golden, schedule
from . import numerics as nx

__all__ = ["Accelerator", "Result", "RuntimeError_", "BACKENDS", "outputs_sha256"]

#: Numeric keys of a layer's statistics, in the order of the JSON report.
STAT_KEYS = ("macs", "ideal_cycles", "act_tiles", "act_tiles_flagged", "act_bytes_dense",
             "act_bytes_read", "weight_bytes_read", "issue_slots", "issue_slots_skipped",
             "busy_cycles")


class RuntimeError_(ValueError):
    """Input or program the runtime cannot run."""


@dataclass
class Result:
    values: np.ndarray  #: float outputs (N, classes), dequantized with the last layer's scale
    raw: np.ndarray     #: integer outputs (N, classes)
    stats: dict         #: {"layers": [...], "totals": {...}}, counts summed over the batch


def outputs_sha256(raw):
    """SHA-256 of raw outputs as little-endian int32, C order."""
    return hashlib.sha256(np.ascontiguousarray(raw, dtype="<i4").tobytes()).hexdigest()


def totals(layers):
    out = {}
    for k in STAT_KEYS:
        vals = [layer[k] for layer in layers]
        out[k] = None if any(v is None for v in vals) else int(sum(vals))
    return out


def quantize_input(program, x):
    x = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float64)
    expect = tuple(program.input_shape)
    if x.ndim != 4 or tuple(x.shape[1:]) != expect:
        dims = ", ".join(map(str, expect))
        raise RuntimeError_(f"input must be a float batch of shape (N, {dims}), "
                            f"not {tuple(x.shape)}")
    if not np.all(np.isfinite(x)):
        raise RuntimeError_("input contains NaN or infinite values")
    return nx.quantize(x, program.input_scale)


class _Golden:
    name = "golden"

    def run(self, program, xq, skip):
        raw, flags = golden.forward(program, xq)
        return raw, schedule.network_stats(program, flags, skip=skip)


def _sim(**options):
    from .sim import SimBackend  # the Verilated gateware (sw/sim.py); imports hw/ lazily
    return SimBackend(**options)


BACKENDS = {"golden": _Golden, "sim": _sim}


class Accelerator:
    """The accelerator behind one backend: ``"golden"`` (more come with the hardware)."""

    def __init__(self, backend="golden", **options):
        if backend not in BACKENDS:
            raise RuntimeError_(f"unknown backend {backend!r}; available: "
                                f"{', '.join(sorted(BACKENDS))}")
        self.backend = BACKENDS[backend](**options)

    def run(self, program, x, *, skip=True):
        """Run ``program`` on the float NCHW batch ``x``.

        ``skip=False`` issues every MAC slot; flagged tiles still count as zeros, so the outputs
        are the same as with skipping at the same ε.
        """
        xq = quantize_input(program, x)
        raw, layers = self.backend.run(program, xq, skip)
        for layer, stats in zip(program.layers, layers):
            stats.update({"name": layer.name, "kind": layer.kind})
        raw = np.asarray(raw, dtype=np.int64)
        values = nx.dequantize(raw, program.output_scale)
        stats = {"layers": layers, "totals": totals(layers)}
        if getattr(self.backend, "extra", None):
            stats["extra"] = self.backend.extra   # backend-specific, e.g. {"sim": {...}}
        return Result(values, raw, stats)
