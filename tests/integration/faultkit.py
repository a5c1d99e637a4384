"""Helpers for test_faults.py: the flow world of test_flows.py with a
seeded locksim (optionally logging every request, -v, so that a test can
count the replies it spoiled), checks that a fault made no false door
event, and small file systems for lockerd's state folder.
"""

import os
import re
import subprocess

import harness
from harness import Lockerd, Locksim, Mosquitto, Platform, config, mqtt_extra, wait_for
from test_flows import PK_HEX, Flow

DOOR_TYPES = ("door_opened", "door_closed", "forced_open")


class FaultFlow(Flow):
    """Flow (test_flows.py) with a seeded locksim (its random faults),
    over TCP or RTU, and a state folder of the test's choosing; lockerd can
    be stopped and started again (start)."""

    def __init__(self, seed=1, rtu=False, cells=None, timing=None, state_dir=None, extra=None,
                 codes=None, start=True, name="", verbose=False):
        """name: a suffix for the files of a second world in one test;
        verbose: locksim logs every request (sim_log_count)."""
        self.broker = Mosquitto()
        self.plat = Platform(self.broker)
        self.sim = Locksim(rtu=rtu, name=f"sim{name}",
                           extra_args=(["-v"] if verbose else []) + ["--seed", str(seed)])
        ex = harness.custody_extra(codes)
        ex.update(mqtt_extra(self.broker, platform_key=PK_HEX))
        for sec, keys in (extra or {}).items():
            ex.setdefault(sec, {}).update(keys)
        cfg = config(self.sim, rtu=rtu, cells=cells, timing=timing, extra=ex)
        if name:
            d = harness.tmpdir()
            cfg["locker"]["state_dir"] = os.path.join(d, f"state-{name}")
            cfg["control"]["socket"] = os.path.join(d, f"ctl-{name}.sock")
        if state_dir:
            cfg["locker"]["state_dir"] = state_dir
        self.cfg = cfg
        self.clock = None
        self.n = 0
        self.kc = None
        self.lk = Lockerd(cfg, name=f"lockerd{name and '-' + name}", start=False)
        if start:
            self.start()

    def start(self, after=0):
        """Starts lockerd; waits for a started event with seq > after."""
        self.lk.start()
        self.lk.wait_event("started", after=after, timeout=5)
        wait_for(lambda: [b for b, _ in self.plat.on("status")
                          if isinstance(b, dict) and b.get("online")], 5, what="the birth")
        if self.kc is None:
            self.kc = harness.kiosk(self.lk)
        else:
            self.kc.reconnect()
        return self

    def shutdown(self):
        """Stops this world (lockerd must exit cleanly)."""
        self.kc.close()
        self.lk.stop()
        self.sim.stop()
        self.plat.cleanup()
        self.broker.stop()

    # -- what the fault must not have caused ---------------------------------

    def door_events(self, after=0, cells=None):
        """Door events (door_opened, door_closed, forced_open) in the ledger
        after seq `after`, for `cells` (all if None), as (seq, type, cell)."""
        return [(e["seq"], e["type"], e.get("cell")) for e in self.lk.events(after)
                if e["type"] in DOOR_TYPES and (cells is None or e.get("cell") in cells)]

    def no_false_doors(self, after, touched=(), what="the fault"):
        """No door event after seq `after` for a cell outside `touched`."""
        bad = [d for d in self.door_events(after) if d[2] not in touched]
        assert not bad, f"{what} made door events for cells nobody touched: {bad}"

    def coils_on(self):
        """(unit, channel) of every relay locksim has energised now."""
        return [(b["unit"], c["ch"]) for b in self.sim.state()["boards"]
                for c in b["channels"] if c.get("coil")]

    def doors_open(self):
        """(unit, channel) of every door that is physically open now."""
        return [(b["unit"], c["ch"]) for b in self.sim.state()["boards"]
                for c in b["channels"] if c.get("door_open")]

    def wait_coils_off(self, timeout=3, what=""):
        """Every relay off again (a pulse lasts 500 ms); a relay left on
        holds its lock open for anyone."""
        try:
            wait_for(lambda: not self.coils_on(), timeout, what="every relay off")
        except harness.HarnessError:
            raise AssertionError(f"{what}relays left energised (locks held open for anyone): "
                                 f"{self.coils_on()} (unit, channel)")

    def sim_log_count(self, pattern):
        """How many lines of locksim's -v log match pattern (a regex)."""
        rx = re.compile(pattern)
        with open(self.sim.stderr_path, errors="replace") as f:
            return sum(1 for line in f if rx.search(line))

    def log_since(self, offset):
        with open(self.lk.log_path, errors="replace") as f:
            f.seek(offset)
            return f.read()

    def log_size(self):
        return os.path.getsize(self.lk.log_path)


# ---------------------------------------------------------------------------
# Small file systems for the state folder


def need_root(what):
    if os.geteuid() != 0:
        raise AssertionError(f"{what} needs root (it mounts a file system for lockerd's "
                             f"state folder); run the tests as root, as CI does")


def _run(argv, what):
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise harness.HarnessError(f"{what}: {' '.join(argv)} exited {r.returncode}: "
                                   f"{r.stderr.strip() or r.stdout.strip()}")
    return r


class Tmpfs:
    """A small tmpfs mounted on DIR, unmounted at the end of the test
    (harness cleanup), whatever happened."""

    def __init__(self, path, size="2m"):
        need_root("a disk-full test")
        self.path = path
        os.makedirs(path, exist_ok=True)
        _run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", path],
             "mounting a tmpfs")
        self.mounted = True
        harness._register(self)

    def __repr__(self):
        return f"<Tmpfs {self.path}>"

    def fill(self, name="filler"):
        """Writes a file until the file system is full; returns its path
        and size."""
        p = os.path.join(self.path, name)
        n = 0
        chunk = b"\0" * 4096
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while True:
                try:
                    n += os.write(fd, chunk)
                except OSError:
                    break
        finally:
            os.close(fd)
        return p, n

    def cleanup(self):
        if self.mounted:
            subprocess.run(["umount", "-l", self.path], capture_output=True)
            self.mounted = False


class Ext4Loop:
    """A small ext4 on a loop device, mounted with errors=remount-ro, the
    way a state folder on a real disk is. trigger_error() makes the kernel
    turn it read-only under the running lockerd, as it does on a disk error.
    Unmounted and detached at the end of the test, whatever happened."""

    def __init__(self, path, size_mb=8):
        need_root("a read-only disk test")
        self.path = path
        self.image = path + ".img"
        os.makedirs(path, exist_ok=True)
        with open(self.image, "wb") as f:
            f.truncate(size_mb << 20)
        _run(["mkfs.ext4", "-q", "-F", "-m", "0", self.image], "making the file system")
        self.mounted = False
        harness._register(self)
        self.mount()
        # A state folder lockerd accepts (mkfs makes the root 0755).
        os.chmod(path, 0o700)

    def __repr__(self):
        return f"<Ext4Loop {self.path}>"

    def mount(self):
        _run(["mount", "-o", "loop,errors=remount-ro", self.image, self.path],
             "mounting the loop file system (needs /dev/loop*)")
        self.mounted = True
        src = _run(["findmnt", "-no", "SOURCE", self.path], "finding the loop device")
        self.device = os.path.basename(src.stdout.strip())

    def trigger_error(self):
        """The kernel's own test hook: an ext4 error, after which
        errors=remount-ro makes the file system read-only at once."""
        p = f"/sys/fs/ext4/{self.device}/trigger_fs_error"
        with open(p, "w") as f:
            f.write("lockerd fault test\n")

    def read_only(self):
        try:
            fd = os.open(os.path.join(self.path, ".probe"), os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError as e:
            return e.errno == 30
        os.close(fd)
        os.unlink(os.path.join(self.path, ".probe"))
        return False

    def umount(self):
        if self.mounted:
            _run(["umount", self.path], "unmounting the loop file system")
            self.mounted = False

    def fsck(self):
        r = subprocess.run(["e2fsck", "-f", "-y", self.image], capture_output=True, text=True)
        # 0: clean, 1: errors corrected.
        if r.returncode not in (0, 1):
            raise harness.HarnessError(f"e2fsck exited {r.returncode}: {r.stdout}{r.stderr}")
        return r

    def cleanup(self):
        if self.mounted:
            subprocess.run(["umount", "-l", self.path], capture_output=True)
            self.mounted = False
        try:
            os.unlink(self.image)
        except FileNotFoundError:
            pass
