/**
 * Loads the configuration: defaults ← file (YAML or JSON, `--config`) ← IOTGATE_* environment.
 * This is the only module that reads process.env (style rule 6).
 */
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { configSchema, type Config } from './schema.js';

/** Thrown for a bad config; `lines` holds one line per bad key, ready for stderr (exit code 2). */
export class ConfigError extends Error {
  readonly lines: string[];
  constructor(lines: string[]) {
    super(lines.join('\n'));
    this.name = 'ConfigError';
    this.lines = lines;
  }
}

export const ENV_PREFIX = 'IOTGATE_';

type Leaf = { path: string[]; env: string; structured: boolean };

function unwrap(schema: z.ZodType): z.ZodType {
  let s: z.ZodType = schema;
  for (;;) {
    if (s instanceof z.ZodDefault || s instanceof z.ZodPrefault || s instanceof z.ZodOptional || s instanceof z.ZodNullable) {
      s = s.unwrap() as z.ZodType;
    } else if (s instanceof z.ZodPipe) {
      s = s.in as z.ZodType;
    } else {
      return s;
    }
  }
}

const snake = (k: string): string => k.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase();

function collectLeaves(schema: z.ZodType, path: string[], out: Leaf[]): void {
  const s = unwrap(schema);
  if (s instanceof z.ZodObject) {
    for (const [key, child] of Object.entries(s.shape as Record<string, z.ZodType>)) collectLeaves(child, [...path, key], out);
    return;
  }
  const structured = s instanceof z.ZodArray || s instanceof z.ZodRecord || (s instanceof z.ZodUnion && s.options.some((o) => unwrap(o as z.ZodType) instanceof z.ZodArray));
  out.push({ path, env: ENV_PREFIX + path.map(snake).join('_'), structured });
}

/** Every configurable key with its environment variable name (for docs and `--help`). */
export const CONFIG_KEYS: readonly Leaf[] = (() => {
  const out: Leaf[] = [];
  collectLeaves(configSchema, [], out);
  return out;
})();

const ENV_BY_PATH = new Map(CONFIG_KEYS.map((l) => [l.path.join('.'), l.env]));

function setPath(target: Record<string, unknown>, path: string[], value: unknown): void {
  let node = target;
  for (const key of path.slice(0, -1)) {
    const next = node[key];
    if (next === null || typeof next !== 'object' || Array.isArray(next)) node[key] = {};
    node = node[key] as Record<string, unknown>;
  }
  node[path[path.length - 1] as string] = value;
}

function getPath(source: unknown, path: readonly PropertyKey[]): unknown {
  let node = source;
  for (const key of path) {
    if (node === null || typeof node !== 'object') return undefined;
    node = (node as Record<PropertyKey, unknown>)[key];
  }
  return node;
}

function allowed(issue: z.core.$ZodIssue): string {
  // Messages written in schema.ts say what is allowed in their own words.
  if (issue.message.startsWith('expected ')) return issue.message;
  switch (issue.code) {
    case 'invalid_type':
      return `expected ${issue.expected}`;
    case 'too_small':
      return issue.origin === 'string' ? `expected at least ${issue.minimum} characters` : `expected a value >= ${issue.minimum}`;
    case 'too_big':
      return issue.origin === 'string' ? `expected at most ${issue.maximum} characters` : `expected a value <= ${issue.maximum}`;
    case 'invalid_value':
      return `expected one of ${issue.values.map((v) => JSON.stringify(v)).join(', ')}`;
    case 'invalid_format':
      return issue.format === 'url' ? 'expected a URL' : `expected ${issue.format} format`;
    case 'unrecognized_keys':
      return 'unknown key';
    default:
      return issue.message;
  }
}

function show(value: unknown): string {
  if (value === undefined) return '(missing)';
  const s = typeof value === 'string' ? JSON.stringify(value) : JSON.stringify(value) ?? String(value);
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}

/**
 * Builds the frozen config. `file` is a YAML/JSON path (or undefined); `env` is normally
 * process.env. Throws ConfigError with one line per bad key.
 */
export function loadConfig(file: string | undefined, env: NodeJS.ProcessEnv = process.env): Config {
  let input: Record<string, unknown> = {};
  const path = file ?? env[`${ENV_PREFIX}CONFIG`];
  if (path) {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (e) {
      throw new ConfigError([`config: cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`]);
    }
    let parsed: unknown;
    try {
      parsed = parseYaml(text);
    } catch (e) {
      throw new ConfigError([`config: ${path} is not valid YAML/JSON: ${(e as Error).message.split('\n')[0]}`]);
    }
    if (parsed !== null && parsed !== undefined && (typeof parsed !== 'object' || Array.isArray(parsed))) {
      throw new ConfigError([`config: ${path} must hold a mapping of keys at the top level`]);
    }
    input = (parsed ?? {}) as Record<string, unknown>;
  }

  const envLines: string[] = [];
  for (const leaf of CONFIG_KEYS) {
    const raw = env[leaf.env];
    if (raw === undefined) continue;
    let value: unknown = raw;
    if (leaf.structured && (raw.trim().startsWith('[') || raw.trim().startsWith('{'))) {
      try {
        value = JSON.parse(raw);
      } catch {
        envLines.push(`config: ${leaf.path.join('.')} (${leaf.env}) = ${show(raw)}: expected a JSON array or a comma-separated list`);
        continue;
      }
    }
    setPath(input, leaf.path, value);
  }

  const result = configSchema.safeParse(input);
  if (result.success && envLines.length === 0) return deepFreeze(result.data);

  const lines = [...envLines];
  for (const issue of result.success ? [] : result.error.issues) {
    if (issue.code === 'unrecognized_keys') {
      for (const key of issue.keys) {
        const keyPath = [...issue.path.map(String), key].join('.');
        lines.push(`config: ${keyPath} = ${show(getPath(input, [...issue.path, key]))}: unknown key`);
      }
      continue;
    }
    const keyPath = issue.path.map(String).join('.');
    const envName = ENV_BY_PATH.get(keyPath);
    // Header values (webhook credentials) are never echoed.
    const value = issue.path.includes('headers') ? '[Redacted]' : show(getPath(input, issue.path));
    lines.push(`config: ${keyPath}${envName ? ` (${envName})` : ''} = ${value}: ${allowed(issue)}`);
  }
  throw new ConfigError(lines);
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object') {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}
