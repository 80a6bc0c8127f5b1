"""How often are activation tiles all zero, by tile shape? (the reason for the default tile)

    .venv/bin/python scripts/tile_study.py [--json results/tiles.json]

Runs the demo network's golden model on the 1,000 test images at ε = 0 and, for every conv
layer's input, counts the tiles that are entirely zero for several tile shapes, from one
channel × one row × a few pixels up to whole channel planes (the granularity of dynamic
feature-map pruning). Writes a JSON and the README's tile table.
"""

import argparse
import json
from pathlib import Path

from readme import write_section

from sw import numerics as nx
from sw.cli import CALIBRATION_IMAGES
from sw.compiler import compile_model
from sw.golden import layer_forward
from sw.models import load_model
from sw.runtime import quantize_input

SHAPES = {  # label → tile as a function of the layer's input shape (C, H, W)
    "1ch × 1row × 2px": lambda s: (1, 1, 2),
    "1ch × 1row × 4px": lambda s: (1, 1, 4),
    "1ch × 1row × 8px": lambda s: (1, 1, 8),
    "1ch × 2rows × 4px": lambda s: (1, 2, 4),
    "8ch × 1px": lambda s: (8, 1, 1),
    "1ch plane": lambda s: (1, s[1], s[2]),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default="results/tiles.json")
    ap.add_argument("--no-readme", action="store_true")
    args = ap.parse_args()
    model, data = load_model("demo-mnist")
    x_train, _, x_test, _ = data()
    program = compile_model(model, x_train[:CALIBRATION_IMAGES])
    x = quantize_input(program, x_test)
    rows = {}
    for layer in program.layers:
        x = x.reshape((len(x),) + tuple(layer.in_shape))
        if layer.kind == "conv":
            rows[f"{layer.name}: {layer.describe()}"] = {
                label: float(nx.tile_flags(x, shape(layer.in_shape), 0).mean())
                for label, shape in SHAPES.items()}
        x, _ = layer_forward(layer, x, program.config.tile, 0)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    head = "| conv input | " + " | ".join(SHAPES) + " |"
    lines = [head, "|---" * (len(SHAPES) + 1) + "|"]
    for name, vals in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * v:.1f}%" for v in vals.values()) + " |")
    table = "\n".join(lines)
    print(table)
    if not args.no_readme:
        write_section("tiles", "All-zero tiles of each conv layer's input, demo-mnist, 1,000 test "
                      f"images, ε = 0 (`scripts/tile_study.py`, `{args.json}`):\n\n" + table)


if __name__ == "__main__":
    main()
