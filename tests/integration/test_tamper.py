"""Custody that survives its own database (issue 23): the database file is
edited with sqlite3, or replaced by an older copy, between two runs of the
real lockerd, while the device key stays secret. Each test is one way of
doing it, and shows what lockerd and the platform's tool make of it.

* a restored older database: held (no door, nothing recorded), the birth
  names its head, lockerctl watch raises a rollback, and a signed
  restore_ack resumes it after the platform's last seq with every live
  code replaced; the whole state folder restored (mark and all): the
  platform's tool sees the rollback;
* freshness, liveness and revocation decided by unsigned columns
  (events.resv, events.staff, reservations.active);
* a removed signature and an edited event: never signed again;
* the undelivered tail deleted;
* the key file missing, or another locker's;
* an undelivered plain code edited.
"""

import json
import os
import re
import shutil
import sqlite3

import harness
from harness import (add_staff, close_door, kiosk, reserve, start_custody, unlock_write_pred,
                     verify_ledger, wait_for)
from test_lockerctl import (Watch, _fake_event, _go, _keygen, _public_key, _start,
                            lockerctl, reply_of)

PIN = "246810"


def _db(lk, *stmts):
    """Runs statements (sql, args) on the stopped locker's database."""
    con = sqlite3.connect(lk.db_path)
    try:
        out = None
        for st in stmts:
            sql, args = (st, ()) if isinstance(st, str) else st
            out = con.execute(sql, args).fetchall()
        con.commit()
        return out
    finally:
        con.close()


def _rows(lk, sql, args=()):
    con = sqlite3.connect(f"file:{lk.db_path}?mode=ro", uri=True)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def _log_since(lk, off):
    with open(lk.log_path, errors="replace") as f:
        f.seek(off)
        return f.read()


def _copy_db(lk, dst):
    """The database files of a stopped lockerd (not its mark)."""
    os.makedirs(dst, exist_ok=True)
    for sfx in ("", "-wal"):
        if os.path.exists(lk.db_path + sfx):
            shutil.copy2(lk.db_path + sfx, os.path.join(dst, "lockerd.db" + sfx))


def _restore_db(lk, src):
    for sfx in ("", "-wal", "-shm"):
        try:
            os.unlink(lk.db_path + sfx)
        except FileNotFoundError:
            pass
        if os.path.exists(os.path.join(src, "lockerd.db" + sfx)):
            shutil.copy2(os.path.join(src, "lockerd.db" + sfx), lk.db_path + sfx)


def _dropoff(sim, lk, kc, r):
    seq0, n0 = lk.last_seq(), sim.last_write_n()
    rep = kc.code(r["code"])
    assert rep.get("ok") is True and rep.get("cell") == r["cell"], rep
    sim.wait_write(unlock_write_pred(r["cell"]), after=n0, what=f"relay of cell {r['cell']}")
    lk.wait_event("door_opened", cell=r["cell"], after=seq0, timeout=3)
    close_door(sim, r["cell"])
    return lk.wait_event("deposited", cell=r["cell"], after=seq0, resv=r["resv"])


def _refused(sim, kc, code, what):
    n0 = sim.last_write_n()
    rep = kc.code(code)
    harness.assert_no_unlock(sim, n0, 0.4, what=what)
    assert rep.get("ok") is False, f"{what}: {rep}"
    return rep


def _births(plat):
    return [b for b, _ in plat.on("status") if isinstance(b, dict) and b.get("online")]


# ---------------------------------------------------------------------------


def test_restored_database_is_held_until_restore_ack():
    """Symptom 1: a copy of the database from before a drop-off, put back
    (the mark beside it stays): the spent code must not open the cell,
    seqs must not go out again as other events, the boot counter must not
    repeat, and --verify-ledger must not say ok."""
    broker = harness.Mosquitto()
    pk = _keygen(broker.port)
    plat, sim, lk = _start(broker, pk)
    lkey = _public_key(lk)
    watch = Watch(broker.port, "--verify", "--locker-key", lkey)
    kc = kiosk(lk)
    r = reserve(lk, "A-R1")
    plat.wait_events(lk.last_seq())
    lk.stop()
    backup = os.path.join(harness.tmpdir(), "backup")
    _copy_db(lk, backup)
    boot_then = _births(plat)[-1]["boot"]

    _go(lk, plat)
    kc.reconnect()
    _dropoff(sim, lk, kc, r)
    last = lk.last_seq()
    plat.wait_events(last)
    lk.stop()
    _restore_db(lk, backup)
    off = os.path.getsize(lk.log_path)
    n_births = len(_births(plat))
    lk.start()
    kc.reconnect()
    rep = _refused(sim, kc, r["code"], "the spent code on the restored database")
    print(f"the spent code on the restored database: {rep}")
    wait_for(lambda: len(_births(plat)) > n_births, 5, what="the held locker's birth")
    birth = _births(plat)[-1]
    print(f"birth of the held locker: {birth}")
    log = _log_since(lk, off)
    assert "behind this locker's last known head" in log and "HELD" in log, log
    assert birth.get("held") and birth.get("head_seq") < last and \
        birth.get("mark_seq") == last, birth
    assert birth["boot"] > boot_then + 1, f"the boot counter went back: {birth} after {boot_then}"
    assert lk.last_seq() == birth["head_seq"], "a held locker recorded something"
    v = verify_ledger(lk)
    print(f"--verify-ledger on the restored copy: {v.returncode} {v.stderr.strip()}")
    assert v.returncode == 1 and "behind the locker's mark" in v.stderr, \
        f"--verify-ledger passed a database behind its mark: {v.stdout}{v.stderr}"
    wait_for(lambda: "ROLLBACK" in watch.out() and "HELD" in watch.out(), 5,
             what="lockerctl watch raising the rollback")
    print("\n".join(ln for ln in watch.out().splitlines() if "!!!" in ln))

    # The platform holds seq 1..last: it acknowledges, the locker resumes.
    a = lockerctl(broker.port, "restore-ack", "--seq", str(last), expect=0)
    ack = reply_of(a)
    assert ack.get("ok") is True and ack.get("resumed") == last + 1 and \
        ack.get("from_seq") == birth["head_seq"] and ack.get("reissued") == 1, ack
    restored = lk.wait_event("restored", after=birth["head_seq"])
    assert restored["seq"] == last + 1 and restored.get("alarm") is True and \
        restored.get("from_seq") == birth["head_seq"] and restored.get("mark_seq") == last, \
        restored
    new = lk.wait_event("code_reissued", after=last, resv=r["resv"])
    _refused(sim, kc, r["code"], "the code of before the restore, after it")
    v = verify_ledger(lk)
    assert v.returncode == 0, f"--verify-ledger after the restore: {v.stdout}{v.stderr}"
    plat.wait_events(birth["head_seq"])
    wait_for(lambda: f"event {new['seq']} code_reissued" in watch.out(), 5,
             what="the new code at the platform")
    out = watch.out()
    after = out[out.index(f"event {last + 1} restored"):]
    assert "BROKEN CHAIN" not in after and "GAP" not in after, after
    lk.stop()
    sim.stop()


def test_restored_state_folder_is_a_rollback_at_the_platform():
    """The whole state folder put back (the mark with it: only the
    platform can tell): the birth's head is behind what the platform
    holds, and the next events reuse known seqs; lockerctl watch and
    verify call both a rollback, not a duplicate."""
    broker = harness.Mosquitto()
    pk = _keygen(broker.port)
    plat, sim, lk = _start(broker, pk)
    lkey = _public_key(lk)
    watch = Watch(broker.port, "--verify", "--locker-key", lkey)
    kc = kiosk(lk)
    r = reserve(lk, "A-R2")
    plat.wait_events(lk.last_seq())
    lk.stop()
    folder = os.path.join(harness.tmpdir(), "state-copy")
    shutil.copytree(lk.state_dir, folder)
    _go(lk, plat)
    kc.reconnect()
    _dropoff(sim, lk, kc, r)
    last = lk.last_seq()
    plat.wait_events(last)
    lk.stop()
    shutil.rmtree(lk.state_dir)
    shutil.copytree(folder, lk.state_dir)
    n_events = len(plat.on("events"))
    _go(lk, plat)
    wait_for(lambda: "ROLLBACK: the locker's ledger ends at seq" in watch.out(), 5,
             what="lockerctl watch raising the rollback from the birth")
    wait_for(lambda: "ROLLBACK at seq" in watch.out(), 5,
             what="lockerctl watch raising the rollback from a reused seq")
    print("\n".join(ln for ln in watch.out().splitlines() if "ROLLBACK" in ln))
    # Everything the platform received, as it came: verify says rollback.
    wait_for(lambda: len(plat.on("events")) > n_events, 5, what="the events after the restart")
    got = os.path.join(harness.tmpdir(), "received.jsonl")
    with open(got, "w") as f:
        for b, _ in plat.on("events"):
            f.write(json.dumps(b) + "\n")
    v = lockerctl(broker.port, "verify", got, "--locker-key", lkey, expect=1)
    print(v.stdout.strip())
    assert "ROLLBACK at seq" in v.stdout, v.stdout
    lk.stop()
    sim.stop()


def test_reservation_freshness_is_not_read_from_events_resv():
    """Symptom 2, reservations: the row as reserved (signed by the device
    itself) put back after the drop-off, with events.resv cleared on the
    later events, must not make the spent code open the cell again."""
    sim, lk, kc = start_custody()
    r = reserve(lk, "A-F1")
    old = _rows(lk, "SELECT body, sig FROM reservations WHERE id = ?", (r["resv"],))[0]
    old_seq = json.loads(old[0])["last_seq"]
    _dropoff(sim, lk, kc, r)
    lk.stop()
    cleared = _db(lk, ("UPDATE reservations SET active = 1, body = ?, sig = ? WHERE id = ?",
                       old + (r["resv"],)),
                  ("UPDATE events SET resv = NULL WHERE resv = ? AND seq > ? RETURNING seq",
                   (r["resv"], old_seq)))
    print(f"events.resv cleared on seqs {[s for s, in cleared]}")
    seq0 = max(s for s, in _rows(lk, "SELECT seq FROM events"))
    lk.start()
    kc.reconnect()
    rep = _refused(sim, kc, r["code"], "the spent code after its older row was put back")
    print(f"the spent code -> {rep}")
    rej = lk.find_events("record_rejected", after=seq0)
    print([(e.get("record"), e.get("id"), e.get("reason")) for e in rej])
    assert any(e.get("record") == "reservation" and e.get("id") == str(r["resv"]) and
               "older than its ledger" in e.get("reason", "") for e in rej), rej
    assert any(e.get("record") == "ledger index" for e in rej), rej
    # The index was put right from the signed events.
    assert _rows(lk, "SELECT count(*) FROM events WHERE resv = ? AND seq > ?",
                 (r["resv"], old_seq))[0][0] == len(cleared)
    lk.stop()
    sim.stop()


def test_revoked_admin_is_not_revived_by_events_staff():
    """Symptom 2, staff: an admin provisioned and revoked by the platform;
    the row from before the revocation put back and events.staff cleared
    on the revocation: the admin must not log in (and open cell 7)."""
    broker = harness.Mosquitto()
    pk = _keygen(broker.port)
    plat, sim, lk = _start(broker, pk)
    kc = kiosk(lk)
    r = lockerctl(broker.port, "staff-add", "boss", "--name", "Boss", "--role", "admin",
                  "--pin", PIN, expect=0)
    assert reply_of(r).get("ok") is True
    row = _rows(lk, "SELECT body, sig FROM staff WHERE id = 'boss'")[0]
    assert kc.login("boss", PIN).get("ok") is True
    kc.logout()
    assert reply_of(lockerctl(broker.port, "staff-revoke", "boss", expect=0)).get("ok") is True
    lk.stop()
    cleared = _db(lk, ("UPDATE staff SET body = ?, sig = ? WHERE id = 'boss'", row),
                  "UPDATE events SET staff = NULL WHERE type = 'staff_revoked' RETURNING seq")
    assert len(cleared) == 1, cleared
    seq0 = max(s for s, in _rows(lk, "SELECT seq FROM events"))
    _go(lk, plat)
    kc.reconnect()
    rep = kc.login("boss", PIN)
    print(f"the revoked admin logs in -> {rep}")
    assert rep.get("ok") is False and rep.get("error") == "bad_login", \
        f"a revoked admin came back by an unsigned column: {rep}"
    n0 = sim.last_write_n()
    assert kc.request({"op": "open", "cell": 7}).get("ok") is False
    harness.assert_no_unlock(sim, n0, 0.3, what="cell 7 for the revoked admin")
    rej = lk.find_events("record_rejected", after=seq0)
    print([(e.get("record"), e.get("id"), e.get("reason")) for e in rej])
    assert any(e.get("record") == "staff" and e.get("id") == "boss" for e in rej), rej
    lk.stop()
    sim.stop()


def test_cleared_active_flag_is_an_alarm_not_a_lost_dropoff():
    """Symptom 2, reservations.active = 0 on a deposited drop-off: staff
    still retrieve it (the ledger says it is deposited), with an alarm."""
    sim, lk, kc = start_custody()
    add_staff(lk, "alice", PIN, name="Alice A")
    r = reserve(lk, "A-F2")
    _dropoff(sim, lk, kc, r)
    lk.stop()
    _db(lk, ("UPDATE reservations SET active = 0 WHERE id = ?", (r["resv"],)))
    seq0 = max(s for s, in _rows(lk, "SELECT seq FROM events"))
    lk.start()
    kc.reconnect()
    assert kc.login("alice", PIN).get("ok") is True
    n0 = sim.last_write_n()
    rep = kc.request({"op": "retrieve"})
    print(f"retrieve after active = 0 -> {rep}")
    assert rep.get("ok") is True and rep.get("cell") == r["cell"], \
        f"a deposited drop-off was forgotten: {rep}"
    sim.wait_write(unlock_write_pred(r["cell"]), after=n0, what="the deposited cell")
    rej = lk.find_events("record_rejected", after=seq0)
    assert any(e.get("record") == "reservation" and e.get("id") == str(r["resv"]) and
               "not marked active" in e.get("reason", "") for e in rej), rej
    assert _rows(lk, "SELECT active FROM reservations WHERE id = ?", (r["resv"],)) == [(1,)]
    lk.stop()
    sim.stop()


def test_removed_signature_and_edited_event_are_never_signed_again():
    """Symptom 3: a forced_open rewritten as an operator unlock and the
    last event's sig removed. lockerd must not seal the ledger as it now
    stands: nothing is signed again, the edit is refused (held), and
    --verify-ledger names it. Then the benign half alone: only the last
    sig removed, and an unsigned row appended: alarms, the row moved out
    of the ledger, and the ledger goes on from its last good event."""
    sim, lk, kc = start_custody()
    sim.cmd("force 1 7")
    forced = lk.wait_event("forced_open", cell=7)
    sim.cmd("close 1 7")
    lk.wait_event("door_closed", cell=7, after=forced["seq"])
    reserve(lk, "A-S1")
    lk.stop()
    pristine = os.path.join(harness.tmpdir(), "pristine")
    _copy_db(lk, pristine)
    (k, body), = _rows(lk, "SELECT seq, body FROM events WHERE type = 'forced_open'")
    o = json.loads(body)
    o.update(type="unlock", reason="remote", attempt=1)
    del o["alarm"]
    edited = json.dumps(o, separators=(",", ":"))
    (n, last), = _rows(lk, "SELECT seq, body FROM events ORDER BY seq DESC LIMIT 1")
    unsigned = json.loads(last)
    del unsigned["sig"]
    unsigned = json.dumps(unsigned, separators=(",", ":"))
    _db(lk, ("UPDATE events SET body = ?, type = 'unlock' WHERE seq = ?", (edited, k)),
        ("UPDATE events SET body = ? WHERE seq = ?", (unsigned, n)))
    off = os.path.getsize(lk.log_path)
    lk.start()
    log = _log_since(lk, off)
    assert "sealed" not in log, log
    assert _rows(lk, "SELECT body FROM events WHERE seq IN (?, ?) ORDER BY seq", (k, n)) == \
        [(edited,), (unsigned,)], "lockerd signed edited rows again"
    assert "was edited" in log and "HELD" in log, log
    assert lk.last_seq() == n, "a held locker recorded something"
    lk.stop()
    v = verify_ledger(lk)
    print(f"--verify-ledger: {v.stderr.strip()}")
    assert v.returncode == 1 and f"seq {k}:" in v.stderr, v.stderr

    # Only the last signature removed, and a row appended by hand.
    _restore_db(lk, pristine)
    fake = dict(json.loads(last), seq=n + 1, type="unlock", cell=7, reason="remote")
    _db(lk, ("UPDATE events SET body = ? WHERE seq = ?", (unsigned, n)),
        ("INSERT INTO events (seq, time, type, cell, body) VALUES (?, 0, 'unlock', 7, ?)",
         (n + 1, json.dumps(fake))))
    off = os.path.getsize(lk.log_path)
    lk.start()
    log = _log_since(lk, off)
    assert "sealed" not in log and "HELD" not in log, log
    rej = lk.find_events("record_rejected", after=n - 1)
    print([(e.get("seq"), e.get("id"), e.get("reason")) for e in rej])
    assert rej and rej[0]["seq"] == n + 1, f"the ledger did not go on from seq {n}: {rej}"
    assert any(e.get("id") == f"seq {n + 1}-{n + 1}" for e in rej), rej
    assert any(e.get("id") == f"seq {n}" and "signature is missing" in e["reason"] for e in rej)
    assert _rows(lk, "SELECT seq, reason FROM events_rejected")[0][0] == n + 1
    assert _rows(lk, "SELECT body FROM events WHERE seq = ?", (n,)) == [(unsigned,)]
    lk.stop()
    sim.stop()


def test_deleted_undelivered_tail_is_seen():
    """Symptom 4: the last three events, never delivered, deleted."""
    sim, lk, kc = start_custody()
    for i in range(3):
        reserve(lk, f"A-T{i}")
    lk.stop()
    (n,), = _rows(lk, "SELECT max(seq) FROM events")
    _db(lk, ("DELETE FROM events WHERE seq > ?", (n - 3,)))
    v = verify_ledger(lk)
    print(f"--verify-ledger without the tail: {v.returncode} {v.stderr.strip()}")
    assert v.returncode == 1 and f"ends at seq {n - 3}, behind the locker's mark at seq {n}" \
        in v.stderr, v.stdout + v.stderr
    off = os.path.getsize(lk.log_path)
    lk.start()
    log = _log_since(lk, off)
    assert f"ends at seq {n - 3}, behind this locker's last known head, seq {n}" in log, log
    assert lk.ctl({"op": "reserve", "app": "A-T9", "size": "S"}).get("ok") is False
    assert lk.last_seq() == n - 3, "a held locker recorded something"
    lk.stop()
    sim.stop()


def test_missing_or_foreign_key_file_is_refused():
    """Symptom 6: the key file removed, then replaced by another locker's:
    start-up stops with the path and what to do; no key is made over a
    ledger."""
    sim, lk, kc = start_custody()
    reserve(lk, "A-K1")
    lk.stop()
    key = os.path.join(lk.state_dir, "device.key")
    with open(key) as f:
        ours = f.read()
    os.unlink(key)
    rc, err = lk.start_expect_failure()
    print(f"without its key: exit {rc}: {err.strip().splitlines()[-1]}")
    assert rc == 1 and key in err and "Restore the key file" in err, err
    assert not os.path.exists(key), "lockerd made a new key over a ledger"
    # Another locker's key.
    other = harness.config(sim)
    other["locker"]["state_dir"] = os.path.join(harness.tmpdir(), "other")
    olk = harness.Lockerd(other, name="other", start=False)
    assert harness.run_lockerd(["-c", olk.config_path, "--public-key"]).returncode == 0
    shutil.copy(os.path.join(olk.state_dir, "device.key"), key)
    os.chmod(key, 0o600)
    rc, err = lk.start_expect_failure()
    print(f"with another locker's key: exit {rc}")
    assert rc == 1 and "does not verify the ledger" in err and key in err, err
    with open(key, "w") as f:
        f.write(ours)
    lk.start()
    lk.stop()
    sim.stop()


def test_edited_undelivered_code_is_seen_by_the_platform():
    """Symptom 7: a pickup code waiting for the platform (its broker down)
    changed in events.secret: the signed code_issued binds the real one
    (code_mac), and lockerctl watch refuses the changed one."""
    port = harness.free_port()
    pk = _keygen(port)
    sim = harness.Locksim()
    cfg = harness.config(sim, extra=harness.custody_extra())
    cfg["mqtt"] = {"host": "127.0.0.1", "port": port, "keepalive_s": 5,
                   "reconnect_min_ms": 100, "reconnect_max_ms": 1000, "platform_key": pk}
    lk = harness.Lockerd(cfg)
    lkey = _public_key(lk)
    kc = kiosk(lk)
    add_staff(lk, "alice", PIN, name="Alice A")
    assert kc.login("alice", PIN).get("ok") is True
    seq0 = lk.last_seq()
    rep = kc.request({"op": "load", "size": "S", "app": "P-C1"})
    assert rep.get("ok") is True, rep
    lk.wait_event("door_opened", cell=rep["cell"], after=seq0, timeout=3)
    close_door(sim, rep["cell"])
    issued = lk.wait_event("code_issued", after=seq0, resv=rep["resv"])
    lk.stop()
    (code, body), = _rows(lk, "SELECT secret, body FROM events WHERE seq = ?", (issued["seq"],))
    assert re.fullmatch(r"[0-9a-f]{64}", json.loads(body).get("code_mac", "")), \
        f"the signed event does not bind its code: {body}"
    forged = "".join(str((int(c) + 3) % 10) for c in code)
    _db(lk, ("UPDATE events SET secret = ? WHERE seq = ?", (forged, issued["seq"])))
    broker = harness.Mosquitto(port=port)
    watch = Watch(broker.port, "--locker-key", lkey)
    lk.start()
    wait_for(lambda: f"event {issued['seq']} code_issued" in watch.out(), 10,
             what="the code_issued event at the platform")
    out = watch.out()
    print("\n".join(ln for ln in out.splitlines() if "!!!" in ln))
    assert f"CODE MISMATCH at seq {issued['seq']}" in out, out
    assert forged not in out, "the forged code went into an SMS"
    lk.stop()
    sim.stop()


def _pre_mark_state(lk, sk, events):
    """A state folder as a lockerd from before the mark left it: the
    schema up to the step before the one that adds the mark (named by its
    content, not its number), a key file, and a signed chain of events."""
    import base64
    import glob
    steps = sorted(glob.glob(os.path.join(harness.ROOT, "schema", "*.sql")))
    upto = [p for p in steps if "mark_adopt" in open(p).read()][0]
    older = steps[:steps.index(upto)]
    os.makedirs(lk.state_dir, mode=0o700, exist_ok=True)
    con = sqlite3.connect(lk.db_path)
    try:
        for p in older:
            con.executescript(open(p).read())
        con.execute(f"PRAGMA user_version = {int(os.path.basename(older[-1])[:3])}")
        prev = "0" * 64
        for i, fields in enumerate(events, 1):
            ev, prev = _fake_event(sk, i, prev, **fields)
            con.execute("INSERT INTO events (seq, time, type, body, delivered) "
                        "VALUES (?, 0, ?, ?, 1)", (i, ev["type"], json.dumps(ev)))
        con.commit()
    finally:
        con.close()
    # As lockerd makes it: no other user may read a database (issue 22).
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(lk.db_path + suffix):
            os.chmod(lk.db_path + suffix, 0o600)
    key = os.path.join(lk.state_dir, "device.key")
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("sign_sk=" + base64.b64encode(sk._signing_key).decode() + "\n"
                "hash_key=" + base64.b64encode(os.urandom(32)).decode() + "\n")
    return prev


def test_ledger_from_before_the_mark_is_adopted_once_and_a_removed_mark_is_held():
    """An upgrade: a ledger written before the mark is verified whole once
    and adopted, and from then on kept under a mark. Removing that mark
    later does not make a database adoptable again: it is held, even with
    the upgrade's flag put back by hand."""
    import nacl.signing
    sim = harness.Locksim()
    lk = harness.Lockerd(harness.config(sim, extra=harness.custody_extra()), start=False)
    sk = nacl.signing.SigningKey.generate()
    _pre_mark_state(lk, sk, [{"boot": 1, "version": "0.0.9"},
                             {"type": "door_opened", "cell": 3, "expected": False},
                             {"type": "door_closed", "cell": 3}])
    off = os.path.getsize(lk.log_path) if os.path.exists(lk.log_path) else 0
    lk.start()
    log = _log_since(lk, off)
    assert "verifying the whole chain once" in log and "adopted, head seq 3" in log, log
    st = lk.wait_event("started", after=3)
    assert st.get("mark_seq") == 3, st
    assert os.path.exists(lk.db_path + "-mark")
    reserve(lk, "A-U1")
    lk.stop()
    v = verify_ledger(lk)
    assert v.returncode == 0 and "its mark" in v.stdout, v.stdout + v.stderr

    os.unlink(lk.db_path + "-mark")
    _db(lk, "INSERT INTO meta (key, value) VALUES ('mark_adopt', '1')")
    off = os.path.getsize(lk.log_path)
    lk.start()
    log = _log_since(lk, off)
    print([ln for ln in log.splitlines() if "HELD" in ln or "mark" in ln][:2])
    assert "the ledger was kept under one" in log and "HELD" in log, log
    assert lk.ctl({"op": "reserve", "app": "A-U2", "size": "S"}).get("ok") is False
    lk.stop()
    sim.stop()


def test_checkpoint_bounds_the_start_and_keeps_freshness():
    """Past 1,000 events lockerd writes a checkpoint (a signed list of the
    active reservations and staff accounts with their newest seqs), and
    the next start verifies the ledger from there: a reservation whose
    newest event is older than the checkpoint is known from it, not from
    the database's columns, which were cleared here. Its older row put
    back is rejected, and the row of one that ended before the checkpoint,
    made active again by hand, is not believed."""
    sim, lk, kc = start_custody()
    live = reserve(lk, "A-C0")
    ended = reserve(lk, "A-C1")
    old_live = _rows(lk, "SELECT body, sig FROM reservations WHERE id = ?", (live["resv"],))[0]
    ended_row = _rows(lk, "SELECT body, sig FROM reservations WHERE id = ?",
                      (ended["resv"],))[0]
    assert lk.ctl({"op": "reissue", "resv": live["resv"]}).get("ok") is True
    assert lk.ctl({"op": "cancel", "resv": ended["resv"]}).get("ok") is True
    new_code = lk.ctl({"op": "reissue", "resv": live["resv"]})["code"]
    i = 0
    while not _rows(lk, "SELECT seq FROM events WHERE type = 'checkpoint'"):
        for _ in range(50):
            i += 1
            r = lk.ctl_ok({"op": "reserve", "app": f"F-{i}", "size": "S"})
            lk.ctl_ok({"op": "cancel", "resv": r["resv"]})
        assert i < 1000, "no checkpoint after 3,000 events"
    ck = lk.find_events("checkpoint")[-1]
    print(f"checkpoint at seq {ck['seq']}: active {ck['active']}, accounts {ck['accounts']}")
    newest = max(e["seq"] for e in lk.find_events(resv=live["resv"]))
    assert [live["resv"], newest] in ck["active"] and newest < ck["seq"], (ck, newest)
    assert not any(a[0] == ended["resv"] for a in ck["active"]), ck
    lk.stop()
    _db(lk, ("UPDATE events SET resv = NULL WHERE resv IN (?, ?)", (live["resv"], ended["resv"])))
    lk.start()
    kc.reconnect()
    st = lk.ctl({"op": "resv", "resv": live["resv"]})
    assert st.get("ok") is True and st.get("state") == "reserved", \
        f"a live reservation from before the checkpoint was lost: {st}"
    lk.stop()
    # Its row from before the re-issues put back, and the ended one
    # marked active again: neither is believed.
    _db(lk, ("UPDATE reservations SET body = ?, sig = ? WHERE id = ?", old_live + (live["resv"],)),
        ("UPDATE reservations SET active = 1, body = ?, sig = ? WHERE id = ?",
         ended_row + (ended["resv"],)),
        ("UPDATE events SET resv = NULL WHERE resv IN (?, ?)", (live["resv"], ended["resv"])))
    seq0 = max(s for s, in _rows(lk, "SELECT seq FROM events"))
    lk.start()
    kc.reconnect()
    rej = {e.get("id"): e.get("reason") for e in lk.find_events("record_rejected", after=seq0)}
    print(rej)
    assert "older than its ledger" in rej.get(str(live["resv"]), ""), rej
    assert "not active in the ledger" in rej.get(str(ended["resv"]), ""), rej
    for code in (live["code"], ended["code"], new_code):
        _refused(sim, kc, code, f"code {code} of a rejected row")
    lk.stop()
    sim.stop()
