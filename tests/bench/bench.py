#!/usr/bin/env python3
"""make bench: lockerd's figures, one JSON line each, on this machine.

Every figure is a median (and p99) over repeated samples taken in the same
run, so that machine noise on a shared 2-core box hits both sides of a
comparison alike. Figures:

  unlock_latency_ms     a code typed on the keypad socket -> the relay
                        write seen by locksim (CLOCK_MONOTONIC is
                        system-wide, so the send time, lockerd's stamps
                        and locksim's log compare directly); 8 boards x
                        16 cells polled at 10 Hz, 128 drop-off codes per
                        round (BENCH_ROUNDS, default 2), gap_s apart.
  unlock_phase_*_ms     the same unlocks split by lockerd's own debug
                        stamps ("unlock timing" lines of the keypad and the
                        bus worker): to_handler, verify, plan, record
                        (sign + INSERT), commit (the fsync), after_commit,
                        handoff (to the bus thread), prepare, modbus_oneway
                        (write call -> seen), modbus_rtt.
  unlock_lockerd_addition_ms
                        per unlock: total - commit - its own Modbus one-way
                        time; goal < 1 ms at p99. Beside it, in the same
                        run, the bare libmodbus write (build/mbping):
  modbus_write_oneway_ms / modbus_write_rtt_ms
                        start -> seen by locksim, and the round trip.
  (BENCH_ONLY=rtu) modbus_rtu{115200,9600}_* and unlock_*rtu{115200,9600}*
                        the same over RTU on locksim's pseudo-terminal (wire
                        time zero; lockerd keeps the configured rate's
                        3.5-character silence), with the computed wire time
                        of the FC05 frames for 8N1 and 8E1.
  idle_cpu_percent      lockerd's CPU share (user+system, all threads) while
                        polling 4 boards x 24 cells at 10 Hz, as the median
                        of 10 s windows over BENCH_IDLE_S (default 60 s).
  idle_wakeups_per_s    context switches per second over the same run.
  idle_rss_kib          resident memory at the end of the idle run.
  outbox_drain_events_per_s
                        how fast a backlog left by a broker outage reaches
                        the platform. One state directory (database + device
                        key) is built with >= BENCH_DRAIN_EVENTS (default
                        10,000) undelivered ledger events: lockerd runs with
                        [mqtt] pointing at a port where no broker listens
                        while reserve + cancel cycles on the control socket
                        make 3 signed events each; it is stopped before the
                        directory is copied. Each of BENCH_DRAIN_RUNS
                        (default 3) runs starts lockerd on a fresh copy,
                        with a fresh broker and a platform subscriber
                        already subscribed; the clock runs from the arrival
                        of lockerd's birth message (connected, the replay
                        starts) to that of the last of events 1..N, all of
                        which must arrive, first copies in seq order. Each
                        event is a QoS 1 publish and, on its PUBACK, a
                        durable commit marking it delivered. The median
                        and the worst run of N / that time (a p99 of three
                        runs would be the best one), with lockerd's, the
                        broker's and the subscriber's CPU seconds over the
                        drain, for the default window ([mqtt] inflight 32)
                        and, in the same runs,
  outbox_drain_inflight1_events_per_s
                        one event in flight at a time: what the window
                        buys (window_gain is the ratio of the medians).
  reserve_rtt_ms        a signed reserve command over MQTT: publish on
                        lockers/<id>/cmd -> the reply with its request_id
                        received on .../reply, through the broker both ways
                        and the platform's paho client. Contains four
                        commits, three of them flushed: the commands row
                        and nonce (no flush of their own, store.h), the
                        command_executed ledger event, the reservation
                        with its signed events, the reply stored. Each reservation is then cancelled
                        (untimed) and its events let through. Median and
                        p99 of BENCH_RESERVE_N (default 200) samples; the
                        same op on the control socket is given alongside.
  refused_command_disk_bytes
                        (BENCH_ONLY=refused) what refused commands cost on
                        disk: BENCH_REFUSED_N (default 3,000) opens with a
                        well-formed bogus signature, then as many unsigned
                        pings, at 1,000 a second: the database's growth
                        (logical pages, WAL included), new ledger events
                        and their bytes, command log and nonce rows.

  (BENCH_ONLY=idle also) scale_idle and binary_size_bytes
                        the idle run again for 1, 16 and 32 boards (24, 384,
                        512 cells; BENCH_IDLE_SCALE_S each, default 20), and
                        size(1) of build/lockerd.
  scale_drain_events_per_s / scale_reserve_rtt_ms / scale_rss_kib
                        (BENCH_ONLY=scale) one ledger grown to BENCH_SCALE
                        (1,4,16) x BENCH_SCALE_BASE (10,000) events; on a
                        copy of each: the drain, then the reserve round
                        trip and the memory with that history stored.
  scale_codes           codebench at 96, 384, 1,536 and 10,000 live codes.
  fleet, fleet_max_n    (BENCH_ONLY=fleet) tests/bench/fleet.py: N lockers
                        against one mosquitto; see its docstring.
  unlock_latency_slow_storage_ms
                        (BENCH_ONLY=slowdisk) the unlock with every fsync of
                        lockerd 5, 20 and 50 ms slower (build/libslowsync.so,
                        an SD card or eMMC), beside this machine's disk in
                        the same run; BENCH_ROUNDS / 2 rounds of 128 each.
  login_ms              (BENCH_ONLY=login) a wrong staff log-in on the
                        keypad socket, round trip, for an account and for an
                        unknown id, at the default PIN hash cost (8 MiB, 3
                        passes) and at the top of the range (16 MiB, 4): the
                        two must be alike (the id is not told), and the top
                        is how long one log-in holds the main loop up.
                        Median and p99 of BENCH_LOGIN_N (default 21) each.

For both MQTT figures the broker (set_tcp_nodelay) and the platform's
client send without Nagle's delay, so that only lockerd's own socket
options show. BENCH_ONLY=drain,reserve (or modbus, rtu, idle, codes,
refused, scale, fleet) runs a subset; make bench runs everything.
"""

import argparse
import json
import re
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))
import harness as H  # noqa: E402


def pct(values, p):
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(p / 100.0 * (len(s) - 1)))))
    return s[k]


def emit(name, values=None, unit=None, **extra):
    rec = {"bench": name}
    if values is not None:
        rec.update({"median": round(statistics.median(values), 3),
                    "p99": round(pct(values, 99), 3),
                    "min": round(min(values), 3), "n": len(values), "unit": unit or "ms"})
    elif unit is not None:
        rec["unit"] = unit
    rec.update(extra)
    print(json.dumps(rec), flush=True)
    return rec


def bench_bare_write(count, rtu=False, baud=115200):
    """build/mbping: bare libmodbus FC05 writes to a locksim board over TCP
    or RTU on locksim's pseudo-terminal. Returns (oneway, rtt) in ms."""
    H.begin_test("bench-bare")
    try:
        sim = H.Locksim(boards=[(1, "generic-16")], tcp=not rtu, rtu=rtu, name="bare")
        target = ["--rtu", f"{sim.rtu_path}:{baud}"] if rtu else \
            ["--tcp", f"127.0.0.1:{sim.port}"]
        out = subprocess.run([H.binary("mbping")] + target + ["1", "0", str(count)],
                             capture_output=True, text=True, timeout=120, check=True).stdout
        pings = [json.loads(line) for line in out.splitlines()]
        writes = sim.writes()
        # The first writes seen by locksim are mbping's, in order.
        writes = [w for w in writes if w["fc"] == 5][:len(pings)]
        oneway = [(w["t"] - p["start"]) * 1000 for p, w in zip(pings, writes)]
        rtt = [(p["end"] - p["start"]) * 1000 for p in pings]
        return oneway, rtt
    finally:
        H.end_test(False)
        H.remove_tmp(False)


# The unlock benches: 8 boards x 16 cells, one drop-off code per cell.
UNLOCK_BOARDS = 8
UNLOCK_TIMING = {"poll_ms": 100, "debounce_ms": 150, "unlock_confirm_ms": 3000,
                 "door_left_open_s": 600, "door_left_open_repeat_s": 600}
KEYPAD_RE = re.compile(r"keypad: cell (\d+) unlock timing \(monotonic us\): got (\d+) "
                       r"checked (\d+) tx (\d+) commit (\d+) durable (\d+) queued (\d+) "
                       r"cpu (\d+)")
WORKER_RE = re.compile(r"board (B\d+): unlock channel (\d+) timing \(monotonic us\): "
                       r"queued (\d+) picked (\d+) sent (\d+) replied (\d+) rc 1")


def unlock_rig(rtu=False, baud=115200, parity="N", env=None):
    """locksim with UNLOCK_BOARDS generic-16 boards (TCP, or RTU on its
    pseudo-terminal) and a lockerd at log level debug, whose keypad and
    Modbus worker write the "unlock timing" lines. Returns (sim, lk)."""
    units = [(u, "generic-16") for u in range(1, UNLOCK_BOARDS + 1)]
    sim = H.Locksim(boards=units, tcp=not rtu, rtu=rtu, name="sim")
    boards = {f"B{u}": {"bus": "sim", "unit": u, "profile": "generic-16"} for u, _ in units}
    cells = {f"{(u - 1) * 16 + 1}-{u * 16}": f"B{u}:1 S" for u, _ in units}
    cfg = H.config(sim=sim, rtu=rtu, boards=boards, cells=cells, timing=UNLOCK_TIMING,
                   log_level="debug", extra=H.custody_extra(
                       kiosk={"code_burst": 10, "code_refill_s": 1}))
    if rtu:
        cfg["bus sim"].update({"baud": baud, "parity": parity})
    return sim, H.Lockerd(cfg, env=env)


def machine_cpu():
    """/proc/stat's first line: (busy, steal, total) jiffies of all CPUs.
    Busy is everything but idle and iowait, steal included; steal is time
    the hypervisor gave this VM's CPUs to someone else."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4], v[7], sum(v)


def machine_share(c0, c1):
    total = (c1[2] - c0[2]) or 1
    return {"machine_busy_percent": round(100.0 * (c1[0] - c0[0]) / total, 1),
            "machine_steal_percent": round(100.0 * (c1[1] - c0[1]) / total, 1)}


def bench_unlock(rounds, rtu=False, baud=115200, parity="N", gap_s=0.06, env=None):
    """Codes typed on the keypad socket -> the relay write seen by locksim,
    with lockerd's own phase stamps (debug log) and locksim's write log,
    all on CLOCK_MONOTONIC. Each round is a fresh locksim + lockerd with
    128 drop-off codes, typed gap_s apart (a door that springs open is
    recorded meanwhile, as in life). Returns a list of per-unlock dicts
    of phase durations in ms."""
    samples = []
    m0 = machine_cpu()
    for rnd in range(rounds):
        H.begin_test(f"bench-unlock-{'rtu' if rtu else 'tcp'}-{rnd}")
        failed = True
        try:
            sim, lk = unlock_rig(rtu, baud, parity, env)
            lk.wait_event("started", timeout=10)
            kc = H.kiosk(lk)
            ncells = UNLOCK_BOARDS * 16
            codes = {}
            for i in range(ncells):
                r = lk.ctl_ok({"op": "reserve", "app": f"U-{rnd}-{i}", "size": "S"})
                codes[r["cell"]] = r["code"]
            after = sim.last_write_n()
            sent = {}
            for cell, code in codes.items():
                time.sleep(gap_s)
                t0 = time.monotonic()
                rep = kc.request({"op": "code", "code": code})
                if rep.get("ok") is not True or rep.get("cell") != cell:
                    raise H.HarnessError(f"code for cell {cell} -> {rep}")
                sent[cell] = t0
            seen = {}

            def all_seen():
                for w in sim.writes(after):
                    if w["fc"] == 5 and w["value"] == H.WRITE_ON:
                        seen.setdefault((w["unit"] - 1) * 16 + w["addr"] + 1, w["t"])
                return len(seen) >= ncells
            H.wait_for(all_seen, 10, what="every unlock write")
            lk.stop()
            with open(lk.log_path) as f:
                text = f.read()
            kp = {int(m[0]): [int(x) / 1e6 for x in m[1:]] for m in KEYPAD_RE.findall(text)}
            wk = {}
            for m in WORKER_RE.findall(text):
                cell = (int(m[0][1:]) - 1) * 16 + int(m[1])
                wk.setdefault(cell, [int(x) / 1e6 for x in m[2:]])
            for cell, t0 in sent.items():
                got, checked, tx, commit, durable, queued, cpu = kp[cell]
                _q, picked, sent_, replied = wk[cell]
                t_seen = seen[cell]
                samples.append({
                    "total": t_seen - t0, "to_handler": got - t0, "verify": checked - got,
                    "plan": tx - checked, "record": commit - tx, "commit": durable - commit,
                    "after_commit": queued - durable, "handoff": picked - queued,
                    "prepare": sent_ - picked, "modbus_oneway": t_seen - sent_,
                    "modbus_rtt": replied - sent_, "main_cpu": cpu})
            failed = False
        finally:
            H.end_test(failed)
            H.remove_tmp(failed)
    out = [{k: v * 1000 for k, v in s_.items()} for s_ in samples]
    return out, machine_share(m0, machine_cpu())


def proc_cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime (all threads)


def proc_switches(pid):
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            for line in f:
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
    return total


def proc_mem_kib(pid):
    """VmRSS and its parts (anonymous: heap, stacks; file: code and data
    of the binary and the shared libraries, mostly shared with other
    processes; shmem: SQLite's WAL index), in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k = line.split(":")[0]
            if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
                out[k] = int(line.split()[1])
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith(("Pss:", "Private_Dirty:")):
                    out[line.split(":")[0]] = int(line.split()[1])
    except OSError:
        pass
    return out


def bench_idle(seconds, window=10, nboards=4, profile="generic-24"):
    """lockerd polling nboards boards at 10 Hz, no broker, nothing to do:
    CPU share per window, context switches per second (all threads),
    board requests per second, memory at the end."""
    H.begin_test(f"bench-idle-{nboards}")
    try:
        per = int(profile.split("-")[1])
        units = [(u, profile) for u in range(1, nboards + 1)]
        sim = H.Locksim(boards=units, name="sim")
        boards = {f"B{u}": {"bus": "sim", "unit": u, "profile": profile}
                  for u, _ in units}
        cells = {f"{(u - 1) * per + 1}-{u * per}": f"B{u}:1 M" for u, _ in units}
        timing = {"poll_ms": 100, "debounce_ms": 150, "unlock_confirm_ms": 3000,
                  "door_left_open_s": 120, "door_left_open_repeat_s": 300,
                  "board_backoff_min_ms": 500, "board_backoff_max_ms": 30000}
        cfg = H.config(sim=sim, boards=boards, cells=cells, timing=timing,
                       log_level="warn")
        lk = H.Lockerd(cfg)
        pid = lk.proc.pid
        hz = os.sysconf("SC_CLK_TCK")
        time.sleep(1)
        req0 = sum(b["requests"] for b in sim.state()["boards"])
        t_start = time.monotonic()
        sw0 = proc_switches(pid)
        sim_c0 = proc_cpu_ticks(sim.proc.pid)
        m0 = machine_cpu()
        shares = []
        while time.monotonic() - t_start < seconds - 0.01:
            c0, t0 = proc_cpu_ticks(pid), time.monotonic()
            time.sleep(min(window, seconds - (t0 - t_start)))
            c1, t1 = proc_cpu_ticks(pid), time.monotonic()
            shares.append(100.0 * (c1 - c0) / hz / (t1 - t0))
        elapsed = time.monotonic() - t_start
        wakeups = (proc_switches(pid) - sw0) / elapsed
        reqs = (sum(b["requests"] for b in sim.state()["boards"]) - req0) / elapsed
        sim_share = 100.0 * (proc_cpu_ticks(sim.proc.pid) - sim_c0) / hz / elapsed
        mem = proc_mem_kib(pid)
        threads = len(os.listdir(f"/proc/{pid}/task"))
        return {"shares": shares, "wakeups": wakeups, "reqs": reqs, "mem": mem,
                "machine": machine_share(m0, machine_cpu()),
                "elapsed": elapsed, "boards": nboards, "cells": nboards * per,
                "threads": threads, "locksim_cpu_percent": sim_share}
    finally:
        H.end_test(False)
        H.remove_tmp(False)


def binary_size():
    """size(1) of build/lockerd: text, data, bss; and the file size."""
    path = os.path.join(H.build_dir(), "lockerd")
    out = subprocess.run(["size", path], capture_output=True, text=True).stdout.split("\n")[1]
    text, data, bss = (int(x) for x in out.split()[:3])
    stripped = None
    try:
        tmp = os.path.join(tempfile.mkdtemp(prefix="lockerd-size-"), "lockerd")
        subprocess.run(["strip", "-o", tmp, path], check=True)
        stripped = os.path.getsize(tmp)
        os.unlink(tmp)
        os.rmdir(os.path.dirname(tmp))
    except (OSError, subprocess.CalledProcessError):
        pass
    return {"file_bytes": os.path.getsize(path), "stripped_bytes": stripped,
            "text": text, "data": data, "bss": bss}


def emit_idle(r, name_suffix="", goal=True):
    extra = {"goal": "< 1"} if goal else {}
    emit("idle_cpu_percent" + name_suffix, r["shares"], unit="% of one core",
         what=f"{r['boards']} boards x {r['cells'] // r['boards']} cells polled at 10 Hz, "
              f"{len(r['shares'])} windows over {r['elapsed']:.0f} s", **r["machine"],
         **extra)
    emit("idle_wakeups_per_s" + name_suffix, None, value=round(r["wakeups"], 1),
         board_requests_per_s=round(r["reqs"], 1), threads=r["threads"])
    emit("idle_rss_kib" + name_suffix, None, value=r["mem"]["VmRSS"], cells=r["cells"],
         anon_kib=r["mem"].get("RssAnon"), file_kib=r["mem"].get("RssFile"),
         shmem_kib=r["mem"].get("RssShmem"), pss_kib=r["mem"].get("Pss"),
         peak_kib=r["mem"].get("VmHWM"),
         **({"goal": "< 8192"} if goal else {}))


def emit_idle_scale(runs):
    emit("scale_idle", None, unit="mixed",
         by_cells={str(r["cells"]): {
             "boards": r["boards"], "threads": r["threads"],
             "cpu_percent_median": round(statistics.median(r["shares"]), 2),
             "cpu_percent_max": round(max(r["shares"]), 2),
             "wakeups_per_s": round(r["wakeups"], 1),
             "board_requests_per_s": round(r["reqs"], 1),
             "rss_kib": r["mem"]["VmRSS"], "anon_kib": r["mem"].get("RssAnon"),
             "pss_kib": r["mem"].get("Pss"),
             "locksim_cpu_percent": round(r["locksim_cpu_percent"], 2),
             **r["machine"]} for r in runs},
         what="idle lockerd by bank size: 24 cells, 1x (96), 4x (384) and the "
              "configuration's cap (32 boards, 512 cells; 16x = 1,536 cells is "
              "beyond CONFIG_CELLS_MAX)")


# The broker and the platform's client send at once (TCP_NODELAY): with
# Nagle's algorithm a small packet sent while an earlier one awaits its ACK
# waits for the peer's delayed ACK, about 40 ms on Linux, and that would
# hide lockerd's own figures (mosquitto's set_tcp_nodelay is off unless set).
BROKER_CONF = "set_tcp_nodelay true\n"


class Subscriber:
    """The platform's side for the MQTT figures: a paho client subscribed
    at QoS 1 to lockers/<locker>/# before lockerd connects, stamping what
    arrives with CLOCK_MONOTONIC in its network thread: the birth, ledger
    events (first copy of each seq, in arrival order), replies by
    request_id. A lighter cousin of harness.Platform, which keeps every
    message and is polled."""

    def __init__(self, broker, locker="test-locker", expect=0):
        import threading
        import paho.mqtt.client as mqtt
        H._register(self)
        self.prefix = f"lockers/{locker}"
        self.cv = threading.Condition()
        self.birth = None            # monotonic time of the first birth
        self.expect = expect         # events 1..expect must all arrive
        self.seen = set()
        self.order = []              # first copies, arrival order
        self.dupes = 0
        self.have = 0                # distinct seqs in 1..expect
        self.done = None             # when the last of them arrived
        self.replies = {}            # request_id -> (time, body)
        self.cancelled = set()       # resv ids of cancelled events seen
        self.c = mqtt.Client(client_id=f"bench-{os.getpid()}-{id(self)}",
                             clean_session=True)
        self.c.on_connect = lambda c, u, f, rc: c.subscribe(self.prefix + "/#", qos=1)
        self.c.on_subscribe = self._on_subscribe
        self.c.on_message = self._on_message
        self.subscribed = False
        self.c.connect("127.0.0.1", broker.port, keepalive=30)
        self.c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.c.loop_start()
        with self.cv:
            if not self.cv.wait_for(lambda: self.subscribed, 5):
                raise H.HarnessError("bench subscriber: no SUBACK within 5 s")

    def _on_subscribe(self, c, userdata, mid, granted):
        with self.cv:
            self.subscribed = True
            self.cv.notify_all()

    def _on_message(self, c, userdata, msg):
        t = time.monotonic()
        sub = msg.topic[len(self.prefix) + 1:]
        if sub not in ("events", "status", "reply"):
            return
        body = json.loads(msg.payload)
        with self.cv:
            if sub == "events":
                seq = body["seq"]
                if seq in self.seen:
                    self.dupes += 1
                    return
                self.seen.add(seq)
                self.order.append(seq)
                if body.get("type") == "cancelled":
                    self.cancelled.add(body.get("resv"))
                if 1 <= seq <= self.expect:
                    self.have += 1
                    if self.have == self.expect:
                        self.done = t
            elif sub == "status":
                if body.get("online") and self.birth is None:
                    self.birth = t
            else:
                self.replies[body.get("request_id")] = (t, body)
            self.cv.notify_all()

    def wait(self, pred, timeout, what):
        with self.cv:
            if not self.cv.wait_for(pred, timeout):
                raise H.HarnessError(f"bench subscriber: timed out after {timeout} s "
                                     f"waiting for {what}")

    def cleanup(self):
        try:
            self.c.loop_stop()
            self.c.disconnect()
        except Exception:
            pass


def _ledger_counts(db_path):
    import sqlite3
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT max(seq), sum(delivered = 0) FROM events").fetchone()
    finally:
        db.close()


def build_backlog(sim, target):
    """A state directory whose ledger holds >= target events, none of
    them delivered: lockerd with [mqtt] at a port where nothing listens,
    driven by reserve + cancel cycles on the control socket. Stopped
    cleanly before it is used, so that copies of it are consistent.
    Returns (state dir, highest seq)."""
    dead = H.free_port()
    cfg = H.config(sim, log_level="warn",
                   extra={"mqtt": {"host": "127.0.0.1", "port": dead}})
    cfg["locker"]["state_dir"] = os.path.join(H.tmpdir(), "backlog")
    cfg["control"]["socket"] = os.path.join(H.tmpdir(), "backlog.sock")
    lk = H.Lockerd(cfg, name="backlog")
    lk.wait_event("started", timeout=5)
    i = 0
    while True:
        for _ in range(100):
            i += 1
            r = lk.ctl_ok({"op": "reserve", "app": f"D-{i}", "size": "S"})
            lk.ctl_ok({"op": "cancel", "resv": r["resv"]})
        if lk.events(after=target - 1):
            break
    lk.stop()
    last, undelivered = _ledger_counts(lk.db_path)
    if undelivered != last:
        raise H.HarnessError(f"backlog: {undelivered} of {last} events undelivered")
    return lk.state_dir, last


def drain_once(sim, src, n, inflight, tag, after=None):
    """lockerd on a fresh copy of src, a fresh broker, a subscriber already
    connected; returns the figures of one drain, with those of
    after(lockerd, subscriber) (a dict) once the drain is over."""
    import shutil
    state = os.path.join(H.tmpdir(), f"state-{tag}")
    shutil.copytree(src, state)
    broker = H.Mosquitto(conf=BROKER_CONF)
    sink = Subscriber(broker, expect=n)
    cfg = H.config(sim, log_level="warn", extra=H.mqtt_extra(broker, inflight=inflight))
    cfg["locker"]["state_dir"] = state
    cfg["control"]["socket"] = os.path.join(H.tmpdir(), f"{tag}.sock")
    t_spawn = time.monotonic()
    lk = H.Lockerd(cfg, name=f"drain-{tag}")
    hz = os.sysconf("SC_CLK_TCK")
    sink.wait(lambda: sink.birth is not None, 10, "lockerd's birth")
    cpu0 = proc_cpu_ticks(lk.proc.pid), proc_cpu_ticks(broker.proc.pid), time.process_time()
    sink.wait(lambda: sink.done is not None, 300, f"events 1..{n}")
    cpu1 = proc_cpu_ticks(lk.proc.pid), proc_cpu_ticks(broker.proc.pid), time.process_time()
    with sink.cv:
        order = [s for s in sink.order if s <= n]
        dupes = sink.dupes
        took = sink.done - sink.birth
        birth = sink.birth
    if order != list(range(1, n + 1)):
        bad = next(i for i, s in enumerate(order) if s != i + 1)
        raise H.HarnessError(f"drain {tag}: events out of order or missing near "
                             f"#{bad + 1}: {order[max(0, bad - 3):bad + 3]}")
    more = after(lk, sink) if after else {}
    lk.stop()
    broker.stop()
    sink.cleanup()
    shutil.rmtree(state, ignore_errors=True)
    return {**more, "rate": n / took, "took_s": took, "birth_ms": (birth - t_spawn) * 1000,
            "dupes": dupes, "lockerd_cpu_s": (cpu1[0] - cpu0[0]) / hz,
            "broker_cpu_s": (cpu1[1] - cpu0[1]) / hz,
            "subscriber_cpu_s": cpu1[2] - cpu0[2]}


def bench_drain(runs, target):
    H.begin_test("bench-drain")
    failed = True
    try:
        sim = H.Locksim(name="sim")
        src, n = build_backlog(sim, target)
        res = {32: [], 1: []}
        for i in range(runs):
            for inflight in (32, 1):
                res[inflight].append(drain_once(sim, src, n, inflight, f"{i}-w{inflight}"))
        failed = False
        return n, res
    finally:
        H.end_test(failed)
        H.remove_tmp(failed)


def reserve_samples(lk, sink, count, warmup=10, tag="bench"):
    """Reserve commands over MQTT, one at a time: publish -> reply, in ms.
    Each reservation is then cancelled (untimed) and its events let
    through, so that the next sample starts on a quiet link."""
    topic = f"{sink.prefix}/cmd"
    rtt = []
    for i in range(warmup + count):
        rid = f"{tag}-{os.getpid()}-{i}"
        cmd = json.dumps(H.command("reserve", rid, app=f"R-{i}", size="S"))
        t0 = time.monotonic()
        sink.c.publish(topic, cmd, qos=1)
        sink.wait(lambda: rid in sink.replies, 10, f"the reply to {rid}")
        t1, rep = sink.replies[rid]
        if rep.get("ok") is not True:
            raise H.HarnessError(f"reserve over MQTT refused: {rep}")
        if i >= warmup:
            rtt.append((t1 - t0) * 1000)
        lk.ctl_ok({"op": "cancel", "resv": rep["resv"]})
        sink.wait(lambda: rep["resv"] in sink.cancelled, 10, "the cancelled event")
    return rtt


def bench_reserve_rtt(count, warmup=10):
    H.begin_test("bench-reserve")
    failed = True
    try:
        sim = H.Locksim(name="sim")
        broker = H.Mosquitto(conf=BROKER_CONF)
        sink = Subscriber(broker)
        lk = H.Lockerd(H.config(sim, log_level="warn", extra=H.mqtt_extra(broker)))
        lk.wait_event("started", timeout=5)
        sink.wait(lambda: sink.birth is not None, 10, "lockerd's birth")
        rtt = reserve_samples(lk, sink, count, warmup)
        # The same op on the control socket: no broker, no command log.
        local = []
        for i in range(count):
            t0 = time.monotonic()
            r = lk.ctl_ok({"op": "reserve", "app": f"L-{i}", "size": "S"})
            local.append((time.monotonic() - t0) * 1000)
            lk.ctl_ok({"op": "cancel", "resv": r["resv"]})
        failed = False
        return rtt, local
    finally:
        H.end_test(failed)
        H.remove_tmp(failed)


def bench_refused(n):
    """The disk cost of refused commands: n opens with a well-formed but
    bogus signature, then n unsigned pings, at 1,000 a second each; the
    database's logical size (page_count x page_size, the WAL's committed
    pages included) and the ledger's and command log's rows before and
    after, once the counted alarm ([mqtt] refused_alarm_s, 2 s here) is
    in. Returns a dict."""
    import sqlite3
    H.begin_test("bench-refused")
    failed = True
    try:
        sim = H.Locksim(name="sim")
        broker = H.Mosquitto(conf=BROKER_CONF)
        sink = Subscriber(broker)
        lk = H.Lockerd(H.config(sim, log_level="warn",
                                extra=H.mqtt_extra(broker, refused_alarm_s=2)))
        lk.wait_event("started", timeout=5)
        sink.wait(lambda: sink.birth is not None, 10, "lockerd's birth")

        def db():
            con = sqlite3.connect(f"file:{lk.db_path}?mode=ro", uri=True)
            try:
                size = con.execute("PRAGMA page_count").fetchone()[0] * \
                    con.execute("PRAGMA page_size").fetchone()[0]
                rows = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                        for t in ("events", "commands", "nonces")}
                bodies = con.execute("SELECT coalesce(sum(length(body)), 0) FROM events"
                                     ).fetchone()[0]
                return size, rows, bodies
            finally:
                con.close()

        out = {}
        topic = f"{sink.prefix}/cmd"
        for what in ("forged", "unsigned"):
            size0, rows0, bodies0 = db()
            t0 = time.monotonic()
            rids = []
            for i in range(n):
                d = t0 + i / 1000 - time.monotonic()
                if d > 0:
                    time.sleep(d)
                rid = f"{what}-{i}"
                if what == "forged":
                    c = H.command("open", rid, cell=1 + i % 24)
                    c["sig"] = "A" * 86
                else:
                    c = H.command("ping", rid)
                sink.c.publish(topic, json.dumps(c), qos=1)
                rids.append(rid)
            sink.wait(lambda: all(r in sink.replies for r in rids), 30, f"replies to {what}")
            time.sleep(2.5)     # the counted alarm's window
            size1, rows1, bodies1 = db()
            out[what] = {"commands": n, "db_bytes": size1 - size0,
                         "db_bytes_per_command": round((size1 - size0) / n, 2),
                         "ledger_events": rows1["events"] - rows0["events"],
                         "ledger_body_bytes": bodies1 - bodies0,
                         "command_log_rows": rows1["commands"] - rows0["commands"],
                         "nonce_rows": rows1["nonces"] - rows0["nonces"]}
        failed = False
        return out
    finally:
        H.end_test(failed)
        H.remove_tmp(failed)


def build_snapshots(sim, targets):
    """One growing ledger, copied each time it passes a target: state
    directories with >= each target of undelivered events (reserve +
    cancel cycles on the control socket, 3 events and one stored
    reservation each). Built on tmpfs, where a commit costs no fsync, to
    keep the run short; the copies are timed on disk. Returns
    [(dir, events, reservations)]."""
    import shutil
    import sqlite3
    dead = H.free_port()
    work = tempfile.mkdtemp(prefix="lockerd-bench-", dir="/dev/shm") \
        if os.path.isdir("/dev/shm") else os.path.join(H.tmpdir(), "grow")
    cfg = H.config(sim, log_level="warn",
                   extra={"mqtt": {"host": "127.0.0.1", "port": dead}})
    cfg["locker"]["state_dir"] = os.path.join(work, "state")
    cfg["control"]["socket"] = os.path.join(H.tmpdir(), "grow.sock")
    lk = H.Lockerd(cfg, name="grow")
    lk.wait_event("started", timeout=5)
    out, i = [], 0
    try:
        for target in sorted(targets):
            while True:
                for _ in range(100):
                    i += 1
                    r = lk.ctl_ok({"op": "reserve", "app": f"D-{i}", "size": "S"})
                    lk.ctl_ok({"op": "cancel", "resv": r["resv"]})
                if lk.events(after=target - 1):
                    break
            lk.stop()
            db = sqlite3.connect(f"file:{lk.db_path}?mode=ro", uri=True)
            last, = db.execute("SELECT max(seq) FROM events").fetchone()
            nresv, = db.execute("SELECT count(*) FROM reservations").fetchone()
            db.close()
            dst = os.path.join(H.tmpdir(), f"snap-{target}")
            shutil.copytree(lk.state_dir, dst)
            out.append((dst, last, nresv))
            lk.start()
    finally:
        lk.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    return out


def bench_scale(base, factors, reserve_n):
    """Each figure that depends on stored records at base x factors
    events: the drain of that backlog, then, on the same lockerd, its
    RSS and the reserve round trip with that history behind it."""
    H.begin_test("bench-scale")
    failed = True
    try:
        sim = H.Locksim(name="sim")
        t0 = time.monotonic()
        snaps = build_snapshots(sim, [base * f for f in factors])
        built = time.monotonic() - t0
        res = []
        for f, (src, n, nresv) in zip(sorted(factors), snaps):
            def after(lk, sink):
                rss_drained = proc_mem_kib(lk.proc.pid)
                rtt = reserve_samples(lk, sink, reserve_n, tag=f"scale{f}")
                return {"rss_drained": rss_drained, "rtt": rtt,
                        "rss_after": proc_mem_kib(lk.proc.pid),
                        "db_bytes": sum(os.path.getsize(os.path.join(lk.state_dir, x))
                                        for x in os.listdir(lk.state_dir)
                                        if x.startswith("lockerd.db"))}
            r = drain_once(sim, src, n, 32, f"scale{f}", after=after)
            r.update({"factor": f, "events": n, "reservations": nresv})
            res.append(r)
        failed = False
        return res, built
    finally:
        H.end_test(failed)
        H.remove_tmp(failed)


def emit_scale(res, built):
    by = {f"{r['factor']}x": r for r in res}
    emit("scale_drain_events_per_s", None, unit="events/s", goal="> 2000",
         by_scale={k: {"events": r["events"], "rate": round(r["rate"]),
                       "took_s": round(r["took_s"], 1),
                       "lockerd_cpu_s": round(r["lockerd_cpu_s"], 2)}
                   for k, r in by.items()},
         what="one drain per scale (inflight 32), backlog of N undelivered events")
    emit("scale_reserve_rtt_ms", None, unit="ms",
         by_scale={k: {"reservations_stored": r["reservations"], "events": r["events"],
                       "median": round(statistics.median(r["rtt"]), 3),
                       "p99": round(pct(r["rtt"], 99), 3), "n": len(r["rtt"])}
                   for k, r in by.items()},
         what="reserve over MQTT (publish -> reply) on the drained lockerd, with "
              "that history stored")
    emit("scale_rss_kib", None, unit="KiB", goal="< 8192",
         by_scale={k: {"reservations_stored": r["reservations"], "events": r["events"],
                       "after_drain": r["rss_drained"], "after_reserves": r["rss_after"],
                       "db_mib": round(r["db_bytes"] / 2**20, 1)}
                   for k, r in by.items()},
         what="lockerd's VmRSS with the stored records (16 + 8 cells)",
         backlog_build_s=round(built, 1))


def bench_codes_scale(live_list, runs=3):
    """codebench at 1x, 4x, 16x the live codes of a 96-cell bank (a cell
    holds at most one live code) and at 10,000."""
    by = {}
    for live in live_list:
        per = {}
        for _ in range(runs):
            out = subprocess.run([os.path.join(H.build_dir(), "codebench"), str(live),
                                  str(min(2000, live))],
                                 capture_output=True, text=True, check=True).stdout
            for line in out.splitlines():
                rec = json.loads(line)
                per.setdefault(rec["bench"], []).append(rec)
        by[str(live)] = {
            "issue_per_s": round(statistics.median(r["value"] for r in per["code_issue_rate"])),
            "verify_median_us": round(statistics.median(r["median"] for r in per["code_verify_us"]), 1),
            "verify_p99_us": round(statistics.median(r["p99"] for r in per["code_verify_us"]), 1),
            "reject_median_us": round(statistics.median(r["median"] for r in per["code_reject_us"]), 1)}
    emit("scale_codes", None, unit="us / codes/s", by_live=by, runs=runs,
         what="codebench: issue (reserve + unique code + keyed hash) and verify "
              "(hash + linear lookup + consume) with N live codes")



def bench_login(n):
    """Wrong log-ins of an account and of an unknown id, interleaved."""
    for kib, passes in ((8192, 3), (16384, 4)):
        H.begin_test(f"bench_login_{kib}")
        try:
            keys = {"pin_burst": 10, "pin_refill_s": 1, "pin_hash_kib": kib,
                    "pin_hash_passes": passes}
            sim, lk, kc = H.start_custody(kiosk_keys=keys)
            H.add_staff(lk, "alice", "13572468")
            got = {"account": [], "unknown": []}
            for i in range(n):
                for who, staff in (("account", "alice"), ("unknown", "nosuchid")):
                    while True:
                        t0 = time.perf_counter()
                        rep = kc.login(staff, f"2{i:07d}")
                        took = (time.perf_counter() - t0) * 1000
                        if rep.get("error") != "wait":
                            break
                        time.sleep(rep["wait_s"])
                    got[who].append(took)
            for who, xs in got.items():
                emit(f"login_{who}_m{kib}_t{passes}_ms", xs,
                     what=f"wrong staff log-in, {who}, PIN hash {kib} KiB x {passes} "
                          "passes: keypad request -> reply")
            lk.stop()
            sim.stop()
        finally:
            H.end_test(False)
            H.remove_tmp(False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", "2")),
                    help="unlock rounds of 128 codes each (RTU: half, at least 1)")
    ap.add_argument("--idle-seconds", type=int,
                    default=int(os.environ.get("BENCH_IDLE_S", "60")))
    ap.add_argument("--drain-runs", type=int,
                    default=int(os.environ.get("BENCH_DRAIN_RUNS", "3")))
    ap.add_argument("--drain-events", type=int,
                    default=int(os.environ.get("BENCH_DRAIN_EVENTS", "10000")))
    ap.add_argument("--reserve-n", type=int,
                    default=int(os.environ.get("BENCH_RESERVE_N", "200")))
    ap.add_argument("--only", default=os.environ.get("BENCH_ONLY", ""),
                    help="comma-separated subset: modbus, rtu, idle, codes, drain, "
                         "reserve, refused, scale, fleet, slowdisk, login")
    args = ap.parse_args()
    os.environ["BUILD"] = args.build
    only = set(filter(None, args.only.split(",")))

    def want(name):
        return not only or name in only

    if want("modbus"):
        bench_modbus(args.rounds)
    if want("rtu"):
        bench_rtu(max(1, args.rounds // 2))
    if want("idle"):
        r = bench_idle(args.idle_seconds)
        emit_idle(r)
        emit("binary_size_bytes", None, **binary_size())
        secs = int(os.environ.get("BENCH_IDLE_SCALE_S", "20"))
        runs = [bench_idle(secs, nboards=1)] + [r] + \
            [bench_idle(secs, nboards=16), bench_idle(secs, nboards=32, profile="generic-16")]
        emit_idle_scale(runs)
    if want("codes"):
        bench_codes(5)
    if want("drain"):
        emit_drain(*bench_drain(args.drain_runs, args.drain_events))
    if want("scale"):
        factors = [int(x) for x in os.environ.get("BENCH_SCALE", "1,4,16").split(",")]
        emit_scale(*bench_scale(int(os.environ.get("BENCH_SCALE_BASE", "10000")),
                                factors, int(os.environ.get("BENCH_SCALE_RESERVE_N", "100"))))
        bench_codes_scale([96, 384, 1536, 10000])
    if want("login"):
        bench_login(int(os.environ.get("BENCH_LOGIN_N", "21")))
    if want("fleet"):
        import fleet
        fleet.main(["--build", args.build])
    if want("slowdisk"):
        bench_slow_storage(max(1, args.rounds // 2))
    if want("refused"):
        r = bench_refused(int(os.environ.get("BENCH_REFUSED_N", "3000")))
        emit("refused_command_disk_bytes", None, unit="bytes a command",
             goal="0 at rest for each refused command (one alarm per window)",
             forged_open=r["forged"], unsigned_ping=r["unsigned"])
    if want("reserve"):
        rtt, local = bench_reserve_rtt(args.reserve_n)
        emit("reserve_rtt_ms", rtt,
             what="signed reserve command published on lockers/<id>/cmd -> its "
                  "reply received on .../reply (broker both ways, paho client); incl. "
                  "4 commits, 3 flushed: command row + nonce (unflushed), "
                  "command_executed, reservation + events, reply stored",
             ctl_reserve_median_ms=round(statistics.median(local), 3),
             ctl_reserve_p99_ms=round(pct(local, 99), 3))


PHASES = (
    ("to_handler", "keypad client send -> lockerd's keypad handler (socket, poll loop, JSON)"),
    ("verify", "code verification: digits check, throttle, keyed BLAKE2b, lookup + consume"),
    ("plan", "verified -> transaction begun (the step's actions planned)"),
    ("record", "events signed (Ed25519) + hash-chained, rows INSERTed, in the transaction"),
    ("commit", "COMMIT: the durable write (WAL, synchronous=FULL: fsync)"),
    ("after_commit", "committed -> unlock queued (retained-state marks, info log lines)"),
    ("handoff", "queued -> the bus worker thread picks it up (eventfd wake)"),
    ("prepare", "worker: modbus_flush, RTU inter-frame silence, set slave"),
    ("modbus_oneway", "lockerd's libmodbus write call -> write seen by locksim"),
    ("modbus_rtt", "lockerd's libmodbus write round trip (to the reply)"),
    ("main_cpu", "CPU time of lockerd's main thread from the handler to the unlock queued "
                 "(CLOCK_THREAD_CPUTIME_ID): the work, SQLite's part of the commit included, "
                 "without waiting for the disk or for a core"),
)


def emit_unlock(tag, samples, bare_oneway, bare_rtt, **extra):
    """The unlock figure, its phases, and what lockerd adds on top of the
    bare write and the durable commit: per unlock, total - commit - its
    own Modbus one-way time (what a bare libmodbus call takes), and, as a
    cross-check, total - commit - the bare one-way median of mbping."""
    suffix = "" if tag == "tcp" else "_" + tag
    total = [s["total"] for s in samples]
    u = emit("unlock_latency" + suffix + "_ms", total,
             what=f"code typed on the keypad socket -> relay write seen by locksim "
                  f"({tag}), incl. durable commit; {UNLOCK_BOARDS} boards x 16 cells, "
                  f"polled at 10 Hz", **extra)
    for name, what in PHASES:
        emit(f"unlock{suffix}_phase_{name}_ms", [s[name] for s in samples], what=what)
    add = [s["total"] - s["commit"] - s["modbus_oneway"] for s in samples]
    bare_med = statistics.median(bare_oneway)
    add_bare = [s["total"] - s["commit"] - bare_med for s in samples]
    # The addition's wall-clock phases that do work on lockerd's threads,
    # against the CPU they actually used: the difference is waiting.
    wait = [s["to_handler"] + s["handoff"] for s in samples]
    a = emit(f"unlock{suffix}_lockerd_addition_ms", add, goal="< 1 at p99",
             waits_median_ms=round(statistics.median(wait), 3),
             waits_p99_ms=round(pct(wait, 99), 3),
             main_cpu_median_ms=round(statistics.median(s["main_cpu"] for s in samples), 3),
             main_cpu_p99_ms=round(pct([s["main_cpu"] for s in samples], 99), 3),
             what="total - durable commit - the Modbus write's own one-way time, "
                  "per unlock", vs_bare_oneway_median=round(statistics.median(add_bare), 3),
             vs_bare_oneway_p99=round(pct(add_bare, 99), 3),
             bare_oneway_median_ms=round(bare_med, 3),
             bare_rtt_median_ms=round(statistics.median(bare_rtt), 3),
             commit_share_of_total=round(statistics.median(
                 [s["commit"] / s["total"] for s in samples]), 2))
    return u, a


def rtu_wire_ms(baud, bits_per_char, request=8, reply=8):
    """Wire time of one RTU exchange: request frame, the 3.5-character
    silence that ends it (1.75 ms fixed above 19200 Bd, Modbus over serial
    line 2.5.1.1), reply frame; and the lone request (to "seen")."""
    char = bits_per_char / baud * 1000
    gap = 1.75 if baud > 19200 else 3.5 * char
    return {"char_ms": round(char, 4), "request_ms": round(request * char, 3),
            "reply_ms": round(reply * char, 3), "gap_ms": round(gap, 3),
            "request_plus_gap_ms": round(request * char + gap, 3),
            "exchange_ms": round(request * char + gap + reply * char + gap, 3)}


def bench_modbus(rounds):
    oneway, rtt = bench_bare_write(200)
    samples, machine = bench_unlock(rounds)
    emit("modbus_write_oneway_ms", oneway,
         what="bare libmodbus FC05: call -> write seen by locksim (TCP)")
    emit("modbus_write_rtt_ms", rtt, what="bare libmodbus FC05 round trip (TCP)")
    emit_unlock("tcp", samples, oneway, rtt, **machine)


def bench_rtu(rounds):
    """The same over RTU on locksim's pseudo-terminal, where the wire time
    is zero: at the 115200 and 9600 Bd settings (a pty ignores the rate,
    but lockerd keeps the 3.5-character silence of the configured one)."""
    for baud in (115200, 9600):
        oneway, rtt = bench_bare_write(200, rtu=True, baud=baud)
        samples, machine = bench_unlock(rounds, rtu=True, baud=baud)
        emit(f"modbus_rtu{baud}_write_oneway_ms", oneway,
             what="bare libmodbus FC05 over RTU on a pty: call -> seen by locksim")
        emit(f"modbus_rtu{baud}_write_rtt_ms", rtt,
             what="bare libmodbus FC05 round trip over RTU on a pty")
        wire = {"8N1": rtu_wire_ms(baud, 10), "8E1": rtu_wire_ms(baud, 11)}
        emit_unlock(f"rtu{baud}", samples, oneway, rtt, wire_time=wire, **machine,
                    frames="FC05 write single coil: request 8 bytes (unit, fc, addr 2, "
                           "value 2, CRC 2), reply 8 bytes (echo)")


SLOW_FSYNC_MS = (5, 20, 50)


def bench_slow_storage(rounds):
    """The unlock (Modbus TCP, as unlock_latency_ms) with the database on
    storage whose every fsync/fdatasync takes 5, 20 or 50 ms longer
    (build/libslowsync.so, LD_PRELOAD: an SD card or eMMC), beside this
    machine's own disk in the same run. Per unlock: the total, its own
    durable commit, and the wait before lockerd's keypad handler ran,
    which is where a commit already in progress (a door event's) shows."""
    lib = os.path.join(H.build_dir(), "libslowsync.so")
    by = {}
    for ms in (None,) + SLOW_FSYNC_MS:
        env = None
        if ms is not None:
            env = H.daemon_env()
            env.update({"LD_PRELOAD": lib, "SLOWSYNC_MS": str(ms)})
        # Codes typed 60 ms + 4 delayed fsyncs apart: each unlock costs two
        # commits (the code used, then the door opened), so the disk is
        # busy at most half the time. At a fixed 60 ms, 16 unlocks a second
        # on a 50 ms disk would ask for 1.6 s of flushing a second, a
        # queue no hall makes (one person at a time per keypad).
        gap = 0.06 + 4 * (ms or 0) / 1000.0
        samples, machine = bench_unlock(rounds, env=env, gap_s=gap)
        key = "this_disk" if ms is None else f"fsync_plus_{ms}ms"

        def mp(name):
            v = [x[name] for x in samples]
            return {"median": round(statistics.median(v), 2), "p99": round(pct(v, 99), 2),
                    "max": round(max(v), 2)}
        total = [x["total"] for x in samples]
        by[key] = {"unlock": mp("total"), "own_commit": mp("commit"),
                   "before_handler": mp("to_handler"), "n": len(samples),
                   "code_gap_ms": round(gap * 1000),
                   "over_two_commits": sum(1 for x in samples
                                           if ms is not None and x["total"] > 2 * ms + 10),
                   **machine}
        if ms is not None:
            by[key]["unlock_minus_fsync_delay_median"] = round(
                statistics.median(total) - ms, 2)
    emit("unlock_latency_slow_storage_ms", None, unit="ms", by_storage=by,
         what="keypad code -> relay write seen by locksim (TCP, 8 boards x 16 cells), "
              "every fsync of lockerd made SLOWSYNC_MS slower; own_commit is the "
              "unlock's durable commit, before_handler the wait for the main loop "
              "(a commit in progress); over_two_commits counts unlocks slower than "
              "two delayed fsyncs + 10 ms")


def emit_drain(n, res):
    """A throughput over a few runs: the median and the worst run (a p99
    of three runs would only be the best one)."""
    def med(runs, key, nd=2):
        return round(statistics.median(r[key] for r in runs), nd)

    d32 = res[32]
    rates = [r["rate"] for r in d32]
    emit("outbox_drain_events_per_s", None, median=round(statistics.median(rates)),
         worst=round(min(rates)), best=round(max(rates)), n=len(rates),
         unit="events/s", goal="> 2000", events=n, inflight=32,
         took_s=med(d32, "took_s"), birth_ms=med(d32, "birth_ms", 1),
         lockerd_cpu_s=med(d32, "lockerd_cpu_s"), broker_cpu_s=med(d32, "broker_cpu_s"),
         subscriber_cpu_s=med(d32, "subscriber_cpu_s"),
         dupes=sum(r["dupes"] for r in d32),
         what="backlog of undelivered ledger events -> all of 1..N at the "
              "platform in seq order, from lockerd's birth; QoS 1, one durable "
              "commit per PUBACK")
    d1 = res[1]
    rates1 = [r["rate"] for r in d1]
    emit("outbox_drain_inflight1_events_per_s", None,
         median=round(statistics.median(rates1)), worst=round(min(rates1)),
         best=round(max(rates1)), n=len(rates1), unit="events/s", events=n,
         inflight=1, took_s=med(d1, "took_s"),
         lockerd_cpu_s=med(d1, "lockerd_cpu_s"), broker_cpu_s=med(d1, "broker_cpu_s"),
         subscriber_cpu_s=med(d1, "subscriber_cpu_s"),
         window_gain=round(statistics.median(rates) / statistics.median(rates1), 1),
         what="the same drain, same runs, one event in flight at a time")


def bench_codes(runs, live=10000):
    """codebench runs, each issuing `live` codes then verifying 2000 right
    and 2000 wrong ones among them; medians over the runs."""
    import statistics
    import subprocess
    per = {}
    for _ in range(runs):
        out = subprocess.run([os.path.join(H.build_dir(), "codebench"), str(live)],
                             capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            rec = json.loads(line)
            per.setdefault(rec["bench"], []).append(rec)
    rates = [r["value"] for r in per["code_issue_rate"]]
    emit("code_issue_rate", None, value=round(statistics.median(rates)), unit="codes/s",
         runs=runs, what=per["code_issue_rate"][0]["what"])
    for name in ("code_verify_us", "code_reject_us"):
        recs = per[name]
        emit(name, None, median=round(statistics.median(r["median"] for r in recs), 1),
             p99=round(statistics.median(r["p99"] for r in recs), 1), unit="us", live=live,
             runs=runs, what=recs[0]["what"] + " (medians of per-run median and p99)")


if __name__ == "__main__":
    main()
