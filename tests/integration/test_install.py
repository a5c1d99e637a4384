"""make install into a DESTDIR with PREFIX=/usr: the tree, the modes, the
configuration it installs, the man pages, and `systemd-analyze verify`
on the installed unit in a root that holds what the unit names."""

import os
import re
import shutil
import stat
import subprocess

import harness

ROOT = harness.ROOT


def _make(build, dest, *targets):
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
    # Its own build folder: a different PREFIX must not touch the tests' build.
    r = subprocess.run(["make", "-s", "-j2", "-C", ROOT, f"BUILD={build}", "PREFIX=/usr",
                        f"DESTDIR={dest}"] + list(targets),
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, f"make {' '.join(targets)} failed:\n{r.stdout}\n{r.stderr}"
    return r


def _mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


EXPECT = {
    "usr/sbin/lockerd": 0o755,
    "usr/bin/locksim": 0o755,
    "usr/bin/kiosk": 0o755,
    "usr/bin/lockerctl": 0o755,
    "usr/share/lockerd/boards/generic-16.ini": 0o644,
    "usr/share/lockerd/boards/generic-24.ini": 0o644,
    "usr/share/lockerd/boards/waveshare-relay-d.ini": 0o644,
    "usr/share/man/man8/lockerd.8": 0o644,
    "usr/share/man/man5/lockerd.conf.5": 0o644,
    "usr/share/man/man1/lockerctl.1": 0o644,
    "usr/share/man/man1/locksim.1": 0o644,
    "usr/share/man/man1/kiosk.1": 0o644,
    "usr/lib/systemd/system/lockerd.service": 0o644,
    "usr/lib/sysusers.d/lockerd.conf": 0o644,
    "etc/lockerd/lockerd.conf": 0o644,
}


def _keys(text):
    """{(section, key)} of an INI text, counting '#key = value' settings."""
    out, sec = set(), None
    for line in text.splitlines():
        line = line.strip()
        m = re.match(r"^#?\[([^\]]+)\]$", line)
        if m:
            sec = m.group(1)
            if sec.startswith("bus ") or sec.startswith("board "):
                sec = sec.split()[0]
            continue
        m = re.match(r"^#?([a-z0-9_-]+)\s*=", line)
        if m and sec is not None and sec != "cells":
            out.add((sec, m.group(1)))
    return out


def test_install_destdir():
    d = harness.tmpdir()
    build, dest = os.path.join(d, "build"), os.path.join(d, "root")
    _make(build, dest, "install")
    found = {os.path.relpath(os.path.join(dp, f), dest)
             for dp, _, files in os.walk(dest) for f in files}
    assert found == set(EXPECT), f"installed tree differs: extra {found - set(EXPECT)}, " \
                                 f"missing {set(EXPECT) - found}"
    for rel, mode in EXPECT.items():
        assert _mode(os.path.join(dest, rel)) == mode, f"{rel}: {oct(_mode(os.path.join(dest, rel)))}"
        st = os.stat(os.path.join(dest, rel))
        assert st.st_uid == os.getuid(), f"{rel} owned by {st.st_uid}"
    for dp, dirs, _ in os.walk(dest):
        for x in dirs:
            assert _mode(os.path.join(dp, x)) == 0o755, os.path.join(dp, x)

    lockerd = os.path.join(dest, "usr/sbin/lockerd")
    r = subprocess.run([lockerd, "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("lockerd "), r

    unit = open(os.path.join(dest, "usr/lib/systemd/system/lockerd.service")).read()
    for line in ("Type=notify", "ExecStart=/usr/sbin/lockerd -c /etc/lockerd/lockerd.conf",
                 "User=lockerd", "Group=lockerd", "SupplementaryGroups=dialout",
                 "StateDirectory=lockerd", "StateDirectoryMode=0700",
                 "RuntimeDirectory=lockerd", "ConfigurationDirectory=lockerd",
                 "ProtectSystem=strict", "ProtectHome=yes", "NoNewPrivileges=yes",
                 "PrivateTmp=yes", "PrivateDevices=no", "DevicePolicy=closed",
                 "DeviceAllow=/dev/ttyUSB0 rw", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6"):
        assert f"\n{line}\n" in unit, f"unit lacks {line!r}"
    assert re.search(r"\nWatchdogSec=\d+s\n", unit), unit
    users = open(os.path.join(dest, "usr/lib/sysusers.d/lockerd.conf")).read()
    assert re.search(r"^u lockerd - ", users, re.M), users
    # The installed sysusers file makes the user, in a root of its own.
    su = shutil.which("systemd-sysusers")
    if su:
        sr = os.path.join(d, "sysroot")
        os.makedirs(os.path.join(sr, "etc"))
        os.makedirs(os.path.join(sr, "usr/lib/sysusers.d"))
        shutil.copy(os.path.join(dest, "usr/lib/sysusers.d/lockerd.conf"),
                    os.path.join(sr, "usr/lib/sysusers.d/lockerd.conf"))
        r = subprocess.run([su, f"--root={sr}"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        pw = open(os.path.join(sr, "etc/passwd")).read()
        assert re.search(r"^lockerd:x:\d+:\d+:[^:]*:/var/lib/lockerd:\S*nologin$", pw, re.M), pw
        assert re.search(r"^lockerd:x:\d+:", open(os.path.join(sr, "etc/group")).read(), re.M)

    # The configuration: every key of the built-in default is there with
    # its default, commented out; the installed file sets the state and
    # socket paths the unit provides, and with its examples uncommented it
    # checks.
    conf_path = os.path.join(dest, "etc/lockerd/lockerd.conf")
    conf = open(conf_path).read()
    builtin = open(os.path.join(ROOT, "controller/lockerd.conf")).read()
    missing = _keys(builtin) - _keys(conf)
    assert not missing, f"keys of the built-in default not in the installed file: {missing}"
    assert re.search(r"^state_dir = /var/lib/lockerd$", conf, re.M)
    assert re.search(r"^socket = /run/lockerd/kiosk.sock$", conf, re.M)
    r = subprocess.run([lockerd, "--check-config", conf_path], capture_output=True, text=True)
    assert r.returncode == 1 and "no [cells] defined" in r.stderr, r
    un = os.path.join(d, "uncommented.conf")
    with open(un, "w") as f:
        f.write(re.sub(r"^#(\[|[a-z0-9_-]+ = )", r"\1", conf, flags=re.M))
    r = subprocess.run([lockerd, "--check-config", un], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # Profiles not built in are looked for where they were installed.
    bad = os.path.join(d, "badprofile.conf")
    with open(bad, "w") as f:
        f.write(open(un).read().replace("profile = generic-16", "profile = custom-8"))
    r = subprocess.run([lockerd, "--check-config", bad], capture_output=True, text=True)
    assert "/usr/share/lockerd/boards/custom-8.ini" in r.stderr, r.stderr

    # Man pages render without warnings.
    if shutil.which("groff"):
        for rel in EXPECT:
            if "/man/" in rel:
                r = subprocess.run(["groff", "-mandoc", "-ww", "-z", os.path.join(dest, rel)],
                                   capture_output=True, text=True)
                assert r.returncode == 0 and not r.stderr.strip(), f"{rel}: {r.stderr}"

    # systemd-analyze verify on the installed unit, with --root so that the
    # binary it names is the installed one. The root gets what the unit
    # refers to besides lockerd: the system's own units (sysinit.target,
    # network-online.target, ...) and /bin/kill for ExecReload; MANPATH
    # lets Documentation= find the installed pages.
    sa = shutil.which("systemd-analyze")
    if sa is None:
        print("  SKIP systemd-analyze verify: no systemd-analyze")
    else:
        sysunits = "/usr/lib/systemd/system"
        shutil.copytree(sysunits, os.path.join(dest, sysunits.lstrip("/")), symlinks=True,
                        dirs_exist_ok=True,
                        ignore=lambda p, names: [n for n in names if n == "lockerd.service"])
        os.makedirs(os.path.join(dest, "usr/bin"), exist_ok=True)
        shutil.copy2(shutil.which("kill") or "/usr/bin/kill", os.path.join(dest, "usr/bin/kill"))
        if not os.path.lexists(os.path.join(dest, "bin")):
            os.symlink("usr/bin", os.path.join(dest, "bin"))
        env = dict(os.environ, MANPATH=os.path.join(dest, "usr/share/man"))
        r = subprocess.run([sa, "verify", f"--root={dest}", "lockerd.service"],
                           capture_output=True, text=True, env=env, timeout=60)
        print(f"  systemd-analyze verify: exit {r.returncode} {r.stdout}{r.stderr}".rstrip())
        assert r.returncode == 0 and not r.stderr.strip(), r.stdout + r.stderr
        # And it does fail when the binary is not there.
        os.rename(lockerd, lockerd + ".away")
        r = subprocess.run([sa, "verify", f"--root={dest}", "lockerd.service"],
                           capture_output=True, text=True, env=env, timeout=60)
        os.rename(lockerd + ".away", lockerd)
        assert r.returncode != 0 and "/usr/sbin/lockerd" in r.stderr, r.stdout + r.stderr
        # Back to the installed tree alone (the unit goes too: uninstall
        # below does not mind).
        shutil.rmtree(os.path.join(dest, sysunits.lstrip("/")))
        os.unlink(os.path.join(dest, "usr/bin/kill"))
        os.unlink(os.path.join(dest, "bin"))

    # A second install keeps an edited configuration; uninstall leaves
    # only the configuration.
    with open(conf_path, "a") as f:
        f.write("; edited by the installer\n")
    _make(build, dest, "install")
    assert open(conf_path).read().endswith("; edited by the installer\n")
    assert os.path.exists(conf_path + ".dist")
    _make(build, dest, "uninstall")
    left = {os.path.relpath(os.path.join(dp, f), dest)
            for dp, _, files in os.walk(dest) for f in files}
    assert left == {"etc/lockerd/lockerd.conf", "etc/lockerd/lockerd.conf.dist"}, left
