/** The CredentialLedger contract on the file ledger (a copy of one CA per test, its own certs dir). */
import { FileCredentialLedger } from '../../src/pki/index.js';
import { suiteCa } from '../helpers/pki.js';
import { credentialLedgerContract } from './credential-ledger.js';

const ca = suiteCa();

credentialLedgerContract('file', async (t) => {
  const dir = await ca.certsDir(t);
  return { ledger: new FileCredentialLedger(dir, ca.material()), other: async () => new FileCredentialLedger(dir, ca.material()) };
});
