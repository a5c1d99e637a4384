"""Custody flows at the keypad: drop-off, staff retrieval, staff loading and
pickup, cancel, re-issue, QR credentials, a jammed door, a crash between
the commit of a code and the relay pulse, edited database rows, where the
plain codes rest, and the signed ledger.

Each test checks three things: what the keypad was told (replies and
notices, proto/kiosk.md), what the lock boards saw on Modbus (the relay of
the right cell, and no relay at all for a refused attempt), and the ledger.
"""

import json
import os
import sqlite3
import time

import harness
from harness import (add_staff, assert_no_unlock, assert_refused, close_door, reserve,
                     start_custody, unlock_write_pred, unlocked_cells, verify_ledger)

PIN = "246810"

# Cells of all three sizes on board A (channel = cell), M on board B too.
MIXED_CELLS = {"1-4": "A:1 S", "5-8": "A:5 M", "9-16": "A:9 L", "17-24": "B:1 M"}


def _resv_events(lk, resv, after=0):
    return [e for e in lk.events(after) if e.get("resv") == resv]


def _types(events):
    return [e["type"] for e in events]


def _check_resv_event(e, resv, kind, app, cell, state=None):
    assert e.get("resv") == resv and e.get("kind") == kind and e.get("app") == app \
        and e.get("cell") == cell, f"event {e['type']} does not name resv {resv} " \
        f"({kind}, {app}, cell {cell}): {e}"
    if state is not None:
        assert e.get("state") == state, f"{e['type']}: state {e.get('state')!r}, " \
            f"expected {state!r}: {e}"
    assert isinstance(e.get("prev"), str) and isinstance(e.get("sig"), str), \
        f"event without prev/sig: {e}"


def _open_with(sim, lk, kc, req, cell, purpose, reason):
    """Sends a code or scan request that must open `cell`; checks the reply,
    the relay write of that cell only, the unlock and door_opened events and
    the "open" notice. Returns (reply, seq before)."""
    seq0, n0, m0 = lk.last_seq(), sim.last_write_n(), kc.mark()
    rep = kc.request(req)
    assert rep.get("ok") is True, f"{req} -> {rep}"
    assert rep.get("cell") == cell and rep.get("purpose") == purpose, \
        f"{req} -> {rep}; expected cell {cell}, purpose {purpose}"
    assert str(cell) in rep.get("show", ""), f"screen text does not name cell {cell}: {rep}"
    sim.wait_write(unlock_write_pred(cell), after=n0, what=f"relay of cell {cell}")
    unlock = lk.wait_event("unlock", cell=cell, after=seq0)
    assert unlock.get("reason") == reason, f"unlock reason {unlock.get('reason')!r}, " \
        f"expected {reason!r}: {unlock}"
    assert unlock.get("attempt") == 1, f"first unlock event is a retry: {unlock}"
    lk.wait_event("door_opened", cell=cell, after=seq0, timeout=3, expected=True)
    kc.wait_notice("open", cell=cell, since=m0)
    others = [c for c, _ in unlocked_cells(sim, n0) if c != cell]
    assert not others, f"opening cell {cell} also drove the relays of cells {others}"
    return rep, seq0


def _close(sim, lk, kc, cell, after):
    m0 = kc.mark()
    close_door(sim, cell)
    lk.wait_event("door_closed", cell=cell, after=after, timeout=3)
    kc.wait_notice("closed", cell=cell, since=m0)


def _dropoff(sim, lk, kc, r):
    """The applicant of reservation r drops off: code, door, close."""
    _, seq0 = _open_with(sim, lk, kc, {"op": "code", "code": r["code"]}, r["cell"], "dropoff",
                         "dropoff")
    _close(sim, lk, kc, r["cell"], seq0)
    return lk.wait_event("deposited", cell=r["cell"], after=seq0, resv=r["resv"])


def _login(sim, lk, kc, staff="alice", pin=PIN, name="Alice A"):
    add_staff(lk, staff, pin, name=name)
    rep = kc.login(staff, pin)
    assert rep.get("ok") is True and rep.get("staff") == staff and rep.get("name") == name \
        and rep.get("role") == "staff", f"login {staff} -> {rep}"
    return rep


def _db_rows(path, sql, args=()):
    con = sqlite3.connect(path)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


# ---------------------------------------------------------------------------


def test_dropoff_code_opens_once():
    sim, lk, kc = start_custody()
    r = reserve(lk, "A-2026-000001")
    assert r["cell"] == 1, f"the first S reservation went to cell {r['cell']}: {r}"
    ev = lk.find_events("dropoff_reserved", resv=r["resv"])
    assert len(ev) == 1, ev
    _check_resv_event(ev[0], r["resv"], "dropoff", "A-2026-000001", 1, "reserved")
    issued = lk.find_events("code_issued", resv=r["resv"])
    assert len(issued) == 1, issued
    assert r["code"] not in json.dumps(lk.events()), "the plain code is in the ledger"

    dep = _dropoff(sim, lk, kc, r)
    _check_resv_event(dep, r["resv"], "dropoff", "A-2026-000001", 1, "deposited")
    types = _types(_resv_events(lk, r["resv"]))
    assert types == ["dropoff_reserved", "code_issued", "code_used", "deposited"], types
    used = lk.find_events("code_used", resv=r["resv"])[0]
    _check_resv_event(used, r["resv"], "dropoff", "A-2026-000001", 1, "opening")
    unlock = lk.find_events("unlock", cell=1)
    assert len(unlock) == 1 and unlock[0]["seq"] > used["seq"], (used, unlock)
    st = lk.ctl({"op": "resv", "resv": r["resv"]})
    assert st.get("ok") is True and st.get("state") == "deposited", st

    # The same code again: used, and no relay moves.
    rep = assert_refused(sim, lk, kc, {"op": "code", "code": r["code"]}, "used")
    print(f"second use of the code: {rep}")
    assert len(lk.find_events("unlock", cell=1)) == 1
    harness.assert_events_well_formed(lk.events())
    lk.stop()
    sim.stop()


def test_staff_retrieval_run():
    sim, lk, kc = start_custody()
    r1 = reserve(lk, "A-1")
    r2 = reserve(lk, "A-2")
    assert (r1["cell"], r2["cell"]) == (1, 2), (r1, r2)
    _dropoff(sim, lk, kc, r1)
    _dropoff(sim, lk, kc, r2)

    _login(sim, lk, kc)
    seq0, n0, m0 = lk.last_seq(), sim.last_write_n(), kc.mark()
    rep = kc.request({"op": "retrieve"})
    assert rep.get("ok") is True and rep.get("cell") == 1 and rep.get("remaining") == 1, \
        f"retrieve -> {rep}"
    sim.wait_write(unlock_write_pred(1), after=n0, what="relay of cell 1")
    u = lk.wait_event("unlock", cell=1, after=seq0)
    assert u.get("reason") == "staff_retrieve", u
    lk.wait_event("door_opened", cell=1, after=seq0, timeout=3, expected=True)
    kc.wait_notice("open", cell=1, since=m0)
    assert [c for c, _ in unlocked_cells(sim, n0)] == [1], unlocked_cells(sim, n0)

    # Closing cell 1 opens cell 2, announced on the screen.
    n1, m1 = sim.last_write_n(), kc.mark()
    close_door(sim, 1)
    ret1 = lk.wait_event("retrieved", cell=1, after=seq0, resv=r1["resv"])
    _check_resv_event(ret1, r1["resv"], "dropoff", "A-1", 1, "retrieved")
    assert ret1.get("staff") == "alice", ret1
    info = kc.wait_notice("info", cell=2, since=m1)
    assert "Cell 2" in info["show"], info
    sim.wait_write(unlock_write_pred(2), after=n1, what="relay of cell 2 after cell 1 closed")
    u2 = lk.wait_event("unlock", cell=2, after=ret1["seq"])
    assert u2.get("reason") == "staff_retrieve", u2
    lk.wait_event("door_opened", cell=2, after=ret1["seq"], timeout=3, expected=True)
    kc.wait_notice("open", cell=2, since=m1)

    m2 = kc.mark()
    close_door(sim, 2)
    ret2 = lk.wait_event("retrieved", cell=2, after=ret1["seq"], resv=r2["resv"])
    assert ret2.get("staff") == "alice", ret2
    done = kc.wait_notice("info", since=m2, contains="All drop-offs are retrieved.")
    print(f"end of the run: {done}")
    assert_no_unlock(sim, sim.last_write_n(), 0.3, "the end of the retrieval run")
    assert [c for c, _ in unlocked_cells(sim, n0)] == [1, 2], unlocked_cells(sim, n0)
    for r in (r1, r2):
        rr = lk.ctl({"op": "resv", "resv": r["resv"]})
        assert rr.get("ok") is False, f"a retrieved reservation is still active: {rr}"
    # Nothing left.
    rep = assert_refused(sim, lk, kc, {"op": "retrieve"}, "nothing", settle=0.2)
    lk.stop()
    sim.stop()


def test_staff_load_then_pickup():
    sim, lk, kc = start_custody(cells=MIXED_CELLS)
    _login(sim, lk, kc)
    seq0, n0, m0 = lk.last_seq(), sim.last_write_n(), kc.mark()
    rep = kc.request({"op": "load", "size": "M", "app": "A-9"})
    assert rep.get("ok") is True and rep.get("cell") == 5 and isinstance(rep.get("resv"), int), \
        f"load M -> {rep} (expected the smallest free M cell, 5)"
    resv = rep["resv"]
    sim.wait_write(unlock_write_pred(5), after=n0, what="relay of cell 5")
    u = lk.wait_event("unlock", cell=5, after=seq0)
    assert u.get("reason") == "staff_load", u
    lk.wait_event("door_opened", cell=5, after=seq0, timeout=3, expected=True)
    kc.wait_notice("open", cell=5, since=m0)
    started = lk.find_events("load_started", resv=resv)
    assert len(started) == 1 and started[0].get("staff") == "alice", started
    _check_resv_event(started[0], resv, "pickup", "A-9", 5, "loading")

    _close(sim, lk, kc, 5, seq0)
    ready = lk.wait_event("pickup_ready", cell=5, after=seq0, resv=resv)
    _check_resv_event(ready, resv, "pickup", "A-9", 5, "ready")
    assert "due" in ready, f"pickup_ready without a due time: {ready}"
    issued = lk.find_events("code_issued", resv=resv)
    assert len(issued) == 1, issued

    # The SMS side collects the code once.
    t = lk.ctl({"op": "take_codes"})
    assert t.get("ok") is True and len(t.get("codes", [])) == 1, f"take_codes -> {t}"
    c = t["codes"][0]
    assert c.get("resv") == resv and c.get("cell") == 5 and c.get("app") == "A-9" and \
        c.get("seq") == issued[0]["seq"], c
    code = c["code"]
    assert isinstance(code, str) and len(code) == 10 and code.isdigit(), c
    t2 = lk.ctl({"op": "take_codes"})
    assert t2.get("ok") is True and t2.get("codes") == [], f"second take_codes -> {t2}"

    # The applicant collects.
    _, seq1 = _open_with(sim, lk, kc, {"op": "code", "code": code}, 5, "pickup", "pickup")
    _close(sim, lk, kc, 5, seq1)
    col = lk.wait_event("collected", cell=5, after=seq1, resv=resv)
    _check_resv_event(col, resv, "pickup", "A-9", 5, "collected")
    types = _types(_resv_events(lk, resv))
    assert types == ["load_started", "code_issued", "pickup_ready", "code_used", "collected"], \
        types
    assert_refused(sim, lk, kc, {"op": "code", "code": code}, "invalid_code", settle=0.3)
    lk.stop()
    sim.stop()


def test_cancel():
    sim, lk, kc = start_custody()
    r = reserve(lk, "A-5")
    seq0 = lk.last_seq()
    rep = lk.ctl({"op": "cancel", "resv": r["resv"]})
    assert rep.get("ok") is True and rep.get("resv") == r["resv"], f"cancel -> {rep}"
    ev = lk.wait_event("cancelled", after=seq0, resv=r["resv"])
    _check_resv_event(ev, r["resv"], "dropoff", "A-5", r["cell"], "cancelled")
    assert_refused(sim, lk, kc, {"op": "code", "code": r["code"]}, "invalid_code")
    assert_refused(sim, lk, kc, {"op": "scan", "credential": r["credential"]}, "invalid_code",
             settle=0.2)
    assert not lk.find_events("code_used", resv=r["resv"])

    for bad in (r["resv"], 999):
        rep = lk.ctl({"op": "cancel", "resv": bad})
        assert rep.get("ok") is False, f"cancel {bad} -> {rep}"
        assert str(bad) in str(rep.get("error")), \
            f"cancel of {bad}: the error does not name the reservation: {rep}"
        print(f"cancel {bad}: {rep['error']}")
    # The cell is free again: the next reservation gets it.
    r2 = reserve(lk, "A-6")
    assert r2["cell"] == r["cell"], (r, r2)
    lk.stop()
    sim.stop()


def test_reissue():
    sim, lk, kc = start_custody()
    r = reserve(lk, "A-7")
    seq0 = lk.last_seq()
    new = lk.ctl({"op": "reissue", "resv": r["resv"]})
    assert new.get("ok") is True and new.get("resv") == r["resv"] and \
        new.get("cell") == r["cell"], f"reissue -> {new}"
    assert isinstance(new.get("code"), str) and len(new["code"]) == 10, new
    assert new["code"] != r["code"] and new.get("credential") != r["credential"], (r, new)
    ev = lk.wait_event("code_reissued", after=seq0, resv=r["resv"])
    _check_resv_event(ev, r["resv"], "dropoff", "A-7", r["cell"], "reserved")

    assert_refused(sim, lk, kc, {"op": "code", "code": r["code"]}, "invalid_code")
    assert_refused(sim, lk, kc, {"op": "scan", "credential": r["credential"]}, "invalid_code",
             settle=0.2)
    dep = _dropoff(sim, lk, kc, dict(r, code=new["code"]))
    assert dep["resv"] == r["resv"], dep
    lk.stop()
    sim.stop()


def _alter(cred, i):
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    c = cred[i]
    repl = alphabet[(alphabet.index(c) + 17) % 64] if c in alphabet else "A"
    return cred[:i] + repl + cred[i + 1:]


def test_qr_credential():
    sim, lk, kc = start_custody()
    r = reserve(lk, "A-8")
    cred = r["credential"]
    # One character altered anywhere (not the last one, whose low bits may
    # not count): header, reservation, cell, hash or signature.
    for i in (2, 20, 40, len(cred) // 2, len(cred) - 10):
        assert_refused(sim, lk, kc, {"op": "scan", "credential": _alter(cred, i)}, "invalid_code",
                 settle=0.1)
    assert_refused(sim, lk, kc, {"op": "scan", "credential": "not base64!"}, "invalid_code",
             settle=0.1)
    assert not lk.find_events("code_used", resv=r["resv"])

    _, seq0 = _open_with(sim, lk, kc, {"op": "scan", "credential": cred}, r["cell"], "dropoff",
                         "dropoff")
    _close(sim, lk, kc, r["cell"], seq0)
    lk.wait_event("deposited", cell=r["cell"], after=seq0, resv=r["resv"])
    assert_refused(sim, lk, kc, {"op": "scan", "credential": cred}, "used", settle=0.3)
    lk.stop()
    sim.stop()


def test_jammed_door_offers_another_cell():
    sim, lk, kc = start_custody()
    r = reserve(lk, "A-10")
    assert r["cell"] == 1, r
    sim.cmd("jam 1 1 on")
    seq0, n0, m0 = lk.last_seq(), sim.last_write_n(), kc.mark()
    rep = kc.code(r["code"])
    assert rep.get("ok") is True and rep.get("cell") == 1, f"code -> {rep}"
    first = sim.wait_write(unlock_write_pred(1), after=n0, what="first pulse of cell 1")
    sim.wait_write(unlock_write_pred(1), after=first["n"], timeout=4, what="retry of cell 1")
    jam = lk.wait_event("door_jammed", cell=1, after=seq0, timeout=4)
    info = kc.wait_notice("info", since=m0, contains="instead", timeout=3)
    print(f"screen after the jam: {info}")
    new_cell = info.get("cell")
    assert new_cell not in (None, 1), f"the notice names no other cell: {info}"
    assert "Cell 1" in info["show"] and f"Cell {new_cell}" in info["show"], info
    re = lk.wait_event("reassigned", after=jam["seq"], resv=r["resv"])
    assert re.get("from_cell") == 1 and re.get("cell") == new_cell, re
    _check_resv_event(re, r["resv"], "dropoff", "A-10", new_cell)
    w = sim.wait_write(unlock_write_pred(new_cell), after=first["n"],
                       what=f"relay of the new cell {new_cell}")
    assert w["n"] > first["n"]
    lk.wait_event("door_opened", cell=new_cell, after=seq0, timeout=3, expected=True)
    kc.wait_notice("open", cell=new_cell, since=m0)
    _close(sim, lk, kc, new_cell, seq0)
    dep = lk.wait_event("deposited", cell=new_cell, after=seq0, resv=r["resv"])
    _check_resv_event(dep, r["resv"], "dropoff", "A-10", new_cell, "deposited")
    c1 = lk.cell(1)
    assert c1["fault"] == "door_jammed" and c1["service"] == "out", c1
    cells = sorted({c for c, _ in unlocked_cells(sim, n0)})
    assert cells == sorted({1, new_cell}), f"relays driven: {cells}"
    lk.stop()
    sim.stop()


def test_crash_between_commit_and_pulse_grace_reopen():
    # grace_s 10 (the minimum): the same code re-opens the same cell within
    # 10 s of its use when the door was never seen open.
    sim, lk, kc = start_custody(codes={"grace_s": 10})
    r = reserve(lk, "A-11")
    cell = r["cell"]
    # The board stops answering: lockerd needs 3 failed requests (100 ms
    # timeout each) to call it faulty, so the code is accepted and
    # committed, and the unlock then waits on a board that never answers.
    sim.cmd("offline 1 on")
    n0 = sim.last_write_n()
    rep = kc.code(r["code"])
    lk.kill9()
    t_used = time.monotonic()
    assert rep.get("ok") is True and rep.get("cell") == cell, \
        f"code with the board just gone silent -> {rep}"
    assert not unlocked_cells(sim, n0), f"a pulse reached the board: {sim.writes(n0)}"
    rows = _db_rows(lk.db_path, "SELECT seq, type, body FROM events ORDER BY seq")
    types = [t for _, t, _ in rows]
    print(f"ledger at the crash: {types}")
    assert "code_used" in types, f"code_used was not committed before the reply: {types}"
    after_use = types[types.index("code_used"):]
    assert not {"unlock_failed", "reassigned", "code_restored", "door_opened"} & set(after_use), \
        f"lockerd went on before the kill (the test raced): {after_use}"

    sim.cmd("offline 1 off")
    last = rows[-1][0]
    lk.start()
    kc.reconnect()
    lk.wait_event("started", after=last)
    st = lk.ctl({"op": "resv", "resv": r["resv"]})
    assert st.get("ok") is True and st.get("state") == "opening", \
        f"after the restart the reservation is {st}"
    assert time.monotonic() - t_used < 8, "restart too slow for the 10 s grace window"
    rep2, seq1 = _open_with(sim, lk, kc, {"op": "code", "code": r["code"]}, cell, "dropoff",
                            "dropoff")
    print(f"the same code after the restart: {rep2}")
    used = lk.find_events("code_used", resv=r["resv"])
    assert len(used) == 2, f"expected the grace re-open to record code_used again: {used}"
    _close(sim, lk, kc, cell, seq1)
    lk.wait_event("deposited", cell=cell, after=seq1, resv=r["resv"])
    assert_refused(sim, lk, kc, {"op": "code", "code": r["code"]}, "used")
    assert not lk.find_events("code_restored", resv=r["resv"])
    assert not lk.find_events("reassigned", resv=r["resv"])
    harness.assert_events_well_formed(lk.events())
    lk.stop()
    sim.stop()


def _canon(o):
    return json.dumps(o, separators=(",", ":"), sort_keys=True, ensure_ascii=True)


def test_edited_database_rows_are_rejected():
    sim, lk, kc = start_custody()
    add_staff(lk, "alice", PIN, name="Alice A")
    rs = [reserve(lk, f"A-2{i}") for i in range(4)]
    assert [r["cell"] for r in rs] == [1, 2, 3, 4], rs
    lk.stop()

    con = sqlite3.connect(lk.db_path)
    try:
        rows = {rid: (body, sig) for rid, body, sig in
                con.execute("SELECT id, body, sig FROM reservations WHERE active = 1")}
        assert set(rows) == {r["resv"] for r in rs}, rows.keys()
        for rid, (body, _) in rows.items():
            assert _canon(json.loads(body)) == body, f"stored body not canonical as expected: {body}"
        r1, r2 = rs[0]["resv"], rs[1]["resv"]
        # (a) a copy of reservation 1 with another id and cell, its sig kept
        body, sig = rows[r1]
        o = json.loads(body)
        o["id"], o["cell"] = 100, 9
        con.execute("INSERT INTO reservations (id, active, body, sig) VALUES (100, 1, ?, ?)",
                    (_canon(o), sig))
        # (b) reservation 1 moved to another cell
        o = json.loads(body)
        o["cell"] = 5
        con.execute("UPDATE reservations SET body = ? WHERE id = ?", (_canon(o), r1))
        # (c) reservation 2 with another code hash
        body2 = rows[r2][0]
        o = json.loads(body2)
        h = o["code_hash"]
        o["code_hash"] = ("0" if h[0] != "0" else "1") + h[1:]
        con.execute("UPDATE reservations SET body = ? WHERE id = ?", (_canon(o), r2))
        # (d) reservation 4's row verbatim (body and sig) under another id
        r4 = rs[3]["resv"]
        con.execute("INSERT INTO reservations (id, active, body, sig) VALUES (101, 1, ?, ?)",
                    rows[r4])
        # A staff account that lockerd never wrote: alice's row as mallory,
        # once with the body naming mallory, once unchanged.
        (abody, asig), = con.execute("SELECT body, sig FROM staff WHERE id = 'alice'")
        o = json.loads(abody)
        o["id"] = "mallory"
        con.execute("INSERT INTO staff (id, body, sig) VALUES ('mallory', ?, ?)",
                    (_canon(o), asig))
        con.execute("INSERT INTO staff (id, body, sig) VALUES ('mallory2', ?, ?)",
                    (abody, asig))
        con.commit()
    finally:
        con.close()

    log_off = os.path.getsize(lk.log_path)
    seq_stop = max(s for s, in _db_rows(lk.db_path, "SELECT seq FROM events"))
    lk.start()
    kc.reconnect()
    with open(lk.log_path, errors="replace") as f:
        f.seek(log_off)
        log = f.read()
    for rid in (r1, r2, 100, 101):
        assert f"reservation {rid}: rejected" in log, \
            f"the log does not say reservation {rid} was rejected:\n{log}"
    rej = lk.find_events("record_rejected", after=seq_stop)
    print(f"record_rejected: {[(e.get('id'), e.get('reason')) for e in rej]}")
    assert all(e.get("alarm") is True for e in rej), rej
    assert sorted(str(e.get("id")) for e in rej if e.get("record") == "reservation") == \
        sorted(str(x) for x in (r1, r2, 100, 101)), rej
    # The hand-inserted accounts are alarms at start too, not only at a log-in.
    assert sorted(e.get("id") for e in rej if e.get("record") == "staff") == \
        ["mallory", "mallory2"], rej
    for rid in (r1, r2, 100, 101):
        st = lk.ctl({"op": "resv", "resv": rid})
        assert st.get("ok") is False, f"rejected reservation {rid} is active: {st}"

    # The tampered codes open nothing; the untouched ones still work.
    for r in rs[:2]:
        assert_refused(sim, lk, kc, {"op": "code", "code": r["code"]}, "invalid_code", settle=0.2)
        assert_refused(sim, lk, kc, {"op": "scan", "credential": r["credential"]}, "invalid_code",
                 settle=0.2)
    for who in ("mallory", "mallory2"):
        rep = kc.login(who, PIN)
        assert rep.get("ok") is False and rep.get("error") == "bad_login", \
            f"login as hand-inserted {who} -> {rep}"
    rep = kc.login("alice", PIN)
    assert rep.get("ok") is True, f"alice can no longer log in: {rep}"
    _dropoff(sim, lk, kc, rs[2])
    _dropoff(sim, lk, kc, rs[3])

    v = verify_ledger(lk)
    assert v.returncode == 0 and v.stdout.startswith("ledger ok"), \
        f"--verify-ledger after edited custody rows: {v.returncode} {v.stdout}{v.stderr}"
    lk.stop()
    sim.stop()


def test_replayed_reservation_row_is_rejected():
    """A signed row is only as good as its version: the row of a drop-off as
    it was when reserved (body and sig written by lockerd itself), put back
    after the documents are in, must not make the used code open the cell
    again. The ledger says the reservation reached "deposited"."""
    sim, lk, kc = start_custody()
    r = reserve(lk, "A-29")
    old = _db_rows(lk.db_path, "SELECT active, body, sig FROM reservations WHERE id = ?",
                   (r["resv"],))
    assert len(old) == 1 and json.loads(old[0][1])["state"] == "reserved", old
    _dropoff(sim, lk, kc, r)
    lk.stop()
    con = sqlite3.connect(lk.db_path)
    try:
        con.execute("UPDATE reservations SET active = ?, body = ?, sig = ? WHERE id = ?",
                    old[0] + (r["resv"],))
        con.commit()
    finally:
        con.close()
    lk.start()
    kc.reconnect()
    st = lk.ctl({"op": "resv", "resv": r["resv"]})
    print(f"after putting back the row as reserved: resv -> {st}")
    n0 = sim.last_write_n()
    rep = kc.code(r["code"])
    time.sleep(0.5)
    opened = unlocked_cells(sim, n0)
    print(f"the used code again -> {rep}; relays: {[c for c, _ in opened]}")
    assert not opened and rep.get("ok") is False, \
        f"a replayed (older, validly signed) reservation row made the used code open cell " \
        f"{r['cell']} with the documents inside: reply {rep}, relay writes " \
        f"{[w for _, w in opened]}, resv {st}"
    assert st.get("ok") is not True or st.get("state") == "deposited", st
    lk.stop()
    sim.stop()


def _find_codes(codes, path):
    """{code: [byte offsets]} of the codes that occur in a file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return {}
    found = {}
    for c in codes:
        i = data.find(c.encode())
        if i != -1:
            found.setdefault(c, []).append(i)
    return found


def test_plain_codes_rest_nowhere():
    """A code handed over (reserve and reissue replies, take_codes) must not
    rest in any lockerd log or in the database files (main file and -wal),
    neither while lockerd runs (what a crash or power cut leaves on disk)
    nor after it stopped. Only a code nobody has taken yet may sit in
    events.secret of its issuance event."""
    sim, lk, kc = start_custody(cells=MIXED_CELLS, log_level="debug")
    codes = {}
    r = reserve(lk, "A-30")
    codes[r["code"]] = "drop-off code from the reserve reply (re-issued)"
    again = lk.ctl({"op": "reissue", "resv": r["resv"]})
    assert again.get("ok") is True, again
    codes[again["code"]] = "drop-off code from the reissue reply (used)"
    _dropoff(sim, lk, kc, dict(r, code=again["code"]))
    r2 = reserve(lk, "A-31")
    codes[r2["code"]] = "drop-off code from the reserve reply (cancelled)"
    assert lk.ctl({"op": "cancel", "resv": r2["resv"]}).get("ok") is True

    _login(sim, lk, kc)
    seq0 = lk.last_seq()
    rep = kc.request({"op": "load", "size": "M", "app": "A-32"})
    assert rep.get("ok") is True, rep
    lk.wait_event("door_opened", cell=rep["cell"], after=seq0, timeout=3)
    close_door(sim, rep["cell"])
    lk.wait_event("pickup_ready", after=seq0, resv=rep["resv"])
    t = lk.ctl({"op": "take_codes"})
    assert len(t.get("codes", [])) == 1, t
    pickup = t["codes"][0]["code"]
    codes[pickup] = "pickup code from take_codes (collected)"
    _, seq1 = _open_with(sim, lk, kc, {"op": "code", "code": pickup}, rep["cell"], "pickup",
                         "pickup")
    _close(sim, lk, kc, rep["cell"], seq1)
    lk.wait_event("collected", after=seq1, resv=rep["resv"])
    # One more pickup code that nobody has taken: it may rest in
    # events.secret of its code_issued event, and only there.
    seq2 = lk.last_seq()
    rep2 = kc.request({"op": "load", "size": "S", "app": "A-33"})
    assert rep2.get("ok") is True, rep2
    lk.wait_event("door_opened", cell=rep2["cell"], after=seq2, timeout=3)
    close_door(sim, rep2["cell"])
    lk.wait_event("pickup_ready", after=seq2, resv=rep2["resv"])

    pending = _db_rows(lk.db_path, "SELECT seq, type, body, secret FROM events "
                                   "WHERE secret IS NOT NULL")
    assert len(pending) == 1, f"undelivered secrets: {pending}"
    pseq, ptype, pbody, undelivered = pending[0]
    assert ptype == "code_issued" and json.loads(pbody).get("resv") == rep2["resv"], pending
    assert undelivered not in codes, "a delivered code is still in events.secret"
    db_files = [lk.db_path, lk.db_path + "-wal", lk.db_path + "-shm"]
    logs = [p for _, p in harness._ctx.logs if os.path.basename(p).startswith("lockerd")]

    findings = []
    for when in ("while lockerd runs", "after lockerd stopped"):
        if when.startswith("after"):
            lk.stop()
        for p in db_files + logs:
            for c, offs in _find_codes(list(codes) + [undelivered], p).items():
                if c == undelivered and p in db_files:
                    continue
                what = codes.get(c, "the undelivered pickup code")
                findings.append(f"{when}: {os.path.basename(p)} (size "
                                f"{os.path.getsize(p)}) holds {what} at byte {offs[0]}")
    print("\n".join(findings) or "no plain code found")
    assert not findings, "plain codes rest on disk after they were handed over:\n  " + \
        "\n  ".join(findings)
    # After the stop the undelivered one is still there for the platform.
    assert _db_rows(lk.db_path, "SELECT secret FROM events WHERE seq = ?", (pseq,)) == \
        [(undelivered,)]
    sim.stop()


def test_verify_ledger_detects_an_edited_event():
    sim, lk, kc = start_custody()
    r = reserve(lk, "A-40")
    _dropoff(sim, lk, kc, r)
    v = verify_ledger(lk)
    n = lk.last_seq()
    assert v.returncode == 0, f"--verify-ledger: {v.returncode} {v.stdout}{v.stderr}"
    assert v.stdout.startswith(f"ledger ok: {n} events"), v.stdout
    lk.stop()
    v = verify_ledger(lk)
    assert v.returncode == 0, f"--verify-ledger after stop: {v.stdout}{v.stderr}"

    rows = _db_rows(lk.db_path, "SELECT seq, body FROM events WHERE type = 'deposited'")
    assert len(rows) == 1, rows
    seq, body = rows[0]
    edited = body.replace('"app":"A-40"', '"app":"A-41"')
    assert edited != body, body
    con = sqlite3.connect(lk.db_path)
    try:
        con.execute("UPDATE events SET body = ? WHERE seq = ?", (edited, seq))
        con.commit()
    finally:
        con.close()
    v = verify_ledger(lk)
    print(f"--verify-ledger after editing seq {seq}: {v.returncode} {v.stderr.strip()}")
    assert v.returncode == 1, f"edited ledger passed: {v.returncode} {v.stdout}{v.stderr}"
    assert f"ledger broken: seq {seq}:" in v.stderr, v.stderr
    assert "ledger ok" not in v.stdout, v.stdout
    sim.stop()


def test_qr_credential_asks_for_the_phone_factor():
    """Issue 22, 5: for a reservation made with "phone":"4321", the typed
    code without the phone was refused, but a scan of the credential
    opened the cell. Now the second factor applies to the credential too:
    without the digits the screen asks for them (phone_needed, no door),
    wrong digits count as a wrong code, the right ones open."""
    sim, lk, kc = start_custody()
    r = reserve(lk, "A-90", phone="4321")
    cred = r["credential"]
    rep = assert_refused(sim, lk, kc, {"op": "scan", "credential": cred}, "phone_needed",
                         settle=0.3)
    print(f"scan without the phone digits: {rep}")
    assert "phone" in rep["show"], rep
    assert_refused(sim, lk, kc, {"op": "scan", "credential": cred, "phone": "1234"},
                   "invalid_code", settle=0.2)
    rep = assert_refused(sim, lk, kc, {"op": "scan", "credential": cred, "phone": "43"},
                         "bad_request", settle=0.05)
    assert "phone" in rep["show"], rep
    assert not lk.find_events("code_used", resv=r["resv"])
    _, seq0 = _open_with(sim, lk, kc, {"op": "scan", "credential": cred, "phone": "4321"},
                         r["cell"], "dropoff", "dropoff")
    _close(sim, lk, kc, r["cell"], seq0)
    lk.wait_event("deposited", resv=r["resv"], after=seq0)
    lk.stop()
    sim.stop()


def test_kiosk_tool_asks_for_the_phone_after_a_scan():
    """The terminal keypad (build/kiosk) does what the screen does: a scan
    answered phone_needed makes the next input line the phone digits,
    sent with the same credential; one-shot, they go as an argument."""
    import subprocess
    sim, lk, kc = start_custody()
    r = reserve(lk, "A-91", phone="4321")
    r2 = reserve(lk, "A-92", phone="8765")
    path = harness.kiosk_path(lk)
    n0 = sim.last_write_n()
    p = subprocess.run([harness.binary("kiosk"), "-s", path], input=f"scan {r['credential']}\n"
                       "4321\nstatus\n", capture_output=True, text=True, timeout=20)
    print(p.stdout)
    assert p.returncode == 0, p
    out = p.stdout.splitlines()
    assert out[0].startswith("error (phone_needed): ") and "phone" in out[0], out
    assert f"Cell {r['cell']} is open" in out[1], out
    sim.wait_write(unlock_write_pred(r["cell"]), after=n0, what="the relay after the digits")
    p = subprocess.run([harness.binary("kiosk"), "-s", path, "scan", r2["credential"], "8765"],
                       capture_output=True, text=True, timeout=20)
    assert p.returncode == 0 and f"Cell {r2['cell']} is open" in p.stdout, p
    lk.stop()
    sim.stop()
