/**
 * The Lambda bundles: the size of each `assets/<name>/index.js` (minified, its AWS SDK clients
 * included) and how long a fresh Node.js process takes to load it (the cold-start cost the bundle
 * adds), median of 7 loads in new processes.
 *
 * Targets: at most 1 MiB each, and loaded in under 250 ms.
 *
 *   npx projen bundle && BENCH=bundles npm run bench
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { BenchResult } from './run';

const ASSETS = path.join(__dirname, '..', 'assets');
const MAX_BYTES = 1024 * 1024;
const MAX_LOAD_MS = 250;
const LOADS = 7;

/** Milliseconds a new process spends in `require(file)`, as the process itself measures it. */
function loadMs(file: string): number {
  const script = `const t=process.hrtime.bigint();require(${JSON.stringify(file)});process.stdout.write(String(Number(process.hrtime.bigint()-t)/1e6))`;
  return Number(execFileSync(process.execPath, ['-e', script], { encoding: 'utf8', env: { PATH: process.env.PATH ?? '' } }));
}

export async function run(): Promise<BenchResult> {
  if (!fs.existsSync(ASSETS)) throw new Error(`${ASSETS} is missing: run 'npx projen bundle' first`);
  const names = fs.readdirSync(ASSETS).filter((n) => n !== 'vmie' && fs.existsSync(path.join(ASSETS, n, 'index.js'))).sort();
  const rows = names.map((name) => {
    const file = path.join(ASSETS, name, 'index.js');
    const bytes = fs.statSync(file).size;
    const times = Array.from({ length: LOADS }, () => loadMs(file)).sort((a, b) => a - b);
    const median = times[Math.floor(LOADS / 2)];
    return {
      'bundle': name,
      'KiB': Math.round(bytes / 1024),
      'load ms (median)': Number(median.toFixed(1)),
      'load ms (max)': Number(times[LOADS - 1].toFixed(1)),
      'ok': bytes <= MAX_BYTES && median < MAX_LOAD_MS,
    };
  });
  return {
    title: 'Lambda bundles: size and load time in a fresh Node.js process',
    columns: ['bundle', 'KiB', 'load ms (median)', 'load ms (max)', 'ok'],
    rows,
    targets: [`each bundle at most ${MAX_BYTES / 1024} KiB`, `loaded in under ${MAX_LOAD_MS} ms`],
    passed: rows.every((r) => r.ok),
    details: { node: process.version, cpus: os.cpus().length, model: os.cpus()[0]?.model, loads: LOADS },
  };
}
