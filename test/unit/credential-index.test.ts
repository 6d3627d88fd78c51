/**
 * CredentialIndex (src/core/credentials.ts) with a real CA: a device token's MAC is verified once
 * and remembered by its text, while revocation and re-provisioning (a new token id) still refuse
 * the remembered token at once; a token whose MAC fails is refused every time.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { CredentialRecord } from '../../src/core/model.js';
import { CredentialIndex } from '../../src/core/credentials.js';
import { FileCredentialLedger, PkiAuthority } from '../../src/pki/index.js';
import { suiteCa } from '../helpers/pki.js';

const suite = suiteCa();

function record(id: string, tokenId: string, over: Partial<CredentialRecord> = {}): CredentialRecord {
  return { id, type: 'generic', serial: null, notAfter: null, tokenId, issuedAt: 1000, revokedAt: null, revokedSerials: [], ...over };
}

test('a verified token is remembered; revocation and a new token id still refuse it; a bad MAC never passes', async (t) => {
  const ca = new PkiAuthority(suite.material());
  let macChecks = 0;
  const parse = ca.parseDeviceToken.bind(ca);
  // Counts the real MAC checks (the CA itself is not replaced).
  ca.parseDeviceToken = (token: string) => (macChecks++, parse(token));
  const index = new CredentialIndex(ca, new FileCredentialLedger(await suite.certsDir(t), suite.material()));

  const minted = ca.mintDeviceToken('dev-1');
  index.apply(record('dev-1', minted.tokenId));
  assert.equal(index.authenticateToken(minted.token), 'dev-1');
  assert.equal(index.authenticateToken(minted.token), 'dev-1');
  assert.equal(macChecks, 1, 'the MAC is checked once');

  const forged = `${minted.token.slice(0, -2)}${minted.token.endsWith('AA') ? 'BB' : 'AA'}`;
  assert.equal(index.authenticateToken(forged), null);
  assert.equal(index.authenticateToken(forged), null);
  assert.equal(macChecks, 3, 'a failing token is checked (and refused) every time');

  // Re-provisioned: the remembered token's id is no longer the device's.
  const next = ca.mintDeviceToken('dev-1');
  index.apply(record('dev-1', next.tokenId));
  assert.equal(index.authenticateToken(minted.token), null);
  assert.equal(index.authenticateToken(next.token), 'dev-1');

  // Revoked: refused although its MAC is remembered.
  index.apply(record('dev-1', next.tokenId, { revokedAt: 2000 }));
  assert.equal(index.authenticateToken(next.token), null);
});
