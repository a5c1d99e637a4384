"""Helpers for the broker fault tests (test_broker_faults.py, issue #6).

Owns a TCP proxy between lockerd and the real broker that can drop
connections, delay or stall what the broker sends back, and reads the MQTT
stream both ways (which event went out under which packet id, which PUBACK
reached lockerd); a pinger that measures how fast the control socket and
the keypad answer; a workload of reserve/cancel cycles and operator opens;
and the ledger as SQLite holds it.
"""

import collections
import json
import os
import random
import socket
import sqlite3
import threading
import time

import harness
from harness import HarnessError, wait_for


# ---------------------------------------------------------------------------
# MQTT 3.1.1 framing, only as much as the proxy needs to follow events


def mqtt_packets(buf):
    """Splits whole packets off a byte buffer. Returns ([(type, flags,
    body)], rest)."""
    out = []
    i = 0
    while True:
        if len(buf) - i < 2:
            break
        mult, length, j = 1, 0, i + 1
        complete = False
        while j < len(buf) and j - i <= 4:
            b = buf[j]
            length += (b & 0x7F) * mult
            mult *= 128
            j += 1
            if not b & 0x80:
                complete = True
                break
        if not complete:
            if j - i > 4:
                raise ValueError("bad MQTT remaining length")
            break
        if len(buf) - j < length:
            break
        out.append((buf[i] >> 4, buf[i] & 0x0F, bytes(buf[j:j + length])))
        i = j + length
    return out, buf[i:]


def publish_fields(flags, body, level=4):
    """(topic, packet id or None, payload) of a PUBLISH body; level 5 (MQTT
    5) has properties between the packet id and the payload."""
    tlen = int.from_bytes(body[0:2], "big")
    topic = body[2:2 + tlen].decode(errors="replace")
    k = 2 + tlen
    mid = None
    if (flags >> 1) & 3:
        mid = int.from_bytes(body[k:k + 2], "big")
        k += 2
    if level == 5:
        mult, plen = 1, 0
        while k < len(body):
            b = body[k]
            k += 1
            plen += (b & 0x7F) * mult
            mult *= 128
            if not b & 0x80:
                break
        k += plen
    return topic, mid, body[k:]


# ---------------------------------------------------------------------------
# The proxy


class _Conn:
    def __init__(self, n, down, up):
        self.n = n
        self.down = down          # lockerd's side
        self.up = up              # the broker's side
        self.t_open = time.monotonic()
        self.closed = False
        self.level = 4            # MQTT protocol level of its CONNECT
        self.mid_seq = {}         # packet id -> event seq, this connection
        self.published = []       # event seqs lockerd sent, in order
        self.dup_flagged = 0      # of them, resent by libmosquitto (DUP set)
        self.lock = threading.Lock()


class BrokerProxy:
    """A TCP proxy on a free loopback port in front of a broker.

    delay_s: how long each chunk from the broker waits before lockerd gets
    it (a latency, not a rate: chunks keep their order and pipeline).
    stall(s): nothing from the broker reaches lockerd for s seconds.
    drop_all(): closes both sides of every live connection.

    It follows the MQTT stream: `acked` is the set of event seqs whose
    PUBACK has been handed to lockerd (recorded before the bytes are sent,
    so anything lockerd marks delivered must already be in it)."""

    def __init__(self, broker_port, delay_s=0.0, refuse_v5=False):
        """refuse_v5: plays a broker that speaks only MQTT 3.1.1: a CONNECT
        of protocol level 5 gets the 3.1.1 CONNACK "unacceptable protocol
        version" and the connection is closed (counted in v5_refused)."""
        harness._register(self)
        self.broker_port = broker_port
        self.delay_s = delay_s
        self.refuse_v5 = refuse_v5
        self.v5_refused = 0
        self.levels = []          # the protocol level of each CONNECT
        self.stall_until = 0.0
        self.lock = threading.Lock()
        self.conns = []
        self.acked = set()
        self.drops = 0
        self.errors = []
        self.stopping = False
        self.ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(16)
        self.port = self.ls.getsockname()[1]
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def __repr__(self):
        return f"<BrokerProxy {self.port} -> {self.broker_port}>"

    # -- control

    def stall(self, seconds):
        with self.lock:
            self.stall_until = time.monotonic() + seconds

    def live(self):
        with self.lock:
            return [c for c in self.conns if not c.closed]

    def connections(self):
        with self.lock:
            return list(self.conns)

    def drop(self, c):
        with self.lock:
            if c.closed:
                return False
            c.closed = True
            self.drops += 1
        for s in (c.down, c.up):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass
        return True

    def drop_all(self):
        return sum(1 for c in self.live() if self.drop(c))

    def acked_seqs(self):
        with self.lock:
            return set(self.acked)

    def cleanup(self):
        self.stopping = True
        try:
            self.ls.close()
        except OSError:
            pass
        for c in self.live():
            self.drop(c)

    # -- plumbing

    def _accept(self):
        n = 0
        while not self.stopping:
            try:
                down, _ = self.ls.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(("127.0.0.1", self.broker_port), timeout=2)
                up.settimeout(None)
            except OSError:
                down.close()
                continue
            for s in (down, up):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            n += 1
            c = _Conn(n, down, up)
            with self.lock:
                self.conns.append(c)
            threading.Thread(target=self._c2b, args=(c,), daemon=True).start()
            q = collections.deque()
            cv = threading.Condition()
            threading.Thread(target=self._b2c_read, args=(c, q, cv), daemon=True).start()
            threading.Thread(target=self._b2c_write, args=(c, q, cv), daemon=True).start()

    def _c2b(self, c):
        buf = b""
        while True:
            try:
                data = c.down.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            pkts, buf = self._packets(c, buf + data, "c->b")
            refused = False
            for typ, flags, body in pkts:
                if typ == 1 and len(body) >= 7:
                    level = body[6]
                    c.level = level
                    with self.lock:
                        self.levels.append(level)
                    if level == 5 and self.refuse_v5:
                        try:
                            c.down.sendall(b"\x20\x02\x00\x01")
                        except OSError:
                            pass
                        with self.lock:
                            self.v5_refused += 1
                        refused = True
                        break
                if typ != 3:
                    continue
                topic, mid, payload = publish_fields(flags, body, c.level)
                if not topic.endswith("/events"):
                    continue
                try:
                    seq = json.loads(payload.decode())["seq"]
                except (ValueError, KeyError, TypeError):
                    continue
                with c.lock:
                    if mid is not None:
                        c.mid_seq[mid] = seq
                    c.published.append(seq)
                    c.dup_flagged += bool(flags & 0x08)
            if refused:
                break
            try:
                c.up.sendall(data)
            except OSError:
                break
        self.drop(c)

    def _packets(self, c, buf, way):
        """Whole MQTT packets off the front of buf, and the rest; a stream
        that does not parse is noted and dropped."""
        try:
            return mqtt_packets(buf)
        except ValueError as e:
            self.errors.append(f"conn {c.n} {way}: {e}")
            return [], b""

    def _b2c_read(self, c, q, cv):
        while True:
            try:
                data = c.up.recv(65536)
            except OSError:
                data = b""
            with cv:
                q.append((time.monotonic() + self.delay_s, data))
                cv.notify()
            if not data:
                return

    def _b2c_write(self, c, q, cv):
        buf = b""
        while True:
            with cv:
                while not q:
                    cv.wait()
                due, data = q.popleft()
            while True:
                with self.lock:
                    t = max(due, self.stall_until)
                left = t - time.monotonic()
                if left <= 0:
                    break
                time.sleep(min(left, 0.02))
            if not data:
                break
            pkts, buf = self._packets(c, buf + data, "b->c")
            for typ, flags, body in pkts:
                if typ == 4 and len(body) >= 2:
                    mid = int.from_bytes(body[0:2], "big")
                    with c.lock:
                        seq = c.mid_seq.get(mid)
                    if seq is not None:
                        with self.lock:
                            self.acked.add(seq)
            try:
                c.down.sendall(data)
            except OSError:
                break
        self.drop(c)


# ---------------------------------------------------------------------------
# The ledger as SQLite holds it


class Ledger:
    def __init__(self, lk):
        self.path = lk.db_path

    def _q(self, sql, *args):
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    def last(self):
        return self._q("SELECT coalesce(max(seq), 0) FROM events")[0][0]

    def events(self):
        return [dict(json.loads(b), seq=s) for s, b in
                self._q("SELECT seq, body FROM events ORDER BY seq")]

    def delivered(self):
        return {s for (s,) in self._q("SELECT seq FROM events WHERE delivered = 1")}

    def undelivered(self):
        return [s for (s,) in self._q("SELECT seq FROM events WHERE delivered = 0 ORDER BY seq")]

    def find(self, type, cell=None, after=0):
        rows = self._q("SELECT seq FROM events WHERE seq > ? AND type = ? AND "
                       "(? IS NULL OR cell = ?) ORDER BY seq", after, type, cell, cell)
        return [s for (s,) in rows]

    def wait(self, type, cell=None, after=0, timeout=5):
        return wait_for(lambda: self.find(type, cell, after), timeout, interval=0.02,
                        what=f"{type} cell {cell} after seq {after} in the ledger")[0]


def check_delivered_only_when_acked(ledger, proxy):
    """Every event marked delivered had its PUBACK handed to lockerd by
    the proxy. The database is read first: the acked set only grows."""
    delivered = ledger.delivered()
    acked = proxy.acked_seqs()
    early = sorted(delivered - acked)
    assert not early, (f"{len(early)} events are marked delivered although no PUBACK for "
                       f"them reached lockerd: {early[:20]}")
    return len(delivered)


# ---------------------------------------------------------------------------
# The platform's view against the ledger


def check_stream(plat, ledger, timeout=20):
    """Waits until the platform holds every ledger event, then asserts:
    1..N all there, first copies in seq order, every copy of a seq equal
    to the ledger's body (apart from transport fields). Returns (N,
    duplicates)."""
    last = ledger.last()
    assert last > 0, "the ledger is empty"

    def have_all():
        return len({e["seq"] for e in plat.events() if e["seq"] <= last}) >= last
    try:
        wait_for(have_all, timeout, interval=0.1, what=f"events 1..{last} on MQTT")
    except HarnessError:
        got = {e["seq"] for e in plat.events()}
        missing = sorted(set(range(1, last + 1)) - got)
        raise HarnessError(f"the platform is missing {len(missing)} of {last} events: "
                           f"{missing[:30]}")
    raw = [b for b, _ in plat.on("events") if isinstance(b, dict)]
    firsts, seen = [], set()
    for b in raw:
        if b["seq"] not in seen:
            seen.add(b["seq"])
            firsts.append(b["seq"])
    bad = [(a, b) for a, b in zip(firsts, firsts[1:]) if b <= a]
    assert not bad, f"first copies out of seq order at {bad[:10]}"
    assert set(firsts) >= set(range(1, last + 1)), "a gap in what arrived"
    assert max(firsts) <= ledger.last(), f"an event beyond the ledger: {max(firsts)}"
    ledger_by = {e["seq"]: e for e in ledger.events()}
    for b in raw:
        body = {k: v for k, v in b.items() if k not in ("replayed", "code")}
        assert body == ledger_by[b["seq"]], \
            f"event {b['seq']} differs from the ledger:\n{body}\n{ledger_by[b['seq']]}"
    return last, len(raw) - len(seen)


def retained_status(broker, locker="test-locker", timeout=5):
    """The retained status a newcomer gets now (a clean-session client)."""
    import paho.mqtt.client as mqtt
    got = []
    ev = threading.Event()

    def on_connect(c, u, f, rc):
        c.subscribe(f"lockers/{locker}/status", qos=1)

    def on_message(c, u, msg):
        got.append((json.loads(msg.payload.decode()), bool(msg.retain)))
        ev.set()

    c = mqtt.Client(client_id=f"status-probe-{os.getpid()}-{random.randrange(1 << 30)}",
                    clean_session=True)
    c.on_connect = on_connect
    c.on_message = on_message
    c.connect("127.0.0.1", broker.port, keepalive=10)
    c.loop_start()
    try:
        if not ev.wait(timeout):
            raise HarnessError("no retained status")
        return got[0]
    finally:
        c.loop_stop()
        c.disconnect()


def mqtt_connects(lk):
    """How many times lockerd's log says the link came up."""
    with open(lk.log_path, errors="replace") as f:
        return sum(1 for line in f if "mqtt: connected;" in line)


# ---------------------------------------------------------------------------
# Responsiveness


class Pinger:
    """Pings the control socket (and asks the keypad its status) every
    `every` seconds on connections of its own; records the latencies of
    the control pings while `active`."""

    def __init__(self, lk, every=0.02):
        self.lk = lk
        self.every = every
        self.lat = []
        self.kiosk_lat = []
        self.failures = []
        self.active = False
        self.paused = False
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        ctl = harness.JsonLineClient(self.lk.socket_path, timeout=5)
        kp = None
        k = 0
        while not self.stopping:
            if self.paused:
                ctl.close()
                if kp is not None:
                    kp.close()
                    kp = None
                time.sleep(0.02)
                continue
            try:
                t0 = time.monotonic()
                r = ctl.request('{"op":"ping"}')
                dt = time.monotonic() - t0
                if r.get("ok") is not True:
                    self.failures.append(f"ping -> {r}")
                elif self.active:
                    self.lat.append(dt)
                k += 1
                if k % 5 == 0:
                    if kp is None:
                        kp = harness.KioskClient(harness.kiosk_path(self.lk), timeout=5,
                                                 connect=False)
                        kp.connect(timeout=2)
                    t0 = time.monotonic()
                    r = kp.status()
                    dt = time.monotonic() - t0
                    if self.active:
                        self.kiosk_lat.append(dt)
            except Exception as e:   # a failure is a finding, unless paused
                if not self.paused:
                    self.failures.append(f"{type(e).__name__}: {e}")
                ctl.close()
                if kp is not None:
                    kp.close()
                    kp = None
            time.sleep(self.every)
        ctl.close()
        if kp is not None:
            kp.close()

    def stop(self):
        self.stopping = True
        self.thread.join(10)

    @staticmethod
    def p99(xs):
        if not xs:
            return 0.0
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(len(xs) * 0.99))]


# ---------------------------------------------------------------------------
# The workload


class Workload:
    """Bursts of reserve/cancel cycles on the control socket with an
    operator open + close of a cell now and then, from a thread of its
    own. `in_burst` is set while a burst runs."""

    def __init__(self, sim, lk, rng, bursts=12, cycles=10, opens=2, pause=(0.3, 1.0)):
        self.sim, self.lk, self.rng = sim, lk, rng
        self.bursts, self.cycles, self.opens, self.pause = bursts, cycles, opens, pause
        self.ledger = Ledger(lk)
        self.ctl = harness.JsonLineClient(lk.socket_path, timeout=10)
        self.in_burst = threading.Event()
        self.done = threading.Event()
        self.hold = threading.Event()     # set: park before the next step
        self.parked = threading.Event()   # set while parked
        self.error = None
        self.requests = 0
        self.next_cell = 1
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def park(self, timeout=10):
        """Stops the workload between two steps (no request in flight)."""
        self.hold.set()
        wait_for(lambda: self.parked.is_set() or self.done.is_set(), timeout,
                 what="the workload parked")

    def resume(self):
        self.hold.clear()

    def _checkpoint(self):
        if not self.hold.is_set():
            return
        while self.hold.is_set():
            self.parked.set()
            time.sleep(0.02)
        self.parked.clear()
        # lockerd may have been restarted meanwhile: a fresh connection.
        self.ctl.close()

    def _req(self, obj):
        r = self.ctl.request(json.dumps(obj))
        self.requests += 1
        return r

    def _cycle(self, i):
        self._checkpoint()
        r = self._req({"op": "reserve", "app": f"W-{i}", "size": self.rng.choice("SM")})
        assert r.get("ok") is True, f"reserve -> {r}"
        c = self._req({"op": "cancel", "resv": r["resv"]})
        assert c.get("ok") is True, f"cancel {r['resv']} -> {c}"

    def _open_close(self):
        self._checkpoint()
        cell = self.next_cell
        self.next_cell = self.next_cell % 16 + 1
        after = self.ledger.last()
        r = self._req({"op": "open", "cell": cell})
        assert r.get("ok") is True, f"open {cell} -> {r}"
        self.ledger.wait("door_opened", cell, after, timeout=5)
        harness.close_door(self.sim, cell)
        self.ledger.wait("door_closed", cell, after, timeout=5)

    def _run(self):
        try:
            i = 0
            for b in range(self.bursts):
                self.in_burst.set()
                for k in range(self.cycles):
                    i += 1
                    self._cycle(i)
                    if self.opens and k % max(1, self.cycles // self.opens) == 0:
                        self._open_close()
                self.in_burst.clear()
                time.sleep(self.rng.uniform(*self.pause))
        except BaseException as e:
            self.error = e
        finally:
            self.in_burst.clear()
            self.done.set()
            self.ctl.close()

    def join(self, timeout=60):
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise HarnessError("the workload did not finish")
        if self.error is not None:
            raise self.error
