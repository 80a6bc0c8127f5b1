"""scripts/bench.py's acceptance targets: which layers they apply to, and met or not."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from bench import acceptance_checks, acceptance_markdown, maps_onto_array  # noqa: E402

from sw.config import CONFIGS  # noqa: E402
from sw.program import Layer  # noqa: E402


def _layer(kind, in_shape, out_shape, pool=False):
    conv = kind == "conv"
    return Layer(name="x", kind=kind, in_shape=in_shape, out_shape=out_shape, weight=None,
                 bias=None, mult=None, shift=None, in_scale=1.0, out_scale=1.0,
                 kernel=3 if conv else 1, padding=1 if conv else 0, relu=True, pool=pool)


def test_which_layers_map_onto_the_array():
    cfg = CONFIGS["default"]                       # 16 rows × 4 columns
    assert maps_onto_array(_layer("conv", (1, 28, 28), (16, 14, 14), pool=True), cfg)
    assert not maps_onto_array(_layer("conv", (16, 14, 14), (32, 7, 7), pool=True), cfg)
    assert not maps_onto_array(_layer("conv", (1, 28, 28), (8, 28, 28)), cfg)
    # an fc layer's output is one pixel wide, however many rows its outputs fill
    assert not maps_onto_array(_layer("fc", (288, 1, 1), (64, 1, 1)), cfg)


def _row(name, busy_over_ideal, maps, channels, realisation):
    return {"name": name, "busy_over_ideal": busy_over_ideal, "maps_onto_array": maps,
            "in_channels": channels, "realisation": realisation}


def test_targets_met_and_missed():
    layers = [_row("0", 1.04, True, 1, {0: 0.1}),          # realisation: too few channels
              _row("4", 1.20, False, 16, {0: 0.96}),       # busy: does not map
              _row("8", 1.06, True, 32, {0: None}),        # nothing skipped
              _row("13", 1.30, False, 288, {0: 0.94})]
    checks = acceptance_checks(layers, 1.26, [0])
    missed = {(c["kind"], c["layer"]) for c in checks if not c["met"]}
    assert missed == {("layer", "8"), ("network", None), ("realisation", "13")}
    assert len(checks) == 2 + 1 + 3
    text = acceptance_markdown(checks)
    assert text[0].startswith("Acceptance targets, 3 of 6 met")
    assert "* **not met**: realisation of layer 13 at ε = 0: 0.94" in text
    assert all(c["met"] for c in acceptance_checks(layers[:2], 1.2, [0]))
