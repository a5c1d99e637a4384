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


def _popen(argv, stdout_path, stderr_path):
    out = open(stdout_path, "ab")
    err = open(stderr_path, "ab") if stderr_path != stdout_path else out
    try:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=daemon_env(),
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
                             "timeout_ms": 100}}
        else:
            p = port if port is not None else (sim.port if sim else free_port())
            buses = {"sim": {"type": "tcp", "host": "127.0.0.1", "port": p,
                             "timeout_ms": 100}}
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
    """One lockerd, run from a config file in the test's temp dir."""

    def __init__(self, cfg, name=None, start=True):
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
        self.proc = _popen([binary("lockerd"), "-c", self.config_path],
                           self.stdout_path, self.log_path)
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
        self.proc = _popen([binary("lockerd"), "-c", self.config_path],
                           self.stdout_path, self.log_path)
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
        r = self.ctl_ok({"op": "events", "after": after})
        return r["events"]

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
