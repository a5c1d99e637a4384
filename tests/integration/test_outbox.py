"""The platform link's outbox: every ledger event reaches the platform over
MQTT, in sequence order, and survives broker outages and kill -9 of
lockerd (DESIGN.md invariant 3); the retained status tells births, clean
stops and lost connections apart by boot counter."""

import sqlite3
import time

import harness
from harness import (Lockerd, Locksim, Mosquitto, Platform, config, mqtt_extra, open_cell,
                     run_lockerd, wait_for)


def _start(broker, **mqtt_keys):
    sim = Locksim()
    lk = Lockerd(config(sim, extra=mqtt_extra(broker, **mqtt_keys)))
    lk.wait_event("started", timeout=5)
    return sim, lk


def _open_close(sim, lk, cell):
    open_cell(lk, cell)
    lk.wait_event("door_opened", cell=cell, after=lk.last_seq() - 3, timeout=3)
    harness.wait_for(lambda: not lk.cell(cell)["unlocking"], 3, what="unlock settled")
    time.sleep(0.6)   # the relay pulse ends
    sim.cmd(f"close 1 {cell}")
    lk.wait_event("door_closed", cell=cell, after=lk.last_seq() - 3, timeout=3)


def _undelivered(lk):
    db = sqlite3.connect(f"file:{lk.db_path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT count(*) FROM events WHERE delivered = 0").fetchone()[0]
    finally:
        db.close()


def _assert_same_ledger(lk, got):
    """What the platform got is the ledger, seq by seq, bodies equal apart
    from the transport fields."""
    ledger = {e["seq"]: e for e in lk.events()}
    for e in got:
        body = {k: v for k, v in e.items() if k not in ("replayed", "code")}
        assert body == ledger[e["seq"]], f"event {e['seq']} differs:\n{body}\n{ledger[e['seq']]}"


def test_events_reach_the_platform_in_order_with_birth():
    broker = Mosquitto()
    plat = Platform(broker)
    sim, lk = _start(broker)
    for cell in (1, 2, 3):
        _open_close(sim, lk, cell)
    last = lk.last_seq()
    got = plat.wait_events(last)
    seqs = [e["seq"] for e in plat.events()]
    assert seqs == sorted(seqs), f"out of order: {seqs}"
    assert [e["seq"] for e in got] == list(range(1, last + 1))
    _assert_same_ledger(lk, got)
    assert all(e.get("locker") == "test-locker" and e.get("sig") and e.get("prev")
               for e in got), got[:3]
    wait_for(lambda: _undelivered(lk) == 0, 5, what="every event marked delivered")
    births = [b for b, _ in plat.on("status") if isinstance(b, dict) and b.get("online")]
    assert births and births[-1]["boot"] == 1, plat.on("status")
    # The platform side verifies the chain it received with lockerd's tool
    # of record (the same ledger the locker has).
    assert run_lockerd(["-c", lk.config_path, "--verify-ledger"]).returncode == 0
    lk.stop()
    bye = wait_for(lambda: [b for b, r in plat.on("status")
                            if isinstance(b, dict) and b.get("online") is False], 5,
                   what="online:false on a clean stop")
    assert bye[-1].get("boot") == 1 and bye[-1].get("why") == "stopped", bye


def test_broker_outage_backlog_drains_in_order():
    broker = Mosquitto()
    plat = Platform(broker)
    sim, lk = _start(broker)
    _open_close(sim, lk, 1)
    before = lk.last_seq()
    plat.wait_events(before)
    broker.stop()
    for cell in (2, 3, 4, 5):
        _open_close(sim, lk, cell)
    during = lk.last_seq()
    assert _undelivered(lk) >= during - before, "events were marked delivered with no broker"
    time.sleep(1.5)
    broker.start()
    got = plat.wait_events(during, timeout=20)
    assert [e["seq"] for e in got] == list(range(1, during + 1))
    seqs = [e["seq"] for e in plat.events()]
    assert seqs == sorted(seqs), f"the backlog arrived out of order: {seqs}"
    backlog = [e for e in got if e["seq"] > before]
    assert all(e.get("replayed") is True for e in backlog), \
        [e for e in backlog if not e.get("replayed")]
    _assert_same_ledger(lk, got)
    wait_for(lambda: _undelivered(lk) == 0, 10, what="the backlog marked delivered")
    # Live again: new events flow at once.
    _open_close(sim, lk, 6)
    plat.wait_events(lk.last_seq())


def test_kill9_loses_no_event():
    broker = Mosquitto()
    plat = Platform(broker)
    sim, lk = _start(broker, inflight=4)
    for cell in (1, 2):
        open_cell(lk, cell)
    # Killed with events committed and maybe in flight.
    lk.kill9()
    for n in range(3):
        lk.start()
        lk.wait_event("started", after=lk.last_seq() - 1, timeout=5)
        _open_close(sim, lk, 3 + n)
        if n < 2:
            lk.kill9()
    last = lk.last_seq()
    got = plat.wait_events(last, timeout=20)
    assert [e["seq"] for e in got] == list(range(1, last + 1)), "a gap in what arrived"
    _assert_same_ledger(lk, got)
    wait_for(lambda: _undelivered(lk) == 0, 10, what="every event marked delivered")
    # The will of a killed boot says which boot it was.
    wills = [b for b, _ in plat.on("status") if isinstance(b, dict) and
             b.get("online") is False and b.get("why") == "connection lost"]
    assert wills and all(isinstance(w.get("boot"), int) for w in wills), plat.on("status")


def _cell_states(plat, n):
    return [b for b, r in plat.on(f"cells/{n}") if isinstance(b, dict)]


def test_retained_cell_state_follows_custody():
    """lockers/<id>/cells/<n> is retained, published on change with a
    growing revision, and says state, size, door, occupancy and fault."""
    broker = Mosquitto()
    plat = Platform(broker)
    sim, lk = _start(broker)
    kc = harness.kiosk(lk)
    wait_for(lambda: len(_cell_states(plat, 24)) >= 1, 5, what="every cell published once")
    first = _cell_states(plat, 3)[-1]
    assert first["state"] == "free" and first["door"] == "closed" and \
        first["occupied"] is False and first["fault"] is None and first["size"] == "S", first
    r = harness.reserve(lk, "A-1", "S")
    cell = r["cell"]
    wait_for(lambda: _cell_states(plat, cell)[-1]["state"] == "reserved", 5,
             what=f"cell {cell} reserved on MQTT")
    assert _cell_states(plat, cell)[-1]["resv"] == r["resv"]
    assert kc.code(r["code"]).get("ok") is True
    lk.wait_event("door_opened", cell=cell, timeout=3)
    harness.close_door(sim, cell)
    lk.wait_event("deposited", cell=cell, timeout=3)
    last = wait_for(lambda: [s for s in _cell_states(plat, cell) if s["state"] == "deposited"],
                    5, what=f"cell {cell} deposited on MQTT")[-1]
    assert last["occupied"] is True and last["door"] == "closed", last
    revs = [s["rev"] for s in _cell_states(plat, cell)]
    assert revs == sorted(revs) and len(set(revs)) == len(revs), f"revisions: {revs}"
    # A dead board: every cell on it reports the fault.
    sim.cmd("offline 2 on")
    wait_for(lambda: _cell_states(plat, 20)[-1]["fault"] == "board_fault", 10,
             what="board B's cells report board_fault")
    sim.cmd("offline 2 off")
    wait_for(lambda: _cell_states(plat, 20)[-1]["fault"] is None, 10,
             what="board B's cells recover")
    # After a restart the revision keeps growing, and the retained copy a
    # newcomer gets is the newest.
    before = _cell_states(plat, cell)[-1]["rev"]
    lk.restart()
    lk.wait_event("started", after=lk.last_seq() - 1, timeout=5)
    late = Platform(broker, client_id="late-platform")
    got = wait_for(lambda: _cell_states(late, cell), 5, what="the retained cell state")
    assert got[-1]["rev"] > before and got[-1]["state"] == "deposited", (before, got)
