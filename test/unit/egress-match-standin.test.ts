/**
 * The stand-in matcher in controller/policy/egress.ts (see its header):
 * only what the proxy relies on. Deleted when the policy work's own
 * egress.ts and its tests replace it.
 */
import { describe, expect, it } from 'vitest';
import { egressAllowsAddress, egressAllowsName, egressNamePorts } from '../../controller/policy/egress.js';
import type { PlanEgress, PlanEgressRule } from '../../controller/policy/types.js';

const at = { file: 'p.yaml', line: 1, column: 1 };
const rule = (id: number, r: Partial<PlanEgressRule>): PlanEgressRule => ({
  id, label: `allow[${id}]`, source: at, cidrs: [], hosts: [], ports: [[443, 443]], protocol: 'tcp', tls: true, ...r,
});
const egress: PlanEgress = {
  mode: 'enforce',
  rules: [
    rule(1, { hosts: ['api.example.com', '*.svc.example.com'] }),
    rule(2, { hosts: ['plain.example.com'], ports: [[80, 80], [8080, 8081]], tls: false }),
    rule(3, { cidrs: ['10.0.0.0/8'], ports: [[1, 65535]], protocol: 'any' }),
    rule(4, { cidrs: ['2001:db8::/32'], ports: [[443, 443]], protocol: 'udp' }),
  ],
};

describe('egress matcher (stand-in)', () => {
  it('names: exact, wildcard strictly below, case and trailing dot ignored, tls and port must match', () => {
    expect(egressAllowsName(egress, { name: 'API.example.com.', port: 443, tls: true })?.id).toBe(1);
    expect(egressAllowsName(egress, { name: 'a.b.svc.example.com', port: 443, tls: true })?.id).toBe(1);
    expect(egressAllowsName(egress, { name: 'svc.example.com', port: 443, tls: true })).toBeUndefined();
    expect(egressAllowsName(egress, { name: 'evilsvc.example.com', port: 443, tls: true })).toBeUndefined();
    expect(egressAllowsName(egress, { name: 'api.example.com', port: 444, tls: true })).toBeUndefined();
    expect(egressAllowsName(egress, { name: 'api.example.com', port: 443, tls: false })).toBeUndefined();
    expect(egressAllowsName(egress, { name: 'plain.example.com', port: 8081, tls: false })?.id).toBe(2);
    expect(egressAllowsName(egress, { name: '', port: 443, tls: true })).toBeUndefined();
  });

  it('addresses: prefixes, IPv4-mapped IPv6, ports and protocol', () => {
    expect(egressAllowsAddress(egress, { address: '10.1.2.3', port: 22, protocol: 'tcp' })?.id).toBe(3);
    expect(egressAllowsAddress(egress, { address: '::ffff:10.1.2.3', port: 22, protocol: 'udp' })?.id).toBe(3);
    expect(egressAllowsAddress(egress, { address: '11.1.2.3', port: 22, protocol: 'tcp' })).toBeUndefined();
    expect(egressAllowsAddress(egress, { address: '2001:db8::1', port: 443, protocol: 'udp' })?.id).toBe(4);
    expect(egressAllowsAddress(egress, { address: '2001:db8::1', port: 443, protocol: 'tcp' })).toBeUndefined();
    expect(egressAllowsAddress(egress, { address: 'not-an-ip', port: 443, protocol: 'tcp' })).toBeUndefined();
  });

  it('name ports: distinct (port, tls) pairs of name rules only', () => {
    const pairs = egressNamePorts(egress).map((p) => `${p.port}/${p.tls}`).sort();
    expect(pairs).toEqual(['443/true', '80/false', '8080/false', '8081/false']);
  });
});
