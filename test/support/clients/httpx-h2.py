"""httpx with HTTP/2 as a workload: GETs each URL in turn on one client
(one connection per origin), then POSTs a body to the last one's /echo, and
prints one JSON line per response: status, the HTTP version, the body.

usage: python httpx-h2.py CA_FILE URL...
"""
import hashlib
import json
import sys

import httpx

ca, urls = sys.argv[1], sys.argv[2:]
with httpx.Client(http2=True, verify=ca, timeout=10) as client:
    for url in urls:
        r = client.get(url, headers={"authorization": "Bearer workload-own", "x-custom": "httpx"})
        print(json.dumps({"url": url, "status": r.status_code, "version": r.http_version, "body": r.text}), flush=True)
    body = b"httpx-body-" * 10000
    base = urls[-1].split("/", 3)
    r = client.post("/".join(base[:3]) + "/echo", content=body)
    print(json.dumps({"url": "echo", "status": r.status_code, "version": r.http_version,
                      "same": r.content == body, "sha256": hashlib.sha256(r.content).hexdigest()}), flush=True)
