#!/usr/bin/env node
// The `iotgate` command. The TypeScript sources are compiled to dist/ by `npm install` (prepare)
// or `npm run build`.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const entry = new URL('../dist/src/cli/index.js', import.meta.url);
if (!existsSync(fileURLToPath(entry))) {
  process.stderr.write('iotgate: dist/ is missing; run `npm run build` (or `npm install`) first\n');
  process.exit(1);
}
const { main } = await import(entry.href);
await main(process.argv);
