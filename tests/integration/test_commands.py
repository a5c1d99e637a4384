"""Platform commands over MQTT: strict decoding with errors that name the
field, replies correlated by request id, exactly-once execution with the
stored reply sent again, expiry, and signed remote open (signature,
timestamp window, nonce never seen twice), refusals raising alarms."""

import json
import sqlite3
import time

import nacl.encoding
import nacl.signing

import harness
from harness import (Lockerd, Locksim, Mosquitto, Platform, config, mqtt_extra, wait_for)

KEY = harness.platform_key()
PK_HEX = harness.platform_key_hex()


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


def _cmd(plat, op, sign=None, exp_in=30, raw=None, topic=None, **fields):
    """Publishes a command; returns its request id. Signed (with the
    target locker) when sign is True, or None and the op must be."""
    _n[0] += 1
    rid = fields.pop("request_id", f"r-{time.time_ns()}-{_n[0]}")
    if raw is not None:
        payload = raw
    else:
        now = int(time.time() * 1000)
        sig = fields.pop("sig", "")
        c = harness.command(op, rid, exp_ms=now + exp_in * 1000, sign=sign, now_ms=now,
                            **fields)
        if sig != "":           # a test's own (bad) signature
            c["sig"] = sig
        if sig is None:
            del c["sig"]
        payload = json.dumps(c)
    plat.c.publish(topic or f"{plat.prefix}/cmd", payload, qos=1)
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
    broker, plat, sim, lk = _start(refused_alarm_s=1)
    seq0, n0 = lk.last_seq(), sim.last_write_n()
    results = {}
    # Unsigned.
    rid = _cmd(plat, "open", sign=False, cell=6)
    results["unsigned"] = _reply(plat, rid)
    # Forged: signed, then a field changed.
    rid = _cmd(plat, "open", sign=True, cell=6, sig=None)  # placeholder, replaced below
    results["unsigned-null-sig"] = _reply(plat, rid)
    other = nacl.signing.SigningKey.generate()
    c = harness.command("open", "forged-1", key=other, cell=6, nonce="forged-nonce-0001")
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
    # No relay for cell 6, and the refusals are alarms: the first at once,
    # the other two counted into one more at the end of the window
    # ([mqtt] refused_alarm_s, 1 s here).
    assert not [w for w in sim.writes(n0) if w.get("unit") == 1 and w.get("addr") == 5
                and w.get("value") == harness.WRITE_ON], "cell 6 was pulsed"
    first = lk.wait_event("command_refused", after=seq0)
    assert first["alarm"] is True and first["count"] == 1 and \
        first["reason"] == "bad signature" and first["request_id"] == "forged-1", first
    more = lk.wait_event("command_refused", after=first["seq"], timeout=5)
    assert more["alarm"] is True and more["count"] == 2 and \
        more["reasons"] == {"stale timestamp": 1, "replayed nonce": 1}, more
    assert len(lk.find_events("command_refused", after=seq0)) == 2


def test_unknown_outcome_after_a_crash_is_not_rerun():
    broker, plat, sim, lk = _start()
    lk.stop()
    # A command recorded as started, as a crash between the record and
    # the reply leaves it.
    import sqlite3
    db = sqlite3.connect(lk.db_path)
    db.execute("INSERT INTO commands (request_id, op, state, at) VALUES ('crashed-1', "
               "'reserve', 'started', ?)", (int(time.time() * 1000),))
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


# ---------------------------------------------------------------------------
# Staff accounts and pickups assigned by the platform (signed commands).

STAFF_PIN = "246810"


def _pin_hash(pin=STAFF_PIN):
    import nacl.pwhash
    return nacl.pwhash.argon2id.str(pin.encode(), opslimit=3,
                                    memlimit=8 << 20).decode()


def _start_keypad():
    """Broker, platform, locksim and lockerd with the keypad socket."""
    broker = Mosquitto()
    plat = Platform(broker)
    sim = Locksim()
    extra = harness.custody_extra()
    extra.update(mqtt_extra(broker, platform_key=PK_HEX))
    lk = Lockerd(config(sim, extra=extra))
    lk.wait_event("started", timeout=5)
    wait_for(lambda: plat.on("status"), 5, what="the birth")
    return broker, plat, sim, lk, harness.kiosk(lk)


def test_staff_provisioned_and_revoked_by_signed_command():
    broker, plat, sim, lk, kc = _start_keypad()
    seq0 = lk.last_seq()
    # Refused: unsigned, a hash this board could not afford, a bad role.
    bad = [
        (dict(staff="bob", name="Bob B", role="staff", pin_hash=_pin_hash()), False, "ts"),
        (dict(staff="bob", name="Bob B", role="staff",
              pin_hash=_pin_hash().replace("m=8192", "m=65537")), True, "pin_hash"),
        (dict(staff="bob", name="Bob B", role="staff",
              pin_hash=_pin_hash().replace("argon2id", "argon2i")), True, "pin_hash"),
        (dict(staff="bob", name="Bob B", role="boss", pin_hash=_pin_hash()), True, "role"),
        (dict(staff="bob b", name="Bob B", role="staff", pin_hash=_pin_hash()), True, "staff"),
    ]
    for fields, sign, field in bad:
        r = _reply(plat, _cmd(plat, "staff_add", sign=sign, **fields))
        assert r["ok"] is False and r["error"] == "bad_command" and r["field"] == field, \
            (field, r)
    assert kc.login("bob", STAFF_PIN).get("error") == "bad_login"

    rid = _cmd(plat, "staff_add", sign=True, staff="bob", name="Bob B", role="staff",
               pin_hash=_pin_hash())
    r = _reply(plat, rid)
    assert r["ok"] is True and r["staff"] == "bob" and r["replaced"] is False, r
    added = lk.wait_event("staff_added", after=seq0)
    assert added["staff"] == "bob" and added["role"] == "staff" and added["by"] == "platform", \
        added
    assert "pin" not in json.dumps(added), f"the ledger must not carry the PIN hash: {added}"
    ev = [e for e in plat.wait_events(added["seq"]) if e["seq"] == added["seq"]]
    assert ev and ev[0]["type"] == "staff_added", ev
    # The account works at the keypad.
    rep = kc.login("bob", STAFF_PIN)
    assert rep.get("ok") is True and rep.get("name") == "Bob B", rep

    # Revoked while logged in: the session ends at once, the log-in fails.
    con = sqlite3.connect(lk.db_path)
    before = con.execute("SELECT body, sig FROM staff WHERE id = 'bob'").fetchone()
    con.close()
    m0 = kc.mark()
    rid = _cmd(plat, "staff_revoke", sign=True, staff="bob")
    r = _reply(plat, rid)
    assert r["ok"] is True and r["revoked"] is True, r
    kc.wait_notice("session_ended", since=m0)
    out = lk.wait_event("staff_logout", after=added["seq"])
    assert out["staff"] == "bob" and out["why"] == "revoked", out
    lk.wait_event("staff_revoked", after=added["seq"], staff="bob")
    assert kc.login("bob", STAFF_PIN).get("error") == "bad_login"
    # Revoked again under a new request id (a platform retry): done
    # already, said so, nothing recorded twice; an unknown id is refused.
    seq1 = lk.last_seq()
    r = _reply(plat, _cmd(plat, "staff_revoke", sign=True, staff="bob"))
    assert r["ok"] is True and r.get("already") is True, r
    time.sleep(0.2)
    assert not lk.find_events("staff_revoked", after=seq1)
    r = _reply(plat, _cmd(plat, "staff_revoke", sign=True, staff="nobody"))
    assert r["ok"] is False and r["error"] == "refused" and r["field"] == "staff", r

    # The account's row from before the revocation, put back by hand: it
    # is signed by this locker, but older than the ledger says.
    lk.stop()
    con = sqlite3.connect(lk.db_path)
    con.execute("UPDATE staff SET body = ?, sig = ? WHERE id = 'bob'", before)
    con.commit()
    con.close()
    lk.start()
    kc = harness.kiosk(lk)
    assert kc.login("bob", STAFF_PIN).get("error") == "bad_login"
    with open(lk.log_path, errors="replace") as f:
        assert "put back by hand" in f.read()
    # Signed provisioning again brings the account back (a decision of
    # the platform, in the ledger).
    r = _reply(plat, _cmd(plat, "staff_add", sign=True, staff="bob", name="Bob B",
                          role="admin", pin_hash=_pin_hash("13579135")))
    assert r["ok"] is True and r["role"] == "admin", r
    assert kc.login("bob", "13579135").get("role") == "admin"
    assert harness.verify_ledger(lk).returncode == 0


def test_platform_assigns_a_pickup():
    broker, plat, sim, lk, kc = _start_keypad()
    assert _reply(plat, _cmd(plat, "staff_add", sign=True, staff="carol", name="Carol C",
                             role="staff", pin_hash=_pin_hash()))["ok"] is True
    # Unsigned, or for someone who is not staff here: refused, no door.
    n0, seq0 = sim.last_write_n(), lk.last_seq()
    r = _reply(plat, _cmd(plat, "load", sign=False, app="A-40", size="M", staff="carol"))
    assert r["error"] == "bad_command" and r["field"] == "ts", r
    r = _reply(plat, _cmd(plat, "load", sign=True, app="A-40", size="M", staff="mallory"))
    assert r["ok"] is False and r["error"] == "refused" and r["field"] == "staff", r
    harness.assert_no_unlock(sim, n0, settle=0.3, what="a refused load")
    assert not lk.find_events("load_started", after=seq0)

    rid = _cmd(plat, "load", sign=True, app="A-40", size="S", staff="carol")
    r = _reply(plat, rid)
    assert r["ok"] is True and r["kind"] == "pickup" and r["state"] == "loading" \
        and r["app"] == "A-40" and r["staff"] == "carol", r
    assert "due" not in r, f"a pickup has no due time before it is loaded: {r}"
    cell, resv = r["cell"], r["resv"]
    sim.wait_write(harness.unlock_write_pred(cell), after=n0, what=f"relay of cell {cell}")
    u = lk.wait_event("unlock", cell=cell, after=seq0)
    assert u["reason"] == "staff_load", u
    lk.wait_event("door_opened", cell=cell, after=seq0, timeout=3)
    # Staff put the certificate in and close the door: the pickup code
    # reaches the platform once, on the event stream.
    harness.close_door(sim, cell)
    ready = lk.wait_event("pickup_ready", cell=cell, after=seq0, resv=resv)
    issued = lk.find_events("code_issued", resv=resv)
    assert len(issued) == 1
    seen = [e for e in plat.wait_events(ready["seq"]) if e["seq"] == issued[0]["seq"]]
    code = seen[0].get("code")
    assert isinstance(code, str) and len(code) == 10, seen
    # The applicant collects with it.
    seq1, n1 = lk.last_seq(), sim.last_write_n()
    rep = kc.code(code)
    assert rep.get("ok") is True and rep.get("cell") == cell and rep.get("purpose") == "pickup", rep
    sim.wait_write(harness.unlock_write_pred(cell), after=n1, what=f"relay of cell {cell}")
    lk.wait_event("door_opened", cell=cell, after=seq1, timeout=3)
    harness.close_door(sim, cell)
    lk.wait_event("collected", cell=cell, after=seq1, resv=resv)
    # A second identical delivery of the load command runs nothing again.
    _cmd(plat, "load", request_id=rid, sign=True, app="A-40", size="S", staff="carol")
    again = _reply(plat, rid, n=2)
    assert again["resv"] == resv, again
    time.sleep(0.3)
    assert len(lk.find_events("load_started", resv=resv)) == 1
