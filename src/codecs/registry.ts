/**
 * Device types (contract §6): every `<type>.proto` / `<type>.schema.json` in the schemas dir plus
 * `types.yaml` (wire encoding per type), read and compiled once at start. A broken file stops the
 * start with a SchemaLoadError naming the file, the line and the reason.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isMap, isScalar, LineCounter, parseDocument, type Node as YamlNode } from 'yaml';
import { compileSchema, createAjv } from './ajv.js';
import type { CodecLimits, DeviceTypeCodec, Encoding, SchemaDescription } from './codec.js';
import { SchemaLoadError, lineAt } from './errors.js';
import { JsonCodec } from './json.js';
import { deriveJsonSchema } from './proto-json.js';
import { ProtobufCodec, parseProtoSchema } from './protobuf.js';

export { SchemaLoadError } from './errors.js';

/** Device type names: also the file stems in the schemas dir. */
export const TYPE_NAME = /^[a-z][a-z0-9_-]{0,63}$/;
/** The per-type configuration file in the schemas dir. */
export const TYPES_FILE = 'types.yaml';
/** The type every gateway knows, with or without a file. */
export const GENERIC_TYPE = 'generic';
/** `generic` when the schemas dir has no generic.schema.json / generic.proto. */
const GENERIC_SCHEMA = { $schema: 'https://json-schema.org/draft/2020-12/schema', type: 'object' };

const SCHEMA_FILE = /^(.+)\.(proto|schema\.json)$/;

/** Per-type settings from types.yaml. */
export interface TypeConfig {
  encoding: Encoding;
  /** Protobuf types only: payloads that look like JSON are decoded as JSON. */
  jsonFallback: boolean;
}

/** The schema files of the dir: type → file names; files whose stem is not a valid type name are listed apart. */
function classify(names: Iterable<string>): { types: Map<string, { proto?: string; jsonSchema?: string }>; ignored: string[]; hasConfig: boolean } {
  const types = new Map<string, { proto?: string; jsonSchema?: string }>();
  const ignored: string[] = [];
  let hasConfig = false;
  for (const name of names) {
    if (name === TYPES_FILE) {
      hasConfig = true;
      continue;
    }
    const m = SCHEMA_FILE.exec(name);
    if (!m?.[1]) continue;
    if (!TYPE_NAME.test(m[1])) {
      ignored.push(name);
      continue;
    }
    const entry = types.get(m[1]) ?? {};
    if (m[2] === 'proto') entry.proto = name;
    else entry.jsonSchema = name;
    types.set(m[1], entry);
  }
  return { types, ignored: ignored.sort(), hasConfig };
}

/**
 * Names of the device types in `schemasDir` (file stems, plus `generic`), without compiling
 * anything. Synchronous, for the CLI and for code that only needs to know whether a type exists.
 */
export function listDeviceTypes(schemasDir: string): Set<string> {
  const files = readdirSync(schemasDir, { withFileTypes: true }).filter((d) => !d.isDirectory()).map((d) => d.name);
  return new Set([GENERIC_TYPE, ...classify(files).types.keys()]);
}

/** The schema files of a dir, read into memory: name → text. */
type DirContents = Map<string, string>;

function wanted(name: string): boolean {
  return name === TYPES_FILE || SCHEMA_FILE.test(name);
}

function readDirSync(dir: string): DirContents {
  const out: DirContents = new Map();
  for (const d of readDirOrThrow(dir, () => readdirSync(dir, { withFileTypes: true }))) {
    if (!d.isDirectory() && wanted(d.name)) out.set(d.name, readFileSync(join(dir, d.name), 'utf8'));
  }
  return out;
}

async function readDirAsync(dir: string): Promise<DirContents> {
  const out: DirContents = new Map();
  let entries;
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch (err) {
    throw dirError(dir, err);
  }
  for (const d of entries) {
    if (!d.isDirectory() && wanted(d.name)) out.set(d.name, await readFile(join(dir, d.name), 'utf8'));
  }
  return out;
}

function readDirOrThrow<T>(dir: string, read: () => T): T {
  try {
    return read();
  } catch (err) {
    throw dirError(dir, err);
  }
}

function dirError(dir: string, err: unknown): SchemaLoadError {
  const code = (err as NodeJS.ErrnoException).code;
  return new SchemaLoadError(dir, undefined, code === 'ENOENT' ? 'schemas dir not found' : `cannot read the schemas dir: ${String(err)}`, { cause: err });
}

function checkLimits(limits: CodecLimits): CodecLimits {
  if (!Number.isSafeInteger(limits.maxBytes) || limits.maxBytes < 1) throw new TypeError(`limits.maxBytes must be a positive integer, got ${limits.maxBytes}`);
  if (!Number.isSafeInteger(limits.maxDepth) || limits.maxDepth < 1) throw new TypeError(`limits.maxDepth must be a positive integer, got ${limits.maxDepth}`);
  return Object.freeze({ maxBytes: limits.maxBytes, maxDepth: limits.maxDepth });
}

/**
 * Parses types.yaml: `<type>: {encoding: json|protobuf, jsonFallback?: bool}` per line. Unknown
 * types, encodings or keys are errors with their line.
 */
export function parseTypesConfig(file: string, source: string, known: ReadonlySet<string>): Map<string, Partial<TypeConfig> & { line?: number }> {
  const lineCounter = new LineCounter();
  const doc = parseDocument(source, { lineCounter, prettyErrors: false });
  const first = doc.errors[0];
  if (first) throw new SchemaLoadError(file, lineCounter.linePos(first.pos[0]).line, `invalid YAML: ${first.message}`);
  const lineOfNode = (n: unknown): number | undefined => {
    const offset = (n as YamlNode | null)?.range?.[0];
    return offset === undefined ? undefined : lineCounter.linePos(offset).line;
  };
  const out = new Map<string, Partial<TypeConfig> & { line?: number }>();
  if (doc.contents === null || (isScalar(doc.contents) && doc.contents.value === null)) return out;
  if (!isMap(doc.contents)) throw new SchemaLoadError(file, lineOfNode(doc.contents) ?? 1, 'expected a mapping of device type → {encoding, jsonFallback}');
  for (const pair of doc.contents.items) {
    const type = isScalar(pair.key) ? pair.key.value : undefined;
    const line = lineOfNode(pair.key);
    if (typeof type !== 'string') throw new SchemaLoadError(file, line, 'device type names must be strings');
    if (!known.has(type)) {
      throw new SchemaLoadError(file, line, `unknown device type "${type}": there is no ${type}.proto or ${type}.schema.json`);
    }
    const entry: Partial<TypeConfig> & { line?: number } = line === undefined ? {} : { line };
    const value = pair.value;
    if (value !== null && !(isScalar(value) && value.value === null)) {
      if (!isMap(value)) throw new SchemaLoadError(file, lineOfNode(value) ?? line, `"${type}": expected {encoding: json|protobuf, jsonFallback: true|false}`);
      for (const item of value.items) {
        const key = isScalar(item.key) ? item.key.value : undefined;
        const v = isScalar(item.value) ? item.value.value : undefined;
        const at = lineOfNode(item.value) ?? lineOfNode(item.key) ?? line;
        if (key === 'encoding') {
          if (v !== 'json' && v !== 'protobuf') {
            throw new SchemaLoadError(file, at, `"${type}": unknown encoding ${JSON.stringify(v ?? null)} (expected json or protobuf)`);
          }
          entry.encoding = v;
        } else if (key === 'jsonFallback') {
          if (typeof v !== 'boolean') throw new SchemaLoadError(file, at, `"${type}": jsonFallback must be true or false`);
          entry.jsonFallback = v;
        } else {
          throw new SchemaLoadError(file, lineOfNode(item.key) ?? line, `"${type}": unknown key ${JSON.stringify(key ?? null)} (expected encoding, jsonFallback)`);
        }
      }
    }
    out.set(type, entry);
  }
  return out;
}

/** Parses JSON schema text; a syntax error names its line (from the parser's position). */
function parseJsonFile(file: string, source: string): unknown {
  try {
    return JSON.parse(source);
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    const pos = /at position (\d+)/.exec(reason)?.[1];
    // At (or past) the end of the text: the last line with content, not the empty one after the final newline.
    const end = source.trimEnd().length;
    const line = lineAt(source, pos === undefined ? end : Math.min(Number(pos), end));
    throw new SchemaLoadError(file, line, `invalid JSON: ${reason.replace(/ in JSON at position \d+.*$/, '')}`, { cause: err });
  }
}

/** Every loaded device type, compiled. Immutable once loaded; reload = load again. */
export class SchemaRegistry {
  readonly #codecs: ReadonlyMap<string, DeviceTypeCodec>;
  /** The dir the types were loaded from. */
  readonly dir: string;
  /** Schema files skipped because their stem is not a valid type name (for a warning at start). */
  readonly ignoredFiles: readonly string[];

  private constructor(dir: string, codecs: Map<string, DeviceTypeCodec>, ignored: string[]) {
    this.dir = dir;
    this.#codecs = codecs;
    this.ignoredFiles = Object.freeze(ignored);
  }

  /** Reads and compiles every device type of `dir`. Rejects with SchemaLoadError on any broken file. */
  static async load(dir: string, limits: CodecLimits): Promise<SchemaRegistry> {
    return SchemaRegistry.#build(dir, await readDirAsync(dir), checkLimits(limits));
  }

  /** Same as `load`, synchronously (for the CLI). Throws SchemaLoadError. */
  static loadSync(dir: string, limits: CodecLimits): SchemaRegistry {
    return SchemaRegistry.#build(dir, readDirSync(dir), checkLimits(limits));
  }

  static #build(dir: string, contents: DirContents, limits: CodecLimits): SchemaRegistry {
    const { types: files, ignored } = classify(contents.keys());
    const known = new Set([GENERIC_TYPE, ...files.keys()]);
    const typesFile = join(dir, TYPES_FILE);
    const typesSource = contents.get(TYPES_FILE);
    const config = typesSource === undefined ? new Map<string, Partial<TypeConfig> & { line?: number }>() : parseTypesConfig(typesFile, typesSource, known);
    const ajv = createAjv();
    const codecs = new Map<string, DeviceTypeCodec>();

    for (const type of [...known].sort()) {
      const f = files.get(type) ?? {};
      const cfg = config.get(type) ?? {};
      const encoding: Encoding = cfg.encoding ?? (f.proto ? 'protobuf' : 'json');
      const jsonFallback = cfg.jsonFallback ?? false;
      if (encoding === 'protobuf' && !f.proto) {
        throw new SchemaLoadError(typesFile, cfg.line, `"${type}": encoding protobuf needs a ${type}.proto`);
      }
      if (jsonFallback && encoding !== 'protobuf') {
        throw new SchemaLoadError(typesFile, cfg.line, `"${type}": jsonFallback applies to encoding protobuf only`);
      }

      let validate;
      let jsonSchema: unknown;
      if (f.jsonSchema) {
        const file = join(dir, f.jsonSchema);
        const source = contents.get(f.jsonSchema) ?? '';
        jsonSchema = parseJsonFile(file, source);
        validate = compileSchema(ajv, jsonSchema, file, source);
      } else if (type === GENERIC_TYPE && !f.proto) {
        jsonSchema = GENERIC_SCHEMA;
        validate = compileSchema(ajv, jsonSchema, '(built-in generic schema)', undefined);
      }
      const fileNames = [f.proto, f.jsonSchema].filter((x): x is string => x !== undefined);

      if (f.proto) {
        const file = join(dir, f.proto);
        const schema = parseProtoSchema(type, file, contents.get(f.proto) ?? '');
        const derivedJsonSchema = deriveJsonSchema(schema.telemetry, f.proto);
        const derivedValidate = compileSchema(ajv, derivedJsonSchema, `${file} (derived JSON Schema)`, undefined);
        codecs.set(
          type,
          new ProtobufCodec({ type, encoding, jsonFallback, limits, schema, file, validate, jsonSchema, derivedValidate, derivedJsonSchema, files: fileNames }),
        );
      } else {
        codecs.set(type, new JsonCodec({ type, limits, validate, jsonSchema, files: fileNames }));
      }
    }
    return new SchemaRegistry(dir, codecs, ignored);
  }

  has(type: string): boolean {
    return this.#codecs.has(type);
  }

  get(type: string): DeviceTypeCodec | undefined {
    return this.#codecs.get(type);
  }

  /** Type names, sorted. */
  types(): string[] {
    return [...this.#codecs.keys()];
  }

  describe(type: string): SchemaDescription | undefined {
    return this.#codecs.get(type)?.describe();
  }

  /** Every type's description, sorted by type name (`GET /v1/schemas`). */
  describeAll(): SchemaDescription[] {
    return [...this.#codecs.values()].map((c) => c.describe());
  }
}
