/** Assertions on codec results. */
import assert from 'node:assert/strict';
import type { DecodeResult, TelemetryRejection } from '../../src/codecs/codec.js';

export function accepted(res: DecodeResult): { value: Record<string, unknown>; deviceTime: number | null } {
  if (!res.ok) assert.fail(`expected acceptance, got ${JSON.stringify(res.error)}`);
  return res;
}

export function rejected(res: DecodeResult, code: TelemetryRejection['code']): TelemetryRejection {
  if (res.ok) assert.fail(`expected rejection ${code}, got ${JSON.stringify(res.value)}`);
  assert.equal(res.error.code, code, res.error.message);
  return res.error;
}
