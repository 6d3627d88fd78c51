#!/usr/bin/env node
// Builds the DTLS addon (native/dtls → native/dtls/build/Release/dtls_native.node) with node-gyp.
// The addon compiles against the OpenSSL headers that ship with node and links nothing: its
// OpenSSL symbols resolve against the node binary at load time.
//
// Usage: node scripts/build-dtls.mjs [--strict]
// Without --strict a failed build prints one line and exits 0 (npm install must not break where
// no C toolchain exists; coaps then refuses to start with a clear error). With --strict (CI) a
// failure exits 1 with node-gyp's output.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const strict = process.argv.includes('--strict');
const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const addonDir = join(root, 'native', 'dtls');
const output = join(addonDir, 'build', 'Release', 'dtls_native.node');

if (!existsSync(join(addonDir, 'binding.gyp'))) {
  console.log('build-dtls: native/dtls/binding.gyp is missing; coaps (DTLS) will not be available');
  process.exit(strict ? 1 : 0);
}

const args = ['rebuild'];
// Distribution packages of node (Debian, NodeSource) ship their headers in /usr/include/node:
// use them instead of downloading a header tarball.
if (existsSync('/usr/include/node/node_api.h')) args.push('--nodedir=/usr');

// The pinned devDependency, never a download (npx --no-install fails instead of fetching).
const npx = process.platform === 'win32' ? 'npx.cmd' : 'npx';
const r = spawnSync(npx, ['--no-install', 'node-gyp', ...args], {
  cwd: addonDir,
  encoding: 'utf8',
  env: { ...process.env, npm_config_loglevel: 'error' },
  shell: process.platform === 'win32',
});

if (r.status === 0 && existsSync(output)) {
  console.log(`build-dtls: built ${output.slice(root.length + 1)}`);
  process.exit(0);
}

const reason = r.error
  ? r.error.message
  : ((r.stderr ?? '') + (r.stdout ?? ''))
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => /error|not found|missing|cannot|failed/i.test(l) && !/^gyp info/.test(l))[0] ?? `node-gyp exited with ${r.status ?? r.signal}`;
if (strict) {
  process.stderr.write(r.stdout ?? '');
  process.stderr.write(r.stderr ?? '');
  console.error(`build-dtls: FAILED to build the DTLS addon (${reason})`);
  process.exit(1);
}
console.log(`build-dtls: skipped, the DTLS addon did not build (${reason}); coaps stays unavailable. Needs a C compiler, make and python3; rerun with: npm run build:dtls`);
process.exit(0);
