/** Hand-made MQTT bytes for malformed-traffic tests. */

/** MQTT variable byte integer (remaining length), 1–4 bytes for valid values. */
export function varint(n: number): Buffer {
  const bytes: number[] = [];
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 0x80;
    bytes.push(b);
  } while (n > 0);
  return Buffer.from(bytes);
}
