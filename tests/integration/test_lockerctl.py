"""sim/lockerctl, the platform's side on the command line, run as a
subprocess against a real mosquitto and lockerd: its platform key is the
one lockerd accepts, its drop-off codes open cells at the keypad, its
signed commands open doors (and others' do not), and its watch/verify
check lockerd's signed hash chain."""

import json
import os
import re
import signal
import stat
import subprocess

import nacl.encoding
import nacl.hash
import nacl.signing

import harness
from harness import (Lockerd, Locksim, Mosquitto, Platform, close_door, config, custody_extra,
                     kiosk, mqtt_extra, unlock_write_pred, wait_for)

LOCKERCTL = os.path.join(harness.ROOT, "sim", "lockerctl")
PYTHON = "/usr/bin/python3"
LOCKER = "test-locker"
ISO_SMS_RE = r"Valid until (\d{4}-\d\d-\d\d \d\d:\d\d) \(UTC\)"


def _log(text):
    with open(os.path.join(harness.tmpdir(), "lockerctl.log"), "a") as f:
        f.write(text)


def _argv(port, key, args, timeout=5):
    return [PYTHON, LOCKERCTL, "--port", str(port), "--locker", LOCKER, "--key", key,
            "--timeout", str(timeout)] + list(args)


def lockerctl(port, *args, key="platform.key", timeout=5, input=None, expect=None):
    """Runs lockerctl to completion in the test's temp dir. Returns the
    CompletedProcess (text); checks the exit status when expect is given."""
    r = subprocess.run(_argv(port, key, args, timeout), input=input, capture_output=True,
                       text=True, cwd=harness.tmpdir(), timeout=timeout + 30)
    _log(f"===== lockerctl {' '.join(args)} -> {r.returncode}\n{r.stdout}{r.stderr}")
    if expect is not None:
        assert r.returncode == expect, \
            f"lockerctl {' '.join(args)}: exit {r.returncode}, expected {expect}\n" \
            f"stdout: {r.stdout}\nstderr: {r.stderr}"
    return r


def reply_of(r):
    """The reply: lockerctl's first line of output, JSON."""
    line = r.stdout.splitlines()[0] if r.stdout else ""
    try:
        return json.loads(line)
    except ValueError:
        raise AssertionError(f"lockerctl printed no JSON reply first: {r.stdout!r} {r.stderr!r}")


class Watch:
    """lockerctl watch in the background; its stdout in a file."""

    def __init__(self, port, *args, name="watch", may_finish=False):
        d = harness.tmpdir()
        self.out_path = os.path.join(d, f"{name}.out")
        self.err_path = os.path.join(d, f"{name}.err")
        with open(self.out_path, "ab") as out, open(self.err_path, "ab") as err:
            self.proc = subprocess.Popen(_argv(port, "platform.key", ("watch",) + args),
                                         stdout=out, stderr=err, cwd=d,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        harness._register(self)
        wait_for(lambda: "watching" in self.err() or self.proc.poll() is not None, 10,
                 what="lockerctl watch subscribed")
        assert may_finish or self.proc.poll() is None, \
            f"watch exited early: {self.out()} {self.err()}"

    def out(self):
        with open(self.out_path, errors="replace") as f:
            return f.read()

    def err(self):
        with open(self.err_path, errors="replace") as f:
            return f.read()

    def wait(self, timeout=15):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"watch still runs after {timeout} s:\n{self.out()}{self.err()}")

    def interrupt(self, timeout=10):
        os.kill(self.proc.pid, signal.SIGINT)
        return self.wait(timeout)

    def cleanup(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _start(broker, pk_hex, start=True):
    """A harness platform client, locksim and lockerd on broker with
    [mqtt] platform_key = pk_hex and the keypad on. Returns (plat, sim, lk)."""
    plat = Platform(broker, locker=LOCKER)
    sim = Locksim()
    extra = custody_extra()
    extra.update(mqtt_extra(broker, platform_key=pk_hex))
    lk = Lockerd(config(sim, extra=extra), start=False)
    if start:
        _go(lk, plat)
    return plat, sim, lk


def _go(lk, plat):
    lk.start()
    lk.wait_event("started", timeout=5)
    wait_for(lambda: [b for b, _ in plat.on("status") if isinstance(b, dict) and b.get("online")],
             5, what="the birth")


def _keygen(port, name="platform.key"):
    r = lockerctl(port, "keygen", key=name, expect=0)
    pk = r.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", pk), f"keygen printed {r.stdout!r}"
    return pk


def _opens(sim, kc, code, cell):
    """A code typed at the keypad opens cell: the reply and the relay."""
    n0 = sim.last_write_n()
    rep = kc.code(code)
    assert rep.get("ok") is True and rep.get("cell") == cell, f"code {code} -> {rep}"
    sim.wait_write(unlock_write_pred(cell), after=n0, what=f"relay of cell {cell}")
    close_door(sim, cell)


def _refused_at_keypad(sim, kc, code, error="invalid_code"):
    n0 = sim.last_write_n()
    rep = kc.code(code)
    assert rep.get("ok") is False and rep.get("error") == error, f"{code} -> {rep}"
    harness.assert_no_unlock(sim, n0, 0.3, what=f"a dead code {code}")


def _sms_ok(sms, r, app, locker=LOCKER):
    assert sms.startswith(f"SMS to applicant of {app}: Locker {locker}: "), sms
    assert f" is {r['code']}." in sms and f"cell {r['cell']} opens" in sms, \
        f"the SMS does not carry the code and cell of {r}: {sms}"
    m = re.search(ISO_SMS_RE, sms)
    assert m and r["valid_until"].replace("T", " ").startswith(m.group(1)), \
        f"the SMS's validity is not the reply's valid_until {r['valid_until']}: {sms}"


# ---------------------------------------------------------------------------


def test_keygen_and_signed_open():
    d = harness.tmpdir()
    broker = Mosquitto()
    pk = _keygen(broker.port)
    path = os.path.join(d, "platform.key")
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o600, f"key file mode {stat.S_IMODE(st.st_mode):o}"
    with open(path) as f:
        seed = f.read().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", seed), seed
    assert nacl.signing.SigningKey(bytes.fromhex(seed)).verify_key.encode(
        nacl.encoding.HexEncoder).decode() == pk, "the printed key is not the file's"
    # Never overwrites a key.
    r = lockerctl(broker.port, "keygen", expect=2)
    assert "exists" in r.stderr, r.stderr
    with open(path) as f:
        assert f.read().strip() == seed, "keygen changed an existing key"
    assert lockerctl(broker.port, "pubkey", expect=0).stdout.strip() == pk
    other_pk = _keygen(broker.port, "other.key")
    assert other_pk != pk

    # lockerd takes the printed key as [mqtt] platform_key.
    plat, sim, lk = _start(broker, pk)
    assert reply_of(lockerctl(broker.port, "ping", expect=0)).get("ok") is True
    births = len(plat.on("status"))
    assert reply_of(lockerctl(broker.port, "rebirth", expect=0)).get("ok") is True
    wait_for(lambda: len(plat.on("status")) > births, 5, what="the birth again after rebirth")

    seq0, n0 = lk.last_seq(), sim.last_write_n()
    r = lockerctl(broker.port, "open", "5", expect=0)
    rep = reply_of(r)
    assert rep.get("ok") is True and rep.get("cell") == 5, rep
    sim.wait_write(unlock_write_pred(5), after=n0, what="relay of cell 5")
    u = lk.wait_event("unlock", cell=5, after=seq0)
    assert u.get("reason") == "remote", u
    lk.wait_event("door_opened", cell=5, after=seq0, timeout=3)
    close_door(sim, 5)
    lk.wait_event("door_closed", cell=5, after=seq0, timeout=3)

    # Signed with another key: refused, said on stderr, no relay, an alarm.
    seq1, n1 = lk.last_seq(), sim.last_write_n()
    r = lockerctl(broker.port, "open", "6", key="other.key", expect=1)
    rep = reply_of(r)
    assert rep.get("ok") is False and rep.get("error") == "unauthorised", rep
    assert "unauthorised" in r.stderr and "bad signature" in r.stderr, r.stderr
    harness.assert_no_unlock(sim, n1, 0.5, what="an open signed with another key")
    alarm = lk.wait_event("command_refused", after=seq1)
    assert alarm.get("alarm") is True and alarm.get("reason") == "bad signature", alarm
    assert not lk.find_events("unlock", after=seq1)
    lk.stop()
    sim.stop()


def test_reserve_sms_code_opens_at_keypad():
    broker = Mosquitto()
    pk = _keygen(broker.port)
    plat, sim, lk = _start(broker, pk)
    kc = kiosk(lk)
    r = lockerctl(broker.port, "reserve", "A-2026-000123", "M", "--valid-s", "3600", expect=0)
    lines = r.stdout.splitlines()
    rep = json.loads(lines[0])
    assert rep.get("ok") is True and rep.get("state") == "reserved" and rep.get("kind") == \
        "dropoff" and rep.get("app") == "A-2026-000123", rep
    assert re.fullmatch(r"\d{10}", rep.get("code", "")), rep
    assert 17 <= rep["cell"] <= 24, f"an M cell is on board B: {rep}"
    assert len(lines) == 2, lines
    _sms_ok(lines[1], rep, "A-2026-000123")
    assert "Type it on the locker's keypad; " in lines[1], lines[1]
    # The reply's validity is what was asked for.
    ev = lk.wait_event("dropoff_reserved", resv=rep["resv"])
    assert ev["valid_until"] == rep["valid_until"], (ev, rep)

    # resv and state from the command line agree.
    st = reply_of(lockerctl(broker.port, "resv", str(rep["resv"]), expect=0))
    assert st.get("state") == "reserved" and st.get("cell") == rep["cell"], st

    # The code from the SMS opens that cell at the keypad, once.
    code = re.search(r" is (\d+)\.", lines[1]).group(1)
    _opens(sim, kc, code, rep["cell"])
    lk.wait_event("deposited", resv=rep["resv"], timeout=5)
    _refused_at_keypad(sim, kc, code, "used")

    # A phone factor is mentioned in the SMS; a refused reserve exits 1.
    r2 = lockerctl(broker.port, "reserve", "A-2026-000124", "S", "--phone", "4321", expect=0)
    assert "last 4 digits of your phone" in r2.stdout.splitlines()[1], r2.stdout
    r3 = lockerctl(broker.port, "reserve", "A-2026-000125", "S", "--valid-s", "5", expect=1)
    assert reply_of(r3).get("field") == "valid_s" and "valid_s" in r3.stderr, r3.stderr

    # service out, and the state table shows it.
    assert reply_of(lockerctl(broker.port, "service", "3", "out", expect=0)).get("ok") is True
    table = lockerctl(broker.port, "state", expect=0).stdout
    row = [ln.split() for ln in table.splitlines() if ln.split()[:1] == ["3"]]
    assert row and row[0][1:5] == ["S", "closed", "-", "out"], f"cell 3 row: {row}\n{table}"
    assert re.search(r"^A\s+sim\s+1\s+generic-16\s+ok", table, re.M), table
    js = reply_of(lockerctl(broker.port, "state", "--json", expect=0))
    assert [c["service"] for c in js["cells"] if c["cell"] == 3] == ["out"], js
    lk.stop()
    sim.stop()


def test_cancel_and_reissue():
    broker = Mosquitto()
    pk = _keygen(broker.port)
    plat, sim, lk = _start(broker, pk)
    kc = kiosk(lk)

    a = json.loads(lockerctl(broker.port, "reserve", "A-31", "S", expect=0).stdout.splitlines()[0])
    r = lockerctl(broker.port, "cancel", str(a["resv"]), expect=0)
    assert reply_of(r) == {"ok": True, "resv": a["resv"], "request_id": reply_of(r)["request_id"]}
    lk.wait_event("cancelled", resv=a["resv"])
    _refused_at_keypad(sim, kc, a["code"])
    r = lockerctl(broker.port, "cancel", str(a["resv"]), expect=1)
    assert str(a["resv"]) in r.stderr and "refused" in r.stderr, r.stderr

    b = json.loads(lockerctl(broker.port, "reserve", "A-32", "S", expect=0).stdout.splitlines()[0])
    r = lockerctl(broker.port, "reissue", str(b["resv"]), expect=0)
    lines = r.stdout.splitlines()
    new = json.loads(lines[0])
    assert new.get("ok") is True and new.get("resv") == b["resv"] and new.get("cell") == b["cell"]
    assert new["code"] != b["code"], (b, new)
    assert "your new drop-off code" in lines[1], lines
    _sms_ok(lines[1], new, "A-32")
    lk.wait_event("code_reissued", resv=b["resv"])
    _refused_at_keypad(sim, kc, b["code"])
    _opens(sim, kc, new["code"], b["cell"])
    lk.wait_event("deposited", resv=b["resv"], timeout=5)
    lk.stop()
    sim.stop()


def _public_key(lk):
    r = harness.run_lockerd(["-c", lk.config_path, "--public-key"])
    assert r.returncode == 0 and re.fullmatch(r"[0-9a-f]{64}\n", r.stdout), (r.stdout, r.stderr)
    return r.stdout.strip()


def _saved(path):
    with open(path) as f:
        return [json.loads(ln) for ln in f if ln.strip()]


def test_watch_verify_save_and_verify_file():
    broker = Mosquitto()
    pk = _keygen(broker.port)
    plat, sim, lk = _start(broker, pk, start=False)
    lkey = _public_key(lk)
    save = os.path.join(harness.tmpdir(), "events.jsonl")
    # Watching before lockerd starts: the chain from seq 1.
    w = Watch(broker.port, "--verify", "--locker-key", lkey, "--save", save,
              "--client-id", "platform-watch-1")
    _go(lk, plat)
    kc = kiosk(lk)
    r = json.loads(lockerctl(broker.port, "reserve", "A-41", "S", expect=0).stdout.splitlines()[0])
    _opens(sim, kc, r["code"], r["cell"])
    lk.wait_event("deposited", resv=r["resv"], timeout=5)
    lockerctl(broker.port, "open", "9", expect=0)
    lk.wait_event("door_opened", cell=9, timeout=3)
    close_door(sim, 9)
    lk.wait_event("door_closed", cell=9, timeout=3)
    # A name with non-ASCII and quotes: the canonical form must match
    # jansson's escapes byte for byte.
    app = 'Ä-42 "Ünïcode" \u4e2d\U0001F600'
    lockerctl(broker.port, "reserve", app, "M", expect=0)
    n = lk.wait_event("dropoff_reserved", app=app)["seq"]
    n = lk.wait_event("code_issued", after=n - 1, app=app)["seq"]
    wait_for(lambda: os.path.exists(save) and len(_saved(save)) >= n, 10,
             what=f"{n} events saved by watch")
    assert w.interrupt() == 0, f"watch --verify: {w.out()}{w.err()}"
    out = w.out()
    assert f"{n} events, chain verified" in out, out
    assert "!!!" not in out, out
    assert len(re.findall(r"^event 1 ", out, re.M)) == 1, out
    assert re.search(rf"^event \d+ code_used cell {r['cell']} resv {r['resv']} app A-41", out,
                     re.M), out
    assert re.search(r"^status online boot 1 ", out, re.M), out
    assert re.search(r"^cell 9: ", out, re.M), out
    saved = _saved(save)
    assert [e["seq"] for e in saved] == list(range(1, n + 1)), [e["seq"] for e in saved]
    assert [{k: v for k, v in e.items() if k != "replayed"} for e in saved] == \
        lk.events()[:n], "the saved events are not lockerd's ledger"

    # While nobody watches, the persistent session keeps what happens.
    b = json.loads(lockerctl(broker.port, "reserve", "A-43", "S", expect=0).stdout.splitlines()[0])
    lockerctl(broker.port, "cancel", str(b["resv"]), expect=0)
    last = lk.wait_event("cancelled", resv=b["resv"])["seq"]
    w2 = Watch(broker.port, "--verify", "--locker-key", lkey, "--save", save,
               "--client-id", "platform-watch-1", "--count", str(last - n), name="watch2", may_finish=True)
    assert w2.wait() == 0, f"watch resumed: {w2.out()}{w2.err()}"
    assert f"resuming after seq {n}" in w2.out() and \
        f"{last} events, chain verified" in w2.out(), w2.out()
    assert [e["seq"] for e in _saved(save)] == list(range(1, last + 1))

    v = lockerctl(broker.port, "verify", save, "--locker-key", lkey, expect=0)
    assert v.stdout.strip() == f"{last} events, chain verified", v.stdout

    # One saved line edited: verify names its seq.
    lines = open(save).read().splitlines()
    dep = next(i for i, ln in enumerate(lines) if '"type":"deposited"' in ln)
    seq = json.loads(lines[dep])["seq"]
    lines[dep] = lines[dep].replace('"app":"A-41"', '"app":"A-49"')
    bad = os.path.join(harness.tmpdir(), "edited.jsonl")
    with open(bad, "w") as f:
        f.write("\n".join(lines) + "\n")
    v = lockerctl(broker.port, "verify", bad, "--locker-key", lkey, expect=1)
    assert f"seq {seq} " in v.stdout and "bad signature" in v.stdout, v.stdout
    # The same file with the wrong key fails at the first event.
    v = lockerctl(broker.port, "verify", save, "--locker-key", pk, expect=1)
    assert "seq 1 " in v.stdout, v.stdout
    # An event dropped: the next one no longer links.
    with open(bad, "w") as f:
        f.write("\n".join(ln for i, ln in enumerate(open(save).read().splitlines()) if i != 2)
                + "\n")
    v = lockerctl(broker.port, "verify", bad, "--locker-key", lkey, expect=1)
    assert "seq 4 " in v.stdout and "expected seq 3" in v.stdout, v.stdout
    lk.stop()
    sim.stop()


def _fake_event(sk, seq, prev, **fields):
    ev = {"seq": seq, "locker": LOCKER, "time": "2026-01-01T00:00:00.000Z", "type": "started",
          "prev": prev}
    ev.update(fields)
    text = json.dumps({k: v for k, v in ev.items()}, sort_keys=True, separators=(",", ":"))
    ev["sig"] = nacl.encoding.URLSafeBase64Encoder.encode(
        sk.sign(text.encode()).signature).decode().rstrip("=")
    digest = nacl.hash.blake2b(text.encode(), digest_size=32,
                               encoder=nacl.encoding.HexEncoder).decode()
    return ev, digest


def test_watch_reports_forgery_and_gap_and_errors():
    """No lockerd: the test plays the locker with its own device key and
    publishes a good event, a forged one, and one after a gap."""
    broker = Mosquitto()
    sk = nacl.signing.SigningKey.generate()
    hexpk = sk.verify_key.encode(nacl.encoding.HexEncoder).decode()
    _keygen(broker.port)
    # No locker answers: a timeout is exit 2; no broker is exit 2.
    r = lockerctl(broker.port, "ping", timeout=1, expect=2)
    assert "no reply" in r.stderr, r.stderr
    r = lockerctl(harness.free_port(), "ping", timeout=1, expect=2)
    assert "cannot connect" in r.stderr, r.stderr
    r = lockerctl(broker.port, "reserve", "A-1", "X", expect=2)

    w = Watch(broker.port, "--verify", "--locker-key", hexpk, "--count", "3")
    e1, d1 = _fake_event(sk, 1, "0" * 64)
    e2, _ = _fake_event(sk, 2, d1, type="unlock", cell=3, reason="remote")
    e2["cell"] = 4                                  # altered after signing
    e4, _ = _fake_event(sk, 4, "1" * 64)
    # A plain client, not the harness's Platform: these are not lockerd's
    # messages and must stay out of the contract test's capture.
    import paho.mqtt.client as mqtt
    c = mqtt.Client(client_id=f"fake-locker-{os.getpid()}", clean_session=True)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    try:
        for e in (e1, e1, e2, e4):                  # e1 twice: de-duplicated
            c.publish(f"lockers/{LOCKER}/events", json.dumps(e), qos=1).wait_for_publish(5)
    finally:
        c.disconnect()
        c.loop_stop()
    assert w.wait() == 1, f"a forged event and a gap passed: {w.out()}{w.err()}"
    out = w.out()
    assert "BROKEN CHAIN at seq 2: bad signature" in out, out
    assert "GAP: expected seq 3, got 4" in out and "events 3 never arrived" in out, out
    assert len(re.findall(r"^event 1 ", out, re.M)) == 1, out
    assert "chain NOT verified" in out, out


def test_staff_add_login_revoke():
    broker = Mosquitto()
    pk = _keygen(broker.port)
    plat, sim, lk = _start(broker, pk)
    kc = kiosk(lk)
    seq0 = lk.last_seq()
    r = lockerctl(broker.port, "staff-add", "bob", "--name", "Bob B", expect=0)
    assert reply_of(r).get("ok") is True, r.stdout
    m = re.search(r"^PIN for bob: (\d{8}) \(shown once", r.stdout, re.M)
    assert m, r.stdout
    pin = m.group(1)
    rep = kc.login("bob", pin)
    assert rep.get("ok") is True and rep.get("staff") == "bob" and rep.get("name") == "Bob B" \
        and rep.get("role") == "staff", rep
    kc.logout()
    wrong = "000000" if pin != "000000" else "111111"
    assert kc.login("bob", wrong).get("ok") is False
    # A given PIN (from stdin) and the admin role.
    r = lockerctl(broker.port, "staff-add", "carol", "--name", "Carol C", "--role", "admin",
                  "--pin", "-", input="97531864\n", expect=0)
    assert "PIN for" not in r.stdout, "a given PIN was printed"
    rep = kc.login("carol", "97531864")
    assert rep.get("ok") is True and rep.get("role") == "admin", rep
    kc.logout()
    assert "97531864" not in json.dumps(lk.events(seq0)), "the PIN is in the ledger"

    r = lockerctl(broker.port, "staff-revoke", "bob", expect=0)
    assert reply_of(r).get("ok") is True, r.stdout
    rep = kc.login("bob", pin)
    assert rep.get("ok") is False and rep.get("error") == "bad_login", rep
    # Signed with another key: refused, carol stays.
    _keygen(broker.port, "other.key")
    r = lockerctl(broker.port, "staff-revoke", "carol", key="other.key", expect=1)
    assert "unauthorised" in r.stderr, r.stderr
    assert kc.login("carol", "97531864").get("ok") is True
    lk.stop()
    sim.stop()


def test_load_wait_prints_pickup_sms():
    broker = Mosquitto()
    pk = _keygen(broker.port)
    plat, sim, lk = _start(broker, pk, start=False)
    # A platform watching the whole time sees the same pickup code.
    w = Watch(broker.port, "--verify", "--locker-key", _public_key(lk))
    _go(lk, plat)
    kc = kiosk(lk)
    harness.add_staff(lk, "dave", "24681357", name="Dave D")
    seq0, n0 = lk.last_seq(), sim.last_write_n()
    d = harness.tmpdir()
    out_path, err_path = os.path.join(d, "load.out"), os.path.join(d, "load.err")
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(_argv(broker.port, "platform.key",
                                      ("load", "A-77", "S", "--staff", "dave", "--wait",
                                       "--wait-s", "20")),
                                stdout=out, stderr=err, cwd=d, stdin=subprocess.DEVNULL)
    try:
        started = lk.wait_event("load_started", after=seq0, timeout=10)
        cell = started["cell"]
        assert started.get("staff") == "dave" and started.get("app") == "A-77", started
        sim.wait_write(unlock_write_pred(cell), after=n0, what=f"relay of cell {cell}")
        lk.wait_event("door_opened", cell=cell, after=seq0, timeout=3)
        unit, ch = harness.unit_ch(cell)
        sim.cmd(f"put {unit} {ch}")
        close_door(sim, cell)
        rc = proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out, err = open(out_path).read(), open(err_path).read()
    _log(f"===== lockerctl load --wait -> {proc.returncode}\n{out}{err}")
    assert rc == 0, f"load --wait exit {rc}: {out}{err}"
    lines = out.splitlines()
    rep = json.loads(lines[0])
    assert rep.get("ok") is True and rep.get("cell") == cell, rep
    ready = lk.wait_event("pickup_ready", cell=cell, after=seq0)
    m = re.fullmatch(rf"SMS to applicant of A-77: Locker {LOCKER}: your certificate for "
                     rf"application A-77 is ready\. Pickup code (\d{{10}}), cell {cell}; "
                     rf"collect by (\d{{4}}-\d\d-\d\d \d\d:\d\d) \(UTC\)\.", lines[-1])
    assert m, lines
    assert ready["due"].replace("T", " ").startswith(m.group(2)), (ready, lines[-1])
    # The code from the SMS opens the cell for the applicant.
    _opens(sim, kc, m.group(1), cell)
    last = lk.wait_event("collected", cell=cell, after=seq0, timeout=5)["seq"]
    wait_for(lambda: re.search(rf"^event {last} collected", w.out(), re.M), 5,
             what="the watch saw the collection")
    assert w.interrupt() == 0, w.out()
    assert lines[-1] in w.out().splitlines(), f"watch printed another SMS:\n{w.out()}"
    assert f"{last} events, chain verified" in w.out(), w.out()
    lk.stop()
    sim.stop()


class TlsBroker:
    """mosquitto with TLS only (a throwaway CA and a server certificate
    for 127.0.0.1) and a password file: the broker a real hall has."""

    def __init__(self, user, password):
        d = os.path.join(harness.tmpdir(), "tls")
        os.makedirs(d)
        self.dir, self.port = d, harness.free_port()

        def ssl(*args):
            subprocess.run(["openssl"] + list(args), cwd=d, check=True, capture_output=True)
        ssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=test CA")
        ssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
        with open(os.path.join(d, "ext"), "w") as f:
            f.write("subjectAltName=IP:127.0.0.1\n")
        ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "ext")
        pw = os.path.join(d, "passwd")
        subprocess.run(["mosquitto_passwd", "-b", "-c", pw, user, password], check=True,
                       capture_output=True)
        os.chmod(pw, 0o600)
        self.cafile = os.path.join(d, "ca.crt")
        conf = os.path.join(d, "mosquitto.conf")
        import pwd
        with open(conf, "w") as f:
            f.write(f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
                    f"listener {self.port} 127.0.0.1\n"
                    f"allow_anonymous false\npassword_file {pw}\n"
                    f"cafile {self.cafile}\ncertfile {d}/server.crt\nkeyfile {d}/server.key\n"
                    "tls_version tlsv1.2\n"
                    f"log_dest file {d}/mosquitto.log\n")
        self.proc = harness._popen(["mosquitto", "-c", conf], f"{d}/out", f"{d}/out")
        harness._register(self)
        wait_for(lambda: self._listening(), 5, what="the TLS broker listening")

    def _listening(self):
        import socket
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            assert self.proc.poll() is None, open(f"{self.dir}/out").read()
            return False

    def cleanup(self):
        if self.proc.poll() is None:
            harness._terminate(self.proc, 5)


def test_tls_and_broker_credentials():
    broker = TlsBroker("platform", "s3cret-pw")
    pk = _keygen(broker.port)
    sim = Locksim()
    extra = custody_extra()
    extra.update(mqtt_extra(broker, platform_key=pk, cafile=broker.cafile,
                            username="platform", password="s3cret-pw"))
    lk = Lockerd(config(sim, extra=extra))
    lk.wait_event("started", timeout=5)
    tls = ["--cafile", broker.cafile, "--username", "platform", "--password", "s3cret-pw"]

    def ok():
        r = lockerctl(broker.port, *tls, "ping", timeout=2)
        return r.returncode == 0 and reply_of(r).get("ok") is True
    wait_for(ok, 15, interval=0.5, what="lockerd and lockerctl meeting over TLS")
    n0 = sim.last_write_n()
    r = lockerctl(broker.port, *tls, "open", "2", expect=0)
    assert reply_of(r).get("cell") == 2, r.stdout
    sim.wait_write(unlock_write_pred(2), after=n0, what="relay of cell 2")
    # A wrong password and a plain-text client are turned away: exit 2.
    r = lockerctl(broker.port, "--cafile", broker.cafile, "--username", "platform",
                  "--password", "wrong", "ping", timeout=2, expect=2)
    assert "not authorised" in r.stderr, r.stderr
    r = lockerctl(broker.port, "ping", timeout=2, expect=2)
    assert "CONNACK" in r.stderr or "connect" in r.stderr, r.stderr
    lk.stop()
    sim.stop()


def test_canonical_form_is_janssons():
    """lockerctl's canonical serializer against libjansson itself (the
    library lockerd signs and hashes with), on the awkward strings:
    quotes, backslashes, control characters, DEL, slash, non-ASCII in and
    beyond the BMP, unsorted and non-ASCII keys, nesting."""
    import ctypes
    import importlib.machinery
    import importlib.util
    loader = importlib.machinery.SourceFileLoader("lockerctl_mod", LOCKERCTL)
    spec = importlib.util.spec_from_loader("lockerctl_mod", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)

    jansson = ctypes.CDLL("libjansson.so.4")
    jansson.json_loads.restype = ctypes.c_void_p
    jansson.json_loads.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p]
    jansson.json_dumps.restype = ctypes.c_void_p
    jansson.json_dumps.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    jansson.json_delete.argtypes = [ctypes.c_void_p]
    libc = ctypes.CDLL(None)
    libc.free.argtypes = [ctypes.c_void_p]
    flags = 0x20 | 0x80 | 0x40  # JSON_COMPACT | JSON_SORT_KEYS | JSON_ENSURE_ASCII
    err = ctypes.create_string_buffer(512)

    def dumps(value):
        v = jansson.json_loads(json.dumps(value).encode(), 0, err)
        assert v, err.raw[:200]
        p = jansson.json_dumps(v, flags)
        jansson.json_delete(v)  # the refcount is 1: json_decref is a macro
        try:
            return ctypes.string_at(p).decode()
        finally:
            libc.free(p)

    pieces = ['a', '"', '\\', '/', '\b', '\f', '\n', '\r', '\t', '\x01', '\x1f',
              '\x7f', '\x80', '\xe9', '\u20ac', '\u4e2d', '\u2028', '\ufeff', '\uffff',
              '\U0001F600', '\U0010FFFF', ' ']
    import random
    rnd = random.Random(7)
    cases = [{"k": p} for p in pieces] + [
        {"z": 1, "a": [True, False, None, -5, 2 ** 62], "\xe9": {"b": "", "A": []}},
        {"seq": 3, "app": 'A-1 "x" \u4e2d\U0001F600', "nested": {"y": [{"x": "\x02"}]}},
    ]
    for _ in range(300):
        cases.append({"".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 3))):
                      "".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 8)))
                      for _ in range(rnd.randint(1, 4))})
    for c in cases:
        assert mod.canon(c) == dumps(c), f"{c!r}: lockerctl {mod.canon(c)!r}, " \
            f"jansson {dumps(c)!r}"
