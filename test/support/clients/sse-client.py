# A server-sent-events reader the way OpenAI-style Python SDKs read them:
# httpx streaming the response and taking it line by line as it arrives.
# Prints the status, then each line as soon as httpx yields it (flushed),
# then "end". HOST resolves to IP for this process only.
# usage: sse-client.py HOST IP CA_FILE PATH
import socket
import ssl
import sys

import httpx

host, ip, cafile, path = sys.argv[1:]

real_getaddrinfo = socket.getaddrinfo


def getaddrinfo(name, *args, **kwargs):
    return real_getaddrinfo(ip if name == host else name, *args, **kwargs)


socket.getaddrinfo = getaddrinfo
ctx = ssl.create_default_context(cafile=cafile)
with httpx.Client(verify=ctx, timeout=10) as client:
    with client.stream("GET", f"https://{host}{path}", headers={"Accept": "text/event-stream"}) as r:
        print(f"status {r.status_code}", flush=True)
        for line in r.iter_lines():
            print(line, flush=True)
print("end", flush=True)
