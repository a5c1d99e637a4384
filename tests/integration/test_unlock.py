"""Unlocking over Modbus TCP and RTU, and the relays-off rule at start-up."""

import time

import harness
from harness import (WRITE_OFF, WRITE_ON, FLASH_BASE, Lockerd, Locksim, config, is_write,
                     open_cell, start_pair)


def _pulse_unlock(sim, lk, cell, transport):
    """Opens a board-A cell and checks the pulse on the wire and the events."""
    unit, coil = harness.coil_of_cell(cell)
    seq0 = lk.last_seq()
    n0 = sim.last_write_n()
    open_cell(lk, cell)
    on = sim.wait_write(is_write(unit, coil, WRITE_ON), after=n0, what=f"FC05 coil {coil} on")
    off = sim.wait_write(is_write(unit, coil, WRITE_OFF), after=on["n"], timeout=3,
                         what=f"FC05 coil {coil} off")
    assert on["transport"] == transport and off["transport"] == transport, (on, off)
    pulse = off["t"] - on["t"]
    print(f"cell {cell}: relay pulse {pulse * 1000:.0f} ms (profile says 500 ms)")
    assert 0.4 <= pulse <= 1.0, f"relay pulse lasted {pulse:.3f} s, profile says 0.5 s"
    # Only this relay was energised.
    others = [w for w in sim.writes(n0) if w["n"] <= off["n"] and w.get("value") not in (0, None)
              and not (w["unit"] == unit and w["addr"] == coil)]
    assert not others, f"unexpected writes while opening cell {cell}: {others}"

    ev = lk.wait_event("unlock", cell=cell, after=seq0)
    assert ev.get("attempt") == 1, ev
    assert ev.get("reason") == "operator", f"unlock event without reason \"operator\": {ev}"
    opened = lk.wait_event("door_opened", cell=cell, after=seq0, timeout=3)
    assert opened.get("expected") is True, opened
    assert opened["seq"] > ev["seq"], (ev, opened)
    assert sim.channel(unit, cell)["door_open"] is True
    c = lk.cell(cell)
    assert c["door"] == "open", c
    return opened


def _close_and_check(sim, lk, unit, ch, cell, after):
    sim.cmd(f"close {unit} {ch}")
    closed = lk.wait_event("door_closed", cell=cell, after=after, timeout=3)
    c = lk.cell(cell)
    assert c["door"] == "closed" and c["unlocking"] is False, c
    assert c["service"] == "in" and c["fault"] is None, c
    return closed


def test_tcp_unlock_open_close():
    sim, lk = start_pair()
    st = lk.state()
    c3 = [c for c in st["cells"] if c["cell"] == 3][0]
    assert (c3["board"], c3["channel"], c3["door"]) == ("A", 3, "closed"), c3
    assert len(st["cells"]) == 24, f"expected 24 cells, got {len(st['cells'])}"
    keys = {"cell", "board", "channel", "size", "door", "item", "service", "fault", "unlocking"}
    for c in st["cells"]:
        assert keys <= set(c), f"cell entry lacks {keys - set(c)}: {c}"
    sizes = {c["cell"]: c["size"] for c in st["cells"]}
    assert (sizes[1], sizes[16], sizes[17], sizes[24]) == ("S", "S", "M", "M"), sizes
    c20 = [c for c in st["cells"] if c["cell"] == 20][0]
    assert (c20["board"], c20["channel"]) == ("B", 4), c20
    bkeys = {"name", "bus", "unit", "profile", "ok", "error"}
    for b in st["boards"]:
        assert bkeys <= set(b), f"board entry lacks {bkeys - set(b)}: {b}"
    assert [(b["name"], b["unit"], b["profile"]) for b in st["boards"]] == \
        [("A", 1, "generic-16"), ("B", 2, "waveshare-relay-d")], st["boards"]
    assert {b["name"]: b["ok"] for b in st["boards"]} == {"A": True, "B": True}, st["boards"]

    opened = _pulse_unlock(sim, lk, 3, "tcp")
    _close_and_check(sim, lk, 1, 3, 3, opened["seq"])
    # A confirmed unlock is not retried.
    time.sleep(1.0)
    unlocks = lk.find_events("unlock", cell=3)
    assert len(unlocks) == 1, f"unlock sent {len(unlocks)} times: {unlocks}"
    harness.assert_events_well_formed(lk.events())
    lk.stop()
    sim.stop()


def test_waveshare_flash_unlock():
    sim, lk = start_pair()
    seq0 = lk.last_seq()
    n0 = sim.last_write_n()
    open_cell(lk, 18)
    w = sim.wait_write(is_write(2, FLASH_BASE + 1), after=n0, what="FC05 0x0201 (flash ch 2)")
    assert w["value"] == 5, f"flash value {w['value']}, expected 5 (500 ms in 100 ms units): {w}"
    assert w["transport"] == "tcp", w
    ev = lk.wait_event("unlock", cell=18, after=seq0)
    assert ev.get("attempt") == 1, ev
    opened = lk.wait_event("door_opened", cell=18, after=seq0, timeout=3)
    assert opened.get("expected") is True, opened
    # The board times the pulse itself: no plain coil on/off for it.
    time.sleep(0.7)
    pulses = [x for x in sim.writes(n0) if x["unit"] == 2 and x["addr"] < FLASH_BASE
              and x.get("value") not in (0, None)]
    assert not pulses, f"coil pulses sent to the waveshare board: {pulses}"
    assert sim.channel(2, 2)["door_open"] is True
    _close_and_check(sim, lk, 2, 2, 18, opened["seq"])
    lk.stop()
    sim.stop()


def test_rtu_unlock_on_pty():
    # rs485 = auto on a pty: the pty refuses RS485 mode and lockerd must
    # carry on (harness.config sets rs485 = auto, baud 115200).
    sim, lk = start_pair(rtu=True)
    assert sim.rtu_path, f"locksim reported no RTU path: {sim.ready_info}"
    st = lk.state()
    assert all(b["ok"] for b in st["boards"]), st["boards"]
    opened = _pulse_unlock(sim, lk, 3, "rtu")
    _close_and_check(sim, lk, 1, 3, 3, opened["seq"])
    # The waveshare flash command is a raw request; it must work on RTU too.
    seq0, n0 = lk.last_seq(), sim.last_write_n()
    open_cell(lk, 20)
    w = sim.wait_write(is_write(2, FLASH_BASE + 3), after=n0, what="FC05 0x0203 on RTU")
    assert w["value"] == 5 and w["transport"] == "rtu", w
    lk.wait_event("door_opened", cell=20, after=seq0, timeout=3, expected=True)
    lk.stop()
    sim.stop()


def _zeroed(w, channels_of):
    """Coils a write sets to 0 as {(unit, addr)}, or None if it is not a
    relays-off write."""
    unit = w.get("unit")
    if w.get("fc") == 5 and w.get("value") == 0:
        return {(unit, w["addr"])}
    if w.get("fc") == 15:
        values = w.get("values")
        count = w.get("count", w.get("quantity", len(values) if values else None))
        if count is None:
            count = channels_of.get(unit, 0)
        if values is not None and any(values):
            return None
        if values is None and w.get("value") not in (0, None):
            return None
        return {(unit, w["addr"] + i) for i in range(count)}
    return None


def _assert_relays_off_first(sim, after, label):
    """Every relay of both boards is written to 0 before any other write."""
    channels_of = {1: 16, 2: 8}
    need = {(1, a) for a in range(16)} | {(2, a) for a in range(8)}

    def covered():
        done = set()
        for w in sim.writes(after):
            z = _zeroed(w, channels_of)
            if z is None:
                return w  # some other write came first
            done |= z
            if need <= done:
                return True
        return False
    r = harness.wait_for(covered, 5, what=f"relays-off writes ({label})")
    log = sim.writes(after)
    assert r is True, (f"{label}: write {r} came before every relay was switched off; "
                       f"write log: {log[:30]}")
    print(f"{label}: relays-off writes: "
          + ", ".join(f"u{w['unit']} fc{w['fc']} @{w['addr']}" for w in log[:8])
          + (" ..." if len(log) > 8 else ""))


def test_relays_off_at_startup():
    sim = Locksim()
    lk = Lockerd(config(sim))
    lk.wait_event("started")
    _assert_relays_off_first(sim, 0, "first start")

    # A relay left energised by a controller that died mid-pulse must be
    # switched off by the next start, before anything else.
    n0 = sim.last_write_n()
    open_cell(lk, 4)
    sim.wait_write(is_write(1, 3, WRITE_ON), after=n0)
    lk.kill9()
    n_kill = sim.last_write_n()
    ch = sim.channel(1, 4)
    assert ch["coil"] == 1, f"locksim shows coil 4 off right after the kill: {ch}"
    lk.start()
    lk.wait_event("started", after=0, timeout=5)
    _assert_relays_off_first(sim, n_kill, "restart after kill -9 mid-pulse")
    harness.wait_for(lambda: sim.channel(1, 4)["coil"] == 0, 3, what="coil 4 off in locksim")
    # locksim logs only the first bit of an FC15, so check the coils too.
    on = [(b["unit"], c["ch"]) for b in sim.state()["boards"] for c in b["channels"] if c["coil"]]
    assert not on, f"relays still energised after start-up: {on}"
    lk.stop()
    sim.stop()


def test_second_unlock_within_a_pulse_gets_a_whole_pulse():
    """A door closed and opened again while the first pulse is still on:
    the first pulse's off-write must not cut the second pulse short."""
    sim, lk = start_pair()
    unit, coil = harness.coil_of_cell(4)
    n0 = sim.last_write_n()
    open_cell(lk, 4)
    on1 = sim.wait_write(is_write(unit, coil, WRITE_ON), after=n0, what="first pulse on")
    lk.wait_event("door_opened", cell=4, timeout=3)
    sim.cmd(f"close {unit} 4")
    seq = lk.last_seq()
    # Closed and debounced well inside the 500 ms pulse; open it again.
    lk.wait_event("door_closed", cell=4, after=seq - 1, timeout=3)
    n1 = sim.last_write_n()
    open_cell(lk, 4)
    on2 = sim.wait_write(is_write(unit, coil, WRITE_ON), after=n1, what="second pulse on")
    off = sim.wait_write(is_write(unit, coil, WRITE_OFF), after=on1["n"], timeout=3,
                         what="the coil off")
    held = off["t"] - on2["t"]
    print(f"second pulse held {held * 1000:.0f} ms (first began "
          f"{(on2['t'] - on1['t']) * 1000:.0f} ms earlier)")
    assert on2["t"] - on1["t"] < 0.5, "the test did not overlap the pulses"
    assert held >= 0.45, f"the second pulse was cut to {held * 1000:.0f} ms"
