/** Zod schemas of REST documents, shared by routes and the OpenAPI document. */
import { z } from 'zod';
import { problemSchema } from './problem.js';

export const deviceIdSchema = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/, 'must match ^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$')
  .describe('Device id');

export const deviceRecordSchema = z.object({
  id: z.string(),
  type: z.string(),
  online: z.boolean(),
  protocol: z.string().nullable(),
  lastSeen: z.number().int().nullable().describe('epoch ms'),
  connectedAt: z.number().int().nullable().describe('epoch ms'),
  certificate: z.object({ serial: z.string(), notAfter: z.string() }).nullable(),
  firmware: z
    .object({ current: z.string().nullable(), target: z.string().nullable(), state: z.string().nullable() })
    .nullable(),
});

/** Responses every authenticated route may give. */
export const authErrorResponses = {
  401: problemSchema,
  403: problemSchema,
} as const;

export const serviceSecurity = [{ serviceJwt: [] }];
