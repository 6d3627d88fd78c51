/**
 * JSON text of a canonical document, built once per object: a telemetry record goes to the
 * telemetry store and, as the data of its CloudEvent, to the event stream (two JSON.stringify of
 * the same record were 8 % of the gateway's CPU in the Redis pipeline benchmark). Only for
 * documents that are not changed after they are built (records, events).
 */
const texts = new WeakMap<object, string>();

export function jsonOnce(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value) ?? 'null';
  let text = texts.get(value);
  if (text === undefined) {
    text = JSON.stringify(value);
    texts.set(value, text);
  }
  return text;
}
