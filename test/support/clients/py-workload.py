# A long-lived Python workload driven over stdin, one command a line, for
# the identity tests. It answers each command with one line on stdout.
#   get PATH         HTTPS GET from this process          -> "status N"
#   fork-get PATH    fork without exec; the child GETs    -> "status N"
#   thread-get PATH  a second thread GETs                 -> "status N"
#   exec ARGV...     replace this process (os.execv)
#   pid              -> "pid N"
# usage: py-workload.py HOST IP CA_BUNDLE
import http.client
import os
import socket
import ssl
import sys
import threading

host, ip, cafile = sys.argv[1:4]


def get(path):
    ctx = ssl.create_default_context(cafile=cafile)
    sock = socket.create_connection((ip, 443), timeout=10)
    conn = http.client.HTTPSConnection(host, 443, context=ctx)
    conn.sock = ctx.wrap_socket(sock, server_hostname=host)
    conn.request("GET", path)
    status = conn.getresponse().status
    conn.close()
    return status


def reply(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


for raw in sys.stdin:
    cmd, _, arg = raw.strip().partition(" ")
    try:
        if cmd == "pid":
            reply(f"pid {os.getpid()}")
        elif cmd == "get":
            reply(f"status {get(arg)}")
        elif cmd == "fork-get":
            child = os.fork()
            if child == 0:
                code = 0
                try:
                    code = 0 if get(arg) == 200 else 1
                except Exception:
                    code = 2
                os._exit(code)
            _, st = os.waitpid(child, 0)
            reply(f"status {200 if os.waitstatus_to_exitcode(st) == 0 else 'failed'}")
        elif cmd == "thread-get":
            out = {}
            t = threading.Thread(target=lambda: out.update(s=get(arg)))
            t.start()
            t.join()
            reply(f"status {out.get('s')}")
        elif cmd == "exec":
            argv = arg.split(" ")
            os.execv(argv[0], argv)
        else:
            reply(f"error unknown command {cmd}")
    except Exception as e:  # the test reads the failure, not a traceback
        reply(f"error {type(e).__name__}: {e}")
