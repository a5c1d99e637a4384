"""The keypad itself (proto/kiosk.md): malformed and wrong codes, the
second factor, the guessing throttle, and staff log-in."""

import time

from harness import (add_staff, assert_refused, close_door, reserve, start_custody,
                     unlock_write_pred, unlocked_cells)

PIN = "135790"


def _opens(sim, lk, kc, req, cell):
    seq0, n0 = lk.last_seq(), sim.last_write_n()
    rep = kc.request(req)
    assert rep.get("ok") is True and rep.get("cell") == cell, f"{req} -> {rep}"
    sim.wait_write(unlock_write_pred(cell), after=n0, what=f"relay of cell {cell}")
    lk.wait_event("door_opened", cell=cell, after=seq0, timeout=3, expected=True)
    close_door(sim, cell)
    lk.wait_event("door_closed", cell=cell, after=seq0, timeout=3)
    return rep


def test_wrong_and_malformed_codes():
    sim, lk, kc = start_custody()
    r = reserve(lk, "A-50")
    wrong = "0000000000" if r["code"] != "0000000000" else "1111111111"
    rep = assert_refused(sim, lk, kc, {"op": "code", "code": wrong}, "invalid_code")
    print(f"wrong code: {rep}")
    for bad in ("123", r["code"][:9], r["code"] + "1", "12345abcde", ""):
        rep = assert_refused(sim, lk, kc, {"op": "code", "code": bad}, "bad_request", settle=0.05)
        assert "10" in rep["show"] or "code" in rep["show"].lower(), \
            f"bad_request for {bad!r} does not name the field: {rep}"
    rep = assert_refused(sim, lk, kc, {"op": "code", "code": 1234567890}, "bad_request", settle=0.05)
    assert "code" in rep["show"].lower(), rep
    rep = assert_refused(sim, lk, kc, {"op": "code"}, "bad_request", settle=0.05)
    assert "code" in rep["show"].lower(), rep
    assert_refused(sim, lk, kc, {"op": "frobnicate"}, "bad_request", settle=0.05)
    # Nothing of this touched the reservation: its code still works.
    assert not lk.find_events("code_used", resv=r["resv"])
    _opens(sim, lk, kc, {"op": "code", "code": r["code"]}, r["cell"])
    lk.stop()
    sim.stop()


def test_phone_factor():
    sim, lk, kc = start_custody()
    r = reserve(lk, "A-51", phone="4321")
    assert_refused(sim, lk, kc, {"op": "code", "code": r["code"]}, "invalid_code", settle=0.2)
    assert_refused(sim, lk, kc, {"op": "code", "code": r["code"], "phone": "1234"}, "invalid_code",
             settle=0.2)
    rep = assert_refused(sim, lk, kc, {"op": "code", "code": r["code"], "phone": "12"},
                   "bad_request", settle=0.05)
    assert "phone" in rep["show"], rep
    _opens(sim, lk, kc, {"op": "code", "code": r["code"], "phone": "4321"}, r["cell"])
    lk.wait_event("deposited", resv=r["resv"])
    lk.stop()
    sim.stop()


def _wrong_codes(*rs):
    return [c for c in ("0000000001", "0000000002", "0000000003", "0000000004",
                        "0000000005", "0000000006") if c not in [r["code"] for r in rs]]


def test_code_throttle():
    """burst 3, refill 5 s: three wrong codes in a row, then even the right
    code waits (at most one refill period); one guessing alarm; after the
    wait the right code works."""
    sim, lk, kc = start_custody(kiosk_keys={"code_burst": 3, "code_refill_s": 5})
    r = reserve(lk, "A-52")
    wrong = _wrong_codes(r)
    seq0 = lk.last_seq()
    for w in wrong[:3]:
        assert_refused(sim, lk, kc, {"op": "code", "code": w}, "invalid_code", settle=0.05)
    rep = assert_refused(sim, lk, kc, {"op": "code", "code": r["code"]}, "wait", settle=0.3)
    print(f"after three wrong codes: {rep}")
    assert isinstance(rep.get("wait_s"), int) and 1 <= rep["wait_s"] <= 5, rep
    rep2 = assert_refused(sim, lk, kc, {"op": "code", "code": wrong[3]}, "wait", settle=0.05)
    assert 1 <= rep2["wait_s"] <= 5, rep2
    g = lk.wait_event("guessing", after=seq0)
    assert g.get("alarm") is True and g.get("what") == "code", g
    assert len(lk.find_events("guessing", after=seq0)) == 1, \
        f"more than one guessing alarm for one episode: {lk.find_events('guessing')}"
    st = kc.status()
    assert st.get("ok") is True and 1 <= st.get("wait_s", 0) <= 5, f"status -> {st}"
    # A scanned credential is throttled the same way.
    assert_refused(sim, lk, kc, {"op": "scan", "credential": r["credential"]}, "wait", settle=0.05)
    assert not lk.find_events("code_used", resv=r["resv"])
    time.sleep(rep2["wait_s"] + 0.2)
    _opens(sim, lk, kc, {"op": "code", "code": r["code"]}, r["cell"])
    lk.stop()
    sim.stop()


def test_code_throttle_mistakes_then_success():
    """kiosk.md: the keypad waits "after `burst` failures in a row". Two
    mistakes, then a right code opens at once; the count starts again, so
    the next three wrong codes are answered invalid_code and only the entry
    after them waits."""
    sim, lk, kc = start_custody(kiosk_keys={"code_burst": 3, "code_refill_s": 5})
    r1 = reserve(lk, "A-53")
    r2 = reserve(lk, "A-54")
    wrong = _wrong_codes(r1, r2)
    for w in wrong[:2]:
        assert_refused(sim, lk, kc, {"op": "code", "code": w}, "invalid_code", settle=0.05)
    t0 = time.monotonic()
    _opens(sim, lk, kc, {"op": "code", "code": r1["code"]}, r1["cell"])
    print(f"right code after two wrong ones opened in {time.monotonic() - t0:.2f} s")
    assert not lk.find_events("guessing"), lk.find_events("guessing")

    seq0 = lk.last_seq()
    for i, w in enumerate(wrong[2:5]):
        rep = kc.code(w)
        assert rep.get("error") == "invalid_code", \
            f"wrong code #{i + 1} after a successful code -> {rep}; expected invalid_code " \
            f"(only {i} failures in a row since the success, burst is 3)"
    rep = assert_refused(sim, lk, kc, {"op": "code", "code": r2["code"]}, "wait", settle=0.3)
    assert 1 <= rep["wait_s"] <= 5, rep
    lk.wait_event("guessing", after=seq0)
    time.sleep(rep["wait_s"] + 0.2)
    _opens(sim, lk, kc, {"op": "code", "code": r2["code"]}, r2["cell"])
    lk.stop()
    sim.stop()


def test_malformed_line_gets_a_screen_text():
    """kiosk.md: every reply has "show", and "error" is one of the listed
    reasons (bad_request for a malformed request)."""
    sim, lk, kc = start_custody()
    bad = []
    for line in ("this is not json", '["op", "code"]', '{"op": 5}', '{"op": "code"'):
        rep = kc.request(line)
        print(f"{line!r} -> {rep}")
        if not (rep.get("ok") is False and rep.get("error") == "bad_request" and
                isinstance(rep.get("show"), str) and rep["show"]):
            bad.append(f"{line!r} -> {rep}")
    assert not bad, "keypad replies that are not a documented refusal (error bad_request " \
        "with show): " + "; ".join(bad)
    assert kc.status().get("ok") is True
    lk.stop()
    sim.stop()


def test_staff_login():
    sim, lk, kc = start_custody()
    add_staff(lk, "alice", PIN, name="Alice A")
    n0, seq0 = sim.last_write_n(), lk.last_seq()
    for req in ({"op": "load", "size": "S", "app": "A-60"}, {"op": "retrieve"},
                {"op": "take_back"}, {"op": "open", "cell": 7},
                {"op": "service", "cell": 7, "in": False}):
        assert_refused(sim, lk, kc, req, "not_logged_in", settle=0.02)
    assert kc.status().get("staff") is None

    rep = assert_refused(sim, lk, kc, {"op": "login", "staff": "alice", "pin": "999999"}, "bad_login",
                   settle=0.02)
    rep2 = assert_refused(sim, lk, kc, {"op": "login", "staff": "bob", "pin": PIN}, "bad_login",
                    settle=0.02)
    assert rep["show"] == rep2["show"], f"unknown id and wrong PIN look different: {rep} {rep2}"
    assert_refused(sim, lk, kc, {"op": "login", "staff": "alice"}, "bad_request", settle=0.02)
    assert_refused(sim, lk, kc, {"op": "open", "cell": 7}, "not_logged_in", settle=0.02)
    assert not lk.find_events("staff_login", after=seq0)

    rep = kc.login("alice", PIN)
    assert rep.get("ok") is True and rep.get("staff") == "alice" and \
        rep.get("name") == "Alice A" and rep.get("role") == "staff" and \
        rep.get("session_s") == 120, f"login -> {rep}"
    ev = lk.wait_event("staff_login", after=seq0)
    assert ev.get("staff") == "alice", ev
    assert kc.status().get("staff") == "alice"

    n1, seq1 = sim.last_write_n(), lk.last_seq()
    rep = kc.request({"op": "open", "cell": 7})
    assert rep.get("ok") is True and rep.get("cell") == 7, f"staff open 7 -> {rep}"
    sim.wait_write(unlock_write_pred(7), after=n1, what="relay of cell 7")
    u = lk.wait_event("unlock", cell=7, after=seq1)
    assert u.get("reason") == "staff_service", u
    act = lk.find_events("staff_action", after=seq1)
    assert act and act[0].get("staff") == "alice" and act[0].get("cell") == 7, act
    lk.wait_event("door_opened", cell=7, after=seq1, timeout=3)
    close_door(sim, 7)

    rep = kc.logout()
    assert rep.get("ok") is True, rep
    out = lk.wait_event("staff_logout", after=seq1)
    assert out.get("staff") == "alice", out
    assert kc.status().get("staff") is None
    assert_refused(sim, lk, kc, {"op": "open", "cell": 8}, "not_logged_in", settle=0.3)
    assert [c for c, _ in unlocked_cells(sim, n0)] == [7], unlocked_cells(sim, n0)
    lk.stop()
    sim.stop()


def test_staff_session_times_out():
    """A staff session ends after staff_session_s without a keypad action
    (10 s, the shortest allowed): the screen is told, the ledger says why,
    and staff actions need a new log-in. An action keeps it alive."""
    sim, lk, kc = start_custody(kiosk_keys={"staff_session_s": 10})
    add_staff(lk, "alice", PIN, name="Alice A")
    assert kc.login("alice", PIN).get("ok") is True
    mark = kc.mark()
    seq0 = lk.last_seq()
    # An action at 7 s moves the end to 17 s.
    time.sleep(7)
    rep = kc.request({"op": "service", "cell": 9, "in": True})
    assert rep.get("ok") is True, rep
    time.sleep(5)
    assert kc.status().get("staff") == "alice", "the session ended although it was used"
    note = kc.wait_notice("session_ended", timeout=12, since=mark)
    assert "ended" in note.get("show", ""), note
    ev = lk.wait_event("staff_logout", after=seq0)
    assert ev.get("staff") == "alice" and ev.get("why") == "timeout", ev
    n0 = sim.last_write_n()
    assert_refused(sim, lk, kc, {"op": "open", "cell": 9}, "not_logged_in", settle=0.05)
    assert sim.last_write_n() == n0
