/**
 * Every upstream path verifies the upstream's certificate whatever the
 * agent's environment says: with NODE_TLS_REJECT_UNAUTHORIZED=0 (which
 * Node reads at each connect), a loopback server whose certificate names
 * another host, under a CA the agent does not trust, never gets a request,
 * over the HTTP/1.1 agent (https.request), HTTP/2 sessions or a WebSocket
 * upgrade.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import https from 'node:https';
import net from 'node:net';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createUpstreamAgent, upstreamSecureContext } from '../../controller/proxy/upstream.js';
import { UpstreamH2Pool } from '../../controller/proxy/upstream-h2.js';
import { openUpgrade } from '../../controller/proxy/upgrade.js';
import { createTestPki } from '../support/test-pki.js';

describe('upstream certificate verification does not follow NODE_TLS_REJECT_UNAUTHORIZED', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'wirekey-upstream-verify-'));
  let trustedCa = '';
  let server: https.Server;
  let port = 0;
  /** Requests the untrusted server received (it must receive none). */
  const received: string[] = [];
  const saved = process.env.NODE_TLS_REJECT_UNAUTHORIZED;

  beforeAll(async () => {
    mkdirSync(path.join(dir, 'trusted'));
    mkdirSync(path.join(dir, 'evil'));
    trustedCa = (await createTestPki(path.join(dir, 'trusted'), ['api.example.com'])).caCert;
    const evil = await createTestPki(path.join(dir, 'evil'), ['evil.test']);
    server = https.createServer({ cert: readFileSync(evil.serverCert), key: readFileSync(evil.serverKey), ALPNProtocols: ['h2', 'http/1.1'] }, (req, res) => {
      received.push(`${req.method} ${req.url} ${req.headers.authorization ?? ''}`);
      res.end('ok');
    });
    server.on('upgrade', (req: { url?: string }, socket: net.Socket) => {
      received.push(`upgrade ${req.url}`);
      socket.destroy();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as net.AddressInfo).port;
    process.env.NODE_TLS_REJECT_UNAUTHORIZED = '0';
  });

  afterAll(async () => {
    if (saved === undefined) delete process.env.NODE_TLS_REJECT_UNAUTHORIZED;
    else process.env.NODE_TLS_REJECT_UNAUTHORIZED = saved;
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
    rmSync(dir, { recursive: true, force: true });
  });

  it('the HTTP/1.1 agent', async () => {
    const agent = createUpstreamAgent({ caFile: trustedCa });
    try {
      const err = await new Promise<Error | undefined>((resolve) => {
        const req = https.request({ agent, host: '127.0.0.1', port, servername: 'api.example.com', path: '/h1', headers: { authorization: 'Bearer SECRET' } }, (res) => {
          res.resume();
          resolve(undefined);
        });
        req.once('error', resolve);
        req.end();
      });
      expect((err as NodeJS.ErrnoException | undefined)?.code).toMatch(/^(UNABLE_TO_VERIFY_LEAF_SIGNATURE|ERR_TLS_CERT_ALTNAME_INVALID|DEPTH_ZERO_SELF_SIGNED_CERT|SELF_SIGNED_CERT_IN_CHAIN)$/);
    } finally {
      agent.destroy();
    }
    expect(received).toEqual([]);
  });

  it('HTTP/2 sessions', async () => {
    const pool = new UpstreamH2Pool({ secureContext: upstreamSecureContext({ caFile: trustedCa }) });
    try {
      await expect(pool.session({ partition: 'verify-test', address: '127.0.0.1', port, servername: 'api.example.com' })).rejects.toThrow();
    } finally {
      pool.close();
    }
    expect(received).toEqual([]);
  });

  it('a WebSocket upgrade', async () => {
    // The workload's side of the tunnel: a socket pair the upgrade never reaches.
    const listener = net.createServer();
    await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve));
    const client = net.connect((listener.address() as net.AddressInfo).port, '127.0.0.1');
    try {
      const failed = await new Promise<{ err: Error; connected: boolean }>((resolve) => {
        openUpgrade(client, Buffer.alloc(0), {
          address: '127.0.0.1', port, servername: 'api.example.com', secureContext: upstreamSecureContext({ caFile: trustedCa }),
          path: '/ws', headers: ['Host', 'api.example.com', 'Authorization', 'Bearer SECRET', 'Sec-WebSocket-Key', 'dGhlIHNhbXBsZSBub25jZQ==', 'Sec-WebSocket-Version', '13'],
          idleMs: 10_000,
        }, {
          answered: () => resolve({ err: new Error('answered'), connected: true }),
          failed: (err, connected) => resolve({ err, connected }),
          closed: () => {},
          stillBound: () => true,
        });
      });
      expect(failed.connected).toBe(false);
      expect(failed.err.message).not.toBe('answered');
    } finally {
      client.destroy();
      listener.close();
    }
    expect(received).toEqual([]);
  });
});
