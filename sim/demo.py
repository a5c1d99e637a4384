#!/usr/bin/env python3
"""make demo: a day at the locker, played through lockerctl and the keypad
client and narrated.

Starts its own stack (sim/run.py's Stack: mosquitto on a free loopback
port, locksim with the automatic person, lockerd on its built-in default)
with fresh state under build/demo/, then:

  the platform reserves a drop-off cell -> the SMS with the code -> the
  applicant types it -> the door opens -> documents in -> door closed ->
  the platform sees "deposited" -> staff log in and retrieve -> staff load
  the certificate -> the pickup SMS -> the applicant collects -> the
  platform sees "collected" and verifies the custody chain of both
  documents.

Every command is printed as it is run, so each step can be repeated by
hand against `make run`. Exit status 0 only if every step happened and
the chain verified.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from run import ROOT, Stack, StackError  # noqa: E402

APP = "A-2026-0001"
STAFF, STAFF_NAME, STAFF_PIN = "clerk1", "Hall clerk", "135790"


class DemoError(Exception):
    pass


def say(text):
    print(f"\n== {text}", flush=True)


def show(argv):
    """The command as a person would type it (paths relative to here)."""
    out = []
    for a in argv:
        if a.startswith(ROOT + os.sep):
            a = os.path.relpath(a)
        if a == "/usr/bin/python3":
            continue
        out.append(a if re.fullmatch(r"[\w@%+=:,./-]+", a) else "'" + a + "'")
    return " ".join(out)


def run(argv, timeout=30):
    print(f"$ {show(argv)}", flush=True)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    for line in (r.stdout + r.stderr).splitlines():
        print(f"  {line}", flush=True)
    if r.returncode != 0:
        raise DemoError(f"{show(argv[:4])}... exited {r.returncode}")
    return r.stdout


class Ledger:
    """The platform's copy of the event stream: what `lockerctl watch
    --save` wrote."""

    def __init__(self, path):
        self.path = path

    def events(self):
        try:
            with open(self.path) as f:
                return [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def wait(self, type_, timeout=20, **match):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events():
                if e.get("type") == type_ and all(e.get(k) == v for k, v in match.items()):
                    return e
            time.sleep(0.1)
        raise DemoError(f"the platform did not see {type_} {match} within {timeout} s")


def day(stack, ledger):
    ctl, kiosk = stack.ctl_argv(), stack.kiosk_argv()

    say(f"1. Application {APP} passed pre-review. The platform reserves a drop-off "
        "cell (size M) and sends the applicant an SMS.")
    out = run(ctl + ["reserve", APP, "M"])
    reply = json.loads(out.splitlines()[0])
    code, cell, resv = reply["code"], reply["cell"], reply["resv"]

    say("2. At the locker, the applicant types the code from the SMS. The cell "
        "springs open; they put the documents in and close the door.")
    run(kiosk + ["-w", "6", "code", code])
    e = ledger.wait("deposited", resv=resv)
    print(f"  platform: event {e['seq']} {e['type']}: application {e['app']}, cell "
          f"{e['cell']}", flush=True)

    say("3. The platform gives the hall clerk a staff account (signed command; "
        "only the PIN's Argon2id hash travels).")
    run(ctl + ["staff-add", STAFF, "--name", STAFF_NAME, "--pin", STAFF_PIN])

    say("4. The clerk logs in at the keypad and empties the drop-off cells.")
    run(kiosk + ["login", STAFF, STAFF_PIN])
    run(kiosk + ["-w", "6", "retrieve"])
    e = ledger.wait("retrieved", resv=resv)
    print(f"  platform: event {e['seq']} {e['type']} by {e.get('staff')}: the documents "
          "are with the hall staff", flush=True)

    say("5. The application is approved. The platform assigns the pickup: a cell "
        "opens, the clerk loads the certificate and closes the door; the pickup "
        "code goes to the applicant by SMS.")
    out = run(ctl + ["load", APP, "S", "--staff", STAFF, "--wait", "--wait-s", "30"])
    m = re.search(r"Pickup code (\d+), cell (\d+)", out)
    if not m:
        raise DemoError("no pickup SMS in lockerctl's output")
    pcode, pcell = m.group(1), int(m.group(2))
    presv = json.loads(out.splitlines()[0])["resv"]

    say("6. The applicant comes back, types the pickup code and takes the "
        "certificate.")
    run(kiosk + ["-w", "6", "code", pcode])
    e = ledger.wait("collected", resv=presv)
    print(f"  platform: event {e['seq']} {e['type']}: application {e['app']}, cell "
          f"{e['cell']}", flush=True)
    return (resv, cell), (presv, pcell)


def main():
    build = os.environ.get("BUILD", os.path.join(ROOT, "build"))
    if len(sys.argv) > 2 and sys.argv[1] == "--build":
        build = os.path.abspath(sys.argv[2])
    run_dir = os.environ.get("LOCKERD_DEMO_DIR") or os.path.join(build, "demo")
    shutil.rmtree(run_dir, ignore_errors=True)
    stack = Stack(build, run_dir=run_dir, quiet=True)
    saved = os.path.join(run_dir, "platform-events.jsonl")
    ledger = Ledger(saved)
    watch = None
    started = {}
    rc = 1

    def interrupted(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        print("Starting mosquitto, locksim (automatic person on) and lockerd under "
              f"{os.path.relpath(run_dir)} ...", flush=True)
        def platform_watches(st):
            # The platform subscribes before the locker's first event
            # and checks every signature and link as events arrive.
            key = started["key"] = st.locker_key()
            argv = st.ctl_argv() + ["watch", "--verify", "--locker-key", key,
                                    "--save", saved, "--client-id", "demo-platform"]
            log_path = os.path.join(run_dir, "watch.log")
            print(f"$ {show(argv)} > {os.path.relpath(log_path)} &", flush=True)
            with open(log_path, "w") as log:
                started["watch"] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with open(log_path) as f:
                    if "watching " in f.read():
                        return
                if started["watch"].poll() is not None:
                    break
                time.sleep(0.05)
            raise DemoError("lockerctl watch did not subscribe")

        stack.start(on_broker=platform_watches)
        key, watch = started["key"], started["watch"]
        (resv, cell), (presv, pcell) = day(stack, ledger)

        say("7. The platform verifies the locker's signed event chain from the "
            "first event, and reads the custody of both documents from it.")
        time.sleep(0.5)
        watch.send_signal(signal.SIGINT)
        watch.wait(timeout=10)
        watch = None
        run(stack.ctl_argv() + ["verify", saved, "--locker-key", key])
        events = ledger.events()
        for r, c, what in ((resv, cell, "the documents (drop-off)"),
                           (presv, pcell, "the certificate (pickup)")):
            chain = [e for e in events if e.get("resv") == r]
            print(f"  {what}, reservation {r}, cell {c}:", flush=True)
            for e in chain:
                who = f" by {e['staff']}" if e.get("staff") and e["type"] in (
                    "load_started", "retrieved", "take_back", "returned") else ""
                print(f"    seq {e['seq']:>3}  {e['time']}  {e['type']}{who}", flush=True)
        print(f"\nThe day is done: {len(events)} events, every one signed by the locker "
              "and chained to the one before.", flush=True)
        rc = 0
    except (DemoError, StackError, subprocess.TimeoutExpired) as e:
        watch = watch or started.get("watch")
        print(f"\ndemo: FAILED: {e}", file=sys.stderr)
        for name in ("lockerd.out", "locksim.out", "watch.log"):
            p = os.path.join(run_dir, name)
            if os.path.exists(p):
                with open(p, errors="replace") as f:
                    tail = f.read().splitlines()[-15:]
                print(f"--- {os.path.relpath(p)} (last lines)\n" + "\n".join(tail),
                      file=sys.stderr)
    except KeyboardInterrupt:
        print("\ndemo: interrupted", file=sys.stderr)
        rc = 130
    finally:
        if watch is not None and watch.poll() is None:
            watch.send_signal(signal.SIGINT)
            try:
                watch.wait(timeout=5)
            except subprocess.TimeoutExpired:
                watch.kill()
        stack.stop()
    print("Stopped lockerd, locksim and mosquitto.", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
