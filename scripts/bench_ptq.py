"""tileskip's int8 quantizer against fp32 and against PyTorch's own post-training quantization.

    .venv/bin/python scripts/bench_ptq.py [--json results/ptq.json]

Both quantizers calibrate on the same training images and are scored on the 1,000 test images.
PyTorch's side is ``torch.ao.quantization`` FX mode with ``get_default_qconfig_mapping("x86")``;
that API is deprecated in this torch, so its warnings are filtered here (and this script is not
part of the warnings-as-errors test run).
"""

import argparse
import json
import warnings
from pathlib import Path

import torch
from readme import write_section

from sw.cli import CALIBRATION_IMAGES, evaluate
from sw.models import load_model


def torch_ptq_accuracy(model_name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
        torch.backends.quantized.engine = "x86"
        model, data = load_model(model_name)
        x_train, _, x_test, y_test = data()
        calib = x_train[:CALIBRATION_IMAGES]
        prepared = prepare_fx(model, get_default_qconfig_mapping("x86"), example_inputs=(calib,))
        with torch.no_grad():
            prepared(calib)
            quantized = convert_fx(prepared)
            return (quantized(x_test).argmax(1) == y_test).float().mean().item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo-mnist")
    ap.add_argument("--json", default="results/ptq.json")
    ap.add_argument("--no-readme", action="store_true")
    args = ap.parse_args()

    report, _ = evaluate(args.model, "golden")
    ours = report["accuracy"]
    theirs = torch_ptq_accuracy(args.model)
    res = {"model": args.model, "images": report["images"],
           "calibration_images": CALIBRATION_IMAGES, "fp32": ours["float"],
           "tileskip_int8": ours["int8"], "torch_ptq_x86": theirs,
           "int8_minus_fp32_points": 100 * (ours["int8"] - ours["float"]),
           "int8_minus_torch_ptq_points": 100 * (ours["int8"] - theirs)}
    print(f"{'':24}{'accuracy':>10}")
    print(f"{'fp32':24}{100 * res['fp32']:9.2f}%")
    print(f"{'tileskip int8 (golden)':24}{100 * res['tileskip_int8']:9.2f}%")
    print(f"{'torch.ao PTQ (x86, FX)':24}{100 * res['torch_ptq_x86']:9.2f}%")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.json}")
    if not args.no_readme:
        write_section("ptq", "\n".join([
            f"Quantization of `{args.model}` on its {res['images']} test images, calibrated on "
            f"{CALIBRATION_IMAGES} training images (`make bench-ptq`, `{args.json}`):", "",
            "| model | accuracy |", "|---|---:|",
            f"| fp32 | {100 * res['fp32']:.2f}% |",
            f"| tileskip int8 (golden model) | {100 * res['tileskip_int8']:.2f}% |",
            f"| PyTorch PTQ (`torch.ao`, FX, x86 qconfig) | {100 * res['torch_ptq_x86']:.2f}% |",
        ]))


if __name__ == "__main__":
    main()
