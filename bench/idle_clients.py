#!/usr/bin/env python3
"""Opens N logged-in, idle client connections to a PostgreSQL endpoint and
reports the resident memory a process gained while holding them.

    bench/idle_clients.py --port P --user U --password W --db D --pid PID [-n 10000]

Each client logs in with SCRAM-SHA-256 (or md5 / cleartext if asked), runs
`SELECT 1` once, and then stays idle. When all are up, the process PID's
VmRSS is read; the clients then close. Prints one line:
`clients=N rss_before_kb=A rss_after_kb=B per_client_bytes=C`.
Standard library only; every socket goes to 127.0.0.1.
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import os
import struct
import sys
import time

SALTED = {}


def msg(tag, body):
    return tag + struct.pack("!I", len(body) + 4) + body


async def read_msg(reader):
    head = await reader.readexactly(5)
    tag, length = head[:1], struct.unpack("!I", head[1:])[0]
    body = await reader.readexactly(length - 4)
    return tag, body


def scram_final(password, client_first_bare, server_first, nonce):
    parts = dict(p.split("=", 1) for p in server_first.split(","))
    salt, iters = base64.b64decode(parts["s"]), int(parts["i"])
    key = (salt, iters)
    if key not in SALTED:
        SALTED[key] = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iters)
    salted = SALTED[key]
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    without_proof = "c=biws,r=" + parts["r"]
    auth_message = ",".join([client_first_bare, server_first, without_proof])
    signature = hmac.new(stored_key, auth_message.encode(), hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    return without_proof + ",p=" + base64.b64encode(proof).decode()


async def login(port, user, password, db):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    params = b"user\0" + user.encode() + b"\0database\0" + db.encode() + b"\0\0"
    body = struct.pack("!I", 196608) + params
    writer.write(struct.pack("!I", len(body) + 4) + body)
    nonce = base64.b64encode(os.urandom(18)).decode()
    client_first_bare = "n=,r=" + nonce
    while True:
        tag, body = await read_msg(reader)
        if tag == b"E":
            raise RuntimeError(body.decode(errors="replace"))
        if tag == b"R":
            code = struct.unpack("!I", body[:4])[0]
            if code == 10:
                first = ("n,," + client_first_bare).encode()
                payload = b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first
                writer.write(msg(b"p", payload))
            elif code == 11:
                final = scram_final(password, client_first_bare, body[4:].decode(), nonce)
                writer.write(msg(b"p", final.encode()))
            elif code == 5:
                salt = body[4:8]
                inner = hashlib.md5((password + user).encode()).hexdigest()
                outer = hashlib.md5(inner.encode() + salt).hexdigest()
                writer.write(msg(b"p", b"md5" + outer.encode() + b"\0"))
            elif code == 3:
                writer.write(msg(b"p", password.encode() + b"\0"))
        elif tag == b"Z":
            break
    writer.write(msg(b"Q", b"SELECT 1\0"))
    while True:
        tag, body = await read_msg(reader)
        if tag == b"E":
            raise RuntimeError(body.decode(errors="replace"))
        if tag == b"Z":
            return reader, writer


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("--parallel", type=int, default=100)
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args()

    before = rss_kb(args.pid)
    gate = asyncio.Semaphore(args.parallel)
    conns = []
    started = time.monotonic()

    async def one():
        async with gate:
            conns.append(await login(args.port, args.user, args.password, args.db))
            if len(conns) % 1000 == 0:
                print(f"{len(conns)} clients logged in", file=sys.stderr)

    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(args.n))), args.timeout)
    await asyncio.sleep(2)
    after = rss_kb(args.pid)
    elapsed = time.monotonic() - started
    print(
        f"clients={len(conns)} rss_before_kb={before} rss_after_kb={after} "
        f"per_client_bytes={(after - before) * 1024 // max(len(conns), 1)} login_seconds={elapsed:.1f}"
    )
    for _, w in conns:
        w.write(msg(b"X", b""))
        w.close()


if __name__ == "__main__":
    asyncio.run(main())
