/** Checks shared by every codec: nesting depth, device timestamps, Timestamp → ISO 8601. */

/**
 * JSON Pointer of the first container nested deeper than `max`, or null when the document fits.
 * `value` is a container at `depth` (the top-level object is depth 1). The recursion stops one level
 * past the limit, so a hostile document cannot blow the stack; no allocation unless it fails.
 */
export function tooDeepAt(value: object, depth: number, max: number): string | null {
  if (depth > max) return '';
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const v: unknown = value[i];
      if (typeof v === 'object' && v !== null) {
        const at = tooDeepAt(v, depth + 1, max);
        if (at !== null) return `/${i}${at}`;
      }
    }
  } else {
    const obj = value as Record<string, unknown>;
    for (const k in obj) {
      const v = obj[k];
      if (typeof v === 'object' && v !== null) {
        const at = tooDeepAt(v, depth + 1, max);
        if (at !== null) return `/${escapePointer(k)}${at}`;
      }
    }
  }
  return null;
}

/** Escapes one JSON Pointer reference token (RFC 6901 §3). */
export function escapePointer(token: string): string {
  return token.includes('~') || token.includes('/') ? token.replace(/~/g, '~0').replace(/\//g, '~1') : token;
}

/** Device timestamps outside [2000-01-01, 2100-01-01) are treated as absent (unset clocks, seconds sent as ms). */
export const DEVICE_TIME_MIN = Date.UTC(2000, 0, 1);
export const DEVICE_TIME_MAX = Date.UTC(2100, 0, 1);

/** Epoch ms from a device-supplied time (epoch ms number, or RFC 3339 string with a zone), or null if absent or not sane. */
export function deviceTimeOf(v: unknown): number | null {
  let ms: number;
  if (typeof v === 'number') ms = v;
  else if (typeof v === 'string') {
    const ts = parseRfc3339(v);
    if (ts === null) return null;
    ms = ts.seconds * 1000 + Math.floor(ts.nanos / 1_000_000);
  } else return null;
  return Number.isFinite(ms) && ms >= DEVICE_TIME_MIN && ms < DEVICE_TIME_MAX ? Math.floor(ms) : null;
}

const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:[Zz]|([+-])(\d{2}):(\d{2}))$/;

/** An RFC 3339 date-time (zone required) as Timestamp seconds + nanos, exactly (no rounding to ms); null if malformed. */
export function parseRfc3339(s: string): { seconds: number; nanos: number } | null {
  const m = RFC3339.exec(s);
  if (!m) return null;
  const n = (i: number): number => Number(m[i] ?? 0);
  if (n(2) < 1 || n(2) > 12 || n(3) < 1 || n(3) > 31 || n(4) > 23 || n(5) > 59 || n(6) > 60) return null;
  // setUTCFullYear, not Date.UTC: Date.UTC maps years 0-99 to 1900-1999.
  const d = new Date(0);
  d.setUTCFullYear(n(1), n(2) - 1, n(3));
  if (d.getUTCDate() !== n(3)) return null;
  d.setUTCHours(n(4), n(5), n(6), 0);
  const offsetMin = m[8] === undefined ? 0 : (m[8] === '-' ? -1 : 1) * (n(9) * 60 + n(10));
  return { seconds: d.getTime() / 1000 - offsetMin * 60, nanos: Number((m[7] ?? '').padEnd(9, '0')) };
}

/** Valid range of google.protobuf.Timestamp: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z. */
const TS_MIN_SECONDS = -62_135_596_800;
const TS_MAX_SECONDS = 253_402_300_799;

const two = (n: number): string => (n < 10 ? `0${n}` : String(n));

/**
 * `YYYY-MM-DDTHH:MM:SS` (UTC) of epoch seconds in the Timestamp range, as
 * `new Date(s * 1000).toISOString().slice(0, 19)` gives it, without a Date per call (this runs
 * for every Timestamp of every protobuf message): days → civil date after H. Hinnant's
 * `civil_from_days` (http://howardhinnant.github.io/date_algorithms.html).
 */
function utcDateTime(seconds: number): string {
  const days = Math.floor(seconds / 86_400);
  const sod = seconds - days * 86_400;
  const z = days + 719_468;
  const era = Math.floor(z / 146_097);
  const doe = z - era * 146_097;
  const yoe = Math.floor((doe - Math.floor(doe / 1460) + Math.floor(doe / 36_524) - Math.floor(doe / 146_096)) / 365);
  const doy = doe - (365 * yoe + Math.floor(yoe / 4) - Math.floor(yoe / 100));
  const mp = Math.floor((5 * doy + 2) / 153);
  const day = doy - Math.floor((153 * mp + 2) / 5) + 1;
  const month = mp < 10 ? mp + 3 : mp - 9;
  const year = yoe + era * 400 + (month <= 2 ? 1 : 0);
  const hh = Math.floor(sod / 3600);
  const mm = Math.floor((sod % 3600) / 60);
  return `${String(year).padStart(4, '0')}-${two(month)}-${two(day)}T${two(hh)}:${two(mm)}:${two(sod % 60)}`;
}

/**
 * RFC 3339 UTC string for a google.protobuf.Timestamp, or null when out of range. Fractional
 * seconds have 3 digits (like `Date.prototype.toISOString`), 6 or 9 when the nanos need them.
 */
export function timestampToIso(seconds: number, nanos: number): string | null {
  if (!Number.isSafeInteger(seconds) || seconds < TS_MIN_SECONDS || seconds > TS_MAX_SECONDS) return null;
  if (!Number.isInteger(nanos) || nanos < 0 || nanos > 999_999_999) return null;
  const frac =
    nanos % 1_000_000 === 0
      ? String(nanos / 1_000_000).padStart(3, '0')
      : nanos % 1000 === 0
        ? String(nanos / 1000).padStart(6, '0')
        : String(nanos).padStart(9, '0');
  return `${utcDateTime(seconds)}.${frac}Z`;
}
