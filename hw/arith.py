"""Arithmetic helpers shared by the gateware."""

from amaranth import ClockSignal, Const, Instance, Mux, Signal, Value, signed

__all__ = ["lut_mul", "registered_product", "within"]


def within(x, eps):
    """``|x| ≤ eps`` (the numerics contract's "within ε", ``sw.numerics.tile_flags``) of a
    signed ``x`` and an unsigned ``eps``, as two comparisons side by side rather than a
    negation followed by one: ``−x ≤ eps`` is ``~x < eps``, since ``~x = −x − 1``."""
    x, eps = Value.cast(x), Value.cast(eps)
    if not x.shape().signed or eps.shape().signed:
        raise TypeError(f"within takes a signed value and an unsigned bound, not {x!r}, "
                        f"{eps!r}")
    return (x <= eps) & (~x < eps)


def lut_mul(a, b):
    """``a · b`` of unsigned values (or a value and a non-negative ``int``), built from shifted
    partial products and a balanced adder tree, ``len(a) + len(b)`` bits wide.

    Synthesis maps this to LUTs and carry chains, never to a DSP block. It is for the core's
    few small address products: the PE array takes nearly every DSP block of the chip, so the
    placer would put such a product wherever one is left, far from its registers.
    """
    if isinstance(a, int):
        a, b = b, a
    a = Value.cast(a)
    if a.shape().signed:
        raise TypeError(f"lut_mul takes unsigned values, not {a!r}")
    if isinstance(b, int):
        if b < 0:
            raise ValueError(f"lut_mul takes a non-negative constant, not {b}")
        width = len(a) + max(b.bit_length(), 1)
        terms = [a << i for i in range(b.bit_length()) if (b >> i) & 1]
    else:
        b = Value.cast(b)
        if b.shape().signed:
            raise TypeError(f"lut_mul takes unsigned values, not {b!r}")
        width = len(a) + len(b)
        if len(b) > len(a):
            a, b = b, a
        terms = [Mux(b[i], a << i, 0) for i in range(len(b))]
    if not terms:
        return Const(0, width)
    while len(terms) > 1:
        terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i]
                 for i in range(0, len(terms), 2)]
    return terms[0][:width]


def registered_product(m, a, b, name, platform=None):
    """The product ``a · b`` of two values of at most 18 bits, each taken as signed (two's
    complement of its width), with the operands and the product registered (in the ``sync``
    domain of ``m``): the product of the operands of cycle ``t`` is on the returned 36-bit
    signal in cycle ``t+2``.

    On ECP5 (``platform.family == "ecp5"``) this is one MULT18X18D with its input and output
    registers, so the wires to and from the DSP block (they sit in fixed rows across the chip)
    run between registers only. Elsewhere (simulation, iCE40) the same two register stages are
    built in logic, and synthesis may put them into a DSP block of its own accord.
    """
    a, b = Value.cast(a), Value.cast(b)
    if len(a) > 18 or len(b) > 18:
        raise ValueError(f"registered_product takes operands of at most 18 bits, "
                         f"not {len(a)} and {len(b)}")
    p = Signal(signed(36), name=name)
    if getattr(platform, "family", None) != "ecp5":
        ra = Signal(signed(len(a)), name=f"{name}_a")
        rb = Signal(signed(len(b)), name=f"{name}_b")
        m.d.sync += [ra.eq(a.as_signed()), rb.eq(b.as_signed()), p.eq(ra * rb)]
        return p
    ports = {"i_CLK0": ClockSignal("sync"), "i_CE0": Const(1), "i_RST0": Const(0),
             "i_SIGNEDA": Const(1), "i_SIGNEDB": Const(1),
             "i_SOURCEA": Const(0), "i_SOURCEB": Const(0)}
    for n in range(18):
        ports[f"i_A{n}"] = a[min(n, len(a) - 1)]      # sign-extended to 18 bits
        ports[f"i_B{n}"] = b[min(n, len(b) - 1)]
        ports[f"i_C{n}"] = Const(0)
    for n in range(36):
        ports[f"o_P{n}"] = p[n]
    params = {f"p_REG_{reg}_{what}": f"{what}0" for reg in ("INPUTA", "INPUTB", "OUTPUT")
              for what in ("CLK", "CE", "RST")}
    m.submodules[name] = Instance("MULT18X18D", p_GSR="DISABLED", p_RESETMODE="SYNC",
                                  **params, **ports)
    return p
