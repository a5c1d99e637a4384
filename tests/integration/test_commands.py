"""Platform commands over MQTT: strict decoding with errors that name the
field, replies correlated by request id, exactly-once execution with the
stored reply sent again, expiry, and signed remote open (signature,
timestamp window, nonce never seen twice), refusals raising alarms."""

import json
import os
import re
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


# ---------------------------------------------------------------------------
# Issue #21: orders only from the platform. Each test is written from one
# symptom that an attacker with a platform broker account (but not the
# platform's signing key) saw.


def _db(lk, sql, *args):
    con = sqlite3.connect(lk.db_path)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def _load_pickup(plat, sim, lk, staff="carol", app="A-50"):
    """A certificate loaded through the platform: (resv, cell, the pickup
    code as the platform received it)."""
    assert _reply(plat, _cmd(plat, "staff_add", staff=staff, name="Carol C", role="staff",
                             pin_hash=_pin_hash()))["ok"] is True
    r = _reply(plat, _cmd(plat, "load", app=app, size="S", staff=staff))
    assert r["ok"] is True, r
    lk.wait_event("door_opened", cell=r["cell"], timeout=3)
    harness.close_door(sim, r["cell"])
    ready = lk.wait_event("pickup_ready", resv=r["resv"])
    issued = lk.find_events("code_issued", resv=r["resv"])[0]
    ev = [e for e in plat.wait_events(ready["seq"]) if e["seq"] == issued["seq"]][0]
    return r["resv"], r["cell"], ev["code"]


def test_unsigned_custody_commands_are_refused():
    """Symptom 1: after a certificate was loaded, an unsigned reissue
    handed over a working pickup code (and killed the applicant's);
    unsigned reserve, cancel and service took cells for 90 days, killed
    codes and cleared faults. Now each is refused as unsigned, none runs,
    no code is in any reply, and the applicant's codes still open."""
    broker, plat, sim, lk, kc = _start_keypad()
    presv, pcell, pcode = _load_pickup(plat, sim, lk)
    drop = _reply(plat, _cmd(plat, "reserve", app="A-51", size="S"))
    assert drop["ok"] is True, drop
    out = _reply(plat, _cmd(plat, "service", cell=9, **{"in": False}))
    assert out["ok"] is True, out
    seq0, n0 = lk.last_seq(), sim.last_write_n()
    attacks = [("reissue", {"resv": presv}),
               ("reserve", {"app": "A-X", "size": "S", "valid_s": 7776000}),
               ("cancel", {"resv": drop["resv"]}),
               ("service", {"cell": 10, "in": False}),
               ("service", {"cell": 9, "in": True})]
    for op, fields in attacks:
        r = _reply(plat, _cmd(plat, op, sign=False, **fields))
        assert r["ok"] is False and r["error"] == "bad_command" and r["field"] == "ts" and \
            "must be signed" in r["reason"], (op, r)
        assert "code" not in r and "credential" not in r, (op, r)
    time.sleep(0.3)
    ran = [e["type"] for e in lk.events(seq0)]
    assert not set(ran) & {"code_reissued", "dropoff_reserved", "cancelled", "cell_service"}, ran
    assert lk.cell(9)["service"] == "out" and lk.cell(10)["service"] == "in"
    # The applicant's codes, as the platform sent them, still open.
    rep = kc.code(pcode)
    assert rep.get("ok") is True and rep.get("cell") == pcell, rep
    sim.wait_write(harness.unlock_write_pred(pcell), after=n0, what=f"relay of cell {pcell}")
    rep = kc.code(drop["code"])
    assert rep.get("ok") is True and rep.get("cell") == drop["cell"], rep


def test_signed_command_is_bound_to_its_locker():
    """Symptom 2: a signed open for locker A, published unchanged on
    locker B's topic (one platform key for the city), was run by B. Now B
    refuses it (wrong_locker, one alarm, nothing of it stored), and A,
    whose nonce B did not take, still runs it."""
    broker = Mosquitto()
    plat_a, plat_b = Platform(broker), Platform(broker, locker="locker-b")
    sim_a, sim_b = Locksim(name="sim-a"), Locksim(name="sim-b")
    lk_a = Lockerd(config(sim_a, extra=mqtt_extra(broker)), name="lockerd-a")
    cfg_b = config(sim_b, extra=mqtt_extra(broker))
    cfg_b["locker"].update(id="locker-b", state_dir=os.path.join(harness.tmpdir(), "state-b"))
    cfg_b["control"]["socket"] = os.path.join(harness.tmpdir(), "ctl-b.sock")
    lk_b = Lockerd(cfg_b, name="lockerd-b")
    for lk, plat in ((lk_a, plat_a), (lk_b, plat_b)):
        lk.wait_event("started", timeout=5)
        wait_for(lambda: plat.on("status"), 5, what="the birth")
    c = harness.command("open", "for-a-1", cell=5)
    assert c["locker"] == "test-locker"
    seq_b, n_b = lk_b.last_seq(), sim_b.last_write_n()
    plat_b.c.publish(f"{plat_b.prefix}/cmd", json.dumps(c), qos=1)
    r = _reply(plat_b, "for-a-1")
    assert r["ok"] is False and r["error"] == "wrong_locker" and r["field"] == "locker" and \
        "test-locker" in r["reason"], r
    harness.assert_no_unlock(sim_b, n_b, 0.3, "a command for another locker")
    alarms = lk_b.find_events("command_refused", after=seq_b)
    assert len(alarms) == 1 and alarms[0]["reason"] == "for another locker" and \
        alarms[0]["request_id"] == "for-a-1", alarms
    assert not lk_b.find_events("unlock", after=seq_b)
    assert not lk_b.find_events("command_executed", after=seq_b)
    assert _db(lk_b, "SELECT count(*) FROM commands WHERE request_id = 'for-a-1'") == [(0,)]
    assert _db(lk_b, "SELECT count(*) FROM nonces WHERE nonce = ?", c["nonce"]) == [(0,)]
    # The same bytes where they belong.
    n_a = sim_a.last_write_n()
    plat_a.c.publish(f"{plat_a.prefix}/cmd", json.dumps(c), qos=1)
    r = _reply(plat_a, "for-a-1")
    assert r["ok"] is True and r["cell"] == 5, r
    sim_a.wait_write(harness.unlock_write_pred(5), after=n_a, what="relay of cell 5 on A")


def test_request_id_reuse_is_refused():
    """Symptom 3: an unsigned ping (or a forged command) under request id
    R, then the platform's signed staff_revoke under R, got the ping's
    stored ok and nothing ran. Now nothing is stored for an unsigned or
    forged command, so the revoke runs; a different signed command under
    a used id is refused (request_id_reused); the same command signed
    afresh gets its stored reply."""
    broker, plat, sim, lk, kc = _start_keypad()
    assert _reply(plat, _cmd(plat, "staff_add", staff="bob", name="Bob B", role="staff",
                             pin_hash=_pin_hash()))["ok"] is True
    assert kc.login("bob", STAFF_PIN).get("ok") is True
    assert kc.logout().get("ok") is True
    assert _reply(plat, _cmd(plat, "ping", request_id="R-1"))["ok"] is True
    r = _reply(plat, _cmd(plat, "staff_revoke", request_id="R-1", staff="bob"), n=2)
    assert r["ok"] is True and r.get("revoked") is True, r
    lk.wait_event("staff_revoked", staff="bob")
    assert kc.login("bob", STAFF_PIN).get("error") == "bad_login"
    # A forged command first: refused, and it takes nothing.
    other = nacl.signing.SigningKey.generate()
    forged = harness.command("open", "R-2", key=other, cell=6)
    _cmd(plat, None, raw=json.dumps(forged))
    assert _reply(plat, "R-2")["error"] == "unauthorised"
    n0 = sim.last_write_n()
    r = _reply(plat, _cmd(plat, "open", request_id="R-2", cell=6), n=2)
    assert r["ok"] is True and r["cell"] == 6, r
    sim.wait_write(harness.unlock_write_pred(6), after=n0, what="relay of cell 6")
    lk.wait_event("door_opened", cell=6, timeout=3)
    harness.close_door(sim, 6)
    lk.wait_event("door_closed", cell=6, timeout=3)
    # Another command under R-2: refused; the same one signed afresh: the
    # stored reply, run once.
    n1, seq1 = sim.last_write_n(), lk.last_seq()
    r = _reply(plat, _cmd(plat, "open", request_id="R-2", cell=7), n=3)
    assert r["ok"] is False and r["error"] == "request_id_reused" and \
        r["field"] == "request_id", r
    r = _reply(plat, _cmd(plat, "open", request_id="R-2", cell=6), n=4)
    assert r["ok"] is True and r["cell"] == 6, r
    harness.assert_no_unlock(sim, n1, 0.3, "a reused request id")
    assert not lk.find_events("unlock", after=seq1)


def test_commands_come_only_from_the_command_topic():
    """Symptom 4: with an extra subscription in lockerd's persistent
    session (left by a client that connected with its client id), lockerd
    ran commands sent to lockers/Z/cmd, and with lockers/<id>/# it ran its
    own replies as commands, answering itself without end. Now each
    connection starts a clean session subscribed to the command topic
    alone, and anything else is not run."""
    import paho.mqtt.client as mqtt
    broker = Mosquitto()
    plat = Platform(broker)

    def intrude():
        c = mqtt.Client(client_id="test-locker", clean_session=False)
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        try:
            for t in ("lockers/Z/cmd", "lockers/test-locker/#", "#"):
                _, mid = c.subscribe(t, qos=1)
            time.sleep(0.3)
        finally:
            c.disconnect()
            c.loop_stop()

    intrude()
    sim = Locksim()
    lk = Lockerd(config(sim, extra=mqtt_extra(broker)))
    lk.wait_event("started", timeout=5)
    wait_for(lambda: plat.on("status"), 5, what="the birth")
    for k in (1, 2):
        other = json.dumps(harness.command("ping", f"z-{k}"))
        plat.c.publish("lockers/Z/cmd", other, qos=1)
        before = len(plat.on("reply"))
        _cmd(plat, "ping", request_id=f"loop-{k}")
        assert _reply(plat, f"loop-{k}")["ok"] is True
        time.sleep(1.0)
        replies = [b for b, _ in plat.on("reply")][before:]
        assert len(replies) == 1, f"{len(replies)} replies to one ping: {replies[:5]}"
        assert not _replies(plat, f"z-{k}"), "a command on another locker's topic ran"
        if k == 1:
            # The same again while lockerd runs: the intruder takes the
            # session over (lockerd is thrown off), then leaves.
            births = len(plat.on("status"))
            intrude()
            wait_for(lambda: len([b for b, _ in plat.on("status") if b.get("online")]) >
                     births, 10, what="lockerd back with a new birth")
    assert lk.running()


def test_refusals_carry_the_request_id():
    """Symptom 8: "exp": 123456789012345678901234567890 was refused as
    "not JSON (too big integer)" with request_id null. Now it names the
    field and carries the request id, as does a command nested too deep
    for the parser and one over 4096 bytes."""
    broker, plat, sim, lk = _start()
    _cmd(plat, None, raw='{"op":"open","request_id":"big-int-1",'
         '"exp":123456789012345678901234567890}')
    r = _reply(plat, "big-int-1")
    assert r["ok"] is False and r["error"] == "bad_command" and r["field"] == "exp" and \
        "too large" in r["reason"], r
    _cmd(plat, None, raw='{"request_id":"deep-1","op":"ping","exp":1,"a":' + "[" * 2100 +
         "]" * 2100 + "}")
    assert _reply(plat, "deep-1")["error"] == "bad_command"
    _cmd(plat, None, raw=json.dumps({"op": "ping", "request_id": "long-1", "exp": 1,
                                     "pad": "x" * 6000}))
    r = _reply(plat, "long-1")
    assert r["error"] == "bad_command" and "longer than 4096" in r["reason"], r


def test_deleted_command_and_nonce_rows_do_not_reopen_a_door():
    """Issue #23, symptom 5: deleting one commands row and one nonces row
    let the same signed open (same request id and nonce) open cell 9 a
    second time within its expiry. Now the signed command is in the
    ledger (command_executed), the rows are put back from it at start
    with an alarm, and the replay runs nothing."""
    broker, plat, sim, lk = _start()
    c = harness.command("open", "once-9", exp_ms=int(time.time() * 1000) + 600000, cell=9)
    n0 = sim.last_write_n()
    _cmd(plat, None, raw=json.dumps(c))
    assert _reply(plat, "once-9")["ok"] is True
    sim.wait_write(harness.unlock_write_pred(9), after=n0, what="relay of cell 9")
    lk.wait_event("door_opened", cell=9, timeout=3)
    harness.close_door(sim, 9)
    lk.wait_event("door_closed", cell=9, timeout=3)
    lk.stop()
    con = sqlite3.connect(lk.db_path)
    assert con.execute("DELETE FROM commands WHERE request_id = 'once-9'").rowcount == 1
    assert con.execute("DELETE FROM nonces WHERE nonce = ?", (c["nonce"],)).rowcount == 1
    con.commit()
    con.close()
    lk.start()
    seq0 = lk.last_seq()
    wait_for(lambda: len([b for b, _ in plat.on("status") if b.get("online")]) >= 2, 5,
             what="the second birth")
    n1 = sim.last_write_n()
    _cmd(plat, None, raw=json.dumps(c))
    r = _reply(plat, "once-9", n=2)
    harness.assert_no_unlock(sim, n1, 0.5, "a replayed open after its rows were deleted")
    assert not lk.find_events("unlock", after=seq0)
    assert r["ok"] is False and r["error"] == "unknown_outcome", r
    ex = lk.find_events("command_executed", request_id="once-9")
    assert len(ex) == 1 and ex[0]["op"] == "open" and ex[0]["nonce"] == c["nonce"] and \
        len(ex[0]["digest"]) == 64, ex
    alarm = lk.find_events("record_rejected", record="command_log")
    assert alarm and alarm[-1]["rows_restored"] == 2 and alarm[-1]["alarm"] is True, alarm


def test_mqtt_311_broker_still_works():
    """A broker that speaks only MQTT 3.1.1 refuses lockerd's MQTT 5
    CONNECT; lockerd says so once, speaks 3.1.1 from then on, and the
    link works: commands, replies, events. [mqtt] protocol = 3.1.1 goes
    there directly."""
    import brokerkit
    broker = Mosquitto()
    proxy = brokerkit.BrokerProxy(broker.port, refuse_v5=True)
    plat = Platform(broker)
    sim = Locksim()
    lk = Lockerd(config(sim, extra=mqtt_extra(broker, port=proxy.port)))
    lk.wait_event("started", timeout=5)
    wait_for(lambda: plat.on("status"), 10, what="the birth over 3.1.1")
    assert proxy.v5_refused == 1 and proxy.levels[:2] == [5, 4], (proxy.v5_refused, proxy.levels)
    with open(lk.log_path) as f:
        assert "does not speak MQTT 5; using 3.1.1" in f.read()
    n0 = sim.last_write_n()
    r = _reply(plat, _cmd(plat, "open", cell=4))
    assert r["ok"] is True, r
    sim.wait_write(harness.unlock_write_pred(4), after=n0, what="relay of cell 4")
    plat.wait_events(lk.wait_event("unlock", cell=4)["seq"])
    # Reconnects stay on 3.1.1.
    proxy.drop_all()
    wait_for(lambda: len(plat.on("status")) >= 2, 10, what="the birth after a reconnect")
    assert proxy.v5_refused == 1 and set(proxy.levels[1:]) == {4}, proxy.levels
    lk.stop()
    lk2 = Lockerd(config(sim, extra=mqtt_extra(broker, protocol="3.1.1")), name="lockerd311")
    lk2.wait_event("started", timeout=5)
    assert _reply(plat, _cmd(plat, "ping"))["ok"] is True
    with open(broker.log_path) as f:
        assert re.search(r"as test-locker \(p2, c1", f.read()), "not MQTT 3.1.1 (p2)"
