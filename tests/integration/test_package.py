"""The Debian packages (debian/): built from this tree with
dpkg-buildpackage, installed with dpkg on this machine under a running
systemd (sysbox.py: the machine's own root, copy-on-write), the installed
service started against locksim and a broker, removed and purged; and an
upgrade from the package of an older tree that keeps every reservation,
code, event and unsent outbox entry and migrates the schema, with the
downgrade refused."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import time

import harness
import sysbox
from harness import Locksim, Mosquitto, Platform

ROOT = harness.ROOT
CONF = "/etc/lockerd/lockerd.conf"
STATE = "/var/lib/lockerd"
DB = STATE + "/lockerd.db"
CTL = "/run/lockerd/control.sock"

_built = {}


def _skip():
    if harness.sanitized():
        return "the packages are built without sanitizers; make test runs this"
    return sysbox.unavailable()


def _env():
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "BUILD")}
    # The unit tests ran in make test already; dpkg-buildpackage -b
    # builds and installs here.
    env["DEB_BUILD_OPTIONS"] = "nocheck"
    return env


def _deb_build(tree, out):
    """tools/deb.sh of tree into out: {package: path}, version."""
    r = subprocess.run([os.path.join(tree, "tools", "deb.sh"), out], cwd=tree,
                       capture_output=True, text=True, env=_env(), timeout=900)
    assert r.returncode == 0, f"make deb of {tree} failed:\n{r.stdout}\n{r.stderr}"
    print("  " + r.stdout.strip().replace("\n", "\n  "))
    version = subprocess.run(["dpkg-parsechangelog", "-l", os.path.join(tree, "debian/changelog"),
                              "-S", "Version"], capture_output=True, text=True,
                             check=True).stdout.strip()
    debs = {}
    for f in os.listdir(out):
        m = re.match(r"^([a-z0-9.+-]+)_([^_]+)_[a-z0-9]+\.deb$", f)
        if m and m.group(2) == version and not m.group(1).endswith("-dbgsym"):
            debs[m.group(1)] = os.path.join(out, f)
    assert set(debs) == {"lockerd", "lockerd-tools"}, f"packages built: {sorted(os.listdir(out))}"
    return debs, version


def _this_tree_debs():
    """The packages of this tree, built once per test process, and lintian
    on them: no error, no warning (each override in debian/ says why)."""
    if "new" not in _built:
        out = os.path.join(harness.build_dir(), "deb-test")
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        debs, version = _deb_build(ROOT, out)
        changes = [f for f in os.listdir(out) if f.endswith(".changes")]
        r = subprocess.run(["lintian", "--pedantic", os.path.join(out, changes[0])],
                           capture_output=True, text=True, timeout=600)
        tags = [l for l in r.stdout.splitlines() if re.match(r"^[EW]: ", l)]
        print(f"  lintian: {len(tags)} errors or warnings" + "".join(f"\n    {t}" for t in tags))
        assert not tags, "lintian:\n" + "\n".join(tags)
        _built["new"] = debs, version
    return _built["new"]


def _share(debs):
    """A folder the box sees as /mnt/ci, holding the packages."""
    d = os.path.join(harness.tmpdir(), "share")
    os.makedirs(d, exist_ok=True)
    out = {}
    for tag, group in debs.items():
        for pkg, path in group.items():
            dst = os.path.join(d, f"{tag}-{os.path.basename(path)}")
            shutil.copy(path, dst)
            out[(tag, pkg)] = "/mnt/ci/" + os.path.basename(dst)
    return d, out


def _host_state():
    r = subprocess.run(["dpkg-query", "-W", "-f", "${Status} ${Version}", "lockerd"],
                       capture_output=True, text=True)
    return (r.stdout.strip(), os.path.exists(STATE), os.path.exists(CONF))


def _status(box, pkg):
    r = box.run(["dpkg-query", "-W", "-f", "${Status} ${Version}", pkg], check=False)
    return r.stdout.strip() if r.returncode == 0 else "not known"


def _config(sim, broker):
    """The hall's configuration: the installed file's paths (state, the
    sockets the unit provides), locksim's boards and the broker."""
    cfg = harness.config(sim, extra=harness.mqtt_extra(broker))
    for sec, keys in harness.custody_extra().items():
        cfg.setdefault(sec, {}).update(keys)
    cfg["locker"]["state_dir"] = STATE
    cfg["control"]["socket"] = CTL
    cfg.setdefault("kiosk", {})["socket"] = "/run/lockerd/kiosk.sock"
    return "; written by test_package.py\n" + harness.render(cfg)


class Service:
    """The installed lockerd.service in the box, through its control
    socket (as root, the operator) and systemctl."""

    def __init__(self, box):
        self.box = box
        self.client = None

    def connect(self):
        if self.client:
            self.client.close()
        self.client = harness.JsonLineClient(self.box.path(CTL))
        harness.wait_for(lambda: self._ping(), 10, what="the installed lockerd's control socket")

    def _ping(self):
        try:
            return self.client.request('{"op":"ping"}').get("ok")
        except (OSError, harness.HarnessError, ValueError):
            self.client.close()
            return False

    def ctl(self, obj):
        return self.client.request(json.dumps(obj))

    def ctl_ok(self, obj):
        r = self.ctl(obj)
        assert r.get("ok") is True, f"{obj} -> {r}"
        return r

    def events(self, after=0):
        out = []
        while True:
            page = self.ctl_ok({"op": "events", "after": after})["events"]
            out.extend(page)
            if len(page) < harness.CTL_EVENTS_PAGE:
                return out
            after = page[-1]["seq"]

    def wait_event(self, type, after=0, timeout=10, **match):
        def find():
            return [e for e in self.events(after) if e.get("type") == type and
                    all(e.get(k) == v for k, v in match.items())]
        return harness.wait_for(find, timeout, what=f"a {type} event {match}")[0]

    def active(self):
        return self.box.run(["systemctl", "is-active", "lockerd"], check=False).stdout.strip()

    def main_pid(self):
        return int(self.box.run(["systemctl", "show", "-P", "MainPID", "lockerd"]).stdout)

    def close(self):
        if self.client:
            self.client.close()
            self.client = None


def _uid(box, name):
    line = box.run(["getent", "passwd", name]).stdout.strip()
    return line.split(":")


def _dropoff(svc, box, sim, app):
    """A drop-off at the installed locker: reserve (control socket), the
    code typed with the installed kiosk(1), the door opens, documents in,
    the door closed. Returns the reservation."""
    r = svc.ctl_ok({"op": "reserve", "app": app, "size": "S"})
    n0 = sim.last_write_n()
    k = box.run(["kiosk", "code", r["code"]], check=False)
    assert k.returncode == 0, f"kiosk code: {k.stdout}{k.stderr}"
    sim.wait_write(harness.unlock_write_pred(r["cell"]), after=n0, timeout=10,
                   what=f"the unlock of cell {r['cell']}")
    seq = svc.wait_event("code_used", resv=r["resv"])["seq"]
    svc.wait_event("door_opened", after=seq, cell=r["cell"])
    unit, ch = harness.unit_ch(r["cell"])
    sim.cmd(f"put {unit} {ch}")
    harness.close_door(sim, r["cell"])
    svc.wait_event("deposited", resv=r["resv"])
    return r


def test_package_install_run_remove_purge():
    why = _skip()
    if why:
        print(f"  SKIP: {why}")
        return
    debs, version = _this_tree_debs()
    share, paths = _share({"new": debs})
    host0 = _host_state()
    sim = Locksim()
    broker = Mosquitto()
    plat = Platform(broker)
    box = sysbox.Box(share)
    print(f"  box: systemd {box.state}, pid {box.pid} on the host")

    r = box.run(["dpkg", "-i", paths[("new", "lockerd")], paths[("new", "lockerd-tools")]],
                check=False)
    assert r.returncode == 0, f"dpkg -i: {r.stdout}{r.stderr}"
    for pkg in ("lockerd", "lockerd-tools"):
        assert _status(box, pkg) == f"install ok installed {version}", _status(box, pkg)
    # The system user and group, made by the package (systemd-sysusers).
    pw = _uid(box, "lockerd")
    assert pw[5] == STATE and pw[6].endswith("nologin"), pw
    assert box.run(["getent", "group", "lockerd"], check=False).returncode == 0
    conffiles = box.run(["dpkg-query", "-W", "-f", "${Conffiles}", "lockerd"]).stdout
    assert re.search(r"^ /etc/lockerd/lockerd.conf [0-9a-f]{32}$", conffiles, re.M), conffiles
    files = set(box.run(["dpkg", "-L", "lockerd"]).stdout.split())
    for f in ("/usr/sbin/lockerd", "/lib/systemd/system/lockerd.service",
              "/usr/lib/sysusers.d/lockerd.conf", "/usr/share/man/man8/lockerd.8.gz",
              "/usr/share/man/man5/lockerd.conf.5.gz", CONF,
              "/usr/share/lockerd/boards/generic-16.ini"):
        assert f in files, f"lockerd lacks {f}"
    tools = set(box.run(["dpkg", "-L", "lockerd-tools"]).stdout.split())
    for f in ("/usr/bin/locksim", "/usr/bin/kiosk", "/usr/bin/lockerctl",
              "/usr/share/man/man1/locksim.1.gz"):
        assert f in tools, f"lockerd-tools lacks {f}"
    # Installed, not started nor enabled, no state yet.
    assert not box.exists(STATE), "state made before the first start"
    enabled = box.run(["systemctl", "is-enabled", "lockerd"], check=False).stdout.strip()
    assert enabled == "disabled", enabled
    svc = Service(box)
    assert svc.active() == "inactive", svc.active()
    # The shipped configuration: the unit runs, lockerd refuses it.
    r = box.run(["systemctl", "start", "lockerd"], check=False)
    assert r.returncode != 0, "lockerd started on the unfilled configuration"
    harness.wait_for(lambda: "no [cells] defined" in box.journal(), 5,
                     what="the refusal in the journal")

    with open(box.path(CONF), "w") as f:
        f.write(_config(sim, broker))
    t0 = time.monotonic()
    box.run(["systemctl", "enable", "--now", "lockerd"])
    print(f"  systemctl enable --now lockerd: {time.monotonic() - t0:.2f} s (Type=notify)")
    assert svc.active() == "active", svc.active()
    pid = svc.main_pid()
    with open(box.path(f"/proc/{pid}/status")) as f:
        uids = [l for l in f if l.startswith("Uid:")][0].split()[1:]
    assert all(u == pw[2] for u in uids), f"lockerd runs as {uids}, lockerd is {pw[2]}"
    svc.connect()
    st = os.stat(box.path(STATE))
    assert st.st_mode & 0o777 == 0o700 and str(st.st_uid) == pw[2], oct(st.st_mode)
    for name, mode in (("lockerd.db", None), ("device.key", 0o600)):
        st = os.stat(box.path(f"{STATE}/{name}"))
        assert str(st.st_uid) == pw[2], f"{name} owned by {st.st_uid}"
        assert mode is None or st.st_mode & 0o777 == mode, f"{name} {oct(st.st_mode)}"
    harness.wait_for(lambda: plat.on("status"), 10, what="the installed lockerd's birth")

    r = _dropoff(svc, box, sim, "PKG-1")
    plat_ev = harness.wait_for(lambda: [e for e in plat.events() if e["type"] == "deposited"],
                               10, what="deposited on MQTT")
    assert plat_ev[0]["resv"] == r["resv"], plat_ev
    box.run(["systemctl", "reload", "lockerd"])
    harness.wait_for(lambda: "SIGHUP: " in box.journal(), 5, what="the reload in the journal")
    journal = box.journal()
    assert "locker test-locker" in journal, journal[-2000:]
    svc.close()

    # Remove: the service stops, the programs go, the configuration and
    # the state stay.
    edited = open(box.path(CONF)).read()
    pid = svc.main_pid()
    r = box.run(["dpkg", "-r", "lockerd", "lockerd-tools"], check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not box.exists(f"/proc/{pid}"), "lockerd still runs after dpkg -r"
    assert "signal 15: stopping" in box.journal(), box.journal()[-1500:]
    assert _status(box, "lockerd").startswith("deinstall ok config-files"), _status(box, "lockerd")
    for f in ("/usr/sbin/lockerd", "/lib/systemd/system/lockerd.service", "/usr/bin/locksim",
              "/usr/bin/kiosk", "/usr/bin/lockerctl", "/usr/share/lockerd"):
        assert not box.exists(f), f"{f} left after dpkg -r"
    assert open(box.path(CONF)).read() == edited, "dpkg -r changed the configuration"
    for f in ("lockerd.db", "device.key"):
        assert box.exists(f"{STATE}/{f}"), f"dpkg -r removed {STATE}/{f}"
    # Purge: the configuration and the state go; the system user stays.
    r = box.run(["dpkg", "-P", "lockerd", "lockerd-tools"], check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _status(box, "lockerd") in ("not known", f"unknown ok not-installed"), \
        _status(box, "lockerd")
    for f in ("/etc/lockerd", STATE):
        assert not box.exists(f), f"{f} left after dpkg -P"
    assert _uid(box, "lockerd")[0] == "lockerd", "the system user is kept"
    box.stop()
    assert _host_state() == host0, "the host changed"


# ---------------------------------------------------------------------------
# Upgrade


def _git(*args):
    return subprocess.run(["git", "-C", ROOT] + list(args), capture_output=True, text=True)


def _schema_steps(tree):
    return sorted(f for f in os.listdir(os.path.join(tree, "schema"))
                  if re.match(r"^\d+_.*\.sql$", f))


def _old_tree():
    """The tree before this one's newest schema step: the parent of the
    commit that added it, as git has it. Returns (dir, commit) or a
    reason to skip."""
    newest = _schema_steps(ROOT)[-1]
    r = _git("log", "-1", "--format=%H", "--diff-filter=A", "--", f"schema/{newest}")
    if r.returncode != 0 or not r.stdout.strip():
        return None, f"git has no history of schema/{newest} (a shallow clone?)"
    commit = _git("rev-parse", "--short=10", r.stdout.strip() + "~1").stdout.strip()
    if not commit:
        return None, f"no parent of {r.stdout.strip()}"
    d = os.path.join(harness.tmpdir(), f"old-{commit}")
    os.makedirs(d)
    a = subprocess.Popen(["git", "-C", ROOT, "archive", commit], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", d], stdin=a.stdout, check=True)
    assert a.wait() == 0
    _package_old_tree(d, commit)
    return d, commit


def _package_old_tree(d, commit):
    """A tree from before the packaging gets today's: debian/ (with a
    changelog entry of a lower version), and, where it lacks them, the
    files debian/rules installs (dist/, man/, sim/lockerctl, the
    Makefile's install block). A lockerd from before sd_notify gets Type=simple. Its code is
    built as it was."""
    subprocess.run(["git", "init", "-q", d], check=True)  # deb.sh lists files with git
    if not os.path.isdir(os.path.join(d, "debian")):
        shutil.copytree(os.path.join(ROOT, "debian"), os.path.join(d, "debian"), symlinks=True)
        if not os.path.exists(os.path.join(d, "tools", "deb.sh")):
            shutil.copy(os.path.join(ROOT, "tools", "deb.sh"), os.path.join(d, "tools"))
        for sub in ("dist", "man"):
            if not os.path.isdir(os.path.join(d, sub)):
                shutil.copytree(os.path.join(ROOT, sub), os.path.join(d, sub))
        if not os.path.exists(os.path.join(d, "sim", "lockerctl")):
            shutil.copy(os.path.join(ROOT, "sim", "lockerctl"), os.path.join(d, "sim"))
        mk = open(os.path.join(d, "Makefile")).read()
        if not re.search(r"^install:", mk, re.M):
            now = open(os.path.join(ROOT, "Makefile")).read()
            block = now[now.index("MAN1 :="):now.index("uninstall:")]
            head = "\n".join(l for l in now.splitlines()
                             if re.match(r"^(PREFIX|BINDIR|SBINDIR|DATADIR|MANDIR|SYSCONFDIR|"
                                         r"UNITDIR|SYSUSERSDIR|DESTDIR|INSTALL) *\?=", l))
            extra = "" if re.search(r"^unit:", mk, re.M) else "\nunit:\n\t@true\n"
            extra += "" if re.search(r"^FORCE:", mk, re.M) else "\nFORCE:\n"
            mk = mk.replace("-include $(shell find", "\n" + head + "\n" + block + extra +
                            "\n-include $(shell find", 1)
            mk = mk.replace("PROFILEDIR := $(DATADIR)/lockerd/boards", "")
            mk = re.sub(r"^(DATADIR\s*\?=.*)$", r"\1\nPROFILEDIR := $(DATADIR)/lockerd/boards",
                        mk, count=1, flags=re.M)
            with open(os.path.join(d, "Makefile"), "w") as f:
                f.write(mk)
        src = subprocess.run(["grep", "-rl", "sd_notify", os.path.join(d, "controller")],
                             capture_output=True, text=True).stdout
        if not src:
            unit = os.path.join(d, "dist", "lockerd.service.in")
            text = open(unit).read()
            text = re.sub(r"^(Type=notify|NotifyAccess=.*|WatchdogSec=.*)$\n", "", text, flags=re.M)
            with open(unit, "w") as f:
                f.write(text.replace("[Service]\n", "[Service]\nType=simple\n", 1))
    now = open(os.path.join(ROOT, "debian", "changelog")).read()
    version = now.split("(", 1)[1].split(")", 1)[0]
    entry = (f"lockerd ({version}~git.{commit}) bookworm; urgency=medium\n\n"
             f"  * The tree of commit {commit}, for the upgrade test.\n\n"
             f" -- lockerd maintainers <maintainers@users.noreply.h-seed-2ba820f9.example>  "
             f"Thu, 03 Dec 2026 12:00:00 +0000\n\n")
    with open(os.path.join(d, "debian", "changelog"), "w") as f:
        f.write(entry + now)


def _db_facts(box):
    """What the database holds, read inside the box (sqlite3 resolves
    /proc/PID/root, which would lead it to the host's /var/lib)."""
    def q(sql):
        return box.run(["sqlite3", "-readonly", DB, sql]).stdout.split()
    return {
        "user_version": int(q("PRAGMA user_version")[0]),
        "events": int(q("SELECT count(*) FROM events")[0]),
        "undelivered": [int(x) for x in q("SELECT seq FROM events WHERE delivered = 0 "
                                          "ORDER BY seq")],
        "reservations": int(q("SELECT count(*) FROM reservations")[0]),
    }


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_package_upgrade_keeps_everything():
    why = _skip()
    if why:
        print(f"  SKIP: {why}")
        return
    old_dir, commit = _old_tree()
    if old_dir is None:
        print(f"  SKIP: {commit}")
        return
    old_out = os.path.join(harness.tmpdir(), "old-debs")
    os.makedirs(old_out)
    old, old_version = _deb_build(old_dir, old_out)
    new, version = _this_tree_debs()
    r = subprocess.run(["dpkg", "--compare-versions", old_version, "lt", version])
    assert r.returncode == 0, f"{old_version} is not older than {version}"
    old_steps, new_steps = _schema_steps(old_dir), _schema_steps(ROOT)
    old_schema, new_schema = (int(s.split("_")[0]) for s in (old_steps[-1], new_steps[-1]))
    added = [s for s in new_steps if s not in old_steps]
    print(f"  old: {old_version} (commit {commit}, schema {old_schema}); "
          f"new: {version} (schema {new_schema}, adds {', '.join(added)})")
    share, paths = _share({"old": old, "new": new})
    sim = Locksim()
    broker = Mosquitto()
    plat = Platform(broker)
    box = sysbox.Box(share)
    box.run(["dpkg", "-i", paths[("old", "lockerd")], paths[("old", "lockerd-tools")]])
    assert _status(box, "lockerd") == f"install ok installed {old_version}"
    with open(box.path(CONF), "w") as f:
        f.write(_config(sim, broker))
    box.run(["systemctl", "enable", "--now", "lockerd"])
    svc = Service(box)
    svc.connect()
    harness.wait_for(lambda: plat.on("status"), 10, what="the old lockerd's birth")

    # The workload on the old lockerd: a drop-off done, a code live, a
    # reservation cancelled, all delivered; then, with the broker down, a
    # code issued and a second drop-off done: events nobody has yet.
    done = _dropoff(svc, box, sim, "UPG-1")
    live = svc.ctl_ok({"op": "reserve", "app": "UPG-2", "size": "S"})
    gone = svc.ctl_ok({"op": "reserve", "app": "UPG-3", "size": "M"})
    svc.ctl_ok({"op": "cancel", "resv": gone["resv"]})
    last = svc.events()[-1]["seq"]
    plat.wait_events(last, timeout=10)
    broker.stop()
    live2 = svc.ctl_ok({"op": "reserve", "app": "UPG-4", "size": "S"})
    done2 = _dropoff(svc, box, sim, "UPG-5")
    before = svc.events()
    facts0 = _db_facts(box)
    cols = ", ".join(box.run(["sqlite3", "-readonly", DB, "SELECT name FROM "
                              "pragma_table_info('reservations')"]).stdout.split())
    rows0 = box.run(["sqlite3", "-readonly", "-quote", DB,
                     f"SELECT {cols} FROM reservations ORDER BY id"]).stdout
    assert len(rows0.splitlines()) == 5, rows0
    resv0 = {r["resv"]: svc.ctl_ok({"op": "resv", "resv": r["resv"]}) for r in (live, live2)}
    assert facts0["user_version"] == old_schema, facts0
    assert facts0["undelivered"] and facts0["undelivered"][0] > last, facts0
    print(f"  before: {facts0['events']} events ({len(facts0['undelivered'])} unsent), "
          f"{facts0['reservations']} reservations, schema {facts0['user_version']}")
    pid0 = svc.main_pid()
    svc.close()

    # The upgrade: the new package over the running old service.
    r = box.run(["dpkg", "-i", paths[("new", "lockerd")], paths[("new", "lockerd-tools")]],
                check=False)
    assert r.returncode == 0, f"upgrade: {r.stdout}{r.stderr}"
    assert _status(box, "lockerd") == f"install ok installed {version}"
    try:
        harness.wait_for(lambda: svc.active() == "active" and svc.main_pid() not in (0, pid0),
                         30, what="lockerd restarted by the upgrade")
    except harness.HarnessError as e:
        st = box.run(["systemctl", "status", "--no-pager", "lockerd"], check=False).stdout
        raise harness.HarnessError(f"{e}\ndpkg -i said:\n{r.stdout}{r.stderr}\n{st}\n"
                                   f"{box.journal()[-3000:]}")
    svc.connect()
    ver = box.run(["lockerd", "--version"]).stdout
    assert version in ver, ver
    journal = box.journal()
    for step in added:
        assert f"applied {step}" in journal, f"no 'applied {step}' in the journal:\n" \
                                             f"{journal[-3000:]}"
    facts1 = _db_facts(box)
    print(f"  after: {facts1['events']} events ({len(facts1['undelivered'])} unsent), "
          f"{facts1['reservations']} reservations, schema {facts1['user_version']}")
    assert facts1["user_version"] == new_schema, facts1
    assert facts1["reservations"] == facts0["reservations"], (facts0, facts1)
    after = svc.events()
    assert after[:len(before)] == before, "the ledger changed across the upgrade"
    assert set(facts0["undelivered"]) <= set(facts1["undelivered"]), \
        f"unsent events lost: {set(facts0['undelivered']) - set(facts1['undelivered'])}"
    rows1 = box.run(["sqlite3", "-readonly", "-quote", DB,
                     f"SELECT {cols} FROM reservations ORDER BY id"]).stdout
    assert rows1 == rows0, f"reservation rows changed:\n{rows0}\n->\n{rows1}"
    for rid, rep in resv0.items():
        now = svc.ctl_ok({"op": "resv", "resv": rid})
        keys = ("resv", "kind", "state", "cell", "app", "valid_until", "cancelled")
        assert all(now.get(k) == rep.get(k) for k in keys), f"reservation {rid}: {rep} -> {now}"
    # The codes: the live ones still open their cells, the used one not.
    for r in (live, live2):
        n0 = sim.last_write_n()
        k = box.run(["kiosk", "code", r["code"]], check=False)
        assert k.returncode == 0, f"a live code after the upgrade: {k.stdout}{k.stderr}"
        sim.wait_write(harness.unlock_write_pred(r["cell"]), after=n0, timeout=10,
                       what=f"cell {r['cell']} opened by its code after the upgrade")
        harness.close_door(sim, r["cell"])
    k = box.run(["kiosk", "code", done["code"]], check=False)
    assert k.returncode != 0 and "used" in (k.stdout + k.stderr), k.stdout + k.stderr
    # The outbox: with the broker back, every event reaches the platform,
    # the ones from before the upgrade first and in order.
    broker.start()
    final = svc.events()[-1]["seq"]
    got = plat.wait_events(final, timeout=20)
    seqs = [e["seq"] for e in got]
    assert sorted(set(seqs)) == list(range(1, final + 1)), f"gaps: {seqs}"
    by_seq = {e["seq"]: e for e in got}
    for e in before:
        sent = {k: v for k, v in by_seq[e["seq"]].items() if k != "code"}
        assert sent.get("sig") == e.get("sig") and sent.get("type") == e.get("type"), (e, sent)
    print(f"  outbox: {len(facts0['undelivered'])} events kept across the upgrade, "
          f"delivered after it with {final - facts0['events']} new ones")

    # The downgrade: refused while lockerd runs, and refused on the schema
    # once it is stopped; the newer package and the database stay.
    r = box.run(["dpkg", "-i", paths[("old", "lockerd")]], check=False)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "write-ahead log" in out and \
        "systemctl stop lockerd" in out, out
    assert _status(box, "lockerd") == f"install ok installed {version}", _status(box, "lockerd")
    assert svc.active() == "active", "a refused downgrade stopped lockerd"
    svc.close()
    box.run(["systemctl", "stop", "lockerd"])
    sha = _sha(box.path(DB))
    r = box.run(["dpkg", "-i", paths[("old", "lockerd")]], check=False)
    out = r.stdout + r.stderr
    print("  downgrade: " + " / ".join(l for l in out.splitlines() if l.startswith("lockerd:")))
    want = f"has schema\nlockerd: version {new_schema}, and this lockerd knows only up to " \
           f"{old_schema}"
    assert r.returncode != 0 and want in out, out
    assert _status(box, "lockerd") == f"install ok installed {version}", _status(box, "lockerd")
    assert box.exists("/usr/sbin/lockerd") and version in box.run(["lockerd", "--version"]).stdout
    assert _sha(box.path(DB)) == sha, "the refused downgrade touched the database"
    # Forced past dpkg, the old lockerd itself refuses the database.
    x = os.path.join(harness.tmpdir(), "old-root")
    subprocess.run(["dpkg-deb", "-x", old["lockerd"], x], check=True)
    copy = os.path.join(harness.tmpdir(), "copy.db")
    shutil.copy(box.path(DB), copy)
    oldconf = os.path.join(harness.tmpdir(), "old.conf")
    with open(oldconf, "w") as f:
        f.write(_config(sim, broker).replace(f"state_dir = {STATE}",
                                             f"state_dir = {harness.tmpdir()}/oldstate")
                + f"\n")
    os.makedirs(os.path.join(harness.tmpdir(), "oldstate"), mode=0o700)
    shutil.copy(copy, os.path.join(harness.tmpdir(), "oldstate", "lockerd.db"))
    shutil.copy(box.path(f"{STATE}/device.key"), os.path.join(harness.tmpdir(), "oldstate"))
    r = subprocess.run([os.path.join(x, "usr/sbin/lockerd"), "-c", oldconf, "--verify-ledger"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and f"schema version {new_schema}, newer than the {old_schema}" \
        in r.stderr, r.stderr
    box.run(["systemctl", "start", "lockerd"])
    assert svc.active() == "active"
    box.stop()


test_package_upgrade_keeps_everything.timeout = 600
test_package_install_run_remove_purge.timeout = 400
