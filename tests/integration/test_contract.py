"""The contract test: every message lockerd published to the platform
during this run of the integration tests (each test's Platform client
records what it receives into $BUILD/contract/messages.jsonl) is valid
against its JSON Schema in proto/schemas/. Runs after all other tests;
its first test makes traffic of every kind itself, so a filtered run
still checks something real."""

import json
import os
import time

import jsonschema

import harness
from harness import Lockerd, Locksim, Mosquitto, Platform, config, mqtt_extra, wait_for

RUN_LAST = True

SCHEMAS = os.path.join(harness.ROOT, "proto", "schemas")


def _schema(name):
    with open(os.path.join(SCHEMAS, name)) as f:
        s = json.load(f)
    jsonschema.Draft202012Validator.check_schema(s)
    return jsonschema.Draft202012Validator(s)


def _kind(topic):
    """Which schema a topic's messages follow; None for the platform's own
    commands (published by the tests, not by lockerd)."""
    parts = topic.split("/")
    if len(parts) >= 3 and parts[2] == "status":
        return "status.json"
    if len(parts) >= 4 and parts[2] == "cells":
        return "cell.json"
    if len(parts) >= 3 and parts[2] == "events":
        return "event.json"
    if len(parts) >= 3 and parts[2] == "reply":
        return "reply.json"
    return None


def _validate(messages):
    validators = {n: _schema(n) for n in ("status.json", "cell.json", "event.json",
                                          "reply.json")}
    counts, bad = {}, []
    for m in messages:
        kind = _kind(m["topic"])
        if kind is None:
            continue
        counts[kind] = counts.get(kind, 0) + 1
        try:
            body = json.loads(m["payload"])
        except ValueError as e:
            bad.append((m["topic"], f"not JSON: {e}", m["payload"][:200]))
            continue
        errs = sorted(validators[kind].iter_errors(body), key=lambda e: list(e.path))
        if errs:
            bad.append((m["topic"], "; ".join(f"{list(e.path)}: {e.message}" for e in errs[:3]),
                        m["payload"][:300]))
    return counts, bad


def test_contract_traffic_of_every_kind():
    import nacl.signing
    import nacl.encoding
    broker = Mosquitto()
    plat = Platform(broker)
    sim = Locksim()
    pk = nacl.signing.SigningKey.generate().verify_key.encode(
        encoder=nacl.encoding.HexEncoder).decode()
    lk = Lockerd(config(sim, extra=mqtt_extra(broker, platform_key=pk)))
    lk.wait_event("started", timeout=5)
    exp = int(time.time() * 1000) + 30000

    def cmd(c):
        plat.c.publish(f"{plat.prefix}/cmd", json.dumps(c), qos=1)

    cmd({"op": "reserve", "request_id": "c-1", "exp": exp, "app": "A-1", "size": "S"})
    r = wait_for(lambda: [b for b, _ in plat.on("reply") if b.get("request_id") == "c-1"], 5,
                 what="reserve reply")[0]
    cmd({"op": "reserve", "request_id": "c-2", "exp": exp, "app": "A-1", "size": "Q"})
    cmd({"op": "cancel", "request_id": "c-3", "exp": exp, "resv": 999})
    cmd({"op": "open", "request_id": "c-4", "exp": exp, "cell": 3, "ts": exp,
         "nonce": "contract-nonce-01", "sig": "A" * 86})
    cmd({"op": "rebirth", "request_id": "c-5", "exp": exp})
    kc = harness.kiosk(lk)
    assert kc.code(r["code"]).get("ok") is True
    lk.wait_event("door_opened", cell=r["cell"], timeout=3)
    harness.close_door(sim, r["cell"])
    lk.wait_event("deposited", cell=r["cell"], timeout=3)
    wait_for(lambda: len([b for b, _ in plat.on("reply")]) >= 5, 5, what="five replies")
    plat.wait_events(lk.last_seq())
    lk.stop()
    lk.start()
    lk.wait_event("started", after=lk.last_seq() - 1, timeout=5)
    lk.kill9()
    wait_for(lambda: [b for b, _ in plat.on("status") if b.get("why") == "connection lost"], 5,
             what="the will")
    with plat.lock:
        mine = [{"topic": t, "payload": json.dumps(b)} for t, b, _ in plat.messages]
    counts, bad = _validate(mine)
    assert not bad, "messages that break their schema:\n" + \
        "\n".join(f"{t}: {why}\n  {p}" for t, why, p in bad)
    for kind in ("status.json", "cell.json", "event.json", "reply.json"):
        assert counts.get(kind, 0) > 0, f"no {kind} message was published: {counts}"
    print(f"validated {sum(counts.values())} messages: {counts}")


def test_contract_every_message_of_this_run():
    path = os.path.join(harness.build_dir(), "contract", "messages.jsonl")
    with open(path) as f:
        messages = [json.loads(line) for line in f if line.strip()]
    counts, bad = _validate(messages)
    assert not bad, "messages that break their schema:\n" + \
        "\n".join(f"{t}: {why}\n  {p}" for t, why, p in bad[:20])
    assert sum(counts.values()) > 0, "nothing was recorded"
    print(f"validated all {sum(counts.values())} messages lockerd published in this run: {counts}")


def test_asyncapi_examples_follow_the_schemas():
    """proto/asyncapi.yaml names every channel, and each of its examples
    is valid against the schema it documents."""
    import yaml
    with open(os.path.join(harness.ROOT, "proto", "asyncapi.yaml")) as f:
        doc = yaml.safe_load(f)
    topics = {"lockers/{locker}/status", "lockers/{locker}/cells/{cell}",
              "lockers/{locker}/events", "lockers/{locker}/cmd", "lockers/{locker}/reply"}
    assert set(doc["channels"]) == topics, sorted(doc["channels"])
    checked = 0
    for name, ch in doc["channels"].items():
        for verb in ("subscribe", "publish"):
            if verb not in ch:
                continue
            msg = ch[verb]["message"]
            schema = msg["payload"]
            if "$ref" in schema:
                schema = _schema(os.path.basename(schema["$ref"])).schema
            examples = msg.get("examples") or []
            assert examples, f"{name}: no example"
            for ex in examples:
                body = dict(ex["payload"])
                # Placeholders stand for values too long to show.
                body = {k: v for k, v in body.items()
                        if not (isinstance(v, str) and v.startswith("<"))}
                errs = list(jsonschema.Draft202012Validator(schema).iter_errors(body))
                assert not errs, f"{name} example {ex.get('name')}: {[e.message for e in errs]}"
                checked += 1
    print(f"{checked} AsyncAPI examples validate")
