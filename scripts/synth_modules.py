#!/usr/bin/env python3
"""Synthesize, place and route the core's three compute modules alone on ECP5.

The loader, the PE array and the output stage are each placed and routed on their own, behind
the harness of :func:`synth.synthesize` (LFSR-driven inputs, XOR-reduced outputs), in
configuration ``ecp5``: each module's own speed limit, apart from the congestion of the whole
chip (``scripts/synth_core.py``), in a fraction of the whole core's run time. For each: LUT/FF/DSP
use, fmax and its critical path (source, sink, logic and routing delay), and the commit it was
measured at.

Writes ``results/modules/<Module>.json`` (the same format as ``scripts/synth.py --json``) and
the README section ``modules`` (``scripts/readme.py``) from all modules' files. About 15
minutes each.

Usage::

    python scripts/synth_modules.py [--module OutputStage] [--no-readme] [--report-only]
"""

import argparse
import json
import subprocess
import time
from pathlib import Path

from readme import write_section
from synth import _factory, hardware_commit, synthesize

from hw.pe_array import PEArray
from sw.config import CONFIGS

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "ecp5"
TARGET = "ecp5"

#: name → (factory, as for scripts/synth.py; its parameters besides the configuration)
MODULES = {
    "Loader": ("hw.loader:Loader",                                   # as the core builds it
               {"credits": PEArray.credits(CONFIGS[CONFIG])}),
    "PEArray": ("hw.pe_array:PEArray", {}),
    "OutputStage": ("hw.output:OutputStage", {}),
}


def _tool_error(build_dir):
    """The first ERROR line of the Yosys or nextpnr log in ``build_dir``."""
    for log in ("top.rpt", "top.tim"):
        path = build_dir / log
        if path.is_file():
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("ERROR"):
                    return f"{'yosys' if log == 'top.rpt' else 'nextpnr'}: {line}"
    return "the build failed (no ERROR line in the logs)"


def measure(name, build_dir):
    spec, extra = MODULES[name]
    params = {"config": CONFIG, **extra}
    data = {"factory": spec, "params": params, "commit": hardware_commit()}
    try:
        data["results"] = [synthesize(_factory(spec, params), TARGET,
                                      build_dir / name / TARGET)]
    except subprocess.CalledProcessError:
        data["error"] = _tool_error(build_dir / name / TARGET)
    return data


def markdown(measured):
    lines = [
        f"The compute modules alone on ECP5 (LFE5U-85F, configuration `{CONFIG}`, placed and "
        "routed behind the same harness; `python scripts/synth_modules.py`, "
        "`results/modules/`):",
        "",
        "| module | commit | LUT | FF (harness) | DSP | fmax | critical path |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for name, data in measured.items():
        commit = data.get("commit", "?")
        if "error" in data:
            lines.append(f"| {name} | {commit} | | | | failed | {data['error']} |")
            continue
        r = data["results"][0]
        paths = [p for p in r["critical_paths"] if p["total_ns"] is not None]
        crit = "-"
        if paths:
            p = max(paths, key=lambda p: p["total_ns"])
            crit = (f"{p['total_ns']:.2f} ns ({p['logic_ns']} logic, {p['routing_ns']} routing): "
                    f"`{p['source']}` → `{p['sink']}`")
        lines.append(f"| {name} | {commit} | {r['lut']} | {r['ff']} ({r['harness_ff']}) | "
                     f"{r['dsp']} | "
                     f"{r['fmax_mhz']} MHz | {crit} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", "-m", action="append", choices=sorted(MODULES),
                        help="module (repeatable; default: all)")
    parser.add_argument("--build-dir", default=ROOT / "build" / "synth_modules", type=Path)
    parser.add_argument("--out", default=ROOT / "results" / "modules", type=Path)
    parser.add_argument("--no-readme", action="store_true",
                        help="do not update README.md")
    parser.add_argument("--report-only", action="store_true",
                        help="only rewrite the README section from the modules' files")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    for name in [] if args.report_only else args.module or list(MODULES):
        t0 = time.monotonic()
        print(f"{name}: synthesizing ...", flush=True)
        data = measure(name, args.build_dir)
        minutes = (time.monotonic() - t0) / 60
        if "error" in data:
            print(f"{name}: failed ({minutes:.1f} min): {data['error']}", flush=True)
        else:
            r = data["results"][0]
            for p in r["critical_paths"]:
                p.pop("report", None)   # the full report stays in the build directory
            print(f"{name}: {r['fmax_mhz']} MHz, {r['lut']} LUT, {r['dsp']} DSP "
                  f"({minutes:.1f} min)", flush=True)
        (args.out / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")
    if not args.no_readme:
        # the README always shows every module, from the files measured so far
        measured = {name: json.loads((args.out / f"{name}.json").read_text())
                    for name in MODULES if (args.out / f"{name}.json").is_file()}
        write_section("modules", markdown(measured))


if __name__ == "__main__":
    main()
