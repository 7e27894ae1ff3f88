/**
 * What a workload is told when its request's upstream fails (502
 * upstream-failed): the class of failure, never the socket error, so that
 * a refused connection, a timeout and a reset look alike to it. Errors
 * from real sockets on loopback, and errors shaped as Node and undici make
 * them for what loopback cannot produce (a timeout, an unreachable net).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import net from 'node:net';
import tls from 'node:tls';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { upstreamFailed, upstreamFailure } from '../../controller/proxy/refusal-response.js';
import { ResponseFramingError } from '../../controller/proxy/h1-wire.js';
import { createTestPki, type TestPki } from '../support/test-pki.js';

const HOST = 'api.example.com';

/** Shaped as Node's connect errors: errno name, address and port in the text and on the error. */
const connectError = (code: string, address = '10.1.2.3', port = 443) =>
  Object.assign(new Error(`connect ${code} ${address}:${port}`), { code, errno: -1, syscall: 'connect', address, port });

/** The error a TLS client gets connecting to `port` on loopback with `opts`. */
function tlsError(port: number, opts: tls.ConnectionOptions): Promise<Error & { code?: string }> {
  return new Promise((resolve) => {
    const s = tls.connect({ host: '127.0.0.1', port, ...opts });
    s.once('secureConnect', () => {
      s.destroy();
      resolve(new Error('connected'));
    });
    s.once('error', resolve);
  });
}

describe('upstream failures, as the workload is told them', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'wirekey-upfail-'));
  let pki: TestPki;
  const servers: net.Server[] = [];
  let tlsPort = 0;
  let resetPort = 0;
  let closedPort = 0;

  const listen = async (server: net.Server): Promise<number> => {
    servers.push(server);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    return (server.address() as net.AddressInfo).port;
  };

  beforeAll(async () => {
    pki = await createTestPki(dir, [HOST]);
    tlsPort = await listen(tls.createServer({ cert: readFileSync(pki.serverCert), key: readFileSync(pki.serverKey) }, (s) => s.end()));
    resetPort = await listen(net.createServer((s) => s.resetAndDestroy()));
    // A port nothing listens on: bound, then closed.
    const closed = net.createServer();
    closedPort = await new Promise<number>((r) => closed.listen(0, '127.0.0.1', () => r((closed.address() as net.AddressInfo).port)));
    await new Promise<void>((r) => closed.close(() => r()));
  });

  afterAll(async () => {
    await Promise.all(servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
    rmSync(dir, { recursive: true, force: true });
  });

  it('before the connection is made, refused, reset, timed out or unreachable are one answer: could not be reached', async () => {
    const real = [
      await tlsError(closedPort, { servername: HOST, ca: readFileSync(pki.caCert) }),
      await tlsError(resetPort, { servername: HOST, ca: readFileSync(pki.caCert) }),
    ];
    expect(real.map((e) => e.code)).toEqual(['ECONNREFUSED', 'ECONNRESET']);
    const shaped: Error[] = ['ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ECONNRESET', 'EADDRNOTAVAIL'].map((c) => connectError(c));
    // undici's connect timeout.
    shaped.push(Object.assign(new Error('Connect Timeout Error (attempted address: 10.1.2.3:443, timeout: 10000ms)'), { code: 'UND_ERR_CONNECT_TIMEOUT' }));
    for (const err of [...real, ...shaped, new Error('something else')]) {
      expect(upstreamFailure(err, false), err.message).toBe('unreachable');
      expect(upstreamFailed(HOST, err, false)).toEqual({ status: 502, code: 'upstream-failed', message: `upstream ${HOST} could not be reached` });
    }
  });

  it('a certificate that does not verify for the name: said so, and nothing else', async () => {
    const wrongName = await tlsError(tlsPort, { servername: 'other.example.com', ca: readFileSync(pki.caCert) });
    const unknownCa = await tlsError(tlsPort, { servername: HOST });
    expect([wrongName.code, unknownCa.code]).toEqual(['ERR_TLS_CERT_ALTNAME_INVALID', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE']);
    const shaped = ['CERT_HAS_EXPIRED', 'DEPTH_ZERO_SELF_SIGNED_CERT', 'SELF_SIGNED_CERT_IN_CHAIN'].map((code) => Object.assign(new Error(code.toLowerCase()), { code }));
    for (const err of [wrongName, unknownCa, ...shaped]) {
      expect(upstreamFailure(err, false), err.message).toBe('certificate');
      expect(upstreamFailed(HOST, err, false).message).toBe(`upstream ${HOST}'s certificate did not verify for ${HOST}`);
    }
  });

  it('after the connection is made: a malformed response, or closed before answering', () => {
    const hpe = Object.assign(new Error('Parse Error: Invalid header value char'), { code: 'HPE_INVALID_HEADER_TOKEN', bytesParsed: 17 });
    for (const err of [new ResponseFramingError('a bare LF in the status line'), hpe]) {
      expect(upstreamFailed(HOST, err, true).message).toBe(`upstream ${HOST} sent a malformed response`);
    }
    const hangUp = Object.assign(new Error('socket hang up'), { code: 'ECONNRESET' });
    const undiciClosed = Object.assign(new Error('other side closed'), { code: 'UND_ERR_SOCKET' });
    for (const err of [hangUp, undiciClosed, connectError('EPIPE'), new Error('the upstream connection closed')]) {
      expect(upstreamFailed(HOST, err, true).message).toBe(`upstream ${HOST} closed the connection before answering`);
    }
  });

  it('no message carries the error\'s text, errno name, address or port', () => {
    const errors = ['ECONNREFUSED', 'ETIMEDOUT', 'EHOSTUNREACH', 'ECONNRESET', 'CERT_HAS_EXPIRED', 'HPE_INVALID_CONSTANT'].map((c) => connectError(c, '10.20.30.40', 8443));
    for (const err of errors) {
      for (const connected of [false, true]) {
        const { message } = upstreamFailed(HOST, err, connected);
        for (const leak of [err.code, '10.20.30.40', '8443', err.message]) expect(message).not.toContain(leak);
      }
    }
  });
});
