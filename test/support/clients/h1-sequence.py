# A Python workload for the HTTP/1.1 fast path's tests: sends a fixed
# sequence of requests with http.client, on one connection for as long as
# the server keeps it open (reopening when it closes one), and prints one
# JSON line per response: its status, selected headers, the body's length
# and SHA-256, and the client's local port (which connection carried it).
# usage: python3 h1-sequence.py HOST IP CA_FILE
import hashlib
import http.client
import json
import socket
import ssl
import sys

host, ip, cafile = sys.argv[1:4]
ctx = ssl.create_default_context(cafile=cafile)


class Conn(http.client.HTTPSConnection):
    """HTTPS to `ip` with SNI and certificate checks for `host`."""

    def connect(self):
        sock = socket.create_connection((ip, 443))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = ctx.wrap_socket(sock, server_hostname=host)


conn = Conn(host, 443, context=ctx)
upload = bytes(range(256)) * 400  # 100 KiB


def chunks():
    for i in range(0, len(upload), 30000):
        yield upload[i:i + 30000]


steps = [
    ("GET", "/fast/a", None, {}),
    ("POST", "/echo", upload, {}),
    ("HEAD", "/echo", None, {}),
    ("GET", "/bytes/300000", None, {}),
    ("GET", "/bytes/70000?close=eof", None, {}),
    ("GET", "/fast/b", None, {"Authorization": "Bearer the-workloads-own", "X-Forwarded-For": "203.0.113.9"}),
    ("POST", "/echo", chunks(), {"Transfer-Encoding": "chunked"}),
    ("GET", "/fast/c", None, {}),
    ("GET", "/fast/d", None, {"Connection": "close"}),
    ("GET", "/fast/e", None, {}),
]
for method, url, body, headers in steps:
    if conn.sock is None:
        conn.connect()
    port = conn.sock.getsockname()[1]
    conn.request(method, url, body=body, headers=headers, encode_chunked="Transfer-Encoding" in headers)
    resp = conn.getresponse()
    data = resp.read()
    out = {
        "request": f"{method} {url}",
        "status": resp.status,
        "length": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "port": port,
        "closed": resp.will_close,
    }
    for h in ("content-type", "x-body-sha256", "x-wirekey-error"):
        if resp.getheader(h) is not None:
            out[h] = resp.getheader(h)
    if url.startswith("/fast/"):
        out["body"] = {k: v for k, v in json.loads(data).items() if k != "n"}
    print(json.dumps(out), flush=True)
    if resp.will_close:
        conn.close()
