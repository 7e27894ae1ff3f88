#!/usr/bin/env python3
"""Throws random requests (over TLS) or random ClientHello-ish bytes (over
TCP) at wirekey's proxy from a bound workload, one connection per case.

usage: fuzz-proxy.py MODE SEED COUNT HOST IP PORT CA_FILE
  requests  HTTP/1.1 requests with random methods, targets, header names
            and values, framing headers and bodies (some holding whole
            requests)
  hellos    random bytes, half of them behind a TLS handshake record header
prints one JSON line: {"cases": N, "received": latin1 of every byte any
case got back}
"""
import json
import random
import socket
import ssl
import sys

mode, seed, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
host, ip, port, ca = sys.argv[4], sys.argv[5], int(sys.argv[6]), sys.argv[7]
rng = random.Random(seed)
ctx = ssl.create_default_context(cafile=ca)

NAMES = [b'Accept', b'Content-Length', b'Transfer-Encoding', b'Transfer_Encoding', b'Connection', b'Host',
         b'Authorization', b'X-Api-Key', b'TE', b'Trailer', b'Upgrade', b'Expect', b'Forwarded',
         b'X-Forwarded-Host', b'X-Original-URL', b'X-HTTP-Method-Override', b'Content-Length ', b' Host']
VALUES = [b'chunked', b'gzip, chunked', b'content-length', b'host', b'close', b'keep-alive', b'0', b'5', b'-1',
          b'100-continue', b'TRACE', b'h2c', host.encode(), b'evil.example', b'Bearer stolen']
METHODS = [b'GET', b'POST', b'PUT', b'TRACE', b'TRACK', b'CONNECT', b'get', b'PATCH', b'DELETE', b'OPTIONS', b'FOO']


def rand_bytes(n):
    return bytes(rng.randrange(256) for _ in range(n))


def pick(xs):
    return xs[rng.randrange(len(xs))]


def request():
    method = pick(METHODS) if rng.random() < 0.9 else rand_bytes(rng.randrange(1, 8))
    target = pick([b'/', b'/echo', b'/stored', b'https://' + host.encode() + b'/echo', b'*', b'http://evil/'])
    if rng.random() < 0.3:
        target += rand_bytes(rng.randrange(1, 16))
    lines = [method + b' ' + target + b' HTTP/1.1']
    if rng.random() < 0.9:
        lines.append(b'Host: ' + host.encode())
    if rng.random() < 0.8:
        lines.append(b'Connection: close')
    body = b''
    for _ in range(rng.randrange(0, 6)):
        name = pick(NAMES) if rng.random() < 0.8 else rand_bytes(rng.randrange(1, 10))
        value = pick(VALUES) if rng.random() < 0.7 else rand_bytes(rng.randrange(0, 20))
        lines.append(name + b': ' + value)
    if rng.random() < 0.5:
        body = b'POST /echo HTTP/1.1\r\nHost: ' + host.encode() + b'\r\nContent-Length: 400\r\n\r\n'
        lines.append(b'Content-Length: ' + str(len(body)).encode())
    sep = pick([b'\r\n', b'\r\n', b'\r\n', b'\n', b'\r'])
    return sep.join(lines) + sep + sep + body


def hello():
    payload = rand_bytes(rng.randrange(0, 600))
    if rng.random() < 0.5:
        return b'\x16\x03\x01' + rng.randrange(0, 1 << 16).to_bytes(2, 'big') + b'\x01' + payload
    return payload


# A case ends when the proxy closes the connection, or after a second of
# silence (a request it is still waiting on the rest of).
received = b''
for _ in range(count):
    try:
        raw = socket.create_connection((ip, port), timeout=1)
        if mode == 'requests':
            s = ctx.wrap_socket(raw, server_hostname=host)
            s.sendall(request())
        else:
            s = raw
            s.sendall(hello())
            s.shutdown(socket.SHUT_WR)
        while True:
            data = s.recv(65536)
            if not data:
                break
            received += data
    except (OSError, ssl.SSLError):
        pass
    finally:
        try:
            raw.close()
        except Exception:
            pass
sys.stdout.write(json.dumps({'cases': count, 'received': received.decode('latin1')}) + '\n')
