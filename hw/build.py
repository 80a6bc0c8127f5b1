"""Turn Amaranth components into Verilog for simulation and synthesis.

Port names follow Amaranth 0.5's ``convert()``: every port member of the component's signature
becomes one Verilog port named by its path joined with ``__``: ``i__payload``, ``i__valid``,
``i__ready`` for a ``lib.stream`` member ``i``; ``v__0``, ``v__1`` for ``In(4).array(2)``. A
member with a ``data`` layout (struct, ``ArrayLayout``) stays one flat port of its full width.
Each clock domain that is used but not defined inside the design becomes ports: ``clk`` and
``rst`` for ``sync``, ``<domain>_clk`` and ``<domain>_rst`` otherwise. A design using no
synchronous domain has no clock port. A member that is a constant (the ``ready`` of an
``always_ready`` stream) has no port: Amaranth 0.5's ``convert()`` cannot make one of it.
"""

from pathlib import Path

from amaranth import Const, Value
from amaranth.back import verilog as _verilog
from amaranth.hdl import ValueCastable

__all__ = ["ports", "verilog", "write_verilog"]


def ports(component):
    """The ports of ``component``: ``(path, flow, value)`` for every member of its signature
    that is not a constant."""
    for path, member, value in component.signature.flatten(component):
        if isinstance(value, ValueCastable):
            value = value.as_value()
        value = Value.cast(value)
        if not isinstance(value, Const):
            yield path, member.flow, value


def verilog(component, name, *, emit_src=False):
    """Return the Verilog text of ``component`` as a module called ``name``.

    ``component`` is a :class:`amaranth.lib.wiring.Component`; its signature gives the ports.
    ``src`` attributes are left out by default so that the text, and hence any simulator build
    keyed on it, changes only when the hardware does, not when Python source lines move.
    """
    # Directions are left to Amaranth (a port driven inside the design is an output).
    port_list = [("__".join(map(str, path)), value, None) for path, _, value in ports(component)]
    return _verilog.convert(component, name=name, ports=port_list, emit_src=emit_src)


def write_verilog(component, name, build_dir, *, emit_src=False):
    """Write ``<build_dir>/<name>.v`` and return its path.

    The file is rewritten only when its text changed, so its modification time tells
    downstream builds (Verilator, yosys) whether anything is to be done.
    """
    text = verilog(component, name, emit_src=emit_src)
    path = Path(build_dir) / f"{name}.v"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text() != text:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return path
