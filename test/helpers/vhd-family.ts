/**
 * Helpers for the VHD, VHDX and VDI reader tests: the qemu-made fixtures, comparisons of a reader's
 * virtual bytes with `qemu-img convert -O raw`, hand patches of images, and byte sources that
 * count, cap and mutate what they serve.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { cached, qemuConvert, rawDisk, run, sampleGptDisk, sampleMbrDisk } from './fixtures';
import type { DiskImage, Extent } from '../../lambda/disk/image';
import { checkRange, type ByteSource, type ReadStats } from '../../lambda/disk/source';

export const KiB = 1024;
export const MiB = 1024 * KiB;

/** A raw disk of pseudo-random bytes, 19 MiB: no block size of these formats divides it. */
export function randomDataDisk(): string {
  return rawDisk({ sizeMiB: 19, table: 'none', partitions: [{ type: 'none', randomSeed: 23 }] });
}

/** The raw disks every reader is checked on, by name. */
export function sampleDisks(): Array<[string, () => string]> {
  return [
    ['MBR disk', () => sampleMbrDisk()],
    ['GPT disk', () => sampleGptDisk()],
    ['pseudo-random disk', () => randomDataDisk()],
  ];
}

/** `qemu-img convert` of `raw` into `fmt` with `options`, cached. */
export function converted(raw: string, fmt: 'vpc' | 'vhdx' | 'vdi', options: string[]): string {
  return qemuConvert(raw, fmt, options, fmt === 'vpc' ? 'vhd' : fmt);
}

/**
 * Reads the whole virtual disk through `img` in chunks of `chunk` bytes (starting at `start`, so
 * that the reads straddle block boundaries) and compares each with the same range of `rawFile`.
 * Returns the first differing offset, or -1.
 */
export async function firstDifference(img: DiskImage, rawFile: string, chunk: number, start = 0): Promise<number> {
  const fd = fs.openSync(rawFile, 'r');
  try {
    const expected = Buffer.alloc(Math.max(chunk, start));
    const ranges: Array<[number, number]> = [];
    if (start > 0) ranges.push([0, Math.min(start, img.virtualSize)]);
    for (let off = start; off < img.virtualSize; off += chunk) ranges.push([off, Math.min(chunk, img.virtualSize - off)]);
    for (const [off, len] of ranges) {
      const got = await img.read(off, len);
      if (got.length !== len) return off;
      const n = fs.readSync(fd, expected, 0, len, off);
      if (n !== len) return off;
      if (!got.equals(expected.subarray(0, len))) {
        for (let i = 0; i < len; i++) if (got[i] !== expected[i]) return off + i;
      }
    }
    return -1;
  } finally {
    fs.closeSync(fd);
  }
}

/** All extents of `img`, checked to be in order, inside the disk, and merged (no two touching). */
export async function allExtents(img: DiskImage): Promise<Extent[]> {
  const out: Extent[] = [];
  for await (const e of img.extents()) {
    const prev = out[out.length - 1];
    if (e.length <= 0 || e.offset < 0 || e.offset + e.length > img.virtualSize) {
      throw new Error(`extent ${e.offset}+${e.length} is empty or outside the disk of ${img.virtualSize} bytes`);
    }
    if (prev && e.offset <= prev.offset + prev.length) {
      throw new Error(`extent ${e.offset}+${e.length} overlaps, touches or precedes ${prev.offset}+${prev.length}`);
    }
    out.push(e);
  }
  return out;
}

/** The first offset of `rawFile` outside `extents` that holds a non-zero byte, or -1. */
export function firstNonZeroOutside(rawFile: string, extents: readonly Extent[], size: number): number {
  const fd = fs.openSync(rawFile, 'r');
  try {
    const buf = Buffer.alloc(4 * MiB);
    let pos = 0;
    const gaps: Array<[number, number]> = [];
    for (const e of extents) {
      if (e.offset > pos) gaps.push([pos, e.offset]);
      pos = e.offset + e.length;
    }
    if (pos < size) gaps.push([pos, size]);
    for (const [s, e] of gaps) {
      for (let off = s; off < e; off += buf.length) {
        const n = fs.readSync(fd, buf, 0, Math.min(buf.length, e - off), off);
        for (let i = 0; i < n; i++) if (buf[i] !== 0) return off + i;
      }
    }
    return -1;
  } finally {
    fs.closeSync(fd);
  }
}

/** Copies `file` to `dir` (a fresh temporary directory) under `name` and returns the copy's path. */
export function copyTo(file: string, dir: string, name: string): string {
  const out = path.join(dir, name);
  fs.copyFileSync(file, out);
  return out;
}

/** Reads `length` bytes of `file` at `offset`. */
export function readAt(file: string, offset: number, length: number): Buffer {
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.alloc(length);
    fs.readSync(fd, buf, 0, length, offset);
    return buf;
  } finally {
    fs.closeSync(fd);
  }
}

/** Writes `data` into `file` at `offset`. */
export function writeAt(file: string, offset: number, data: Uint8Array): void {
  const fd = fs.openSync(file, 'r+');
  try {
    fs.writeSync(fd, data, 0, data.length, offset);
  } finally {
    fs.closeSync(fd);
  }
}

/** The VHD checksum: one's complement of the byte sum with the 4 bytes at `at` counted as zero. */
export function vhdSum(buf: Uint8Array, at: number): number {
  let sum = 0;
  buf.forEach((b, i) => {
    if (i < at || i >= at + 4) sum += b;
  });
  return (0xffffffff - (sum % 0x100000000));
}

/** Sets the VHD checksum of the structure in `buf` (footer: at 64; dynamic header: at 36). */
export function fixVhdSum(buf: Buffer, at: number): void {
  buf.writeUInt32BE(vhdSum(buf, at), at);
}

/** Encodes `s` as UTF-16 big-endian. */
export function utf16be(s: string): Buffer {
  const b = Buffer.from(s, 'utf16le');
  return b.swap16();
}

/**
 * Bytes in memory served with counted reads: each request is checked against `maxRequest`, and
 * the byte at any offset can be replaced (`patches`) without copying the base.
 */
export class MutatedSource implements ByteSource {
  public readonly stats: ReadStats = { bytesRead: 0, requests: 0 };
  public largestRequest = 0;

  public constructor(
    public readonly name: string,
    private readonly base: Buffer,
    public readonly size: number,
    private readonly patches: ReadonlyMap<number, number> = new Map(),
    private readonly maxRequest = 4 * MiB,
  ) {}

  public async read(offset: number, length: number): Promise<Buffer> {
    checkRange(offset, length);
    if (length > this.maxRequest) throw new Error(`unbounded read: ${length} bytes at ${offset}`);
    if (offset >= this.size) return Buffer.alloc(0);
    const end = Math.min(this.size, offset + length);
    this.stats.requests++;
    this.stats.bytesRead += end - offset;
    this.largestRequest = Math.max(this.largestRequest, end - offset);
    const out = Buffer.alloc(end - offset);
    this.base.copy(out, 0, offset, Math.min(end, this.base.length));
    for (const [at, v] of this.patches) if (at >= offset && at < end) out[at - offset] = v;
    return out;
  }

  public async close(): Promise<void> {}
}

/**
 * What `qemu-img info -f fmt` says of `file`. The format is given because qemu does not probe a
 * fixed VHD (its only signature is at the end) and would describe it as raw.
 */
export function qemuInfoAs(file: string, fmt: string): { 'virtual-size': number; [k: string]: unknown } {
  return JSON.parse(run('qemu-img', ['info', '-f', fmt, '--output=json', file]));
}

/** The virtual bytes of `file` read as format `fmt` by `qemu-img convert -O raw`, cached. */
export function qemuRawAs(file: string, fmt: string): string {
  const st = fs.statSync(file);
  const key = createHash('sha256').update(`${fmt}:${st.size}:${st.mtimeMs}`).digest('hex').slice(0, 12);
  return cached(`${path.basename(file)}.${key}.${fmt}-as-raw`, (out) => {
    run('qemu-img', ['convert', '-q', '-f', fmt, '-O', 'raw', file, out]);
  });
}

/** Encodes a GUID in the mixed-endian layout of GPT and VHDX (the inverse of `guidAt`). */
export function guidBytes(guid: string): Buffer {
  const hex = guid.replace(/-/g, '');
  const b = Buffer.from(hex, 'hex');
  b.subarray(0, 4).reverse();
  b.subarray(4, 6).reverse();
  b.subarray(6, 8).reverse();
  return b;
}
