/**
 * Disks for the probe tests: partition tables written by sfdisk, each filesystem built as a
 * separate file by its own mkfs tool and copied in at the partition offset (only its non-zero
 * chunks, so the disks stay sparse). Where no tool is installed here (LVM2, LUKS, JFS), the
 * signature is written by hand after the documented on-disk layout, and blkid is asked to confirm
 * that it recognises it.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { cached, pseudoRandom, run, tempDir } from './fixtures';
import type { ByteSource, ReadStats } from '../../lambda/disk/source';

const MiB = 1024 * 1024;

/** What a test partition holds. */
export type TestFs =
  | 'ext2'
  | 'ext3'
  | 'ext4'
  | 'xfs'
  | 'btrfs'
  | 'ntfs'
  | 'fat12'
  | 'fat16'
  | 'fat32'
  | 'swap'
  | 'lvm2'
  | 'luks1'
  | 'luks2'
  | 'jfs'
  | 'random';

/** A partition of a test disk. */
export interface TestPartition {
  /** The Linux partition number to give it (needed for logical partitions, 5 and up). */
  readonly number?: number;
  /** Size in MiB, or in sectors with {@link sizeSectors}; the last partition may omit both. */
  readonly sizeMiB?: number;
  readonly sizeSectors?: number;
  /** sfdisk type: MBR hex id or GPT GUID/alias. */
  readonly type: string;
  readonly bootable?: boolean;
  /** GPT partition name. */
  readonly name?: string;
  /** A filesystem to make inside. */
  readonly fs?: TestFs;
  readonly label?: string;
  /** A file whose bytes `[from, from + length)` are copied into the partition instead of a filesystem. */
  readonly content?: { readonly file: string; readonly from: number; readonly length: number };
}

/** A test disk. */
export interface TestDisk {
  readonly sizeMiB: number;
  readonly table: 'mbr' | 'gpt' | 'none';
  readonly partitions?: readonly TestPartition[];
  /** For table 'none': the filesystem made over the whole disk. */
  readonly wholeDisk?: TestFs;
}

function key(x: unknown): string {
  return createHash('sha256').update(JSON.stringify(x)).digest('hex').slice(0, 12);
}

/** Copies `length` bytes of `from` at `fromOffset` into `to` at `toOffset`, skipping all-zero 64 KiB chunks. */
export function copySparse(from: string, fromOffset: number, length: number, to: string, toOffset: number): void {
  const src = fs.openSync(from, 'r');
  const dst = fs.openSync(to, 'r+');
  const chunk = Buffer.alloc(64 * 1024);
  const zeros = Buffer.alloc(chunk.length);
  try {
    for (let done = 0; done < length; done += chunk.length) {
      const n = fs.readSync(src, chunk, 0, Math.min(chunk.length, length - done), fromOffset + done);
      if (n === 0) break;
      const part = chunk.subarray(0, n);
      if (!part.equals(zeros.subarray(0, n))) fs.writeSync(dst, part, 0, n, toOffset + done);
    }
  } finally {
    fs.closeSync(src);
    fs.closeSync(dst);
  }
}

/** Writes `bytes` into `file` at `offset`. */
export function patchFile(file: string, offset: number, bytes: Uint8Array): void {
  const fd = fs.openSync(file, 'r+');
  fs.writeSync(fd, bytes, 0, bytes.length, offset);
  fs.closeSync(fd);
}

/** Reads `length` bytes of `file` at `offset`. */
export function readFileAt(file: string, offset: number, length: number): Buffer {
  const fd = fs.openSync(file, 'r');
  const buf = Buffer.alloc(length);
  const n = fs.readSync(fd, buf, 0, length, offset);
  fs.closeSync(fd);
  return buf.subarray(0, n);
}

/** A sparse copy of `file` in a new temporary directory, for tests that damage it. */
export function scratchCopy(file: string): { file: string; cleanup: () => void } {
  const { dir, cleanup } = tempDir('vmie-probe-');
  const copy = path.join(dir, path.basename(file));
  fs.writeFileSync(copy, '');
  fs.truncateSync(copy, fs.statSync(file).size);
  copySparse(file, 0, fs.statSync(file).size, copy, 0);
  return { file: copy, cleanup };
}

// --- hand-written signatures ---

let crcTable: Uint32Array | undefined;
function crcUpdate(crc: number, data: Uint8Array): number {
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let c = crc >>> 0;
  for (const b of data) c = (crcTable[(c ^ b) & 0xff] ^ (c >>> 8)) >>> 0;
  return c;
}

/** A deterministic UUID (16 bytes) from a seed. */
function uuidBytes(seed: number): Buffer {
  const b = pseudoRandom(16, seed);
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  return b;
}

function dashed(b: Buffer): string {
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/**
 * An LVM2 physical volume label in sector 1: the label header (`LABELONE`, its sector, CRC,
 * offset of the PV header, `LVM2 001`) and the PV header (32-character UUID, device size, one data
 * area and one metadata area). The CRC is LVM's: CRC-32 without final inversion, seeded 0xf597a6cf,
 * over the label sector from offset 20.
 */
export function writeLvm2Label(file: string, size: number, seed = 1): void {
  const sector = Buffer.alloc(512);
  sector.write('LABELONE', 0, 'latin1');
  sector.writeBigUInt64LE(1n, 8);
  sector.writeUInt32LE(32, 20);
  sector.write('LVM2 001', 24, 'latin1');
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
  const rnd = pseudoRandom(32, seed + 100);
  const id = [...rnd].map((b) => alphabet[b % alphabet.length]).join('');
  sector.write(id, 32, 'latin1');
  sector.writeBigUInt64LE(BigInt(size), 64);
  // data areas: one at 1 MiB, size 0 (to the end), then a terminator
  sector.writeBigUInt64LE(BigInt(MiB), 72);
  sector.writeBigUInt64LE(0n, 80);
  // metadata areas (after the data-area terminator at 88..103): one at 4 KiB, then a terminator
  sector.writeBigUInt64LE(4096n, 104);
  sector.writeBigUInt64LE(BigInt(MiB - 4096), 112);
  sector.writeUInt32LE(crcUpdate(0xf597a6cf, sector.subarray(20)), 16);
  patchFile(file, 512, sector);
}

/** A LUKS1 or LUKS2 binary header at offset 0, with a UUID (and, for LUKS2, a label). */
export function writeLuksHeader(file: string, version: 1 | 2, label?: string, seed = 2): void {
  const h = Buffer.alloc(4096);
  Buffer.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]).copy(h, 0);
  h.writeUInt16BE(version, 6);
  if (version === 1) {
    h.write('aes', 8, 'latin1');
    h.write('xts-plain64', 40, 'latin1');
    h.write('sha256', 72, 'latin1');
    h.writeUInt32BE(4096, 104); // payload offset (sectors)
    h.writeUInt32BE(64, 108); // key bytes
    pseudoRandom(52, seed).copy(h, 112); // master key digest and salt
    h.writeUInt32BE(1000, 164); // digest iterations
  } else {
    h.writeBigUInt64BE(16384n, 8); // header size
    h.writeBigUInt64BE(1n, 16); // sequence id
    if (label) h.write(label, 24, 'utf8');
    h.write('sha256', 72, 'latin1');
    pseudoRandom(64, seed).copy(h, 104); // salt
    h.writeBigUInt64BE(0n, 256); // offset of this header
  }
  h.write(dashed(uuidBytes(seed)), 168, 'latin1');
  patchFile(file, 0, h);
}

/** A JFS superblock at 32 KiB: magic, version, size, block sizes and their logarithms, UUID, label. */
export function writeJfsSuperblock(file: string, size: number, label?: string, seed = 3): void {
  const sb = Buffer.alloc(4096);
  sb.write('JFS1', 0, 'latin1');
  sb.writeUInt32LE(2, 4);
  sb.writeBigUInt64LE(BigInt(Math.floor(size / 512)), 8);
  sb.writeUInt32LE(4096, 16);
  sb.writeUInt16LE(12, 20);
  sb.writeUInt16LE(3, 22);
  sb.writeUInt32LE(512, 24);
  sb.writeUInt16LE(9, 28);
  uuidBytes(seed).copy(sb, 136);
  if (label) sb.write(label, 152, 'latin1');
  patchFile(file, 32768, sb);
}

/** Builds filesystem `kind` over the whole of `file` (already sized). */
export function makeFilesystem(file: string, kind: TestFs, label?: string, seed = 5): void {
  const size = fs.statSync(file).size;
  const l = (flag: string) => (label ? [flag, label] : []);
  switch (kind) {
    case 'ext2':
    case 'ext3':
    case 'ext4':
      run('mke2fs', ['-q', '-F', '-t', kind, ...l('-L'), file]);
      break;
    case 'xfs':
      run('mkfs.xfs', ['-q', '-f', ...l('-L'), file]);
      break;
    case 'btrfs':
      run('mkfs.btrfs', ['-q', '-f', ...l('-L'), file]);
      break;
    case 'ntfs':
      run('mkfs.ntfs', ['-q', '-F', '-Q', ...l('-L'), file]);
      break;
    case 'fat12':
    case 'fat16':
    case 'fat32':
      run('mkfs.vfat', ['-F', kind.slice(3), ...l('-n'), file]);
      break;
    case 'swap':
      run('mkswap', [...l('-L'), file]);
      break;
    case 'lvm2':
      writeLvm2Label(file, size, seed);
      break;
    case 'luks1':
    case 'luks2':
      writeLuksHeader(file, kind === 'luks1' ? 1 : 2, label, seed);
      break;
    case 'jfs':
      writeJfsSuperblock(file, size, label, seed);
      break;
    case 'random':
      for (let off = 0; off < size; off += MiB) patchFile(file, off, pseudoRandom(Math.min(MiB, size - off), seed + off / MiB));
      break;
  }
}

/** A partition as sfdisk reports it (bytes). */
export interface SfdiskPartition {
  readonly number: number;
  readonly start: number;
  readonly size: number;
  readonly type: string;
  readonly bootable: boolean;
  readonly uuid?: string;
  readonly name?: string;
}

/** The partition table of `file` as `sfdisk --json` reads it. */
export function sfdiskTable(file: string): { label: string; id?: string; partitions: SfdiskPartition[] } {
  const t = JSON.parse(run('sfdisk', ['--json', file])).partitiontable;
  return {
    label: t.label,
    id: t.id,
    partitions: (t.partitions ?? []).map((p: Record<string, unknown>) => ({
      number: Number(/(\d+)$/.exec(String(p.node))![1]),
      start: Number(p.start) * 512,
      size: Number(p.size) * 512,
      type: String(p.type),
      bootable: p.bootable === true,
      ...(p.uuid ? { uuid: String(p.uuid) } : {}),
      ...(p.name ? { name: String(p.name) } : {}),
    })),
  };
}

/** What `blkid -p` says of the bytes `[offset, offset + size)` of `file` (TYPE, LABEL, UUID, VERSION, …). */
export function blkid(file: string, offset = 0, size?: number): Record<string, string> {
  const args = ['-p', '-o', 'export', '-O', String(offset)];
  if (size !== undefined) args.push('-S', String(size));
  let out = '';
  try {
    out = run('blkid', [...args, file]);
  } catch (e) {
    const status = (e as { status?: number }).status;
    if (status === 2) return {}; // nothing recognised
    throw e;
  }
  const info: Record<string, string> = {};
  for (const line of out.split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0) info[line.slice(0, eq)] = line.slice(eq + 1);
  }
  return info;
}

/**
 * A disk image built to `spec` and cached: the table by sfdisk, each filesystem by its tool in a
 * file of its own, copied in at the partition's offset.
 */
export function testDisk(spec: TestDisk): string {
  return cached(`probe-${spec.table}-${spec.sizeMiB}M-${key(spec)}.raw`, (out) => {
    // Built under a name that does not end in a digit, so that sfdisk names partitions <name><n>.
    const { dir, cleanup } = tempDir('vmie-disk-');
    try {
      const file = path.join(dir, 'disk');
      buildDisk(file, spec);
      try {
        fs.renameSync(file, out);
      } catch {
        fs.writeFileSync(out, '');
        fs.truncateSync(out, fs.statSync(file).size);
        copySparse(file, 0, fs.statSync(file).size, out, 0);
      }
    } finally {
      cleanup();
    }
  });
}

function buildDisk(file: string, spec: TestDisk): void {
  fs.writeFileSync(file, '');
  fs.truncateSync(file, spec.sizeMiB * MiB);
  const parts = spec.partitions ?? [];
  if (spec.table === 'none') {
    if (spec.wholeDisk) makeFilesystem(file, spec.wholeDisk);
    return;
  }
  if (parts.length) {
    const lines = [`label: ${spec.table === 'mbr' ? 'dos' : 'gpt'}`, 'unit: sectors', ''];
    parts.forEach((p, i) => {
      const fields = [];
      if (p.sizeMiB) fields.push(`size=${p.sizeMiB}MiB`);
      if (p.sizeSectors) fields.push(`size=${p.sizeSectors}`);
      fields.push(`type=${p.type}`);
      if (p.bootable) fields.push('bootable');
      if (p.name) fields.push(`name="${p.name}"`);
      lines.push(`${file}${p.number ?? i + 1} : ${fields.join(', ')}`);
    });
    run('sfdisk', ['--quiet', '--no-reread', '--no-tell-kernel', file], lines.join('\n') + '\n');
  }
  const table = sfdiskTable(file).partitions;
  parts.forEach((p, i) => {
    const where = table.find((t) => t.number === (p.number ?? i + 1));
    if (!where) throw new Error(`sfdisk did not make partition ${p.number ?? i + 1}`);
    if (p.content) {
      copySparse(p.content.file, p.content.from, Math.min(p.content.length, where.size), file, where.start);
    } else if (p.fs) {
      const part = `${file}.part`;
      fs.writeFileSync(part, '');
      fs.truncateSync(part, where.size);
      try {
        makeFilesystem(part, p.fs, p.label, 5 + i);
        copySparse(part, 0, where.size, file, where.start);
      } finally {
        fs.rmSync(part, { force: true });
      }
    }
  });
}

/** A whole-disk image of `sizeMiB` holding filesystem `kind` (no partition table), cached. */
export function bareFilesystem(kind: TestFs, sizeMiB: number, label?: string): string {
  return cached(`probe-bare-${kind}-${sizeMiB}M-${key({ label })}.raw`, (file) => {
    fs.writeFileSync(file, '');
    fs.truncateSync(file, sizeMiB * MiB);
    makeFilesystem(file, kind, label);
  });
}

/** An MBR disk: an active ext4 partition and a partition of random bytes. */
export function mbrExt4Disk(): string {
  return testDisk({
    sizeMiB: 32,
    table: 'mbr',
    partitions: [
      { sizeMiB: 16, type: '83', bootable: true, fs: 'ext4' },
      { type: '83', fs: 'random' },
    ],
  });
}

/** An MBR disk: an active ext4 partition, and an extended partition holding three logical ones. */
export function extendedMbrDisk(): string {
  return testDisk({
    sizeMiB: 64,
    table: 'mbr',
    partitions: [
      { number: 1, sizeMiB: 8, type: '83', bootable: true, fs: 'ext4' },
      { number: 2, sizeMiB: 44, type: '5' },
      { number: 5, sizeMiB: 10, type: '83', fs: 'ext4' },
      { number: 6, sizeMiB: 10, type: '82', fs: 'swap' },
      { number: 7, sizeMiB: 12, type: '83', fs: 'ext2' },
    ],
  });
}

// --- FAT images with files ---

/**
 * A FAT disk made by qemu's virtual FAT driver (`qemu-img convert -f vvfat fat:<n>:<dir>`) from a
 * directory holding `files` (paths relative to the root, `/`-separated). vvfat gives an MBR disk
 * with one FAT partition at sector 63 (`fat:16`), or a bare 1.44 MB FAT12 floppy (`floppy`).
 */
export function vvfatImage(files: Record<string, string | Buffer>, variant: '16' | 'floppy'): string {
  return cached(`probe-vvfat-${variant}-${key(Object.entries(files).map(([k, v]) => [k, createHash('sha256').update(v).digest('hex')]))}.raw`, (file) => {
    const { dir, cleanup } = tempDir('vmie-vvfat-');
    try {
      for (const [name, data] of Object.entries(files)) {
        const p = path.join(dir, ...name.split('/'));
        fs.mkdirSync(path.dirname(p), { recursive: true });
        fs.writeFileSync(p, data);
        fs.utimesSync(p, 1_600_000_000, 1_600_000_000);
      }
      const spec = variant === 'floppy' ? `fat:floppy:12:${dir}` : `fat:16:${dir}`;
      run('qemu-img', ['convert', '-q', '-f', 'vvfat', spec, '-O', 'raw', file]);
    } finally {
      cleanup();
    }
  });
}

/** The FAT partition of a vvfat disk: its offset and size (from sfdisk). */
export function vvfatPartition(file: string): { start: number; size: number } {
  const p = sfdiskTable(file).partitions[0];
  return { start: p.start, size: p.size };
}

interface Bpb {
  bps: number;
  spc: number;
  reserved: number;
  fats: number;
  fatSectors: number;
  rootCluster: number;
}

function readBpb32(file: string): Bpb {
  const b = readFileAt(file, 0, 512);
  return {
    bps: b.readUInt16LE(11),
    spc: b[13],
    reserved: b.readUInt16LE(14),
    fats: b[16],
    fatSectors: b.readUInt32LE(36),
    rootCluster: b.readUInt32LE(44),
  };
}

function lfnChecksum(sfn: Buffer): number {
  let sum = 0;
  for (let i = 0; i < 11; i++) sum = (((sum & 1) << 7) + (sum >> 1) + sfn[i]) & 0xff;
  return sum;
}

/** Directory entries for `longName` (long-name entries, then the 8.3 entry) as Windows writes them. */
function dirEntries(longName: string | undefined, sfn: string, attr: number, cluster: number, size: number): Buffer {
  const short = Buffer.from(sfn.padEnd(11, ' '), 'latin1');
  const entry = Buffer.alloc(32);
  short.copy(entry, 0);
  entry[11] = attr;
  entry.writeUInt16LE(cluster >>> 16, 20);
  entry.writeUInt16LE(cluster & 0xffff, 26);
  entry.writeUInt32LE(size, 28);
  entry.writeUInt16LE(0x5000, 22); // 10:00
  entry.writeUInt16LE(0x5121, 24); // 2020-09-01
  if (!longName) return entry;
  const units = [...Buffer.from(longName, 'utf16le')];
  const chars: number[] = [];
  for (let i = 0; i < units.length; i += 2) chars.push(units[i] | (units[i + 1] << 8));
  const count = Math.ceil(chars.length / 13);
  const padded = [...chars, 0, ...Array(13).fill(0xffff)].slice(0, count * 13);
  const sum = lfnChecksum(short);
  const lfns: Buffer[] = [];
  for (let n = count; n >= 1; n--) {
    const e = Buffer.alloc(32);
    e[0] = n | (n === count ? 0x40 : 0);
    e[11] = 0x0f;
    e[13] = sum;
    const part = padded.slice((n - 1) * 13, n * 13);
    const at = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
    part.forEach((c, k) => e.writeUInt16LE(c, at[k]));
    lfns.push(e);
  }
  return Buffer.concat([...lfns, entry]);
}

/**
 * A FAT32 filesystem made by mkfs.vfat, with /EFI/BOOT/<loader> added by writing the directory
 * entries (with long names when `longNames`) and FAT entries by hand. Callers check the result with
 * `fsck.fat`, which lists the files it finds.
 */
export function fat32WithLoader(sizeMiB: number, loader: string | undefined, longNames: boolean): string {
  return cached(`probe-fat32-loader-${sizeMiB}M-${key({ loader, longNames })}.raw`, (file) => {
    fs.writeFileSync(file, '');
    fs.truncateSync(file, sizeMiB * MiB);
    run('mkfs.vfat', ['-F', '32', '-s', '1', '-n', 'ESP', file]);
    const b = readBpb32(file);
    const cluster = b.bps * b.spc;
    const dataStart = (b.reserved + b.fats * b.fatSectors) * b.bps;
    const at = (c: number) => dataStart + (c - 2) * cluster;
    const [efi, boot, data] = [3, 4, 5];
    const eoc = Buffer.alloc(4);
    eoc.writeUInt32LE(0x0fffffff, 0);
    for (let f = 0; f < b.fats; f++) {
      const fat = (b.reserved + f * b.fatSectors) * b.bps;
      for (const c of loader ? [efi, boot, data] : [efi, boot]) patchFile(file, fat + c * 4, eoc);
    }
    const name = (n: string) => (longNames ? n.toLowerCase() : undefined);
    // The root directory already holds the volume label entry written by mkfs.vfat: append after it.
    const root = readFileAt(file, at(b.rootCluster), cluster);
    let free = 0;
    while (free < root.length && root[free] !== 0) free += 32;
    patchFile(file, at(b.rootCluster) + free, dirEntries(name('EFI'), 'EFI', 0x10, efi, 0));
    patchFile(file, at(efi), Buffer.concat([dirEntries(undefined, '.', 0x10, efi, 0), dirEntries(undefined, '..', 0x10, 0, 0), dirEntries(name('Boot'), 'BOOT', 0x10, boot, 0)]));
    const bootDir = [dirEntries(undefined, '.', 0x10, boot, 0), dirEntries(undefined, '..', 0x10, efi, 0)];
    if (loader) {
      const body = pseudoRandom(300, 9);
      body.write('MZ', 0, 'latin1');
      const [base, ext] = loader.toUpperCase().split('.');
      bootDir.push(dirEntries(name(loader), `${base.padEnd(8, ' ')}${ext}`, 0x20, data, body.length));
      patchFile(file, at(data), body);
    }
    patchFile(file, at(boot), Buffer.concat(bootDir));
    // FSInfo: the free count and next free cluster are now unknown.
    const fsinfo = Buffer.alloc(8, 0xff);
    patchFile(file, b.bps + 488, fsinfo);
  });
}

// --- sources for the property tests ---

/**
 * A source of `size` bytes that are zero except for the chunks it holds, counting its reads like
 * the real sources do. Chunks come from the regions a probe read on a real disk.
 */
export class SparseSource implements ByteSource {
  public readonly stats: ReadStats = { bytesRead: 0, requests: 0 };
  public constructor(
    public readonly name: string,
    public readonly size: number,
    private readonly chunks: ReadonlyArray<{ readonly offset: number; readonly data: Buffer }>,
  ) {}

  public async read(offset: number, length: number): Promise<Buffer> {
    if (offset >= this.size) return Buffer.alloc(0);
    const end = Math.min(this.size, offset + length);
    this.stats.requests++;
    this.stats.bytesRead += end - offset;
    const out = Buffer.alloc(end - offset);
    for (const c of this.chunks) {
      const s = Math.max(offset, c.offset);
      const e = Math.min(end, c.offset + c.data.length);
      if (s < e) c.data.copy(out, s - offset, s - c.offset, e - c.offset);
    }
    return out;
  }

  public async close(): Promise<void> {}
}

/** A source that remembers the ranges read from another. */
export class RecordingSource implements ByteSource {
  public readonly ranges: Array<{ offset: number; length: number }> = [];
  public constructor(private readonly inner: ByteSource) {}
  public get name(): string {
    return this.inner.name;
  }
  public get size(): number {
    return this.inner.size;
  }
  public get stats(): ReadStats {
    return this.inner.stats;
  }
  public async read(offset: number, length: number): Promise<Buffer> {
    this.ranges.push({ offset, length });
    return this.inner.read(offset, length);
  }
  public async close(): Promise<void> {
    await this.inner.close();
  }
}
