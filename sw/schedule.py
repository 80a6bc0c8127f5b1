"""Per-layer counts of what a run reads and computes.

Until the accelerator's dataflow lands, the golden backend counts each input tile once: the
activation bytes are the input's bytes (minus the flagged tiles' bytes with skipping on), the
weight bytes are the layer's weights, and the cycle/slot counters are unknown (``None``).
"""

import numpy as np

__all__ = ["layer_stats"]


def _tile_bytes(in_shape, tile):
    """Elements in each tile of a (C, H, W) tensor, as an array over the tile grid."""
    sizes = []
    for d, t in zip(in_shape, tile):
        n = -(-d // t)
        s = np.full(n, t)
        s[-1] = d - t * (n - 1)
        sizes.append(s)
    return sizes[0][:, None, None] * sizes[1][None, :, None] * sizes[2][None, None, :]


def layer_stats(layer, flags, config, *, skip):
    """Counts for one layer over a batch, given its input flags (N, tiles…)."""
    images = flags.shape[0]
    per_tile = _tile_bytes(layer.in_shape, config.tile)
    dense = int(per_tile.sum()) * images
    flagged_bytes = int((flags * per_tile[None]).sum())
    return {
        "macs": layer.macs * images,
        "ideal_cycles": -(-layer.macs // config.pes) * images,
        "act_tiles": int(flags[0].size) * images,
        "act_tiles_flagged": int(flags.sum()),
        "act_bytes_dense": dense,
        "act_bytes_read": dense - flagged_bytes if skip else dense,
        "weight_bytes_read": int(layer.weight.size) * images,
        "issue_slots": None,
        "issue_slots_skipped": None,
        "busy_cycles": None,
    }
