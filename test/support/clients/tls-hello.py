#!/usr/bin/env python3
"""A TLS client that controls how its ClientHello is cut into records and
TCP writes, for tests of the proxy's ClientHello reader.

usage: tls-hello.py MODE HOST IP PORT CA_FILE
  split  the ClientHello as 1-byte TLS records, one write each, then the
         rest of the handshake and one GET /; prints {"status": N} or
         {"error": ...}
  stall  the first half of the ClientHello, then nothing; prints
         {"closed": true} once the server closes the connection
"""
import json
import socket
import ssl
import sys

mode, host, ip, port, ca = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]


def out(obj):
    sys.stdout.write(json.dumps(obj) + '\n')
    sys.stdout.flush()


ctx = ssl.create_default_context(cafile=ca)
incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
tls = ctx.wrap_bio(incoming, outgoing, server_hostname=host)
sock = socket.create_connection((ip, port), timeout=60)


def pump_handshake():
    """Runs the handshake over `sock`, returning once it is done."""
    while True:
        try:
            tls.do_handshake()
            sock.sendall(outgoing.read())
            return
        except ssl.SSLWantReadError:
            pending = outgoing.read()
            if pending:
                sock.sendall(pending)
            data = sock.recv(65536)
            if not data:
                raise ConnectionError('closed during the handshake')
            incoming.write(data)


def hello_records():
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    records = outgoing.read()
    # Handshake bytes of every record the client produced (the ClientHello).
    body = b''
    off = 0
    while off + 5 <= len(records):
        n = int.from_bytes(records[off + 3:off + 5], 'big')
        body += records[off + 5:off + 5 + n]
        off += 5 + n
    return records[:5], body


try:
    header, body = hello_records()
    if mode == 'split':
        for b in body:
            sock.sendall(header[:3] + (1).to_bytes(2, 'big') + bytes([b]))
        pump_handshake()
        tls.write(f'GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n'.encode())
        sock.sendall(outgoing.read())
        data = b''
        while True:
            try:
                data += tls.read(65536)
                break
            except ssl.SSLWantReadError:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                incoming.write(chunk)
        status = data.split(b'\r\n', 1)[0].split(b' ')
        out({'status': int(status[1]) if len(status) > 1 else None})
    elif mode == 'stall':
        whole = header[:3] + len(body).to_bytes(2, 'big') + body
        sock.sendall(whole[: len(whole) // 2])
        out({'sent': True})
        while sock.recv(65536):
            pass
        out({'closed': True})
except Exception as e:
    out({'error': f'{type(e).__name__}: {e}'})
