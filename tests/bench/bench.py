#!/usr/bin/env python3
"""make bench: lockerd's figures, one JSON line each, on this machine.

Every figure is a median (and p99) over repeated samples taken in the same
run, so that machine noise on a shared 2-core box hits both sides of a
comparison alike. Figures:

  unlock_latency_ms     keypad/operator request -> relay write seen by
                        locksim (CLOCK_MONOTONIC is system-wide, so the
                        request time and locksim's log compare directly);
                        includes the durable SQLite commit (fsync).
  modbus_write_oneway_ms / modbus_write_rtt_ms
                        the bare libmodbus FC05 write (build/mbping) to a
                        locksim board: start -> seen by locksim, and the
                        full round trip. lockerd's overhead is the
                        difference from the first of these.
  idle_cpu_percent      lockerd's CPU share (user+system, all threads) while
                        polling 4 boards x 24 cells at 10 Hz, as the median
                        of 10 s windows over BENCH_IDLE_S (default 60 s).
  idle_wakeups_per_s    context switches per second over the same run.
  idle_rss_kib          resident memory at the end of the idle run.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))
import harness as H  # noqa: E402


def pct(values, p):
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(p / 100.0 * (len(s) - 1)))))
    return s[k]


def emit(name, values=None, unit="ms", **extra):
    rec = {"bench": name}
    if values is not None:
        rec.update({"median": round(statistics.median(values), 3),
                    "p99": round(pct(values, 99), 3),
                    "min": round(min(values), 3), "n": len(values), "unit": unit})
    rec.update(extra)
    print(json.dumps(rec), flush=True)
    return rec


def bench_bare_write(count):
    H.begin_test("bench-bare")
    try:
        sim = H.Locksim(boards=[(1, "generic-16")], name="bare")
        out = subprocess.run([H.binary("mbping"), "--tcp", f"127.0.0.1:{sim.port}",
                              "1", "0", str(count)], capture_output=True, text=True,
                             timeout=120, check=True).stdout
        pings = [json.loads(line) for line in out.splitlines()]
        writes = sim.writes()
        # The first writes seen by locksim are mbping's, in order.
        writes = [w for w in writes if w["fc"] == 5][:len(pings)]
        oneway = [(w["t"] - p["start"]) * 1000 for p, w in zip(pings, writes)]
        rtt = [(p["end"] - p["start"]) * 1000 for p in pings]
        return oneway, rtt
    finally:
        H.end_test(False)


def bench_unlock(rounds):
    H.begin_test("bench-unlock")
    try:
        sim = H.Locksim(boards=[(1, "generic-16")], name="sim")
        cfg = H.config(sim=sim, boards={"A": {"bus": "sim", "unit": 1,
                                              "profile": "generic-16"}},
                       cells={"1-16": "A:1 S"}, log_level="warn")
        lk = H.Lockerd(cfg)
        lat = []
        for _ in range(rounds):
            for cell in range(1, 17):
                after = sim.last_write_n()
                t0 = time.monotonic()
                lk.ctl_ok({"op": "open", "cell": cell})
                w = sim.wait_write(H.is_write(1, cell - 1, H.WRITE_ON), after=after)
                lat.append((w["t"] - t0) * 1000)
            H.wait_for(lambda: all(c["door"] == "open" for c in lk.state()["cells"]),
                       10, what="all doors open")
            for cell in range(1, 17):
                sim.cmd(f"close 1 {cell}")
            H.wait_for(lambda: all(c["door"] == "closed" for c in lk.state()["cells"]),
                       10, what="all doors closed")
        return lat
    finally:
        H.end_test(False)


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


def proc_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def bench_idle(seconds, window=10):
    H.begin_test("bench-idle")
    try:
        units = [(u, "generic-24") for u in (1, 2, 3, 4)]
        sim = H.Locksim(boards=units, name="sim")
        boards = {f"B{u}": {"bus": "sim", "unit": u, "profile": "generic-24"}
                  for u, _ in units}
        cells = {f"{(u - 1) * 24 + 1}-{u * 24}": f"B{u}:1 M" for u, _ in units}
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
        shares = []
        while time.monotonic() - t_start < seconds - 0.01:
            c0, t0 = proc_cpu_ticks(pid), time.monotonic()
            time.sleep(min(window, seconds - (t0 - t_start)))
            c1, t1 = proc_cpu_ticks(pid), time.monotonic()
            shares.append(100.0 * (c1 - c0) / hz / (t1 - t0))
        elapsed = time.monotonic() - t_start
        wakeups = (proc_switches(pid) - sw0) / elapsed
        reqs = (sum(b["requests"] for b in sim.state()["boards"]) - req0) / elapsed
        rss = proc_rss_kib(pid)
        return shares, wakeups, reqs, rss, elapsed
    finally:
        H.end_test(False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", "8")))
    ap.add_argument("--idle-seconds", type=int,
                    default=int(os.environ.get("BENCH_IDLE_S", "60")))
    args = ap.parse_args()
    os.environ["BUILD"] = args.build
    oneway, rtt = bench_bare_write(200)
    lat = bench_unlock(args.rounds)
    bare = emit("modbus_write_oneway_ms", oneway,
                what="bare libmodbus FC05: call -> write seen by locksim (TCP)")
    emit("modbus_write_rtt_ms", rtt, what="bare libmodbus FC05 round trip (TCP)")
    u = emit("unlock_latency_ms", lat,
             what="operator request -> relay write seen by locksim (TCP), "
                  "incl. durable commit")
    emit("unlock_overhead_ms", None,
         median=round(u["median"] - bare["median"], 3),
         p99=round(u["p99"] - bare["p99"], 3), unit="ms",
         what="unlock latency minus the bare one-way write, same run")
    shares, wakeups, reqs, rss, elapsed = bench_idle(args.idle_seconds)
    emit("idle_cpu_percent", shares, unit="% of one core",
         what=f"4 boards x 24 cells polled at 10 Hz, {len(shares)} windows "
              f"over {elapsed:.0f} s", goal="< 1")
    emit("idle_wakeups_per_s", None, value=round(wakeups, 1),
         board_requests_per_s=round(reqs, 1))
    emit("idle_rss_kib", None, value=rss)
    size = os.path.getsize(os.path.join(H.build_dir(), "lockerd"))
    emit("binary_size_bytes", None, value=size)
    bench_codes(5)


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
