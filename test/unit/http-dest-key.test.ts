import { describe, expect, it } from 'vitest';
import { LAYOUTS, decodeHttpDestKey, encodeHttpDestKey } from '../../controller/datapath/layout.js';

const f = LAYOUTS.wk_http_dest_key.fields;
const prefixOf = (b: Buffer) => b.readUInt32LE(f.prefixlen.offset);

describe('wk_http_dest keys (LPM trie: port, then an address prefix)', () => {
  it('an exact address matches all 160 bits (port, pad and a 128-bit address)', () => {
    expect(prefixOf(encodeHttpDestKey('10.1.2.3', 80))).toBe(160);
    expect(prefixOf(encodeHttpDestKey('fd00::1', 80))).toBe(160);
  });

  it('an IPv4 CIDR becomes the IPv4-mapped IPv6 prefix', () => {
    const k = encodeHttpDestKey('10.1.2.0/24', 8080);
    expect(prefixOf(k)).toBe(32 + 96 + 24);
    expect(k.subarray(f.addr.offset).toString('hex')).toBe('00000000000000000000ffff0a010200');
    expect(k.readUInt16LE(f.port.offset)).toBe(8080);
  });

  it('host bits beyond the prefix are cleared, so one network has one key', () => {
    expect(encodeHttpDestKey('10.1.2.77/24', 80).equals(encodeHttpDestKey('10.1.2.0/24', 80))).toBe(true);
    expect(encodeHttpDestKey('fd00:1:2:3::9/64', 80).equals(encodeHttpDestKey('fd00:1:2:3::/64', 80))).toBe(true);
  });

  it('decodes back to the text form', () => {
    for (const a of ['10.1.2.3', '10.1.2.0/24', '0.0.0.0/0', 'fd00::1', 'fd00:1:2:3::/64']) {
      expect(decodeHttpDestKey(encodeHttpDestKey(a, 443))).toEqual({ address: a, port: 443 });
    }
  });

  it('refuses what is neither an address nor a CIDR', () => {
    expect(() => encodeHttpDestKey('example.com', 80)).toThrow();
    expect(() => encodeHttpDestKey('10.0.0.0/33', 80)).toThrow();
  });
});
