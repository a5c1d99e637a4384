#!/usr/bin/env python3
"""The main job: lockerd on its built-in default against locksim, with a
local MQTT broker playing the platform's side.

  make run                      (what the README's first command runs)
  python3 sim/run.py send SOCKET LINE
                                send one line to a UNIX socket (lockerd's
                                control socket, locksim's control socket)
                                and print the one-line reply

Starts, all on the loopback interface and with their files under
build/run/:
  * mosquitto on a free port (its own configuration, run as you);
  * locksim with two boards (unit 1 generic-16, unit 2 waveshare-relay-d:
    24 cells of sizes S, M and L) in automatic-person mode on 127.0.0.1:1502
    (or a free port if 1502 is taken);
  * lockerd on its built-in default configuration, pointed at that broker
    and trusting the platform key build/run/platform.key (made by
    `sim/lockerctl keygen` on the first run); its keys and database are
    created under build/run/lockerd-state on the first start.
Prints what to try next; Ctrl-C stops everything and leaves nothing
running. sim/demo.py uses the same Stack.
"""

import os
import pwd
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = "/usr/bin/python3"


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


def wait_until(pred, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


def listening(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class StackError(Exception):
    pass


class Stack:
    """mosquitto + locksim + lockerd, started in that order, stopped in
    the reverse order. Paths are relative to the working directory in
    what it prints, so the commands can be pasted."""

    def __init__(self, build, run_dir=None, auto=True, quiet=False):
        self.build = build
        self.run = run_dir or os.path.join(build, "run")
        os.makedirs(self.run, exist_ok=True)
        # The control socket lives here: lockerd refuses a socket folder
        # that others may read or write ([locker] check_modes).
        os.chmod(self.run, 0o700)
        self.auto = auto
        self.quiet = quiet
        self.procs = []
        self.sim_sock = os.path.join(self.run, "locksim.sock")
        self.ctl_sock = os.path.join(self.run, "lockerd.sock")
        self.state = os.path.join(self.run, "lockerd-state")
        self.kiosk_sock = os.path.join(self.state, "kiosk.sock")
        self.key = os.path.join(self.run, "platform.key")
        self.lockerctl = os.path.join(ROOT, "sim", "lockerctl")
        self.kiosk = os.path.join(build, "kiosk")
        self.mqtt_port = free_port()
        # 1502 is the built-in default's; tests ask for any free port.
        if os.environ.get("LOCKERD_FREE_PORTS"):
            self.sim_port = free_port()
        else:
            self.sim_port = 1502 if port_free(1502) else free_port()

    def _spawn(self, argv, log):
        out = open(os.path.join(self.run, log), "ab")
        p = subprocess.Popen(argv, cwd=self.run, stdout=out,
                             stderr=subprocess.STDOUT if self.quiet else None,
                             start_new_session=False)
        out.close()
        self.procs.append(p)
        return p

    def _mosquitto(self):
        d = os.path.join(self.run, "mosquitto")
        os.makedirs(d, exist_ok=True)
        conf = os.path.join(d, "mosquitto.conf")
        with open(conf, "w") as f:
            # Run as whoever runs this (as root mosquitto would drop to
            # user "mosquitto", who cannot write here).
            f.write(f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
                    f"listener {self.mqtt_port} 127.0.0.1\n"
                    "allow_anonymous true\n"
                    "set_tcp_nodelay true\n"
                    "persistence true\n"
                    f"persistence_location {d}/\n"
                    f"log_dest file {d}/mosquitto.log\n")
        p = self._spawn(["mosquitto", "-c", conf], "mosquitto.out")
        if not wait_until(lambda: listening(self.mqtt_port) or p.poll() is not None, 10) \
                or p.poll() is not None:
            raise StackError(f"mosquitto did not start; see {d}/mosquitto.log")

    def pubkey(self):
        if not os.path.exists(self.key):
            subprocess.run([PYTHON, self.lockerctl, "--key", self.key, "keygen"],
                           check=True, stdout=subprocess.DEVNULL)
        r = subprocess.run([PYTHON, self.lockerctl, "--key", self.key, "pubkey"],
                           check=True, capture_output=True, text=True)
        return r.stdout.strip()

    def start(self, on_broker=None):
        """on_broker(stack) runs once the broker is up, before lockerd
        publishes anything (a platform that must see every event)."""
        ready = os.path.join(self.run, "locksim.ready")
        if os.path.exists(ready):
            os.unlink(ready)
        self._mosquitto()
        if on_broker is not None:
            on_broker(self)
        argv = [os.path.join(self.build, "locksim"), "--tcp", str(self.sim_port),
                "--board", "1:generic-16", "--board", "2:waveshare-relay-d",
                "--control", self.sim_sock, "--ready-file", ready]
        if self.auto:
            argv.append("--auto")
        p = self._spawn(argv, "locksim.out")
        if not wait_until(lambda: os.path.exists(ready) or p.poll() is not None, 10) \
                or p.poll() is not None:
            raise StackError("locksim did not start")
        args = [os.path.join(self.build, "lockerd"),
                "--set", f"control.socket={self.ctl_sock}",
                "--set", "mqtt.host=127.0.0.1",
                "--set", f"mqtt.port={self.mqtt_port}",
                "--set", f"mqtt.platform_key={self.pubkey()}"]
        if self.sim_port != 1502:
            args += ["--set", f"bus sim.port={self.sim_port}"]
        p = self._spawn(args, "lockerd.out")
        if not wait_until(lambda: (os.path.exists(self.ctl_sock) and
                                   os.path.exists(self.kiosk_sock)) or p.poll() is not None, 10) \
                or p.poll() is not None:
            raise StackError("lockerd did not start; see "
                             f"{os.path.relpath(os.path.join(self.run, 'lockerd.out'))}")
        return self

    def locker_key(self):
        """The locker's public key (for verifying its event chain)."""
        r = subprocess.run([os.path.join(self.build, "lockerd"), "--public-key"],
                           cwd=self.run, check=True, capture_output=True, text=True)
        return r.stdout.strip()

    def ctl_argv(self):
        """How to call lockerctl against this stack."""
        return [PYTHON, self.lockerctl, "--port", str(self.mqtt_port), "--key", self.key]

    def kiosk_argv(self):
        return [self.kiosk, "-s", self.kiosk_sock]

    def dead(self):
        return [p for p in self.procs if p.poll() is not None]

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []


def rel(path):
    return os.path.relpath(path)


def main():
    build = os.environ.get("BUILD", os.path.join(ROOT, "build"))
    if len(sys.argv) > 2 and sys.argv[1] == "--build":
        build = os.path.abspath(sys.argv[2])
    stack = Stack(build, run_dir=os.environ.get("LOCKERD_RUN_DIR"))

    def stop(*_):
        stack.stop()
        print("\nstopped lockerd, locksim and mosquitto.")
        sys.exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        stack.start()
    except (StackError, subprocess.CalledProcessError) as e:
        print(f"run: {e}", file=sys.stderr)
        stack.stop()
        sys.exit(1)
    ctl = " ".join([rel(stack.lockerctl), "--port", str(stack.mqtt_port), "--key",
                    rel(stack.key)])
    kiosk = f"{rel(stack.kiosk)} -s {rel(stack.kiosk_sock)}"
    me = rel(__file__)
    print(f"""
lockerd is running on its built-in default: locker "demo-locker", 24 cells
on two simulated boards (locksim on 127.0.0.1:{stack.sim_port}, automatic
person on: it fills or empties a cell that springs open and closes it),
the platform link to mosquitto on 127.0.0.1:{stack.mqtt_port}, state in
{rel(stack.state)}. In another terminal, try:

  {ctl} watch
        (the platform's view: status, cells, the event stream)
  {ctl} reserve A-2026-0001 M
        (the platform reserves a drop-off cell; prints the SMS with the code)
  {kiosk} code CODE
        (the applicant at the keypad: the cell opens, the automatic person
         puts the documents in and closes the door: "deposited")
  {ctl} staff-add clerk1 --name "Hall clerk" --pin 135790
  {kiosk} login clerk1 135790
  {kiosk} retrieve
        (hall staff take the documents out)
  {ctl} load A-2026-0001 S --staff clerk1 --wait
        (the platform assigns a pickup; the certificate goes in; the pickup
         SMS follows)
  {ctl} state
  python3 {me} send {rel(stack.sim_sock)} 'force 1 5'      (a forced door)
  python3 {me} send {rel(stack.sim_sock)} 'offline 2 on'   (a dead board)

Or the whole day at once: make demo. Ctrl-C stops everything.
""", flush=True)
    while True:
        dead = stack.dead()
        if dead:
            for p in dead:
                print(f"{p.args[0]} exited with status {p.returncode}", file=sys.stderr)
            stack.stop()
            sys.exit(1)
        time.sleep(0.5)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "send":
        print(send(sys.argv[2], sys.argv[3]))
    else:
        main()
