/**
 * 100-byte telemetry payloads that carry, at fixed offsets, the sender's index and the send time
 * (µs on the load generator's clock), so a receiver can measure latency and credit the sender
 * without parsing: the digits are patched in place before each send and read back on arrival.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { BUNDLED_SCHEMAS_DIR } from '../../src/package-info.js';
import { parseProtoSchema } from '../../src/codecs/protobuf.js';

export type PayloadKind = 'generic' | 'tracker' | 'thermostat';

export const PAYLOAD_BYTES = 100;
/** "SSSS:TTTTTTTTTTTTTTTT" – sender index and send time. */
const MARK = '0000:0000000000000000';
const SENDER_DIGITS = 4;
const TIME_DIGITS = 16;

export interface PayloadTemplate {
  bytes: Buffer;
  /** Offset of the sender digits; the time digits start SENDER_DIGITS + 1 later. */
  markOffset: number;
  contentFormat: number;
}

function fit(build: (pad: string) => Buffer): Buffer {
  for (let n = 0; n < PAYLOAD_BYTES; n++) {
    const b = build('x'.repeat(n));
    if (b.length === PAYLOAD_BYTES) return b;
    if (b.length > PAYLOAD_BYTES) break;
  }
  throw new Error('cannot build a payload of exactly 100 bytes');
}

export function payloadTemplate(kind: PayloadKind): PayloadTemplate {
  let bytes: Buffer;
  if (kind === 'generic') {
    bytes = fit((pad) => Buffer.from(JSON.stringify({ temp: 21.5, hum: 40.25, door: false, m: MARK, pad })));
  } else if (kind === 'tracker') {
    bytes = fit((pad) => Buffer.from(JSON.stringify({ lat: 52.5208, lon: 13.4094, speed: 12.5, ts: 1795323017000, m: MARK, p: pad })));
  } else {
    const file = join(BUNDLED_SCHEMAS_DIR, 'thermostat.proto');
    const { telemetry } = parseProtoSchema('thermostat', file, readFileSync(file, 'utf8'));
    bytes = fit((pad) =>
      Buffer.from(
        telemetry
          .encode(
            telemetry.fromObject({
              device_time: { seconds: 1795323017, nanos: 0 },
              temperature_c: 21.5,
              humidity_pct: 40.25,
              mode: 2,
              setpoint: { heat_c: 21, cool_c: 26 },
              zone_temperatures_c: { hall: 20.5 },
              mains: { voltage: 230 },
              cycle_count: 1234,
              firmware: `${MARK}${pad}`,
            }),
          )
          .finish(),
      ),
    );
  }
  const markOffset = bytes.indexOf(MARK);
  if (markOffset < 0) throw new Error('marker not found in payload');
  return { bytes, markOffset, contentFormat: kind === 'thermostat' ? 42 : 50 };
}

/** Writes `value` as `width` decimal digits (zero padded) at `offset`. */
export function writeDigits(buf: Buffer, offset: number, width: number, value: number): void {
  let v = Math.floor(value);
  for (let i = offset + width - 1; i >= offset; i--) {
    buf[i] = 48 + (v % 10);
    v = Math.floor(v / 10);
  }
}

export function readDigits(buf: Buffer, offset: number, width: number): number {
  let v = 0;
  for (let i = offset; i < offset + width; i++) v = v * 10 + ((buf[i] as number) - 48);
  return v;
}

/** µs on this process's monotonic clock. */
export function nowUs(): number {
  return Math.round(performance.now() * 1000);
}

/** Patches sender and time into a payload at `base` (the payload's start inside `buf`). */
export function stamp(buf: Buffer, base: number, markOffset: number, sender: number, us: number): void {
  writeDigits(buf, base + markOffset, SENDER_DIGITS, sender);
  writeDigits(buf, base + markOffset + SENDER_DIGITS + 1, TIME_DIGITS, us);
}

export function readStamp(buf: Buffer, base: number, markOffset: number): { sender: number; us: number } {
  return { sender: readDigits(buf, base + markOffset, SENDER_DIGITS), us: readDigits(buf, base + markOffset + SENDER_DIGITS + 1, TIME_DIGITS) };
}

export function readSender(buf: Buffer, base: number, markOffset: number): number {
  return readDigits(buf, base + markOffset, SENDER_DIGITS);
}

export function readTimeUs(buf: Buffer, base: number, markOffset: number): number {
  return readDigits(buf, base + markOffset + SENDER_DIGITS + 1, TIME_DIGITS);
}
