/** Loading errors of the schema layer: a broken schema file stops the start (contract §6). */

/** A schema file that cannot be loaded. The message names the file, the line when known, and the reason. */
export class SchemaLoadError extends Error {
  /** Path of the offending file, as found in the schemas dir. */
  readonly file: string;
  /** 1-based line of the problem, when it can be located. */
  readonly line: number | undefined;
  /** The problem itself, without file or line. */
  readonly reason: string;

  constructor(file: string, line: number | undefined, reason: string, opts: { cause?: unknown } = {}) {
    super(`${file}${line === undefined ? '' : ` line ${line}`}: ${reason}`, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'SchemaLoadError';
    this.file = file;
    this.line = line;
    this.reason = reason;
  }
}

/** 1-based line of a character offset in `text`. */
export function lineAt(text: string, offset: number): number {
  let line = 1;
  const end = Math.min(offset, text.length);
  for (let i = 0; i < end; i++) if (text.charCodeAt(i) === 10) line++;
  return line;
}

/** 1-based line of the first match of `re` in `text`, or undefined. */
export function lineOf(text: string, re: RegExp): number | undefined {
  const m = re.exec(text);
  return m ? lineAt(text, m.index) : undefined;
}

/** Escapes a string for use inside a RegExp. */
export function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
