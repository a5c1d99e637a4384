"""Invariant 7: one sick board does not stop the bank."""

import statistics
import time

import harness
from harness import (FLASH_BASE, WRITE_OFF, WRITE_ON, Lockerd, Locksim, config, is_write,
                     open_cell, start_pair)


def _unlock_latencies(sim, lk, cells):
    """Opens each board-A cell in turn; the latency of one is from just
    before the control request to locksim's timestamp of the relay-on write
    (both CLOCK_MONOTONIC). Waits for the relay-off before the next one."""
    out = []
    for cell in cells:
        unit, coil = harness.coil_of_cell(cell)
        n0 = sim.last_write_n()
        t0 = time.monotonic()
        open_cell(lk, cell)
        on = sim.wait_write(is_write(unit, coil, WRITE_ON), after=n0, timeout=3,
                            what=f"relay-on write for cell {cell}")
        out.append(on["t"] - t0)
        sim.wait_write(is_write(unit, coil, WRITE_OFF), after=on["n"], timeout=3,
                       what=f"relay-off write for cell {cell}")
    return out


def _ms(xs):
    return "[" + ", ".join(f"{x * 1000:.1f}" for x in xs) + "] ms"


def test_board_offline_other_unaffected():
    _board_offline(rtu=False)


def test_board_offline_other_unaffected_rtu():
    """The same on one RS485 line, where both boards share the wire and a
    dead board's timeouts cost line time."""
    _board_offline(rtu=True)


def _board_offline(rtu):
    sim, lk = start_pair(rtu=rtu)
    # Medians of 8 unlocks each (all 16 cells of board A): with 5, one run
    # on a busy machine compared two handfuls of its noise.
    healthy = _unlock_latencies(sim, lk, list(range(1, 9)))

    seq0 = lk.last_seq()
    sim.cmd("offline 2 on")
    fault = lk.wait_event("board_fault", after=seq0, timeout=5, board="B")
    assert isinstance(fault.get("error"), str) and fault["error"], fault
    b = lk.board("B")
    assert b["ok"] is False and b["error"], b
    assert lk.board("A")["ok"] is True
    cells = {c["cell"]: c for c in lk.state()["cells"]}
    bad = {n: cells[n]["fault"] for n in range(17, 25) if cells[n]["fault"] != "board_fault"}
    assert not bad, f"cells of the dead board not faulted: {bad}"
    good = {n: cells[n]["fault"] for n in range(1, 17) if cells[n]["fault"] is not None}
    assert not good, f"cells of the healthy board faulted: {good}"
    r = lk.ctl({"op": "open", "cell": 17})
    assert r.get("ok") is False and r.get("error"), f"open on a dead board: {r}"

    # Measure board A again while board B is being retried with backoff.
    time.sleep(0.5)
    dead = _unlock_latencies(sim, lk, list(range(9, 17)))
    mh, md = statistics.median(healthy), statistics.median(dead)
    print(f"unlock latency, both boards healthy: median {mh * 1000:.1f} ms {_ms(healthy)}")
    print(f"unlock latency, board B offline:     median {md * 1000:.1f} ms {_ms(dead)}")
    assert md <= mh + 0.050, (f"board A unlocks are {(md - mh) * 1000:.0f} ms slower while "
                              f"board B is offline")
    assert lk.find_events("door_opened", after=seq0, expected=True).__len__() >= 5

    seq1 = lk.last_seq()
    sim.cmd("offline 2 off")
    lk.wait_event("board_recovered", after=seq1, timeout=5, board="B")
    b = lk.board("B")
    assert b["ok"] is True and b["error"] is None, b
    assert all(c["fault"] is None for c in lk.state()["cells"]), lk.state()["cells"]
    n1 = sim.last_write_n()
    open_cell(lk, 17)
    w = sim.wait_write(is_write(2, FLASH_BASE + 0), after=n1)
    assert w["value"] == 5, w
    lk.wait_event("door_opened", cell=17, after=seq1, timeout=3, expected=True)
    lk.stop()
    sim.stop()


def test_start_with_dead_board():
    """A board whose bus answers nothing at start-up does not stop lockerd
    from starting and serving the cells of the healthy bus."""
    sim = Locksim(boards=[(1, "generic-16")])
    cfg = config(sim, buses={
        "sim": {"type": "tcp", "host": "127.0.0.1", "port": sim.port, "timeout_ms": 100},
        "dead": {"type": "tcp", "host": "127.0.0.1", "port": harness.free_port(),
                 "timeout_ms": 100},
    }, boards={
        "A": {"bus": "sim", "unit": 1, "profile": "generic-16"},
        "B": {"bus": "dead", "unit": 2, "profile": "waveshare-relay-d"},
    })
    t0 = time.monotonic()
    lk = Lockerd(cfg)
    lk.wait_event("started", timeout=5)
    print(f"lockerd answered and started in {time.monotonic() - t0:.1f} s")
    lk.wait_event("board_fault", board="B", timeout=5)
    assert lk.board("B")["ok"] is False
    assert lk.board("A")["ok"] is True
    assert lk.cell(20)["fault"] == "board_fault", lk.cell(20)
    seq0, n0 = lk.last_seq(), sim.last_write_n()
    open_cell(lk, 3)
    sim.wait_write(is_write(1, 2, WRITE_ON), after=n0)
    lk.wait_event("door_opened", cell=3, after=seq0, timeout=3, expected=True)
    lk.stop()
    sim.stop()
