# A WebSocket workload on Python's `websockets` (sync client): the same
# contract as ws-client.mjs. Connects to wss://HOST/PATH at address IP
# (trusting CA_FILE), sends each message of the plan and reads its echo
# before the next, closes, and prints one JSON line: {status, messages:
# [{binary, length, sha256}]} or {status, error} when the server did not
# switch protocols. Plan items: text:N, bin:N.
# With WS_AUTHORIZATION set, the upgrade request carries that Authorization.
# CA_FILE "-": plain ws:// to IP:PORT, HOST then being HOST:PORT (the kernel
# datapath).
# usage: ws-client.py HOST IP CA_FILE PATH PLAN...
import hashlib
import json
import os
import socket
import ssl
import sys

from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

host, ip, cafile, path, *plan = sys.argv[1:]


def payload(kind, n):
    if kind == "text":
        return "".join(chr(0x61 + i % 26) for i in range(n))
    return bytes((i * 31 + 7) & 0xFF for i in range(n))


plain = cafile == "-"
port = int(host.rsplit(":", 1)[1]) if plain else 443
sock = socket.create_connection((ip, port), timeout=10)
tls = {} if plain else {"ssl": ssl.create_default_context(cafile=cafile), "server_hostname": host}
try:
    ws = connect(f"{'ws' if plain else 'wss'}://{host}{path}", sock=sock, **tls, max_size=64 * 1024 * 1024, open_timeout=10,
                 additional_headers={"Authorization": os.environ["WS_AUTHORIZATION"]} if os.environ.get("WS_AUTHORIZATION") else None)
except InvalidStatus as e:
    print(json.dumps({"status": e.response.status_code, "error": e.response.headers.get("x-wirekey-error")}))
    sys.exit(0)
got = []
with ws:
    for item in plan:
        kind, n = item.split(":")
        ws.send(payload(kind, int(n)))
        data = ws.recv(timeout=10)
        raw = data.encode("latin-1") if isinstance(data, str) else data
        got.append({"binary": isinstance(data, bytes), "length": len(raw), "sha256": hashlib.sha256(raw).hexdigest()})
print(json.dumps({"status": 101, "messages": got}))
