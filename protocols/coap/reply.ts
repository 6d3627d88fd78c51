/**
 * Answers with CoAP codes (contract §7): errors carry a diagnostic payload (RFC 7252 §5.5.2, UTF-8
 * text), 4.29 carries Max-Age = seconds to wait.
 */
import type { OutgoingMessage } from 'coap';

export type CoapCode = '2.01' | '2.04' | '2.05' | '4.00' | '4.01' | '4.04' | '4.05' | '4.12' | '4.13' | '4.15' | '4.29' | '5.00' | '5.03';

/** OutgoingMessage reads `code`, an Observe stream `statusCode`: set both. */
export function setCode(res: OutgoingMessage, code: CoapCode): void {
  res.code = code;
  res.statusCode = code;
}

export function replyJson(res: OutgoingMessage, code: CoapCode, body: unknown): void {
  setCode(res, code);
  res.setOption('Content-Format', 'application/json');
  res.end(Buffer.from(JSON.stringify(body)));
}

export function replyEmpty(res: OutgoingMessage, code: CoapCode): void {
  setCode(res, code);
  res.end();
}

/** An error with a diagnostic payload; `maxAgeSeconds` for 4.29 and 5.03. */
export function replyError(res: OutgoingMessage, code: CoapCode, diagnostic: string, maxAgeSeconds?: number): void {
  setCode(res, code);
  if (maxAgeSeconds !== undefined) res.setOption('Max-Age', maxAgeSeconds);
  res.end(Buffer.from(diagnostic.slice(0, 512), 'utf8'));
}
