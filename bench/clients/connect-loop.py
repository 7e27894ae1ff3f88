# connect() + accept() + close() on loopback N times against a listener in
# this same process; prints {"ops": N, "seconds": S}.
# usage: connect-loop.py N
import json
import socket
import sys
import time

n = int(sys.argv[1])
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.bind(("127.0.0.1", 0))
srv.listen(64)
addr = srv.getsockname()
start = time.perf_counter()
for _ in range(n):
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    c.connect(addr)
    a, _ = srv.accept()
    c.close()
    a.close()
print(json.dumps({"ops": n, "seconds": time.perf_counter() - start}))
