"""Door alarms: jammed lock, forced door, door left open, flapping sensor."""

import datetime
import time

import harness
from harness import WRITE_ON, is_write, open_cell, start_pair


def test_jammed_door():
    sim, lk = start_pair()
    sim.cmd("jam 1 5 on")
    seq0, n0 = lk.last_seq(), sim.last_write_n()
    open_cell(lk, 5)
    first = sim.wait_write(is_write(1, 4, WRITE_ON), after=n0, what="first unlock pulse")
    second = sim.wait_write(is_write(1, 4, WRITE_ON), after=first["n"], timeout=4,
                            what="retry unlock pulse")
    gap = second["t"] - first["t"]
    print(f"retry came {gap * 1000:.0f} ms after the first pulse (unlock_confirm_ms 800)")
    assert gap >= 0.75, f"retried after {gap:.3f} s, before unlock_confirm_ms (0.8 s) ran out"
    jam = lk.wait_event("door_jammed", cell=5, after=seq0, timeout=4)
    assert jam.get("alarm") is True, jam
    attempts = [e.get("attempt") for e in lk.find_events("unlock", cell=5, after=seq0)]
    assert attempts == [1, 2], f"unlock attempts {attempts}, expected [1, 2]"
    assert not lk.find_events("door_opened", cell=5, after=seq0)

    c = lk.cell(5)
    assert c["service"] == "out" and c["fault"] == "door_jammed", c
    assert c["unlocking"] is False, c
    n1 = sim.last_write_n()
    r = lk.ctl({"op": "open", "cell": 5})
    assert r.get("ok") is False and isinstance(r.get("error"), str) and r["error"], r
    print(f"open of the jammed cell refused: {r['error']!r}")
    time.sleep(0.3)
    assert not [w for w in sim.writes(n1) if w.get("value") == WRITE_ON], \
        f"refused open still pulsed: {sim.writes(n1)}"

    # Staff fix the lock and take the cell back into service.
    sim.cmd("jam 1 5 off")
    seq1 = lk.last_seq()
    r = lk.ctl({"op": "service", "cell": 5, "in": True})
    assert r.get("ok") is True, r
    ev = lk.wait_event("cell_service", cell=5, after=seq1)
    assert ev.get("in") is True, ev
    c = lk.cell(5)
    assert c["service"] == "in" and c["fault"] is None, c
    open_cell(lk, 5)
    lk.wait_event("door_opened", cell=5, after=seq1, timeout=3, expected=True)
    lk.stop()
    sim.stop()


def test_forced_open():
    sim, lk = start_pair()
    seq0, n0 = lk.last_seq(), sim.last_write_n()
    sim.cmd("force 1 7")
    alarm = lk.wait_event("forced_open", cell=7, after=seq0, timeout=3)
    assert alarm.get("alarm") is True, alarm
    opened = lk.wait_event("door_opened", cell=7, after=seq0, timeout=3)
    assert opened.get("expected") is False, opened
    assert lk.cell(7)["door"] == "open"
    assert not lk.find_events("unlock", after=0), "an unlock event was recorded"
    on = [w for w in sim.writes() if w.get("value") not in (0, None)]
    assert not on, f"a relay was driven although nobody asked: {on}"
    sim.cmd("close 1 7")
    lk.wait_event("door_closed", cell=7, after=alarm["seq"], timeout=3)
    # Nothing else raised an alarm.
    others = [e for e in lk.events(seq0) if e.get("alarm") and e.get("cell") != 7]
    assert not others, others
    lk.stop()
    sim.stop()


def _ms_of(iso):
    t = datetime.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ")
    return round(t.replace(tzinfo=datetime.timezone.utc).timestamp() * 1000)


def test_debounce_flapping_sensor():
    """A sensor that chatters must not look like an unlocked door.

    locksim's flap makes every read of the input an independent coin toss,
    so with poll_ms 20 a level that holds for debounce_ms (40) is common:
    several door changes per second are a correct outcome of debouncing,
    and "no door_opened at all" would be a flaky assertion.
    What is robust: the cell was never unlocked, so no door_opened may say
    expected=true and no relay may be driven; lockerd stays up; reported
    changes alternate open/closed and end closed once the chatter stops (as
    the door physically is). And the debounce itself: a new level must hold
    debounce_ms before it is reported, and it can only start holding after
    the previous change was reported (otherwise that change would not have
    held), so two reported changes are never less than debounce_ms apart,
    whatever the random pattern and the scheduling jitter. We allow 5 ms
    for the millisecond rounding of event times. Without debouncing,
    changes would come one poll (20 ms) apart.
    """
    sim, lk = start_pair()
    seq0, n0 = lk.last_seq(), sim.last_write_n()
    sim.cmd("flap 1 11 on")
    t0 = time.monotonic()
    time.sleep(2.0)
    sim.cmd("flap 1 11 off")
    flap_s = time.monotonic() - t0
    assert lk.ctl({"op": "ping"}).get("ok") is True
    harness.wait_for(lambda: lk.cell(11)["door"] == "closed", 3,
                     what="cell 11 to settle closed after the chatter")
    time.sleep(0.3)
    evs = [e for e in lk.events(seq0) if e.get("cell") == 11]
    kinds = [e["type"] for e in evs if e["type"] in ("door_opened", "door_closed")]
    opened = [e for e in evs if e["type"] == "door_opened"]
    print(f"flapping {flap_s:.1f} s: {len(opened)} door_opened, "
          f"{kinds.count('door_closed')} door_closed, "
          f"{sum(1 for e in evs if e['type'] == 'forced_open')} forced_open for cell 11")
    assert all(e.get("expected") is False for e in opened), \
        f"a chattering sensor produced an expected door opening: {opened}"
    assert not [e for e in evs if e["type"] == "unlock"], evs
    assert not [w for w in sim.writes(n0) if w.get("value") not in (0, None)], sim.writes(n0)
    bound = int(flap_s * 1000 / 40) + 2
    assert len(kinds) <= bound, f"{len(kinds)} door changes in {flap_s:.1f} s > bound {bound}"
    for a, b in zip(kinds, kinds[1:]):
        assert a != b, f"door events do not alternate: {kinds}"
    if kinds:
        assert kinds[0] == "door_opened" and kinds[-1] == "door_closed", kinds
    times = [_ms_of(e["time"]) for e in evs if e["type"] in ("door_opened", "door_closed")]
    gaps = [b - a for a, b in zip(times, times[1:])]
    if gaps:
        print(f"smallest gap between door changes: {min(gaps)} ms")
        assert min(gaps) >= 35, f"door changes {min(gaps)} ms apart, debounce_ms is 40 ({gaps})"
    assert lk.running()
    lk.stop()
    sim.stop()


def test_door_left_open():
    t = harness.default_timing()
    t.update(door_left_open_s=5, door_left_open_repeat_s=5)     # the shortest allowed
    sim, lk = start_pair(timing=t)
    seq0 = lk.last_seq()
    open_cell(lk, 2)
    opened = lk.wait_event("door_opened", cell=2, after=seq0, timeout=3)
    t_open = time.monotonic()
    a1 = lk.wait_event("door_left_open", cell=2, after=opened["seq"], timeout=9)
    t1 = time.monotonic()
    a2 = lk.wait_event("door_left_open", cell=2, after=a1["seq"], timeout=9)
    t2 = time.monotonic()
    print(f"door_left_open after {t1 - t_open:.1f} s (open_s {a1.get('open_s')}), "
          f"again after {t2 - t1:.1f} s (open_s {a2.get('open_s')})")
    assert a1.get("alarm") is True and a2.get("alarm") is True, (a1, a2)
    assert t1 - t_open >= 4.5, f"first alarm after {t1 - t_open:.1f} s, door_left_open_s is 5"
    assert t2 - t1 >= 4.5, f"repeat after {t2 - t1:.1f} s, door_left_open_repeat_s is 5"
    assert 5 <= a1.get("open_s", -1) <= 7, a1
    assert 10 <= a2.get("open_s", -1) <= 12, a2
    sim.cmd("close 1 2")
    lk.wait_event("door_closed", cell=2, after=a2["seq"], timeout=3)
    lk.stop()
    sim.stop()
