"""End to end, one test per custody flow: the real lockerd, a private
mosquitto, locksim, the platform (paho, signed commands as the platform
sends them) and the keypad (kiosk socket).

Every test checks three views of its flow:
  * the platform's: replies, the event stream (in seq order, gap-free,
    each event equal to the ledger's) and the retained cells/<n> state;
  * the boards': locksim's Modbus write log (the relay of the right cell,
    and of no other);
  * the keypad's: reply "show" texts naming the cell, "open" / "closed" /
    "info" notices.

Flows that need time to pass (an expiring code, an overdue pickup) run
lockerd under libfaketime: the wall clock, which lockerd uses for
reservations, signed-command windows and command expiry, moves when the
test rewrites an offset file; CLOCK_MONOTONIC (the bank, the keypad) is
left alone.
"""

import glob
import json
import os
import sqlite3
import time

import nacl.encoding
import nacl.pwhash
import nacl.signing

import harness
from harness import (Lockerd, Locksim, Mosquitto, Platform, close_door, config, mqtt_extra,
                     unlock_write_pred, unlocked_cells, wait_for)

KEY = nacl.signing.SigningKey.generate()
PK_HEX = KEY.verify_key.encode(encoder=nacl.encoding.HexEncoder).decode()
PIN = "246810"
DIGITS = 10

# The transport fields the link adds to a ledger event (link.c).
TRANSPORT = ("replayed", "code")


def _pin_hash(pin=PIN):
    return nacl.pwhash.argon2id.str(pin.encode(), opslimit=3, memlimit=8 << 20).decode()


# ---------------------------------------------------------------------------
# A moved wall clock for lockerd (libfaketime)


def _faketime_lib():
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
    if not found:
        raise harness.HarnessError("libfaketimeMT.so.1 is missing: run `make deps` "
                                   "(Debian package libfaketime)")
    return found[0]


class FakeClock:
    """The offset of lockerd's wall clock, in a file libfaketime re-reads
    on every call (FAKETIME_NO_CACHE=1). Written by rename, so lockerd
    never reads half a file."""

    def __init__(self):
        self.path = os.path.join(harness.tmpdir(), "faketime.rc")
        self.offset_s = 0
        self.set(0)

    def set(self, offset_s):
        self.offset_s = offset_s
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{'+' if offset_s >= 0 else '-'}{abs(int(offset_s))}\n")
        os.replace(tmp, self.path)

    def now_ms(self):
        return int((time.time() + self.offset_s) * 1000)

    def env(self):
        return {"LD_PRELOAD": _faketime_lib(), "FAKETIME_TIMESTAMP_FILE": self.path,
                "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


class FakeTimeLockerd(Lockerd):
    """A lockerd started under libfaketime (harness.Lockerd has no env
    hook: the harness's daemon_env is swapped for the one start)."""

    def __init__(self, cfg, clock, **kw):
        self.clock = clock
        super().__init__(cfg, **kw)

    def start(self, timeout=10):
        orig = harness.daemon_env

        def env():
            e = orig()
            e.update(self.clock.env())
            # Under ASan, another preloaded library makes the runtime
            # refuse to start unless told the order does not matter.
            # Leak detection stays on.
            e["ASAN_OPTIONS"] = (e.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0") \
                .lstrip(":")
            return e
        harness.daemon_env = env
        try:
            return super().start(timeout)
        finally:
            harness.daemon_env = orig


# ---------------------------------------------------------------------------
# One flow's world: broker, platform, boards, lockerd, keypad


class Flow:
    def __init__(self, cells=None, codes=None, extra=None, faketime=False, mqtt=None):
        self.broker = Mosquitto()
        self.plat = Platform(self.broker)
        self.sim = Locksim()
        ex = harness.custody_extra(codes)
        ex.update(mqtt_extra(self.broker, platform_key=PK_HEX, **(mqtt or {})))
        for sec, keys in (extra or {}).items():
            ex.setdefault(sec, {}).update(keys)
        cfg = config(self.sim, cells=cells, extra=ex)
        self.clock = FakeClock() if faketime else None
        self.lk = FakeTimeLockerd(cfg, self.clock) if faketime else Lockerd(cfg)
        self.lk.wait_event("started", timeout=5)
        wait_for(lambda: [b for b, _ in self.plat.on("status")
                          if isinstance(b, dict) and b.get("online")], 5, what="the birth")
        self.kc = harness.kiosk(self.lk)
        self.n = 0

    # -- time ---------------------------------------------------------------

    def now_ms(self):
        """lockerd's wall clock, as the platform must sign with it."""
        return self.clock.now_ms() if self.clock else int(time.time() * 1000)

    def set_clock(self, offset_s):
        """Moves lockerd's wall clock to real time + offset_s. lockerd
        sleeps in poll() for a time computed on the old clock (up to 60 s,
        as after a real clock step); a keypad status request wakes the
        loop, whose tick then sees the new time."""
        assert self.clock is not None, "this flow runs on the real clock"
        self.clock.set(offset_s)
        assert self.kc.status().get("ok") is True

    # -- the platform's commands ---------------------------------------------

    def cmd(self, op, sign=None, exp_in=30, raw=None, **fields):
        """Publishes a command on lockers/<id>/cmd; returns its request id.
        Signed (for this locker) when sign is True, or None and the op must
        be (harness.SIGNED_OPS)."""
        self.n += 1
        rid = fields.pop("request_id", f"f-{time.time_ns()}-{self.n}")
        now = self.now_ms()
        if raw is not None:
            payload = raw
        else:
            c = harness.command(op, rid, exp_ms=now + exp_in * 1000, sign=sign, key=KEY,
                                now_ms=now, **fields)
            payload = json.dumps(c)
        self.plat.c.publish(f"{self.plat.prefix}/cmd", payload, qos=1)
        return rid

    def replies(self, rid):
        return [b for b, _ in self.plat.on("reply")
                if isinstance(b, dict) and b.get("request_id") == rid]

    def reply(self, rid, timeout=5):
        return wait_for(lambda: self.replies(rid) and self.replies(rid)[0], timeout,
                        what=f"the reply to {rid}")

    def call(self, op, sign=None, **fields):
        return self.reply(self.cmd(op, sign=sign, **fields))

    def add_staff(self, staff="bob", name="Bob B", pin=PIN):
        r = self.call("staff_add", sign=True, staff=staff, name=name, role="staff",
                      pin_hash=_pin_hash(pin))
        assert r.get("ok") is True and r.get("staff") == staff, f"signed staff_add -> {r}"
        self.plat_event("staff_added", staff=staff, by="platform")
        return r

    def reserve(self, app, size="S", **kw):
        r = self.call("reserve", app=app, size=size, **kw)
        assert r.get("ok") is True and r.get("state") == "reserved" and \
            r.get("kind") == "dropoff" and r.get("app") == app, f"reserve {app} -> {r}"
        assert isinstance(r.get("code"), str) and len(r["code"]) == DIGITS and \
            r["code"].isdigit(), f"the reserve reply has no {DIGITS}-digit code: {r}"
        assert isinstance(r.get("cell"), int) and isinstance(r.get("resv"), int), r
        return r

    # -- what the platform saw -----------------------------------------------

    def plat_events(self, after=0, **match):
        return [e for e in self.plat.events() if e["seq"] > after and
                all(e.get(k) == v for k, v in match.items())]

    def plat_event(self, type, after=0, timeout=8, **match):
        """The first event of that type (and fields) the platform received."""
        try:
            return wait_for(lambda: self.plat_events(after, type=type, **match), timeout,
                            what=f"{type} {match} on the platform's event stream")[0]
        except harness.HarnessError as e:
            seen = [(x["seq"], x["type"], x.get("cell"), x.get("resv"))
                    for x in self.plat_events(after)][-15:]
            raise harness.HarnessError(f"{e}; the platform saw: {seen}")

    def resv_types(self, resv):
        """Types of the reservation's events as the platform got them, in
        seq order."""
        return [e["type"] for e in sorted(self.plat_events(resv=resv), key=lambda e: e["seq"])]

    def cell_states(self, n):
        return [b for b, _ in self.plat.on(f"cells/{n}") if isinstance(b, dict)]

    def wait_cell(self, n, timeout=8, **match):
        """The newest retained state of cells/<n> once it matches."""
        def newest():
            s = self.cell_states(n)
            return s and all(s[-1].get(k) == v for k, v in match.items()) and s[-1]
        try:
            return wait_for(newest, timeout, what=f"cells/{n} with {match}")
        except harness.HarnessError as e:
            raise harness.HarnessError(f"{e}; cells/{n} was: {self.cell_states(n)[-3:]}")

    def stream_is_the_ledger(self):
        """Everything in the ledger reached the platform: in seq order as
        it arrived, no gap, each event equal to the ledger's apart from
        the transport fields. Returns the events."""
        last = self.lk.last_seq()
        got = self.plat.wait_events(last, timeout=10)
        seqs = [e["seq"] for e in self.plat.events()]
        assert seqs == sorted(seqs), f"the platform got events out of seq order: {seqs}"
        assert [e["seq"] for e in got] == list(range(1, last + 1)), \
            f"a gap in the platform's event stream: {[e['seq'] for e in got]}"
        ledger = {e["seq"]: e for e in self.lk.events()}
        for e in got:
            body = {k: v for k, v in e.items() if k not in TRANSPORT}
            assert body == ledger.get(e["seq"]), \
                f"event {e['seq']} differs from the ledger:\n{body}\n{ledger.get(e['seq'])}"
        return got

    # -- the applicant and staff at the locker -------------------------------

    def open_with(self, req, cell, purpose, reason):
        """A keypad request that must open `cell`: the reply and its screen
        text, the relay of that cell and of no other, the "open" notice,
        and unlock / door_opened on the platform. Returns the seq before."""
        seq0, n0, m0 = self.lk.last_seq(), self.sim.last_write_n(), self.kc.mark()
        rep = self.kc.request(req)
        assert rep.get("ok") is True and rep.get("cell") == cell and \
            rep.get("purpose") == purpose, \
            f"keypad {req} -> {rep}; expected cell {cell} to open for {purpose}"
        assert f"Cell {cell} is open" in rep.get("show", ""), \
            f"the screen text does not name cell {cell}: {rep}"
        self.sim.wait_write(unlock_write_pred(cell), after=n0, what=f"relay of cell {cell}")
        u = self.plat_event("unlock", after=seq0, cell=cell)
        assert u.get("reason") == reason, f"unlock reason {u.get('reason')!r}, expected " \
            f"{reason!r}: {u}"
        self.plat_event("door_opened", after=seq0, cell=cell, expected=True)
        self.kc.wait_notice("open", cell=cell, since=m0)
        self.only_relays(n0, [cell])
        return seq0

    def close(self, cell, after, item=None):
        """The person puts an item in / takes it out ("put" / "take") and
        closes the door; the "closed" notice and door_closed follow."""
        unit, ch = harness.unit_ch(cell)
        if item:
            self.sim.cmd(f"{item} {unit} {ch}")
        m0 = self.kc.mark()
        close_door(self.sim, cell)
        self.plat_event("door_closed", after=after, cell=cell)
        n = self.kc.wait_notice("closed", cell=cell, since=m0)
        assert str(cell) in n.get("show", ""), f"the closed notice does not name the cell: {n}"

    def dropoff(self, r):
        seq0 = self.open_with({"op": "code", "code": r["code"]}, r["cell"], "dropoff",
                              "dropoff")
        self.close(r["cell"], seq0, item="put")
        return self.plat_event("deposited", after=seq0, resv=r["resv"], cell=r["cell"])

    def login(self, staff="bob", name="Bob B", pin=PIN):
        rep = self.kc.login(staff, pin)
        assert rep.get("ok") is True and rep.get("staff") == staff and \
            rep.get("name") == name, f"keypad login {staff} -> {rep}"
        return rep

    def refused(self, req, error, settle=0.5):
        """A keypad request refused with `error` and a screen text; no relay
        moved and the platform saw no unlock."""
        seq0, n0 = self.lk.last_seq(), self.sim.last_write_n()
        rep = self.kc.request(req)
        assert rep.get("ok") is False and rep.get("error") == error, \
            f"keypad {req} -> {rep}; expected the error {error!r}"
        assert isinstance(rep.get("show"), str) and rep["show"], f"a refusal without text: {rep}"
        harness.assert_no_unlock(self.sim, n0, settle, what=f"keypad {req} (refused)")
        assert not self.lk.find_events("unlock", after=seq0), \
            f"{req} was refused but the ledger has an unlock"
        return rep

    def only_relays(self, n0, cells):
        got = [c for c, _ in unlocked_cells(self.sim, n0)]
        assert sorted(set(got)) == sorted(set(cells)), \
            f"relays driven since write {n0}: cells {got}, expected only {cells}"
        return got

    def load_by_platform(self, app, size="S", staff="bob"):
        """A signed load; the door opens for staff, they put the certificate
        in and close it; the pickup code arrives on the event stream.
        Returns (reply, pickup code)."""
        seq0, n0, m0 = self.lk.last_seq(), self.sim.last_write_n(), self.kc.mark()
        r = self.call("load", sign=True, app=app, size=size, staff=staff)
        assert r.get("ok") is True and r.get("kind") == "pickup" and \
            r.get("state") == "loading" and r.get("staff") == staff, f"signed load -> {r}"
        cell = r["cell"]
        self.sim.wait_write(unlock_write_pred(cell), after=n0, what=f"relay of cell {cell}")
        self.kc.wait_notice("open", cell=cell, since=m0)
        self.close(cell, seq0, item="put")
        return r, self.pickup_code(r["resv"], after=seq0)

    def pickup_code(self, resv, after=0):
        """The pickup code, from the platform's code_issued event."""
        ready = self.plat_event("pickup_ready", after=after, resv=resv)
        issued = self.plat_events(after, type="code_issued", resv=resv)
        assert len(issued) == 1 and issued[0]["seq"] < ready["seq"], \
            f"code_issued before pickup_ready, once: {issued} {ready}"
        code = issued[0].get("code")
        assert isinstance(code, str) and len(code) == DIGITS and code.isdigit(), \
            f"code_issued on the event stream carries no pickup code: {issued[0]}"
        assert "code" not in self.lk.find_events("code_issued", resv=resv)[0], \
            "the ledger's code_issued holds the plain code"
        return code


def _secrets_at_rest(lk):
    db = sqlite3.connect(f"file:{lk.db_path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT count(*) FROM events WHERE secret IS NOT NULL").fetchone()[0]
    finally:
        db.close()


def _iso_ms(s):
    import calendar
    t = time.strptime(s[:19], "%Y-%m-%dT%H:%M:%S")
    return calendar.timegm(t) * 1000 + int(s[20:23])


def _in_order(events, *types):
    """The seqs of the first event of each type, asserted increasing."""
    seqs = []
    for t in types:
        found = [e["seq"] for e in events if e["type"] == t]
        assert found, f"no {t} among {[(e['seq'], e['type']) for e in events]}"
        seqs.append(found[0])
    assert seqs == sorted(seqs), f"{types} arrived as seqs {seqs}"
    return seqs


# ---------------------------------------------------------------------------
# The flows


def test_flow_dropoff():
    f = Flow()
    n0 = f.sim.last_write_n()
    r = f.reserve("A-1001", "S")
    cell = r["cell"]
    assert cell == 1, f"the first S reservation got cell {cell}"
    st = f.wait_cell(cell, state="reserved", resv=r["resv"])
    assert st["occupied"] is False and st["door"] == "closed", st
    reserved = f.plat_event("dropoff_reserved", resv=r["resv"])
    assert reserved.get("cell") == cell and reserved.get("app") == "A-1001" and \
        "valid_until" in reserved, reserved
    issued = f.plat_event("code_issued", resv=r["resv"])
    assert "code" not in issued, \
        f"a drop-off code goes in the reply only, not on the event stream: {issued}"
    harness.assert_no_unlock(f.sim, n0, 0, "a reservation")

    dep = f.dropoff(r)
    assert dep.get("state") == "deposited" and dep.get("app") == "A-1001", dep
    used = f.plat_event("code_used", resv=r["resv"])
    assert used.get("cell") == cell and used.get("state") == "opening", used
    assert f.resv_types(r["resv"]) == ["dropoff_reserved", "code_issued", "code_used",
                                       "deposited"], f.resv_types(r["resv"])
    cell_evs = sorted(f.plat_events(cell=cell), key=lambda e: e["seq"])
    _in_order(cell_evs, "code_used", "unlock", "door_opened", "door_closed", "deposited")
    st = f.wait_cell(cell, state="deposited")
    assert st["occupied"] is True and st["door"] == "closed" and st["resv"] == r["resv"], st
    revs = [s["rev"] for s in f.cell_states(cell)]
    assert revs == sorted(set(revs)), f"cells/{cell} revisions do not grow: {revs}"
    # A platform that connects later gets the retained state.
    late = Platform(f.broker, client_id="late-platform")
    got = wait_for(lambda: [b for b, _ in late.on(f"cells/{cell}") if isinstance(b, dict)], 5,
                   what="the retained cell state")
    assert got[-1]["state"] == "deposited" and got[-1]["rev"] == revs[-1], got
    f.only_relays(n0, [cell])
    f.refused({"op": "code", "code": r["code"]}, "used")
    f.stream_is_the_ledger()


def test_flow_staff_retrieval():
    f = Flow()
    f.add_staff("bob", "Bob B")
    r1, r2 = f.reserve("A-2001"), f.reserve("A-2002")
    f.dropoff(r1)
    f.dropoff(r2)
    c1, c2 = r1["cell"], r2["cell"]

    f.login("bob", "Bob B")
    seq0, n0, m0 = f.lk.last_seq(), f.sim.last_write_n(), f.kc.mark()
    rep = f.kc.request({"op": "retrieve"})
    assert rep.get("ok") is True and rep.get("cell") == c1 and rep.get("remaining") == 1, \
        f"retrieve -> {rep}"
    assert f"Cell {c1} is open" in rep["show"], rep
    f.sim.wait_write(unlock_write_pred(c1), after=n0, what=f"relay of cell {c1}")
    u = f.plat_event("unlock", after=seq0, cell=c1)
    assert u["reason"] == "staff_retrieve", u
    f.kc.wait_notice("open", cell=c1, since=m0)
    f.only_relays(n0, [c1])

    # Closing the first opens the next, announced on the screen.
    m1 = f.kc.mark()
    f.close(c1, seq0, item="take")
    ret1 = f.plat_event("retrieved", after=seq0, resv=r1["resv"])
    assert ret1["cell"] == c1 and ret1.get("staff") == "bob", ret1
    info = f.kc.wait_notice("info", cell=c2, since=m1)
    assert f"Cell {c2}" in info["show"], info
    f.sim.wait_write(unlock_write_pred(c2), after=n0, what=f"relay of cell {c2}")
    f.plat_event("door_opened", after=ret1["seq"], cell=c2)
    f.kc.wait_notice("open", cell=c2, since=m1)
    m2 = f.kc.mark()
    f.close(c2, ret1["seq"], item="take")
    ret2 = f.plat_event("retrieved", after=ret1["seq"], resv=r2["resv"])
    assert ret2["cell"] == c2 and ret2.get("staff") == "bob", ret2
    f.kc.wait_notice("info", since=m2, contains="All drop-offs are retrieved.")
    harness.assert_no_unlock(f.sim, f.sim.last_write_n(), 0.3, "the end of the run")
    assert f.only_relays(n0, [c1, c2]) == [c1, c2]
    for r in (r1, r2):
        types = f.resv_types(r["resv"])
        assert types[-1] == "retrieved", types
        st = f.wait_cell(r["cell"], state="free")
        assert st["resv"] is None and st["occupied"] is False, st
    f.refused({"op": "retrieve"}, "nothing", settle=0.2)
    f.stream_is_the_ledger()


def test_flow_staff_load_at_keypad():
    f = Flow()
    f.add_staff("bob", "Bob B")
    f.login("bob", "Bob B")
    seq0, n0, m0 = f.lk.last_seq(), f.sim.last_write_n(), f.kc.mark()
    rep = f.kc.request({"op": "load", "size": "M", "app": "A-3001"})
    assert rep.get("ok") is True and isinstance(rep.get("resv"), int), f"load -> {rep}"
    cell, resv = rep["cell"], rep["resv"]
    assert cell == 17, f"the first M cell is 17 (board B): {rep}"
    assert f"Cell {cell} is open" in rep["show"] and "certificate" in rep["show"], rep
    f.sim.wait_write(unlock_write_pred(cell), after=n0, what=f"relay of cell {cell}")
    f.kc.wait_notice("open", cell=cell, since=m0)
    started = f.plat_event("load_started", after=seq0, resv=resv)
    assert started["cell"] == cell and started.get("staff") == "bob" and \
        started.get("state") == "loading" and started.get("app") == "A-3001", started
    u = f.plat_event("unlock", after=seq0, cell=cell)
    assert u["reason"] == "staff_load", u
    f.wait_cell(cell, state="loading", resv=resv)

    f.close(cell, seq0, item="put")
    code = f.pickup_code(resv, after=seq0)
    assert code not in json.dumps(f.lk.events()), "the pickup code is in the signed ledger"
    ready = f.plat_event("pickup_ready", resv=resv)
    assert ready["cell"] == cell and ready.get("state") == "ready" and "due" in ready, ready
    assert f.resv_types(resv) == ["load_started", "code_issued", "pickup_ready"], \
        f.resv_types(resv)
    st = f.wait_cell(cell, state="ready", resv=resv)
    assert st["occupied"] is True and st["door"] == "closed", st
    f.only_relays(n0, [cell])
    # Delivered and acknowledged: the plain code no longer rests in the
    # database (only an undelivered issuance event may hold it).
    wait_for(lambda: _secrets_at_rest(f.lk) == 0, 5,
             what="the delivered pickup code gone from the database")
    f.stream_is_the_ledger()


def test_flow_staff_load_by_platform():
    f = Flow()
    f.add_staff("carol", "Carol C")
    # Unsigned: refused, no door.
    n0, seq0 = f.sim.last_write_n(), f.lk.last_seq()
    bad = f.call("load", sign=False, app="A-4001", size="S", staff="carol")
    assert bad.get("ok") is False and bad.get("field") == "ts", f"unsigned load -> {bad}"
    harness.assert_no_unlock(f.sim, n0, 0.3, "an unsigned load")

    m0 = f.kc.mark()
    r, code = f.load_by_platform("A-4001", "S", staff="carol")
    cell, resv = r["cell"], r["resv"]
    assert cell == 1 and r.get("app") == "A-4001", r
    opened = f.kc.find_notices("open", cell=cell, since=m0)
    assert opened and str(cell) in opened[0]["show"], f"no open notice for {cell}: {opened}"
    started = f.plat_event("load_started", after=seq0, resv=resv)
    assert started.get("staff") == "carol" and started["cell"] == cell, started
    u = f.plat_event("unlock", after=seq0, cell=cell)
    assert u["reason"] == "staff_load", u
    assert f.resv_types(resv) == ["load_started", "code_issued", "pickup_ready"], \
        f.resv_types(resv)
    st = f.wait_cell(cell, state="ready", resv=resv)
    assert st["occupied"] is True, st
    f.only_relays(n0, [cell])
    assert len(code) == DIGITS
    f.stream_is_the_ledger()


def test_flow_pickup():
    f = Flow()
    f.add_staff("carol", "Carol C")
    r, code = f.load_by_platform("A-5001", "M", staff="carol")
    cell, resv = r["cell"], r["resv"]

    seq0 = f.open_with({"op": "code", "code": code}, cell, "pickup", "pickup")
    rep = f.kc.replies[-1]
    assert "certificate" in rep["show"], rep
    f.close(cell, seq0, item="take")
    col = f.plat_event("collected", after=seq0, resv=resv)
    assert col["cell"] == cell and col.get("state") == "collected" and \
        col.get("app") == "A-5001", col
    used = f.plat_event("code_used", after=seq0, resv=resv)
    assert used["seq"] < col["seq"], (used, col)
    assert f.resv_types(resv) == ["load_started", "code_issued", "pickup_ready", "code_used",
                                  "collected"], f.resv_types(resv)
    st = f.wait_cell(cell, state="free")
    assert st["resv"] is None and st["occupied"] is False, st
    # The code is dead.
    f.refused({"op": "code", "code": code}, "invalid_code")
    f.stream_is_the_ledger()


def test_flow_dropoff_code_expires():
    f = Flow(faketime=True)
    n0 = f.sim.last_write_n()
    r = f.reserve("A-6001", "S", valid_s=60)
    cell, resv = r["cell"], r["resv"]
    reserved = f.plat_event("dropoff_reserved", resv=resv)
    valid_until = _iso_ms(reserved["valid_until"])
    assert 55_000 <= valid_until - _iso_ms(reserved["time"]) <= 61_000, reserved
    f.wait_cell(cell, state="reserved", resv=resv)
    # Still good just before the end: nothing happens on its own.
    time.sleep(0.3)
    assert not f.plat_events(type="expired"), "expired before its time"

    f.set_clock(61)
    exp = f.plat_event("expired", resv=resv, timeout=8)
    assert exp["cell"] == cell and exp.get("state") == "expired" and \
        exp.get("app") == "A-6001", exp
    assert _iso_ms(exp["time"]) >= valid_until, \
        f"expired at {exp['time']}, before its end {reserved['valid_until']}"
    assert f.resv_types(resv) == ["dropoff_reserved", "code_issued", "expired"], \
        f.resv_types(resv)
    st = f.wait_cell(cell, state="free")
    assert st["resv"] is None, st

    # The cell is free again: the keypad counts it, the next reservation
    # (its exp on lockerd's clock) gets it.
    s = f.kc.status()
    assert s.get("free", {}).get("S") == 16, f"free S cells after the expiry: {s}"
    r2 = f.reserve("A-6002", "S")
    assert r2["cell"] == cell, f"the expired cell {cell} was not given again: {r2}"

    # The applicant comes too late: refused, no relay, and told why
    # (proto/kiosk.md: error "expired"), not sent to retype a code that
    # is "not valid" into the guessing throttle.
    seq0 = f.lk.last_seq()
    tries = [f.kc.code(r["code"]), f.kc.scan(r["credential"])]
    harness.assert_no_unlock(f.sim, n0, 0.3, "an expired code")
    assert not f.lk.find_events("unlock", after=seq0)
    f.only_relays(n0, [])
    f.stream_is_the_ledger()
    why = {"code": "resv_tick ends the reservation and frees its slot, so resv_enter "
                   "finds no such code",
           "scan": "resv_enter_credential looks the slot up before it checks not_after"}
    for what, rep in zip(("code", "scan"), tries):
        assert rep.get("ok") is False and rep.get("error") == "expired" and \
            "expired" in rep.get("show", ""), \
            f"an expired drop-off {what} at the keypad -> {rep}; expected the error " \
            f"'expired' ({why[what]})"


def test_flow_overdue_pickup_taken_back():
    f = Flow(faketime=True, codes={"pickup_due_h": 1})
    f.add_staff("bob", "Bob B")
    r, code = f.load_by_platform("A-7001", "S", staff="bob")
    cell, resv = r["cell"], r["resv"]
    ready = f.plat_event("pickup_ready", resv=resv)
    due = _iso_ms(ready["due"])
    assert 3_500_000 <= due - _iso_ms(ready["time"]) <= 3_601_000, ready

    f.login("bob", "Bob B")
    # Nothing overdue yet: take-back has nothing to do.
    f.refused({"op": "take_back"}, "nothing", settle=0.2)

    f.set_clock(2 * 3600)
    over = f.plat_event("overdue", resv=resv, timeout=8)
    assert over["cell"] == cell and over.get("state") == "overdue" and \
        _iso_ms(over["time"]) >= due, over
    f.wait_cell(cell, state="overdue", resv=resv, occupied=True)

    f.login("bob", "Bob B")
    seq0, n0, m0 = f.lk.last_seq(), f.sim.last_write_n(), f.kc.mark()
    rep = f.kc.request({"op": "take_back"})
    assert rep.get("ok") is True and rep.get("cell") == cell, f"take_back -> {rep}"
    assert f"Cell {cell} is open" in rep["show"] and "back" in rep["show"], rep
    f.sim.wait_write(unlock_write_pred(cell), after=n0, what=f"relay of cell {cell}")
    u = f.plat_event("unlock", after=seq0, cell=cell)
    assert u["reason"] == "staff_takeback", u
    f.kc.wait_notice("open", cell=cell, since=m0)
    tb = f.plat_event("take_back", after=seq0, resv=resv)
    assert tb.get("staff") == "bob" and tb.get("state") == "taking_back", tb
    f.close(cell, seq0, item="take")
    ret = f.plat_event("returned", after=seq0, resv=resv)
    assert ret["cell"] == cell and ret.get("state") == "returned" and \
        ret.get("staff") == "bob", ret
    assert f.resv_types(resv) == ["load_started", "code_issued", "pickup_ready", "overdue",
                                  "take_back", "returned"], f.resv_types(resv)
    st = f.wait_cell(cell, state="free")
    assert st["resv"] is None and st["occupied"] is False, st
    f.only_relays(n0, [cell])
    # The applicant's code no longer opens it.
    f.refused({"op": "code", "code": code}, "invalid_code")
    f.stream_is_the_ledger()


def test_flow_cancel_empty():
    f = Flow()
    n0 = f.sim.last_write_n()
    r = f.reserve("A-8001")
    cell, resv = r["cell"], r["resv"]
    f.wait_cell(cell, state="reserved", resv=resv)
    c = f.call("cancel", resv=resv)
    assert c.get("ok") is True and c.get("resv") == resv, f"cancel -> {c}"
    ev = f.plat_event("cancelled", resv=resv)
    assert ev["cell"] == cell and ev.get("state") == "cancelled", ev
    assert f.resv_types(resv) == ["dropoff_reserved", "code_issued", "cancelled"], \
        f.resv_types(resv)
    st = f.wait_cell(cell, state="free")
    assert st["resv"] is None, st
    # The code is dead; a second cancel names the reservation.
    f.refused({"op": "code", "code": r["code"]}, "invalid_code")
    f.refused({"op": "scan", "credential": r["credential"]}, "invalid_code", settle=0.2)
    again = f.call("cancel", resv=resv)
    assert again.get("ok") is False and again.get("error") == "refused" and \
        str(resv) in again.get("reason", ""), f"second cancel -> {again}"
    # The cell is free again.
    r2 = f.reserve("A-8002")
    assert r2["cell"] == cell, (r, r2)
    f.only_relays(n0, [])
    f.stream_is_the_ledger()


def test_flow_cancel_with_documents_inside():
    f = Flow()
    f.add_staff("bob", "Bob B")
    r = f.reserve("A-9001")
    cell, resv = r["cell"], r["resv"]
    f.dropoff(r)
    c = f.call("cancel", resv=resv)
    assert c.get("ok") is True and c.get("resv") == resv, f"cancel -> {c}"
    ev = f.plat_event("cancelled", resv=resv)
    # resv.c: the documents stay for staff; the reservation stays
    # deposited, marked cancelled.
    assert ev["cell"] == cell and ev.get("state") == "deposited" and \
        ev.get("cancelled") is True, ev
    q = f.call("resv", resv=resv)
    assert q.get("ok") is True and q.get("state") == "deposited" and \
        q.get("cancelled") is True, f"resv after the cancel -> {q}"
    time.sleep(0.3)
    st = f.cell_states(cell)[-1]
    assert st["state"] == "deposited" and st["occupied"] is True and st["resv"] == resv, \
        f"the cell with documents must stay held: {st}"
    # Not given to anyone else, and the used code stays dead.
    r2 = f.reserve("A-9002")
    assert r2["cell"] != cell, f"a cell with documents inside was reserved again: {r2}"
    f.refused({"op": "code", "code": r["code"]}, "used")

    # Staff empty it.
    f.login("bob", "Bob B")
    seq0, n0, m0 = f.lk.last_seq(), f.sim.last_write_n(), f.kc.mark()
    rep = f.kc.request({"op": "retrieve"})
    assert rep.get("ok") is True and rep.get("cell") == cell and rep.get("remaining") == 0, \
        f"retrieve -> {rep}"
    f.sim.wait_write(unlock_write_pred(cell), after=n0, what=f"relay of cell {cell}")
    f.kc.wait_notice("open", cell=cell, since=m0)
    f.close(cell, seq0, item="take")
    ret = f.plat_event("retrieved", after=seq0, resv=resv)
    assert ret.get("staff") == "bob" and ret.get("cancelled") is True, ret
    assert f.resv_types(resv) == ["dropoff_reserved", "code_issued", "code_used", "deposited",
                                  "cancelled", "retrieved"], f.resv_types(resv)
    st = f.wait_cell(cell, state="free")
    assert st["resv"] is None, st
    f.only_relays(n0, [cell])
    f.stream_is_the_ledger()


def test_flow_reissue():
    f = Flow()
    n0 = f.sim.last_write_n()
    r = f.reserve("A-10001")
    cell, resv = r["cell"], r["resv"]
    new = f.call("reissue", resv=resv)
    assert new.get("ok") is True and new.get("resv") == resv and new.get("cell") == cell, \
        f"reissue -> {new}"
    assert isinstance(new.get("code"), str) and len(new["code"]) == DIGITS and \
        new["code"] != r["code"] and new.get("credential") != r["credential"], (r, new)
    ev = f.plat_event("code_reissued", resv=resv)
    assert ev["cell"] == cell and ev.get("state") == "reserved" and "code" not in ev, ev
    # The old code and credential are dead at once.
    f.refused({"op": "code", "code": r["code"]}, "invalid_code")
    f.refused({"op": "scan", "credential": r["credential"]}, "invalid_code", settle=0.2)
    f.only_relays(n0, [])
    dep = f.dropoff(dict(r, code=new["code"]))
    assert dep["resv"] == resv, dep
    assert f.resv_types(resv) == ["dropoff_reserved", "code_issued", "code_reissued",
                                  "code_used", "deposited"], f.resv_types(resv)
    f.wait_cell(cell, state="deposited", resv=resv)
    f.refused({"op": "code", "code": new["code"]}, "used")
    f.stream_is_the_ledger()


def test_flow_remote_open():
    f = Flow()
    cell = 5
    seq0, n0, m0 = f.lk.last_seq(), f.sim.last_write_n(), f.kc.mark()
    bad = f.call("open", sign=False, cell=cell)
    assert bad.get("ok") is False and bad.get("error") == "bad_command" and \
        bad.get("field") == "ts", f"unsigned open -> {bad}"
    # Signed by another key: refused too, and an alarm.
    other = nacl.signing.SigningKey.generate()
    c = harness.command("open", "forged-open-1", key=other, now_ms=f.now_ms(), cell=cell,
                        nonce=f"forged-{time.time_ns()}")
    f.cmd(None, raw=json.dumps(c))
    forged = f.reply("forged-open-1")
    assert forged.get("ok") is False and forged.get("error") == "unauthorised", forged
    alarm = f.plat_event("command_refused", after=seq0, request_id="forged-open-1")
    assert alarm.get("alarm") is True and alarm.get("op") == "open", alarm
    harness.assert_no_unlock(f.sim, n0, 0.5, "an unsigned or forged open")
    assert not f.plat_events(seq0, type="unlock"), "a refused open was recorded as an unlock"
    assert not f.kc.find_notices("open", since=m0), f.kc.notices[m0:]

    seq1, n1 = f.lk.last_seq(), f.sim.last_write_n()
    ok = f.call("open", sign=True, cell=cell)
    assert ok.get("ok") is True and ok.get("cell") == cell, f"signed open -> {ok}"
    f.sim.wait_write(unlock_write_pred(cell), after=n1, what=f"relay of cell {cell}")
    u = f.plat_event("unlock", after=seq1, cell=cell)
    assert u["reason"] == "remote" and u["attempt"] == 1, u
    f.plat_event("door_opened", after=seq1, cell=cell, expected=True)
    n = f.kc.wait_notice("open", cell=cell, since=m0)
    assert f"Cell {cell}" in n["show"], n
    f.wait_cell(cell, door="open")
    f.close(cell, seq1)
    f.wait_cell(cell, door="closed", state="free")
    f.only_relays(n0, [cell])
    f.stream_is_the_ledger()


def test_flow_jammed_door_during_dropoff():
    f = Flow()
    r = f.reserve("A-12001")
    cell, resv = r["cell"], r["resv"]
    assert cell == 1, r
    f.sim.cmd("jam 1 1 on")
    seq0, n0, m0 = f.lk.last_seq(), f.sim.last_write_n(), f.kc.mark()
    rep = f.kc.code(r["code"])
    assert rep.get("ok") is True and rep.get("cell") == cell and \
        f"Cell {cell}" in rep.get("show", ""), f"code -> {rep}"
    first = f.sim.wait_write(unlock_write_pred(cell), after=n0, what="first pulse")
    f.sim.wait_write(unlock_write_pred(cell), after=first["n"], timeout=4, what="the retry")
    jam = f.plat_event("door_jammed", after=seq0, cell=cell, timeout=6)
    assert jam.get("alarm") is True and jam.get("attempts") == 2, jam
    info = f.kc.wait_notice("info", since=m0, contains="instead", timeout=3)
    new_cell = info.get("cell")
    assert new_cell not in (None, cell) and f"Cell {cell}" in info["show"] and \
        f"Cell {new_cell}" in info["show"], f"the screen does not name the new cell: {info}"
    re = f.plat_event("reassigned", after=jam["seq"], resv=resv)
    assert re.get("from_cell") == cell and re.get("cell") == new_cell, re
    w = f.sim.wait_write(unlock_write_pred(new_cell), after=first["n"],
                         what=f"relay of the new cell {new_cell}")
    f.plat_event("door_opened", after=seq0, cell=new_cell, expected=True)
    f.kc.wait_notice("open", cell=new_cell, since=m0)
    f.close(new_cell, seq0, item="put")
    dep = f.plat_event("deposited", after=seq0, resv=resv)
    assert dep["cell"] == new_cell, dep
    relays = f.only_relays(n0, [cell, new_cell])
    assert relays == [cell, cell, new_cell], f"pulse, retry, then the other cell: {relays}"
    assert w["n"] > first["n"]
    # The jammed cell is out of service (door_jammed says so) until staff
    # see to it.
    st = f.wait_cell(cell, fault="door_jammed")
    assert st["state"] == "out_of_service" and st["in_service"] is False and \
        st["resv"] is None, st
    f.wait_cell(new_cell, state="deposited", resv=resv)
    f.stream_is_the_ledger()


def test_flow_board_dead_during_pickup():
    f = Flow()
    f.add_staff("carol", "Carol C")
    r, code = f.load_by_platform("A-13001", "M", staff="carol")
    cell, resv = r["cell"], r["resv"]
    assert cell >= 17, f"an M cell is on board B: {r}"

    seq0 = f.lk.last_seq()
    f.sim.cmd("offline 2 on")
    fault = f.plat_event("board_fault", after=seq0, board="B")
    assert fault.get("error"), fault
    f.wait_cell(cell, fault="board_fault")
    rep = f.refused({"op": "code", "code": code}, "cell_unavailable")
    assert "cannot be opened" in rep["show"] and "code still works" in rep["show"], \
        f"the screen text does not say what to do: {rep}"
    assert not f.lk.find_events("code_used", resv=resv), "the code was spent on a dead board"

    seq1 = f.lk.last_seq()
    f.sim.cmd("offline 2 off")
    f.plat_event("board_recovered", after=seq1, board="B")
    f.wait_cell(cell, fault=None)
    seq2 = f.open_with({"op": "code", "code": code}, cell, "pickup", "pickup")
    f.close(cell, seq2, item="take")
    f.plat_event("collected", after=seq2, resv=resv)
    assert f.resv_types(resv) == ["load_started", "code_issued", "pickup_ready", "code_used",
                                  "collected"], f.resv_types(resv)
    f.stream_is_the_ledger()


def test_flow_full_locker():
    # 3 S, 2 M, 1 L on board A; board B has no cells here.
    f = Flow(cells={"1-3": "A:1 S", "4-5": "A:4 M", "6": "A:6 L"})
    n0 = f.sim.last_write_n()
    got = [f.reserve(f"A-14{i:03d}", "M")["cell"] for i in range(3)]
    assert got == [4, 5, 6], f"M requests take the M cells, then the L cell: {got}"
    s = f.kc.status()
    assert s.get("free") == {"S": 3, "M": 0, "L": 0}, f"keypad status: {s}"
    seq0 = f.lk.last_seq()
    no = f.call("reserve", app="A-14999", size="M")
    assert no.get("ok") is False and no.get("error") == "refused" and \
        "no free cell" in no.get("reason", ""), f"reserve on a full locker -> {no}"
    assert "code" not in no, no
    for size in ("L",):
        no = f.call("reserve", app="A-14998", size=size)
        assert no.get("ok") is False and "no free cell" in no.get("reason", ""), no
    time.sleep(0.3)
    assert not f.lk.find_events("dropoff_reserved", after=seq0), "a refused reserve recorded"
    # Smaller cells are still there.
    small = f.reserve("A-14100", "S")
    assert small["cell"] == 1, small
    f.wait_cell(6, state="reserved")
    f.only_relays(n0, [])
    f.stream_is_the_ledger()


def test_flow_pickup_while_platform_unreachable():
    f = Flow()
    f.add_staff("carol", "Carol C")
    r, code = f.load_by_platform("A-15001", "S", staff="carol")
    cell, resv = r["cell"], r["resv"]
    before = f.lk.last_seq()
    f.plat.wait_events(before)

    f.broker.stop()
    # The applicant collects with nobody listening.
    seq0, n0, m0 = f.lk.last_seq(), f.sim.last_write_n(), f.kc.mark()
    rep = f.kc.code(code)
    assert rep.get("ok") is True and rep.get("cell") == cell and \
        rep.get("purpose") == "pickup" and f"Cell {cell}" in rep.get("show", ""), \
        f"code with the broker down -> {rep}"
    f.sim.wait_write(unlock_write_pred(cell), after=n0, what=f"relay of cell {cell}")
    f.lk.wait_event("door_opened", cell=cell, after=seq0, timeout=3)
    f.kc.wait_notice("open", cell=cell, since=m0)
    f.sim.cmd(f"take {harness.unit_ch(cell)[0]} {harness.unit_ch(cell)[1]}")
    close_door(f.sim, cell)
    f.kc.wait_notice("closed", cell=cell, since=m0)
    col = f.lk.wait_event("collected", cell=cell, after=seq0, resv=resv)
    f.only_relays(n0, [cell])
    assert not f.plat_events(before), "events reached the platform with the broker down"

    time.sleep(0.5)
    f.broker.start()
    got = f.stream_is_the_ledger()
    backlog = [e for e in got if e["seq"] > before]
    types = [e["type"] for e in backlog]
    assert "code_used" in types and "collected" in types and \
        backlog[-1]["seq"] >= col["seq"], f"the backlog: {types}"
    _in_order(backlog, "code_used", "unlock", "door_opened", "door_closed", "collected")
    not_replayed = [e for e in backlog if e.get("replayed") is not True]
    assert not not_replayed, f"backlog events not marked replayed: {not_replayed}"
    # ("started" is recorded before the link is up: it waited for it.)
    live = [(e["seq"], e["type"]) for e in got if 1 < e["seq"] <= before and e.get("replayed")]
    assert not live, f"live events marked replayed: {live}"
    st = f.wait_cell(cell, state="free")
    assert st["resv"] is None, st
