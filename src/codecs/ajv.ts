/**
 * JSON Schema (draft 2020-12) with ajv: one instance per registry, strict, first error only, and
 * errors turned into a JSON Pointer plus a sentence a device developer can act on.
 */
import Ajv2020Module from 'ajv/dist/2020.js';
import type { ErrorObject, ValidateFunction } from 'ajv/dist/2020.js';
import { isMap, isSeq, parseDocument, LineCounter, type Node as YamlNode } from 'yaml';
import { escapePointer, parseRfc3339 } from './document.js';
import { SchemaLoadError, escapeRegExp, lineOf } from './errors.js';

// ajv is CommonJS: under NodeNext the default import is `module.exports`, whose `default` is the class.
const Ajv2020 = Ajv2020Module.default;
type Ajv = InstanceType<typeof Ajv2020>;

export type { ValidateFunction };

const DATE = /^(\d{4})-(\d{2})-(\d{2})$/;
const TIME = /^([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)(?:\.\d+)?(?:[Zz]|[+-](?:[01]\d|2[0-3]):[0-5]\d)$/;

function isDate(s: string): boolean {
  const m = DATE.exec(s);
  if (!m) return false;
  const [y, mo, d] = [Number(m[1]), Number(m[2]), Number(m[3])];
  return mo >= 1 && mo <= 12 && d >= 1 && d <= new Date(Date.UTC(y, mo, 0)).getUTCDate();
}

/**
 * The formats a schema may use (strict mode refuses any other `format`). Hand-written to avoid a
 * dependency; RFC 3339 `date-time`/`date`/`time`, `uuid`, `ipv4`, `email` (practical, not RFC 5321).
 */
const FORMATS: Record<string, (s: string) => boolean> = {
  'date-time': (s) => parseRfc3339(s) !== null,
  date: isDate,
  time: (s) => TIME.test(s),
  uuid: (s) => /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(s),
  ipv4: (s) => /^(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/.test(s),
  email: (s) => /^[^\s@]+@[^\s@]+\.[^\s@]+$/.test(s),
};

/** The formats `createAjv` knows, for the docs. */
export const SUPPORTED_FORMATS = Object.keys(FORMATS);

/**
 * An ajv instance for draft 2020-12: `strict` (unknown keywords and formats are load errors),
 * `allErrors: false` (stop at the first error: cheap, and one error is what the device is told),
 * union types allowed (`"type": ["number", "string"]` is ordinary JSON Schema). Validators never
 * modify the data (no defaults, no coercion, no removal).
 */
export function createAjv(): Ajv {
  const ajv = new Ajv2020({
    strict: true,
    allowUnionTypes: true,
    allErrors: false,
    coerceTypes: false,
    useDefaults: false,
    removeAdditional: false,
    validateFormats: true,
  });
  for (const [name, validate] of Object.entries(FORMATS)) ajv.addFormat(name, { type: 'string', validate });
  return ajv;
}

/** The first validation error as `{ path, message }`: `/lat`, "/lat must be <= 90". */
export function describeValidationError(errors: readonly ErrorObject[] | null | undefined): { path: string; message: string } {
  let e = errors?.[0];
  if (!e || !errors) return { path: '', message: 'document does not match the schema' };
  // A failed anyOf/oneOf is reported after its branches' errors: when the branches failed at the
  // same place, say what each wanted ("must be integer or must be string").
  const last = errors[errors.length - 1];
  if (last && (last.keyword === 'anyOf' || last.keyword === 'oneOf') && errors.length > 1) {
    const branches = errors.slice(0, -1);
    if (branches.every((b) => b.instancePath === last.instancePath && b.keyword !== 'required' && b.keyword !== 'additionalProperties')) {
      const what = [...new Set(branches.map((b) => b.message ?? 'is invalid'))].join(' or ');
      return { path: last.instancePath, message: `${last.instancePath === '' ? 'document' : last.instancePath} ${what}` };
    }
    e = branches[0] ?? last;
  }
  let path = e.instancePath;
  let what = e.message ?? 'is invalid';
  const params = e.params as Record<string, unknown>;
  switch (e.keyword) {
    case 'required':
      path += `/${escapePointer(String(params['missingProperty']))}`;
      what = 'is required';
      break;
    case 'additionalProperties':
      path += `/${escapePointer(String(params['additionalProperty']))}`;
      what = 'is not an allowed property';
      break;
    case 'unevaluatedProperties':
      path += `/${escapePointer(String(params['unevaluatedProperty']))}`;
      what = 'is not an allowed property';
      break;
    case 'enum':
      if (Array.isArray(params['allowedValues'])) what += `: ${params['allowedValues'].map((v) => JSON.stringify(v)).join(', ')}`;
      break;
    case 'false schema': {
      const other = /\/dependentSchemas\/([^/]+)\//.exec(e.schemaPath)?.[1];
      what = other === undefined ? 'is not allowed here' : `is not allowed together with "${other.replace(/~1/g, '/').replace(/~0/g, '~')}"`;
      break;
    }
  }
  return { path, message: `${path === '' ? 'document' : path} ${what}` };
}

/**
 * Compiles a schema read from `file`. An invalid schema throws SchemaLoadError naming the file,
 * the line of the offending keyword (when it can be located in `source`) and the reason.
 */
export function compileSchema(ajv: Ajv, schema: unknown, file: string, source: string | undefined): ValidateFunction {
  if (typeof schema !== 'object' || schema === null || Array.isArray(schema)) {
    throw new SchemaLoadError(file, 1, 'a JSON Schema must be a JSON object');
  }
  const declared = (schema as Record<string, unknown>)['$schema'];
  if (declared !== undefined && declared !== 'https://json-schema.org/draft/2020-12/schema') {
    throw new SchemaLoadError(
      file,
      source === undefined ? undefined : lineOf(source, /"\$schema"\s*:/),
      `unsupported $schema ${JSON.stringify(declared)}: use "https://json-schema.org/draft/2020-12/schema" (or omit $schema)`,
    );
  }
  if (!ajv.validateSchema(schema)) {
    const e = ajv.errors?.[0];
    const at = e?.instancePath ?? '';
    const keyword = at.split('/').pop() || e?.keyword || 'schema';
    throw new SchemaLoadError(
      file,
      source === undefined ? undefined : lineOfPointer(source, at),
      `invalid JSON Schema: keyword "${keyword}" at ${at === '' ? '/' : at} ${e?.message ?? 'is invalid'}`,
    );
  }
  try {
    return ajv.compile(schema);
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    throw new SchemaLoadError(file, source === undefined ? undefined : lineOfCompileError(source, reason), `invalid JSON Schema: ${reason}`, { cause: err });
  }
}

/**
 * Line of a compile error: `at "#/a/b"` (strict mode) → that node, or its offending keyword when
 * the message names one; else the first quoted word (a keyword, format or $ref) in the source.
 */
function lineOfCompileError(source: string, reason: string): number | undefined {
  const path = /at (?:path )?"#([^"]*)"/.exec(reason)?.[1];
  if (path !== undefined) {
    const keyword = /keyword:? "([^"]+)"/.exec(reason)?.[1] ?? /\b(required) property\b/.exec(reason)?.[1];
    return lineOfPointer(source, keyword === undefined ? path : `${path}/${escapePointer(keyword)}`);
  }
  const quoted = /"([^"]+)"/.exec(reason)?.[1] ?? /reference (\S+)/.exec(reason)?.[1];
  return quoted === undefined ? undefined : lineOf(source, new RegExp(`"${escapeRegExp(quoted)}"`));
}

/** Line of the node at a JSON Pointer in JSON text (JSON is YAML 1.2, whose parser keeps source ranges). */
export function lineOfPointer(source: string, pointer: string): number | undefined {
  try {
    const lineCounter = new LineCounter();
    const doc = parseDocument(source, { lineCounter });
    if (doc.errors.length > 0) return undefined;
    let node: unknown = doc.contents;
    let last: YamlNode | null = doc.contents;
    const tokens = pointer === '' ? [] : pointer.slice(1).split('/').map((t) => t.replace(/~1/g, '/').replace(/~0/g, '~'));
    for (const token of tokens) {
      if (isMap(node)) {
        const pair = node.items.find((p) => (p.key as { value?: unknown } | null)?.value === token);
        if (!pair) break;
        last = (pair.key as YamlNode | null) ?? last;
        node = pair.value;
      } else if (isSeq(node)) {
        const item = node.items[Number(token)];
        if (item === undefined) break;
        node = item;
        last = item as YamlNode;
      } else break;
    }
    const offset = last?.range?.[0];
    return offset === undefined ? undefined : lineCounter.linePos(offset).line;
  } catch {
    return undefined;
  }
}
