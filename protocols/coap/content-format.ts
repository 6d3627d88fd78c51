/** CoAP Content-Format (RFC 7252 §12.3) of a request, as the codecs name encodings. */
import type { IncomingMessage } from 'coap';

export const JSON_FORMAT = 'application/json'; // 50
export const PROTOBUF_FORMAT = 'application/octet-stream'; // 42

/** 50 → json, 42 → protobuf, absent → undefined (the device type decides), anything else → 'unsupported'. */
export function encodingOf(req: IncomingMessage): 'json' | 'protobuf' | undefined | 'unsupported' {
  const format = req.headers['Content-Format'];
  if (format === undefined || format === null) return undefined;
  if (format === JSON_FORMAT) return 'json';
  if (format === PROTOBUF_FORMAT) return 'protobuf';
  return 'unsupported';
}
