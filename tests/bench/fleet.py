#!/usr/bin/env python3
"""make fleet (and BENCH_ONLY=fleet in make bench): a city's fleet on one box.

N lockers, each a real lockerd with 4 boards x 24 cells polled at 10 Hz
(boards served by locksim, 8 lockers per locksim, its automatic person
putting items in, taking them out and closing doors), against one
mosquitto. One Python platform (a paho client, commands signed as
sim/lockerctl signs them) provisions a staff account on every locker,
then, for each locker at a steady rate, alternately
  * reserves a drop-off cell (reserve over MQTT); the applicant types the
    code from the reply on the locker's keypad socket; and
  * assigns a pickup (load, signed); when the loaded door closes the
    pickup code reaches the platform in the code_issued event, and the
    applicant types it on the keypad.
Each keypad code is timed from the line sent to (a) the relay write seen
by locksim (the door opens: what the person waits for) and (b) the keypad
reply. After the steady window the platform waits for every locker's
ledger to arrive and checks, per locker, that seqs 1..last (lockerd's
database) all arrived: no event lost.

For N in BENCH_FLEET_N (default 1,32,128,192,256, stopping after the first N
that misses a goal) it prints one JSON line per N, then "fleet_max_n":
the largest N with keypad p99 (to the relay) under 100 ms and no event
lost, with per-locker CPU and memory. Everything shares this machine's
cores: lockerds, locksims, mosquitto and the Python platform and keypads.
"""

import argparse
import importlib.machinery
import importlib.util
import json
import os
import queue
import random
import socket
import sqlite3
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))
import harness as H  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(HERE))
BROKER_CONF = "set_tcp_nodelay true\n"
LOCKERS_PER_SIM = 8  # locksim serves at most 32 boards
BOARDS = 4
CELLS_PER_BOARD = 24
STAFF = "fleet"
PIN = "246810"


def load_lockerctl():
    """sim/lockerctl as a module (it has no .py suffix)."""
    path = os.path.join(ROOT, "sim", "lockerctl")
    loader = importlib.machinery.SourceFileLoader("lockerctl", path)
    spec = importlib.util.spec_from_loader("lockerctl", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


LC = load_lockerctl()


def pct(values, p):
    s = sorted(values)
    if not s:
        return None
    k = min(len(s) - 1, max(0, int(round(p / 100.0 * (len(s) - 1)))))
    return s[k]


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pss_kib(pid):
    """Proportional set size: shared library pages divided among the
    processes that map them (the fleet's lockerds share theirs)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def machine_busy():
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


class Platform:
    """The city platform: one paho client for every locker. Commands wait
    for their reply by request_id; events are kept per locker as a set of
    seqs; pickup codes from code_issued events go to the locker's queue."""

    def __init__(self, broker, key):
        import paho.mqtt.client as mqtt
        self.key = key
        self.lock = threading.Lock()
        self.replies = {}
        self.waiters = {}
        self.seqs = {}
        self.dupes = 0
        self.pickups = {}          # locker -> queue of (resv, code)
        self.events_n = 0
        self.messages_n = 0
        self.by_topic = {}         # kind -> [messages, payload bytes]
        self.by_type = {}          # event type -> count
        self.commands = {}         # op -> count (after setup)
        self.counting = False
        self.subscribed = threading.Event()
        self.c = mqtt.Client(client_id=f"fleet-platform-{os.getpid()}", clean_session=True)
        self.c.on_connect = lambda c, u, f, rc: c.subscribe(
            [("lockers/+/events", 1), ("lockers/+/reply", 1), ("lockers/+/status", 1),
             ("lockers/+/cells/+", 1)])
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", broker.port, keepalive=30)
        self.c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.c.loop_start()
        if not self.subscribed.wait(5):
            raise H.HarnessError("fleet platform: no SUBACK within 5 s")

    def _on_message(self, c, userdata, msg):
        parts = msg.topic.split("/")
        locker, sub = parts[1], parts[2]
        body = json.loads(msg.payload)
        with self.lock:
            self.messages_n += 1
            if self.counting:
                t = self.by_topic.setdefault(sub, [0, 0])
                t[0] += 1
                t[1] += len(msg.payload)
                if sub == "events":
                    self.by_type[body.get("type")] = self.by_type.get(body.get("type"), 0) + 1
            if sub == "events":
                s = self.seqs.setdefault(locker, set())
                if body["seq"] in s:
                    self.dupes += 1
                    return
                s.add(body["seq"])
                self.events_n += 1
                if body.get("type") == "code_issued" and body.get("code") and \
                        body.get("kind", "pickup") == "pickup":
                    q = self.pickups.get(locker)
                    if q is not None:
                        q.put((body.get("resv"), body["code"]))
            elif sub == "reply":
                rid = body.get("request_id")
                self.replies[rid] = body
                ev = self.waiters.pop(rid, None)
                if ev is not None:
                    ev.set()

    def request(self, locker, op, fields, signed=None, timeout=10):
        if signed is None:
            signed = op in LC.SIGNED_OPS
        cmd = LC.build_command(op, fields, timeout, self.key if signed else None, locker)
        ev = threading.Event()
        with self.lock:
            self.waiters[cmd["request_id"]] = ev
            if self.counting:
                self.commands[op] = self.commands.get(op, 0) + 1
        self.c.publish(f"lockers/{locker}/cmd", json.dumps(cmd), qos=1)
        if not ev.wait(timeout):
            raise H.HarnessError(f"{locker}: no reply to {op} within {timeout} s")
        with self.lock:
            return self.replies.pop(cmd["request_id"])

    def cleanup(self):
        try:
            self.c.loop_stop()
            self.c.disconnect()
        except Exception:
            pass


class Locker:
    def __init__(self, i, sim, unit_base, broker, pk_hex):
        self.id = f"L{i:03d}"
        self.sim = sim
        self.unit_base = unit_base
        d = os.path.join(H.tmpdir(), self.id)
        os.makedirs(d)
        boards = {f"B{b}": {"bus": "sim", "unit": unit_base + b, "profile": "generic-24"}
                  for b in range(1, BOARDS + 1)}
        cells = {f"{(b - 1) * CELLS_PER_BOARD + 1}-{b * CELLS_PER_BOARD}": f"B{b}:1 M"
                 for b in range(1, BOARDS + 1)}
        timing = {"poll_ms": 100, "debounce_ms": 150, "unlock_confirm_ms": 3000,
                  "door_left_open_s": 120, "door_left_open_repeat_s": 300,
                  "board_backoff_min_ms": 500, "board_backoff_max_ms": 30000}
        extra = H.mqtt_extra(broker, platform_key=pk_hex)
        extra.update(H.custody_extra(kiosk={"code_burst": 10, "code_refill_s": 1}))
        cfg = H.config(sim=sim, boards=boards, cells=cells, timing=timing,
                       log_level="warn", extra=extra)
        cfg["locker"]["id"] = self.id
        cfg["locker"]["state_dir"] = os.path.join(d, "state")
        cfg["control"]["socket"] = os.path.join(d, "ctl.sock")
        self.lk = H.Lockerd(cfg, name=self.id)
        self.kc = None
        self.samples = []          # (kind, t0, t_reply, unit, addr)
        self.errors = []
        self.pickups = queue.Queue()
        self.actions = 0

    def cell_coil(self, cell):
        b = (cell - 1) // CELLS_PER_BOARD + 1
        return self.unit_base + b, (cell - 1) % CELLS_PER_BOARD

    def type_code(self, kind, code):
        t0 = time.monotonic()
        rep = self.kc.request({"op": "code", "code": code}, timeout=10)
        t1 = time.monotonic()
        if rep.get("ok") is not True:
            self.errors.append(f"{kind} code refused: {rep}")
            return
        unit, addr = self.cell_coil(rep["cell"])
        self.samples.append((kind, t0, t1, unit, addr))


def drive(platform, lk, period, stop):
    """One locker's applicants and platform traffic at a steady rate:
    every period s (first one at a random phase) a drop-off or a pickup
    assignment, alternately; pickup codes are typed as they arrive."""
    rnd = random.Random(lk.id)
    nxt = time.monotonic() + rnd.uniform(0, period)
    k = 0
    try:
        lk.kc = H.KioskClient(H.kiosk_path(lk.lk), timeout=10)
        while not stop.is_set():
            try:
                resv, code = lk.pickups.get(timeout=max(0.0, min(0.2, nxt - time.monotonic())))
                lk.type_code("pickup", code)
                continue
            except queue.Empty:
                pass
            if time.monotonic() < nxt:
                continue
            nxt += period
            k += 1
            lk.actions += 1
            if k % 2 == 1:
                r = platform.request(lk.id, "reserve", {"app": f"{lk.id}-D{k}", "size": "M"})
                if r.get("ok") is not True:
                    lk.errors.append(f"reserve refused: {r}")
                    continue
                lk.type_code("dropoff", r["code"])
            else:
                r = platform.request(lk.id, "load", {"app": f"{lk.id}-P{k}", "size": "M",
                                                     "staff": STAFF}, signed=True)
                if r.get("ok") is not True:
                    lk.errors.append(f"load refused: {r}")
    except Exception as e:  # reported with the run
        lk.errors.append(f"driver: {e!r}")


def relay_times(sims):
    """{(sim index, unit, addr): sorted times of relay-on writes}."""
    out = {}
    for si, sim in enumerate(sims):
        for w in sim.writes():
            if w.get("fc") == 5 and w.get("value") == H.WRITE_ON:
                out.setdefault((si, w["unit"], w["addr"]), []).append(w["t"])
    for v in out.values():
        v.sort()
    return out


def ledger_last(lk):
    db = sqlite3.connect(f"file:{lk.db_path}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute("SELECT max(seq) FROM events").fetchone()[0] or 0
    finally:
        db.close()


def run_fleet(n, seconds, period):
    import bisect
    import nacl.pwhash
    import nacl.signing
    H.begin_test(f"fleet-{n}")
    failed = True
    try:
        t_setup = time.monotonic()
        broker = H.Mosquitto(conf=BROKER_CONF)
        key = nacl.signing.SigningKey.generate()
        pk_hex = LC.pubkey_hex(key)
        platform = Platform(broker, key)
        H._register(platform)
        nsims = (n + LOCKERS_PER_SIM - 1) // LOCKERS_PER_SIM
        sims = []
        for s in range(nsims):
            k = min(LOCKERS_PER_SIM, n - s * LOCKERS_PER_SIM)
            units = [(u, "generic-24") for u in range(1, k * BOARDS + 1)]
            sims.append(H.Locksim(boards=units, auto=True, name=f"sim{s}"))
        lockers = []
        for i in range(n):
            s, j = divmod(i, LOCKERS_PER_SIM)
            lk = Locker(i, sims[s], j * BOARDS, broker, pk_hex)
            lk.sim_index = s
            lockers.append(lk)
            platform.pickups[lk.id] = lk.pickups
        pin_hash = nacl.pwhash.argon2id.str(PIN.encode(), opslimit=LC.PIN_OPSLIMIT,
                                            memlimit=LC.PIN_MEMLIMIT).decode()
        for lk in lockers:
            r = platform.request(lk.id, "staff_add", {"staff": STAFF, "name": "Fleet Staff",
                                                      "role": "staff", "pin_hash": pin_hash},
                                 signed=True, timeout=30)
            if r.get("ok") is not True:
                raise H.HarnessError(f"{lk.id}: staff_add -> {r}")
        setup_s = time.monotonic() - t_setup
        # The steady window.
        stop = threading.Event()
        threads = [threading.Thread(target=drive, args=(platform, lk, period, stop), daemon=True)
                   for lk in lockers]
        pids = [lk.lk.proc.pid for lk in lockers]
        others = {"mosquitto": broker.proc.pid,
                  **{f"locksim{s}": sim.proc.pid for s, sim in enumerate(sims)}}
        c0 = [cpu_ticks(p) for p in pids]
        o0 = {k: cpu_ticks(p) for k, p in others.items()}
        m0 = machine_busy()
        py0 = time.process_time()
        with platform.lock:
            platform.counting = True
        t0 = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join(15)
        elapsed = time.monotonic() - t0
        hz = os.sysconf("SC_CLK_TCK")
        cpu = [100.0 * (cpu_ticks(p) - c) / hz / elapsed for p, c in zip(pids, c0)]
        ocpu = {k: round(100.0 * (cpu_ticks(p) - o0[k]) / hz / elapsed, 1)
                for k, p in others.items()}
        m1 = machine_busy()
        py_cpu = 100.0 * (time.process_time() - py0) / elapsed
        rss = [rss_kib(p) for p in pids]
        pss = [pss_kib(p) for p in pids]
        # Pickups assigned near the end may still be loading: let the
        # ledgers settle, then every event must reach the platform.
        time.sleep(6)
        deadline = time.monotonic() + 30
        lost = {}
        while True:
            lost = {}
            for lk in lockers:
                last = ledger_last(lk.lk)
                with platform.lock:
                    have = set(platform.seqs.get(lk.id, ()))
                missing = [s for s in range(1, last + 1) if s not in have]
                if missing:
                    lost[lk.id] = (len(missing), last)
            if not lost or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        relays = relay_times(sims)
        to_relay, to_reply, unmatched = [], [], 0
        kinds = {"dropoff": 0, "pickup": 0}
        for lk in lockers:
            for kind, ts, tr, unit, addr in lk.samples:
                kinds[kind] += 1
                to_reply.append((tr - ts) * 1000)
                times = relays.get((lk.sim_index, unit, addr), [])
                j = bisect.bisect_left(times, ts)
                if j < len(times) and times[j] - ts < 10:
                    to_relay.append((times[j] - ts) * 1000)
                else:
                    unmatched += 1
        errors = [f"{lk.id}: {e}" for lk in lockers for e in lk.errors]
        with platform.lock:
            events_n, dupes, msgs = platform.events_n, platform.dupes, platform.messages_n
            traffic = {"messages_by_topic": {k: {"n": v[0], "bytes": v[1]}
                                             for k, v in platform.by_topic.items()},
                       "events_by_type": dict(platform.by_type),
                       "commands_sent": dict(platform.commands)}
        actions = sum(lk.actions for lk in lockers)
        rec = {
            "bench": "fleet", "lockers": n, "cells": n * BOARDS * CELLS_PER_BOARD,
            "window_s": round(elapsed, 1), "setup_s": round(setup_s, 1),
            "period_s_per_locker": period, "actions": actions,
            "codes_typed": kinds,
            "keypad_to_relay_ms": {"median": round(statistics.median(to_relay), 2),
                                   "p99": round(pct(to_relay, 99), 2),
                                   "max": round(max(to_relay), 2), "n": len(to_relay)}
            if to_relay else None,
            "keypad_to_reply_ms": {"median": round(statistics.median(to_reply), 2),
                                   "p99": round(pct(to_reply, 99), 2), "n": len(to_reply)}
            if to_reply else None,
            "unmatched_relays": unmatched,
            "events_received": events_n, "duplicates": dupes, "messages_received": msgs,
            "events_lost": sum(v[0] for v in lost.values()),
            "traffic": traffic,
            "lockers_with_gaps": sorted(lost)[:10],
            "per_locker_cpu_percent": {"median": round(statistics.median(cpu), 2),
                                       "max": round(max(cpu), 2)},
            "per_locker_rss_kib": {"median": int(statistics.median(rss)), "max": max(rss)},
            "per_locker_pss_kib": {"median": int(statistics.median(pss)), "max": max(pss)},
            "other_cpu_percent": {**ocpu, "python_platform_and_keypads": round(py_cpu, 1)},
            "machine_busy_percent": round(100.0 * (m1[0] - m0[0]) / (m1[1] - m0[1]), 1),
            "errors": errors[:5], "errors_n": len(errors),
        }
        ok = (rec["keypad_to_relay_ms"] is not None and rec["keypad_to_relay_ms"]["p99"] < 100
              and rec["events_lost"] == 0 and not errors and unmatched == 0)
        rec["holds"] = ok
        failed = False
        return rec
    finally:
        H.end_test(failed)
        H.remove_tmp(failed)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--n", default=os.environ.get("BENCH_FLEET_N", "1,32,128,192,256"))
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("BENCH_FLEET_S", "20")))
    ap.add_argument("--period", type=float, default=float(os.environ.get("BENCH_FLEET_PERIOD", "4")),
                    help="seconds between one locker's actions (drop-off / pickup)")
    ap.add_argument("--keep-going", action="store_true",
                    help="run every N even after one misses a goal")
    args = ap.parse_args(argv)
    os.environ["BUILD"] = args.build
    best = None
    t0 = time.monotonic()
    for n in [int(x) for x in args.n.split(",") if x]:
        try:
            rec = run_fleet(n, args.seconds, args.period)
        except H.HarnessError as e:
            # A fleet too large to even set up (a command unanswered, a
            # daemon that did not start) is a size the machine does not hold.
            rec = {"bench": "fleet", "lockers": n, "holds": False,
                   "error": str(e).splitlines()[0][:300]}
        print(json.dumps(rec), flush=True)
        if rec["holds"]:
            best = rec
        elif not args.keep_going:
            break
    out = {"bench": "fleet_max_n", "value": best["lockers"] if best else 0,
           "goal": "keypad p99 < 100 ms (code sent -> relay write), no event lost",
           "tried": args.n, "took_s": round(time.monotonic() - t0, 1)}
    if best:
        out.update({"keypad_to_relay_ms": best["keypad_to_relay_ms"],
                    "per_locker_cpu_percent": best["per_locker_cpu_percent"],
                    "per_locker_rss_kib": best["per_locker_rss_kib"],
                    "per_locker_pss_kib": best["per_locker_pss_kib"],
                    "machine_busy_percent": best["machine_busy_percent"]})
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
