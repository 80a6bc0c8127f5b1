"""Register copies for signals that fan out across the chip.

The PE array's DSP blocks and the buffers' block RAMs sit in fixed rows and columns across the
whole ECP5-85F, so one register feeding all of them has a wire across the die. :func:`copies`
gives each group of consumers its own register, which the placer puts next to them; the one
long wire is then the copies' input, with nothing but a flip-flop at either end.

Yosys merges flip-flops with the same input, clock and reset into one (``opt_merge``), so the
copies carry the ``keep`` attribute, reset-less (a reset would be a multiplexer Yosys leaves in
front of a kept flip-flop). Amaranth puts attributes on the signal, not on its flip-flop, so
:data:`YOSYS_KEEP_COPIES`, which the synthesis scripts run right after reading the design
for ECP5 (``scripts/synth.py``: ``Target.keep_copies``), moves it there. Without it the design
is the same, only slower on a large chip: the copies merge into one, as they do on the small
iCE40UP5K, whose logic cells are scarcer than its short wires.
A register of the design's own that takes the same value (say, the counter whose next value
the copies take) merges into one of the copies just the same, and its consumers then reach
for that copy across the chip: give it ``keep`` too (:data:`KEEP`).
"""

from amaranth import Signal

__all__ = ["copies", "KEEP", "YOSYS_KEEP_COPIES"]

#: ``attrs`` of a register that must not merge into copies of its value.
KEEP = {"keep": 1}

#: Yosys command: every flip-flop driving a wire with ``keep`` gets ``keep`` too.
YOSYS_KEEP_COPIES = "setattr -set keep 1 a:keep %ci1:+$dff[Q] t:$dff %i"


def copies(m, value, n, name):
    """``n`` registers that each take ``value`` in every cycle (``m.d.sync``), kept apart by
    synthesis; named ``{name}_{i}``. Their initial value is 0, and they have no reset: use them
    for values that matter only once loaded, or that are worked out in every cycle from reset
    registers (then they are right from the second cycle of a reset on)."""
    regs = [Signal.like(value, name=f"{name}_{i}", init=0, reset_less=True,
                        attrs=KEEP) for i in range(n)]
    m.d.sync += [reg.eq(value) for reg in regs]
    return regs
