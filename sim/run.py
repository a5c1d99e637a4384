#!/usr/bin/env python3
"""The main job: lockerd on its built-in default against locksim.

  make run                      (what the README's first command runs)
  python3 sim/run.py send SOCKET LINE
                                send one line to a UNIX socket (lockerd's
                                control socket, locksim's control socket)
                                and print the one-line reply

Starts locksim with two boards (unit 1 generic-16, unit 2
waveshare-relay-d: 24 cells of sizes S, M and L) in automatic-person mode
on 127.0.0.1:1502 (or a free port if 1502 is taken), then lockerd on its
built-in default configuration, with its state under build/run/. Ctrl-C
stops both and leaves nothing running.
"""

import os
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def send(path, line):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    s.sendall(line.encode() + b"\n")
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    s.close()
    return buf.decode().strip()


def port_free(port):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_file(path, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if os.path.exists(path):
            return True
        time.sleep(0.05)
    return False


def main():
    build = os.environ.get("BUILD", os.path.join(ROOT, "build"))
    if len(sys.argv) > 1 and sys.argv[1] == "--build":
        build = os.path.abspath(sys.argv[2])
    run = os.path.join(build, "run")
    os.makedirs(run, exist_ok=True)
    sim_sock = os.path.join(run, "locksim.sock")
    ctl_sock = os.path.join(run, "lockerd.sock")
    ready = os.path.join(run, "locksim.ready")
    if os.path.exists(ready):
        os.unlink(ready)
    port = 1502 if port_free(1502) else free_port()
    procs = []

    def stop(*_):
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        print("\nstopped lockerd and locksim.")
        sys.exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    procs.append(subprocess.Popen(
        [os.path.join(build, "locksim"), "--tcp", str(port),
         "--board", "1:generic-16", "--board", "2:waveshare-relay-d",
         "--auto", "--control", sim_sock, "--ready-file", ready]))
    if not wait_file(ready, 10):
        print("locksim did not start", file=sys.stderr)
        stop()
    args = [os.path.join(build, "lockerd"), "--set", f"control.socket={ctl_sock}"]
    if port != 1502:
        args += ["--set", f"bus sim.port={port}"]
    procs.append(subprocess.Popen(args, cwd=run))
    if not wait_file(ctl_sock, 10):
        print("lockerd did not start", file=sys.stderr)
        stop()
    me = os.path.relpath(__file__)
    print(f"""
lockerd is running on its built-in default (24 cells on two simulated
boards, locksim on 127.0.0.1:{port}, automatic person on), state in
{os.path.relpath(run)}/lockerd-state. In another terminal, try:

  python3 {me} send {os.path.relpath(ctl_sock)} '{{"op":"reserve","app":"A-1","size":"M"}}'
        (the platform's part: a drop-off cell and its code)
  {os.path.relpath(os.path.join(build, "kiosk"))} -s {os.path.relpath(os.path.join(run, "lockerd-state", "kiosk.sock"))} code CODE
        (the applicant at the keypad: the cell opens, the automatic person
         puts the documents in and closes it)
  python3 {me} send {os.path.relpath(ctl_sock)} '{{"op":"open","cell":3}}'
  python3 {me} send {os.path.relpath(ctl_sock)} '{{"op":"state"}}'
  python3 {me} send {os.path.relpath(ctl_sock)} '{{"op":"events","after":0}}'
  python3 {me} send {os.path.relpath(sim_sock)} 'force 1 5'      (a forced door)
  python3 {me} send {os.path.relpath(sim_sock)} 'offline 2 on'   (a dead board)

Ctrl-C stops everything.
""", flush=True)
    while True:
        for p in procs:
            if p.poll() is not None:
                print(f"{p.args[0]} exited with status {p.returncode}",
                      file=sys.stderr)
                stop()
        time.sleep(0.5)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "send":
        print(send(sys.argv[2], sys.argv[3]))
    else:
        main()
