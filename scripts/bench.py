"""Golden model and Verilated accelerator side by side on the demo network.

    .venv/bin/python scripts/bench.py [--config default] [--images 1000] [--epsilons 0 4 8]
                                      [--json results/bench.json]

For every ε, with skipping on and off, runs the demo network's test images on the golden model
and on the sim backend, and checks and reports:

* the outputs agree bit for bit (``outputs_sha256``) and every exact counter equals the golden
  schedule model's;
* per layer, busy cycles against ideal cycles (MACs ÷ PEs) with skipping off;
* skip realisation = (busy cycles with skipping off − with skipping on) ÷ skipped slots, per layer;
* activation bytes read with skipping = dense bytes − the skipped slots' bytes;
* simulation speed: busy cycles per wall-clock second and wall time per image (build excluded),
  on one simulator process per core (the default) and, for the first ε with skipping, on one;
* the acceptance targets of the core, each met or not: with skipping off, busy ≤ 1.05 × ideal
  on every layer that maps onto the array (output channels a multiple of its rows, output width
  of its columns; a fully-connected layer's output is one pixel wide) and ≤ 1.25 × ideal for the
  whole network; skip realisation ≥ 0.95 on every layer with at least 8 input channels;
* if ``results/synth.json`` holds a routed build of the configuration, the images per second
  at that build's fmax, from the runs' cycles as the hardware counts them.

Writes a JSON (``results/bench.json``; ``results/bench-<config>.json`` for another
configuration) and the README's results tables (section ``bench``, or ``bench-<config>``).
Every number comes from this run, but for the fmax, which ``scripts/synth_core.py`` measured.
"""

import argparse
import json
import os
import time
from pathlib import Path

from readme import write_section

from sw.cli import evaluate
from sw.config import CONFIGS

EXACT = ("macs", "ideal_cycles", "act_tiles", "act_tiles_flagged", "act_bytes_dense",
         "act_bytes_read", "weight_bytes_read", "issue_slots", "issue_slots_skipped")


#: The acceptance targets (see the module docstring).
BUSY_OVER_IDEAL_LAYER = 1.05
BUSY_OVER_IDEAL_NETWORK = 1.25
REALISATION = 0.95
REALISATION_MIN_CHANNELS = 8
SYNTH_JSON = Path(__file__).resolve().parent.parent / "results" / "synth.json"


def run_pair(model, images, epsilon, skip, config, workers=None):
    gold, _ = evaluate(model, "golden", images=images, epsilon=epsilon, skip=skip, config=config)
    t0 = time.perf_counter()
    sim, program = evaluate(model, "sim", images=images, epsilon=epsilon, skip=skip,
                            config=config, backend_options={"workers": workers})
    wall = time.perf_counter() - t0
    mismatches = []
    if sim["outputs_sha256"] != gold["outputs_sha256"]:
        mismatches.append("outputs_sha256")
    for g, s in zip(gold["layers"], sim["layers"]):
        for key in EXACT:
            if g[key] != s[key]:
                mismatches.append(f"{g['name']}.{key}: golden {g[key]}, sim {s[key]}")
    return {"epsilon": epsilon, "skip": skip, "golden": gold, "sim": sim,
            "mismatches": mismatches, "wall_s_incl_compile": wall}, program


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo-mnist")
    ap.add_argument("--config", default="default", choices=sorted(CONFIGS))
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--epsilons", type=int, nargs="+", default=[0, 4, 8])
    ap.add_argument("--workers", type=int, default=None,
                    help="simulator processes (default: one per CPU core)")
    ap.add_argument("--json", help="default: results/bench.json, or results/bench-CONFIG.json")
    ap.add_argument("--no-readme", action="store_true")
    args = ap.parse_args()
    suffix = "" if args.config == "default" else f"-{args.config}"
    args.json = args.json or f"results/bench{suffix}.json"

    runs, program = [], None
    for eps in args.epsilons:
        for skip in (False, True):
            print(f"ε = {eps}, skipping {'on' if skip else 'off'}: {args.images} images …",
                  flush=True)
            run, program = run_pair(args.model, args.images, eps, skip, args.config,
                                    workers=args.workers)
            runs.append(run)
            print("  " + ("bit-exact, counters equal" if not run["mismatches"] else
                          "MISMATCH: " + "; ".join(run["mismatches"][:5])), flush=True)
    print(f"ε = {args.epsilons[0]}, skipping on, one simulator process: {args.images} images …",
          flush=True)
    single, _ = run_pair(args.model, args.images, args.epsilons[0], True, args.config,
                         workers=1)

    by = {(r["epsilon"], r["skip"]): r for r in runs}
    layers = []
    for i, layer in enumerate(program.layers):
        off = by[(args.epsilons[0], False)]["sim"]["layers"][i]
        row = {"name": layer.name, "shape": layer.describe(),
               "ideal_cycles": off["ideal_cycles"], "busy_noskip": off["busy_cycles"],
               "busy_over_ideal": off["busy_cycles"] / off["ideal_cycles"],
               "maps_onto_array": maps_onto_array(layer, program.config),
               "in_channels": layer.in_shape[0], "realisation": {}, "bytes_saved": {}}
        for eps in args.epsilons:
            on = by[(eps, True)]["sim"]["layers"][i]
            off = by[(eps, False)]["sim"]["layers"][i]
            skipped = on["issue_slots_skipped"]
            row["realisation"][eps] = ((off["busy_cycles"] - on["busy_cycles"]) / skipped
                                       if skipped else None)
            row["bytes_saved"][eps] = 1 - on["act_bytes_read"] / on["act_bytes_dense"]
        layers.append(row)
    total_off = by[(args.epsilons[0], False)]["sim"]["totals"]
    speed = []
    for r in runs + [single]:
        s = r["sim"]["sim"]
        busy = r["sim"]["totals"]["busy_cycles"]
        speed.append({"epsilon": r["epsilon"], "skip": r["skip"], "workers": s["workers"],
                      "cycles": s["cycles"],
                      "busy_cycles": busy, "wall_s": s["wall_s"],
                      "busy_cycles_per_s": busy / s["wall_s"],
                      "wall_s_per_image": s["wall_s"] / args.images})
    network = total_off["busy_cycles"] / total_off["ideal_cycles"]
    acceptance = acceptance_checks(layers, network, args.epsilons)
    speed_hw = hardware_speed(args.config, by[(args.epsilons[0], False)]["sim"]["sim"]["cycles"],
                              by[(args.epsilons[0], True)]["sim"]["sim"]["cycles"], args.images)
    result = {
        "model": args.model, "images": args.images, "config_name": args.config,
        "config": program.config.to_dict(), "acceptance": acceptance,
        "hardware_speed": speed_hw,
        "all_bit_exact": all(not r["mismatches"] for r in runs + [single]),
        "network_busy_over_ideal": network,
        "layers": layers, "speed": speed,
        "accuracy": {f"eps{r['epsilon']}": r["sim"]["accuracy"]["int8"] for r in runs
                     if r["skip"]},
        "runs": [{k: v for k, v in r.items() if k not in ("golden", "sim")} |
                 {"sim": r["sim"]} for r in runs],
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")

    eps_cols = " | ".join(f"skip real. ε={e}" for e in args.epsilons)
    bytes_cols = " | ".join(f"act bytes saved ε={e}" for e in args.epsilons)
    lines = [f"| layer | ideal cycles | busy (no skip) | busy/ideal | {eps_cols} | {bytes_cols} |",
             "|---" * (4 + 2 * len(args.epsilons)) + "|"]
    for row in layers:
        real = " | ".join("—" if row["realisation"][e] is None else f"{row['realisation'][e]:.3f}"
                          for e in args.epsilons)
        saved = " | ".join(f"{100 * row['bytes_saved'][e]:.1f}%" for e in args.epsilons)
        lines.append(f"| {row['name']}: {row['shape']} | {row['ideal_cycles']:,} | "
                     f"{row['busy_noskip']:,} | {row['busy_over_ideal']:.3f} | {real} | {saved} |")
    lines.append(f"| whole network | {total_off['ideal_cycles']:,} | "
                 f"{total_off['busy_cycles']:,} | {result['network_busy_over_ideal']:.3f} |" +
                 " |" * (2 * len(args.epsilons)))
    speed_lines = ["| ε | skipping | simulator processes | simulated cycles | busy cycles/s | "
                   "wall s/image |", "|---|---|---:|---:|---:|---:|"]
    for s in speed:
        speed_lines.append(f"| {s['epsilon']} | {'on' if s['skip'] else 'off'} | {s['workers']} | "
                           f"{s['cycles']:,} | {s['busy_cycles_per_s']:,.0f} | "
                           f"{s['wall_s_per_image']:.4f} |")
    agree = ("agree bit for bit, outputs and every exact counter, in every run"
             if result["all_bit_exact"] else "DISAGREE (see the JSON)")
    command = "make bench" if args.config == "default" else \
        f"python scripts/bench.py --config {args.config}"
    text = "\n".join([
        f"`{args.model}`, {args.images} test images, configuration `{args.config}` "
        f"({program.config.rows}×{program.config.cols} PEs); `{command}` "
        f"(`scripts/bench.py`, `{args.json}`). Golden and Verilated sim {agree}.",
        "", *lines, "", *acceptance_markdown(acceptance), "",
        *hardware_speed_markdown(speed_hw, args.model),
        f"Simulation speed ({os.cpu_count()} cores, build excluded, uploads and readback "
        "included; the images are split between the simulator processes):",
        "", *speed_lines])
    print(text)
    if not args.no_readme:
        write_section(f"bench{suffix}", text)


def maps_onto_array(layer, config):
    """Whether ``layer``'s output channels and output width (before pooling; an fc layer's
    output ``(N, 1, 1)`` is one pixel wide) are multiples of the array's rows and columns."""
    channels, _, width = layer.conv_shape
    return channels % config.rows == 0 and width % config.cols == 0


def acceptance_checks(layers, network, epsilons):
    """The core's acceptance targets on this run: ``[{"kind", "layer", "epsilon", "value",
    "met"}]``, ``kind`` one of ``layer`` (busy/ideal of a layer that maps onto the array),
    ``network`` (busy/ideal) and ``realisation``."""
    checks = [{"kind": "layer", "layer": row["name"], "epsilon": None,
               "value": round(row["busy_over_ideal"], 3),
               "met": row["busy_over_ideal"] <= BUSY_OVER_IDEAL_LAYER}
              for row in layers if row["maps_onto_array"]]
    checks.append({"kind": "network", "layer": None, "epsilon": None, "value": round(network, 3),
                   "met": network <= BUSY_OVER_IDEAL_NETWORK})
    for row in layers:
        if row["in_channels"] >= REALISATION_MIN_CHANNELS:
            for eps in epsilons:
                real = row["realisation"][eps]   # None: nothing skipped, nothing to realise
                checks.append({"kind": "realisation", "layer": row["name"], "epsilon": eps,
                               "value": None if real is None else round(real, 3),
                               "met": real is None or real >= REALISATION})
    return checks


def acceptance_markdown(checks):
    def values(kind):
        return [c for c in checks if c["kind"] == kind]
    met = sum(c["met"] for c in checks)
    layers = "; ".join(f"layer {c['layer']}, {c['value']}" for c in values("layer")) or "none"
    network = values("network")[0]["value"]
    reals = [c["value"] for c in values("realisation") if c["value"] is not None]
    lines = [f"Acceptance targets, {met} of {len(checks)} met: busy ≤ {BUSY_OVER_IDEAL_LAYER} × "
             "ideal without skipping on every layer whose output channels and width are "
             "multiples of the array's rows and columns (an fc layer's output is one pixel "
             f"wide): {layers}; ≤ {BUSY_OVER_IDEAL_NETWORK} × for the whole network: {network}; "
             f"skip realisation ≥ {REALISATION} on every layer with at least "
             f"{REALISATION_MIN_CHANNELS} input channels, at every ε: "
             + (f"lowest {min(reals)}." if reals else "nothing skipped.")]
    lines += [f"* **not met**: {c['kind']}"
              + (f" of layer {c['layer']}" if c["layer"] is not None else "")
              + (f" at ε = {c['epsilon']}" if c["epsilon"] is not None else "")
              + f": {c['value']}" for c in checks if not c["met"]]
    return lines


def hardware_speed(config, cycles_noskip, cycles_skip, images):
    """Images per second at the fmax of a routed build of ``config`` in results/synth.json,
    from the runs' cycles (from the run command to the end of the last layer, as the hardware
    counts them)."""
    if not SYNTH_JSON.is_file():
        return None
    builds = [e for e in json.loads(SYNTH_JSON.read_text())["results"]
              if e.get("config") == config and e.get("status") == "ok" and e.get("fmax_mhz")]
    if not builds:
        return None
    e = builds[0]
    mhz = e["fmax_mhz"]
    return {"target": e["target"], "device": e["device"], "fmax_mhz": mhz,
            "commit": e.get("commit"),
            "run_cycles_per_image": {"skip_off": cycles_noskip / images,
                                     "skip_on": cycles_skip / images},
            "images_per_s": {"skip_off": mhz * 1e6 * images / cycles_noskip,
                             "skip_on": mhz * 1e6 * images / cycles_skip}}


def hardware_speed_markdown(speed, model):
    if speed is None:
        return []
    per = speed["run_cycles_per_image"]
    ips = speed["images_per_s"]
    return [f"On the `{speed['target']}` build ({speed['device']}), routed at "
            f"{speed['fmax_mhz']} MHz (`results/synth.json`, {speed['commit']}), a run of "
            f"{model} takes {per['skip_on']:,.0f} cycles with skipping at the first ε and "
            f"{per['skip_off']:,.0f} without: {ips['skip_on']:,.0f} and {ips['skip_off']:,.0f} "
            "images per second, counting the runs only (not the host link's transfers).", ""]


if __name__ == "__main__":
    main()
