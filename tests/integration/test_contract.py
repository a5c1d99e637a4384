"""The contract test: every message lockerd published to the platform
during this run of the integration tests (each test's Platform client
records what it receives into $BUILD/contract/messages.jsonl) is valid
against its JSON Schema in proto/schemas/. Runs after all other tests;
its first test makes traffic of every kind itself, so a filtered run
still checks something real.

Commands go the other way, so they are checked the other way round: the
schemas in proto/schemas/commands/ and the codec (proto/cmd.c) must agree
on every command the tests published (the codec's verdict is in the
reply: bad_command or not) and on the table of hand-written commands in
tests/cmd_cases.json, which tests/unit/test_cmd.c runs through the codec
itself."""

import base64
import collections
import decimal
import functools
import json
import os
import re
import time
import warnings

import jsonschema

import harness
from harness import Lockerd, Locksim, Mosquitto, Platform, config, mqtt_extra, wait_for

RUN_LAST = True

PROTO = os.path.join(harness.ROOT, "proto")
SCHEMAS = os.path.join(PROTO, "schemas")
COMMANDS = os.path.join(SCHEMAS, "commands")
CASES = os.path.join(harness.ROOT, "tests", "cmd_cases.json")

# The command set of proto/cmd.c, and which ops need the signature envelope.
OPS = ("ping", "state", "rebirth", "reserve", "cancel", "reissue", "resv", "service",
       "open", "load", "staff_add", "staff_revoke", "restore_ack")
SIGNED_OPS = {"reserve", "cancel", "reissue", "service", "open", "load", "staff_add",
              "staff_revoke", "restore_ack"}
PAYLOAD_MAX = 4096          # CMD_PAYLOAD_MAX
# The key that signed the examples in proto/asyncapi.yaml and the command
# schemas: Ed25519 from the seed SHA-256("lockerd example platform key").
EXAMPLE_PLATFORM_KEY = "1c4c3c78968c0d2b5b8af50fb384334f73ddf1e63f4d0713e747b10839d1e874"


def _ecma_pattern(validator, patrn, instance, schema):
    """The keyword "pattern" with ECMA-262's "$", as JSON Schema specifies:
    it matches only at the very end. Python's also matches before a final
    newline, which would let "r-1" and a newline pass as a request_id (the
    codec refuses it)."""
    if validator.is_type(instance, "string") and not re.search(_ecma(patrn), instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {patrn!r}")


@functools.lru_cache(maxsize=None)
def _ecma(patrn):
    if patrn.endswith("$") and not patrn.endswith("\\$"):
        return patrn[:-1] + r"\Z"
    return patrn


Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator,
                                         {"pattern": _ecma_pattern})


# The $ids are relative ("lockerd/commands/open.json"), and RefResolver
# joins a scope to the one before it: relative ones would pile up
# ("lockerd/commands/lockerd/commands/..."). Under this base they are
# absolute. Nothing is fetched from it: every schema is in the store.
BASE = "file:///lockerd-schemas/"


@functools.lru_cache(maxsize=None)
def _store():
    """Every schema under proto/schemas by its $id, so that references
    ("common.json#/$defs/...") resolve offline."""
    store = {}
    for d, _, files in os.walk(SCHEMAS):
        for n in files:
            if n.endswith(".json"):
                with open(os.path.join(d, n)) as f:
                    s = json.load(f)
                jsonschema.Draft202012Validator.check_schema(s)
                store[BASE + s["$id"]] = s
    return store


def _validator_of(schema):
    with warnings.catch_warnings():
        # RefResolver is deprecated from jsonschema 4.18 on, but it is what
        # Debian 12's 4.10 has, and it still works in the later ones.
        warnings.simplefilter("ignore", DeprecationWarning)
        resolver = jsonschema.RefResolver(BASE, schema, store=_store())
        return Validator(schema, resolver=resolver)


@functools.lru_cache(maxsize=None)
def _file_validator(relpath):
    """The validator of a schema file, by its path under proto/."""
    with open(os.path.join(PROTO, relpath)) as f:
        s = json.load(f)
    jsonschema.Draft202012Validator.check_schema(s)
    return _validator_of(s)


def _schema(name):
    return _file_validator(os.path.join("schemas", name))


def _command_validator(op):
    return _file_validator(os.path.join("schemas", "commands", op + ".json")) \
        if op in OPS else None


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
    broker = Mosquitto()
    plat = Platform(broker)
    sim = Locksim()
    lk = Lockerd(config(sim, extra=mqtt_extra(broker)))
    lk.wait_event("started", timeout=5)
    exp = int(time.time() * 1000) + 30000

    def cmd(c):
        plat.c.publish(f"{plat.prefix}/cmd", json.dumps(c), qos=1)

    cmd(harness.command("reserve", "c-1", exp, app="A-1", size="S"))
    r = wait_for(lambda: [b for b, _ in plat.on("reply") if b.get("request_id") == "c-1"], 5,
                 what="reserve reply")[0]
    cmd(harness.command("reserve", "c-2", exp, app="A-1", size="Q"))
    cmd(harness.command("cancel", "c-3", exp, resv=999))
    cmd({"op": "open", "request_id": "c-4", "exp": exp, "cell": 3, "ts": exp,
         "nonce": "contract-nonce-01", "sig": "A" * 86, "locker": "test-locker"})
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


def test_contract_commands_agree_with_the_codec():
    """Both ways, over every command the tests published: a command the
    locker took (its reply is anything but bad_command) is valid against
    its op's schema, and one its codec refused (bad_command) is not."""
    path = os.path.join(harness.build_dir(), "contract", "messages.jsonl")
    with open(path) as f:
        messages = [json.loads(line) for line in f if line.strip()]
    taken = refused = unanswered = skipped = 0
    bad = []
    for payload, reply in _paired_commands(messages):
        if reply is None:
            # Published while no lockerd listened, or the test ended first.
            unanswered += 1
            continue
        ok, why, body = command_verdict(payload)
        if ok and _bytes_not_characters(body):
            skipped += 1
            continue
        codec_took = reply.get("error") != "bad_command"
        if codec_took:
            taken += 1
        else:
            refused += 1
        if ok != codec_took:
            bad.append(f"{'the codec took it' if codec_took else 'the codec refused it'} "
                       f"({json.dumps(reply)[:200]}), the schema "
                       f"{'accepts it' if ok else 'does not: ' + why}\n"
                       f"  {payload[:300]!r}")
    assert not bad, f"{len(bad)} commands where the codec and the schemas disagree:\n" + \
        "\n".join(bad[:20])
    assert taken > 0 and refused > 0, (taken, refused)
    print(f"codec and schemas agree on {taken + refused} commands: {taken} taken, {refused} "
          f"refused as bad_command; skipped {unanswered} without a reply and {skipped} whose "
          f"app or name has more bytes than characters")


def command_verdict(payload):
    """Whether a command (bytes) is one the schemas accept: (ok, why, the
    parsed object or None). The rules of the whole message that JSON
    Schema cannot state (size, UTF-8, duplicate keys, and what jansson
    does not parse) are checked here, as the codec checks them."""
    if len(payload) > PAYLOAD_MAX:
        return False, f"longer than {PAYLOAD_MAX} bytes", None
    try:
        body = _jansson_loads(payload)
    except ValueError as e:
        return False, f"not JSON as the codec reads it: {e}", None
    if not isinstance(body, dict):
        return False, "not a JSON object", None
    op = body.get("op")
    v = _command_validator(op) if isinstance(op, str) else None
    if v is None:
        return False, f"no schema for op {op!r}", body
    errs = sorted(v.iter_errors(body), key=lambda e: list(e.path))
    if errs:
        return False, "; ".join(f"{list(e.path)}: {e.message}" for e in errs[:3]), body
    return True, "", body


def _jansson_loads(payload):
    r"""Parses a payload as the codec's jansson does (json_loadb with
    JSON_REJECT_DUPLICATES): UTF-8 only, no duplicate keys, no NaN or
    Infinity, no \u0000 or unpaired surrogates, integers within int64;
    a number with a fraction or an exponent is a real, kept here as a
    Decimal so that "integer" refuses it as json_is_integer() does
    (JSON Schema would count 5.0 as an integer)."""
    def obj(pairs):
        d = {}
        for k, v in pairs:
            if k in d:
                raise ValueError(f"duplicate key {k!r}")
            d[k] = v
        return d

    def constant(name):
        raise ValueError(f"{name} is not JSON")

    def walk(v):
        if isinstance(v, dict):
            for k, x in v.items():
                walk(k)
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, str):
            if "\0" in v or any(0xD800 <= ord(c) <= 0xDFFF for c in v):
                raise ValueError("a \\u0000 or an unpaired surrogate")
        elif isinstance(v, int) and not isinstance(v, bool) and not -2**63 <= v < 2**63:
            raise ValueError("an integer beyond 64 bits")
        elif isinstance(v, decimal.Decimal) and not v.is_finite() or \
                isinstance(v, decimal.Decimal) and abs(v) > decimal.Decimal("1.8e308"):
            raise ValueError("a real out of range")

    try:
        v = json.loads(payload.decode("utf-8"), object_pairs_hook=obj,
                       parse_float=decimal.Decimal, parse_constant=constant)
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8: {e}")
    except RecursionError:
        raise ValueError("nested too deep")
    walk(v)
    return v


def _bytes_not_characters(body):
    """app and name allow any text, and the codec counts their length in
    bytes of UTF-8 where the schema's maxLength counts characters: the two
    disagree on non-ASCII text whose characters fit but bytes do not.
    Such a command is left out of the cross-check."""
    if not isinstance(body, dict):
        return False
    for key, most in (("app", 47), ("name", 63)):
        v = body.get(key)
        if isinstance(v, str) and len(v) <= most < len(v.encode()):
            return True
    return False


def _codec_request_id(payload):
    """The request id cmd_parse() reads for its reply: from a payload it
    parses, or else as cmd_scan_request_id() scans the first 16 x 4096
    bytes of one it does not (too long, too deep, a number out of range),
    when it is a valid request id; None otherwise (the reply says null)."""
    try:
        body = _jansson_loads(payload) if len(payload) <= PAYLOAD_MAX else None
    except ValueError:
        body = None
    rid = body.get("request_id") if isinstance(body, dict) else _scan_request_id(payload)
    if isinstance(rid, str) and 1 <= len(rid) <= 64 and re.fullmatch(r"[A-Za-z0-9_.:-]+", rid):
        return rid
    return None


def _scan_request_id(payload):
    """proto/cmd.c cmd_scan_request_id(): the first top-level "request_id"
    whose value is a string without escapes, walking the keys and skipping
    values (however deep) without parsing them."""
    b = payload[:16 * PAYLOAD_MAX]
    n, i = len(b), 0

    def ws(i):
        while i < n and b[i] in b" \t\n\r":
            i += 1
        return i

    def string(i):
        if i >= n or b[i] != 0x22:
            return None, i, False
        i += 1
        start, esc = i, False
        while i < n and b[i] != 0x22:
            if b[i] == 0x5C:
                esc = True
                if n - i < 2:
                    return None, n, esc
                i += 1
            i += 1
        if i >= n:
            return None, n, esc
        return b[start:i], i + 1, esc

    i = ws(i)
    if i >= n or b[i] != 0x7B:
        return None
    i += 1
    while True:
        i = ws(i)
        key, i, esc = string(i)
        if key is None:
            return None
        i = ws(i)
        if i >= n or b[i] != 0x3A:
            return None
        i = ws(i + 1)
        if not esc and key == b"request_id" and i < n and b[i] == 0x22:
            val, i, esc = string(i)
            if val is None or esc or b"\0" in val:
                return None
            try:
                return val.decode("ascii")
            except UnicodeDecodeError:
                return None
        depth = 0
        while True:
            i = ws(i)
            if i >= n:
                return None
            c = b[i]
            if c == 0x22:
                s_, i, _ = string(i)
                if s_ is None:
                    return None
            elif c in b"{[":
                depth += 1
                i += 1
            elif c in b"}]":
                if depth == 0:
                    break
                depth -= 1
                i += 1
            elif c == 0x2C and depth == 0:
                break
            else:
                i += 1
        if b[i] != 0x2C:
            return None
        i += 1


def _paired_commands(messages):
    """[(payload bytes, reply dict or None)] for every command recorded:
    each client's records in order, a reply going to the oldest command
    of its client and topic with the same request id not yet answered
    (lockerd answers in order, and a repeat is answered again)."""
    out, pending = [], {}
    for m in messages:
        base, _, leaf = m["topic"].rpartition("/")
        if leaf not in ("cmd", "reply"):
            continue
        waiting = pending.setdefault((m.get("session"), base), {})
        if leaf == "cmd":
            payload = bytes.fromhex(m["payload_hex"]) if "payload_hex" in m else \
                m["payload"].encode()
            item = [payload, None]
            out.append(item)
            waiting.setdefault(_codec_request_id(payload), collections.deque()).append(item)
            continue
        try:
            reply = json.loads(m["payload"])
        except ValueError:
            continue        # test_contract_every_message_of_this_run says so
        if not isinstance(reply, dict):
            continue
        q = waiting.get(reply.get("request_id"))
        if q:
            q.popleft()[1] = reply
    return [tuple(x) for x in out]


def _case_payload(case):
    """A case of tests/cmd_cases.json as the bytes to send, as
    tests/unit/test_cmd.c builds them: "raw" text, "raw_hex" bytes, or
    "cmd" serialised compactly, padded with spaces after the opening brace
    to "pad" bytes."""
    if "raw_hex" in case:
        return bytes.fromhex(case["raw_hex"])
    if "raw" in case:
        return case["raw"].encode()
    text = json.dumps(case["cmd"], separators=(",", ":"), ensure_ascii=False).encode()
    if "pad" in case:
        text = b"{" + b" " * (case["pad"] - len(text)) + text[1:]
        assert len(text) == case["pad"], case["name"]
    return text


def test_command_schemas_on_the_table_of_cases():
    """The hand-written commands of tests/cmd_cases.json, good and bad (at
    least one per rule of every field), get the verdict the table gives:
    the same table that tests/unit/test_cmd.c runs through the codec. No
    lockerd needed."""
    with open(CASES) as f:
        cases = json.load(f)
    names = [c["name"] for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    wrong, per_op = [], collections.Counter()
    for case in cases:
        ok, why, body = command_verdict(_case_payload(case))
        want = case.get("schema_valid", case["valid"])
        if ok != want:
            wrong.append(f"{case['name']}: the schemas say {'valid' if ok else 'invalid'}"
                         f"{' (' + why + ')' if why else ''}, the table {want}")
        if isinstance(body, dict):
            per_op[(body.get("op"), ok)] += 1
    assert not wrong, f"{len(wrong)} of {len(cases)} cases:\n" + "\n".join(wrong)
    for op in OPS:
        assert per_op[(op, True)] and per_op[(op, False)], \
            f"the table needs a good and a bad {op}: {per_op}"
    print(f"{len(cases)} commands of the table get their verdict from the schemas "
          f"({sum(c['valid'] for c in cases)} good)")


def test_command_schemas_examples_and_signing():
    """Each command schema is a valid 2020-12 schema with additionalProperties
    false, has an example that it accepts, and the examples of signed ops
    carry a signature by the example key over the canonical bytes that
    proto/README.md describes."""
    import nacl.exceptions
    import nacl.signing
    vk = nacl.signing.VerifyKey(bytes.fromhex(EXAMPLE_PLATFORM_KEY))
    found = sorted(n[:-5] for n in os.listdir(COMMANDS) if n.endswith(".json"))
    assert found == sorted(OPS + ("common",)), found
    for op in OPS:
        v = _command_validator(op)
        s = v.schema
        assert s["$id"] == f"lockerd/commands/{op}.json", s["$id"]
        assert s["additionalProperties"] is False and s["properties"]["op"] == {"const": op}
        assert ("envelope" in s.get("$ref", "")) == (op in SIGNED_OPS), op
        assert s.get("examples"), f"{op}: no example"
        for ex in s["examples"]:
            ok, why, _ = command_verdict(json.dumps(ex, ensure_ascii=False).encode())
            assert ok, f"{op} example: {why}"
            if op in SIGNED_OPS:
                sig = base64.urlsafe_b64decode(ex["sig"] + "==")
                try:
                    vk.verify(canonical_bytes(ex), sig)
                except nacl.exceptions.BadSignatureError:
                    raise AssertionError(f"{op} example: the signature does not verify")
    print(f"{len(OPS)} command schemas, each with a valid example; signed ones verify")


def canonical_bytes(cmd):
    r"""What a platform signs: the command without "sig" as jansson's
    json_dumps(JSON_COMPACT | JSON_SORT_KEYS | JSON_ENSURE_ASCII) writes
    it. Python's ensure_ascii differs in two ways: lower-case hex in
    \uXXXX, and it escapes DEL, which jansson leaves as it is."""
    text = json.dumps({k: v for k, v in cmd.items() if k != "sig"}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=True)

    def fix(m):
        t = m.group(0)
        if t == "\\\\":
            return t
        return "\x7f" if t == "\\u007f" else "\\u" + t[2:].upper()
    return re.sub(r"\\\\|\\u[0-9a-f]{4}", fix, text).encode()


def _asyncapi_messages(doc, msg):
    """The messages of a channel operation: one, or each of a oneOf, with
    references into components followed."""
    def deref(m):
        ref = m.get("$ref", "")
        if not ref.startswith("#/"):
            return m
        node = doc
        for part in ref[2:].split("/"):
            node = node[part]
        return node
    return [deref(m) for m in msg["oneOf"]] if "oneOf" in msg else [deref(msg)]


def test_asyncapi_examples_follow_the_schemas():
    """proto/asyncapi.yaml names every channel and every command, and each
    of its examples is valid against the schema it documents."""
    import yaml
    with open(os.path.join(PROTO, "asyncapi.yaml")) as f:
        doc = yaml.safe_load(f)
    topics = {"lockers/{locker}/status", "lockers/{locker}/cells/{cell}",
              "lockers/{locker}/events", "lockers/{locker}/cmd", "lockers/{locker}/reply"}
    assert set(doc["channels"]) == topics, sorted(doc["channels"])
    checked, commands = 0, set()
    for name, ch in doc["channels"].items():
        for verb in ("subscribe", "publish"):
            if verb not in ch:
                continue
            for msg in _asyncapi_messages(doc, ch[verb]["message"]):
                schema = msg["payload"]
                val = _file_validator(schema["$ref"]) if "$ref" in schema else \
                    _validator_of(schema)
                examples = msg.get("examples") or []
                assert examples, f"{name} {msg.get('name')}: no example"
                for ex in examples:
                    body = dict(ex["payload"])
                    # Placeholders stand for values too long to show.
                    body = {k: v for k, v in body.items()
                            if not (isinstance(v, str) and v.startswith("<"))}
                    errs = list(val.iter_errors(body))
                    assert not errs, f"{name} example {ex.get('name')}: {[e.message for e in errs]}"
                    if name.endswith("/cmd"):
                        assert body == ex["payload"], f"{ex.get('name')}: placeholders in a command"
                        ok, why, _ = command_verdict(json.dumps(body, ensure_ascii=False).encode())
                        assert ok, f"{ex.get('name')}: {why}"
                        commands.add(body["op"])
                    checked += 1
    assert commands == set(OPS), f"the cmd channel lacks examples of {set(OPS) - commands}"
    assert EXAMPLE_PLATFORM_KEY in open(os.path.join(PROTO, "asyncapi.yaml")).read()
    print(f"{checked} AsyncAPI examples validate, {len(commands)} ops among them")
