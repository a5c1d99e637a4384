"""The README's first command and the demo, as a newcomer runs them:
`make run` (sim/run.py) starts mosquitto, locksim and lockerd, prints
what to try, the printed commands work, and Ctrl-C leaves nothing
running; `make demo` (sim/demo.py) plays the whole day and verifies the
custody chain. Both on free loopback ports, in the test's temp dir."""

import os
import re
import signal
import subprocess
import time

import harness
from harness import HarnessError, ROOT, build_dir, daemon_env, tmpdir, wait_for

PYTHON = "/usr/bin/python3"


def _env(**extra):
    env = daemon_env()
    env["LOCKERD_FREE_PORTS"] = "1"
    env.update(extra)
    return env


def _ours(marker):
    """Processes whose command line mentions marker (our run dir)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            found.append((int(pid), cmd.strip()))
    return found


def _check_logs(run_dir):
    for name in ("lockerd.out", "locksim.out"):
        harness.check_sanitizers(os.path.join(run_dir, name), name)


def test_make_run_starts_the_stack_and_ctrl_c_stops_it():
    run_dir = os.path.join(tmpdir(), "run")
    out_path = os.path.join(tmpdir(), "run.stdout")
    out = open(out_path, "w")
    p = subprocess.Popen([PYTHON, os.path.join(ROOT, "sim", "run.py"), "--build", build_dir()],
                         cwd=ROOT, env=_env(LOCKERD_RUN_DIR=run_dir), stdout=out,
                         stderr=subprocess.STDOUT)
    out.close()
    try:
        def banner():
            with open(out_path) as f:
                text = f.read()
            if p.poll() is not None:
                raise HarnessError(f"run.py exited {p.returncode}:\n{text}")
            return "Ctrl-C stops everything" in text and text
        text = wait_for(banner, 30, what="make run's banner")
        port = int(re.search(r"mosquitto on 127\.0\.0\.1:(\d+)", text).group(1))
        # The printed commands, as printed (the paths are relative to ROOT).
        ctl = re.search(r"^\s+(sim/lockerctl --port \d+ --key \S+) reserve", text, re.M).group(1)
        kiosk = re.search(r"^\s+(\S+/kiosk -s \S+) code CODE", text, re.M).group(1)
        assert f"--port {port}" in ctl, ctl
        r = subprocess.run([PYTHON] + ctl.split() + ["reserve", "A-RUN-1", "M"], cwd=ROOT,
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        code = re.search(r"drop-off code for application A-RUN-1 is (\d{10})", r.stdout)
        assert code, f"no SMS text with the code: {r.stdout}"
        k = subprocess.run(kiosk.split() + ["-w", "6", "code", code.group(1)], cwd=ROOT,
                           capture_output=True, text=True, timeout=30)
        assert k.returncode == 0 and re.search(r"Cell \d+ is open", k.stdout), k.stdout + k.stderr
        assert "is closed" in k.stdout, \
            f"the automatic person should have closed the door: {k.stdout}"
        st = subprocess.run([PYTHON] + ctl.split() + ["state", "--json"], cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
        assert st.returncode == 0 and '"cells"' in st.stdout, st.stdout + st.stderr
        assert len(_ours(run_dir)) >= 3, _ours(run_dir)
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
        rc = p.wait(timeout=20)
    with open(out_path) as f:
        text = f.read()
    assert rc == 0 and "stopped lockerd, locksim and mosquitto" in text, text[-2000:]
    wait_for(lambda: not _ours(run_dir), 5, what="every process of make run gone")
    _check_logs(run_dir)


def test_make_demo_plays_the_day():
    run_dir = os.path.join(tmpdir(), "demo")
    t0 = time.monotonic()
    r = subprocess.run([PYTHON, os.path.join(ROOT, "sim", "demo.py"), "--build", build_dir()],
                       cwd=ROOT, env=_env(LOCKERD_DEMO_DIR=run_dir), capture_output=True,
                       text=True, timeout=180)
    text = r.stdout + r.stderr
    assert r.returncode == 0, text[-3000:]
    for step in ("SMS to applicant of A-2026-0001", "Cell ", "deposited", "retrieved by clerk1",
                 "Pickup code", "collected", "events, chain verified"):
        assert step in text, f"the demo did not show {step!r}:\n{text[-3000:]}"
    # The platform's saved copy holds the whole chain from seq 1.
    with open(os.path.join(run_dir, "platform-events.jsonl")) as f:
        seqs = [int(re.search(r'"seq":\s*(\d+)', line).group(1)) for line in f if line.strip()]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 20, seqs
    assert not _ours(run_dir), _ours(run_dir)
    _check_logs(run_dir)
    print(f"demo took {time.monotonic() - t0:.1f} s, {len(seqs)} events")
