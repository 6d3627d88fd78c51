/** `iotgate token create --sub NAME --scope "a b" [--ttl 1h]` */
import { isScope } from '../../core/model.js';
import { ensureCa, loadCaMaterial, parseTtl, signServiceToken } from '../../pki/index.js';
import { CliError, cliConfig, print, type GlobalOptions } from '../context.js';

export async function tokenCreate(opts: GlobalOptions & { sub: string; scope: string; ttl?: string }): Promise<void> {
  const config = cliConfig(opts);
  if (!/^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$/.test(opts.sub)) {
    throw new CliError(`--sub ${JSON.stringify(opts.sub)}: expected 1-128 characters of A-Z a-z 0-9 . _ : @ -`, 2);
  }
  const scopes = opts.scope.split(/\s+/).filter(Boolean);
  const unknown = scopes.filter((s) => !isScope(s));
  if (scopes.length === 0 || unknown.length > 0) {
    throw new CliError(
      `--scope: unknown scope ${unknown.map((s) => JSON.stringify(s)).join(', ') || '(empty)'}; allowed: devices:read devices:write telemetry:read commands:send shadow:read shadow:write firmware:write provision admin`,
      2,
    );
  }
  let ttlSeconds: number;
  try {
    ttlSeconds = parseTtl(opts.ttl ?? config.auth.defaultTokenTtl);
  } catch (e) {
    throw new CliError(`--ttl: ${(e as Error).message}`, 2);
  }
  await ensureCa(config.certs.dir, { hostnames: [...config.certs.hostnames] });
  const material = await loadCaMaterial(config.certs.dir);
  const minted = signServiceToken(material, { sub: opts.sub, scope: scopes.join(' '), ttlSeconds });
  print(opts, minted, minted.token);
}
