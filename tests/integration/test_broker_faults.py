"""Faults (issue #6): the broker misbehaves while the locker is busy, and
no event is lost (DESIGN.md invariant 3).

Each test runs a workload (bursts of reserve/cancel cycles on the control
socket and operator opens + closes of cells, a few hundred events) while
the broker is restarted, or a proxy between lockerd and the broker drops
the connection, or delays and stalls what the broker sends back. Then:

  * the platform (a persistent-session client on the real broker) holds
    every ledger event 1..N, the first copies in seq order, every copy
    equal to the ledger's; duplicates only of a seq (counted, printed);
  * nothing was marked delivered before its PUBACK reached lockerd (the
    proxy follows the MQTT stream both ways), and in the end everything is;
  * the retained status a newcomer gets says online;
  * lockerd kept running, and the control socket and the keypad answered
    during the faults (the MQTT client has a thread of its own: the loop
    must never wait for the broker): control-socket ping p99 < 200 ms.

What lockerd does is in controller/link.c (the outbox window, resuming at
the first undelivered event) and controller/platform.c (the MQTT thread,
reconnects with backoff). [mqtt] keepalive_s = 5, reconnect 100-1000 ms.
"""

import random
import time

import harness
from harness import Locksim, Lockerd, Mosquitto, Platform, config, mqtt_extra, wait_for
from brokerkit import (BrokerProxy, Ledger, Pinger, Workload, check_delivered_only_when_acked,
                       check_stream, mqtt_connects, retained_status)

PING_P99_MAX = 0.200


def _world(broker, port=None, seed=0):
    plat = Platform(broker)
    sim = Locksim()
    extra = mqtt_extra(broker, **({"port": port} if port else {}))
    lk = Lockerd(config(sim, extra=extra))
    ledger = Ledger(lk)
    ledger.wait("started", timeout=5)
    wait_for(lambda: mqtt_connects(lk) >= 1, 5, what="lockerd connected to the broker")
    rng = random.Random(seed)
    return plat, sim, lk, ledger, rng


def _finish(name, broker, plat, lk, ledger, pinger, t0, proxy=None, extra=""):
    """The checks every test ends with; prints the figure line."""
    pinger.stop()
    assert lk.running(), f"lockerd exited (status {lk.proc.returncode})"
    assert not pinger.failures, f"control socket / keypad failed: {pinger.failures[:5]}"
    wait_for(lambda: not ledger.undelivered(), 20, interval=0.1,
             what="every event marked delivered")
    n, dups = check_stream(plat, ledger)
    if proxy is not None:
        check_delivered_only_when_acked(ledger, proxy)
        assert not proxy.errors, f"the proxy could not follow the MQTT stream: {proxy.errors}"
    st, retained = retained_status(broker)
    assert retained and st.get("online") is True, f"the retained status ends {st}"
    assert lk.ctl({"op": "ping"}).get("ok") is True
    p99 = Pinger.p99(pinger.lat)
    kp99 = Pinger.p99(pinger.kiosk_lat)
    reconnects = mqtt_connects(lk) - 1
    print(f"{name}: events={n} duplicates={dups} reconnects={reconnects} "
          f"ping_p99={p99 * 1000:.1f}ms ({len(pinger.lat)} pings) "
          f"keypad_p99={kp99 * 1000:.1f}ms{extra} took={time.monotonic() - t0:.1f}s")
    assert len(pinger.lat) > 100, f"too few pings measured: {len(pinger.lat)}"
    assert p99 < PING_P99_MAX, f"control-socket ping p99 {p99 * 1000:.0f} ms during the faults"
    assert kp99 < PING_P99_MAX, f"keypad status p99 {kp99 * 1000:.0f} ms during the faults"
    return n, dups, reconnects


def _publishes(proxy):
    """How many event PUBLISHes lockerd sent through the proxy, over how
    many distinct seqs, and how many of them were libmosquitto's own
    retransmissions (DUP flag) rather than the outbox's."""
    sent = [s for c in proxy.connections() for s in c.published]
    dup = sum(c.dup_flagged for c in proxy.connections())
    return f"{len(sent)}/{len(set(sent))}(dup-flagged {dup})"


def test_broker_restarted_repeatedly():
    t0 = time.monotonic()
    broker = Mosquitto()
    plat, sim, lk, ledger, rng = _world(broker, seed=1)
    pinger = Pinger(lk)
    pinger.active = True
    wl = Workload(sim, lk, rng, bursts=12, cycles=10, opens=2).start()
    restarts = 0
    for i in range(5):
        time.sleep(rng.uniform(0.3, 2.0))
        broker.stop()
        restarts += 1
        # With no broker nothing can be acknowledged: what is delivered now
        # stays so, and new events wait.
        time.sleep(0.15)
        before, last0 = ledger.delivered(), ledger.last()
        time.sleep(rng.uniform(0.3, 1.5))
        after, last1 = ledger.delivered(), ledger.last()
        assert after == before, \
            f"events marked delivered with the broker down: {sorted(after - before)[:20]}"
        assert lk.running(), "lockerd exited with the broker down"
        broker.start()
        print(f"restart {i + 1}: {last1 - last0} events while down")
    wl.join(60)
    pinger.active = False
    _finish("broker restarted x5", broker, plat, lk, ledger, pinger, t0)


test_broker_restarted_repeatedly.timeout = 120


def test_broker_accepts_then_drops():
    t0 = time.monotonic()
    broker = Mosquitto()
    # A little latency on the way back, so that a drop can fall between
    # an event reaching the broker and its PUBACK reaching lockerd.
    proxy = BrokerProxy(broker.port, delay_s=0.05)
    plat, sim, lk, ledger, rng = _world(broker, port=proxy.port, seed=2)
    pinger = Pinger(lk)
    pinger.active = True
    wl = Workload(sim, lk, rng, bursts=12, cycles=10, opens=2).start()
    drops = mid_burst = unacked = 0
    for i in range(8):
        c = wait_for(lambda: proxy.live(), 10, interval=0.01,
                     what="lockerd connected through the proxy")[0]
        age = rng.uniform(0.2, 1.5)
        if i % 2 == 1 and not wl.done.is_set():
            # Every other drop lands inside a burst of events.
            wl.in_burst.wait(5)
        time.sleep(max(0.0, c.t_open + age - time.monotonic()))
        if i % 2 == 1:
            # ... and right when an event is out without its PUBACK.
            def in_flight():
                with c.lock:
                    return set(c.published) - proxy.acked_seqs()
            end = time.monotonic() + 2
            while not in_flight() and time.monotonic() < end and not wl.done.is_set():
                time.sleep(0.002)
        burst = wl.in_burst.is_set()
        if proxy.drop(c):
            drops += 1
            mid_burst += burst
            # Events the broker may have that lockerd saw no PUBACK for.
            with c.lock:
                sent = set(c.published)
            unacked += len(sent - proxy.acked_seqs())
        check_delivered_only_when_acked(ledger, proxy)
        assert lk.running(), "lockerd exited after a dropped connection"
    wl.join(60)
    pinger.active = False
    assert drops >= 6 and mid_burst >= 2, (drops, mid_burst)
    assert unacked >= 2, f"only {unacked} events were in flight at the drops"
    _, _, reconnects = _finish("broker drops", broker, plat, lk, ledger, pinger, t0, proxy,
                               extra=f" drops={drops} mid_burst={mid_burst} "
                                     f"unacked_at_drops={unacked} "
                                     f"publishes={_publishes(proxy)} "
                                     f"proxy_conns={len(proxy.connections())}")
    assert reconnects >= drops, f"{drops} drops but {reconnects} reconnects in the log"


test_broker_accepts_then_drops.timeout = 120


def test_broker_slow_acks():
    t0 = time.monotonic()
    broker = Mosquitto()
    proxy = BrokerProxy(broker.port, delay_s=0.3)
    plat, sim, lk, ledger, rng = _world(broker, port=proxy.port, seed=3)
    pinger = Pinger(lk)
    pinger.active = True
    wl = Workload(sim, lk, rng, bursts=10, cycles=10, opens=2).start()

    # Slow acknowledgements: nothing is delivered before its PUBACK.
    for _ in range(10):
        time.sleep(0.3)
        check_delivered_only_when_acked(ledger, proxy)

    # A 3 s stall inside a burst: no PUBACK reaches lockerd while it lasts,
    # though lockerd keeps publishing, and nothing is marked delivered but
    # what was acknowledged before it began (lockerd may still be taking
    # in the last acks that got through: under ASan that lags).
    wl.in_burst.wait(5)
    proxy.stall(3.0)
    time.sleep(0.05)                # a forward under way when it began
    with proxy.lock:
        acked0 = set(proxy.acked)
    d0 = ledger.delivered()
    time.sleep(1.5)
    d1 = ledger.delivered()
    with proxy.lock:
        acked1 = set(proxy.acked)
    assert acked1 == acked0, f"PUBACKs got through the stall: {sorted(acked1 - acked0)}"
    assert d1 - d0 <= acked0, \
        f"events marked delivered during a stall without their PUBACK: {sorted((d1 - d0) - acked0)}"
    if d1 - d0:
        print(f"stall: {len(d1 - d0)} events acked just before it were marked delivered in it")
    check_delivered_only_when_acked(ledger, proxy)

    # kill -9 in the stall (made longer, so that it outlasts the parking of
    # the workload): events published but not acked must go again.
    proxy.stall(3.0)
    wl.park()
    pinger.paused = True
    pinger.active = False
    published = {s for c in proxy.connections() for s in c.published}
    undelivered = set(ledger.undelivered())
    in_flight = sorted(published & undelivered)
    assert in_flight, "the stall left no event published but unacknowledged"
    conns_before = len(proxy.connections())
    lk.kill9()
    assert set(ledger.undelivered()) >= undelivered, "kill -9 lost the outbox"
    lk.start()
    pinger.paused = False
    wl.resume()
    time.sleep(0.2)
    pinger.active = True

    def resent():
        again = {s for c in proxy.connections()[conns_before:] for s in c.published}
        return set(in_flight) <= again
    wait_for(resent, 15, interval=0.1, what="the unacknowledged events published again")
    for _ in range(10):
        time.sleep(0.3)
        check_delivered_only_when_acked(ledger, proxy)
    wl.join(60)
    pinger.active = False
    _finish("broker slow acks", broker, plat, lk, ledger, pinger, t0, proxy,
            extra=f" in_flight_at_kill={len(in_flight)} undelivered_at_kill={len(undelivered)} "
                  f"publishes={_publishes(proxy)}")


test_broker_slow_acks.timeout = 120
