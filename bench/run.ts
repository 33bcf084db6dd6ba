/**
 * Runs the benchmarks: every module `bench/<name>.ts` (this file aside) that exports an async
 * `run()`, or only those named on the command line. Each result is written to
 * `bench/results/<name>.json` and printed as a table. The exit code is 1 when a target is missed.
 * The names may also come from the `BENCH` environment variable (comma- or space-separated).
 *
 *   npm run bench                # all
 *   BENCH=inspect npm run bench  # bench/inspect.ts only
 *   BENCH=convert npm run bench  # bench/convert.ts only
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

/** A cell of a result table. */
export type Cell = string | number | boolean;

/** What a benchmark module's `run()` returns. */
export interface BenchResult {
  /** What was measured, in one line. */
  readonly title: string;
  /** The columns of `rows`, in order. */
  readonly columns: readonly string[];
  readonly rows: ReadonlyArray<Readonly<Record<string, Cell>>>;
  /** The targets, in words. */
  readonly targets: readonly string[];
  /** Whether every row met its targets. */
  readonly passed: boolean;
  /** Anything the reader of the results should know. */
  readonly notes?: readonly string[];
  /** Every figure behind the table, and the machine, for the results file (not printed). */
  readonly details?: Readonly<Record<string, unknown>>;
}

/** A benchmark module. */
export interface BenchModule {
  run(): Promise<BenchResult>;
}

const BENCH_DIR = __dirname;
const RESULTS_DIR = path.join(BENCH_DIR, 'results');

/** The benchmark modules in bench/, by name. */
function modules(): string[] {
  return fs
    .readdirSync(BENCH_DIR)
    .filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts') && f !== 'run.ts')
    .map((f) => f.slice(0, -3))
    .sort();
}

/** The result as an aligned text table. */
export function formatTable(result: BenchResult): string {
  const cell = (v: Cell | undefined) => (v === undefined ? '' : typeof v === 'boolean' ? (v ? 'yes' : 'NO') : String(v));
  const widths = result.columns.map((c) => Math.max(c.length, ...result.rows.map((r) => cell(r[c]).length)));
  const line = (cells: string[]) => cells.map((c, i) => (/^-?[\d.]+$/.test(c) ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join('  ').trimEnd();
  return [line([...result.columns]), line(widths.map((w) => '-'.repeat(w))), ...result.rows.map((r) => line(result.columns.map((c) => cell(r[c]))))].join('\n');
}

/** Builds `file` with `build` unless it is there already (written to a temporary name first). */
export function once(file: string, build: (tmp: string) => void): string {
  if (fs.existsSync(file)) return file;
  const tmp = `${file}.tmp`;
  fs.rmSync(tmp, { force: true });
  build(tmp);
  fs.renameSync(tmp, file);
  return file;
}

async function main(): Promise<void> {
  const fromArgs = process.argv.slice(2);
  const wanted = fromArgs.length ? fromArgs : (process.env.BENCH ?? '').split(/[\s,]+/).filter(Boolean);
  const all = modules();
  const unknown = wanted.filter((w) => !all.includes(w));
  if (unknown.length) throw new Error(`no benchmark named ${unknown.join(', ')} (there are: ${all.join(', ')})`);
  fs.mkdirSync(RESULTS_DIR, { recursive: true });
  let failed = false;
  for (const name of wanted.length ? wanted : all) {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const mod = require(path.join(BENCH_DIR, name)) as Partial<BenchModule>;
    if (typeof mod.run !== 'function') continue;
    process.stdout.write(`\n== ${name}\n`);
    const started = Date.now();
    const result = await mod.run();
    const record = {
      name,
      date: new Date().toISOString(),
      environment: { node: process.version, platform: `${os.platform()} ${os.arch()}`, cpus: os.cpus().length, cpu: os.cpus()[0]?.model ?? '' },
      wallSeconds: Math.round((Date.now() - started) / 100) / 10,
      ...result,
    };
    fs.writeFileSync(path.join(RESULTS_DIR, `${name}.json`), JSON.stringify(record, null, 2) + '\n');
    process.stdout.write(`${result.title}\n\n${formatTable(result)}\n\n`);
    for (const t of result.targets) process.stdout.write(`target: ${t}\n`);
    for (const n of result.notes ?? []) process.stdout.write(`note: ${n}\n`);
    process.stdout.write(`${result.passed ? 'all targets met' : 'TARGETS MISSED'} (results in bench/results/${name}.json)\n`);
    if (!result.passed) failed = true;
  }
  if (failed) process.exitCode = 1;
}

if (require.main === module) {
  main().catch((e) => {
    process.stderr.write(`${(e as Error).stack ?? e}\n`);
    process.exitCode = 1;
  });
}
