"""Start-up, stop, restart, configuration errors and the database."""

import os
import re
import sqlite3

import harness
from harness import Lockerd, config, open_cell, render, run_lockerd, start_pair


def test_restart_reconciles_open_door():
    sim, lk = start_pair()
    first = lk.find_events("started")[0]
    harness.wait_for(lambda: lk.cell(9)["door"] == "closed", 3, what="cell 9 read closed")
    before = lk.events()
    seq_stop = before[-1]["seq"]
    lk.stop()

    sim.cmd("force 1 9")  # someone opens cell 9 while the controller is down
    lk.start()
    again = lk.wait_event("started", after=seq_stop, timeout=5)
    if "boot" in first and "boot" in again:
        assert again["boot"] != first["boot"], (first, again)
    rec = lk.wait_event("reconciled", cell=9, after=seq_stop, timeout=5)
    assert rec.get("door") == "open" and rec.get("stored") == "closed", rec
    alarm = lk.wait_event("forced_open", cell=9, after=seq_stop, timeout=5)
    assert alarm.get("alarm") is True, alarm
    assert lk.cell(9)["door"] == "open"
    others = [e for e in lk.events(seq_stop) if e["type"] in ("reconciled", "forced_open")
              and e.get("cell") != 9]
    assert not others, f"reconciled or alarmed cells that did not change: {others}"
    # Events of the first run survived and the sequence goes on without a gap.
    allev = lk.events()
    assert allev[:len(before)] == before, "events of the first run changed across a restart"
    harness.assert_events_well_formed(allev)
    lk.stop()
    sim.stop()


def _insert_after(text, header, line):
    out = []
    for l in text.splitlines():
        out.append(l)
        if l.strip() == header:
            out.append(line)
    return "\n".join(out) + "\n"


def _check_reports(path, text, needle, accept_lines=None, reason_words=()):
    with open(path, "w") as f:
        f.write(text)
    n = harness.line_of(text, needle)
    lines = accept_lines or [n]
    r = run_lockerd(["--check-config", path])
    msg = r.stderr.strip()
    print(f"  {needle!r} (line {n}): exit {r.returncode}: {msg}")
    assert r.returncode != 0, f"--check-config accepted a config with {needle!r}"
    m = None
    for ln in lines:
        m = re.search(re.escape(f"{path}:{ln}:") + r"\s*(.*)", r.stderr)
        if m:
            break
    assert m, f"stderr does not name {path}:{lines[0]}: for {needle!r}: {r.stderr!r}"
    reason = m.group(1).strip()
    assert len(reason) >= 5, f"no reason after {path}:{ln}: {r.stderr!r}"
    if reason_words:
        assert any(w.lower() in reason.lower() for w in reason_words), \
            f"reason {reason!r} names none of {reason_words}"


def test_bad_config_reports_file_line():
    d = harness.tmpdir()
    cfg = config(port=harness.free_port())
    good = render(cfg)
    state_dir = cfg["locker"]["state_dir"]
    path = os.path.join(d, "bad.conf")

    gpath = os.path.join(d, "good.conf")
    with open(gpath, "w") as f:
        f.write(good)
    r = run_lockerd(["--check-config", gpath])
    assert r.returncode == 0, f"good config refused: {r.stderr}"
    assert not os.path.exists(state_dir), "--check-config created the state dir"

    _check_reports(path, good.replace("poll_ms = 20", "poll_ms = fast"), "poll_ms = fast",
                   reason_words=("poll_ms", "fast"))
    _check_reports(path, good.replace("door_left_open_s = 10", "door_left_open_s = 4"),
                   "door_left_open_s = 4", reason_words=("door_left_open_s", "5"))
    _check_reports(path, _insert_after(good, "[timing]", "colour = blue"), "colour = blue",
                   reason_words=("colour",))
    t = good + "\n[frobnicate]\nwidth = 3\n"
    hdr = harness.line_of(t, "[frobnicate]")
    _check_reports(path, t, "[frobnicate]", accept_lines=[hdr, hdr + 1],
                   reason_words=("frobnicate",))
    _check_reports(path, good + "25 = C:1 S\n", "25 = C:1 S", reason_words=("C", "board"))
    _check_reports(path, good + "25 = A:17 S\n", "25 = A:17 S", reason_words=("channel", "17"))
    _check_reports(path, good + "3 = A:3 S\n", "3 = A:3 S", reason_words=("3", "duplicate"))
    _check_reports(path, good.replace("1-16 = A:1 S", "1-16 = A:1 XL"), "1-16 = A:1 XL",
                   reason_words=("size", "XL"))

    r = run_lockerd(["--help"])
    assert r.returncode == 0, r
    assert "-c" in r.stdout + r.stderr, f"--help does not mention -c: {r.stdout!r}"
    r = run_lockerd(["--version"])
    assert r.returncode == 0, r
    with open(os.path.join(harness.ROOT, "Makefile")) as f:
        version = re.search(r"^VERSION\s*:?=\s*(\S+)", f.read(), re.M).group(1)
    assert version in r.stdout + r.stderr, f"--version does not print {version}: {r.stdout!r}"

    # Running with a bad config starts nothing.
    bad = good.replace("poll_ms = 20", "poll_ms = fast")
    lk = Lockerd(bad, start=False)
    rc, err = lk.start_expect_failure()
    line = harness.line_of(bad, "poll_ms = fast")
    assert rc != 0, err
    assert f"{lk.config_path}:{line}:" in err, err
    assert not os.path.exists(state_dir), "a bad config still created the state dir"
    assert not os.path.exists(cfg["control"]["socket"]), "a bad config opened the control socket"


def test_sigterm_clean_stop():
    sim, lk = start_pair()
    seq0 = lk.last_seq()
    open_cell(lk, 1)
    lk.wait_event("door_opened", cell=1, after=seq0, timeout=3)
    sim.cmd("close 1 1")
    lk.wait_event("door_closed", cell=1, after=seq0, timeout=3)
    before = lk.events()
    took = lk.stop(timeout=2)
    print(f"SIGTERM -> exit 0 in {took * 1000:.0f} ms")
    assert took <= 2.0
    con = sqlite3.connect(lk.db_path)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        con.close()
    lk.start()
    after = lk.events()
    assert after[:len(before)] == before, "events changed across a clean restart"
    lk.stop()
    sim.stop()


def test_kill9_keeps_events():
    sim, lk = start_pair()
    seq0 = lk.last_seq()
    open_cell(lk, 6)
    lk.wait_event("door_opened", cell=6, after=seq0, timeout=3)
    before = lk.events()
    lk.kill9()
    con = sqlite3.connect(lk.db_path)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        con.close()
    lk.start()
    lk.wait_event("started", after=before[-1]["seq"], timeout=5)
    after = lk.events()
    assert after[:len(before)] == before, "events lost or changed by kill -9"
    harness.assert_events_well_formed(after)
    # The door was open before the kill and still is: no alarm for it.
    assert lk.cell(6)["door"] == "open"
    assert not lk.find_events("forced_open", cell=6), lk.events(before[-1]["seq"])
    lk.stop()
    sim.stop()


def test_migrations_newer_db_refused():
    sim, lk = start_pair()
    lk.stop()
    con = sqlite3.connect(lk.db_path)
    try:
        ours = con.execute("PRAGMA user_version").fetchone()[0]
        assert ours >= 1, f"lockerd left user_version {ours}"
        con.execute("PRAGMA user_version = 999")
        con.commit()
    finally:
        con.close()
    rc, err = lk.start_expect_failure()
    print(f"exit {rc}:\n{err.rstrip()}")
    assert rc != 0, "lockerd started on a database from a newer version"
    assert re.search(r"\b999\b", err) and re.search(rf"\b{ours}\b", err), \
        f"message does not name both versions (999 and {ours}): {err!r}"
    con = sqlite3.connect(lk.db_path)
    try:
        assert con.execute("PRAGMA user_version").fetchone()[0] == 999, "lockerd changed the db"
    finally:
        con.close()
    sim.stop()
