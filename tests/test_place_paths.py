"""scripts/place_paths.py: path estimates of a small hand-made placement."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from place_paths import CELL_PS, analyse, net_delay_ps  # noqa: E402


def _cell(kind, x, y, outputs, inputs):
    ports = {**{p: "output" for p in outputs}, **{p: "input" for p in inputs}}
    return {"type": kind, "attributes": {"NEXTPNR_BEL": f"X{x}/Y{y}/SLICEA"},
            "port_directions": ports,
            "connections": {**{p: [b] for p, b in outputs.items()},
                            **{p: [b] for p, b in inputs.items()}}}


def _placed():
    # a (0,0) → lut (10,0) → carry (10,0) ─FCO→ carry2 (10,1) → b (30,0)
    # c (0,40) → d (0,0) directly; a constant net into d's CE from (50,50)
    cells = {
        "a": _cell("TRELLIS_FF", 0, 0, {"Q": 2}, {"CLK": 1, "DI": 9}),
        "lut": _cell("TRELLIS_COMB", 10, 0, {"F": 3}, {"A": 2}),
        "carry": _cell("TRELLIS_COMB", 10, 0, {"FCO": 4}, {"A": 3}),
        "carry2": _cell("TRELLIS_COMB", 10, 1, {"F": 5}, {"FCI": 4}),
        "b": _cell("TRELLIS_FF", 30, 0, {"Q": 9}, {"CLK": 1, "DI": 5}),
        "c": _cell("TRELLIS_FF", 0, 40, {"Q": 6}, {"CLK": 1, "DI": 6}),
        "d": _cell("TRELLIS_FF", 0, 0, {"Q": 7}, {"CLK": 1, "DI": 6, "CE": 8}),
        "vcc": _cell("TRELLIS_COMB", 50, 50, {"F": 8}, {}),
    }
    names = {"clk": [1], "a_q": [2], "l": [3], "co": [4], "s": [5], "c_q": [6], "d_q": [7],
             "$PACKER_VCC_NET": [8], "b_q": [9]}
    return {"modules": {"top": {"cells": cells,
                                "netnames": {n: {"bits": b} for n, b in names.items()}}}}


def test_net_delay_is_nextpnrs_estimate():
    assert net_delay_ps((3, 3), (3, 3)) == 120 * 6
    assert net_delay_ps((0, 0), (2, 1)) == 120 * (6 + 2 * 3)
    assert net_delay_ps((0, 0), (105, 0)) == 120 * (6 + 100 + 10)
    assert net_delay_ps((0, 0), (8, 9)) == net_delay_ps((8, 9), (0, 0)) == 120 * (6 + 3 + 4 + 20)


def test_paths_ranked_with_their_nets():
    paths = analyse(_placed(), count=10)
    lut = CELL_PS["lut"]
    via_logic = (CELL_PS["ff_q"] + net_delay_ps((0, 0), (10, 0)) + lut
                 + net_delay_ps((10, 0), (10, 0)) + lut            # into the carry's A
                 + 0 + lut                                          # FCO → FCI, then to F
                 + net_delay_ps((10, 1), (30, 0)) + CELL_PS["ff_setup"])
    direct = CELL_PS["ff_q"] + net_delay_ps((0, 40), (0, 0)) + CELL_PS["ff_setup"]
    got = {p["end"]: p for p in paths}
    assert got["b.DI"]["ps"] == via_logic
    assert [h[0] for h in got["b.DI"]["hops"]] == ["a_q[0]", "l[0]", "co[0]", "s[0]"]
    assert got["b.DI"]["hops"][2][3] == 0                           # the carry chain
    assert got["d.DI"]["ps"] == direct
    assert "d.CE" not in got                                        # a constant is no path
    assert [p["ps"] for p in paths] == sorted((p["ps"] for p in paths), reverse=True)


def test_registered_multiplier_ends_and_starts_paths():
    # a (0,0) → mult's A (registered) ; mult's P (registered) → b (40,0); c (0,9) → comb B
    def mult(regs):
        cell = _cell("MULT18X18D", 20, 0, {"P0": 4}, {"A0": 2, "B0": 3})
        cell["parameters"] = {f"REG_{r}_CLK": "CLK0" for r in regs}
        return cell

    def placed(regs):
        cells = {
            "a": _cell("TRELLIS_FF", 0, 0, {"Q": 2}, {"CLK": 1, "DI": 5}),
            "c": _cell("TRELLIS_FF", 0, 9, {"Q": 3}, {"CLK": 1, "DI": 5}),
            "m": mult(regs),
            "b": _cell("TRELLIS_FF", 40, 0, {"Q": 5}, {"CLK": 1, "DI": 4}),
        }
        names = {"clk": [1], "a_q": [2], "c_q": [3], "p": [4], "b_q": [5]}
        return {"modules": {"top": {"cells": cells,
                                    "netnames": {n: {"bits": b} for n, b in names.items()}}}}

    out_of_m = net_delay_ps((20, 0), (40, 0))
    # unregistered: one path through the multiplier, from c (the farther operand)
    comb = {p["end"]: p for p in analyse(placed(()), count=10)}
    assert "m.A0" not in comb
    assert comb["b.DI"]["ps"] == (CELL_PS["ff_q"] + net_delay_ps((0, 9), (20, 0))
                                  + CELL_PS["mult"] + out_of_m + CELL_PS["ff_setup"])
    # inputs and output registered: the operands end paths (the slower one is listed), P
    # starts one
    regd = {p["end"]: p for p in analyse(placed(("INPUTA", "INPUTB", "OUTPUT")), count=10)}
    assert regd["m.B0"]["ps"] == (CELL_PS["ff_q"] + net_delay_ps((0, 9), (20, 0))
                                  + CELL_PS["ff_setup"])
    assert regd["b.DI"]["ps"] == CELL_PS["mult_q"] + out_of_m + CELL_PS["ff_setup"]
    assert [h[0] for h in regd["b.DI"]["hops"]] == ["p[0]"]
