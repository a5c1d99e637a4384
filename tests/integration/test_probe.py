"""lockerd --probe: checking a lock board without starting the locker,
against locksim (over TCP and over its RTU pseudo-terminal)."""

import re

import harness
from harness import (BOARD_A_UNIT, BOARD_B_UNIT, FLASH_BASE, WRITE_OFF, WRITE_ON, Locksim,
                     Lockerd, config, is_write, run_lockerd)


def _rows(text):
    """{channel: (door, changed)} of each table in the probe's output."""
    tables, cur = [], None
    for line in text.splitlines():
        if line.strip().startswith("channel"):
            cur = {}
            tables.append(cur)
            continue
        m = re.match(r"^\s+(\d+)\s+(open|closed)\s+(\S+)(\s+\(changed\))?$", line)
        if m and cur is not None:
            cur[int(m.group(1))] = (m.group(2), bool(m.group(4)))
    return tables


def test_probe_board_from_config_pulses_one_relay():
    sim = Locksim()
    lk = Lockerd(config(sim), start=False)
    n0 = sim.last_write_n()
    r = run_lockerd(["-c", lk.config_path, "--probe", "A", "--pulse", "3"])
    print(r.stdout)
    assert r.returncode == 0, r.stderr
    assert "board A: unit 1 on bus sim (tcp 127.0.0.1:" in r.stdout, r.stdout
    before, after = _rows(r.stdout)
    assert sorted(before) == list(range(1, 17)), before
    assert all(d == "closed" for d, _ in before.values()), before
    assert after[3] == ("open", True), after
    assert all(after[c] == ("closed", False) for c in after if c != 3), after
    # locksim saw the coil go on and off again, and nothing else written.
    on = sim.wait_write(is_write(BOARD_A_UNIT, 2, WRITE_ON), after=n0)
    sim.wait_write(is_write(BOARD_A_UNIT, 2, WRITE_OFF), after=on["n"])
    assert len(sim.writes(n0)) == 2, sim.writes(n0)
    assert sim.channel(BOARD_A_UNIT, 3)["door_open"], sim.channel(BOARD_A_UNIT, 3)
    # Without --pulse: a read only.
    n1 = sim.last_write_n()
    r = run_lockerd(["-c", lk.config_path, "--probe", "B"])
    assert r.returncode == 0, r.stderr
    assert len(_rows(r.stdout)) == 1 and len(_rows(r.stdout)[0]) == 8, r.stdout
    assert sim.writes(n1) == [], "a probe without --pulse wrote to the board"
    sim.stop()


def test_probe_bus_from_command_line():
    sim = Locksim()
    n0 = sim.last_write_n()
    r = run_lockerd(["--probe", str(BOARD_B_UNIT), "--bus", f"tcp:127.0.0.1:{sim.port}",
                     "--profile", "waveshare-relay-d", "--pulse", "2"])
    print(r.stdout)
    assert r.returncode == 0, r.stderr
    assert "flash FC05 to 513 value 5" in r.stdout, r.stdout
    sim.wait_write(lambda w: w.get("unit") == BOARD_B_UNIT and w.get("fc") == 5 and
                   w.get("addr") == FLASH_BASE + 1 and w.get("value") == 5, after=n0)
    assert _rows(r.stdout)[1][2] == ("open", True), r.stdout
    sim.stop()


def test_probe_rtu():
    sim = Locksim(rtu=True, tcp=False)
    n0 = sim.last_write_n()
    r = run_lockerd(["--probe", "1", "--bus", f"rtu:{sim.rtu_path}:115200:N:1", "--pulse", "16"])
    print(r.stdout)
    assert r.returncode == 0, r.stderr
    assert f"(rtu {sim.rtu_path} 115200 8N1)" in r.stdout, r.stdout
    sim.wait_write(is_write(BOARD_A_UNIT, 15, WRITE_ON), after=n0)
    assert _rows(r.stdout)[1][16] == ("open", True), r.stdout
    sim.stop()


def test_probe_errors():
    sim = Locksim()
    lk = Lockerd(config(sim), start=False)
    cases = [
        (["--probe", "9", "--bus", f"tcp:127.0.0.1:{sim.port}"], 1, "unit 9"),
        (["--probe", "1", "--bus", "serial:/dev/ttyUSB0"], 2, "--bus must be"),
        (["--probe", "1", "--bus", "rtu:/dev/ttyUSB0:9600:X"], 2, "parity"),
        (["--probe", "300", "--bus", f"tcp:127.0.0.1:{sim.port}"], 2, "unit"),
        (["-c", lk.config_path, "--probe", "Z"], 2, "no [board Z]"),
        (["-c", lk.config_path, "--probe", "B", "--pulse", "9"], 2, "has 8 channels"),
        (["--pulse", "1"], 2, "go with --probe"),
        (["--probe", "1", "--bus", "rtu:/nonexistent/tty"], 1, "cannot connect"),
    ]
    for args, rc, words in cases:
        r = run_lockerd(args)
        print(f"  {' '.join(args)} -> {r.returncode}: {r.stderr.strip()[-160:]}")
        assert r.returncode == rc, (args, r.returncode, r.stderr)
        assert words in r.stderr, (args, r.stderr)
    assert sim.writes() == [], "a failed probe wrote to a board"
    sim.stop()
