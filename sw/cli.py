"""The ``tileskip`` command line.

    tileskip run --model demo-mnist --backend golden [--images N] [--epsilon E] [--no-skip]
                 [--config NAME] [--json PATH] [--trace PATH]
"""

import argparse
import json
import sys

import torch

from .compiler import CompileError, compile_model
from .config import CONFIGS
from .models import MODELS, load_model
from .runtime import BACKENDS, STAT_KEYS, Accelerator, outputs_sha256

__all__ = ["main", "evaluate"]

#: Training images the activation scales are calibrated on.
CALIBRATION_IMAGES = 256


def evaluate(model_name, backend="golden", *, images=None, epsilon=0, skip=True,
             config="default", backend_options=None):
    """Compile a demo model, run its test split on a backend, and return the JSON report."""
    model, data = load_model(model_name)
    x_train, _, x_test, y_test = data()
    if images is not None:
        if images < 1:
            raise ValueError(f"--images must be at least 1, not {images}")
        x_test, y_test = x_test[:images], y_test[:images]
    program = compile_model(model, x_train[:CALIBRATION_IMAGES], epsilon=epsilon,
                            config=CONFIGS[config])
    with torch.no_grad():
        float_acc = (model(x_test).argmax(1) == y_test).float().mean().item()
    result = Accelerator(backend, **(backend_options or {})).run(program, x_test, skip=skip)
    int8_acc = float((result.raw.argmax(1) == y_test.numpy()).mean())
    report = {
        "model": model_name, "backend": backend, "images": len(x_test), "epsilon": epsilon,
        "skip": skip, "accuracy": {"float": float_acc, "int8": int8_acc},
        "outputs_sha256": outputs_sha256(result.raw),
        "layers": [{k: layer[k] for k in ("name", "kind") + STAT_KEYS}
                   for layer in result.stats["layers"]],
        "totals": result.stats["totals"],
    }
    report.update(result.stats.get("extra", {}))
    return report, program


def _fmt(v):
    return "—" if v is None else f"{v:,}"


def print_report(report, program, out=None):
    out = out or sys.stdout
    acc = report["accuracy"]
    print(f"{report['model']} on {report['backend']}: {report['images']} test images, "
          f"ε = {report['epsilon']}, skipping {'on' if report['skip'] else 'off'}", file=out)
    print(f"accuracy: fp32 {100 * acc['float']:.2f}%   int8 {100 * acc['int8']:.2f}%", file=out)
    cols = [("layer", 6), ("shape", 30), ("MACs", 14), ("ideal cyc", 12), ("busy cyc", 12),
            ("tiles flagged", 14), ("slots skipped", 14), ("act bytes saved", 16)]
    print("  ".join(f"{n:>{w}}" for n, w in cols), file=out)
    rows = [(lay, desc) for lay, desc in zip(report["layers"],
                                             [layer.describe() for layer in program.layers])]
    rows.append((dict(report["totals"], name="total"), ""))
    for lay, desc in rows:
        flagged = (f"{100 * lay['act_tiles_flagged'] / lay['act_tiles']:.1f}%"
                   if lay["act_tiles"] else "—")
        slots = (f"{100 * lay['issue_slots_skipped'] / lay['issue_slots']:.1f}%"
                 if lay["issue_slots"] else "—")
        saved = (f"{100 * (1 - lay['act_bytes_read'] / lay['act_bytes_dense']):.1f}%"
                 if lay["act_bytes_dense"] else "—")
        vals = [lay["name"], desc, _fmt(lay["macs"]), _fmt(lay["ideal_cycles"]),
                _fmt(lay["busy_cycles"]), flagged, slots, saved]
        print("  ".join(f"{v:>{w}}" for v, (_, w) in zip(vals, cols)), file=out)
    total = report["totals"]
    if total["busy_cycles"] is not None:
        ratio = total["busy_cycles"] / total["ideal_cycles"]
        print(f"busy cycles {total['busy_cycles']:,} = {ratio:.3f} × ideal "
              f"({total['ideal_cycles']:,}); {total['issue_slots_skipped']:,} of "
              f"{total['issue_slots']:,} slots skipped; "
              f"{total['act_bytes_dense'] - total['act_bytes_read']:,} activation bytes not read",
              file=out)
    if "sim" in report:
        s = report["sim"]
        procs = "1 simulator process" if s["workers"] == 1 else \
            f"{s['workers']} simulator processes"
        print(f"simulated {s['cycles']:,} cycles in {s['wall_s']:.2f} s on {procs}: "
              f"{s['cycles_per_s']:,.0f} cycles/s, {s['wall_s'] / report['images']:.4f} s per "
              f"image (uploads and readback included)", file=out)


def _run(args):
    options = {}
    if args.trace:
        if args.backend != "sim":
            raise ValueError("--trace needs --backend sim")
        options["trace"] = args.trace
    if args.workers is not None:
        if args.backend != "sim":
            raise ValueError("--workers needs --backend sim")
        if args.workers < 1:
            raise ValueError(f"--workers must be at least 1, not {args.workers}")
        options["workers"] = args.workers
    report, program = evaluate(args.model, args.backend, images=args.images,
                               epsilon=args.epsilon, skip=not args.no_skip, config=args.config,
                               backend_options=options)
    print_report(report, program)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="tileskip", description="tileskip accelerator runtime")
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a demo network on a backend and report accuracy and "
                                     "per-layer counts")
    run.add_argument("--model", default="demo-mnist", choices=sorted(MODELS))
    run.add_argument("--backend", default="golden", choices=sorted(BACKENDS))
    run.add_argument("--images", type=int, default=None, help="test images to run (default all)")
    run.add_argument("--epsilon", type=int, default=0,
                     help="tile threshold in quantized units (0: exact zeros)")
    run.add_argument("--no-skip", action="store_true", help="issue every MAC slot")
    run.add_argument("--config", default="default", choices=sorted(CONFIGS))
    run.add_argument("--json", metavar="PATH", help="write the report as JSON")
    run.add_argument("--trace", metavar="PATH",
                     help="sim backend: write an FST waveform of the whole session (slow; "
                          "use with a few --images)")
    run.add_argument("--workers", type=int, metavar="N",
                     help="sim backend: simulator processes sharing the images (default: one "
                          "per CPU core; a trace uses one)")
    args = ap.parse_args(argv)
    try:
        if args.command == "run":
            if args.epsilon < 0:
                ap.error(f"--epsilon must be a non-negative integer, not {args.epsilon}")
            _run(args)
    except (CompileError, ValueError, FileNotFoundError) as e:
        print(f"tileskip: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

