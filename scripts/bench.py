"""Golden model and Verilated accelerator side by side on the demo network.

    .venv/bin/python scripts/bench.py [--images 1000] [--epsilons 0 4 8] [--json results/bench.json]

For every ε, with skipping on and off, runs the demo network's test images on the golden model
and on the sim backend, and checks and reports:

* the outputs agree bit for bit (``outputs_sha256``) and every exact counter equals the golden
  schedule model's;
* per layer, busy cycles against ideal cycles (MACs ÷ PEs) with skipping off;
* skip realisation = (busy cycles with skipping off − with skipping on) ÷ skipped slots, per layer;
* activation bytes read with skipping = dense bytes − the skipped slots' bytes;
* simulation speed: busy cycles per wall-clock second and wall time per image (build excluded),
  on one simulator process per core (the default) and, for the first ε with skipping, on one.

Writes a JSON and the README's results tables. Every number comes from this run.
"""

import argparse
import json
import os
import time
from pathlib import Path

from readme import write_section

from sw.cli import evaluate

EXACT = ("macs", "ideal_cycles", "act_tiles", "act_tiles_flagged", "act_bytes_dense",
         "act_bytes_read", "weight_bytes_read", "issue_slots", "issue_slots_skipped")


def run_pair(model, images, epsilon, skip, workers=None):
    gold, _ = evaluate(model, "golden", images=images, epsilon=epsilon, skip=skip)
    t0 = time.perf_counter()
    sim, program = evaluate(model, "sim", images=images, epsilon=epsilon, skip=skip,
                            backend_options={"workers": workers})
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
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--epsilons", type=int, nargs="+", default=[0, 4, 8])
    ap.add_argument("--workers", type=int, default=None,
                    help="simulator processes (default: one per CPU core)")
    ap.add_argument("--json", default="results/bench.json")
    ap.add_argument("--no-readme", action="store_true")
    args = ap.parse_args()

    runs, program = [], None
    for eps in args.epsilons:
        for skip in (False, True):
            print(f"ε = {eps}, skipping {'on' if skip else 'off'}: {args.images} images …",
                  flush=True)
            run, program = run_pair(args.model, args.images, eps, skip)
            runs.append(run)
            print("  " + ("bit-exact, counters equal" if not run["mismatches"] else
                          "MISMATCH: " + "; ".join(run["mismatches"][:5])), flush=True)
    print(f"ε = {args.epsilons[0]}, skipping on, one simulator process: {args.images} images …",
          flush=True)
    single, _ = run_pair(args.model, args.images, args.epsilons[0], True, workers=1)

    by = {(r["epsilon"], r["skip"]): r for r in runs}
    layers = []
    for i, layer in enumerate(program.layers):
        off = by[(args.epsilons[0], False)]["sim"]["layers"][i]
        row = {"name": layer.name, "shape": layer.describe(),
               "ideal_cycles": off["ideal_cycles"], "busy_noskip": off["busy_cycles"],
               "busy_over_ideal": off["busy_cycles"] / off["ideal_cycles"],
               "maps_onto_array": (layer.out_shape[0] % program.config.rows == 0
                                   and (layer.kind == "fc"
                                        or layer.conv_shape[2] % program.config.cols == 0)),
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
    result = {
        "model": args.model, "images": args.images, "config": program.config.to_dict(),
        "all_bit_exact": all(not r["mismatches"] for r in runs + [single]),
        "network_busy_over_ideal": total_off["busy_cycles"] / total_off["ideal_cycles"],
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
    text = "\n".join([
        f"`{args.model}`, {args.images} test images, configuration `default` "
        f"({program.config.rows}×{program.config.cols} PEs); `make bench` "
        f"(`scripts/bench.py`, `{args.json}`). Golden and Verilated sim {agree}.",
        "", *lines, "",
        f"Simulation speed ({os.cpu_count()} cores, build excluded, uploads and readback "
        "included; the images are split between the simulator processes):",
        "", *speed_lines])
    print(text)
    if not args.no_readme:
        write_section("bench", text)


if __name__ == "__main__":
    main()
