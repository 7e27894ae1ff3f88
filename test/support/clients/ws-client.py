# A WebSocket workload on Python's `websockets` (asyncio client): the same
# contract as ws-client.mjs. Connects to wss://HOST/PATH at address IP
# (trusting CA_FILE), sends each message of the plan and reads its echo
# before the next, closes, and prints one JSON line: {status, messages:
# [{binary, length, sha256}]} or {status, error} when the server did not
# switch protocols. Plan items: text:N, bin:N.
# With WS_AUTHORIZATION set, the upgrade request carries that Authorization.
# CA_FILE "-": plain ws:// to IP:PORT, HOST then being HOST:PORT (the kernel
# datapath).
#
# The asyncio client, not websockets.sync: the sync client reads a TLS socket
# in one thread while another writes to it, and now and then its upgrade
# request is never written (python-websockets/websockets#1387).
# usage: ws-client.py HOST IP CA_FILE PATH PLAN...
import asyncio
import hashlib
import json
import os
import ssl
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

host, ip, cafile, path, *plan = sys.argv[1:]


def payload(kind, n):
    if kind == "text":
        return "".join(chr(0x61 + i % 26) for i in range(n))
    return bytes((i * 31 + 7) & 0xFF for i in range(n))


async def main():
    plain = cafile == "-"
    port = int(host.rsplit(":", 1)[1]) if plain else 443
    tls = {} if plain else {"ssl": ssl.create_default_context(cafile=cafile), "server_hostname": host}
    auth = os.environ.get("WS_AUTHORIZATION")
    try:
        ws = await connect(f"{'ws' if plain else 'wss'}://{host}{path}", host=ip, port=port, **tls,
                           max_size=64 * 1024 * 1024, open_timeout=10,
                           additional_headers={"Authorization": auth} if auth else None)
    except InvalidStatus as e:
        return {"status": e.response.status_code, "error": e.response.headers.get("x-wirekey-error")}
    got = []
    async with ws:
        for item in plan:
            kind, n = item.split(":")
            await ws.send(payload(kind, int(n)))
            data = await asyncio.wait_for(ws.recv(), 10)
            raw = data.encode("latin-1") if isinstance(data, str) else data
            got.append({"binary": isinstance(data, bytes), "length": len(raw), "sha256": hashlib.sha256(raw).hexdigest()})
    return {"status": 101, "messages": got}


print(json.dumps(asyncio.run(main())))
