"""This machine under a real systemd, for the package tests: an overlay
of this machine's own root (its files, its dpkg database, its users; the
writes go to a tmpfs that is thrown away), with systemd as PID 1 of its
own PID, mount, UTS and IPC namespaces. The network is the machine's, so
services inside reach a locksim and a broker the test runs on loopback.

CI has no running systemd (PID 1 is not systemd there), and installing
the packages on the host itself would leave a lockerd user and dpkg
records on a shared machine; here dpkg's maintainer scripts meet a
running systemd as on a locker's board, and nothing stays behind.
"""

import os
import shutil
import subprocess
import time

import harness

BOOT = r"""#!/bin/sh
# Runs as PID 1's parent in fresh namespaces (unshare); becomes systemd.
set -e
R=$1
SHARE=$2
mount -t tmpfs -o mode=0755 tmpfs "$R/upper"
mkdir "$R/upper/u" "$R/upper/w"
mount -t overlay overlay -o "lowerdir=/,upperdir=$R/upper/u,workdir=$R/upper/w" "$R/root"
mount -t proc proc "$R/root/proc"
mount --rbind /dev "$R/root/dev"
mount -t sysfs -o ro sysfs "$R/root/sys"
mount -t tmpfs -o mode=0755 tmpfs "$R/root/sys/fs/cgroup"
mkdir "$R/root/sys/fs/cgroup/unified" "$R/root/sys/fs/cgroup/systemd"
mount -t cgroup2 cgroup2 "$R/root/sys/fs/cgroup/unified"
mount -t cgroup -o none,name=systemd cgroup "$R/root/sys/fs/cgroup/systemd"
mount -t tmpfs -o mode=0755 tmpfs "$R/root/run"
mount -t tmpfs -o mode=1777 tmpfs "$R/root/tmp"
mkdir -p "$R/root/mnt/ci" "$R/root/run/systemd/system"
mount --bind "$SHARE" "$R/root/mnt/ci"
# A machine image built for containers may forbid maintainer scripts to
# start or stop services (policy-rc.d exit 101); a locker's board does not.
rm -f "$R/root/usr/sbin/policy-rc.d"
# What this machine would boot to, less the services it happens to have
# enabled (a broker, a database): sysinit, sockets, timers.
cat > "$R/root/run/systemd/system/ci.target" <<EOT
[Unit]
Description=package tests
Requires=basic.target
After=basic.target
EOT
exec chroot "$R/root" /usr/bin/env container=lockerd-ci \
	/lib/systemd/systemd --unit=ci.target --log-target=console --show-status=no
"""


def unavailable():
    """Why a systemd box cannot run here, or None."""
    if os.getuid() != 0:
        return "needs root (namespaces, overlayfs, dpkg)"
    for tool in ("unshare", "nsenter", "chroot", "dpkg", "dpkg-buildpackage"):
        if shutil.which(tool) is None:
            return f"no {tool}"
    if not os.path.exists("/lib/systemd/systemd"):
        return "no /lib/systemd/systemd (apt-get install systemd)"
    with open("/proc/filesystems") as f:
        if "overlay" not in f.read():
            return "the kernel has no overlayfs"
    return None


class Box:
    """One booted box. run() runs a command inside it (nsenter), path()
    names a file inside it as the host sees it (/proc/PID/root/...)."""

    def __init__(self, share):
        harness._register(self)
        self.dir = os.path.join(harness.tmpdir(), "box")
        for d in ("upper", "root"):
            os.makedirs(os.path.join(self.dir, d))
        self.share = share
        boot = os.path.join(self.dir, "boot.sh")
        with open(boot, "w") as f:
            f.write(BOOT)
        self.log_path = os.path.join(self.dir, "boot.log")
        harness._register_log("systemd box console", self.log_path)
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--pid", "--fork", "--uts", "--ipc", "--cgroup",
             "--propagation", "private", "sh", boot, self.dir, share],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.pid = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise harness.HarnessError(f"the box did not boot:\n{self._console()}")
            self.pid = self.pid or self._init_pid()
            if self.pid:
                r = self.run(["systemctl", "is-system-running"], check=False)
                state = r.stdout.strip()
                if state in ("running", "degraded"):
                    self.state = state
                    return
            time.sleep(0.2)
        raise harness.HarnessError(f"the box's systemd did not come up:\n{self._console()}")

    def _console(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()[-3000:]

    def _init_pid(self):
        """unshare's child: PID 1 inside, once it has become systemd."""
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                kids = f.read().split()
            for k in kids:
                if os.readlink(f"/proc/{k}/exe") == "/lib/systemd/systemd" or \
                        os.path.realpath(f"/proc/{k}/exe").endswith("/systemd"):
                    return int(k)
        except OSError:
            pass
        return None

    def run(self, argv, check=True, timeout=120, input=None):
        r = subprocess.run(["nsenter", "-t", str(self.pid), "-m", "-p", "-u", "-i", "-r",
                            "-w", "--"] + list(argv),
                           capture_output=True, text=True, timeout=timeout, input=input,
                           stdin=None if input is not None else subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise harness.HarnessError(f"in the box: {' '.join(argv)} -> exit {r.returncode}\n"
                                       f"{r.stdout}{r.stderr}")
        return r

    def path(self, p):
        return f"/proc/{self.pid}/root{p}"

    def exists(self, p):
        return os.path.lexists(self.path(p))

    def journal(self, unit="lockerd"):
        return self.run(["journalctl", "--no-pager", "-o", "cat", "-u", unit],
                        check=False).stdout

    def stop(self):
        if self.proc.poll() is None and self.pid:
            self.run(["systemctl", "poweroff"], check=False, timeout=30)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            # Our own unshare's session (start_new_session): the box alone.
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
        self.log.close()

    def cleanup(self):
        self.stop()
