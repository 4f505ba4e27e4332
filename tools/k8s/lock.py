#!/usr/bin/env python3
"""The one-cluster-per-machine lock of tools/k8s/cluster.sh.

    lock.py NAME WAIT_SECONDS OWNER
    lock.py --owner NAME          prints the holder's OWNER ("?" when none answers)

Binds the abstract unix socket NAME (one per network namespace, which is where the
cluster's bridge, iptables chains and pod namespaces live, and released by the kernel
when this process dies, however it dies). While another process holds it, prints
"waiting OWNER-OF-THE-OTHER" once and tries again twice a second for WAIT_SECONDS; then
prints "held" and stays, answering each connection with OWNER (the cluster's directory),
until it is killed. Exit status 1 and "timeout" when the wait runs out.
"""
import socket
import sys
import time


def owner_of(name):
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.settimeout(2)
            c.connect("\0" + name)
            return c.recv(4096).decode(errors="replace").strip() or "?"
    except OSError:
        return "?"


def main():
    if sys.argv[1] == "--owner":
        print(owner_of(sys.argv[2]))
        return 0
    name, wait, owner = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    end = time.monotonic() + wait
    said = False
    while True:
        try:
            s.bind("\0" + name)
            break
        except OSError:
            if not said:
                print("waiting", owner_of(name), flush=True)
                said = True
            if time.monotonic() >= end:
                print("timeout", flush=True)
                return 1
            time.sleep(0.5)
    s.listen(8)
    print("held", flush=True)
    sys.stdout.close()
    while True:
        c, _ = s.accept()
        try:
            c.sendall(owner.encode() + b"\n")
        except OSError:
            pass
        c.close()


if __name__ == "__main__":
    sys.exit(main())
