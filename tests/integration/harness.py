"""Integration-test harness: runs the real lockerd and locksim binaries.

Owns the per-test temp dir, starting and stopping the daemons by saved pid,
their control sockets, the test config builder and the sanitizer checks.
tests/run.py calls begin_test() / end_test() around every test function.
"""

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Markers that a sanitizer found something; any of them fails the test.
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "LeakSanitizer", "runtime error:")

# The control socket's "events" op answers at most this many (ctl.c).
CTL_EVENTS_PAGE = 200

SAN_ENV = {
    "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
}

# The cell map every test uses unless it says otherwise: cells 1-16 on
# board A (generic-16, channel = cell), 17-24 on board B (waveshare, ch = cell-16).
BOARD_A_UNIT = 1
BOARD_B_UNIT = 2
WRITE_ON = 0xFF00
WRITE_OFF = 0x0000
FLASH_BASE = 0x0200


class HarnessError(AssertionError):
    pass


SAN_RSS_NOTE = ("RSS is not judged under ASan: freed memory waits in its quarantine "
                "(256 MiB) and shadow memory grows with it; LeakSanitizer judges leaks "
                "at exit instead, and `make test` judges RSS")


def sanitized():
    """True when the binaries under test are the sanitizer build."""
    return "san" in os.path.basename(build_dir())


def build_dir():
    d = os.environ.get("BUILD", "build")
    if not os.path.isabs(d):
        d = os.path.join(ROOT, d)
    return d


def binary(name):
    path = os.path.join(build_dir(), name)
    if not os.access(path, os.X_OK):
        raise HarnessError(f"{path} is missing: build it first (make {os.path.relpath(path, ROOT)})")
    return path


def daemon_env():
    env = dict(os.environ)
    env.update(SAN_ENV)
    return env


def _pdeathsig():
    # If the test runner dies without cleaning up, take the daemons with it.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


# ---------------------------------------------------------------------------
# Per-test context


class _Ctx:
    def __init__(self, name):
        self.name = name
        self.tmp = None
        self.procs = []  # objects with .cleanup() (Locksim, Lockerd)
        self.logs = []  # (label, path)
        self.lockerd_count = 0


_ctx = None


def begin_test(name):
    global _ctx
    _ctx = _Ctx(name)
    return _ctx


def tmpdir():
    """The current test's temp dir (created on first use)."""
    global _ctx
    if _ctx is None:
        begin_test("adhoc")
    if _ctx.tmp is None:
        _ctx.tmp = tempfile.mkdtemp(prefix="lockerd-it-")
    return _ctx.tmp


def _register(obj):
    if _ctx is None:
        begin_test("adhoc")
    _ctx.procs.append(obj)


def _register_log(label, path):
    if _ctx is None:
        begin_test("adhoc")
    _ctx.logs.append((label, path))


def sanitizer_report(path):
    """Lines of a log that show a sanitizer finding, or []."""
    try:
        with open(path, errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        if any(m in line for m in SANITIZER_MARKERS):
            out.append(line)
    return out


def check_sanitizers(path, label):
    found = sanitizer_report(path)
    if found:
        raise HarnessError(f"sanitizer finding in {label} ({path}):\n  " + "\n  ".join(found[:20]))


def end_test(failed):
    """Stops every process the test started, then checks all logs for
    sanitizer findings. Returns a list of problems (strings) found during
    cleanup; a non-empty list fails the test. remove_tmp() comes after."""
    ctx = _ctx
    problems = []
    if ctx is None:
        return problems
    for obj in reversed(ctx.procs):
        try:
            obj.cleanup()
        except Exception as e:  # keep cleaning up the others
            problems.append(f"cleanup of {obj!r}: {e}")
    for label, path in ctx.logs:
        found = sanitizer_report(path)
        if found:
            problems.append(f"sanitizer finding in {label}:\n  " + "\n  ".join(found[:20]))
    return problems


def remove_tmp(failed):
    """Removes the test's temp dir, unless the test failed and KEEP_TMP=1."""
    global _ctx
    ctx, _ctx = _ctx, None
    if ctx is None or ctx.tmp is None:
        return
    if failed and os.environ.get("KEEP_TMP") == "1":
        print(f"temp dir kept: {ctx.tmp}")
    else:
        shutil.rmtree(ctx.tmp, ignore_errors=True)


def log_tails(lines=40):
    """Text with the tail of every daemon log of the current test."""
    if _ctx is None:
        return ""
    out = []
    for label, path in _ctx.logs:
        try:
            with open(path, errors="replace") as f:
                tail = f.read().splitlines()[-lines:]
        except FileNotFoundError:
            continue
        if not tail:
            continue
        out.append(f"--- {label} ({os.path.basename(path)}), last {len(tail)} lines ---")
        out.extend(tail)
    return "\n".join(out)


# ---------------------------------------------------------------------------
# Small helpers


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def wait_for(pred, timeout, interval=0.05, what="condition"):
    """Polls pred() until it returns a true value, which is returned."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise HarnessError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class JsonLineClient:
    """One UNIX stream connection, one line out, one JSON line back."""

    def __init__(self, path, timeout=5.0):
        self.path = path
        self.timeout = timeout
        self.sock = None
        self.buf = b""

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.path)
        except OSError:
            s.close()
            raise
        self.sock = s
        self.buf = b""

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self.buf = b""

    def request_raw(self, line):
        """Sends one text line, returns the reply line (str, no newline)."""
        if isinstance(line, str):
            line = line.encode()
        if not line.endswith(b"\n"):
            line += b"\n"
        for attempt in (0, 1):
            if self.sock is None:
                self.connect()
            try:
                self.sock.sendall(line)
                return self._readline()
            except (BrokenPipeError, ConnectionResetError, ConnectionError) as e:
                # The peer closed an idle connection; reconnect once.
                self.close()
                if attempt == 1:
                    raise HarnessError(f"{self.path}: {e}")
        raise AssertionError("unreachable")

    def _readline(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("connection closed before a reply line")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def request(self, line):
        reply = self.request_raw(line)
        try:
            return json.loads(reply)
        except ValueError:
            raise HarnessError(f"{self.path}: reply is not JSON: {reply!r}")


def _popen(argv, stdout_path, stderr_path, env=None):
    out = open(stdout_path, "ab")
    err = open(stderr_path, "ab") if stderr_path != stdout_path else out
    try:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env if env is not None else daemon_env(),
            cwd=tmpdir(),
            start_new_session=True,
            preexec_fn=_pdeathsig,
        )
    finally:
        out.close()
        if err is not out:
            err.close()


def _terminate(proc, timeout):
    """SIGTERM by pid, wait; SIGKILL if it does not stop. Returns
    (returncode, seconds taken, killed)."""
    if proc.poll() is not None:
        return proc.returncode, 0.0, False
    t0 = time.monotonic()
    try:
        os.kill(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        rc = proc.wait(timeout)
        return rc, time.monotonic() - t0, False
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return proc.returncode, time.monotonic() - t0, True


def _tail(path, n=30):
    try:
        with open(path, errors="replace") as f:
            return "\n".join(f.read().splitlines()[-n:])
    except FileNotFoundError:
        return ""


# ---------------------------------------------------------------------------
# locksim


class Locksim:
    """The simulated lock boards. boards: [(unit, profile), ...]."""

    def __init__(self, boards=((1, "generic-16"), (2, "waveshare-relay-d")), tcp=True,
                 rtu=False, auto=False, spring_ms=None, name="sim", extra_args=()):
        self.name = name
        self.boards = list(boards)
        d = tmpdir()
        self.ready_path = os.path.join(d, f"{name}.ready")
        self.control_path = os.path.join(d, f"{name}.sock")
        self.rtu_request = os.path.join(d, f"{name}.tty") if rtu else None
        self.stdout_path = os.path.join(d, f"{name}.stdout")
        self.stderr_path = os.path.join(d, f"{name}.stderr")
        argv = [binary("locksim")]
        if tcp:
            argv += ["--tcp", "0"]
        if rtu:
            argv += ["--rtu", self.rtu_request]
        for unit, profile in self.boards:
            argv += ["--board", f"{unit}:{profile}"]
        argv += ["--control", self.control_path, "--ready-file", self.ready_path]
        if auto:
            argv.append("--auto")
        if spring_ms is not None:
            argv += ["--spring-ms", str(spring_ms)]
        argv += list(extra_args)
        self.argv = argv
        self.port = None
        self.rtu_path = None
        self.client = None
        self.proc = None
        _register(self)
        _register_log(f"locksim {name} stderr", self.stderr_path)
        _register_log(f"locksim {name} stdout", self.stdout_path)
        self._start()

    def __repr__(self):
        return f"<Locksim {self.name} pid={self.proc.pid if self.proc else None}>"

    def _start(self):
        self.proc = _popen(self.argv, self.stdout_path, self.stderr_path)
        deadline = time.monotonic() + 10
        info = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HarnessError(
                    f"locksim exited with status {self.proc.returncode} before it was ready\n"
                    f"argv: {' '.join(self.argv)}\n{_tail(self.stderr_path)}")
            try:
                with open(self.ready_path) as f:
                    text = f.read()
                if text.endswith("\n") or "control=" in text:
                    info = dict(tok.split("=", 1) for tok in text.split() if "=" in tok)
                    if "control" in info:
                        break
            except FileNotFoundError:
                pass
            time.sleep(0.02)
        if info is None or "control" not in info:
            raise HarnessError(f"locksim wrote no ready file in 10 s\n{_tail(self.stderr_path)}")
        self.ready_info = info
        if info.get("tcp") not in (None, "", "-", "off", "0"):
            self.port = int(info["tcp"])
        if info.get("rtu") not in (None, "", "-", "off"):
            self.rtu_path = info["rtu"]
        self.control_path = info["control"]
        self.client = JsonLineClient(self.control_path)

    def cmd(self, line, check=True):
        """Sends one control command; returns the parsed JSON reply."""
        reply = self.client.request(line)
        if check and not reply.get("ok"):
            raise HarnessError(f"locksim {line!r} -> {reply}")
        return reply

    def state(self):
        return self.cmd("state")

    def channel(self, unit, ch):
        for b in self.state()["boards"]:
            if b["unit"] == unit:
                for c in b["channels"]:
                    if c["ch"] == ch:
                        return c
        raise HarnessError(f"locksim has no unit {unit} channel {ch}")

    def writes(self, after=0):
        return self.cmd(f"writes {after}" if after else "writes")["writes"]

    def last_write_n(self):
        r = self.cmd(f"writes {2**63 - 1}")
        if "last" in r:
            return r["last"]
        w = self.writes()
        return w[-1]["n"] if w else 0

    def wait_write(self, pred, after=0, timeout=5, what="a Modbus write"):
        """Polls the write log until a write with n > after matches pred."""
        def find():
            for w in self.writes(after):
                if pred(w):
                    return w
            return None
        try:
            return wait_for(find, timeout, interval=0.01, what=what)
        except HarnessError as e:
            raise HarnessError(f"{e}; writes seen: {self.writes(after)[-20:]}")

    def cleanup(self):
        if self.client:
            self.client.close()
        if self.proc is not None and self.proc.poll() is None:
            _terminate(self.proc, 5)

    def stop(self, timeout=5):
        """SIGTERM; expects exit status 0 and a clean sanitizer log."""
        if self.client:
            self.client.close()
        rc, took, killed = _terminate(self.proc, timeout)
        check_sanitizers(self.stderr_path, "locksim")
        if killed:
            raise HarnessError(f"locksim did not stop within {timeout} s of SIGTERM")
        if rc != 0:
            raise HarnessError(f"locksim exited with status {rc}\n{_tail(self.stderr_path)}")
        return rc


# ---------------------------------------------------------------------------
# Config


def bus_timeout_ms():
    """The test bus's Modbus reply timeout: 100 ms, or 250 ms for the
    sanitizer build, whose lockerd and locksim run several times slower
    (on a shared VM whose host steals CPU, three late replies in a row made
    a healthy board look faulty). Tests about the timeout itself pin it."""
    return 250 if sanitized() else 100


def default_timing():
    return {
        "poll_ms": 20,
        "debounce_ms": 40,
        "unlock_confirm_ms": 800,
        "unlock_retries": 1,
        "door_left_open_s": 10,
        "door_left_open_repeat_s": 10,
        "startup_read_ms": 1000,
        "board_backoff_min_ms": 100,
        "board_backoff_max_ms": 1000,
    }


def config(sim=None, rtu=False, port=None, device=None, timing=None, cells=None,
           boards=None, buses=None, log_level=None, extra=None, control=True):
    """The test config as an ordered dict {section: {key: value}}.

    By default one bus "sim" to locksim (TCP, or its pty with rtu=True),
    board A = unit 1 generic-16 (cells 1-16), board B = unit 2
    waveshare-relay-d (cells 17-24)."""
    d = tmpdir()
    cfg = {}
    cfg["locker"] = {"id": "test-locker", "state_dir": os.path.join(d, "state")}
    cfg["log"] = {"level": log_level or os.environ.get("LOCKERD_LOG_LEVEL", "info"),
                  "target": "stderr"}
    if control:
        cfg["control"] = {"socket": os.path.join(d, "ctl.sock")}
    t = default_timing()
    t.update(timing or {})
    cfg["timing"] = t
    if buses is None:
        if rtu:
            dev = device or (sim.rtu_path if sim else None)
            buses = {"sim": {"type": "rtu", "device": dev, "baud": 115200, "parity": "N",
                             "data_bits": 8, "stop_bits": 1, "rs485": "auto",
                             "timeout_ms": bus_timeout_ms()}}
        else:
            p = port if port is not None else (sim.port if sim else free_port())
            buses = {"sim": {"type": "tcp", "host": "127.0.0.1", "port": p,
                             "timeout_ms": bus_timeout_ms()}}
    for name, keys in buses.items():
        cfg[f"bus {name}"] = dict(keys)
    if boards is None:
        boards = {"A": {"bus": "sim", "unit": 1, "profile": "generic-16"},
                  "B": {"bus": "sim", "unit": 2, "profile": "waveshare-relay-d"}}
    for name, keys in boards.items():
        cfg[f"board {name}"] = dict(keys)
    cfg["cells"] = dict(cells) if cells is not None else {"1-16": "A:1 S", "17-24": "B:1 M"}
    for sec, keys in (extra or {}).items():
        cfg.setdefault(sec, {}).update(keys)
    return cfg


def render(cfg):
    """INI text of a config dict (strings pass through unchanged)."""
    if isinstance(cfg, str):
        return cfg
    lines = ["; written by tests/integration/harness.py"]
    for sec, keys in cfg.items():
        lines.append("")
        lines.append(f"[{sec}]")
        for k, v in keys.items():
            if isinstance(v, bool):
                v = "true" if v else "false"
            lines.append(f"{k} = {v}")
    return "\n".join(lines) + "\n"


def line_of(text, needle):
    """1-based number of the first line of text that contains needle."""
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    raise HarnessError(f"{needle!r} not in config text")


# ---------------------------------------------------------------------------
# lockerd


class Lockerd:
    """One lockerd, run from a config file in the test's temp dir.

    env: the environment (default daemon_env()); argv_prefix: a command
    that runs lockerd (e.g. setpriv to drop privileges)."""

    def __init__(self, cfg, name=None, start=True, env=None, argv_prefix=()):
        if _ctx is None:
            begin_test("adhoc")
        _ctx.lockerd_count += 1
        k = _ctx.lockerd_count
        self.name = name or ("lockerd" if k == 1 else f"lockerd{k}")
        d = tmpdir()
        self.text = render(cfg)
        self.cfg = cfg if isinstance(cfg, dict) else None
        self.config_path = os.path.join(d, f"{self.name}.conf")
        with open(self.config_path, "w") as f:
            f.write(self.text)
        self.log_path = os.path.join(d, f"{self.name}.log")
        self.stdout_path = os.path.join(d, f"{self.name}.stdout")
        self.socket_path = None
        self.state_dir = os.path.join(d, "state")
        if self.cfg:
            self.socket_path = self.cfg.get("control", {}).get("socket")
            self.state_dir = self.cfg["locker"].get("state_dir", self.state_dir)
        self.db_path = os.path.join(self.state_dir, "lockerd.db")
        self.proc = None
        self.client = None
        self.starts = 0
        self.env = env
        self.argv_prefix = list(argv_prefix)
        _register(self)
        _register_log(f"{self.name} stderr", self.log_path)
        _register_log(f"{self.name} stdout", self.stdout_path)
        if start:
            self.start()

    def __repr__(self):
        return f"<Lockerd {self.name} pid={self.proc.pid if self.proc else None}>"

    def _mark_log(self, what):
        # Separates runs in the shared log so that tails read clearly.
        with open(self.log_path, "a") as f:
            f.write(f"===== harness: {what} at {time.strftime('%H:%M:%S')} =====\n")

    def start(self, timeout=10):
        if self.proc is not None and self.proc.poll() is None:
            raise HarnessError("lockerd is already running")
        self.starts += 1
        self._mark_log(f"start #{self.starts}")
        self.proc = _popen(self.argv_prefix + [binary("lockerd"), "-c", self.config_path],
                           self.stdout_path, self.log_path, self.env)
        if self.client:
            self.client.close()
        self.client = JsonLineClient(self.socket_path) if self.socket_path else None
        if self.client is None:
            return self
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HarnessError(
                    f"lockerd exited with status {self.proc.returncode} during start-up\n"
                    f"{_tail(self.log_path)}")
            try:
                if self.client.request('{"op":"ping"}').get("ok"):
                    return self
            except (OSError, HarnessError, ValueError) as e:
                last = e
                self.client.close()
            time.sleep(0.05)
        raise HarnessError(f"lockerd control socket did not answer ping in {timeout} s ({last})\n"
                           f"{_tail(self.log_path)}")

    def start_expect_failure(self, timeout=10):
        """Runs lockerd expecting it to refuse to start. Returns
        (exit status, stderr text of this run)."""
        self.starts += 1
        self._mark_log(f"start #{self.starts} (expected to fail)")
        offset = os.path.getsize(self.log_path)
        self.proc = _popen(self.argv_prefix + [binary("lockerd"), "-c", self.config_path],
                           self.stdout_path, self.log_path, self.env)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise HarnessError(f"lockerd was expected to exit but still runs after {timeout} s\n"
                               f"{_tail(self.log_path)}")
        with open(self.log_path, errors="replace") as f:
            f.seek(offset)
            text = f.read()
        check_sanitizers(self.log_path, self.name)
        return rc, text

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def ctl_raw(self, line):
        return self.client.request_raw(line)

    def ctl(self, obj):
        """Sends one control request (dict); returns the reply dict."""
        if self.client is None:
            raise HarnessError("this lockerd has no control socket")
        return self.client.request(json.dumps(obj))

    def ctl_ok(self, obj):
        r = self.ctl(obj)
        if r.get("ok") is not True:
            raise HarnessError(f"lockerd {obj} -> {r}")
        return r

    def events(self, after=0):
        """Every ledger event with seq > after. The control socket gives
        them CTL_EVENTS_PAGE at a time; one page alone made last_seq()
        stop at 200 and the load test check only the first 200 events."""
        out = []
        while True:
            page = self.ctl_ok({"op": "events", "after": after})["events"]
            out.extend(page)
            if len(page) < CTL_EVENTS_PAGE:
                return out
            after = page[-1]["seq"]

    def last_seq(self):
        ev = self.events()
        return ev[-1]["seq"] if ev else 0

    def find_events(self, type=None, cell=None, after=0, **match):
        out = []
        for e in self.events(after):
            if type is not None and e.get("type") != type:
                continue
            if cell is not None and e.get("cell") != cell:
                continue
            if any(e.get(k) != v for k, v in match.items()):
                continue
            out.append(e)
        return out

    def wait_event(self, type, cell=None, after=0, timeout=5, **match):
        """Polls events every 50 ms until one with seq > after matches."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.find_events(type, cell, after, **match)
            if found:
                return found[0]
            if time.monotonic() >= deadline:
                recent = self.events(after)[-15:]
                desc = f"{type}" + (f" cell {cell}" if cell is not None else "") + \
                    (f" {match}" if match else "")
                raise HarnessError(f"no {desc} event after seq {after} within {timeout} s; "
                                   f"events seen: {json.dumps(recent)}")
            if not self.running():
                raise HarnessError(f"lockerd exited (status {self.proc.returncode}) while "
                                   f"waiting for {type}")
            time.sleep(0.05)

    def state(self):
        return self.ctl_ok({"op": "state"})

    def cell(self, n):
        for c in self.state()["cells"]:
            if c["cell"] == n:
                return c
        raise HarnessError(f"lockerd state has no cell {n}")

    def board(self, name):
        for b in self.state()["boards"]:
            if b["name"] == name:
                return b
        raise HarnessError(f"lockerd state has no board {name}")

    def stop(self, timeout=5):
        """SIGTERM; expects exit 0 within timeout and no sanitizer finding.
        Returns the seconds it took."""
        if self.client:
            self.client.close()
        rc, took, killed = _terminate(self.proc, timeout)
        check_sanitizers(self.log_path, self.name)
        if killed:
            raise HarnessError(f"lockerd did not exit within {timeout} s of SIGTERM\n"
                               f"{_tail(self.log_path)}")
        if rc != 0:
            raise HarnessError(f"lockerd exited with status {rc} after SIGTERM\n"
                               f"{_tail(self.log_path)}")
        return took

    def kill9(self):
        if self.client:
            self.client.close()
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def restart(self, kill=False):
        if self.running():
            if kill:
                self.kill9()
            else:
                self.stop()
        return self.start()

    def cleanup(self):
        if self.client:
            self.client.close()
        if self.proc is not None and self.proc.poll() is None:
            _terminate(self.proc, 5)


def run_lockerd(args, timeout=10):
    """Runs lockerd with arguments to completion (e.g. --check-config).
    Returns CompletedProcess with text stdout/stderr; fails on a sanitizer
    finding."""
    d = tmpdir()
    r = subprocess.run([binary("lockerd")] + list(args), stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, env=daemon_env(), cwd=d,
                       timeout=timeout, errors="replace")
    log = os.path.join(d, "lockerd-cli.log")
    with open(log, "a") as f:
        f.write(f"===== lockerd {' '.join(args)} -> {r.returncode}\n{r.stdout}{r.stderr}")
    if not any(label == "lockerd cli" for label, _ in _ctx.logs):
        _register_log("lockerd cli", log)
    for line in r.stderr.splitlines():
        if any(m in line for m in SANITIZER_MARKERS):
            raise HarnessError(f"sanitizer finding in lockerd {' '.join(args)}:\n{r.stderr}")
    return r


# ---------------------------------------------------------------------------
# Modbus write-log predicates


def is_write(unit, addr, value=None, fc=5):
    def pred(w):
        return (w.get("unit") == unit and w.get("fc") == fc and w.get("addr") == addr
                and (value is None or w.get("value") == value))
    return pred


def coil_of_cell(cell):
    """(unit, coil address) of a default-map cell on board A."""
    assert 1 <= cell <= 16
    return BOARD_A_UNIT, cell - 1


def start_pair(rtu=False, timing=None, sim_kwargs=None, **cfg_kwargs):
    """locksim with the default two boards plus a lockerd on it; waits for
    lockerd's `started` event. Returns (sim, lockerd)."""
    kw = dict(sim_kwargs or {})
    if rtu:
        kw.setdefault("rtu", True)
    sim = Locksim(**kw)
    lk = Lockerd(config(sim, rtu=rtu, timing=timing, **cfg_kwargs))
    lk.wait_event("started", timeout=5)
    return sim, lk


ISO_TIME_RE = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"


def assert_events_well_formed(events):
    """Sequence numbers gap-free from 1, in order; every event has a time
    and a type; alarms say so."""
    import re
    for i, e in enumerate(events, 1):
        assert e.get("seq") == i, f"event #{i} has seq {e.get('seq')}: {events[max(0, i - 3):i]}"
        assert isinstance(e.get("type"), str) and e["type"], e
        assert re.match(ISO_TIME_RE, str(e.get("time"))), f"bad time field: {e}"
        if e["type"] in ("door_jammed", "door_left_open", "forced_open"):
            assert e.get("alarm") is True, f"alarm event without alarm:true: {e}"


def open_cell(lk, cell):
    """Sends open; asserts the documented success reply."""
    r = lk.ctl({"op": "open", "cell": cell})
    assert r.get("ok") is True, f"open {cell} refused: {r}"
    assert r.get("cell") == cell, f"open {cell} reply names cell {r.get('cell')}: {r}"
    return r


# ---------------------------------------------------------------------------
# The keypad (kiosk socket, proto/kiosk.md) and custody helpers


class KioskClient:
    """The keypad side of <state_dir>/kiosk.sock.

    Every request gets exactly one reply, in order, but lockerd also pushes
    notice lines ({"notice": ...}) to every client at any time, interleaved
    with the replies. request() sends one line and returns the next line
    that carries "ok"; every notice read on the way (or by pump()) is kept,
    in order, in self.notices."""

    def __init__(self, path, timeout=5.0, connect=True):
        self.path = path
        self.timeout = timeout
        self.sock = None
        self.buf = b""
        self.notices = []
        self.replies = []
        _register(self)
        if connect:
            self.connect()

    def __repr__(self):
        return f"<KioskClient {self.path}>"

    def connect(self, timeout=5.0):
        """Connects, retrying while the socket is not there yet."""
        self.close()
        deadline = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(self.path)
                break
            except OSError as e:
                s.close()
                if time.monotonic() >= deadline:
                    raise HarnessError(f"cannot connect to the keypad socket {self.path}: {e}")
                time.sleep(0.05)
        self.sock = s
        self.buf = b""
        return self

    def reconnect(self):
        """A new connection (after a lockerd restart); keeps the notices."""
        return self.connect()

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self.buf = b""

    cleanup = close

    def _line(self, deadline):
        """The next parsed line, or None when the deadline passes."""
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            # Past the deadline: one look at what is already there.
            self.sock.settimeout(left if left > 0 else 0.0)
            try:
                chunk = self.sock.recv(65536)
            except (socket.timeout, BlockingIOError):
                return None
            if not chunk:
                raise HarnessError(f"{self.path}: lockerd closed the keypad connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        try:
            return json.loads(line.decode())
        except ValueError:
            raise HarnessError(f"{self.path}: line is not JSON: {line!r}")

    def _keep(self, msg):
        if "notice" in msg and "ok" not in msg:
            self.notices.append(msg)
            return False
        return True

    def request(self, obj, timeout=None):
        """Sends a request (dict or text line); returns the reply (the next
        line with "ok"), keeping notices that came before it."""
        if self.sock is None:
            self.connect()
        line = obj if isinstance(obj, (str, bytes)) else json.dumps(obj)
        if isinstance(line, str):
            line = line.encode()
        if not line.endswith(b"\n"):
            line += b"\n"
        self.sock.sendall(line)
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            msg = self._line(deadline)
            if msg is None:
                raise HarnessError(f"keypad: no reply to {line!r} within "
                                   f"{timeout or self.timeout} s")
            if self._keep(msg):
                if "ok" not in msg:
                    raise HarnessError(f"keypad: a line that is neither a reply nor a "
                                       f"notice: {msg}")
                self.replies.append(msg)
                return msg

    def pump(self, timeout=0.0):
        """Reads whatever lines arrive within timeout (notices only: a reply
        without a request is an error)."""
        if self.sock is None:
            return
        deadline = time.monotonic() + timeout
        while True:
            msg = self._line(deadline)
            if msg is None:
                return
            if self._keep(msg):
                raise HarnessError(f"keypad: unsolicited reply {msg}")

    def mark(self):
        """The number of notices so far: pass it as since= to wait_notice."""
        self.pump()
        return len(self.notices)

    def find_notices(self, kind=None, cell=None, since=0, contains=None):
        out = []
        for n in self.notices[since:]:
            if kind is not None and n.get("notice") != kind:
                continue
            if cell is not None and n.get("cell") != cell:
                continue
            if contains is not None and contains not in str(n.get("show", "")):
                continue
            out.append(n)
        return out

    def wait_notice(self, kind, cell=None, timeout=5, since=0, contains=None):
        """The first notice (index >= since) of that kind (and cell, and
        with contains in its "show"), waiting up to timeout for it."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.find_notices(kind, cell, since, contains)
            if found:
                return found[0]
            left = deadline - time.monotonic()
            if left <= 0:
                desc = kind + (f" cell {cell}" if cell is not None else "") + \
                    (f" containing {contains!r}" if contains else "")
                raise HarnessError(f"keypad: no {desc} notice within {timeout} s; notices "
                                   f"seen: {json.dumps(self.notices[since:][-10:])}")
            self.pump(min(left, 0.2))

    # Shorthands for the requests of proto/kiosk.md.
    def code(self, code, phone=None):
        req = {"op": "code", "code": code}
        if phone is not None:
            req["phone"] = phone
        return self.request(req)

    def scan(self, credential):
        return self.request({"op": "scan", "credential": credential})

    def login(self, staff, pin):
        return self.request({"op": "login", "staff": staff, "pin": pin})

    def logout(self):
        return self.request({"op": "logout"})

    def status(self):
        return self.request({"op": "status"})


def kiosk_path(lk):
    """The keypad socket of a lockerd started from a harness config."""
    sock = (lk.cfg or {}).get("kiosk", {}).get("socket")
    return sock or os.path.join(lk.state_dir, "kiosk.sock")


def kiosk(lk, timeout=5.0):
    """A connected KioskClient to lk's keypad socket (closed at test end)."""
    return KioskClient(kiosk_path(lk), timeout=timeout)


def custody_extra(codes=None, kiosk=None):
    """[codes] and [kiosk] sections for tests of the keypad: a throttle that
    does not get in the way of a test that enters a wrong code or two,
    unless the test asks for its own numbers."""
    k = {"code_burst": 10, "code_refill_s": 1, "pin_burst": 10, "pin_refill_s": 1}
    k.update(kiosk or {})
    c = {}
    c.update(codes or {})
    out = {"kiosk": k}
    if c:
        out["codes"] = c
    return out


def add_staff(lk, staff_id, pin, name=None, role="staff", timeout=30):
    """lockerd -c CONF --add-staff ID --name NAME --role ROLE with the PIN
    on standard input (one line; stdin is not a tty). Works while lockerd
    runs. Returns the CompletedProcess; fails unless it exits 0."""
    d = tmpdir()
    args = ["-c", lk.config_path, "--add-staff", staff_id, "--name", name or staff_id.title(),
            "--role", role]
    r = subprocess.run([binary("lockerd")] + args, input=pin + "\n", capture_output=True,
                       text=True, env=daemon_env(), cwd=d, timeout=timeout, errors="replace")
    log = os.path.join(d, "lockerd-cli.log")
    with open(log, "a") as f:
        f.write(f"===== lockerd {' '.join(args)} -> {r.returncode}\n{r.stdout}{r.stderr}")
    if not any(label == "lockerd cli" for label, _ in _ctx.logs):
        _register_log("lockerd cli", log)
    for line in r.stderr.splitlines():
        if any(m in line for m in SANITIZER_MARKERS):
            raise HarnessError(f"sanitizer finding in lockerd --add-staff:\n{r.stderr}")
    if r.returncode != 0:
        raise HarnessError(f"lockerd --add-staff {staff_id} exited {r.returncode}:\n"
                           f"{r.stdout}{r.stderr}")
    return r


def verify_ledger(lk):
    """lockerd -c CONF --verify-ledger; returns the CompletedProcess."""
    return run_lockerd(["-c", lk.config_path, "--verify-ledger"])


def unlocked_cells(sim, after=0, pred=None):
    """Cells (default map: board A unit 1 coil = cell - 1; board B unit 2
    channel = cell - 16) whose relay locksim was told to energise in writes
    with n > after, in order, as [(cell, write)]. FC05 on to a coil, a
    waveshare flash write, or an FC15 with any bit set."""
    out = []
    for w in sim.writes(after):
        if pred is not None and not pred(w):
            continue
        unit, fc, addr = w.get("unit"), w.get("fc"), w.get("addr")
        if fc == 5 and unit == BOARD_A_UNIT and w.get("value") == WRITE_ON:
            out.append((addr + 1, w))
        elif fc == 5 and unit == BOARD_B_UNIT and addr is not None and addr >= FLASH_BASE \
                and w.get("value"):
            out.append((addr - FLASH_BASE + 17, w))
        elif fc == 5 and unit == BOARD_B_UNIT and w.get("value") == WRITE_ON:
            out.append((addr + 17, w))
        elif fc == 15 and (any(w.get("values") or []) or
                           (w.get("values") is None and w.get("value") not in (0, None))):
            out.append((None, w))
    return out


def unlock_write_pred(cell):
    """A predicate for the write that releases the lock of a default-map cell."""
    if cell <= 16:
        return is_write(BOARD_A_UNIT, cell - 1, WRITE_ON)

    def pred(w):
        return (w.get("unit") == BOARD_B_UNIT and w.get("fc") == 5 and
                w.get("addr") == FLASH_BASE + cell - 17 and bool(w.get("value")))
    return pred


def unit_ch(cell):
    """(unit, channel) of a default-map cell, for sim.cmd("close U CH")."""
    return (BOARD_A_UNIT, cell) if cell <= 16 else (BOARD_B_UNIT, cell - 16)


def start_custody(codes=None, kiosk_keys=None, extra=None, **kw):
    """locksim + lockerd (start_pair) with the [codes] / [kiosk] sections
    of custody_extra(codes, kiosk_keys) merged with extra, plus a keypad
    client. Returns (sim, lockerd, KioskClient)."""
    ex = custody_extra(codes, kiosk_keys)
    for sec, keys in (extra or {}).items():
        ex.setdefault(sec, {}).update(keys)
    sim, lk = start_pair(extra=ex, **kw)
    return sim, lk, kiosk(lk)


def reserve(lk, app, size="S", **kw):
    """A drop-off reservation over the control socket; asserts the
    documented reply and returns it."""
    req = {"op": "reserve", "app": app, "size": size}
    req.update(kw)
    r = lk.ctl(req)
    assert r.get("ok") is True, f"reserve {req} -> {r}"
    assert isinstance(r.get("resv"), int) and isinstance(r.get("cell"), int), r
    assert r.get("state") == "reserved", r
    digits = int(((lk.cfg or {}).get("codes") or {}).get("digits", 10))
    code = r.get("code")
    assert isinstance(code, str) and len(code) == digits and code.isdigit(), \
        f"reserve reply has no {digits}-digit code: {r}"
    assert isinstance(r.get("credential"), str) and len(r["credential"]) > 40, r
    return r


def wait_pulse_end(sim, cell, timeout=3):
    """Waits until the last relay pulse of a default-map cell is over: the
    coil-off write on board A, or the flash time (500 ms) on board B. A
    person needs longer than a pulse to close a door; a test that closes
    it at once would let the next unlock of that cell land inside the old
    pulse (which then ends it early, and the lock does not release)."""
    ons = [w for c, w in unlocked_cells(sim) if c == cell]
    if not ons:
        return
    last = ons[-1]
    if cell <= 16:
        sim.wait_write(is_write(BOARD_A_UNIT, cell - 1, WRITE_OFF), after=last["n"],
                       timeout=timeout, what=f"end of the pulse of cell {cell}")
    else:
        left = last["t"] + 0.55 - time.monotonic()
        if 0 < left < timeout:
            time.sleep(left)


def close_door(sim, cell, wait_pulse=True):
    """The person closes the door of a default-map cell (after the relay
    pulse that opened it is over, unless wait_pulse=False)."""
    if wait_pulse:
        wait_pulse_end(sim, cell)
    unit, ch = unit_ch(cell)
    return sim.cmd(f"close {unit} {ch}")


def assert_no_unlock(sim, after, settle=0.5, what="a refused attempt"):
    """No relay was energised in writes n > after (waits settle s first)."""
    if settle:
        time.sleep(settle)
    u = unlocked_cells(sim, after)
    assert not u, f"{what} still drove a relay: {[w for _, w in u]}"


def assert_refused(sim, lk, kc, req, error, settle=0.5):
    """Sends a keypad request that must be refused with `error`: checks
    the reply (ok false, that error, a screen text), that no relay was
    driven within settle s, and that the ledger has no unlock for it.
    Returns the reply."""
    seq0, n0 = lk.last_seq(), sim.last_write_n()
    rep = kc.request(req)
    assert rep.get("ok") is False and rep.get("error") == error, \
        f"{req} -> {rep}; expected error {error!r}"
    assert isinstance(rep.get("show"), str) and rep["show"], f"refusal without show: {rep}"
    assert_no_unlock(sim, n0, settle, what=f"{req} (refused: {error})")
    unlocks = lk.find_events("unlock", after=seq0)
    assert not unlocks, f"{req} was refused but the ledger has unlocks: {unlocks}"
    return rep


# ---------------------------------------------------------------------------
# MQTT: a private mosquitto per test, and the platform's side (paho)


class Mosquitto:
    """A mosquitto broker on a free loopback port, persistence in the
    test's temp dir (so a restart keeps sessions and queued messages).
    conf: more lines for mosquitto.conf (e.g. "set_tcp_nodelay true").
    limit: the broker's message_size_limit, as README's broker setup has
    it (8192: a command is at most 4096 bytes); None for none."""

    def __init__(self, port=None, conf="", limit=8192):
        _register(self)
        d = tmpdir()
        self.port = port or free_port()
        self.dir = os.path.join(d, f"mosquitto-{self.port}")
        os.makedirs(self.dir, exist_ok=True)
        self.conf = os.path.join(self.dir, "mosquitto.conf")
        self.log_path = os.path.join(self.dir, "mosquitto.log")
        with open(self.conf, "w") as f:
            # Run as whoever runs the tests: mosquitto started as root
            # would drop to user "mosquitto", who cannot write the
            # persistence (sessions lost across a restart) or the log.
            import pwd
            f.write(f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
                    f"listener {self.port} 127.0.0.1\n"
                    "allow_anonymous true\n"
                    "persistence true\n"
                    f"persistence_location {self.dir}/\n"
                    "autosave_interval 1\n"
                    f"log_dest file {self.log_path}\n"
                    "max_queued_messages 100000\n" +
                    (f"message_size_limit {limit}\n" if limit else "") + conf)
        _register_log(f"mosquitto {self.port}", self.log_path)
        self.proc = None
        self.start()

    def start(self, timeout=5):
        self.proc = _popen(["mosquitto", "-c", self.conf], self.log_path + ".out",
                           self.log_path + ".out")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                if self.proc.poll() is not None:
                    raise HarnessError(f"mosquitto exited: {_tail(self.log_path + '.out')}")
                time.sleep(0.05)
        raise HarnessError(f"mosquitto did not listen on {self.port}")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            _terminate(self.proc, 5)

    def cleanup(self):
        self.stop()


class Platform:
    """The platform's side of the link, as a test sees it: a persistent
    MQTT session subscribed to lockers/<id>/#, recording every message."""

    _sessions = 0

    def __init__(self, broker, locker="test-locker", prefix="lockers", client_id=None):
        import paho.mqtt.client as mqtt
        _register(self)
        # Names this client's records in the capture, so that the contract
        # test pairs each command with the reply this client saw.
        Platform._sessions += 1
        self.session = f"{os.getpid()}.{Platform._sessions}"
        self.broker = broker
        self.prefix = f"{prefix}/{locker}"
        self.lock = __import__("threading").Lock()
        self.messages = []          # (topic, payload dict or text, retained)
        self.received_at = []       # time.monotonic() of each, in step
        self.c = mqtt.Client(client_id=client_id or f"platform-{os.getpid()}-{id(self)}",
                             clean_session=False)
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.reconnect_delay_set(0.1, 1)
        self.c.connect_async("127.0.0.1", broker.port, keepalive=10)
        self.c.loop_start()
        wait_for(lambda: self.c.is_connected(), 5, what="platform client connected")

    def _on_connect(self, c, userdata, flags, rc):
        c.subscribe(self.prefix + "/#", qos=1)

    def _on_message(self, c, userdata, msg):
        try:
            body = json.loads(msg.payload.decode())
        except (ValueError, RecursionError):    # a test's own hostile command
            body = msg.payload.decode(errors="replace")
        with self.lock:
            self.messages.append((msg.topic, body, bool(msg.retain)))
            self.received_at.append(time.monotonic())
            # For the contract test: everything any test's platform saw.
            cap = os.path.join(build_dir(), "contract", "messages.jsonl")
            if os.path.isdir(os.path.dirname(cap)):
                rec = {"topic": msg.topic, "retain": bool(msg.retain),
                       "payload": msg.payload.decode(errors="replace"), "session": self.session}
                try:
                    msg.payload.decode()
                except UnicodeDecodeError:
                    rec["payload_hex"] = msg.payload.hex()
                with open(cap, "a") as f:
                    f.write(json.dumps(rec) + "\n")

    def on(self, sub):
        t = f"{self.prefix}/{sub}"
        with self.lock:
            return [(b, r) for (tp, b, r) in self.messages if tp == t]

    def on_timed(self, sub):
        """(body, time.monotonic() when it arrived) for each message."""
        t = f"{self.prefix}/{sub}"
        with self.lock:
            return [(b, at) for (tp, b, _), at in zip(self.messages, self.received_at)
                    if tp == t]

    def events(self):
        """Events seen, de-duplicated by seq (first copy kept), in
        arrival order of first copies."""
        seen, out = set(), []
        for b, _ in self.on("events"):
            if isinstance(b, dict) and b.get("seq") not in seen:
                seen.add(b["seq"])
                out.append(b)
        return out

    def wait_events(self, upto, timeout=10):
        wait_for(lambda: len({e["seq"] for e in self.events() if e["seq"] <= upto}) >= upto,
                 timeout, what=f"events 1..{upto} on MQTT")
        return [e for e in self.events() if e["seq"] <= upto]

    def cleanup(self):
        try:
            self.c.loop_stop()
            self.c.disconnect()
        except Exception:
            pass


def mqtt_extra(broker, **keys):
    """An [mqtt] section for lockerd pointing at broker, trusting the
    harness's platform key (platform_key_hex()) unless keys say another."""
    m = {"host": "127.0.0.1", "port": broker.port, "keepalive_s": 5,
         "reconnect_min_ms": 100, "reconnect_max_ms": 1000,
         "platform_key": platform_key_hex()}
    m.update(keys)
    return {"mqtt": m}


# ---------------------------------------------------------------------------
# Signed platform commands (proto/README.md): the ops that change custody,
# staff or service, or return a code, carry the target locker, ts, nonce
# and an Ed25519 signature by the platform key over the canonical bytes.

SIGNED_OPS = frozenset({"reserve", "cancel", "reissue", "service", "open", "load",
                        "staff_add", "staff_revoke"})
_platform_key = []
_nonces = [0]


def platform_key():
    """The platform signing key (PyNaCl) of this test process; lockerds
    configured through mqtt_extra() trust it."""
    import nacl.signing
    if not _platform_key:
        _platform_key.append(nacl.signing.SigningKey.generate())
    return _platform_key[0]


def platform_key_hex(key=None):
    import nacl.encoding
    return (key or platform_key()).verify_key.encode(
        encoder=nacl.encoding.HexEncoder).decode()


def canonical_bytes(cmd):
    r"""What a platform signs: the command without "sig" as jansson's
    json_dumps(JSON_COMPACT | JSON_SORT_KEYS | JSON_ENSURE_ASCII) writes it
    (Python's ensure_ascii writes lower-case hex and escapes DEL)."""
    import re
    text = json.dumps({k: v for k, v in cmd.items() if k != "sig"}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=True)

    def fix(m):
        t = m.group(0)
        if t == "\\\\":
            return t
        return "\x7f" if t == "\\u007f" else "\\u" + t[2:].upper()
    return re.sub(r"\\\\|\\u[0-9a-f]{4}", fix, text).encode()


def sign_command(c, key=None, locker="test-locker", now_ms=None):
    """Signs a command dict in place (and returns it): sets locker, ts and
    nonce unless the dict has them, then sig over the canonical bytes."""
    import nacl.encoding
    _nonces[0] += 1
    c.setdefault("locker", locker)
    c.setdefault("ts", now_ms if now_ms is not None else int(time.time() * 1000))
    c.setdefault("nonce", f"n{time.time_ns()}x{os.getpid()}x{_nonces[0]}")
    sig = (key or platform_key()).sign(canonical_bytes(c)).signature
    c["sig"] = nacl.encoding.URLSafeBase64Encoder.encode(sig).decode().rstrip("=")
    return c


def command(op, request_id, exp_ms=None, sign=None, key=None, locker="test-locker",
            now_ms=None, **fields):
    """A platform command dict: signed when sign is True, or when sign is
    None and the op must be signed (SIGNED_OPS)."""
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    c = {"op": op, "request_id": request_id,
         "exp": exp_ms if exp_ms is not None else now + 30000}
    c.update(fields)
    if sign or (sign is None and op in SIGNED_OPS):
        sign_command(c, key, locker, now)
    return c



def start_platform_stack(broker_conf="", sim_kwargs=None, lockerd_env=None):
    """A broker, the platform's client, locksim and a lockerd with the
    keypad sections of custody_extra() linked to that broker; waits for
    the started event and the birth. lockerd_env is added to lockerd's
    environment. Returns (broker, plat, sim, lk)."""
    broker = Mosquitto(conf=broker_conf)
    plat = Platform(broker)
    sim = Locksim(**(sim_kwargs or {}))
    cfg = config(sim, extra=mqtt_extra(broker))
    for sec, keys in custody_extra().items():
        cfg.setdefault(sec, {}).update(keys)
    env = None
    if lockerd_env:
        env = daemon_env()
        env.update(lockerd_env)
    lk = Lockerd(cfg, env=env)
    lk.wait_event("started", timeout=5)
    wait_for(lambda: plat.on("status"), 5, what="the birth")
    return broker, plat, sim, lk


def rss_kib(pid):
    """A running process's resident memory (VmRSS), KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise HarnessError(f"no VmRSS for {pid}")


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def percentile(xs, p):
    """The p-quantile (0..1) of xs by rank; NaN for none."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else float("nan")