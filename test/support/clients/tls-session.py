#!/usr/bin/env python3
"""One TLS connection driven line by line from stdin, for tests that need a
workload to hold a connection open across events (a policy reload, another
workload's request).

usage: tls-session.py HOST IP PORT CA_FILE [hold]
With "hold", the TCP connection is made and {"connected": true} printed,
and the TLS handshake waits for a "tls" line on stdin (answered like hello).
stdin, one command per line:
  send BASE64      write those bytes as they are
  read [METHOD]    read one HTTP response (METHOD: the request's, for HEAD)
  eof              read until the server closes the connection
  hello            answer once the handshake is done (it is, by then)
stdout, one JSON line per read/eof/hello: {"status", "headers", "body"}
(body as latin1), {"closed": true, "rest": latin1}, {"connected": true}, or
{"error": "..."}. A connection that cannot be made prints one error line
(and every command after it gets another).
"""
import base64
import http.client
import json
import socket
import ssl
import sys

host, ip, port, ca = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
hold = len(sys.argv) > 5 and sys.argv[5] == 'hold'
ctx = ssl.create_default_context(cafile=ca)
try:
    raw = socket.create_connection((ip, port), timeout=30)
    if hold:
        sys.stdout.write(json.dumps({'connected': True}) + '\n')
        sys.stdout.flush()
        sys.stdin.readline()
    sock = ctx.wrap_socket(raw, server_hostname=host)
    if hold:
        sys.stdout.write(json.dumps({'connected': True}) + '\n')
        sys.stdout.flush()
    reader = sock.makefile('rb')
except Exception as e:
    if hold:
        sys.stdout.write(json.dumps({'error': f'connect: {type(e).__name__}: {e}'}) + '\n')
        sys.stdout.flush()
    for _ in sys.stdin:
        sys.stdout.write(json.dumps({'error': f'connect: {type(e).__name__}: {e}'}) + '\n')
        sys.stdout.flush()
    sys.exit(0)


class Unclosable:
    """The shared reader, which http.client may not close after a
    "Connection: close" response: the test reads on, to see the close."""

    def __getattr__(self, name):
        return getattr(reader, name)

    def close(self):
        pass


class Shared:
    """Lets http.client read successive responses from one buffered file."""

    def makefile(self, *args, **kwargs):
        return Unclosable()


def out(obj):
    sys.stdout.write(json.dumps(obj) + '\n')
    sys.stdout.flush()


for line in sys.stdin:
    cmd, _, arg = line.strip().partition(' ')
    try:
        if cmd == 'send':
            sock.sendall(base64.b64decode(arg))
        elif cmd == 'read':
            resp = http.client.HTTPResponse(Shared(), method=arg or 'GET')
            resp.begin()
            body = resp.read()
            out({'status': resp.status, 'headers': resp.getheaders(), 'body': body.decode('latin1')})
        elif cmd == 'hello':
            out({'connected': True})
        elif cmd == 'eof':
            rest = b''
            try:
                while True:
                    chunk = reader.read1(65536)
                    if not chunk:
                        break
                    rest += chunk
            except (ssl.SSLEOFError, ConnectionResetError):
                pass  # closed without a TLS close_notify: closed all the same
            out({'closed': True, 'rest': rest.decode('latin1')})
    except Exception as e:  # the test asserts on what happened, not on a traceback
        out({'error': f'{type(e).__name__}: {e}'})
