"""Platform commands over MQTT: strict decoding with errors that name the
field, replies correlated by request id, exactly-once execution with the
stored reply sent again, expiry, and signed remote open (signature,
timestamp window, nonce never seen twice), refusals raising alarms."""

import json
import time

import nacl.encoding
import nacl.signing

import harness
from harness import (Lockerd, Locksim, Mosquitto, Platform, config, mqtt_extra, wait_for)

KEY = nacl.signing.SigningKey.generate()
PK_HEX = KEY.verify_key.encode(encoder=nacl.encoding.HexEncoder).decode()


def _start(**mqtt_keys):
    broker = Mosquitto()
    plat = Platform(broker)
    sim = Locksim()
    keys = {"platform_key": PK_HEX}
    keys.update(mqtt_keys)
    lk = Lockerd(config(sim, extra=mqtt_extra(broker, **keys)))
    lk.wait_event("started", timeout=5)
    wait_for(lambda: plat.on("status"), 5, what="the birth")
    return broker, plat, sim, lk


_n = [0]


def _cmd(plat, op, sign=False, exp_in=30, raw=None, **fields):
    """Publishes a command; returns its request id."""
    _n[0] += 1
    rid = fields.pop("request_id", f"r-{time.time_ns()}-{_n[0]}")
    if raw is not None:
        payload = raw
    else:
        c = {"op": op, "request_id": rid, "exp": int(time.time() * 1000) + exp_in * 1000}
        c.update(fields)
        if sign:
            c.setdefault("ts", int(time.time() * 1000))
            c.setdefault("nonce", f"n{time.time_ns()}x{_n[0]}")
            canon = json.dumps({k: v for k, v in c.items() if k != "sig"},
                               sort_keys=True, separators=(",", ":"), ensure_ascii=True)
            sig = KEY.sign(canon.encode()).signature
            c.setdefault("sig", nacl.encoding.URLSafeBase64Encoder.encode(sig)
                         .decode().rstrip("="))
        payload = json.dumps(c)
    plat.c.publish(f"{plat.prefix}/cmd", payload, qos=1)
    return rid


def _replies(plat, rid):
    return [b for b, _ in plat.on("reply") if isinstance(b, dict) and b.get("request_id") == rid]


def _reply(plat, rid, n=1, timeout=5):
    return wait_for(lambda: len(_replies(plat, rid)) >= n and _replies(plat, rid), timeout,
                    what=f"reply to {rid}")[n - 1]


def test_reserve_over_mqtt_once_only():
    broker, plat, sim, lk = _start()
    rid = _cmd(plat, "reserve", app="A-7", size="M")
    r = _reply(plat, rid)
    assert r["ok"] is True and r["state"] == "reserved" and len(r["code"]) == 10, r
    seq = lk.last_seq()
    # Delivered twice (a QoS 1 redelivery or a platform retry): run once.
    _cmd(plat, "reserve", app="A-7", size="M", request_id=rid)
    again = _reply(plat, rid, n=2)
    assert again["ok"] is True and again["resv"] == r["resv"], again
    assert "code" not in again and again.get("code_withheld") is True, \
        f"the repeat reply must not carry a code kept at rest: {again}"
    time.sleep(0.3)
    assert not lk.find_events("dropoff_reserved", after=seq), "the repeat ran again"
    # And the code works at the keypad.
    kc = harness.kiosk(lk)
    assert kc.code(r["code"]).get("ok") is True


def test_bad_commands_name_the_field():
    broker, plat, sim, lk = _start()
    cases = [
        ({"app": "A-1", "size": "X"}, "size"),
        ({"app": "A-1", "size": "S", "colour": "red"}, "colour"),
        ({"app": 12, "size": "S"}, "app"),
        ({"size": "S"}, "app"),
        ({"app": "A-1", "size": "S", "valid_s": 5}, "valid_s"),
    ]
    for fields, field in cases:
        rid = _cmd(plat, "reserve", **fields)
        r = _reply(plat, rid)
        assert r["ok"] is False and r["error"] == "bad_command" and r.get("field") == field, \
            (fields, r)
    rid = _cmd(plat, "launch", x=1)
    r = _reply(plat, rid)
    assert r.get("field") == "op" and "reserve" in r["reason"], r
    big = json.dumps({"op": "ping", "request_id": "big-1", "exp": 1, "pad": "x" * 5000})
    _cmd(plat, None, raw=big)
    r = _reply(plat, "big-1")
    assert r["error"] == "bad_command" and "longer" in r["reason"], r
    _cmd(plat, None, raw='{"op":"ping","request_id":"nest-1","exp":1,"a":' + "[" * 100 + "]" * 100 + "}")
    r = _reply(plat, "nest-1")
    assert r["error"] == "bad_command", r
    assert lk.running()


def test_expired_command_is_not_run():
    broker, plat, sim, lk = _start()
    seq = lk.last_seq()
    rid = _cmd(plat, "reserve", app="A-2", size="S", exp_in=-5)
    r = _reply(plat, rid)
    assert r["ok"] is False and r["error"] == "expired", r
    assert not lk.find_events("dropoff_reserved", after=seq)


def test_signed_remote_open():
    broker, plat, sim, lk = _start()
    n0 = sim.last_write_n()
    rid = _cmd(plat, "open", sign=True, cell=5)
    r = _reply(plat, rid)
    assert r["ok"] is True and r["cell"] == 5, r
    ev = lk.wait_event("unlock", cell=5)
    assert ev["reason"] == "remote", ev
    sim.wait_write(harness.is_write(1, 4, harness.WRITE_ON), after=n0, what="cell 5 relay")
    lk.wait_event("door_opened", cell=5, timeout=3)
    harness.close_door(sim, 5)
    lk.wait_event("door_closed", cell=5, timeout=3)


def test_unsigned_forged_stale_replayed_open_refused():
    broker, plat, sim, lk = _start()
    seq0, n0 = lk.last_seq(), sim.last_write_n()
    results = {}
    # Unsigned.
    rid = _cmd(plat, "open", cell=6)
    results["unsigned"] = _reply(plat, rid)
    # Forged: signed, then a field changed.
    rid = _cmd(plat, "open", sign=True, cell=6, sig=None)  # placeholder, replaced below
    results["unsigned-null-sig"] = _reply(plat, rid)
    other = nacl.signing.SigningKey.generate()
    c = {"op": "open", "request_id": "forged-1", "exp": int(time.time() * 1000) + 30000,
         "cell": 6, "ts": int(time.time() * 1000), "nonce": "forged-nonce-0001"}
    canon = json.dumps(c, sort_keys=True, separators=(",", ":"))
    c["sig"] = nacl.encoding.URLSafeBase64Encoder.encode(
        other.sign(canon.encode()).signature).decode().rstrip("=")
    _cmd(plat, None, raw=json.dumps(c))
    results["other key"] = _reply(plat, "forged-1")
    # Stale.
    rid = _cmd(plat, "open", sign=True, cell=6, ts=int(time.time() * 1000) - 3600 * 1000)
    results["stale"] = _reply(plat, rid)
    # Replayed nonce: a good command, then the same nonce again.
    rid = _cmd(plat, "open", sign=True, cell=7, nonce="nonce-once-000001")
    assert _reply(plat, rid)["ok"] is True
    lk.wait_event("door_opened", cell=7, timeout=3)
    harness.close_door(sim, 7)
    lk.wait_event("door_closed", cell=7, timeout=3)
    rid = _cmd(plat, "open", sign=True, cell=6, nonce="nonce-once-000001")
    results["replayed"] = _reply(plat, rid)
    for what, r in results.items():
        assert r["ok"] is False, (what, r)
    assert results["unsigned"]["field"] == "ts", results["unsigned"]
    assert results["other key"]["error"] == "unauthorised", results["other key"]
    assert results["stale"]["error"] == "stale", results["stale"]
    assert results["replayed"]["error"] == "replayed", results["replayed"]
    # No relay for cell 6, and the refusals are alarms.
    assert not [w for w in sim.writes(n0) if w.get("unit") == 1 and w.get("addr") == 5
                and w.get("value") == harness.WRITE_ON], "cell 6 was pulsed"
    alarms = lk.find_events("command_refused", after=seq0)
    assert len(alarms) >= 3 and all(a.get("alarm") is True for a in alarms), alarms


def test_unknown_outcome_after_a_crash_is_not_rerun():
    broker, plat, sim, lk = _start()
    lk.stop()
    # A command recorded as started, as a crash between the record and
    # the reply leaves it.
    import sqlite3
    db = sqlite3.connect(lk.db_path)
    db.execute("INSERT INTO commands (request_id, op, state, at) VALUES ('crashed-1', "
               "'reserve', 'started', 0)")
    db.commit()
    db.close()
    lk.start()
    lk.wait_event("started", after=lk.last_seq() - 1, timeout=5)
    wait_for(lambda: [b for b, _ in plat.on("status") if isinstance(b, dict)
                      and b.get("online") and b.get("boot") == 2], 5, what="the second birth")
    seq = lk.last_seq()
    _cmd(plat, "reserve", app="A-9", size="S", request_id="crashed-1")
    r = _reply(plat, "crashed-1")
    assert r["ok"] is False and r["error"] == "unknown_outcome", r
    time.sleep(0.3)
    assert not lk.find_events("dropoff_reserved", after=seq)
