/**
 * What inspection costs, per format and size: requests, bytes read and time, for a 1 GiB and a
 * 1 TiB disk of each format, through a local file and through S3 (the real SDK against a local
 * s3rver). The point: inspection reads headers and a few tables, so a 1 TiB image costs about
 * what a 1 GiB one does.
 *
 * Each disk is a sparse raw file with a GPT (sfdisk) holding an ESP (mkfs.vfat) and an ext4 root
 * (mke2fs), converted by qemu-img to every format, so that the probes look inside as they would
 * on a real disk. Images are built once into bench/.work/ (ignored by git).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { once, type BenchResult, type Cell } from './run';
import { S3Source } from '../lambda/aws/s3-source';
import { inspect, type InspectionReport } from '../lambda/disk/inspect';
import { FileSource, type ByteSource } from '../lambda/disk/source';
import { partitionsOf, run as runTool } from '../test/helpers/fixtures';
import { ovfText } from '../test/helpers/inspect-fixtures';
import { startLocalS3 } from '../test/helpers/local-s3';

const WORK = path.join(__dirname, '.work');
const GiB = 1024 ** 3;
const TiB = 1024 ** 4;
const MiB = 1024 ** 2;

/** The targets. */
const MAX_REQUESTS = 24;
const MAX_BYTES = 4 * MiB;
const MAX_TIB_MS = 1000;
/** Inspections per measurement; the median time is reported. */
const REPEAT = 3;

interface Variant {
  readonly label: string;
  /** qemu-img output format and options; undefined for the raw base itself. */
  readonly qemu?: { readonly format: string; readonly options: readonly string[]; readonly ext: string };
  /** Packed into an OVA (with an OVF descriptor) after conversion. */
  readonly ova?: boolean;
}

const VARIANTS: readonly Variant[] = [
  { label: 'raw' },
  { label: 'vhd-fixed', qemu: { format: 'vpc', options: ['subformat=fixed', 'force_size=on'], ext: 'vhd' } },
  { label: 'vhd-dynamic', qemu: { format: 'vpc', options: ['subformat=dynamic', 'force_size=on'], ext: 'vhd' } },
  { label: 'vhdx', qemu: { format: 'vhdx', options: [], ext: 'vhdx' } },
  { label: 'vmdk-stream', qemu: { format: 'vmdk', options: ['subformat=streamOptimized'], ext: 'vmdk' } },
  { label: 'vmdk-monolithicSparse', qemu: { format: 'vmdk', options: ['subformat=monolithicSparse'], ext: 'vmdk' } },
  { label: 'qcow2', qemu: { format: 'qcow2', options: [], ext: 'qcow2' } },
  { label: 'vdi', qemu: { format: 'vdi', options: [], ext: 'vdi' } },
  { label: 'ova', qemu: { format: 'vmdk', options: ['subformat=streamOptimized'], ext: 'vmdk' }, ova: true },
];

const SIZES: ReadonlyArray<{ label: string; bytes: number }> = [
  { label: '1GiB', bytes: GiB },
  { label: '1TiB', bytes: TiB },
];

/** A sparse raw disk of `bytes`: GPT, a 100 MiB ESP (FAT32) and an ext4 root over the rest. */
function baseDisk(label: string, bytes: number): string {
  return once(path.join(WORK, `base-${label}.raw`), (file) => {
    fs.writeFileSync(file, '');
    fs.truncateSync(file, bytes);
    runTool('sfdisk', ['--quiet', '--no-reread', '--no-tell-kernel', file], 'label: gpt\nsize=100MiB, type=uefi\ntype=linux\n');
    const [esp, root] = partitionsOf(file);
    const fat = `${file}.esp`;
    fs.writeFileSync(fat, '');
    fs.truncateSync(fat, esp.size);
    runTool('mkfs.vfat', ['-F', '32', fat]);
    const data = fs.readFileSync(fat);
    const fd = fs.openSync(file, 'r+');
    fs.writeSync(fd, data, 0, data.length, esp.start);
    fs.closeSync(fd);
    fs.rmSync(fat);
    runTool('mke2fs', ['-q', '-F', '-t', 'ext4', '-E', `offset=${root.start},lazy_itable_init=1,lazy_journal_init=1`, file, `${Math.floor(root.size / 1024)}k`]);
  });
}

/** The image of `variant` for the base disk `base`. */
function image(variant: Variant, sizeLabel: string, base: string, bytes: number): string {
  if (!variant.qemu) return base;
  const q = variant.qemu;
  const converted = once(path.join(WORK, `${sizeLabel}-${variant.ova ? 'vmdk-stream' : variant.label}.${q.ext}`), (file) => {
    runTool('qemu-img', ['convert', '-q', '-f', 'raw', '-O', q.format, ...(q.options.length ? ['-o', q.options.join(',')] : []), base, file]);
  });
  if (!variant.ova) return converted;
  return once(path.join(WORK, `${sizeLabel}-vm.ova`), (file) => {
    const dir = `${file}.dir`;
    fs.rmSync(dir, { recursive: true, force: true });
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'vm.ovf'), ovfText([{ name: 'disk1.vmdk', file: converted, capacity: bytes }], { firmware: 'efi' }));
    fs.symlinkSync(converted, path.join(dir, 'disk1.vmdk'));
    runTool('tar', ['--format=ustar', '--dereference', '-cf', file, '-C', dir, 'vm.ovf', 'disk1.vmdk']);
    fs.rmSync(dir, { recursive: true, force: true });
  });
}

interface Measure {
  readonly report: InspectionReport;
  /** Requests of the whole inspection, opening included (HeadObject for S3). */
  readonly requests: number;
  readonly bytesRead: number;
  /** Median over {@link REPEAT} inspections, opening included. */
  readonly ms: number;
}

async function measure(open: () => Promise<ByteSource>): Promise<Measure> {
  const times: number[] = [];
  let first: { report: InspectionReport; requests: number; bytesRead: number } | undefined;
  for (let i = 0; i < REPEAT; i++) {
    const started = performance.now();
    const source = await open();
    const report = await inspect(source);
    times.push(performance.now() - started);
    first ??= { report, requests: source.stats.requests, bytesRead: source.stats.bytesRead };
    await source.close();
  }
  times.sort((a, b) => a - b);
  return { ...first!, ms: Math.round(times[Math.floor(times.length / 2)] * 10) / 10 };
}

export async function run(): Promise<BenchResult> {
  fs.mkdirSync(WORK, { recursive: true });
  const rows: Array<Record<string, Cell>> = [];
  const notes: string[] = [];
  let passed = true;
  const s3 = await startLocalS3(['bench']);
  try {
    for (const size of SIZES) {
      process.stdout.write(`building the ${size.label} images in bench/.work/ (once) ...\n`);
      const base = baseDisk(size.label, size.bytes);
      for (const variant of VARIANTS) {
        const file = image(variant, size.label, base, size.bytes);
        const members = variant.ova ? 2 : 0;
        const maxRequests = MAX_REQUESTS + members;
        // A raw or fixed VHD image of 1 TiB is a 1 TiB object: the local S3 server cannot hold it.
        const viaS3 = !(size.bytes >= TiB && (variant.label === 'raw' || variant.label === 'vhd-fixed'));
        const key = `${size.label}/${path.basename(file)}`;
        if (viaS3) await s3.upload('bench', key, file);
        const ways: Array<[string, () => Promise<ByteSource>]> = [['file', () => FileSource.open(file)]];
        if (viaS3) ways.push(['s3', () => S3Source.open(s3.client, 'bench', key)]);
        for (const [via, open] of ways) {
          const m = await measure(open);
          const ok = m.requests <= maxRequests && (variant.ova || m.bytesRead <= MAX_BYTES) && (size.bytes < TiB || m.ms < MAX_TIB_MS);
          if (!ok) passed = false;
          rows.push({
            'format': variant.label,
            'size': size.label,
            via,
            'file MiB': Math.round((fs.statSync(file).blocks * 512) / MiB * 10) / 10,
            'requests': m.requests,
            'KiB read': Math.round(m.bytesRead / 1024),
            'ms': m.ms,
            'verdict': m.report.importable ? 'importable' : m.report.needsConversion ? 'convert' : 'rejected',
            'findings': m.report.findings.map((f) => f.code).join(' ') || '-',
            'target met': ok,
          });
        }
        if (!viaS3) notes.push(`${variant.label} ${size.label}: measured through a file only (a ${size.label} object is too large for the local S3 server).`);
      }
    }
  } finally {
    await s3.close();
  }
  // How much more a 1 TiB image costs than a 1 GiB one, per format.
  for (const v of VARIANTS) {
    const small = rows.find((r) => r.format === v.label && r.size === '1GiB' && r.via === 'file');
    const big = rows.find((r) => r.format === v.label && r.size === '1TiB' && r.via === 'file');
    if (small && big) notes.push(`${v.label}: 1 TiB costs ${big.requests} requests / ${big['KiB read']} KiB against ${small.requests} / ${small['KiB read']} KiB for 1 GiB.`);
  }
  return {
    title: 'Inspection cost per format: a sparse GPT disk (ESP + ext4 root) of 1 GiB and of 1 TiB, converted by qemu-img',
    columns: ['format', 'size', 'via', 'file MiB', 'requests', 'KiB read', 'ms', 'verdict', 'findings', 'target met'],
    rows,
    targets: [
      `at most ${MAX_REQUESTS} requests (S3: HeadObject included) and ${MAX_BYTES / MiB} MiB read per inspection, every format but OVA`,
      'OVA: one more request per member of the package (2 here: the descriptor and the disk)',
      `a 1 TiB image inspected in under ${MAX_TIB_MS} ms`,
    ],
    passed,
    notes: [
      'requests and bytes are those of the source: FileSource counts reads, S3Source counts HeadObject and every ranged GetObject.',
      'ms is the median of 3 inspections, opening included; the S3 server is local, so real S3 adds its latency per request.',
      'file MiB is the space the image takes on disk (the files are sparse).',
      ...notes,
    ],
  };
}
