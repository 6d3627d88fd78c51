/**
 * Answers with CoAP codes (contract §7): errors carry a diagnostic payload (RFC 7252 §5.5.2, UTF-8
 * text), 4.29 carries Max-Age = seconds to wait.
 */
import { parameters, type OutgoingMessage } from 'coap';
import { generate } from 'coap-packet';

export type CoapCode = '2.01' | '2.04' | '2.05' | '4.00' | '4.01' | '4.04' | '4.05' | '4.12' | '4.13' | '4.15' | '4.29' | '5.00' | '5.03';

/** An answer without a body document: a code, a diagnostic for errors, Max-Age for 4.29 and 5.03. */
export interface Answer {
  code: CoapCode;
  diagnostic?: string;
  maxAgeSeconds?: number;
}

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

/** The diagnostic payload of an error (at most 512 characters). */
function diagnosticBytes(diagnostic: string): Buffer {
  return Buffer.from(diagnostic.slice(0, 512), 'utf8');
}

/** An error with a diagnostic payload; `maxAgeSeconds` for 4.29 and 5.03. */
export function replyError(res: OutgoingMessage, code: CoapCode, diagnostic: string, maxAgeSeconds?: number): void {
  setCode(res, code);
  if (maxAgeSeconds !== undefined) res.setOption('Max-Age', maxAgeSeconds);
  res.end(diagnosticBytes(diagnostic));
}

/** `answer` through the `coap` package's response: replyEmpty without a diagnostic, else replyError. */
export function replyAnswer(res: OutgoingMessage, answer: Answer): void {
  if (answer.diagnostic !== undefined) return replyError(res, answer.code, answer.diagnostic, answer.maxAgeSeconds);
  // Max-Age as encodePiggybacked writes it, with or without a diagnostic.
  if (answer.maxAgeSeconds !== undefined) res.setOption('Max-Age', answer.maxAgeSeconds);
  replyEmpty(res, answer.code);
}

/** A uint option value as the `coap` package encodes it (option_converter `fromUint`): big-endian, no leading zero bytes. */
export function uintOption(n: number): Buffer {
  const parts: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) parts.unshift(v % 256);
  return Buffer.from(parts);
}

const CODE_BYTE: Record<CoapCode, number> = {
  '2.01': 0x41,
  '2.04': 0x44,
  '2.05': 0x45,
  '4.00': 0x80,
  '4.01': 0x81,
  '4.04': 0x84,
  '4.05': 0x85,
  '4.12': 0x8c,
  '4.13': 0x8d,
  '4.15': 0x8f,
  '4.29': 0x9d,
  '5.00': 0xa0,
  '5.03': 0xa3,
};

/**
 * `answer` piggybacked on the ACK of the CON request (`messageId`, `token`): byte for byte the
 * datagram the `coap` package sends for replyAnswer on a CON request answered within
 * piggybackReplyMs (RFC 7252 §5.2.1). A bodiless answer (2.04) is just the header and the token.
 */
export function encodePiggybacked(answer: Answer, messageId: number, token: Buffer): Buffer {
  if (answer.diagnostic === undefined && answer.maxAgeSeconds === undefined) {
    const tkl = token.length;
    const out = Buffer.allocUnsafe(4 + tkl);
    out[0] = 0x60 | tkl; // version 1, ACK
    out[1] = CODE_BYTE[answer.code];
    out[2] = messageId >> 8;
    out[3] = messageId & 0xff;
    token.copy(out, 4);
    return out;
  }
  return generate(
    {
      code: answer.code,
      messageId,
      token,
      ack: true,
      confirmable: false,
      options: answer.maxAgeSeconds === undefined ? [] : [{ name: 'Max-Age', value: uintOption(answer.maxAgeSeconds) }],
      ...(answer.diagnostic !== undefined && { payload: diagnosticBytes(answer.diagnostic) }),
    },
    parameters.maxMessageSize,
  );
}
