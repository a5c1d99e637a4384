"""lockerd under a service manager: the sd_notify protocol (READY, STATUS,
the watchdog, STOPPING) seen from a socket the test binds as systemd
would, the watchdog stopping when the loop is wedged or the database is
lost, SIGHUP reloads, and running as an unprivileged user."""

import os
import pwd
import re
import signal
import socket
import sqlite3
import threading
import time

import harness
from harness import Locksim, Lockerd, config, open_cell

WATCHDOG_USEC = 2000000  # lockerd pings every second


class NotifySocket:
    """The manager's end of $NOTIFY_SOCKET: a datagram socket that keeps
    every message with the monotonic time it arrived."""

    def __init__(self):
        self.path = os.path.join(harness.tmpdir(), "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.lock = threading.Lock()
        self.msgs = []  # (t, {key: value})
        self.done = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        harness._register(self)

    def _run(self):
        while not self.done:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            kv = dict(l.split("=", 1) for l in data.decode().splitlines() if "=" in l)
            with self.lock:
                self.msgs.append((time.monotonic(), kv))

    def env(self, watchdog_usec=WATCHDOG_USEC):
        e = harness.daemon_env()
        e["NOTIFY_SOCKET"] = self.path
        e.pop("WATCHDOG_PID", None)  # unset: the watchdog is for whoever we start
        if watchdog_usec:
            e["WATCHDOG_USEC"] = str(watchdog_usec)
        else:
            e.pop("WATCHDOG_USEC", None)
        return e

    def times(self, key, value=None, since=0.0):
        with self.lock:
            return [t for t, kv in self.msgs
                    if key in kv and t >= since and (value is None or kv[key] == value)]

    def values(self, key):
        with self.lock:
            return [kv[key] for _, kv in self.msgs if key in kv]

    def wait(self, key, value=None, since=0.0, timeout=10):
        return harness.wait_for(lambda: self.times(key, value, since), timeout,
                                what=f"{key}={value or '*'} on the notify socket")[0]

    def cleanup(self):
        self.done = True
        self.thread.join(2)
        self.sock.close()


def _log(lk):
    with open(lk.log_path, errors="replace") as f:
        return f.read()


def _start_notified(sim, **cfg_kw):
    ns = NotifySocket()
    lk = Lockerd(config(sim, **cfg_kw), env=ns.env())
    ready = ns.wait("READY", "1")
    return ns, lk, ready


def test_notify_ready_watchdog_stopping():
    sim = Locksim()
    ns, lk, ready = _start_notified(sim)
    # READY only once the boards were read and the database is open.
    assert lk.find_events("started"), "READY=1 before the started event was recorded"
    status = ns.values("STATUS")
    assert any(s.startswith("starting") for s in status), status
    assert any(s.startswith("running") and "24 cells" in s for s in status), status
    # Pings at about half of WATCHDOG_USEC, from the loop, while idle.
    time.sleep(3.5)
    pings = ns.times("WATCHDOG", "1", since=ready)
    assert len(pings) >= 3, f"only {len(pings)} watchdog pings in 3.5 s"
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert max(gaps) < WATCHDOG_USEC / 1e6, f"gap between pings over WatchdogSec: {gaps}"
    assert "watchdog: pinging every 1000 ms" in _log(lk)
    # A door still opens as before.
    open_cell(lk, 3)
    t = time.monotonic()
    lk.stop()
    ns.wait("STOPPING", "1", since=t, timeout=1)
    sim.stop()


def test_no_watchdog_without_watchdog_usec():
    sim = Locksim()
    ns = NotifySocket()
    lk = Lockerd(config(sim), env=ns.env(watchdog_usec=0))
    ns.wait("READY", "1")
    time.sleep(1.5)
    assert not ns.times("WATCHDOG"), "pinged a watchdog nobody asked for"
    assert "watchdog" not in _log(lk)
    lk.stop()
    sim.stop()


def test_watchdog_stops_when_loop_wedged():
    """Another process holds the database's write lock: every step that
    must record something (a door forced open) waits in SQLite's busy
    handler, the main loop with it; the keypad and the control socket go
    unanswered and no ping goes out. When the lock goes, the loop runs
    again, records the door late and pings again."""
    sim = Locksim()
    ns, lk, ready = _start_notified(sim)
    harness.wait_for(lambda: len(ns.times("WATCHDOG", "1", since=ready)) >= 2, 3,
                     what="the first pings")
    blocker = sqlite3.connect(lk.db_path, timeout=10, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    t_lock = time.monotonic()
    sim.cmd("force 1 5")  # the loop must now record forced_open
    time.sleep(0.3)
    # The control socket waits on the wedged loop.
    t0 = time.monotonic()
    assert lk.ctl({"op": "ping"}).get("ok")
    ping_took = time.monotonic() - t0
    time.sleep(max(0.0, t_lock + 6 - time.monotonic()))
    pings = ns.times("WATCHDOG", "1", since=t_lock + 0.1)
    blocker.execute("ROLLBACK")
    blocker.close()
    t_free = time.monotonic()
    log = _log(lk)
    print(f"  control ping took {ping_took:.1f} s while the lock was held; "
          f"pings in the 5.9 s after: {len(pings)}")
    assert ping_took > 2, f"the loop answered in {ping_took:.2f} s: it was not wedged"
    assert not pings, f"pinged the watchdog {len(pings)} times while wedged"
    assert "watchdog: not pinging" in log and "database is locked" in log, log[-3000:]
    # Free again: pings resume, the door is recorded (late), nothing lost.
    ns.wait("WATCHDOG", "1", since=t_free, timeout=10)
    lk.wait_event("forced_open", cell=5, timeout=10)
    harness.wait_for(lambda: "watchdog: healthy again" in _log(lk), 5,
                     what="the log saying the watchdog is fed again")
    assert any(s.startswith("database not usable") for s in ns.values("STATUS"))
    harness.assert_events_well_formed(lk.events())
    lk.stop()
    sim.stop()


def test_watchdog_stops_when_database_lost():
    """The database file is deleted under a running lockerd (a wiped
    state folder, a card remounted elsewhere): SQLite would go on writing
    to the unlinked file and lose everything at the next start, so the
    pings stop and systemd restarts lockerd on a database it can see."""
    sim = Locksim()
    ns, lk, ready = _start_notified(sim)
    harness.wait_for(lambda: len(ns.times("WATCHDOG", "1", since=ready)) >= 2, 3,
                     what="the first pings")
    for suffix in ("", "-wal", "-shm"):
        try:
            os.unlink(lk.db_path + suffix)
        except FileNotFoundError:
            pass
    t_gone = time.monotonic()
    harness.wait_for(lambda: "watchdog: not pinging" in _log(lk), 3,
                     what="the log saying why the pings stop")
    time.sleep(3)
    pings = ns.times("WATCHDOG", "1", since=t_gone + 0.1)
    assert not pings, f"{len(pings)} pings after the database was deleted"
    log = _log(lk)
    assert "No such file or directory" in log and lk.db_path in log, log[-2000:]
    assert lk.running(), "lockerd should keep running; the manager decides"
    lk.stop()
    sim.stop()


def _rewrite(lk, cfg):
    lk.cfg = cfg
    lk.text = harness.render(cfg)
    with open(lk.config_path, "w") as f:
        f.write(lk.text)


def test_sighup_reload():
    sim = Locksim()
    cfg = config(sim)
    lk = Lockerd(cfg)
    lk.wait_event("started")
    # Reloadable: the log level and timings. Not: the locker id, a bus.
    cfg2 = config(sim, log_level="debug", timing={"poll_ms": 50, "unlock_confirm_ms": 1500})
    cfg2["locker"]["id"] = "other-locker"
    cfg2["bus sim"]["timeout_ms"] = 300
    cfg2["codes"] = {"digits": 12}
    _rewrite(lk, cfg2)
    os.kill(lk.proc.pid, signal.SIGHUP)
    harness.wait_for(lambda: "SIGHUP: reloaded" in _log(lk), 5, what="the reload")
    log = _log(lk)
    for line in ("[log] level: info -> debug", "[timing] poll_ms: 20 -> 50",
                 "[timing] unlock_confirm_ms: 800 -> 1500"):
        assert line in log, f"{line!r} not logged:\n{log[-2000:]}"
    restart = [l for l in log.splitlines() if "need a restart" in l]
    assert restart, log[-2000:]
    for key in ("[locker] id", "[bus sim] timeout_ms", "[codes] digits"):
        assert key in restart[-1], f"{key} not named as needing a restart: {restart[-1]}"
    assert "[timing]" not in restart[-1] and "[log] level" not in restart[-1], restart[-1]
    # Applied: debug lines now; the locker id is still the old one.
    seq = lk.last_seq()
    open_cell(lk, 2)
    lk.wait_event("door_opened", cell=2, after=seq)
    e = lk.wait_event("unlock", cell=2, after=seq)
    assert e["locker"] == "test-locker", e
    # Debug lines come now: a board that stays faulty says so at debug.
    sim.cmd("offline 2 on")
    harness.wait_for(lambda: "still faulty" in _log(lk)[len(log):], 5,
                     what="a debug line after the level went to debug")
    sim.cmd("offline 2 off")
    # A broken file changes nothing and says why.
    with open(lk.config_path, "a") as f:
        f.write("[timing]\npoll_ms = 1\n")
    os.kill(lk.proc.pid, signal.SIGHUP)
    harness.wait_for(lambda: "SIGHUP: keeping the running configuration" in _log(lk), 5,
                     what="the refused reload")
    # Nothing changed: the same SIGHUP again reports nothing to reload.
    _rewrite(lk, cfg2)
    n = _log(lk).count("SIGHUP: reloaded")
    os.kill(lk.proc.pid, signal.SIGHUP)
    harness.wait_for(lambda: _log(lk).count("SIGHUP: ") > n + 1, 5, what="the third reload")
    assert lk.running()
    lk.stop()
    sim.stop()


def test_runs_as_nobody():
    """No root needed: lockerd as `nobody`, its state folder its own,
    against locksim over TCP, opens a door; its files are its own and
    private."""
    if os.getuid() != 0:
        print("  SKIP: needs root to switch to nobody")
        return
    nobody = pwd.getpwnam("nobody")
    d = harness.tmpdir()
    os.chmod(d, 0o711)  # nobody may reach its own folder and the config
    home = os.path.join(d, "nobody")
    os.mkdir(home, 0o700)
    os.chown(home, nobody.pw_uid, nobody.pw_gid)
    sim = Locksim()
    cfg = config(sim)
    cfg["locker"]["state_dir"] = os.path.join(home, "state")
    cfg["control"]["socket"] = os.path.join(home, "ctl.sock")
    lk = Lockerd(cfg, argv_prefix=["setpriv", f"--reuid={nobody.pw_uid}",
                                   f"--regid={nobody.pw_gid}", "--clear-groups",
                                   "--inh-caps=-all"], start=False)
    os.chmod(lk.config_path, 0o644)
    lk.start()
    lk.wait_event("started")
    with open(f"/proc/{lk.proc.pid}/status") as f:
        uids = [l for l in f if l.startswith("Uid:")][0].split()[1:]
    assert all(int(u) == nobody.pw_uid for u in uids), uids
    n0 = sim.last_write_n()
    open_cell(lk, 4)
    sim.wait_write(harness.unlock_write_pred(4), after=n0)
    lk.wait_event("door_opened", cell=4)
    for name, mode in (("state", 0o700), ("state/device.key", 0o600)):
        st = os.stat(os.path.join(home, name))
        assert st.st_uid == nobody.pw_uid, f"{name} owned by uid {st.st_uid}"
        assert st.st_mode & 0o777 == mode, f"{name} mode {oct(st.st_mode & 0o777)}"
    st = os.stat(os.path.join(home, "state", "lockerd.db"))
    assert st.st_uid == nobody.pw_uid and st.st_mode & 0o077 == 0, oct(st.st_mode)
    lk.stop()
    sim.stop()


def test_journal_priorities():
    """With stderr the journal (JOURNAL_STREAM names it), each line starts
    with its syslog priority, for journalctl -p, and has no time stamp."""
    sim = Locksim()
    lk = Lockerd(config(sim), start=False)
    open(lk.log_path, "a").close()
    st = os.stat(lk.log_path)
    env = harness.daemon_env()
    env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    lk.env = env
    lk.start()
    lk.wait_event("started")
    sim.cmd("offline 2 on")
    harness.wait_for(lambda: "faulty after" in _log(lk), 5, what="a warning")
    lines = [l for l in _log(lk).splitlines() if not l.startswith("=====")]
    assert lines and all(re.match(r"^<[3-7]>(error|warn|info|debug): ", l) for l in lines), lines
    assert any(l.startswith("<6>info: locker test-locker") for l in lines), lines
    assert any(l.startswith("<4>warn: ") and "faulty" in l for l in lines), lines
    sim.cmd("offline 2 off")
    lk.stop()
    sim.stop()
