"""The chaos test (issue #6): lockerd is killed with SIGKILL at random
moments while applicants and staff use the locker, restarted each time,
and afterwards the invariants of DESIGN.md are proved from four views:
the ledger (SQLite, read directly), locksim (relay writes and door
transitions), the platform (every MQTT message) and the keypad.

  CHAOS_KILLS  kills in one run (default 30; `make soak`: 300)
  CHAOS_SEED   the seed of every random choice (printed; the timings, and so
               the exact interleaving, still vary from run to run)

The workload runs in threads, each tolerant of refusals and of a lockerd
that is dead or starting:
  * two applicants: drop-offs (reserve over MQTT -> code at the keypad) and
    pickups (the code from code_issued on the event stream); a code whose
    door never opened is typed again (the grace window); now and then a
    spent code is typed again and must be refused;
  * staff at the keypad: loads and retrieval runs (after log-in);
  * the back office: signed loads over MQTT;
  * the person: closes every door lockerd has recorded open (its
    door_opened count has caught up with locksim's openings), after
    putting an item in (an empty cell) or taking it out (a full one), once
    the relay pulse is over; so no door opens and closes unseen by lockerd,
    but doors do close while lockerd is dead (start-up reconciliation);
  * the monitor: polls locksim every 20 ms for relay writes and door
    transitions, and on every relay pulse reads the ledger.
The main thread kills lockerd 0.2-3 s after each (re)start; one kill in
three is aimed at 0-6 ms after a worker asked for a door. Board B answers
25 ms late (a slow RS485 line; the bus timeout is raised to 300 ms), which
holds unlocks back in the bus worker after their commit: the window
between an unlock's record and its pulse is then wide enough to be hit.

What is checked afterwards (the locker at rest first: every door closed,
no relay on, no cell unlocking, no reservation mid-way):
 1. A code works once. From the ledger: a reservation's code is spent
    once a door_opened and then a door_closed of its cell follow its
    code_used; after that there is no code_used of it and no unlock with a
    code's reason (dropoff / pickup) attributed to it (the newest
    code_used / reassigned on the cell). At the keypad: every spent code,
    typed once at the end, is refused (used / invalid_code) with no relay
    write and no unlock or code_used recorded; so was every spent code
    re-typed during the run.
 2. Nothing moves unrecorded. (a) On every relay pulse, the monitor finds
    at least as many unlock events of the cell committed as pulses of it
    so far. (b) Per lockerd run and cell, pulses and unlock events pair up
    in order, each pulse after its event's time; an unlock without a
    pulse is allowed only as the last of its cell in a killed run (or
    when unlock_failed follows it), and then no door_opened of the cell
    may come before its next unlock; how each was settled (the code typed
    again within grace, code_restored, ...) is counted. (c) Per cell, the
    door openings locksim showed equal the ledger's door_opened events.
    (d) One `started` per run, boot counters consecutive.
 3. No event is lost: the platform's first copies are the ledger's seqs
    1..N in order, each equal to the ledger's event (seq, prev, sig, body)
    apart from the transport fields.
 4. The chain verifies (lockerd --verify-ledger); lockerd stops cleanly.
 5. PRAGMA integrity_check is ok after lockerd stopped.
 6. No relay is left energised: locksim's coils are all off.
Then, after the one-line summary, two lockerd bugs this test found fail
it if they showed up: a false forced_open alarm (a door that sprang open
after a recorded pulse, lockerd back before it did), and a staff
reservation stuck because its unlock died with lockerd.
"""

import bisect
import calendar
import collections
import json
import os
import random
import sqlite3
import threading
import time

import nacl.encoding
import nacl.signing

import harness
from harness import (Lockerd, Locksim, Mosquitto, Platform, config, mqtt_extra, wait_for)

SOAK = os.environ.get("SOAK") == "1"
KILLS = int(os.environ.get("CHAOS_KILLS") or (300 if SOAK else 30))

KEY = nacl.signing.SigningKey.generate()
PK_HEX = KEY.verify_key.encode(encoder=nacl.encoding.HexEncoder).decode()
STAFF, STAFF_NAME, PIN = "bob", "Bob B", "246810"

# Default cell map: board A (generic-16, coil pulses) cells 1-16 size S,
# board B (waveshare flash) cells 17-24 size M.
CELLS = list(range(1, 25))
# After a restart, a recorded unlock whose door is still shut is awaited for
# the first board read and unlock_confirm_ms (harness.py: 1000 + 800 ms),
# then failed back to its reservation. Only after that is it stuck.
RESTART_WAIT_S = (1000 + 800) / 1000 + 1.0
CODE_REASONS = ("dropoff", "pickup")      # unlocks a code caused
DONE = {"deposited", "retrieving", "retrieved", "collected"}   # the applicant's part done
FINAL = DONE | {"returned", "expired", "cancelled"}
TRANSPORT = ("replayed", "code")          # fields the link adds to an event


def _cell_of(unit, ch):
    return ch if unit == harness.BOARD_A_UNIT else 16 + ch


def _pulse_cell(w):
    """The cell whose lock a Modbus write releases, or None."""
    unit, fc, addr, value = w.get("unit"), w.get("fc"), w.get("addr"), w.get("value")
    if fc != 5:
        return None
    if unit == harness.BOARD_A_UNIT and value == harness.WRITE_ON:
        return addr + 1
    if unit == harness.BOARD_B_UNIT and addr >= harness.FLASH_BASE and value:
        return addr - harness.FLASH_BASE + 17
    if unit == harness.BOARD_B_UNIT and value == harness.WRITE_ON:
        return addr + 17
    return None


def _iso_ms(s):
    t = time.strptime(s[:19], "%Y-%m-%dT%H:%M:%S")
    return calendar.timegm(t) * 1000 + int(s[20:23])


# ---------------------------------------------------------------------------
# The ledger, read straight from the database (also while lockerd is dead)


class Ledger:
    """Events in seq order, and what they say about cells and reservations.
    refresh() reads what was committed since the last call."""

    def __init__(self, db_path):
        self.path = db_path
        self.db = None
        self.lock = threading.RLock()
        self.events = []
        self.count = collections.Counter()      # (type, cell)
        self.last = {}                          # (type, cell) -> seq
        self.resv = {}                          # resv -> newest event
        self.resv_events = collections.defaultdict(list)
        self.app_resv = {}                      # app -> resv
        self.started = []                       # seqs of "started"
        self.started_mono = 0.0                 # when the newest one was read
        self.last_unlock = {}                   # cell -> newest unlock event

    def refresh(self):
        with self.lock:
            try:
                if self.db is None:
                    if not os.path.exists(self.path):
                        return
                    self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                              check_same_thread=False, timeout=2)
                rows = self.db.execute("SELECT seq, body FROM events WHERE seq > ? "
                                       "ORDER BY seq", (len(self.events),)).fetchall()
            except sqlite3.Error:
                self.close()
                return
            for seq, body in rows:
                e = json.loads(body)
                if seq != len(self.events) + 1 or e.get("seq") != seq:
                    raise AssertionError(f"ledger row {seq} out of order (body seq "
                                         f"{e.get('seq')}, {len(self.events)} read before)")
                self.events.append(e)
                key = (e["type"], e.get("cell"))
                self.count[key] += 1
                self.last[key] = seq
                if e["type"] == "unlock":
                    self.last_unlock[e.get("cell")] = e
                if e["type"] == "started":
                    self.started.append(seq)
                    self.started_mono = time.monotonic()
                if "resv" in e:
                    self.resv[e["resv"]] = e
                    self.resv_events[e["resv"]].append(e)
                    if e["type"] in ("dropoff_reserved", "load_started"):
                        self.app_resv[e.get("app")] = e["resv"]

    def close(self):
        with self.lock:
            if self.db is not None:
                self.db.close()
            self.db = None

    # What the ledger says now (call refresh() first).
    def n(self, type, cell):
        return self.count[(type, cell)]

    def seq_of(self, type, cell):
        return self.last.get((type, cell), 0)

    def seq_of_before(self, type, cell, seq):
        """The seq of the newest event of that type and cell before seq."""
        for e in reversed(self.events[:seq - 1]):
            if e["type"] == type and e.get("cell") == cell:
                return e["seq"]
        return 0

    def door_open(self, cell):
        return self.seq_of("door_opened", cell) > self.seq_of("door_closed", cell)

    def state(self, resv):
        """The reservation's state as far as the ledger shows it. Two steps
        have no event of their own: a code-opened door seen open ("open":
        door_opened after the code_used) and a retrieval under way
        ("retrieving": a staff_retrieve unlock of the cell after the
        deposited event, not failed since)."""
        e = self.resv.get(resv)
        if e is None:
            return None
        st, cell = e.get("state"), e.get("cell")
        if st == "opening" and self.seq_of("door_opened", cell) > e["seq"]:
            return "open"
        u = self.last_unlock.get(cell)
        if st == "deposited" and u is not None and u["seq"] > e["seq"] and \
                u.get("reason") == "staff_retrieve" and \
                self.seq_of("unlock_failed", cell) < u["seq"]:
            return "retrieving"
        return st

    def resv_cell(self, resv):
        e = self.resv.get(resv)
        return e and e.get("cell")

    def last_of(self, resv, type):
        found = [e["seq"] for e in self.resv_events.get(resv, ()) if e["type"] == type]
        return found[-1] if found else 0

    def boot_seq(self):
        return self.started[-1] if self.started else 0

    def by_state(self, *states):
        with self.lock:     # another thread's refresh() adds to resv
            return [r for r in list(self.resv) if self.state(r) in states]


# ---------------------------------------------------------------------------
# locksim, watched: relay pulses and door transitions


class Monitor(threading.Thread):
    """Polls locksim's write log and state every ~20 ms. On each relay
    pulse it reads the ledger at once: the pulse's unlock event must be
    committed already (unlock events of the cell >= pulses of the cell)."""

    def __init__(self, sim, ledger):
        super().__init__(daemon=True, name="monitor")
        self.sim = sim
        self.ledger = ledger
        self.client = harness.JsonLineClient(sim.control_path)
        self.lock = threading.Lock()
        self.stop_flag = threading.Event()
        self.last_n = 0
        self.pulses = []                 # {"cell","n","t"}
        self.npulses = collections.Counter()
        self.odd_writes = []             # FC15 with a bit set: lockerd never sends one
        self.opens = collections.defaultdict(list)   # cell -> [t] of door openings
        self.door = {c: False for c in CELLS}
        self.coil = {c: 0 for c in CELLS}
        self.item = {c: False for c in CELLS}
        self.offsets = []                # (mono, wall - mono)
        self.violations = []
        self.errors = 0
        self.polls = 0

    def run(self):
        while not self.stop_flag.is_set():
            try:
                self.poll()
            except Exception as e:  # keep watching; counted
                self.errors += 1
                if self.errors < 5:
                    print(f"chaos: monitor: {e!r}")
                self.client.close()
            time.sleep(0.02)
        self.client.close()

    def poll(self):
        r = self.client.request(f"writes {self.last_n}")
        new = []
        for w in r["writes"]:
            if w["n"] <= self.last_n:
                continue
            self.last_n = w["n"]
            cell = _pulse_cell(w)
            if cell is not None:
                new.append((cell, w))
            elif w.get("fc") == 15 and "1" in str(w.get("bits", "")):
                self.odd_writes.append(w)
        if new:
            self.ledger.refresh()
            with self.lock:
                for cell, w in new:
                    self.npulses[cell] += 1
                    self.pulses.append({"cell": cell, "n": w["n"], "t": w["t"]})
                    u = self.ledger.n("unlock", cell)
                    if u < self.npulses[cell]:
                        self.violations.append(
                            f"relay pulse #{self.npulses[cell]} of cell {cell} (write "
                            f"n={w['n']}) seen with only {u} unlock event(s) of that "
                            f"cell committed")
        st = self.client.request("state")
        with self.lock:
            self.offsets.append((st["t"], time.time() - time.monotonic()))
            for b in st["boards"]:
                for c in b["channels"]:
                    cell = _cell_of(b["unit"], c["ch"])
                    if cell not in self.door:
                        continue
                    if c["door_open"] and not self.door[cell]:
                        self.opens[cell].append(st["t"])
                    self.door[cell] = bool(c["door_open"])
                    self.coil[cell] = c["coil"]
                    self.item[cell] = bool(c["item"])
            self.polls += 1

    def snapshot(self):
        with self.lock:
            return (dict(self.door), dict(self.coil), dict(self.item),
                    {c: len(v) for c, v in self.opens.items()})

    def wall_offset(self, t):
        """wall - monotonic, as sampled nearest to monotonic time t."""
        with self.lock:
            i = bisect.bisect_left(self.offsets, (t,))
            near = self.offsets[max(0, i - 1):i + 1]
        return min(near, key=lambda o: abs(o[0] - t))[1]


class Person(threading.Thread):
    """The people at the locker: a door lockerd has recorded open (its
    door_opened count has caught up with locksim's openings) is dealt
    with (item in if empty, out if full) and closed 0.1-0.7 s later,
    after its relay pulse is over. Closing may happen while lockerd is
    dead: start-up reconciliation must record it."""

    def __init__(self, sim, ledger, monitor, rng):
        super().__init__(daemon=True, name="person")
        self.sim = sim
        self.ledger = ledger
        self.monitor = monitor
        self.rng = rng
        self.client = harness.JsonLineClient(sim.control_path)
        self.stop_flag = threading.Event()
        self.closed = 0
        self.errors = 0

    def run(self):
        due = {}
        while not self.stop_flag.is_set():
            try:
                door, coil, item, opens = self.monitor.snapshot()
                self.ledger.refresh()
                now = time.monotonic()
                for cell in CELLS:
                    if not door[cell] or coil[cell]:
                        due.pop(cell, None)
                        continue
                    if self.ledger.n("door_opened", cell) < opens.get(cell, 0):
                        continue        # lockerd has not seen this opening yet
                    if cell not in due:
                        due[cell] = now + self.rng.uniform(0.1, 0.7)
                    elif now >= due[cell]:
                        unit, ch = harness.unit_ch(cell)
                        self.client.request(f"{'take' if item[cell] else 'put'} {unit} {ch}")
                        self.client.request(f"close {unit} {ch}")
                        self.closed += 1
                        del due[cell]
            except Exception as e:
                self.errors += 1
                if self.errors < 5:
                    print(f"chaos: person: {e!r}")
                self.client.close()
            time.sleep(0.03)
        self.client.close()


# ---------------------------------------------------------------------------
# The platform's commands and the keypad, tolerant of a dead lockerd


class PlatformSide:
    """Signed and plain commands over MQTT, retried under the same request
    id until a reply comes; replies and pickup codes indexed as they
    arrive."""

    def __init__(self, plat):
        self.plat = plat
        self.lock = threading.Lock()
        self.replies = {}                # request_id -> first reply
        self.codes = {}                  # resv -> pickup code (code_issued)
        self.n = 0
        orig = plat.c.on_message

        def on_message(c, userdata, msg):
            orig(c, userdata, msg)
            try:
                body = json.loads(msg.payload.decode())
            except ValueError:
                return
            if not isinstance(body, dict):
                return
            with self.lock:
                if msg.topic.endswith("/reply") and "request_id" in body:
                    self.replies.setdefault(body["request_id"], body)
                elif msg.topic.endswith("/events") and body.get("type") == "code_issued" \
                        and isinstance(body.get("code"), str):
                    self.codes.setdefault(body["resv"], body["code"])
        plat.c.on_message = on_message

    def call(self, op, sign=None, timeout=15, stop=None, **fields):
        """The reply, or None. A repeat (same request id) gets the stored
        reply or `unknown_outcome`; exactly-once is lockerd's job. Signed
        (for this locker) when the op must be (harness.SIGNED_OPS)."""
        with self.lock:
            self.n += 1
            rid = f"chaos-{op}-{self.n}-{time.time_ns()}"
        now = int(time.time() * 1000)
        c = harness.command(op, rid, exp_ms=now + 60_000, sign=sign, key=KEY, now_ms=now,
                            **fields)
        payload = json.dumps(c)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not (stop and stop.is_set()):
            self.plat.c.publish(f"{self.plat.prefix}/cmd", payload, qos=1)
            until = min(deadline, time.monotonic() + 3)
            while time.monotonic() < until:
                with self.lock:
                    r = self.replies.get(rid)
                if r is not None:
                    return r
                time.sleep(0.05)
        return None


class Keypad:
    """One keypad connection; a request to a dead lockerd gives None."""

    def __init__(self, path):
        self.kc = harness.KioskClient(path, timeout=3, connect=False)

    def request(self, obj):
        try:
            if self.kc.sock is None:
                self.kc.connect(timeout=0.3)
            return self.kc.request(obj, timeout=3)
        except (harness.HarnessError, OSError):
            self.kc.close()
            return None


# ---------------------------------------------------------------------------
# The world and its workload


class Chaos:
    def __init__(self, seed):
        self.seed = seed
        self.broker = Mosquitto()
        self.plat = Platform(self.broker)
        self.side = PlatformSide(self.plat)
        self.sim = Locksim()
        # Board B answers 25 ms late, like a slow RS485 line: the one bus
        # worker then often holds an unlock back for a while after its
        # commit, a window an aimed kill can hit.
        self.sim.cmd(f"slow {harness.BOARD_B_UNIT} 25")
        ex = harness.custody_extra(codes={"grace_s": 10})
        # Room for that on a busy machine: a reply later than the timeout
        # would make board B faulty, which is not what this test is about.
        ex["bus sim"] = {"timeout_ms": 300}
        ex.update(mqtt_extra(self.broker, platform_key=PK_HEX, inflight=8))
        self.ledger = None
        self.monitor = None
        self.cfg = config(self.sim, extra=ex)
        self.phase_t = time.monotonic()
        self.phases = []
        self.runs = [[time.monotonic(), None]]       # [start, end] in monotonic s
        self.killed = set()                          # indexes of runs ended by SIGKILL
        self.lk = Lockerd(self.cfg)
        self.lk.wait_event("started", timeout=10)
        self.ledger = Ledger(self.lk.db_path)
        harness.add_staff(self.lk, STAFF, PIN, name=STAFF_NAME)
        self.stop = threading.Event()
        self.trigger = threading.Event()
        self.stats = collections.Counter()
        self.taken = set()              # pickups an applicant has gone for
        self.known = {}                 # code -> resv, every drop-off code handed out
        self.spent = {}                 # code -> resv, codes whose visit was completed
        self.reuse = []                 # (code, resv, reply) of re-typed spent codes
        self.notes = []                 # things worth saying in the report
        self.lock = threading.Lock()
        self.errors = []

    def count(self, what, n=1):
        with self.lock:
            self.stats[what] += n

    def phase(self, name):
        """Marks the end of a phase of the test, for the figures."""
        now = time.monotonic()
        self.phases.append((name, now - self.phase_t))
        self.phase_t = now

    def note(self, text):
        with self.lock:
            self.notes.append(text)

    def sleep(self, s):
        self.stop.wait(s)

    # -- applicants ---------------------------------------------------------

    def use_code(self, kp, code, resv):
        """Types the code until the ledger says its door opened and closed
        (the person closes it); re-types it when the door never opened
        (the unlock died with lockerd: the grace window). True when the
        reservation reached its end state."""
        L = self.ledger
        deadline = time.monotonic() + 30
        typed_at = 0.0
        while time.monotonic() < deadline and not self.stop.is_set():
            L.refresh()
            st = L.state(resv)
            if st in FINAL:
                return st in DONE
            cell = L.resv_cell(resv)
            used = L.last_of(resv, "code_used")
            waiting = st in ("reserved", "ready", "overdue")
            lost = (st == "opening" and L.seq_of("door_opened", cell) < used and
                    time.monotonic() - typed_at > 2.5)
            if waiting or lost:
                self.arm()
                rep = kp.request({"op": "code", "code": code})
                typed_at = time.monotonic()
                if rep is None:
                    self.sleep(0.1)
                    continue
                if rep.get("ok"):
                    self.count("codes_typed_ok")
                    if lost:
                        self.count("grace_reopen")
                elif rep.get("error") == "wait":
                    self.sleep(min(rep.get("wait_s", 1), 2))
                else:
                    self.count(f"code_refused_{rep.get('error')}")
                    self.sleep(0.3)
            else:
                self.sleep(0.05)
        return False

    def dropoff(self, kp, rng, i):
        app = f"C-D{i}"
        size = "S" if rng.random() < 0.8 else "M"
        r = self.side.call("reserve", app=app, size=size, valid_s=120, stop=self.stop)
        if r is None or not r.get("ok"):
            why = "no reply" if r is None else r.get("reason") or r.get("error")
            self.count(f"reserve_refused: {why}")
            if "no free cell" in str(why):
                self.sleep(1.0)         # the locker is full: staff will make room
            self.ledger.refresh()
            resv = self.ledger.app_resv.get(app)
            if resv is not None and self.ledger.state(resv) == "reserved":
                # It ran, but its reply (the only copy of the code) was
                # lost with lockerd: the platform cancels it.
                c = self.side.call("cancel", resv=resv, stop=self.stop)
                self.count("reserve_lost_cancelled", bool(c and c.get("ok")))
            return
        if "code" not in r:
            self.count("reserve_code_withheld")
            c = self.side.call("cancel", resv=r["resv"], stop=self.stop)
            self.count("reserve_lost_cancelled", bool(c and c.get("ok")))
            return
        self.count("reserved")
        with self.lock:
            self.known[r["code"]] = r["resv"]
        if self.use_code(kp, r["code"], r["resv"]):
            self.count("dropoffs")
            with self.lock:
                self.spent[r["code"]] = r["resv"]

    def pickup(self, kp, rng, resv, code):
        if self.use_code(kp, code, resv):
            self.count("pickups")
            with self.lock:
                self.spent[code] = resv

    def retype_spent(self, kp, rng):
        with self.lock:
            if not self.spent:
                return
            code = rng.choice(sorted(self.spent))
            resv = self.spent[code]
        for _ in range(5):
            rep = kp.request({"op": "code", "code": code})
            if rep is not None and rep.get("error") == "wait":
                self.sleep(min(rep.get("wait_s", 1), 2))
                continue
            if rep is not None:
                with self.lock:
                    self.reuse.append((code, resv, rep))
            return

    def applicant(self, rng, who):
        kp = Keypad(harness.kiosk_path(self.lk))
        i = 0
        while not self.stop.is_set():
            i += 1
            try:
                self.ledger.refresh()
                with self.side.lock:
                    codes = dict(self.side.codes)
                with self.lock:
                    ready = [(r, c) for r, c in codes.items() if r not in self.taken and
                             self.ledger.state(r) in ("ready", "overdue")]
                    pick = rng.choice(sorted(ready)) if ready and rng.random() < 0.6 else None
                    if pick:
                        self.taken.add(pick[0])
                if pick:
                    self.pickup(kp, rng, *pick)
                else:
                    self.dropoff(kp, rng, f"{who}-{i}")
                if rng.random() < 0.25:
                    self.retype_spent(kp, rng)
            except Exception as e:
                self.errors.append(f"applicant: {e!r}")
                import traceback
                traceback.print_exc()
                self.sleep(0.5)
            self.sleep(rng.uniform(0.05, 0.4))
        kp.kc.close()

    # -- staff --------------------------------------------------------------

    def staff_login(self, kp):
        for _ in range(3):
            rep = kp.request({"op": "login", "staff": STAFF, "pin": PIN})
            if rep is not None and rep.get("ok"):
                return True
            self.sleep(0.2)
        return False

    def staff_op(self, kp, req):
        """A staff request at the keypad, logging in when the session is
        gone (a restart ends it)."""
        rep = kp.request(req)
        if rep is not None and rep.get("error") == "not_logged_in" and self.staff_login(kp):
            rep = kp.request(req)
        return rep

    def stuck(self):
        """Reservations whose door lockerd opened for staff but that never
        opened: the unlock was recorded, then lockerd died before the pulse
        or before the door was seen open, and well after the restart
        (RESTART_WAIT_S) neither the door opened nor the unlock was failed
        back to its reservation."""
        L = self.ledger
        L.refresh()
        out = []
        for resv in L.by_state("loading", "retrieving", "taking_back"):
            cell = L.resv_cell(resv)
            last_unlock = L.seq_of("unlock", cell)
            if L.door_open(cell) or L.seq_of("door_opened", cell) > last_unlock:
                continue
            if last_unlock < L.boot_seq() and \
                    time.monotonic() - L.started_mono > RESTART_WAIT_S:
                out.append((resv, cell))
        return out

    def unstick(self, kp):
        for resv, cell in self.stuck():
            self.sleep(0.5)
            if (resv, cell) not in self.stuck():
                continue
            rep = self.staff_op(kp, {"op": "open", "cell": cell})
            if rep is not None and rep.get("ok"):
                self.count("stuck_opened_for_service")
                self.note(f"reservation {resv} ({self.ledger.state(resv)}) in cell {cell}: "
                          f"its unlock died with lockerd and nothing retried it; staff "
                          f"opened the cell for service")

    def wait_state(self, resv, states, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stop.is_set():
            self.ledger.refresh()
            if self.ledger.state(resv) in states:
                return True
            self.sleep(0.05)
        return False

    def load(self, kp, rng, app):
        """A certificate loaded by staff: signed over MQTT (kp None) or at
        the keypad; the person puts it in and closes the door; the pickup
        code comes on the event stream."""
        size = "M" if rng.random() < 0.6 else "S"
        self.arm()
        if kp is None:
            r = self.side.call("load", sign=True, app=app, size=size, staff=STAFF,
                               stop=self.stop)
            self.count("load_signed")
        else:
            r = self.staff_op(kp, {"op": "load", "size": size, "app": app})
            self.count("load_keypad")
        self.ledger.refresh()
        resv = (r or {}).get("resv") if (r or {}).get("ok") else self.ledger.app_resv.get(app)
        if resv is None:
            self.sleep(0.3)
            self.ledger.refresh()
            resv = self.ledger.app_resv.get(app)
        if resv is None:
            why = "no reply" if r is None else r.get("error")
            self.count(f"load_not_started_{why}")
            return
        if self.wait_state(resv, ("ready", "overdue", "load_failed"), 8):
            self.count("loads", self.ledger.state(resv) != "load_failed")

    def retrieve(self, kp, rng):
        """One retrieval run: the deposited cells open one after another
        as the person closes each; a restart ends the run (and the staff
        session), so the run is asked for again while there is work, for
        at most 10 s."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not self.stop.is_set():
            self.ledger.refresh()
            deposited = self.ledger.by_state("deposited")
            busy = self.ledger.by_state("retrieving")
            if not deposited and not busy:
                return
            if deposited and not busy:
                self.arm()
                rep = self.staff_op(kp, {"op": "retrieve"})
                if rep is not None and rep.get("ok"):
                    self.count("retrieve_runs")
            self.unstick(kp)
            self.sleep(0.3)

    def staff(self, rng):
        """Hall staff at the keypad: retrieval runs and loads."""
        kp = Keypad(harness.kiosk_path(self.lk))
        i = 0
        while not self.stop.is_set():
            i += 1
            try:
                self.unstick(kp)
                self.ledger.refresh()
                dep = len(self.ledger.by_state("deposited"))
                if dep >= 6 or (dep and rng.random() < 0.5):
                    self.retrieve(kp, rng)
                else:
                    self.load(kp, rng, f"C-K{i}")
            except Exception as e:
                self.errors.append(f"staff: {e!r}")
                import traceback
                traceback.print_exc()
                self.sleep(0.5)
            self.sleep(rng.uniform(0.2, 1.0))
        kp.kc.close()

    def back_office(self, rng):
        """Loads the platform assigns (signed), for staff standing at the
        locker: no keypad session needed."""
        i = 0
        while not self.stop.is_set():
            i += 1
            try:
                self.load(None, rng, f"C-P{i}")
            except Exception as e:
                self.errors.append(f"back office: {e!r}")
                import traceback
                traceback.print_exc()
                self.sleep(0.5)
            self.sleep(rng.uniform(0.3, 1.5))

    # -- chaos ----------------------------------------------------------------

    def arm(self):
        """A worker is about to ask for a door: an aimed kill may follow."""
        self.trigger.set()

    def kill_and_restart(self, rng):
        """Kills lockerd 0.2-3 s after its start; one kill in three is
        aimed: it lands 0-6 ms after a worker asked for a door (if one
        does before the delay is up), to hit the moments between the
        commit of an unlock, its relay pulse and the door's opening."""
        delay = rng.uniform(0.2, 3.0)
        if rng.random() < 1 / 3:
            time.sleep(0.2)
            self.trigger.clear()
            if self.trigger.wait(delay - 0.2):
                self.count("kills_aimed")
                time.sleep(rng.uniform(0.0, 0.006))
        else:
            time.sleep(delay)
        self.lk.kill9()
        self.killed.add(len(self.runs) - 1)
        self.runs[-1][1] = time.monotonic()
        time.sleep(rng.uniform(0.0, 0.5))
        self.start()

    def start(self):
        """Starts lockerd again and waits for the started event of the run."""
        self.runs.append([time.monotonic(), None])
        self.lk.start(timeout=30)

        def started():
            self.ledger.refresh()
            return len(self.ledger.started) >= len(self.runs)
        wait_for(started, 10, what=f"the started event of run {len(self.runs)}")

    # -- the end of the workload ----------------------------------------------

    def drain(self, threads, timeout=45):
        """Stops the workload and waits until the locker is at rest: the
        person has closed every door, lockerd has seen it, no relay is on,
        no cell is unlocking, no reservation is opening, open, loading,
        being retrieved or taken back (a retrieval run goes on by itself
        while doors close; one whose unlock a kill lost is opened for
        service; a code whose door never opened is restored when its
        grace window ends), and the ledger has been still for a second."""
        self.stop.set()
        for t in threads:
            t.join(timeout)
            assert not t.is_alive(), f"the {t.name} thread did not stop"
        self.phase("join")
        kp = Keypad(harness.kiosk_path(self.lk))
        deadline = time.monotonic() + timeout
        still_since, last_len, why = time.monotonic(), -1, ""
        while True:
            L = self.ledger
            L.refresh()
            door, coil, _, _ = self.monitor.snapshot()
            busy = L.by_state("opening", "open", "loading", "retrieving", "taking_back")
            unlocking = [c["cell"] for c in self.lk.state()["cells"] if c.get("unlocking")]
            why = (f"doors open in locksim {[c for c in CELLS if door[c]]}, coils on "
                   f"{[c for c in CELLS if coil[c]]}, open in the ledger "
                   f"{[c for c in CELLS if L.door_open(c)]}, unlocking {unlocking}, "
                   f"reservations {[(r, L.state(r), L.resv_cell(r)) for r in busy]}")
            at_rest = not (any(door.values()) or any(coil.values()) or unlocking or busy or
                           any(L.door_open(c) for c in CELLS))
            if len(L.events) != last_len or not at_rest:
                still_since, last_len = time.monotonic(), len(L.events)
            elif time.monotonic() - still_since >= 1.0:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"the locker did not come to rest after the workload: {why}")
            if busy:
                self.unstick(kp)
            time.sleep(0.2)
        kp.kc.close()


# ---------------------------------------------------------------------------
# The checks


def spent_codes(events):
    """Invariant 2 of DESIGN.md (a code works once), from the ledger.

    A reservation's code is spent once, after a code_used, its cell's door
    was recorded open and then closed. After that: no code_used of it, and
    no unlock with a code's reason (dropoff / pickup) that the ledger
    attributes to it (the newest code_used / reassigned on that cell).
    Returns ({resv: seq spent at}, violations, figures)."""
    phase = {}          # resv -> "used" | "open" | spent seq
    cell_resv = {}      # cell -> resv of the newest code_used / reassigned there
    spent, bad = {}, []
    unlocks = collections.Counter()
    for e in events:
        t, cell, resv = e["type"], e.get("cell"), e.get("resv")
        if t in ("code_restored", "expired", "cancelled") and cell_resv.get(cell) == resv:
            # Back to waiting (the door never opened) or ended unspent.
            del cell_resv[cell]
            phase.pop(resv, None)
        elif t in ("dropoff_reserved", "load_started"):
            cell_resv.pop(cell, None)
        elif t in ("code_used", "reassigned"):
            if resv in spent:
                bad.append(f"seq {e['seq']}: {t} of reservation {resv} whose code was "
                           f"spent at seq {spent[resv]}")
            phase[resv] = "used"
            cell_resv[cell] = resv
        elif t == "unlock":
            unlocks[e.get("reason")] += 1
            if e.get("reason") in CODE_REASONS:
                r = cell_resv.get(cell)
                if r is None:
                    bad.append(f"seq {e['seq']}: unlock of cell {cell} for a code, with no "
                           f"code_used before it")
                elif r in spent:
                    bad.append(f"seq {e['seq']}: unlock of cell {cell} for reservation {r} "
                               f"whose code was spent at seq {spent[r]} (its door had "
                               f"opened and closed)")
        elif t == "door_opened":
            r = cell_resv.get(cell)
            if r is not None and phase.get(r) == "used":
                phase[r] = "open"
        elif t == "door_closed":
            r = cell_resv.pop(cell, None)
            if r is not None and phase.get(r) == "open":
                spent[r] = e["seq"]
                phase[r] = "spent"
            elif r is not None:
                cell_resv[cell] = r
    return spent, bad, unlocks


def match_pulses(ch, events, started):
    """Invariant 2 on the wire: every relay pulse locksim acted on has its
    own unlock event, committed before it.

    Each pulse belongs to the lockerd run alive at its time (runs are
    bounded by the test's own start and kill times), each unlock event to
    the run of the `started` event before it. Per run and cell, pulses and
    unlock events pair up in order, and each pulse comes after its event's
    time (monotonic -> wall clock, 50 ms slack). An unlock event left
    without a pulse is allowed only as the last unlock of its cell in a
    run that was killed (lockerd died between the commit and the pulse)
    or when an unlock_failed for the cell follows it in that run; and the
    ledger must then not record a door opening for the cell before the
    next unlock of it (no opening without a pulse). Returns (violations,
    figures)."""
    bad, fig = [], collections.Counter()
    runs = ch.runs
    starts = started

    def run_of_seq(seq):
        k = 0
        for i, s in enumerate(starts):
            if s <= seq:
                k = i
        return k

    pulses = collections.defaultdict(list)
    for p in ch.monitor.pulses:
        k = next((i for i, (a, b) in enumerate(runs) if a <= p["t"] and (b is None or p["t"] < b)),
                 None)
        if k is None:
            bad.append(f"relay pulse of cell {p['cell']} (write n={p['n']}, t={p['t']:.3f}) "
                       f"while no lockerd was running")
            continue
        pulses[(k, p["cell"])].append(p)
    unl = collections.defaultdict(list)
    for e in events:
        if e["type"] == "unlock":
            unl[(run_of_seq(e["seq"]), e["cell"])].append(e)
    for key in sorted(set(pulses) | set(unl)):
        k, cell = key
        ps, us = pulses.get(key, []), unl.get(key, [])
        for i, p in enumerate(ps):
            if i >= len(us):
                bad.append(f"run {k + 1}, cell {cell}: relay pulse n={p['n']} has no unlock "
                           f"event ({len(ps)} pulses, {len(us)} unlock events in that run)")
                continue
            u = us[i]
            wall_ms = (p["t"] + ch.monitor.wall_offset(p["t"])) * 1000
            if _iso_ms(u["time"]) > wall_ms + 50:
                bad.append(f"run {k + 1}, cell {cell}: relay pulse n={p['n']} at "
                           f"{wall_ms:.0f} ms before its unlock event seq {u['seq']} at "
                           f"{_iso_ms(u['time'])} ms")
            fig["paired"] += 1
        for u in us[len(ps):]:
            failed = any(e["type"] == "unlock_failed" and e.get("cell") == cell and
                         e["seq"] > u["seq"] and run_of_seq(e["seq"]) == k for e in events)
            killed = k in ch.killed and u is us[-1]
            if not (killed or failed):
                bad.append(f"run {k + 1}, cell {cell}: unlock event seq {u['seq']} was never "
                           f"pulsed, and lockerd was neither killed before it could be nor "
                           f"recorded unlock_failed")
                continue
            fig["unpulsed_killed" if killed else "unpulsed_failed"] += 1
            later = [e for e in events if e["seq"] > u["seq"] and e.get("cell") == cell]
            nxt = next((e for e in later if e["type"] in ("unlock", "door_opened")), None)
            if nxt is not None and nxt["type"] == "door_opened":
                bad.append(f"cell {cell}: unlock seq {u['seq']} was never pulsed, yet the "
                           f"ledger records door_opened seq {nxt['seq']} before any other "
                           f"unlock of the cell")
            # How the lost unlock was settled after the restart.
            how = next((e for e in later if e["type"] in (
                "code_used", "code_restored", "unlock", "unlock_failed", "load_failed",
                "expired", "cancelled")), None)
            what = "unsettled at the end" if how is None else \
                f"unlock again ({how.get('reason')})" if how["type"] == "unlock" else \
                "the code typed again (grace)" if how["type"] == "code_used" else how["type"]
            fig[f"unpulsed then: {u.get('reason')} -> {what}"] += 1
    return bad, fig


def check_platform(plat, events):
    """Invariant 3: the platform got every ledger event, first copies in
    seq order 1..N with no gap, each equal to the ledger's (same seq, same
    prev and sig) apart from the transport fields."""
    got = plat.events()
    seqs = [e["seq"] for e in got]
    n = len(events)
    assert seqs == list(range(1, n + 1)), \
        f"the platform's first copies are not the ledger's seqs 1..{n} in order: " \
        f"missing {sorted(set(range(1, n + 1)) - set(seqs))[:20]}, " \
        f"out of order at {[s for a, s in zip(seqs, seqs[1:]) if s != a + 1][:20]}"
    for e in got:
        body = {k: v for k, v in e.items() if k not in TRANSPORT}
        assert body == events[e["seq"] - 1], \
            f"event {e['seq']} differs from the ledger:\n{body}\n{events[e['seq'] - 1]}"
    dups = len([b for b, _ in plat.on("events")]) - len(got)
    return dups


def test_chaos_kill9():
    seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(1 << 31))
    print(f"chaos: seed {seed} (CHAOS_SEED={seed} repeats the choices), {KILLS} kills")
    t_begin = time.monotonic()
    ch = Chaos(seed)
    ch.monitor = Monitor(ch.sim, ch.ledger)
    # The monitor starts after the first lockerd: its first relay writes
    # (every relay off) are not pulses; nothing else ran yet.
    ch.monitor.start()
    wait_for(lambda: ch.monitor.polls > 0, 5, what="the monitor's first poll")
    person = Person(ch.sim, ch.ledger, ch.monitor, random.Random(seed + 1))
    person.start()
    workers = [threading.Thread(target=ch.applicant, args=(random.Random(seed + 10 + i), i),
                                name=f"applicant{i}", daemon=True) for i in range(2)]
    workers.append(threading.Thread(target=ch.staff, args=(random.Random(seed + 3),),
                                    name="staff", daemon=True))
    workers.append(threading.Thread(target=ch.back_office, args=(random.Random(seed + 5),),
                                    name="back office", daemon=True))
    for t in workers:
        t.start()
    krng = random.Random(seed + 4)
    try:
        for k in range(KILLS):
            ch.kill_and_restart(krng)
            if (k + 1) % 10 == 0 or k + 1 == KILLS:
                ch.ledger.refresh()
                print(f"chaos: {k + 1} kills, {len(ch.ledger.events)} events, "
                      f"{sum(len(v) for v in ch.monitor.opens.values())} door openings, "
                      f"{time.monotonic() - t_begin:.0f} s", flush=True)
        time.sleep(2)          # the last run does some work too
        ch.phase("workload")
        ch.drain(workers)
        ch.phase("drain")
        _check(ch, person, seed, t_begin)
    finally:
        ch.stop.set()
        ch.monitor.stop_flag.set()
        person.stop_flag.set()


def _check(ch, person, seed, t_begin):
    L = ch.ledger
    L.refresh()
    assert not ch.errors, f"the workload failed: {ch.errors[:5]}"

    # 1. Spent codes at the keypad, each once: refused, no relay, no unlock.
    spent, bad1, unlocks = spent_codes(L.events)
    assert not bad1, "a code opened a door after its door had opened and closed:\n  " + \
        "\n  ".join(bad1[:20])
    known = dict(ch.known)
    with ch.side.lock:
        known.update({c: r for r, c in ch.side.codes.items()})
    dead = {c: r for c, r in known.items() if r in spent}
    kp = Keypad(harness.kiosk_path(ch.lk))
    seq0, n0 = len(L.events), ch.monitor.last_n
    refused = collections.Counter()
    burst = ch.cfg["kiosk"]["code_burst"]
    wrong = burst - 1             # the workload's wrong tries count too: restart first
    for code, resv in sorted(dead.items()):
        if wrong >= burst - 1:
            # The throttle would make every further try wait a second,
            # and it survives a restart (it is in the database): a clean
            # stop (proving one after the chaos), the throttle's rows
            # emptied by hand, and a start give a fresh bucket.
            ch.lk.stop()
            ch.runs[-1][1] = time.monotonic()
            con = sqlite3.connect(ch.lk.db_path)
            con.execute("DELETE FROM throttle")
            con.commit()
            con.close()
            ch.start()
            kp.kc.close()
            wrong = 0
        for _ in range(20):
            rep = kp.request({"op": "code", "code": code})
            assert rep is not None, "the keypad did not answer"
            if rep.get("error") != "wait":
                break
            time.sleep(rep.get("wait_s", 1))
        wrong += rep.get("error") == "invalid_code"
        assert rep.get("ok") is False and rep.get("error") in ("used", "invalid_code"), \
            f"the spent code of reservation {resv} (spent at seq {spent[resv]}) -> {rep}"
        refused[rep["error"]] += 1
    time.sleep(0.6)
    after = [p for p in ch.monitor.pulses if p["n"] > n0]
    assert not after, f"spent codes typed again drove relays: {after}"
    L.refresh()
    late = [e for e in L.events[seq0:] if e["type"] in ("unlock", "code_used")]
    assert not late, f"spent codes typed again were recorded: {late}"
    reused_ok = [(c, r, rep) for c, r, rep in ch.reuse if rep.get("ok")]
    assert not reused_ok, f"a spent code re-typed during the run opened: {reused_ok}"

    ch.phase("spent codes")

    # 2. Relay pulses and door openings against the ledger.
    assert not ch.monitor.violations, "relay pulses before their unlock was committed:\n  " + \
        "\n  ".join(ch.monitor.violations[:20])
    assert not ch.monitor.odd_writes, f"FC15 writes with a relay on: {ch.monitor.odd_writes[:5]}"
    assert len(L.started) == len(ch.runs), \
        f"{len(ch.runs)} lockerd runs but {len(L.started)} started events"
    boots = [L.events[s - 1].get("boot") for s in L.started]
    assert boots == list(range(boots[0], boots[0] + len(boots))), f"boot counters: {boots}"
    ch.runs[-1][1] = None
    bad2, pfig = match_pulses(ch, L.events, L.started)
    door_bad = []
    for cell in CELLS:
        seen, rec = len(ch.monitor.opens.get(cell, [])), L.n("door_opened", cell)
        if seen != rec:
            door_bad.append(f"cell {cell}: locksim saw {seen} door openings, the ledger has "
                            f"{rec} door_opened")
    assert not (bad2 or door_bad), "relay pulses / door openings and the ledger disagree:\n  " + \
        "\n  ".join((bad2 + door_bad)[:30])
    forced = [e for e in L.events if e["type"] == "forced_open"]

    ch.phase("pulses")

    # 3. The platform got the ledger, in order, de-duplicated by seq.
    wait_for(lambda: len(ch.plat.events()) >= len(L.events), 30, interval=0.2,
             what=f"all {len(L.events)} events on the platform")
    dups = check_platform(ch.plat, L.events)

    ch.phase("platform")

    # 4. The chain verifies (lockerd's own tool), lockerd stops cleanly.
    v = harness.verify_ledger(ch.lk)
    assert v.returncode == 0, f"--verify-ledger: {v.stdout}{v.stderr}"
    st = ch.lk.state()
    busy = [c["cell"] for c in st["cells"] if c.get("unlocking")]
    assert not busy, f"cells still unlocking at the end: {busy}"
    ch.lk.stop()
    ch.runs[-1][1] = time.monotonic()
    kp.kc.close()

    # 5. The database is sound.
    L.close()
    db = sqlite3.connect(ch.lk.db_path)
    try:
        ic = db.execute("PRAGMA integrity_check").fetchall()
    finally:
        db.close()
    assert ic == [("ok",)], f"PRAGMA integrity_check: {ic}"

    ch.phase("verify")

    # 6. No relay left energised (after the last pulse's time is over).
    time.sleep(0.7)
    ch.monitor.stop_flag.set()
    person.stop_flag.set()
    ch.monitor.join(5)
    person.join(5)
    on = [(b["unit"], c["ch"]) for b in ch.sim.state()["boards"] for c in b["channels"]
          if c["coil"] or c["released"]]
    assert not on, f"relays left energised (unit, channel): {on}"

    took = time.monotonic() - t_begin
    openings = sum(len(v) for v in ch.monitor.opens.values())
    used = sum(1 for e in L.events if e["type"] == "code_used")
    s = ch.stats
    print(f"chaos: figures: {dict(sorted(s.items()))}; unlocks by reason {dict(unlocks)}; "
          f"pulses {len(ch.monitor.pulses)} ({dict(pfig)}); spent codes refused "
          f"{dict(refused)}, re-typed during the run {len(ch.reuse)}; platform duplicates "
          f"{dups}; alarms {dict(collections.Counter(e['type'] for e in L.events if e.get('alarm')))}; "
          f"unlock_failed {sum(e['type'] == 'unlock_failed' for e in L.events)}; monitor polls {ch.monitor.polls}, errors "
          f"{ch.monitor.errors}; phases {[(n, round(t, 1)) for n, t in ch.phases]}")
    for f in forced:
        ctx = [(e["seq"], e["type"], e.get("reason") or e.get("door") or e.get("expected"))
               for e in L.events[max(0, f["seq"] - 12):f["seq"]]
               if e.get("cell") in (f["cell"], None) and e["type"] != "cell_service"]
        c = f["cell"]
        opened = [t for t in ch.monitor.opens.get(c, [])]
        k = len([e for e in L.events[:f["seq"]] if e["type"] == "door_opened" and
                 e.get("cell") == c]) - 1
        t_open = opened[k] if 0 <= k < len(opened) else None
        pulse = max((p["t"] for p in ch.monitor.pulses if p["cell"] == c and
                     (t_open is None or p["t"] < t_open)), default=None)
        near = [(round(a - pulse, 3), round(b - pulse, 3) if b else None) for a, b in ch.runs
                if pulse is not None and b is not None and abs(b - pulse) < 5] if pulse else []
        print(f"chaos: forced_open of cell {c} at seq {f['seq']}, after {ctx}; the door "
              f"opened {t_open - pulse if t_open and pulse else '?'} s after the cell's last "
              f"pulse; runs (start, killed) around it, relative to the pulse: {near}")
    for n in sorted(set(ch.notes)):
        print(f"chaos: note: {n}")
    print(f"chaos: {KILLS} kills survived, {len(L.events)} events checked, {openings} door "
          f"openings, {used} codes used ({len(dead)} spent codes refused), {took:.0f} s, "
          f"seed {seed}")

    # Last, after the figures: lockerd bugs the workload had to live with.
    # Every door opening here came from a pulse lockerd recorded (nobody
    # forces a door in this test), so a forced_open alarm is a false one.
    # A reservation opened for service by the staff thread was stuck.
    findings = []
    # A door that springs after lockerd gave its unlock up (unlock_failed,
    # e.g. a board fault) is another story: counted, not failed on.
    after_failure = [f for f in forced if L.seq_of_before("unlock_failed", f["cell"], f["seq"]) >
                     L.seq_of_before("unlock", f["cell"], f["seq"])]
    forced = [f for f in forced if f not in after_failure]
    if after_failure:
        print(f"chaos: {len(after_failure)} forced_open after an unlock_failed of the cell "
              f"(seqs {[f['seq'] for f in after_failure]})")
    if forced:
        findings.append(
            f"{len(forced)} false forced_open alarm(s) (seqs {[f['seq'] for f in forced]}): "
            f"a door that opened after a recorded, pulsed unlock was taken for a forced "
            f"door. When lockerd is killed just after a pulse and is back before the door "
            f"has sprung, start-up reconciliation (bank.c reconcile_cell) drops the stored "
            f"pending unlock (expect_open) on seeing the door still closed.")
    stuck = s.get("stuck_opened_for_service", 0)
    if stuck:
        findings.append(
            f"{stuck} staff reservation(s) stuck after a kill: the unlock of a staff load or "
            f"retrieval was committed, lockerd died before the relay pulse, and more than "
            f"{RESTART_WAIT_S:.1f} s after the restart the recorded unlock was neither seen "
            f"open nor failed (bank.c reconcile_cell's restart_wait, then unlock_failed), so "
            f"the reservation stayed loading / retrieving with its door shut until staff "
            f"opened the cell for service: {sorted(set(ch.notes))}")
    assert not findings, "\n".join(findings)


# The runner's limit for this test grows with the number of kills.
test_chaos_kill9.timeout = 120 + 8 * KILLS
