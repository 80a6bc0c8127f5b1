"""scripts/synth_core.py without the tools: a run of some targets keeps the others' results,
and the table of a target that does not fit groups its modules and names the device's size."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import synth_core  # noqa: E402


def _entry(target, commit, wall_s=60.0):
    return {"target": target, "status": "failed", "stage": "nextpnr", "error": "too large",
            "nextpnr_errors": [], "demo": {"fits": True, "error": None}, "wall_s": wall_s,
            "commit": commit}


def test_a_target_run_keeps_the_other_targets(tmp_path, monkeypatch):
    path = tmp_path / "synth.json"
    old = [_entry("up5k", "aaaaaaa"), _entry("ecp5", "bbbbbbb", 2400.0)]
    path.write_text(json.dumps({"command": "x", "versions": {}, "wall_s": 2460.0,
                                "results": old}))
    monkeypatch.setattr(synth_core, "tool_versions", lambda: {"yosys": "Yosys 0"})
    monkeypatch.setattr(synth_core, "run_target",
                        lambda target, *args, **kw: _entry(target, "ccccccc", 30.0))
    synth_core.main(["-t", "up5k", "--json", str(path), "--no-readme"])
    new = json.loads(path.read_text())
    assert [(e["target"], e["commit"]) for e in new["results"]] == [
        ("up5k", "ccccccc"), ("ecp5", "bbbbbbb")]
    assert new["wall_s"] == 2430.0

    synth_core.main(["--json", str(path), "--no-readme"])    # all targets: nothing kept
    assert [e["commit"] for e in json.loads(path.read_text())["results"]] == ["ccccccc"] * 2


def test_breakdown_groups_modules_and_gives_the_device(tmp_path):
    def use(lut, ff, bram=0, dsp=0):
        return {"lut": lut, "ff": ff, "carry": 0, "dsp": dsp, "bram": bram, "spram": 0}
    entry = {"target": "up5k",
             "nextpnr_utilisation": {"ICESTORM_LC": (9000, 5280), "ICESTORM_RAM": (40, 30),
                                     "ICESTORM_DSP": (4, 8)},
             "breakdown": {"wall_s": 48, "memories": {"core.wgt_0": {"SB_RAM40_4K": 32},
                                                      "core.act_0": {"SB_RAM40_4K": 4}},
                           "modules": {"top": use(20, 100), "top.cd_sync": use(10, 10),
                                       "top.core": use(1000, 2000, bram=36),
                                       "top.core.count_a": use(30, 32),
                                       "top.core.count_b": use(30, 32),
                                       "top.core.loader": use(3000, 2000, dsp=4)}}}
    lines = synth_core.breakdown_markdown(entry)
    rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]]
            for ln in lines if ln.startswith("| ") and not ln.startswith("| module")}
    assert list(rows) == ["loader", "core: sequencer, host bus, memories",
                          "harness and clock", "core: layer counters", "**total** (device)"]
    assert rows["core: layer counters"] == ["60", "64", "0", "0"]      # LUT FF DSP BRAM
    assert rows["harness and clock"] == ["30", "110", "0", "0"]
    assert rows["**total** (device)"] == ["4090 (5280)", "4174 (5280)", "4 (8)", "36 (30)"]
    assert lines[-1] == "up5k block RAMs by memory: `wgt_0` 32, `act_0` 4."
    # SPRAMs (hw/spram.py names them <memory>.spram_<n>) count under their memory, apart
    entry["breakdown"]["memories"] = {"core.wgt_0": {"SB_SPRAM256KA": 4},
                                      "core.act_0": {"SB_RAM40_4K": 4}}
    assert synth_core.breakdown_markdown(entry)[-1] == \
        "up5k block RAMs by memory: `wgt_0` 4 SPRAM, `act_0` 4."


def test_memory_blocks_names_the_memory_of_each_block(tmp_path):
    import json

    from synth import memory_blocks

    cells = {"core.act_0.0.1": "SB_RAM40_4K", "core.act_0.1.1": "SB_RAM40_4K",
             "core.desc$401.0.0": "SB_RAM40_4K", "core.wgt_0.spram_0": "SB_SPRAM256KA",
             "core.wgt_0.spram_3": "SB_SPRAM256KA", "core.x": "SB_LUT4"}
    netlist = tmp_path / "top.json"
    netlist.write_text(json.dumps({"modules": {"top": {"cells": {
        name: {"type": t} for name, t in cells.items()}}}}))
    assert memory_blocks(netlist) == {"core.act_0": {"SB_RAM40_4K": 2},
                                      "core.desc": {"SB_RAM40_4K": 1},
                                      "core.wgt_0": {"SB_SPRAM256KA": 2}}
