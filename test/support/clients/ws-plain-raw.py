# A plaintext client for the kernel datapath's WebSocket tests, written
# byte by byte so the test knows exactly what the workload sent: an upgrade
# request (GET, Upgrade: websocket, no Authorization of its own); on 101, a
# masked text frame whose payload looks like an HTTP request, and its echo;
# on any other answer, a second HTTP request on the same connection, and
# its status. Prints one JSON line.
# usage: ws-plain-raw.py IP PORT PATH
import base64
import json
import os
import socket
import sys

ip, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sock = socket.create_connection((ip, port), timeout=10)
key = base64.b64encode(os.urandom(16)).decode()
sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
              f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
buf = b""


def read_until(marker):
    global buf
    while marker not in buf:
        d = sock.recv(65536)
        if not d:
            raise SystemExit(json.dumps({"error": "closed", "got": buf.decode("latin-1")}))
        buf += d
    i = buf.index(marker) + len(marker)
    out, buf = buf[:i], buf[i:]
    return out


def read_n(n):
    global buf
    while len(buf) < n:
        d = sock.recv(65536)
        if not d:
            raise SystemExit(json.dumps({"error": "closed"}))
        buf += d
    out, buf = buf[:n], buf[n:]
    return out


head = read_until(b"\r\n\r\n").decode("latin-1")
status = int(head.split(" ")[1])
if status == 101:
    payload = b"GET /inside HTTP/1.1\r\nAuthorization: Bearer nothing\r\n\r\n"
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
    hdr = read_n(2)
    echo = read_n(hdr[1] & 0x7F)
    print(json.dumps({"status": 101, "echo": echo.decode("latin-1")}))
else:
    length = int([l.split(":", 1)[1] for l in head.split("\r\n") if l.lower().startswith("content-length:")][0])
    read_n(length)
    sock.sendall(f"GET /second HTTP/1.1\r\nHost: {ip}:{port}\r\n\r\n".encode())
    second = read_until(b"\r\n\r\n").decode("latin-1")
    print(json.dumps({"status": status, "second": int(second.split(" ")[1])}))
sock.close()
