"""Faults (issue #6): the lock boards misbehave (locksim's faults) or the
database's disk fills up or turns read-only, and lockerd must say so and
lose nothing.

Each test runs the flow world of test_flows.py (a private mosquitto, the
platform's session, locksim, lockerd, the keypad; faultkit.FaultFlow) and
checks the three views: what the platform saw on MQTT (events, the
retained cells/<n>), what locksim saw on Modbus (relay writes, and which
relays are still on), what the keypad was told. Two things must hold
whatever the fault:

  * no false door event: no door_opened / door_closed / forced_open for a
    cell nobody touched, beyond what the fault itself legitimately causes
    (a chattering sensor, a door really broken open);
  * no lost code: a code entered during or around the fault either opens
    its cell or is refused with a screen text that says it still works,
    and it does work once the fault is gone; it is never spent without
    its door opening.

What lockerd does on each fault is in controller/mb.c (a board is faulty
after MB_FAIL_THRESHOLD = 3 failed requests in a row, retried with
backoff, and answers again with board_recovered) and controller/bank.c
(an unlock not confirmed by the door sensor within unlock_confirm_ms is
retried once, then door_jammed takes the cell out of service; a door seen
open without an unlock is forced_open; sensors are debounced).
"""

import collections
import datetime
import os
import time

import harness
from harness import unit_ch, wait_for
from faultkit import Ext4Loop, FaultFlow, Tmpfs

STILL_WORKS = "code still works"


# ---------------------------------------------------------------------------
# Shared steps


def _ms_of(iso):
    return round(datetime.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ")
                 .replace(tzinfo=datetime.timezone.utc).timestamp() * 1000)


def _cells_of(board):
    return range(1, 17) if board == "A" else range(17, 25)


def _fault_on(f, r, on, board, error):
    """Puts the fault `on` (a locksim command) on a board and checks what
    lockerd reports while it lasts: the board_fault alarm on the platform's
    stream (its error one of `error`, a string or a tuple), the retained fault field of every cell of that board (and of no
    other), the board's state, the log line; and that the drop-off code of
    r (a cell of that board) is refused at the keypad with a text saying it
    still works, with no relay write and nothing spent. Returns the seq
    before the fault."""
    others = _cells_of("B" if board == "A" else "A")
    seq0, off0 = f.lk.last_seq(), f.log_size()
    t0 = time.monotonic()
    f.sim.cmd(on)
    fault = f.plat_event("board_fault", after=seq0, board=board, timeout=5)
    took = time.monotonic() - t0
    errors = error if isinstance(error, tuple) else (error,)
    assert fault.get("alarm") is True and fault.get("error") in errors, \
        f"board_fault should be an alarm naming {' or '.join(errors)}: {fault}"
    error = fault["error"]
    print(f"{on}: board_fault after {took * 1000:.0f} ms ({fault['error']})")
    for n in _cells_of(board):
        st = f.wait_cell(n, fault="board_fault")
        assert st["in_service"] is True, f"a board fault is not the cell's own fault: {st}"
    bad = {n: f.cell_states(n)[-1].get("fault") for n in others
           if f.cell_states(n) and f.cell_states(n)[-1].get("fault") is not None}
    assert not bad, f"cells of the healthy board show a fault: {bad}"
    b = f.lk.board(board)
    assert b["ok"] is False and error in (b["error"] or ""), f"state of board {board}: {b}"
    line = f"faulty after 3 failed requests: {error}"
    wait_for(lambda: line in f.log_since(off0), 2, what=f"the log line {line!r}")

    rep = f.refused({"op": "code", "code": r["code"]}, "cell_unavailable")
    assert STILL_WORKS in rep["show"], f"the screen does not say the code still works: {rep}"
    assert not f.lk.find_events("code_used", resv=r["resv"]), \
        "the code was spent on a cell whose board does not answer"
    q = f.lk.ctl({"op": "resv", "resv": r["resv"]})
    assert q.get("state") == "reserved", f"the reservation moved on: {q}"
    return seq0


def _fault_off(f, seq0, off, board, touched=()):
    """Takes the fault away: board_recovered, the fault field cleared, and
    since seq0 no door event and no unlock for a cell outside touched."""
    seq1 = f.lk.last_seq()
    f.sim.cmd(off)
    f.plat_event("board_recovered", after=seq1, board=board, timeout=5)
    for n in _cells_of(board):
        f.wait_cell(n, fault=None)
    assert f.lk.board(board)["ok"] is True
    # Give a wrong reading time to show up as a (debounced) door change.
    time.sleep(0.3)
    f.no_false_doors(seq0, touched, what=f"the fault on board {board}")
    unlocks = [(e["seq"], e["type"], e.get("cell")) for e in f.lk.events(seq0)
               if e["type"] in ("unlock", "unlock_failed", "code_used")
               and e.get("cell") not in touched]
    assert not unlocks, f"unlocks during the fault for cells nobody used: {unlocks}"


def _other_board_works(f, app):
    """A drop-off on board B (an M cell) completes while board A is sick:
    the keypad, MQTT and the other board keep working. Returns its cell."""
    r = f.reserve(app, "M")
    assert r["cell"] >= 17, f"an M cell is on board B: {r}"
    dep = f.dropoff(r)
    assert dep["cell"] == r["cell"], dep
    return r["cell"]


def _spoiled(f):
    """Replies locksim dropped or corrupted (its -v log), and requests."""
    return {"dropped": f.sim_log_count(r"reply dropped"),
            "corrupted": f.sim_log_count(r"reply corrupted"),
            "requests": sum(b["requests"] for b in f.sim.state()["boards"])}


def _code_works_after(f, r):
    """The code refused during the fault opens its cell now; the drop-off
    completes, no relay stays on, the platform has the whole ledger."""
    dep = f.dropoff(r)
    assert dep["resv"] == r["resv"] and dep["cell"] == r["cell"], dep
    f.wait_coils_off(what="after the drop-off: ")
    f.stream_is_the_ledger()
    return dep


# ---------------------------------------------------------------------------
# Boards that do not answer, or answer badly


def test_fault_timeouts():
    """drop 100 on board A: every reply is lost, every request times out
    (timeout_ms 100). lockerd reports: after 3 failed requests a
    board_fault alarm {board "A", alarm true, error "no reply (timeout)"}
    on the event stream, the log line "faulty after 3 failed requests: no
    reply (timeout)", cells/1..16 retained with fault "board_fault" (17..24
    none), board A ok false in the state. At the keypad a drop-off code for
    cell 1 is refused "cell_unavailable" with "...your code still works",
    no relay write, no code_used. Meanwhile a drop-off on board B completes
    (the keypad, MQTT and the other board keep working). Replies back:
    board_recovered, faults cleared, no door event for any board-A cell,
    and the same code opens cell 1.
    A code entered at the very moment the replies stop is
    test_fault_reply_lost_at_unlock; the latency of the healthy board while
    one is dead is test_boards.test_board_offline_other_unaffected."""
    f = FaultFlow(verbose=True)
    r = f.reserve("A-F1001", "S")
    assert r["cell"] == 1, r
    seq0 = _fault_on(f, r, "drop 1 100", "A", "no reply (timeout)")
    other = _other_board_works(f, "A-F1002")
    _fault_off(f, seq0, "drop 1 0", "A", touched=[other])
    print(f"locksim: {_spoiled(f)}")
    _code_works_after(f, r)


def _partial_corruption(f, on, off, seconds=2.0):
    """Spoils a share of board A's replies for a while: whatever lockerd
    makes of the board (faulty and back, perhaps several times), no spoiled
    reply may become a door change. Returns the spoiled counts."""
    seq0 = f.lk.last_seq()
    before = _spoiled(f)
    f.sim.cmd(on)
    time.sleep(seconds)
    f.sim.cmd(off)
    after = _spoiled(f)
    # A board that went faulty comes back within the backoff (1 s).
    wait_for(lambda: f.lk.board("A")["ok"], 3, what="board A answering again")
    time.sleep(0.3)
    f.no_false_doors(seq0, (), what=f"{on!r}")
    kinds = [e["type"] for e in f.lk.events(seq0)]
    faults, recovered = kinds.count("board_fault"), kinds.count("board_recovered")
    assert faults == recovered, f"board_fault {faults} times, board_recovered {recovered}: {kinds}"
    assert set(kinds) <= {"board_fault", "board_recovered"}, \
        f"events other than board faults during {on!r}: {kinds}"
    spoiled = {k: after[k] - before[k] for k in after}
    print(f"{on} for {seconds:.0f} s: {spoiled}, board_fault {faults} times")
    assert spoiled["corrupted"] >= 3, f"locksim spoiled too few replies to show anything: {spoiled}"
    return spoiled


def test_fault_corrupt_crc():
    """corrupt crc on board A, on an RS485 line (RTU, where both boards
    share the wire and crc is a real CRC error). First half the replies for
    2 s: no spoiled reply becomes a door change (no door event at all; the
    board may go faulty and come back, each board_fault matched by a
    board_recovered). Then every reply: board_fault {board "A", alarm,
    error "invalid CRC"}, cells/1..16 fault "board_fault", the log line, a
    drop-off code for cell 1 refused "cell_unavailable" "...your code still
    works" with no relay write; a drop-off on board B, on the same wire,
    completes meanwhile. CRCs good again: board_recovered, faults cleared,
    no door event for a cell nobody used, and the code opens cell 1."""
    f = FaultFlow(rtu=True, verbose=True)
    r = f.reserve("A-F2001", "S")
    assert r["cell"] == 1, r
    _partial_corruption(f, "corrupt 1 crc 50", "corrupt 1 off")
    seq0 = _fault_on(f, r, "corrupt 1 crc 100", "A", "invalid CRC")
    other = _other_board_works(f, "A-F2002")
    _fault_off(f, seq0, "corrupt 1 off", "A", touched=[other])
    print(f"locksim: {_spoiled(f)}")
    _code_works_after(f, r)


def test_fault_corrupt_garbage():
    """corrupt garbage on board A over Modbus TCP: replies of the right
    length made of random bytes. First half of them for 2 s: no door event
    (random bytes never read as door inputs; each board_fault is matched by
    a board_recovered). Then all of them: board_fault {board "A", alarm,
    error "invalid data" (libmodbus refuses the transaction id), or "no
    reply (timeout)" when a random byte count makes it wait for more}
    within a few requests, cells/1..16 fault
    "board_fault", the log line, the drop-off code for cell 1 refused
    "cell_unavailable" "...your code still works", no relay write; board B
    serves a drop-off meanwhile. Garbage off: board_recovered, faults
    cleared, no false door event, the code opens cell 1."""
    f = FaultFlow(verbose=True)
    r = f.reserve("A-F3001", "S")
    assert r["cell"] == 1, r
    _partial_corruption(f, "corrupt 1 garbage 50", "corrupt 1 off")
    seq0 = _fault_on(f, r, "corrupt 1 garbage 100", "A", ("invalid data", "no reply (timeout)"))
    other = _other_board_works(f, "A-F3002")
    _fault_off(f, seq0, "corrupt 1 off", "A", touched=[other])
    print(f"locksim: {_spoiled(f)}")
    _code_works_after(f, r)


def test_fault_slow_beyond_timeout():
    """slow 1 150 with the bus's timeout_ms 100: every reply of board A
    comes after lockerd gave up on it. lockerd reports board_fault {board
    "A", alarm, error "no reply (timeout)", or "invalid data" when the
    third request caught the late reply of the one before and refused it
    for its transaction id}, cells/1..16 fault
    "board_fault", the log line; the code for cell 1 is refused
    "cell_unavailable" "...your code still works". The late replies must not
    poison later requests (libmodbus 3.1.6 trap: modbus_flush before each
    request, a fresh TCP connection after a fault): once the board is fast
    again, board_recovered, no door event, no unlock_failed, and the code
    opens cell 1 at the first try."""
    f = FaultFlow(extra={"bus sim": {"timeout_ms": 100}})      # the timeout under test
    r = f.reserve("A-F4001", "S")
    assert r["cell"] == 1, r
    seq0 = _fault_on(f, r, "slow 1 150", "A", ("no reply (timeout)", "invalid data"))
    other = _other_board_works(f, "A-F4002")
    _fault_off(f, seq0, "slow 1 0", "A", touched=[other])
    seq1 = f.lk.last_seq()
    _code_works_after(f, r)
    failed = f.lk.find_events("unlock_failed", after=seq0)
    assert not failed, f"a late reply spoiled a later unlock: {failed}"
    attempts = [e.get("attempt") for e in f.lk.find_events("unlock", cell=1, after=seq1)]
    assert attempts == [1], f"cell 1 needed unlock attempts {attempts}"


def test_fault_slow_within_timeout():
    """slow 1 30 with timeout_ms 100 (75 of 250 in the sanitizer build):
    board A is slow, every reply of it 30 ms late, but within
    the bus timeout. lockerd reports nothing (no board_fault, no
    unlock_failed, no fault field); a drop-off on cell 1 and one on board
    B complete as usual, the keypad saying "Cell N is open"; the unlock of
    cell 1 comes later by at most about one slow poll. Prints both unlock
    latencies (keypad request to the relay write, as locksim timed it).
    The delay leaves 70 ms of the timeout to the machine: at 60 ms, a
    loaded CI machine made three replies in a row late."""
    f = FaultFlow()
    r = f.reserve("A-F5001", "S")
    rb = f.reserve("A-F5002", "M")
    seq0 = f.lk.last_seq()
    slow_ms = harness.bus_timeout_ms() * 3 // 10
    f.sim.cmd(f"slow 1 {slow_ms}")
    time.sleep(0.3)
    lat = {}
    for rr in (r, rb):
        n0 = f.sim.last_write_n()
        t0 = time.monotonic()
        f.dropoff(rr)
        w = [w for c, w in harness.unlocked_cells(f.sim, n0) if c == rr["cell"]][0]
        lat[rr["cell"]] = w["t"] - t0
    f.sim.cmd("slow 1 0")
    print(f"unlock latency with board A slow ({slow_ms} ms): " +
          ", ".join(f"cell {c}: {v * 1000:.0f} ms" for c, v in lat.items()))
    kinds = [e["type"] for e in f.lk.events(seq0)]
    assert "board_fault" not in kinds and "unlock_failed" not in kinds, \
        f"a slow board within the timeout was treated as failing: {kinds}"
    assert lat[r["cell"]] < 0.5, f"cell {r['cell']} took {lat[r['cell']]:.3f} s to unlock"
    for n in (r["cell"], rb["cell"]):
        assert f.cell_states(n)[-1].get("fault") is None, f.cell_states(n)[-1]
    f.no_false_doors(seq0, (r["cell"], rb["cell"]))
    f.wait_coils_off()
    f.stream_is_the_ledger()


def test_fault_board_offline():
    """offline 1 on at the moment a drop-off code for cell 1 is entered: the
    board answers nothing and does nothing (unlike drop, which loses only
    replies). lockerd: the keypad says "Cell 1 is open" (the unlock is
    queued), the unlock fails ("unlock_failed"), the reservation is
    reassigned to cell 2 once, that unlock fails too (board_fault comes in
    between: error "no reply (timeout)"), and the code is restored
    (code_restored): the screen is told "Cell 2 did not open. Your code
    still works; please ask the hall staff." -- or, if the board was
    already known dead, the code is refused "cell_unavailable" with the
    same promise. No relay moved, no door event, cells/1..16 fault
    "board_fault". Board back: board_recovered, and the same code opens the
    cell the reservation now holds. (A pickup on a dead board and recovery
    are test_flows.test_flow_board_dead_during_pickup; the other board's
    latency test_boards.test_board_offline_other_unaffected.)"""
    f = FaultFlow()
    r = f.reserve("A-F6001", "S")
    assert r["cell"] == 1, r
    # No cell on the other board to move to: the code must come back.
    # (With one, the drop-off moves there: test_flow_jammed_door_during_
    # dropoff shows a move.)
    for n in _cells_of("B"):
        assert f.lk.ctl({"op": "service", "cell": n, "in": False}).get("ok") is True
    seq0, n0, m0 = f.lk.last_seq(), f.sim.last_write_n(), f.kc.mark()
    f.sim.cmd("offline 1 on")
    rep = f.kc.code(r["code"])
    fault = f.plat_event("board_fault", after=seq0, board="A", timeout=5)
    assert fault.get("alarm") is True and fault.get("error") == "no reply (timeout)", fault
    if rep.get("ok"):
        assert rep.get("cell") == 1 and "Cell 1 is open" in rep.get("show", ""), rep
        info = f.kc.wait_notice("info", since=m0, contains=STILL_WORKS, timeout=5)
        print(f"keypad: {rep['show']!r}, then {info['show']!r}")
        f.plat_event("code_restored", after=seq0, resv=r["resv"])
        types = f.resv_types(r["resv"])
        assert types[-1] == "code_restored" and "code_used" in types, types
    else:
        assert rep.get("error") == "cell_unavailable" and STILL_WORKS in rep.get("show", ""), rep
        print(f"keypad: {rep['show']!r}")
    q = f.lk.ctl({"op": "resv", "resv": r["resv"]})
    assert q.get("state") == "reserved", f"the code is not live again: {q}"
    cell = q["cell"]
    for n in _cells_of("A"):
        f.wait_cell(n, fault="board_fault")
    assert not harness.unlocked_cells(f.sim, n0), "an offline board acted on a write"
    assert not f.coils_on()
    # While it is down the code is refused and still not spent.
    rep2 = f.refused({"op": "code", "code": r["code"]}, "cell_unavailable")
    assert STILL_WORKS in rep2["show"], rep2
    # The attempts on cells 1 and 2 are the applicant's; no door moved.
    _fault_off(f, seq0, "offline 1 off", "A", touched=(1, 2))
    assert f.door_events(seq0) == [], f"door events from a dead board: {f.door_events(seq0)}"
    dep = f.dropoff(dict(r, cell=cell))
    assert dep["resv"] == r["resv"], dep
    f.wait_coils_off()
    f.stream_is_the_ledger()


def test_fault_reply_lost_at_unlock():
    """The replies of board A stop (drop 100, corrupt crc 100, corrupt
    garbage 100) at the moment a drop-off code for cell 1 is entered, so the
    unlock write itself loses its reply. A Modbus board acts on a write
    whether or not its reply arrives (locksim does), so a write without a
    reply may have released the lock. What must hold once the replies are
    back: no relay is left energised (a lock held open for anyone: the
    coil-off is sent whether or not the write's reply came), the unlock
    waits for the door like any other (the outcome is unknown, not
    failed), and the code is not lost (its door opened under it, it
    moved to a cell on the board that answers, or it opens now). A door
    that opened while its board could not be read is reported when the
    board answers again, as forced_open: lockerd cannot tell it from a
    forced door. One fresh world per kind; the test reports all three."""
    problems = []
    for kind in ("drop 1 100", "corrupt 1 crc 100", "corrupt 1 garbage 100"):
        f = FaultFlow(name=kind.split()[2] if kind.startswith("corrupt") else "drop")
        r = f.reserve("A-F7001", "S")
        assert r["cell"] == 1, r
        seq0, n0, m0 = f.lk.last_seq(), f.sim.last_write_n(), f.kc.mark()
        f.sim.cmd(kind)
        rep = f.kc.code(r["code"])
        f.plat_event("board_fault", after=seq0, board="A", timeout=5)
        time.sleep(1.0)
        seq1 = f.lk.last_seq()
        f.sim.cmd("drop 1 0" if kind.startswith("drop") else "corrupt 1 off")
        f.plat_event("board_recovered", after=seq1, board="A", timeout=5)
        time.sleep(1.0)
        f.kc.pump(0.1)
        written = sorted({c for c, _ in harness.unlocked_cells(f.sim, n0)})
        events = [(e["seq"], e["type"], e.get("cell"), e.get("expected", e.get("error", "")))
                  for e in f.lk.events(seq0) if e["type"] not in ("board_fault",
                                                                   "board_recovered")]
        coils = f.coils_on()
        forced = [e for e in events if e[1] == "forced_open" or
                  (e[1] == "door_opened" and e[3] is False)]
        q = f.lk.ctl({"op": "resv", "resv": r["resv"]})
        what = (f"{kind}: keypad {rep.get('show')!r}; notices "
                f"{[n.get('show') for n in f.kc.notices[m0:]]}; relays written {written}; "
                f"relays still on {coils}; reservation {q.get('state')} on cell {q.get('cell')}; "
                f"events {events}")
        print(what)
        bad = []
        if coils:
            bad.append(f"relays left energised {coils}")
        # The door of cell 1 opened while its board could not be read
        # (all replies lost): lockerd learns of it only when the board
        # answers again, after the unlock had been given up, and cannot
        # tell it from a forced door, so it says forced_open. That is
        # the one alarm allowed, for that cell, after the recovery.
        recovered = [e["seq"] for e in f.lk.events(seq1) if e["type"] == "board_recovered"]
        if any(e[2] != 1 or not recovered or e[0] < recovered[0] for e in forced):
            bad.append(f"false door alarms {forced}")
        if q.get("state") == "reserved":
            # The code must work: a door opens for it now.
            try:
                _use_code(f, r["code"], collections.Counter())
            except AssertionError as e:
                bad.append(f"the restored code does not open a door: {e}")
        elif q.get("state") not in ("open", "deposited"):
            bad.append(f"the code is lost: reservation {q}")
        if bad:
            problems.append(f"{kind}: " + "; ".join(bad) + f"\n    ({what})")
        f.shutdown()
    assert not problems, ("a lost reply to an unlock write:\n  " + "\n  ".join(problems))


# ---------------------------------------------------------------------------
# Locks, doors and sensors


def test_fault_stuck_relay():
    """stuck 1 1: the relay of cell 1 takes writes but never releases the
    lock; a pickup code for cell 1 is entered. lockerd: the keypad says
    "Cell 1 is open", two pulses (unlock attempt 1 and 2, each switched off
    after 500 ms), then door_jammed {alarm, attempts 2}; a pickup cannot
    move to another cell, so code_restored and the screen is told "Cell 1
    did not open. Your code still works; please ask the hall staff."
    cells/1 retained with fault "door_jammed" and in_service false, still
    holding the pickup (state "ready"). The code is refused
    "cell_unavailable" "...your code still works" while the cell is out of
    service. Staff fix the relay and put the cell back in service (the
    platform's service command): the same code opens it and the pickup
    completes. No door event for any other cell, no relay left on.
    (Jammed drop-offs move to another cell: test_flows.
    test_flow_jammed_door_during_dropoff; test_alarms.test_jammed_door.)"""
    f = FaultFlow()
    f.add_staff("carol", "Carol C")
    ld, code = f.load_by_platform("A-F8001", "S", staff="carol")
    cell, resv = ld["cell"], ld["resv"]
    assert cell == 1, ld
    f.sim.cmd("stuck 1 1 on")
    seq0, n0, m0 = f.lk.last_seq(), f.sim.last_write_n(), f.kc.mark()
    rep = f.kc.code(code)
    assert rep.get("ok") is True and rep.get("cell") == cell and \
        f"Cell {cell} is open" in rep.get("show", ""), f"code -> {rep}"
    jam = f.plat_event("door_jammed", after=seq0, cell=cell, timeout=6)
    assert jam.get("alarm") is True and jam.get("attempts") == 2, jam
    info = f.kc.wait_notice("info", since=m0, contains=STILL_WORKS, timeout=3)
    assert f"Cell {cell} did not open" in info["show"], info
    f.plat_event("code_restored", after=seq0, resv=resv)
    assert [e.get("attempt") for e in f.lk.find_events("unlock", cell=cell, after=seq0)] == [1, 2]
    assert [c for c, _ in harness.unlocked_cells(f.sim, n0)] == [cell, cell]
    f.wait_coils_off(what="after the two pulses: ")
    st = f.wait_cell(cell, fault="door_jammed")
    assert st["in_service"] is False and st["state"] == "ready" and st["resv"] == resv, st
    rep2 = f.refused({"op": "code", "code": code}, "cell_unavailable")
    assert STILL_WORKS in rep2["show"], rep2

    f.sim.cmd("stuck 1 1 off")
    svc = f.call("service", cell=cell, **{"in": True})
    assert svc.get("ok") is True, f"service in -> {svc}"
    f.plat_event("cell_service", after=seq0, cell=cell)
    f.wait_cell(cell, fault=None, in_service=True)
    seq1 = f.open_with({"op": "code", "code": code}, cell, "pickup", "pickup")
    f.close(cell, seq1, item="take")
    f.plat_event("collected", after=seq1, resv=resv)
    assert f.resv_types(resv) == ["load_started", "code_issued", "pickup_ready", "code_used",
                                  "code_restored", "code_used", "collected"], f.resv_types(resv)
    f.no_false_doors(seq0, (cell,))
    assert [d[1] for d in f.door_events(seq0)] == ["door_opened", "door_closed"], \
        f.door_events(seq0)
    f.wait_coils_off()
    f.stream_is_the_ledger()


def test_fault_jammed_door():
    """jam 1 1 (the lock releases, the door does not move) on the only S
    cell while its drop-off code is entered, with no other cell to move to
    (cells: 1 only). lockerd: "Cell 1 is open" at the keypad, two pulses,
    door_jammed {alarm, attempts 2}, cells/1 fault "door_jammed",
    out of service; nowhere to move the drop-off, so code_restored and the
    screen is told "Cell 1 did not open. Your code still works; please ask
    the hall staff."; the code is refused "cell_unavailable" while the cell
    is out of service. Jam cleared and the cell back in service (the
    platform's service command): the same code opens cell 1 and the
    drop-off completes. (The jam with a free cell to move to is
    test_flows.test_flow_jammed_door_during_dropoff.)"""
    f = FaultFlow(cells={"1": "A:1 S"})
    r = f.reserve("A-F9001", "S")
    cell, resv = r["cell"], r["resv"]
    assert cell == 1, r
    f.sim.cmd("jam 1 1 on")
    seq0, n0, m0 = f.lk.last_seq(), f.sim.last_write_n(), f.kc.mark()
    rep = f.kc.code(r["code"])
    assert rep.get("ok") is True and f"Cell {cell} is open" in rep.get("show", ""), rep
    jam = f.plat_event("door_jammed", after=seq0, cell=cell, timeout=6)
    assert jam.get("alarm") is True and jam.get("attempts") == 2, jam
    info = f.kc.wait_notice("info", since=m0, contains=STILL_WORKS, timeout=3)
    assert f"Cell {cell} did not open" in info["show"], info
    f.plat_event("code_restored", after=seq0, resv=resv)
    assert not f.plat_events(seq0, type="reassigned"), "reassigned with no cell to go to"
    st = f.wait_cell(cell, fault="door_jammed")
    assert st["in_service"] is False and st["state"] == "reserved" and st["resv"] == resv, st
    assert [c for c, _ in harness.unlocked_cells(f.sim, n0)] == [cell, cell]
    f.wait_coils_off(what="after the two pulses: ")
    assert f.door_events(seq0) == [], f"a jammed door reported moving: {f.door_events(seq0)}"
    rep2 = f.refused({"op": "code", "code": r["code"]}, "cell_unavailable")
    assert STILL_WORKS in rep2["show"], rep2

    f.sim.cmd("jam 1 1 off")
    svc = f.call("service", cell=cell, **{"in": True})
    assert svc.get("ok") is True, f"service in -> {svc}"
    f.wait_cell(cell, fault=None, in_service=True)
    dep = f.dropoff(r)
    assert dep["cell"] == cell, dep
    assert f.resv_types(resv) == ["dropoff_reserved", "code_issued", "code_used",
                                  "code_restored", "code_used", "deposited"], f.resv_types(resv)
    f.stream_is_the_ledger()


def test_fault_flapping_sensor():
    """flap 1 1: the door input of cell 1 (reserved for a drop-off, door
    shut) reads noise for 1.5 s while another applicant completes a
    drop-off at cell 2. lockerd debounces (debounce_ms 40): what the noise
    legitimately causes is door_opened {expected false} / forced_open /
    door_closed for cell 1 alone, alternating, never two changes closer
    than the debounce, never an expected opening, never a relay (the
    statistics are test_alarms.test_debounce_flapping_sensor). Not caused:
    any door event for another cell but 2, any change to cell 1's
    reservation (the noise spends no code), a wrong end state: cells/1 ends
    door "closed", state "reserved". Then cell 1's code opens it and the
    drop-off completes."""
    f = FaultFlow()
    r1, r2 = f.reserve("A-F10001", "S"), f.reserve("A-F10002", "S")
    assert (r1["cell"], r2["cell"]) == (1, 2), (r1, r2)
    seq0, n0 = f.lk.last_seq(), f.sim.last_write_n()
    f.sim.cmd("flap 1 1 on")
    t0 = time.monotonic()
    f.dropoff(r2)
    left = 1.5 - (time.monotonic() - t0)
    if left > 0:
        time.sleep(left)
    f.sim.cmd("flap 1 1 off")
    f.wait_cell(1, door="closed", state="reserved", resv=r1["resv"])
    time.sleep(0.3)
    evs = [e for e in f.lk.events(seq0) if e.get("cell") == 1]
    kinds = [e["type"] for e in evs if e["type"] in ("door_opened", "door_closed")]
    print(f"flapping: cell 1 got {kinds.count('door_opened')} door_opened, "
          f"{kinds.count('door_closed')} door_closed, "
          f"{sum(e['type'] == 'forced_open' for e in evs)} forced_open")
    assert all(e.get("expected") is False for e in evs if e["type"] == "door_opened"), evs
    assert {e["type"] for e in evs} <= {"door_opened", "door_closed", "forced_open"}, \
        f"the chatter did more than report door changes for cell 1: {evs}"
    for a, b in zip(kinds, kinds[1:]):
        assert a != b, f"door events do not alternate: {kinds}"
    if kinds:
        assert kinds[-1] == "door_closed", kinds
    times = [_ms_of(e["time"]) for e in evs if e["type"] in ("door_opened", "door_closed")]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert not gaps or min(gaps) >= 35, f"door changes {min(gaps)} ms apart, debounce_ms 40"
    f.no_false_doors(seq0, (1, 2), what="a chattering sensor on cell 1")
    assert [c for c, _ in harness.unlocked_cells(f.sim, n0)] == [2], \
        f"relays driven: {harness.unlocked_cells(f.sim, n0)}"
    assert f.resv_types(r1["resv"]) == ["dropoff_reserved", "code_issued"], \
        f"the chatter moved cell 1's reservation: {f.resv_types(r1['resv'])}"
    dep = f.dropoff(r1)
    assert dep["cell"] == 1, dep
    f.stream_is_the_ledger()


def test_fault_forced_door():
    """force 1 7: the door of free cell 7 is broken open, then shut.
    lockerd reports on the platform's stream door_opened {cell 7, expected
    false} and forced_open {cell 7, alarm true}, cells/7 retained with door
    "open" (then "closed" with door_closed), the keypad gets the "open"
    notice "Cell 7 is open."; no relay is driven and no unlock recorded.
    Nothing else happens to any other cell: a drop-off at cell 1 during the
    break-in completes as usual, its code unaffected. (The controller's own
    view is test_alarms.test_forced_open.)"""
    f = FaultFlow()
    r = f.reserve("A-F11001", "S")
    seq0, n0, m0 = f.lk.last_seq(), f.sim.last_write_n(), f.kc.mark()
    f.sim.cmd("force 1 7")
    opened = f.plat_event("door_opened", after=seq0, cell=7, timeout=3)
    assert opened.get("expected") is False, opened
    alarm = f.plat_event("forced_open", after=seq0, cell=7)
    assert alarm.get("alarm") is True and alarm["seq"] > opened["seq"], (opened, alarm)
    st = f.wait_cell(7, door="open")
    assert st["state"] == "free" and st["fault"] is None, st
    n = f.kc.wait_notice("open", cell=7, since=m0)
    assert n.get("show") == "Cell 7 is open.", n
    dep = f.dropoff(r)
    assert dep["cell"] == 1, dep
    f.sim.cmd("close 1 7")
    f.plat_event("door_closed", after=alarm["seq"], cell=7)
    f.wait_cell(7, door="closed", state="free")
    assert [c for c, _ in harness.unlocked_cells(f.sim, n0)] == [1], \
        f"relays driven: {harness.unlocked_cells(f.sim, n0)}"
    assert not f.lk.find_events("unlock", cell=7, after=seq0), "an unlock recorded for cell 7"
    f.no_false_doors(seq0, (1, 7), what="a door forced open")
    alarms = [(e["seq"], e["type"], e.get("cell")) for e in f.lk.events(seq0) if e.get("alarm")]
    assert alarms == [(alarm["seq"], "forced_open", 7)], f"alarms: {alarms}"
    f.stream_is_the_ledger()


# ---------------------------------------------------------------------------
# A whole workload on a lossy bus


def _door_is_open(f, cell):
    unit, ch = unit_ch(cell)
    return f.sim.channel(unit, ch)["door_open"]


def _wait_door_or_word(f, cell, m0, stats, timeout=4):
    """After a keypad or staff request named `cell`: waits until that door
    is physically open (returns the cell), or the screen moves the person
    to another cell ("... is open for you instead": keeps waiting for that
    one), or says the code still works / the cell did not open (returns
    None: try again)."""
    seen = m0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _door_is_open(f, cell):
            return cell
        f.kc.pump(0.05)
        for n in f.kc.notices[seen:]:
            show = n.get("show", "")
            if n.get("notice") == "info" and "instead" in show:
                stats["moved to another cell"] += 1
                cell = n["cell"]
            elif n.get("notice") == "info" and "did not open" in show:
                stats["told it did not open"] += 1
                return None
        seen = len(f.kc.notices)
    raise AssertionError(f"cell {cell}: the door did not open within {timeout} s and the "
                         f"screen said nothing: {f.kc.notices[m0:]}")


def _use_code(f, code, stats, patience=8):
    """The person at the keypad: enters the code until a door opens, as
    the screen tells them (a refusal must say the code still works), for
    up to `patience` seconds (a board that went faulty is retried within
    board_backoff_max_ms, 1 s). Returns the cell whose door opened."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        m0 = f.kc.mark()
        rep = f.kc.code(code)
        stats["codes entered"] += 1
        if not rep.get("ok"):
            assert rep.get("error") == "cell_unavailable" and STILL_WORKS in rep.get("show", ""), \
                f"a code refused without saying it still works: {rep}"
            stats["codes refused (board faulty)"] += 1
            time.sleep(0.5)
            continue
        cell = _wait_door_or_word(f, rep["cell"], m0, stats)
        if cell is not None:
            return cell
        time.sleep(0.3)
    raise AssertionError(f"the code opened no door in {patience} s; the screen said: "
                         f"{[n.get('show') for n in f.kc.notices[-3:]]}, "
                         f"{f.kc.replies[-1].get('show')!r}")


def _staff_load(f, app, stats):
    """Staff load a certificate through the platform's signed load, again
    if the cell did not open (load_failed). Returns (cell, resv, seq)."""
    for _ in range(10):
        seq0, m0 = f.lk.last_seq(), f.kc.mark()
        r = f.call("load", sign=True, app=app, size="M", staff="carol")
        if not r.get("ok"):
            assert "no free cell" in r.get("reason", ""), f"signed load -> {r}"
            stats["loads refused (board faulty)"] += 1
            time.sleep(0.5)
            continue
        try:
            cell = _wait_door_or_word(f, r["cell"], m0, stats)
        except AssertionError:
            cell = None
        if cell is not None:
            return cell, r["resv"], seq0
        f.plat_event("load_failed", after=seq0, resv=r["resv"])
        stats["loads failed"] += 1
    raise AssertionError(f"load of {app} did not open a cell in 10 tries")


def _finish(f, cell, resv, seq0, item, done):
    """Puts the item in / takes it out, closes the door; the platform must
    hear `done` for the reservation."""
    unit, ch = unit_ch(cell)
    f.sim.cmd(f"{item} {unit} {ch}")
    harness.close_door(f.sim, cell)
    return f.plat_event(done, after=seq0, resv=resv, timeout=8)


def test_fault_workload_lossy():
    """Every board loses 5 % of its replies and corrupts (crc) another 5 %,
    the whole time, while 10 drop-offs (S cells, board A) and 5 loads plus
    5 pickups (M cells, board B) run end to end through the platform and
    the keypad. The person follows the screen (a refused code must say it
    still works; a moved cell is followed). All must complete; every event
    reaches the platform in order, gap-free, equal to the ledger; no
    forced_open and no unexpected door_opened; door events only for cells
    people used; no relay left on; every code ends deposited or collected.
    Prints the figures: replies spoiled, board faults, failed unlocks,
    refusals and re-entries."""
    stats = collections.Counter()
    f = FaultFlow(verbose=True, seed=7)
    f.add_staff("carol", "Carol C")
    seq0 = f.lk.last_seq()
    for unit in (1, 2):
        f.sim.cmd(f"corrupt {unit} crc 5")
        f.sim.cmd(f"drop {unit} 5")
    t0 = time.monotonic()
    problems, used, done = [], set(), []
    journeys = [("dropoff", i) for i in range(10)] + [("load", i) for i in range(5)]
    pickups = []
    for kind, i in journeys + [("pickup", k) for k in range(5)]:
        s0 = f.lk.last_seq()
        try:
            if kind == "dropoff":
                r = f.reserve(f"A-W{i:03d}", "S")
                cell = _use_code(f, r["code"], stats)
                used.add(cell)
                _finish(f, cell, r["resv"], s0, "put", "deposited")
                done.append((r["resv"], "deposited"))
            elif kind == "load":
                cell, resv, s1 = _staff_load(f, f"A-L{i:03d}", stats)
                used.add(cell)
                _finish(f, cell, resv, s1, "put", "pickup_ready")
                pickups.append((resv, f.pickup_code(resv, after=s1)))
            else:
                resv, code = pickups[i]
                cell = _use_code(f, code, stats)
                used.add(cell)
                _finish(f, cell, resv, s0, "take", "collected")
                done.append((resv, "collected"))
        except (AssertionError, harness.HarnessError) as e:
            evs = [(x["seq"], x["type"], x.get("cell"), x.get("expected", x.get("error", "")))
                   for x in f.lk.events(s0)]
            problems.append(f"{kind} {i}: {str(e)[:300]}\n      events: {evs}")
            # Tidy up for the next person: shut whatever stands open.
            for unit, ch in f.doors_open():
                f.sim.cmd(f"close {unit} {ch}")
            time.sleep(1.0)
    took = time.monotonic() - t0
    for unit in (1, 2):
        f.sim.cmd(f"corrupt {unit} off")
        f.sim.cmd(f"drop {unit} 0")
    wait_for(lambda: all(b["ok"] for b in f.lk.state()["boards"]), 3, what="both boards up")
    time.sleep(0.5)

    evs = f.lk.events(seq0)
    kinds = collections.Counter(e["type"] for e in evs)
    sp = _spoiled(f)
    print(f"workload: {len(done)} of 15 custody journeys done (10 drop-offs, 5 pickups) "
          f"plus 5 loads in {took:.1f} s")
    writes = f.sim_log_count(r"fc=(05|0f) .*reply (dropped|corrupted)")
    print(f"locksim: {sp['requests']} requests, {sp['dropped']} replies dropped, "
          f"{sp['corrupted']} corrupted "
          f"({(sp['dropped'] + sp['corrupted']) * 100 / max(1, sp['requests']):.1f} %), "
          f"{writes} of them replies to relay writes")
    print("unlock_failed: " + "; ".join(f"cell {e.get('cell')}: {e.get('error')}"
                                        for e in evs if e["type"] == "unlock_failed"))
    print(f"lockerd: board_fault {kinds['board_fault']}, board_recovered "
          f"{kinds['board_recovered']}, unlock {kinds['unlock']}, unlock_failed "
          f"{kinds['unlock_failed']}, reassigned {kinds['reassigned']}, code_restored "
          f"{kinds['code_restored']}, load_failed {kinds['load_failed']}, door_jammed "
          f"{kinds['door_jammed']}, forced_open {kinds['forced_open']}")
    print(f"people: {dict(stats)}")

    false_doors = [(e["seq"], e["type"], e.get("cell")) for e in evs
                   if e["type"] == "forced_open" or
                   (e["type"] == "door_opened" and e.get("expected") is not True) or
                   (e["type"] in ("door_opened", "door_closed") and e.get("cell") not in used)]
    if false_doors:
        problems.append(f"false door events: {false_doors}")
    coils = f.coils_on()
    if coils:
        problems.append(f"relays left energised (locks held open): {coils}")
    if len(done) != 15:
        problems.append(f"only {len(done)} of 15 reservations ended deposited/collected: {done}")
    try:
        f.stream_is_the_ledger()
    except (AssertionError, harness.HarnessError) as e:
        problems.append(f"the platform's stream: {e}")
    assert not problems, "the lossy workload:\n  " + "\n  ".join(problems)


# ---------------------------------------------------------------------------
# The database's disk


def _refused_for_disk(f, r, error_in_log):
    """While the database cannot be written: r's drop-off code is refused
    at the keypad ("unrecorded", "... no door was opened ...") with no relay
    write and nothing recorded; a platform reserve is refused "unrecorded"
    and a control-socket reserve "could not be recorded"; the log says why
    (the SQLite message) and that no relay was pulsed; lockerd keeps
    serving (ping, keypad status)."""
    seq0, n0, off0 = f.lk.last_seq(), f.sim.last_write_n(), f.log_size()
    rep = f.kc.code(r["code"])
    assert rep.get("ok") is False and rep.get("error") == "unrecorded", \
        f"a code that cannot be recorded -> {rep}"
    assert "no door was opened" in rep.get("show", ""), f"the screen text: {rep}"
    harness.assert_no_unlock(f.sim, n0, 0.5, "a code that could not be recorded")
    q = f.lk.ctl({"op": "resv", "resv": r["resv"]})
    assert q.get("state") == "reserved", f"the code moved on without a record: {q}"
    p = f.call("reserve", app="A-D9999", size="S")
    assert p.get("ok") is False and p.get("error") == "unrecorded" and \
        "not run" in p.get("reason", ""), f"platform reserve with the disk failing -> {p}"
    c = f.lk.ctl({"op": "reserve", "app": "A-D9998", "size": "S"})
    assert c.get("ok") is False and "could not be recorded" in c.get("error", ""), \
        f"control reserve with the disk failing -> {c}"
    assert f.lk.last_seq() == seq0, f"events recorded on a failing disk: {f.lk.events(seq0)}"
    log = f.log_since(off0)
    print("lockerd log:\n  " + "\n  ".join(log.strip().splitlines()[:4]))
    assert error_in_log in log and "no relay was pulsed" in log, \
        f"the log does not say what failed ({error_in_log!r}):\n{log}"
    assert f.lk.running(), "lockerd died"
    assert f.lk.ctl({"op": "ping"}).get("ok") is True
    assert f.kc.status().get("ok") is True, "the keypad stopped answering"
    assert not f.coils_on()
    return seq0


def _disk_recovered(f, r):
    """The same code opens its cell now and the drop-off completes; a
    platform reserve works; nothing of the refused requests was recorded;
    the platform has the whole ledger, gap-free."""
    dep = f.dropoff(r)
    assert dep["resv"] == r["resv"] and dep["cell"] == r["cell"], dep
    r2 = f.reserve("A-D0002", "S")
    assert r2["cell"] != r["cell"], r2
    apps = {e.get("app") for e in f.lk.events()}
    assert not apps & {"A-D9999", "A-D9998"}, "a refused reserve was recorded"
    f.stream_is_the_ledger()


def test_fault_disk_full():
    """lockerd's state folder on a 2 MB tmpfs that a filler file fills up
    (SQLite: "database or disk is full" on COMMIT). lockerd: the drop-off
    code is refused at the keypad with error "unrecorded" and "Sorry, the
    locker cannot record this now; no door was opened. Please try again
    later." and no relay write (it opens no door it cannot record); a
    platform reserve gets error "unrecorded" ("the command could not be
    recorded; it was not run"); the log says "database: COMMIT: database or
    disk is full" and "could not record N actions; no relay was pulsed";
    lockerd keeps running. Filler deleted: the same code opens the cell,
    the drop-off completes, gap-free ledger on the platform."""
    d = os.path.join(harness.tmpdir(), "state")
    fs = Tmpfs(d, size="2m")
    f = FaultFlow(state_dir=d)
    r = f.reserve("A-D0001", "S")
    filler, n = fs.fill()
    print(f"filled the state folder with {n >> 10} KiB")
    _refused_for_disk(f, r, "database or disk is full")
    os.unlink(filler)
    _disk_recovered(f, r)


def test_fault_disk_full_door_alarm():
    """A door forced open and shut while the disk is full: the alarm cannot
    be recorded then, but it must not be lost (invariant 3: every state
    change and its event; 8: a door seen open without an unlock is an
    alarm). Once space is back, the ledger and the platform must have
    forced_open (and the door's opening and closing) for that cell."""
    d = os.path.join(harness.tmpdir(), "state")
    fs = Tmpfs(d, size="2m")
    f = FaultFlow(state_dir=d)
    seq0, off0 = f.lk.last_seq(), f.log_size()
    filler, _ = fs.fill()
    f.sim.cmd("force 1 7")
    time.sleep(0.5)
    f.sim.cmd("close 1 7")
    time.sleep(0.5)
    log = f.log_since(off0)
    assert "database or disk is full" in log, log
    os.unlink(filler)
    try:
        alarm = f.plat_event("forced_open", after=seq0, cell=7, timeout=3)
    except harness.HarnessError as e:
        raise AssertionError(
            "a door forced open while the disk was full was not recorded once space "
            "came back (lockerd.c keeps such events pending); events since: "
            f"{[(x['seq'], x['type'], x.get('cell')) for x in f.lk.events(seq0)]}; "
            f"log: {log.strip()}") from e
    assert alarm.get("alarm") is True, alarm
    f.plat_event("door_closed", after=seq0, cell=7)
    f.stream_is_the_ledger()


def test_fault_disk_readonly():
    """The state folder's file system turns read-only under the running
    lockerd, as ext4 does on a disk error with errors=remount-ro (a small
    ext4 on a loop device; the kernel's trigger_fs_error). A tmpfs cannot
    be used for this: `mount -o remount,ro` is refused (EBUSY) while
    lockerd holds the database open for writing, and chmod does not touch
    an open file. lockerd: the code is refused "unrecorded" with "...no
    door was opened..." and no relay write; platform reserve "unrecorded";
    the log says "database: COMMIT: disk I/O error" and "no relay was
    pulsed"; it keeps running, and stops cleanly on SIGTERM. The kernel
    allows no way back to read-write short of unmounting, so recovery is
    the operator's: lockerd started on the still read-only disk refuses to
    start with a message naming the cause ("attempt to write a readonly
    database", exit status non-zero); after umount, e2fsck and mount it
    starts, and the same code opens the cell."""
    d = os.path.join(harness.tmpdir(), "state")
    fs = Ext4Loop(d)
    f = FaultFlow(state_dir=d)
    r = f.reserve("A-R0001", "S")
    fs.trigger_error()
    wait_for(fs.read_only, 2, what="the file system read-only")
    _refused_for_disk(f, r, "disk I/O error")
    last = f.lk.last_seq()
    took = f.lk.stop()
    print(f"lockerd stopped in {took:.2f} s on the read-only disk")
    rc, text = f.lk.start_expect_failure()
    assert rc != 0 and "readonly" in text, \
        f"lockerd on a read-only state folder: exit {rc}, log:\n{text}"
    print("start-up on the read-only disk: " +
          [line for line in text.splitlines() if "readonly" in line][0])
    fs.umount()
    fs.fsck()
    fs.mount()
    f.start(after=last)
    _disk_recovered(f, r)
