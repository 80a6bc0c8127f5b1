"""Arithmetic helpers shared by the gateware."""

from amaranth import Const, Mux, Value

__all__ = ["lut_mul"]


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
