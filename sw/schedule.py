"""The schedule model: what the accelerator issues, skips and reads, layer by layer.

It enumerates the slots of docs/ARCHITECTURE.md ("Blocks, slots, groups") for a layer's plan and
decides, image by image, which are skipped from the input's tile flags and the weight-skip
masks. The hardware counters must equal these numbers exactly; ``busy_cycles`` only the hardware
knows (the golden backend reports ``None``).

With a configured tile other than the hardware's (kept for comparisons), only the tile counts are
exact; the activation bytes count each input tile once and the slot counters are ``None``.
"""

import numpy as np

from . import layout
from . import numerics as nx

__all__ = ["layer_stats", "network_stats", "slot_words"]


def _cdiv(a, b):
    return -(-a // b)


def slot_words(plan, config):
    """Physical input words of every slot, ignoring the output-channel group.

    conv: array (rows, xgs, Ci, K, K, NB) of word indices, −1 where a slot reads fewer than NB
    words. fc: array (Nw, 1) of word indices.
    """
    d = plan.desc
    C, NB = config.cols, config.act_banks
    if plan.layer.kind == "fc":
        return np.arange(d["in_words"]).reshape(-1, 1)
    k, s, p = d["kernel"], d["stride"], d["pad"]
    hi, wi, ci = d["in_h"], d["in_w"], d["in_c"]
    P, S = d["in_p"], d["in_s"]
    iy = np.arange(d["rows"])[:, None] * s + np.arange(k)[None, :] - p          # (rows, ky)
    ix = ((np.arange(d["xgs"])[:, None, None] * C + np.arange(C)[None, None, :]) * s
          + np.arange(k)[None, :, None] - p)                                     # (xgs, kx, j)
    col_ok = (ix >= 0) & (ix < wi)
    xw = np.where(col_ok, ix // C, -1)
    lo = np.where(col_ok, xw, np.iinfo(np.int64).max).min(axis=2)               # (xgs, kx)
    hi_w = xw.max(axis=2)
    n = np.where(col_ok.any(axis=2), hi_w - lo + 1, 0)
    assert n.max(initial=0) <= NB
    words = np.full((d["rows"], d["xgs"], ci, k, k, NB), -1, dtype=np.int64)
    c = np.arange(ci)[:, None, None, None]
    for b in range(NB):
        use = (b < n)                                                            # (xgs, kx)
        w = lo + b                                                               # (xgs, kx)
        for y in range(d["rows"]):
            row_ok = (iy[y] >= 0) & (iy[y] < hi)                                 # (ky,)
            a = c * S + iy[y][None, :, None, None] * P + w.T[None, None, :, :]   # (ci, ky, kx, xgs)
            ok = use.T[None, None] & row_ok[None, :, None, None]
            phys = (a // NB) * NB + (a + c) % NB
            words[y, :, :, :, :, b] = np.where(ok, phys, -1).transpose(3, 0, 1, 2)
    return words


def network_stats(program, flags, *, skip):
    """Per-layer counts for a batch, from each layer's input tile flags (as
    :func:`sw.golden.forward` returns them)."""
    cfg = program.config
    if not cfg.tile_is_hw:
        return [_tile_once_stats(layer, f, cfg, skip=skip)
                for layer, f in zip(program.layers, flags)]
    image = layout.pack_program(program)
    return [layer_stats(p, image, f, cfg, skip=skip) for p, f in zip(image.plans, flags)]


def layer_stats(plan, image, flags, config, *, skip):
    """Exact counts of one layer over a batch, given its input flags (N, tile grid…)."""
    layer, d = plan.layer, plan.desc
    R, C, NB = config.rows, config.cols, config.act_banks
    n_img = flags.shape[0]
    hwc = layer.kind == "fc"
    phys_flags = np.zeros((n_img, config.act_words + 1), dtype=bool)
    phys_flags[:, layout.tile_index(tuple(layer.in_shape), hwc, config).ravel()] = \
        flags.reshape(n_img, -1)
    words = slot_words(plan, config)
    words = words.reshape(-1, words.shape[-1]) if layer.kind == "conv" else words
    present = words >= 0
    nwords = present.sum(axis=1)                                                 # (slots0,)
    cogs = d["cogs"]
    # Static weight sparsity, per (cog, slot0).
    masks = np.array(image.masks[d["mbase"]:d["mbase"] + cogs * plan.groups],
                     dtype=np.int64).reshape(cogs, plan.groups)
    if layer.kind == "conv":
        kk = d["kernel"] ** 2
        wzero = ((masks[:, :, None] >> np.arange(kk)) & 1).astype(bool)       # (cog, ci, kk)
        rows, xgs = d["rows"], d["xgs"]
        wzero = np.broadcast_to(wzero.reshape(cogs, 1, 1, -1),
                                (cogs, rows, xgs, d["in_c"] * kk)).reshape(cogs, -1)
        wbytes = R
    else:
        wzero = ((masks[:, :, None] >> np.arange(NB)) & 1).astype(bool)
        wzero = wzero.reshape(cogs, -1)[:, :d["in_words"]]
        wbytes = R * C
    slots0 = len(words)
    issue_slots = cogs * slots0 * n_img
    dense_bytes = int(nwords.sum()) * C * cogs * n_img
    if skip:
        # A slot is skipped when every word it reads is flagged (or it reads none) …
        idx = np.where(present, words, config.act_words)                         # sentinel: flagged
        phys_flags[:, config.act_words] = True
        dyn = phys_flags[:, idx].all(axis=2)                                     # (N, slots0)
        # … or when its weights are all zero.
        skipped = dyn[:, None, :] | wzero[None, :, :]                            # (N, cog, slots0)
        n_skipped = int(skipped.sum())
        read_bytes = dense_bytes - int((skipped * nwords[None, None, :]).sum()) * C
    else:
        n_skipped, read_bytes = 0, dense_bytes
    return {
        "macs": layer.macs * n_img,
        "ideal_cycles": _cdiv(layer.macs, config.pes) * n_img,
        "act_tiles": int(flags[0].size) * n_img,
        "act_tiles_flagged": int(flags.sum()),
        "act_bytes_dense": dense_bytes,
        "act_bytes_read": read_bytes,
        "weight_bytes_read": (issue_slots - n_skipped) * wbytes,
        "issue_slots": issue_slots,
        "issue_slots_skipped": n_skipped,
        "busy_cycles": None,
    }


def _tile_once_stats(layer, flags, config, *, skip):
    """Counts for a non-hardware tile: every input tile read once."""
    n_img = flags.shape[0]
    tile = nx.layer_tile(layer.kind, config.tile)
    sizes = []
    for dim, t in zip(layer.in_shape, tile):
        s = np.full(_cdiv(dim, t), t)
        s[-1] = dim - t * (len(s) - 1)
        sizes.append(s)
    per_tile = sizes[0][:, None, None] * sizes[1][None, :, None] * sizes[2][None, None, :]
    dense = int(per_tile.sum()) * n_img
    flagged = int((flags * per_tile[None]).sum())
    return {
        "macs": layer.macs * n_img,
        "ideal_cycles": _cdiv(layer.macs, config.pes) * n_img,
        "act_tiles": int(flags[0].size) * n_img,
        "act_tiles_flagged": int(flags.sum()),
        "act_bytes_dense": dense,
        "act_bytes_read": dense - flagged if skip else dense,
        "weight_bytes_read": int(layer.weight.size) * n_img,
        "issue_slots": None,
        "issue_slots_skipped": None,
        "busy_cycles": None,
    }
