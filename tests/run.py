#!/usr/bin/python3
"""Test runner behind `make test`, `make check` and `make unit`.

Runs the cmocka unit-test binaries given on the command line, then (unless
--unit-only) every test_* function of tests/integration/test_*.py, one after
another, each under a timeout. Ends with one line "N passed, N failed".

  /usr/bin/python3 tests/run.py --build DIR [--unit-only] [-k SUBSTR]...
                                [--timeout S] UNIT_BIN...

-k may be given more than once: a test runs if its name contains any of
them. A test function may carry a `timeout` attribute (seconds) for a
longer limit than --timeout (the chaos test, sized by CHAOS_KILLS); unit
binaries get UNIT_TIMEOUT seconds if it is set (`make soak`), else five
times --timeout (test_powerloss's sweep is CPU-bound: 86 s on a quiet
2-core machine, over 2 minutes with both cores busy). A passing
unit binary's lines that start with "# " (its figures) are shown.
"""

import argparse
import importlib
import inspect
import os
import re
import signal
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
INTEGRATION = os.path.join(HERE, "integration")

PASSED_RE = re.compile(r"^\[\s*PASSED\s*\]\s+(\d+)\s+test\(s\)", re.M)
FAILED_RE = re.compile(r"^\[\s*FAILED\s*\]\s+(\d+)\s+test\(s\)", re.M)
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "LeakSanitizer", "runtime error:")


class TestTimeout(Exception):
    pass


def sanitizer_env():
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0"
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    return env


def run_unit(path, timeout):
    """Runs one cmocka binary; returns (passed, failed)."""
    name = os.path.basename(path)
    t0 = time.monotonic()
    try:
        # One stream, so that cmocka's messages stay next to their test.
        # UNIT_WRAPPER runs a foreign binary (make cross: qemu-aarch64).
        wrap = os.environ.get("UNIT_WRAPPER", "").split()
        r = subprocess.run(wrap + [path], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, errors="replace",
                           timeout=timeout, env=sanitizer_env(), cwd=ROOT)
        out = r.stdout
        rc = r.returncode
    except FileNotFoundError:
        print(f"FAIL {name}: {path} not found (not built?)")
        return 0, 1
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        print(f"FAIL {name}: timed out after {timeout} s")
        print(out[-4000:])
        return 0, 1
    took = time.monotonic() - t0
    passed = sum(int(m) for m in PASSED_RE.findall(out))
    failed = sum(int(m) for m in FAILED_RE.findall(out))
    san = [l for l in out.splitlines() if any(m in l for m in SANITIZER_MARKERS)]
    if rc != 0 and failed == 0:
        # Crashed, aborted by a sanitizer, or failed outside any test.
        failed = 1
    if san and failed == 0:
        failed = 1
    if failed:
        print(f"FAIL {name} ({passed} passed, {failed} failed, exit status {rc}, {took:.1f} s)")
        print(out.rstrip())
    else:
        if passed == 0:
            print(f"WARN {name}: reported no tests")
        print(f"PASS {name} ({passed} test(s), {took:.1f} s)")
        # A test's figures, on lines of its own that start with "# ".
        for l in out.splitlines():
            if l.startswith("# "):
                print(f"  {l}")
    sys.stdout.flush()
    return passed, failed


def discover(filt):
    """[(display name, function)] of the integration tests, in file order
    and definition order."""
    if INTEGRATION not in sys.path:
        sys.path.insert(0, INTEGRATION)
    tests, last = [], []
    for fn in sorted(os.listdir(INTEGRATION)):
        if not (fn.startswith("test_") and fn.endswith(".py")):
            continue
        modname = fn[:-3]
        try:
            mod = importlib.import_module(modname)
        except Exception:
            # A module that does not import is one failing test.
            err = traceback.format_exc()

            def broken(err=err):
                raise ImportError(err)
            tests.append((f"{modname}::<import>", broken))
            continue
        # A module that checks what the others left (the contract test)
        # says RUN_LAST.
        into = last if getattr(mod, "RUN_LAST", False) else tests
        for name, obj in mod.__dict__.items():
            if name.startswith("test_") and inspect.isfunction(obj) and obj.__module__ == modname:
                full = f"{modname}::{name}"
                if filt and not any(f in full for f in filt):
                    continue
                into.append((full, obj))
    return tests + last


def _alarm(signum, frame):
    raise TestTimeout("test timed out")


def run_integration(tests, timeout):
    import harness

    passed = failed = 0
    signal.signal(signal.SIGALRM, _alarm)
    for full, fn in tests:
        name = full.split("::", 1)[1]
        harness.begin_test(full)
        t0 = time.monotonic()
        err = None
        limit = max(timeout, float(getattr(fn, "timeout", 0) or 0))
        signal.setitimer(signal.ITIMER_REAL, limit)
        try:
            fn()
        except TestTimeout:
            err = f"TIMEOUT after {limit:g} s\n" + traceback.format_exc()
        except BaseException as e:  # a test fails on any exception
            if isinstance(e, KeyboardInterrupt):
                signal.setitimer(signal.ITIMER_REAL, 0)
                harness.end_test(True)
                harness.remove_tmp(True)
                raise
            err = traceback.format_exc()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        took = time.monotonic() - t0
        tails = harness.log_tails() if err else ""
        try:
            problems = harness.end_test(err is not None)
        except Exception:
            problems = [traceback.format_exc()]
        if problems and err is None:
            tails = harness.log_tails()
        harness.remove_tmp(err is not None or bool(problems))
        if err is None and not problems:
            passed += 1
            print(f"PASS {name} ({took:.1f} s)")
        else:
            failed += 1
            print(f"FAIL {name} ({took:.1f} s)")
            if err:
                print(err.rstrip())
            for p in problems:
                print(p)
            if tails:
                print(tails)
        sys.stdout.flush()
    return passed, failed


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.environ.get("BUILD", "build"))
    ap.add_argument("--unit-only", action="store_true")
    ap.add_argument("-k", dest="filter", action="append", default=None,
                    help="run only tests whose name contains this (repeatable: any of them)")
    ap.add_argument("--timeout", type=float, default=float(os.environ.get("TEST_TIMEOUT", 120)),
                    help="seconds per test (default 120)")
    ap.add_argument("units", nargs="*")
    args = ap.parse_args()

    build = args.build if os.path.isabs(args.build) else os.path.join(ROOT, args.build)
    os.environ["BUILD"] = build
    # The Makefile passes paths relative to the repository root.
    os.chdir(ROOT)

    passed = failed = 0
    # A unit binary sized up for `make soak` may need longer (UNIT_TIMEOUT);
    # the timeout is a hang detector, and the power-loss sweep's work is
    # the same however busy the machine is.
    unit_timeout = float(os.environ.get("UNIT_TIMEOUT", 5 * args.timeout))
    for u in args.units:
        if args.filter and not any(f in os.path.basename(u) for f in args.filter):
            continue
        p, f = run_unit(u if os.path.isabs(u) else os.path.join(ROOT, u), unit_timeout)
        passed += p
        failed += f

    if not args.unit_only:
        # Every MQTT message a test's platform receives is kept here for
        # the contract test; one run, one file.
        capture = os.path.join(build, "contract", "messages.jsonl")
        os.makedirs(os.path.dirname(capture), exist_ok=True)
        open(capture, "w").close()
        tests = discover(args.filter)
        p, f = run_integration(tests, args.timeout)
        passed += p
        failed += f

    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
