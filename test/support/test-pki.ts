/**
 * A test PKI made with the openssl command line, independent of wirekey's
 * own CA code: a root and a server certificate for the upstream's hosts.
 */
import path from 'node:path';
import { writeFileSync } from 'node:fs';
import { must } from './shell.js';

export interface TestPki {
  caCert: string;
  serverCert: string;
  serverKey: string;
}

export async function createTestPki(dir: string, hosts: string[]): Promise<TestPki> {
  const caKey = path.join(dir, 'test-ca.key');
  const caCert = path.join(dir, 'test-ca.crt');
  const serverKey = path.join(dir, 'server.key');
  const csr = path.join(dir, 'server.csr');
  const serverCert = path.join(dir, 'server.crt');
  const ext = path.join(dir, 'server.ext');
  await must('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', caKey,
    '-out', caCert, '-days', '2', '-subj', '/CN=wirekey test upstream CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  await must('openssl', ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', serverKey,
    '-out', csr, '-subj', `/CN=${hosts[0]}`]);
  writeFileSync(ext, `subjectAltName=${hosts.map((h) => `DNS:${h}`).join(',')}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n`);
  await must('openssl', ['x509', '-req', '-in', csr, '-CA', caCert, '-CAkey', caKey, '-CAcreateserial', '-out', serverCert,
    '-days', '2', '-extfile', ext]);
  return { caCert, serverCert, serverKey };
}
