/**
 * A broken schema file stops `iotgate start` (contract §6, issue 4 "Done when"): the real process
 * (bin/iotgate.js → dist/, built by `npm test` / `npm run build`) with IOTGATE_SCHEMAS_DIR pointing
 * at a copy of the shipped schemas plus one broken file exits with code 2 before binding anything,
 * and says on stderr `schemas: <file> line <n>: <reason>`. (The shipped dir starting fine is shown
 * by process.test.ts; an unknown type at registration by rest.test.ts.)
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { cp, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runCli } from '../helpers/cli.js';

const SHIPPED_SCHEMAS = fileURLToPath(new URL('../../schemas/', import.meta.url));

const BROKEN: { name: string; file: string; text: string; line: number; reason: RegExp }[] = [
  {
    name: 'a .proto with a syntax error',
    file: 'bad.proto',
    // line 6: a field without a number
    text: 'syntax = "proto3";\n\npackage iotgate.bad;\n\nmessage Telemetry {\n  double value = ;\n}\n',
    line: 6,
    reason: /illegal id ';'/,
  },
  {
    name: 'a .schema.json that is not JSON',
    file: 'probe.schema.json',
    // line 5: an unquoted property name
    text: '{\n  "type": "object",\n  "properties": {\n    "v": { "type": "number" },\n    oops: {}\n  }\n}\n',
    line: 5,
    reason: /invalid JSON/,
  },
  {
    name: 'a .schema.json that is not a valid JSON Schema',
    file: 'meter.schema.json',
    // line 4: an unknown type name
    text: '{\n  "type": "object",\n  "properties": {\n    "v": { "type": "nmber" }\n  }\n}\n',
    line: 4,
    reason: /invalid JSON Schema/,
  },
];

describe('a broken schema file stops iotgate start', () => {
  let root = '';
  let env: Record<string, string> = {};
  // One CA for every start (made once by the CLI): each start then fails at the schemas, fast.
  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'iotgate-schemas-start-'));
    env = {
      IOTGATE_HOST: '127.0.0.1',
      IOTGATE_HTTP_PORT: '0',
      IOTGATE_MQTT_PORT: '0',
      IOTGATE_MQTTS_PORT: '0',
      IOTGATE_COAP_PORT: '0',
      IOTGATE_CERTS_DIR: join(root, 'certs'),
    };
    const init = await runCli(['ca', 'init'], env);
    assert.equal(init.status, 0, `ca init: ${init.stderr}`);
  });
  after(() => rm(root, { recursive: true, force: true }));

  for (const b of BROKEN) {
    it(`${b.name}: exit 2, stderr names ${b.file} and line ${b.line} (one line, no stack)`, async () => {
      const schemas = await mkdtemp(join(root, 'schemas-'));
      await cp(SHIPPED_SCHEMAS, schemas, { recursive: true });
      await writeFile(join(schemas, b.file), b.text);

      // runCli rejects when the process does not exit by itself within the deadline.
      const exit = await runCli(['start'], { ...env, IOTGATE_SCHEMAS_DIR: schemas }, { timeoutMs: 20_000 });
      assert.equal(exit.status, 2, `exit code; stderr: ${exit.stderr}`);
      const lines = exit.stderr.trimEnd().split('\n');
      assert.equal(lines.length, 1, `one stderr line, got: ${exit.stderr}`);
      const line = lines[0]!;
      assert.match(line, /^schemas: /);
      assert.ok(line.includes(join(schemas, b.file)), `names the file: ${line}`);
      assert.ok(line.includes(` line ${b.line}: `), `names line ${b.line}: ${line}`);
      assert.match(line, b.reason);
      assert.doesNotMatch(exit.stdout, /"msg":"iotgate ready"/, 'never ready');
    });
  }
});
