"""Arithmetic helpers shared by the gateware."""

from amaranth import Cat, ClockSignal, Const, Instance, Mux, Signal, Value, signed

__all__ = ["lut_mul", "registered_product", "registered_products", "within"]


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


def _has_mac16(platform):
    """An iCE40 UltraPlus: SB_MAC16 blocks (the iCE40 families without them have none)."""
    return (getattr(platform, "family", None) == "iCE40"
            and str(getattr(platform, "device", "")).startswith("iCE40UP"))


def registered_products(m, pairs, name, platform=None):
    """The products ``a · b`` of ``pairs`` of 8-bit values, each taken as signed, with the
    operands and the products registered: like :func:`registered_product`, the products of the
    operands of cycle ``t`` are in cycle ``t+2``. Returns one signal per pair, named
    ``<name>_<n>`` (36 bits, so that it reads like :func:`registered_product`'s; only the low
    16 bits can be non-zero or sign).

    On an iCE40 UltraPlus each two pairs share one SB_MAC16 in its 8×8 mode: operand register
    A holds both ``a``, B both ``b``, and its two 8×8 multipliers (signed with ``A_SIGNED`` and
    ``B_SIGNED`` in that mode) give the products into their own registers, the upper one on
    ``O[31:16]``, the lower one on ``O[15:0]``: 16 MACs on the UP5K's 8 blocks. Elsewhere each
    pair is :func:`registered_product` (on ECP5 a MULT18X18D of its own), named as above.
    """
    pairs = [(Value.cast(a), Value.cast(b)) for a, b in pairs]
    for a, b in pairs:
        if len(a) > 8 or len(b) > 8:
            raise ValueError(f"registered_products takes operands of at most 8 bits, "
                             f"not {len(a)} and {len(b)}")
    if not _has_mac16(platform):
        return [registered_product(m, a, b, f"{name}_{n}", platform)
                for n, (a, b) in enumerate(pairs)]
    products = [Signal(signed(36), name=f"{name}_{n}") for n in range(len(pairs))]
    for n in range(0, len(pairs), 2):
        two = pairs[n:n + 2]
        lo, hi = two[0], two[1] if len(two) > 1 else (Const(0, 8), Const(0, 8))
        o = Signal(32, name=f"{name}_{n}_o")
        m.submodules[f"{name}_{n}"] = Instance(
            "SB_MAC16",
            p_A_REG=1, p_B_REG=1, p_TOP_8x8_MULT_REG=1, p_BOT_8x8_MULT_REG=1,
            p_MODE_8x8=1, p_A_SIGNED=1, p_B_SIGNED=1,
            p_TOPOUTPUT_SELECT=0b10, p_BOTOUTPUT_SELECT=0b10,
            i_CLK=ClockSignal("sync"), i_CE=Const(1),
            i_A=Cat(_sext8(lo[0]), _sext8(hi[0])), i_B=Cat(_sext8(lo[1]), _sext8(hi[1])),
            i_C=Const(0, 16), i_D=Const(0, 16),
            i_AHOLD=Const(0), i_BHOLD=Const(0), i_CHOLD=Const(0), i_DHOLD=Const(0),
            i_IRSTTOP=Const(0), i_IRSTBOT=Const(0), i_ORSTTOP=Const(0), i_ORSTBOT=Const(0),
            i_OLOADTOP=Const(0), i_OLOADBOT=Const(0), i_ADDSUBTOP=Const(0),
            i_ADDSUBBOT=Const(0), i_OHOLDTOP=Const(0), i_OHOLDBOT=Const(0),
            i_CI=Const(0), i_ACCUMCI=Const(0), i_SIGNEXTIN=Const(0),
            o_O=o)
        m.d.comb += products[n].eq(o[:16].as_signed())
        if len(two) > 1:
            m.d.comb += products[n + 1].eq(o[16:].as_signed())
    return products


def _sext8(x):
    """``x`` (at most 8 bits, taken as signed) as 8 bits, sign-extended."""
    return Cat(*(x[min(i, len(x) - 1)] for i in range(8)))
