"""Load (issue #6): 100 platform commands a second over MQTT for LOAD_S
seconds (30 in `make test`, 300 in `make soak`) while people use the
keypad: applicants type the drop-off codes the platform's reservations
made, the automatic person of locksim closes the doors, staff log in and
empty the cells now and then.

Shows: every command answered (none refused busy: 100 a second is half the
rate limit), every ledger event on MQTT gap-free, the keypad's latency
p99, lockerd's resident memory at the start and the end, and no growth in
open file descriptors. Leaks are for `make check` (LeakSanitizer), which
runs this test too.

The same load again on a slow disk (every fsync 8 ms longer, as on an SD
card or cheap eMMC; build/libslowsync.so): the command log writes a loop
turn's replies in one durable transaction and a command's start row
without a flush of its own (store.h), so the locker keeps up; with two
flushes a command it could not (100 x 2 x 8 ms is 1.6 s of flushing a
second), and CI once saw the keypad wait 1.7 s."""

import json
import os
import queue
import threading
import time

import harness
from harness import wait_for

SOAK = os.environ.get("SOAK") == "1"
LOAD_S = float(os.environ.get("LOAD_S") or (300 if SOAK else 30))
RATE = 100
STAFF, PIN = "loader", "135790"
SLOW_SYNC_MS = 8


def run_load(seconds, lockerd_env=None, label="load"):
    """RATE commands a second for seconds, with people at the keypad;
    asserts what the module's docstring says. Returns lockerd."""
    broker, plat, sim, lk = harness.start_platform_stack(
        broker_conf="set_tcp_nodelay true\n", sim_kwargs={"auto": True},
        lockerd_env=lockerd_env)
    harness.add_staff(lk, STAFF, PIN)
    pid = lk.proc.pid

    stop = threading.Event()
    codes = queue.Queue()
    lat, errors = [], []
    counts = {"typed_ok": 0, "typed_refused": 0, "retrieve_runs": 0, "status": 0}
    lock = threading.Lock()

    def timed(kc, req):
        t = time.monotonic()
        r = kc.request(req, timeout=10)
        with lock:
            lat.append((time.monotonic() - t) * 1000)
        return r

    def applicant():
        kc = harness.kiosk(lk)
        while not stop.is_set():
            try:
                code = codes.get(timeout=0.1)
            except queue.Empty:
                # Someone reads the screen meanwhile.
                r = timed(kc, {"op": "status"})
                with lock:
                    counts["status"] += 1
                if r.get("ok") is not True:
                    errors.append(f"status -> {r}")
                continue
            r = timed(kc, {"op": "code", "code": code})
            with lock:
                counts["typed_ok" if r.get("ok") else "typed_refused"] += 1

    def staff():
        kc = harness.kiosk(lk)
        while not stop.wait(6):
            r = timed(kc, {"op": "login", "staff": STAFF, "pin": PIN})
            if r.get("ok") is not True:
                errors.append(f"login -> {r}")
                continue
            r = timed(kc, {"op": "retrieve"})
            if r.get("ok"):
                with lock:
                    counts["retrieve_runs"] += 1
                # The automatic person closes each door; the next opens.
                stop.wait(4)
            timed(kc, {"op": "logout"})

    threads = [threading.Thread(target=applicant), threading.Thread(target=staff)]
    for t in threads:
        t.start()

    sent, kinds = [], {}
    t0 = time.monotonic()
    rss0 = fds0 = None
    n = int(RATE * seconds)
    for i in range(n):
        due = t0 + i / RATE
        d = due - time.monotonic()
        if d > 0:
            time.sleep(d)
        if rss0 is None and time.monotonic() - t0 >= 3:
            rss0, fds0 = harness.rss_kib(pid), harness.open_fds(pid)     # after the warm-up
        rid = f"load-{i}"
        k = i % 50
        exp = int(time.time() * 1000) + 60000
        if k == 0:
            c = harness.command("reserve", rid, exp, app=f"L-{i}",
                                size="S" if i % 100 else "M")
        elif k % 5 == 0:
            c = harness.command("resv", rid, exp, resv=max(1, i // 50))
        else:
            c = harness.command("ping" if k % 2 else "state", rid, exp)
        kinds[rid] = c["op"]
        plat.c.publish(f"{plat.prefix}/cmd", json.dumps(c), qos=1)
        sent.append(rid)
        if k == 25:
            # Codes of the reservations answered so far go to applicants.
            for b, _ in plat.on("reply"):
                if isinstance(b, dict) and b.get("code") and b.get("request_id") in kinds and \
                        not b.get("_queued"):
                    b["_queued"] = True
                    codes.put(b["code"])
    took = time.monotonic() - t0

    def replies():
        return {b["request_id"]: b for b, _ in plat.on("reply")
                if isinstance(b, dict) and str(b.get("request_id", "")).startswith("load-")}
    wait_for(lambda: len(replies()) >= len(sent), 30, interval=0.2,
             what=f"a reply to each of the {len(sent)} commands")
    stop.set()
    for t in threads:
        t.join(timeout=30)
    rss1, fds1 = harness.rss_kib(pid), harness.open_fds(pid)
    got = replies()
    busy = [r for r in got.values() if r.get("error") == "busy"]
    failed = [r for r in got.values() if r.get("ok") is not True and
              not (kinds[r["request_id"]] in ("reserve", "resv") and r.get("error") == "refused")]
    reserved = sum(1 for r in got.values() if kinds[r["request_id"]] == "reserve" and r.get("ok"))
    last = lk.last_seq()
    evs = plat.wait_events(last, timeout=30)
    seqs = sorted({e["seq"] for e in evs})
    print(f"{label}: {len(sent)} commands in {took:.1f} s ({len(sent) / took:.0f}/s), "
          f"{len(got)} replies, {len(busy)} busy, {reserved} reservations; keypad "
          f"{len(lat)} requests p50 {harness.percentile(lat, 0.5):.1f} ms p99 {harness.percentile(lat, 0.99):.1f} ms "
          f"max {max(lat):.1f} ms; {counts}; RSS {rss0} -> {rss1} KiB; fds {fds0} -> {fds1}; "
          f"events 1..{last} all on MQTT")
    assert not errors, errors[:3]
    assert len(got) == len(sent), f"{len(sent) - len(got)} commands unanswered"
    assert not busy, f"{len(busy)} commands refused busy at {RATE}/s: {busy[:2]}"
    assert not failed, failed[:3]
    assert seqs == list(range(1, last + 1)), "events missing on MQTT"
    assert counts["typed_ok"] >= reserved // 2, \
        f"applicants used {counts['typed_ok']} of {reserved} codes"
    assert counts["retrieve_runs"] >= 1
    assert fds1 <= fds0 + 1, f"open files grew from {fds0} to {fds1}"
    san = harness.sanitized()
    # Plain build: the database grows by every command's stored reply, so
    # SQLite's page cache fills towards its bound (cache_size, 512 KiB)
    # during the run, and the allocator keeps what it has used; beyond
    # that, growth would be a leak.
    if san:
        print(harness.SAN_RSS_NOTE)
    else:
        assert rss1 - rss0 < 3072, f"RSS grew from {rss0} to {rss1} KiB"
    # A stall detector, not a speed goal (that is make bench's): the figure
    # is printed above. This VM's host steals CPU (a plain-build run saw
    # p99 301 ms), and ASan is several times slower still.
    assert harness.percentile(lat, 0.99) < (5000 if san else 1000), \
        f"keypad p99 {harness.percentile(lat, 0.99):.1f} ms under load"
    harness.verify_ledger(lk)
    return lk


def test_load_100_commands_a_second():
    run_load(LOAD_S)


test_load_100_commands_a_second.timeout = LOAD_S + 120


def test_load_on_a_slow_disk():
    count = os.path.join(harness.tmpdir(), "syncs")
    lib = os.path.abspath(os.path.join(harness.build_dir(), "libslowsync.so"))
    env = {"LD_PRELOAD": lib, "SLOWSYNC_MS": str(SLOW_SYNC_MS), "SLOWSYNC_COUNT": count}
    if harness.sanitized():
        # ASan wants its runtime first; the shim only wraps two calls.
        env["ASAN_OPTIONS"] = harness.SAN_ENV["ASAN_OPTIONS"] + ":verify_asan_link_order=0"
    seconds = min(LOAD_S, 15)
    lk = run_load(seconds, env, label=f"load on a {SLOW_SYNC_MS} ms-fsync disk")
    lk.stop()
    with open(count) as f:
        syncs = int(f.read())
    # The flushes are lockerd's whole life here: start-up, the keypad's
    # and the platform's work, and the stop. A loop that keeps up flushes
    # each turn's one or two commands together; one that falls behind
    # takes up to 16 a flush. Two a command (the start row and the reply
    # row each flushed) is what could not keep up.
    print(f"{syncs} flushes for {int(RATE * seconds)} commands "
          f"({syncs / (RATE * seconds):.2f} a command, with the keypad's and the events')")
    assert syncs < 1.5 * RATE * seconds, f"{syncs} flushes: the command log flushes each row"


test_load_on_a_slow_disk.timeout = 15 + 120
