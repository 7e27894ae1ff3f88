"""A gRPC service and its client with grpcio, messages as raw bytes (no
generated code): the server runs in a test network namespace and prints
one JSON line per call it handled (a SHA-256 of the authorization metadata,
never the value); the client runs as a workload and prints one JSON line
per call it made.

Methods of /wirekey.test.Echo/:
  Unary    the request back; trailing metadata x-trailer, and the
           server's view of the deadline (grpc-timeout) in x-deadline
  Fail     INVALID_ARGUMENT with a message that needs percent-encoding
  Bidi     each request message back as it arrives
  Hold     answers only once the call is cancelled or its deadline passes;
           the server records how it ended
  HoldStream  echoes the first message, then holds until the client
           cancels (no deadline); the server records that it ended

usage: python grpc-echo.py server CERT KEY PORT
       python grpc-echo.py client TARGET CA_FILE
"""
import hashlib
import json
import sys
import threading
from concurrent import futures

import grpc

SERVICE = "wirekey.test.Echo"
BIG = 8 * 1024 * 1024
OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024), ("grpc.max_send_message_length", 64 * 1024 * 1024)]
lock = threading.Lock()


def out(o):
    with lock:
        print(json.dumps(o), flush=True)


def sha(b):
    return hashlib.sha256(b if isinstance(b, bytes) else b.encode()).hexdigest()


def record(method, context, **extra):
    md = context.invocation_metadata()
    out({"method": method, "authorization": [sha(v) for k, v in md if k == "authorization"],
         "metadata": sorted({k for k, _ in md}), "requestId": dict(md).get("x-request-id"),
         "deadline": context.time_remaining(), **extra})


def unary(request, context):
    record("Unary", context, size=len(request), sha256=sha(request))
    remaining = context.time_remaining()
    context.set_trailing_metadata((("x-trailer", "trailing-value"), ("x-deadline", "none" if remaining is None else "set")))
    return request


def fail(request, context):
    record("Fail", context)
    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad input: 100% wrong ünicode")


def bidi(request_iterator, context):
    n = 0
    for msg in request_iterator:
        n += 1
        yield msg
    record("Bidi", context, messages=n)


def hold(request, context):
    record("Hold", context)
    done = threading.Event()
    context.add_callback(done.set)
    done.wait()
    out({"held": "ended", "code": str(context.code()) if hasattr(context, "code") else None, "active": context.is_active()})
    return b""


def hold_stream(request_iterator, context):
    first = next(request_iterator)
    record("HoldStream", context)
    # Said from the callback: once the call is cancelled, grpc may never
    # resume this generator.
    context.add_callback(lambda: out({"held": "cancelled-stream"}))
    yield first
    while context.is_active():
        threading.Event().wait(0.1)


def serve(cert, key, port):
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Hold": grpc.unary_unary_rpc_method_handler(hold),
        "HoldStream": grpc.stream_stream_rpc_method_handler(hold_stream),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    creds = grpc.ssl_server_credentials([(open(key, "rb").read(), open(cert, "rb").read())])
    server.add_secure_port(f"[::]:{port}", creds)
    server.start()
    out({"listening": True})
    server.wait_for_termination()


def client(target, ca):
    creds = grpc.ssl_channel_credentials(root_certificates=open(ca, "rb").read())
    md = (("authorization", "Bearer workload-own"), ("x-request-id", "req-1"))
    with grpc.secure_channel(target, creds, options=OPTIONS) as ch:
        call = lambda name, kind: getattr(ch, kind)(f"/{SERVICE}/{name}", request_serializer=None, response_deserializer=None)
        # Unary, with a deadline the server must see.
        resp, c = call("Unary", "unary_unary").with_call(b"hello", metadata=md, timeout=30)
        out({"call": "Unary", "body": resp.decode(), "code": c.code().name, "trailers": dict(c.trailing_metadata())})
        # A large message both ways.
        big = bytes(range(256)) * (BIG // 256)
        resp, c = call("Unary", "unary_unary").with_call(big, metadata=md, timeout=60)
        out({"call": "Big", "size": len(resp), "same": resp == big, "code": c.code().name})
        # A status and message in the trailers.
        try:
            call("Fail", "unary_unary")(b"x", metadata=md, timeout=30)
            out({"call": "Fail", "code": "OK"})
        except grpc.RpcError as e:
            out({"call": "Fail", "code": e.code().name, "details": e.details()})
        # Bidirectional streaming: each message answered as it is sent.
        msgs = [f"m{i}".encode() * (i + 1) for i in range(20)]
        replies = [r.decode() for r in call("Bidi", "stream_stream")(iter(msgs), metadata=md, timeout=30)]
        out({"call": "Bidi", "replies": len(replies), "same": replies == [m.decode() for m in msgs]})
        # A deadline that passes while the server holds the call.
        try:
            call("Hold", "unary_unary")(b"", metadata=md, timeout=1.5)
            out({"call": "Hold", "code": "OK"})
        except grpc.RpcError as e:
            out({"call": "Hold", "code": e.code().name})
        # A call the client cancels (no deadline): the server must see it end.
        stop = threading.Event()

        def requests():
            yield b"first"
            stop.wait()

        responses = call("HoldStream", "stream_stream")(requests(), metadata=md)
        first = next(responses)
        responses.cancel()
        stop.set()
        out({"call": "Cancel", "first": first.decode(), "code": responses.code().name})


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve(*sys.argv[2:5])
    else:
        client(*sys.argv[2:4])
