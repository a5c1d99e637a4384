"""Invariant 9 on the control socket: bad input gets a clear error and
changes nothing."""

import json
import socket
import time

import harness
from harness import start_pair


def test_control_bad_input():
    sim, lk = start_pair()
    seq0, n0 = lk.last_seq(), sim.last_write_n()
    cases = [
        ("not json at all", None),
        ('{"op":"open","cell":3', None),           # truncated JSON
        ('[1,2,3]', None),                         # not an object
        ('{"cell":3}', "op"),                      # no op
        ('{"op":"frobnicate"}', "frobnicate"),     # unknown op
        ('{"op":"open"}', "cell"),                 # missing cell
        ('{"op":"open","cell":99}', None),         # unknown cell
        ('{"op":"open","cell":0}', None),
        ('{"op":"open","cell":"three"}', None),    # wrong type
        ('{"op":"service","cell":3}', "in"),       # missing "in"
        ('{"op":"service","cell":99,"in":false}', None),
        ('{"op":"events","after":"x"}', None),
    ]
    for line, word in cases:
        raw = lk.ctl_raw(line)
        r = json.loads(raw)
        print(f"  {line} -> {raw}")
        assert r.get("ok") is False, f"{line!r} was accepted: {r}"
        assert isinstance(r.get("error"), str) and r["error"], f"{line!r}: no error text: {r}"
        if word:
            assert word in r["error"], f"{line!r}: error {r['error']!r} does not name {word!r}"
        # The same connection stays usable.
        assert lk.ctl({"op": "ping"}).get("ok") is True

    # A huge line must not take the daemon down.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(lk.socket_path)
    try:
        s.sendall(b'{"op":"' + b"x" * 200000 + b'"}\n')
        try:
            s.recv(4096)
        except OSError:
            pass
    except OSError:
        pass
    finally:
        s.close()
    lk.client.close()
    assert lk.ctl({"op": "ping"}).get("ok") is True

    # Nothing changed: no new events, no relay driven, every cell in service.
    assert lk.events(seq0) == [], lk.events(seq0)
    assert not [w for w in sim.writes(n0) if w.get("value") not in (0, None)]
    st = lk.state()
    assert all(c["service"] == "in" and c["fault"] is None for c in st["cells"]), st
    lk.stop()
    sim.stop()


def test_open_refusals():
    """Out-of-service cells and unlocks already in progress are refused
    with a reason, and the refusal drives no relay."""
    sim, lk = start_pair()
    seq0, n0 = lk.last_seq(), sim.last_write_n()
    assert lk.ctl({"op": "service", "cell": 4, "in": False}) == {"ok": True}
    ev = lk.wait_event("cell_service", cell=4, after=seq0)
    assert ev.get("in") is False, ev
    c = lk.cell(4)
    assert c["service"] == "out" and c["fault"] is None, c
    r = lk.ctl({"op": "open", "cell": 4})
    assert r.get("ok") is False and r.get("error"), r
    print(f"  open of an out-of-service cell: {r['error']!r}")
    assert lk.ctl({"op": "service", "cell": 4, "in": True}) == {"ok": True}
    assert lk.cell(4)["service"] == "in"
    assert not [w for w in sim.writes(n0) if w.get("value") not in (0, None)], sim.writes(n0)

    # Two opens back to back: the second is refused while the first runs.
    harness.open_cell(lk, 4)
    r = lk.ctl({"op": "open", "cell": 4})
    assert r.get("ok") is False and r.get("error"), r
    print(f"  second open while unlocking: {r['error']!r}")
    lk.wait_event("door_opened", cell=4, after=seq0, timeout=3, expected=True)
    time.sleep(0.7)
    pulses = [w for w in sim.writes(n0) if w.get("value") == harness.WRITE_ON]
    assert len(pulses) == 1, f"expected one relay pulse, saw {pulses}"
    assert len(lk.find_events("unlock", cell=4, after=seq0)) == 1
    lk.stop()
    sim.stop()
