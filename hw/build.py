"""Turn Amaranth components into Verilog for simulation and synthesis.

Port names follow Amaranth 0.5's ``convert()``: every port member of the component's signature
becomes one Verilog port named by its path joined with ``__``: ``i__payload``, ``i__valid``,
``i__ready`` for a ``lib.stream`` member ``i``; ``v__0``, ``v__1`` for ``In(4).array(2)``. A
member with a ``data`` layout (struct, ``ArrayLayout``) stays one flat port of its full width.
Each clock domain that is used but not defined inside the design becomes ports: ``clk`` and
``rst`` for ``sync``, ``<domain>_clk`` and ``<domain>_rst`` otherwise. A design using no
synchronous domain has no clock port.
"""

from pathlib import Path

from amaranth.back import verilog as _verilog

__all__ = ["verilog", "write_verilog"]


def verilog(component, name, *, emit_src=False):
    """Return the Verilog text of ``component`` as a module called ``name``.

    ``component`` is a :class:`amaranth.lib.wiring.Component`; its signature gives the ports.
    ``src`` attributes are left out by default so that the text, and hence any simulator build
    keyed on it, changes only when the hardware does, not when Python source lines move.
    """
    return _verilog.convert(component, name=name, emit_src=emit_src)


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
