/**
 * What a conversion to stream-optimized VMDK costs, against `qemu-img convert -O vmdk -o
 * subformat=streamOptimized` on the same machine in the same run: throughput (virtual bytes per
 * second, best of three), output size, and the peak memory of our conversion for a 1 GiB and a
 * 4 GiB disk. Inputs: a raw disk, and the same disk as qcow2 and VDI (made by qemu-img).
 *
 * The disk is realistic rather than synthetic: a GPT (sfdisk) with a FAT32 ESP (mkfs.vfat) and a
 * 600 MiB ext4 root (mke2fs) filled with a fixed sample of this machine's /usr/lib and /usr/share
 * (binaries, libraries, text, already-compressed data), the rest of the disk zeros. The 4 GiB
 * disk holds the same partitions plus a 600 MiB ext4 of the next files of the sample, the rest
 * zeros. The sample is the files ordered by the SHA-256 of their path, so the same tree gives the
 * same files; GUIDs, volume ids, hash seed and clocks are fixed, so the same files give the same
 * bytes. The SHA-256 of the file list and of each disk are recorded with the results.
 *
 * Each conversion runs in a child process (ours: a bundle of this file calling `convert()` as
 * `vmie convert` does), under `/usr/bin/time -v` when it is installed, for the peak RSS. Every
 * output is checked once with `qemu-img compare` before any figure is reported.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { once, type BenchResult, type Cell } from './run';
import { convert, FileSink } from '../lambda/disk/convert';
import type { Sink } from '../lambda/disk/convert';
import type { DiskImage } from '../lambda/disk/image';
import { openDiskImage } from '../lambda/disk/inspect';
import { CachedSource, FileSource } from '../lambda/disk/source';
import { partitionsOf, rawDisk, run as runTool, tool } from '../test/helpers/fixtures';

const WORK = path.join(__dirname, '.work');
const MiB = 1024 ** 2;
const GiB = 1024 ** 3;

/** Targets, from the issue. */
const MIN_SPEEDUP = 1.5;
const GOAL_SPEEDUP = 2;
const MAX_SIZE_RATIO = 1.05;
const MAX_RSS = 512 * MiB;
/** "About the same" peak RSS for 1 and 4 GiB: the 4 GiB peak at most this much above the 1 GiB one. */
const MAX_RSS_GROWTH = 1.25;
/** Timed runs per tool and input; the best is reported. */
const REPEAT = 3;

/** The disk layout: an ESP, the root with the sample's first part, and on 4 GiB a data volume. */
const ESP_MIB = 64;
const ROOT_MIB = 600;
const DATA_MIB = 600;
/** Bytes of files copied into each ext4 volume (the rest is the filesystem's own metadata and free space). */
const FILL_BYTES = 420 * MiB;
/** Files larger than this are left out of the sample, so that no single file dominates it. */
const MAX_FILE_BYTES = 16 * MiB;
const SAMPLE_ROOTS = ['/usr/lib', '/usr/share'];
/** Fixed identity and clock of the filesystems, for the same bytes on every build. */
const FIXED_TIME = 1700000000;
const FS_UUID = ['3c1d4f52-9a8e-4b1e-8f0a-6d2b7c9e5a10', '7e2a9c41-5b3d-4f6e-a1c8-0d9f8e7b6a52'];
const HASH_SEED = '5f0e8d7c-6b5a-4c3d-9e2f-1a0b9c8d7e6f';
const DISK_ID = 'c0a1d2e3-f4a5-4b6c-8d7e-9f0a1b2c3d4e';
const PART_UUID = ['0e5f1a2b-3c4d-4e5f-8a6b-7c8d9e0f1a2b', '1f6a2b3c-4d5e-4f6a-9b7c-8d9e0f1a2b3c', '2a7b3c4d-5e6f-4a7b-8c8d-9e0f1a2b3c4d'];
const ESP_VOLUME_ID = '5ec0de01';
/** The recipe's version: part of the cached images' names, so a changed recipe rebuilds them. */
const RECIPE = 'r3';

// ---------------------------------------------------------------------------------------------
// The images

/** A file of the sample: its path and size. */
interface SampleFile {
  readonly path: string;
  readonly size: number;
}

/** Paths the debugfs command language takes as they are (no spaces, quotes or escapes). */
const PLAIN_PATH = /^[\w.+@,:=~%/-]+$/;

/** Regular files under `roots` (symbolic links, unreadable files and unusual names left out). */
function listFiles(roots: readonly string[]): SampleFile[] {
  const out: SampleFile[] = [];
  const walk = (dir: string): void => {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) {
        walk(p);
      } else if (e.isFile() && PLAIN_PATH.test(p)) {
        try {
          fs.accessSync(p, fs.constants.R_OK);
          const size = fs.statSync(p).size;
          if (size > 0 && size <= MAX_FILE_BYTES) out.push({ path: p, size });
        } catch {
          // unreadable: not part of the sample
        }
      }
    }
  };
  for (const r of roots) walk(r);
  return out;
}

/** The sample: the files ordered by the SHA-256 of their path, cut into volumes of {@link FILL_BYTES}. */
function sampleVolumes(count: number): { volumes: SampleFile[][]; listSha256: string } {
  const key = (p: string) => createHash('sha256').update(p).digest('hex');
  const files = listFiles(SAMPLE_ROOTS)
    .map((f) => ({ f, k: key(f.path) }))
    .sort((a, b) => (a.k < b.k ? -1 : a.k > b.k ? 1 : 0))
    .map((x) => x.f);
  const volumes: SampleFile[][] = [];
  let i = 0;
  for (let v = 0; v < count; v++) {
    const vol: SampleFile[] = [];
    let bytes = 0;
    while (i < files.length && bytes < FILL_BYTES) {
      if (bytes + files[i].size <= FILL_BYTES) {
        vol.push(files[i]);
        bytes += files[i].size;
      }
      i++;
    }
    volumes.push(vol.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0)));
  }
  const list = createHash('sha256');
  for (const vol of volumes) for (const f of vol) list.update(`${f.path}\t${f.size}\n`);
  return { volumes, listSha256: list.digest('hex') };
}

/**
 * Gives the disk made by {@link rawDisk} a fixed identity: the GPT's disk and partition GUIDs (set
 * with sfdisk) and the ESP's FAT32 volume id (the ESP made again by mkfs.vfat, invariant).
 */
function fixIdentity(disk: string, parts: ReadonlyArray<{ start: number; size: number }>): void {
  runTool('sfdisk', ['--quiet', '--no-reread', '--no-tell-kernel', '--disk-id', disk, DISK_ID]);
  parts.forEach((_, i) => runTool('sfdisk', ['--quiet', '--no-reread', '--no-tell-kernel', '--part-uuid', disk, String(i + 1), PART_UUID[i]]));
  const esp = parts[0];
  runTool('mkfs.vfat', ['-F', '32', '-i', ESP_VOLUME_ID, '--invariant', `--offset=${esp.start / 512}`, disk, String(Math.floor(esp.size / 1024))]);
}

/**
 * Makes an ext4 filesystem in the partition at `start` of `disk` (mke2fs) and writes `files` into
 * it, at their own paths (debugfs `mkdir` and `write`). debugfs stamps what it creates with the
 * filesystem's clock, which {@link FIXED_TIME} fixes; `mke2fs -d` would copy each source file's
 * change time, which differs from one machine state to the next.
 */
function ext4With(disk: string, start: number, size: number, files: readonly SampleFile[], uuid: string, label: string): void {
  const env = { ...process.env, E2FSPROGS_FAKE_TIME: String(FIXED_TIME) };
  execFileSync(
    tool('mke2fs'),
    ['-q', '-F', '-t', 'ext4', '-b', '4096', '-L', label, '-U', uuid, '-E', `offset=${start},hash_seed=${HASH_SEED},root_owner=0:0`, disk, `${Math.floor(size / 1024)}k`],
    { stdio: ['ignore', 'pipe', 'pipe'], env },
  );
  const byDir = new Map<string, string[]>();
  for (const f of files) {
    const dir = path.dirname(f.path);
    if (!byDir.has(dir)) byDir.set(dir, []);
    byDir.get(dir)!.push(f.path);
  }
  const dirs = new Set<string>();
  for (const d of byDir.keys()) for (let p = d; p !== '/' && !dirs.has(p); p = path.dirname(p)) dirs.add(p);
  const script = [
    ...[...dirs].sort((a, b) => a.length - b.length || (a < b ? -1 : 1)).map((d) => `mkdir ${d}`),
    ...[...byDir.entries()].flatMap(([d, paths]) => [`cd ${d}`, ...paths.map((p) => `write ${p} ${path.basename(p)}`)]),
  ];
  const scriptFile = `${disk}.debugfs`;
  fs.writeFileSync(scriptFile, script.join('\n') + '\n');
  try {
    const r = spawnSync(tool('debugfs'), ['-w', '-f', scriptFile, `${disk}?offset=${start}`], { encoding: 'utf8', env, maxBuffer: 256 * MiB });
    // debugfs exits 0 whatever its commands did: any message besides its banner and the echoed commands is a failure.
    const complaints = r.stderr.split('\n').filter((l) => l && !/^debugfs \d/.test(l));
    if (r.status !== 0 || complaints.length) throw new Error(`debugfs could not fill ${label}: ${complaints.slice(0, 5).join('; ')}`);
  } finally {
    fs.rmSync(scriptFile, { force: true });
  }
}

/** SHA-256 of a file, hex. */
function sha256Of(file: string): string {
  const h = createHash('sha256');
  const fd = fs.openSync(file, 'r');
  const buf = Buffer.alloc(4 * MiB);
  try {
    for (let n; (n = fs.readSync(fd, buf, 0, buf.length, null)) > 0;) h.update(buf.subarray(0, n));
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

/** A copy of the sparse file `from` at `to`, holes kept. */
function sparseCopy(from: string, to: string): void {
  runTool('cp', ['--sparse=always', from, to]);
}

interface Disks {
  /** The raw disks, by label. */
  readonly raw: Readonly<Record<'1GiB' | '4GiB', string>>;
  /** What the results say of the disks: layout, sample, SHA-256 of each. */
  readonly describe: Record<string, unknown>;
}

/** The SHA-256 of `file`, computed once and kept beside it. */
function sha256Cached(file: string): string {
  const side = `${file}.sha256`;
  if (fs.existsSync(side) && fs.statSync(side).mtimeMs >= fs.statSync(file).mtimeMs) return fs.readFileSync(side, 'utf8').trim();
  const sum = sha256Of(file);
  fs.writeFileSync(side, `${sum}\n`);
  return sum;
}

/** The raw disks of 1 and 4 GiB, built once into bench/.work/. */
export function prepare(): Disks {
  const { volumes, listSha256 } = sampleVolumes(2);
  const layout = (sizeMiB: number, data: boolean) =>
    rawDisk({
      sizeMiB,
      table: 'gpt',
      partitions: [
        { sizeMiB: ESP_MIB, type: 'uefi', fs: 'vfat' },
        { sizeMiB: ROOT_MIB, type: 'linux' },
        ...(data ? [{ sizeMiB: DATA_MIB, type: 'linux' }] : []),
      ],
    });
  const tag = `${RECIPE}-${listSha256.slice(0, 12)}`;
  const make = (label: '1GiB' | '4GiB', sizeMiB: number, data: boolean) =>
    once(path.join(WORK, `convert-${label}-${tag}.raw`), (file) => {
      process.stdout.write(`building the ${label} disk in bench/.work/ (once) ...\n`);
      sparseCopy(layout(sizeMiB, data), file);
      const parts = partitionsOf(file);
      fixIdentity(file, parts);
      ext4With(file, parts[1].start, parts[1].size, volumes[0], FS_UUID[0], 'root');
      if (data) ext4With(file, parts[2].start, parts[2].size, volumes[1], FS_UUID[1], 'data');
    });
  const raw = { '1GiB': make('1GiB', 1024, false), '4GiB': make('4GiB', 4096, true) };
  const allocated = (file: string) => fs.statSync(file).blocks * 512;
  return {
    raw,
    describe: {
      'layout': `GPT: ESP ${ESP_MIB} MiB (FAT32), root ${ROOT_MIB} MiB (ext4, sample volume 1); on 4 GiB also data ${DATA_MIB} MiB (ext4, sample volume 2); the rest zeros`,
      'sample': {
        rule: `regular readable files of ${SAMPLE_ROOTS.join(' and ')} with plain names, up to ${MAX_FILE_BYTES / MiB} MiB, ordered by the SHA-256 of their path, taken into volumes of at most ${FILL_BYTES / MiB} MiB`,
        files: volumes.map((v) => v.length),
        bytes: volumes.map((v) => v.reduce((sum, f) => sum + f.size, 0)),
        listSha256,
      },
      '1GiB': { file: path.basename(raw['1GiB']), allocatedBytes: allocated(raw['1GiB']), sha256: sha256Cached(raw['1GiB']) },
      '4GiB': { file: path.basename(raw['4GiB']), allocatedBytes: allocated(raw['4GiB']), sha256: sha256Cached(raw['4GiB']) },
    },
  };
}

/** `base` converted by qemu-img into `format` (qcow2, vdi), built once. */
function qemuInput(base: string, format: string): string {
  return once(base.replace(/\.raw$/, `.${format}`), (file) => {
    runTool('qemu-img', ['convert', '-q', '-f', 'raw', '-O', format, base, file]);
  });
}

// ---------------------------------------------------------------------------------------------
// The child process: one conversion with our engine, as `vmie convert` does it

/** Options of our conversion, passed to the child. */
interface OurSettings {
  /** zlib level; undefined for the default. */
  readonly level?: number;
  /** Deflate jobs in flight; undefined for the default. */
  readonly concurrency?: number;
  /** The libuv pool size; undefined leaves it to Node (4). */
  readonly threads?: number;
}

/**
 * Settings tried besides the defaults, once each on the raw disk: lower zlib levels trade size for
 * speed (qemu-img uses the default, 6). On a machine of more than 4 cores, also a libuv pool of
 * one thread per core: Node's default pool has 4 threads, which caps compression at 4 cores.
 */
function settingsToTry(): OurSettings[] {
  const cores = os.cpus().length;
  return [{ level: 1 }, { level: 4 }, { level: 5 }, ...(cores > 4 ? [{ threads: cores }, { level: 5, threads: cores }] : [])];
}

/** A settings' label: `level=1`, `concurrency=16`, … */
function describe(settings: OurSettings): string {
  const parts = Object.entries(settings)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k}=${v}`);
  return parts.length ? parts.join(' ') : 'default';
}

/** What the child reports. */
interface ChildReport {
  /** Opening and conversion, sink closed (fsync and rename included), in ms. */
  readonly ms: number;
  readonly bytesWritten: number;
  readonly virtualSize: number;
  readonly format: string;
  /** Peak RSS as Node sees it (bytes). */
  readonly maxRss: number;
  /** Time spent waiting in `image.read` (summed over the reads in flight), in ms. */
  readonly readMs: number;
  /** Time spent in the sink's writes, and in its close (fsync, rename), in ms. */
  readonly writeMs: number;
  readonly closeMs: number;
}

/** A view of `image` that times its reads. */
function timedImage(image: DiskImage, acc: { readMs: number }): DiskImage {
  return {
    format: image.format,
    subformat: image.subformat,
    virtualSize: image.virtualSize,
    findings: image.findings,
    details: image.details,
    extents: () => image.extents(),
    read: async (offset, length) => {
      const t = performance.now();
      try {
        return await image.read(offset, length);
      } finally {
        acc.readMs += performance.now() - t;
      }
    },
  };
}

/** A sink that passes everything to `inner` and times its writes and its close. */
function timedSink(inner: Sink, acc: { writeMs: number; closeMs: number }): Sink {
  const sparse = inner as Sink & { skip?: (n: number) => Promise<void> };
  const seekable = inner as Sink & { writeAt?: (o: number, d: Buffer) => Promise<void> };
  const time = async (what: 'writeMs' | 'closeMs', op: () => Promise<void>) => {
    const t = performance.now();
    try {
      await op();
    } finally {
      acc[what] += performance.now() - t;
    }
  };
  return {
    get position() {
      return inner.position;
    },
    write: (chunk) => time('writeMs', () => inner.write(chunk)),
    close: () => time('closeMs', () => inner.close()),
    abort: () => inner.abort(),
    ...(sparse.skip ? { skip: (n: number) => sparse.skip!(n) } : {}),
    ...(seekable.writeAt ? { writeAt: (o: number, d: Buffer) => time('writeMs', () => seekable.writeAt!(o, d)) } : {}),
  } as Sink;
}

/**
 * The child's entry: `<input> <output> <settings as JSON>`; prints a {@link ChildReport} as JSON.
 * Opens the input as `vmie convert` does (a file source behind a cache of 16 blocks of 1 MiB).
 */
export async function childMain(argv: readonly string[]): Promise<void> {
  const [input, output, json] = argv;
  const settings = JSON.parse(json ?? '{}') as OurSettings;
  const started = performance.now();
  const acc = { readMs: 0, writeMs: 0, closeMs: 0 };
  const source = await FileSource.open(input);
  try {
    const image = await openDiskImage(new CachedSource(source, { blockSize: MiB, maxBlocks: 16 }));
    const sink = await FileSink.create(output);
    const result = await convert(timedImage(image, acc), 'vmdk', timedSink(sink, acc), {
      vmdk: { fileName: path.basename(output), level: settings.level, concurrency: settings.concurrency },
    });
    const report: ChildReport = {
      ms: performance.now() - started,
      bytesWritten: result.bytesWritten,
      virtualSize: image.virtualSize,
      format: image.format,
      maxRss: process.resourceUsage().maxRSS * 1024,
      readMs: acc.readMs,
      writeMs: acc.writeMs,
      closeMs: acc.closeMs,
    };
    process.stdout.write(JSON.stringify(report) + '\n');
  } finally {
    await source.close();
  }
}

/** Bundles the child (this file, entered at {@link childMain}) into bench/.work/, from the current sources. */
function bundleChild(): string {
  const out = path.join(WORK, 'convert-child.js');
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const esbuild = require('esbuild') as typeof import('esbuild');
  esbuild.buildSync({
    stdin: {
      contents: "require('./convert').childMain(process.argv.slice(2)).catch((e) => { process.stderr.write(String(e && e.stack || e) + '\\n'); process.exitCode = 1; });",
      resolveDir: __dirname,
      sourcefile: 'convert-child.ts',
      loader: 'ts',
    },
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'cjs',
    minify: true,
    legalComments: 'none',
    logLevel: 'warning',
    external: ['esbuild'],
    outfile: out,
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// Measuring

/** One timed run of a command. */
interface Timed {
  /** Wall time of the process, start to exit, in seconds. */
  readonly seconds: number;
  /** CPU time of the process (user + system), in seconds, from /usr/bin/time. */
  readonly cpuSeconds?: number;
  /** Peak RSS (bytes), from /usr/bin/time. */
  readonly peakRss?: number;
  readonly stdout: string;
}

const TIME = '/usr/bin/time';

/** Runs `cmd args` (under /usr/bin/time -v when present) and times it; fails on a non-zero exit. */
function timed(cmd: string, args: readonly string[], env: NodeJS.ProcessEnv = process.env): Timed {
  const haveTime = fs.existsSync(TIME);
  const [c, a] = haveTime ? [TIME, ['-v', cmd, ...args]] : [cmd, [...args]];
  const started = performance.now();
  const r = spawnSync(c, a, { encoding: 'utf8', env, maxBuffer: 16 * MiB });
  const seconds = (performance.now() - started) / 1000;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status ?? r.signal}): ${r.stderr}`);
  if (!haveTime) return { seconds, stdout: r.stdout };
  const field = (name: string) => {
    const m = new RegExp(`${name.replace(/[()]/g, '\\$&')}: ([\\d.]+)`).exec(r.stderr);
    return m ? Number(m[1]) : undefined;
  };
  const user = field('User time (seconds)');
  const system = field('System time (seconds)');
  const rssKiB = field('Maximum resident set size (kbytes)');
  return {
    seconds,
    cpuSeconds: user !== undefined && system !== undefined ? user + system : undefined,
    peakRss: rssKiB !== undefined ? rssKiB * 1024 : undefined,
    stdout: r.stdout,
  };
}

/** qemu-img's conversion of `input` (in `format`) to a stream-optimized VMDK at `output`. */
function qemuConvert(input: string, format: string, output: string): Timed {
  fs.rmSync(output, { force: true });
  return timed(tool('qemu-img'), ['convert', '-f', format, '-O', 'vmdk', '-o', 'subformat=streamOptimized', input, output]);
}

type OurRun = Timed & { readonly report: ChildReport };

/** Our conversion of `input` to `output`, in a child process. */
function ourConvert(child: string, input: string, output: string, settings: OurSettings = {}): OurRun {
  fs.rmSync(output, { force: true });
  const env = { ...process.env };
  if (settings.threads !== undefined) env.UV_THREADPOOL_SIZE = String(settings.threads);
  else delete env.UV_THREADPOOL_SIZE;
  const t = timed(process.execPath, [child, input, output, JSON.stringify(settings)], env);
  const report = JSON.parse(t.stdout.trim().split('\n').pop()!) as ChildReport;
  return { ...t, peakRss: t.peakRss ?? report.maxRss, report };
}

/** Fails unless qemu-img finds the virtual disk of `vmdk` identical to the raw disk `raw`. */
function checkIdentical(raw: string, vmdk: string, what: string): void {
  const r = spawnSync(tool('qemu-img'), ['compare', '-f', 'raw', '-F', 'vmdk', raw, vmdk], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${what}: qemu-img compare finds the output different from the disk: ${r.stdout}${r.stderr}`);
}

function best<T extends { readonly seconds: number }>(runs: readonly T[]): T {
  return runs.reduce((a, b) => (b.seconds < a.seconds ? b : a));
}

const round = (x: number, digits = 2) => Math.round(x * 10 ** digits) / 10 ** digits;
const mibps = (bytes: number, seconds: number) => round(bytes / MiB / seconds, 1);
const mib = (bytes: number | undefined) => (bytes === undefined ? '' : round(bytes / MiB, 1));

/** What `timed` runs are recorded as in the results. */
function record(runs: readonly Timed[]) {
  return {
    seconds: runs.map((r) => round(r.seconds, 3)),
    cpuSeconds: runs.map((r) => (r.cpuSeconds === undefined ? null : round(r.cpuSeconds, 2))),
    peakRssBytes: runs.map((r) => r.peakRss ?? null),
  };
}

/** Where the time of one of our conversions went, as the child measured it. */
function stages(r: OurRun) {
  return {
    convertMs: Math.round(r.report.ms),
    readWaitMs: Math.round(r.report.readMs),
    sinkWriteMs: Math.round(r.report.writeMs),
    sinkCloseMs: Math.round(r.report.closeMs),
  };
}

// ---------------------------------------------------------------------------------------------
// The benchmark

export async function run(): Promise<BenchResult> {
  fs.mkdirSync(WORK, { recursive: true });
  const loadBefore = os.loadavg();
  const disks = prepare();
  const child = bundleChild();
  const base = disks.raw['1GiB'];
  const inputs = [
    { label: 'raw', format: 'raw', file: base },
    { label: 'qcow2', format: 'qcow2', file: qemuInput(base, 'qcow2') },
    { label: 'vdi', format: 'vdi', file: qemuInput(base, 'vdi') },
  ];
  const oursOut = path.join(WORK, 'convert-ours.vmdk');
  const qemuOut = path.join(WORK, 'convert-qemu.vmdk');
  const rows: Array<Record<string, Cell>> = [];
  const conversions: Record<string, unknown> = {};
  let passed = true;
  let qemuRaw: { seconds: number; bytes: number } | undefined;
  let rss1GiB = 0;
  let bigPeak = 0;
  /** Per default conversion: speedup and size ratio, for the verdict per target. */
  const verdicts: Array<{ input: string; speedup: number; sizeRatio: number }> = [];

  try {
    // 1 and 3: each input, ours and qemu-img's in turn, best of REPEAT; each output checked once.
    for (const input of inputs) {
      process.stdout.write(`converting the 1 GiB ${input.label} disk, ${REPEAT} times with each tool ...\n`);
      const ours: OurRun[] = [];
      const theirs: Timed[] = [];
      let oursSize = 0;
      let qemuSize = 0;
      for (let i = 0; i < REPEAT; i++) {
        ours.push(ourConvert(child, input.file, oursOut));
        if (i === 0) {
          checkIdentical(base, oursOut, `our conversion of ${input.label}`);
          oursSize = fs.statSync(oursOut).size;
        }
        theirs.push(qemuConvert(input.file, input.format, qemuOut));
        if (i === 0) {
          checkIdentical(base, qemuOut, `qemu-img's conversion of ${input.label}`);
          qemuSize = fs.statSync(qemuOut).size;
        }
      }
      const o = best(ours);
      const q = best(theirs);
      if (input.label === 'raw') qemuRaw = { seconds: q.seconds, bytes: qemuSize };
      rss1GiB = Math.max(rss1GiB, ...ours.map((r) => r.peakRss ?? 0));
      const speedup = q.seconds / o.seconds;
      const sizeRatio = oursSize / qemuSize;
      verdicts.push({ input: input.label, speedup, sizeRatio });
      const peak = Math.max(...ours.map((r) => r.peakRss ?? 0));
      const ok = speedup >= MIN_SPEEDUP && sizeRatio <= MAX_SIZE_RATIO && peak < MAX_RSS;
      if (!ok) passed = false;
      rows.push({
        'input': `${input.label} 1GiB`,
        'settings': 'default',
        'ours MiB/s': mibps(GiB, o.seconds),
        'qemu MiB/s': mibps(GiB, q.seconds),
        'speedup': round(speedup),
        'ours MiB': mib(oursSize),
        'qemu MiB': mib(qemuSize),
        'size ratio': round(sizeRatio, 3),
        'ours CPU s': o.cpuSeconds !== undefined ? round(o.cpuSeconds, 1) : '',
        'qemu CPU s': q.cpuSeconds !== undefined ? round(q.cpuSeconds, 1) : '',
        'ours RSS MiB': mib(peak),
        'target met': ok,
      });
      conversions[`${input.label}-1GiB`] = {
        input: { format: input.format, bytes: fs.statSync(input.file).size, virtualBytes: GiB },
        ours: { ...record(ours), outputBytes: oursSize, stagesOfBest: stages(o) },
        qemu: { ...record(theirs), outputBytes: qemuSize },
        bestSeconds: { ours: round(o.seconds, 3), qemu: round(q.seconds, 3) },
        throughputBytesPerSecond: { ours: Math.round(GiB / o.seconds), qemu: Math.round(GiB / q.seconds) },
        speedup: round(speedup, 3),
        sizeRatio: round(sizeRatio, 4),
        identicalToDisk: { ours: true, qemu: true },
      };
    }

    // 2: peak RSS on 4 GiB (one run; its output checked too).
    process.stdout.write('converting the 4 GiB raw disk once (peak RSS) ...\n');
    const big = ourConvert(child, disks.raw['4GiB'], oursOut);
    checkIdentical(disks.raw['4GiB'], oursOut, 'our conversion of the 4 GiB disk');
    const bigSize = fs.statSync(oursOut).size;
    bigPeak = big.peakRss ?? 0;
    const rssOk = rss1GiB < MAX_RSS && bigPeak < MAX_RSS && bigPeak <= rss1GiB * MAX_RSS_GROWTH;
    if (!rssOk) passed = false;
    rows.push({
      'input': 'raw 4GiB',
      'settings': 'default',
      'ours MiB/s': mibps(4 * GiB, big.seconds),
      'qemu MiB/s': '',
      'speedup': '',
      'ours MiB': mib(bigSize),
      'qemu MiB': '',
      'size ratio': '',
      'ours CPU s': big.cpuSeconds !== undefined ? round(big.cpuSeconds, 1) : '',
      'qemu CPU s': '',
      'ours RSS MiB': mib(bigPeak),
      'target met': rssOk,
    });
    conversions['raw-4GiB'] = {
      input: { format: 'raw', bytes: 4 * GiB, virtualBytes: 4 * GiB },
      ours: { ...record([big]), outputBytes: bigSize, stagesOfBest: stages(big) },
      identicalToDisk: { ours: true },
    };

    // Settings of ours other than the defaults, once each on the raw disk, against qemu-img's best.
    const sweep: Record<string, unknown> = {};
    for (const settings of settingsToTry()) {
      const label = describe(settings);
      process.stdout.write(`converting the 1 GiB raw disk with ${label} ...\n`);
      const r = ourConvert(child, base, oursOut, settings);
      checkIdentical(base, oursOut, `our conversion with ${label}`);
      const size = fs.statSync(oursOut).size;
      const speedup = qemuRaw!.seconds / r.seconds;
      const sizeRatio = size / qemuRaw!.bytes;
      rows.push({
        'input': 'raw 1GiB',
        'settings': label,
        'ours MiB/s': mibps(GiB, r.seconds),
        'qemu MiB/s': mibps(GiB, qemuRaw!.seconds),
        'speedup': round(speedup),
        'ours MiB': mib(size),
        'qemu MiB': mib(qemuRaw!.bytes),
        'size ratio': round(sizeRatio, 3),
        'ours CPU s': r.cpuSeconds !== undefined ? round(r.cpuSeconds, 1) : '',
        'qemu CPU s': '',
        'ours RSS MiB': mib(r.peakRss),
        'target met': speedup >= MIN_SPEEDUP && sizeRatio <= MAX_SIZE_RATIO && (r.peakRss ?? 0) < MAX_RSS,
      });
      sweep[label] = { settings, ...record([r]), outputBytes: size, speedup: round(speedup, 3), sizeRatio: round(sizeRatio, 4), stages: stages(r) };
    }
    conversions.settings = sweep;
  } finally {
    fs.rmSync(oursOut, { force: true });
    fs.rmSync(qemuOut, { force: true });
  }

  const loadAfter = os.loadavg();
  return {
    title: 'Conversion to stream-optimized VMDK, ours against qemu-img: a GPT disk (ESP + ext4 of this machine\'s files, the rest zeros)',
    columns: ['input', 'settings', 'ours MiB/s', 'qemu MiB/s', 'speedup', 'ours MiB', 'qemu MiB', 'size ratio', 'ours CPU s', 'qemu CPU s', 'ours RSS MiB', 'target met'],
    rows,
    targets: [
      `throughput (virtual bytes per second, best of ${REPEAT}) at least ${MIN_SPEEDUP}x qemu-img's (goal ${GOAL_SPEEDUP}x)`,
      `output at most ${MAX_SIZE_RATIO}x the size of qemu-img's`,
      `peak RSS under ${MAX_RSS / MiB} MiB, about the same for 1 and 4 GiB (the 4 GiB peak at most ${MAX_RSS_GROWTH}x the 1 GiB one)`,
    ],
    passed,
    notes: [
      'qemu-img: `qemu-img convert -f <fmt> -O vmdk -o subformat=streamOptimized` (zlib\'s default level); ours: convert() in a child process, opened as `vmie convert` opens an input.',
      'times are wall times of the whole process, start to exit; ours includes the fsync of the output on close, qemu-img does not sync.',
      `CPU s is user + system time and RSS the peak resident set, from ${TIME} -v; ours RSS is the highest of the runs.`,
      'the rows with settings other than default are one run each on the raw disk, against qemu-img\'s best time there; "passed" counts the default rows only.',
      `load average of the machine (1, 5, 15 min): ${loadBefore.map((l) => l.toFixed(2)).join(' ')} before, ${loadAfter.map((l) => l.toFixed(2)).join(' ')} after; the machine is shared, and other work on it slows a tool that uses every core (ours) more than one that uses one (qemu-img).`,
    ],
    details: {
      machine: {
        cores: os.cpus().length,
        model: os.cpus()[0]?.model ?? '',
        memoryBytes: os.totalmem(),
        node: process.version,
        qemuImg: runTool('qemu-img', ['--version']).split('\n')[0],
        uvThreadpoolSize: 'Node default (4) unless a setting says otherwise',
        loadAverageBefore: loadBefore.map((l) => round(l)),
        loadAverageAfter: loadAfter.map((l) => round(l)),
      },
      disks: disks.describe,
      targets: {
        [`throughput >= ${MIN_SPEEDUP}x qemu-img`]: { passed: verdicts.every((v) => v.speedup >= MIN_SPEEDUP), speedups: Object.fromEntries(verdicts.map((v) => [v.input, round(v.speedup, 3)])) },
        [`throughput >= ${GOAL_SPEEDUP}x qemu-img (goal)`]: { passed: verdicts.every((v) => v.speedup >= GOAL_SPEEDUP) },
        [`size <= ${MAX_SIZE_RATIO}x qemu-img`]: { passed: verdicts.every((v) => v.sizeRatio <= MAX_SIZE_RATIO), sizeRatios: Object.fromEntries(verdicts.map((v) => [v.input, round(v.sizeRatio, 4)])) },
        [`peak RSS < ${MAX_RSS / MiB} MiB, 4 GiB <= ${MAX_RSS_GROWTH}x 1 GiB`]: {
          passed: rss1GiB < MAX_RSS && bigPeak < MAX_RSS && bigPeak <= rss1GiB * MAX_RSS_GROWTH,
          peakRssBytes: { '1GiB': rss1GiB, '4GiB': bigPeak },
        },
      },
      conversions,
    },
  };
}
