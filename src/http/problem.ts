/** RFC 9457 problem details: the one error shape of the REST API. */
import { z } from 'zod';
import { ERRORS, type ErrorCode } from '../core/errors.js';

export const PROBLEM_CONTENT_TYPE = 'application/problem+json';

export const problemSchema = z
  .object({
    type: z.string(),
    title: z.string(),
    status: z.number().int(),
    detail: z.string().optional(),
    instance: z.string().optional(),
    code: z.string(),
    errors: z.array(z.object({ path: z.string(), message: z.string() })).optional(),
  })
  .passthrough()
  .describe('RFC 9457 problem details');

export type Problem = z.infer<typeof problemSchema>;

export function problemType(code: string): string {
  return `urn:iotgate:problem:${code}`;
}

export function problem(code: ErrorCode, detail: string, extra: Record<string, unknown> = {}): Problem {
  const { status, title } = ERRORS[code];
  return { type: problemType(code), title, status, detail, code, ...extra };
}
