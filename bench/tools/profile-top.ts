/**
 * Top self-time functions of a V8 CPU profile (`iotgate bench --cpu-prof DIR` writes one per
 * iotgate process), and self time by package or source directory:
 *   node dist/bench/tools/profile-top.js DIR/CPU.*.cpuprofile [--top 25]
 */
import { readFileSync } from 'node:fs';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples?: number[];
}

/** Where a function lives: `aedes`, `src/core`, `protocols/mqtt`, `node:internal`, `(gc)`... */
export function bucketOf(url: string, name: string): string {
  if (url === '') return name.startsWith('(') ? name : '(native)';
  const nm = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (nm) return nm[1] as string;
  if (url.startsWith('node:')) return 'node:internal';
  const own = /\/(src|protocols|bench)\/([^/]+)\//.exec(url);
  if (own) return `${own[1]}/${own[2]}`;
  return url.replace(/^.*\//, '');
}

export interface ProfileSummary {
  totalMs: number;
  functions: { name: string; where: string; selfMs: number; pct: number }[];
  buckets: { bucket: string; selfMs: number; pct: number }[];
}

export function summarize(profile: CpuProfile, top = 25): ProfileSummary {
  const samples = profile.samples?.length ?? 0;
  const totalMs = (profile.endTime - profile.startTime) / 1000;
  const msPerHit = samples > 0 ? totalMs / samples : 0;
  const byFn = new Map<string, { name: string; where: string; hits: number }>();
  const byBucket = new Map<string, number>();
  let idleHits = 0;
  for (const n of profile.nodes) {
    const hits = n.hitCount ?? 0;
    if (hits === 0) continue;
    const { functionName, url, lineNumber } = n.callFrame;
    const name = functionName || '(anonymous)';
    if (name === '(idle)') {
      idleHits += hits;
      continue;
    }
    const where = url ? `${url.replace(/^.*\/(node_modules|src|protocols|bench)\//, '$1/')}:${lineNumber + 1}` : '';
    const key = `${name}@${where}`;
    const e = byFn.get(key) ?? { name, where, hits: 0 };
    e.hits += hits;
    byFn.set(key, e);
    const b = bucketOf(url, name);
    byBucket.set(b, (byBucket.get(b) ?? 0) + hits);
  }
  const busyHits = samples - idleHits;
  const pct = (h: number) => Math.round((h / Math.max(1, busyHits)) * 1000) / 10;
  return {
    totalMs: Math.round(totalMs),
    functions: [...byFn.values()]
      .sort((a, b) => b.hits - a.hits)
      .slice(0, top)
      .map((f) => ({ name: f.name, where: f.where, selfMs: Math.round(f.hits * msPerHit), pct: pct(f.hits) })),
    buckets: [...byBucket.entries()].sort((a, b) => b[1] - a[1]).map(([bucket, hits]) => ({ bucket, selfMs: Math.round(hits * msPerHit), pct: pct(hits) })),
  };
}

function main(argv: string[]): void {
  const topAt = argv.indexOf('--top');
  const top = topAt >= 0 ? Number(argv[topAt + 1]) : 25;
  const files = argv.filter((a, i) => !a.startsWith('--') && argv[i - 1] !== '--top');
  for (const file of files) {
    const s = summarize(JSON.parse(readFileSync(file, 'utf8')) as CpuProfile, top);
    console.log(`${file}: ${s.totalMs} ms profiled; % of non-idle samples`);
    console.log('  self  %   function (where)');
    for (const f of s.functions) console.log(`  ${String(f.pct).padStart(5)}  ${f.name} (${f.where})`);
    console.log('  by package / directory:');
    for (const b of s.buckets.slice(0, 15)) console.log(`  ${String(b.pct).padStart(5)}  ${b.bucket}`);
  }
}

if (process.argv[1] && import.meta.url.endsWith(process.argv[1].replace(/^.*\//, ''))) main(process.argv.slice(2));
