/**
 * Checks shared by the tests of the sparse-image readers (VMDK, qcow2): what a reader gives must
 * equal what qemu-img gives for the same file, and its extents must cover every non-zero byte.
 */
import * as fs from 'node:fs';
import { cached, pseudoRandom, qemuInfo, qemuRaw } from './fixtures';
import { isZero } from '../../lambda/disk/bytes';
import type { DiskImage, Extent } from '../../lambda/disk/image';
import { FileSource, type ByteSource, type ReadStats } from '../../lambda/disk/source';

/** Opens a reader of one format. */
export type Opener = (source: ByteSource) => Promise<DiskImage>;

/** Collects the extents of an image, checking that they are ordered, merged and inside the disk. */
export async function collectExtents(img: DiskImage): Promise<Extent[]> {
  const out: Extent[] = [];
  for await (const e of img.extents()) out.push(e);
  let end = -1;
  for (const e of out) {
    expect(e.length).toBeGreaterThan(0);
    expect(e.offset).toBeGreaterThan(end); // ordered, not overlapping, adjacent runs merged
    end = e.offset + e.length;
  }
  expect(end).toBeLessThanOrEqual(img.virtualSize);
  return out;
}

/** The first offset where `a` and `b` differ, or -1. */
export function firstDifference(a: Buffer, b: Buffer): number {
  if (a.equals(b)) return -1;
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return n;
}

/** Offsets of non-zero bytes of `data` that lie outside `extents` (at most a few). */
export function nonZeroOutside(data: Buffer, extents: readonly Extent[]): number[] {
  const bad: number[] = [];
  let pos = 0;
  for (const e of [...extents, { offset: data.length, length: 0 }]) {
    const gap = data.subarray(pos, e.offset);
    if (!isZero(gap)) bad.push(pos + gap.findIndex((b) => b !== 0));
    pos = e.offset + e.length;
  }
  return bad;
}

/** What {@link expectMatchesQemu} found. */
export interface Checked {
  readonly img: DiskImage;
  readonly extents: Extent[];
  readonly expected: Buffer;
  readonly stats: ReadStats;
}

/**
 * Opens `file` with `open` and checks it against qemu-img: the virtual size equals `qemu-img info`,
 * the virtual bytes (read whole, and in unaligned pieces) equal `expectedRaw` (by default
 * `qemu-img convert -O raw` of the file), and every byte outside the extents is zero.
 */
export async function expectMatchesQemu(file: string, open: Opener, expectedRaw: string = qemuRaw(file)): Promise<Checked> {
  const expected = fs.readFileSync(expectedRaw);
  const src = await FileSource.open(file);
  try {
    const img = await open(src);
    expect(img.virtualSize).toBe(qemuInfo(file)['virtual-size']);
    expect(img.virtualSize).toBe(expected.length);

    const whole = await img.read(0, img.virtualSize);
    expect(firstDifference(whole, expected)).toBe(-1);

    // Unaligned pieces that start and end inside grains or clusters.
    const size = img.virtualSize;
    const r = pseudoRandom(64, size % 1000);
    for (let i = 0; i < 8; i++) {
      const offset = r.readUInt32LE(i * 4) % size;
      const length = 1 + (r.readUInt32LE(32 + i * 4) % 300_000);
      const piece = await img.read(offset, length);
      expect(firstDifference(piece, expected.subarray(offset, offset + length))).toBe(-1);
    }
    expect((await img.read(size - 10, 100)).length).toBe(10);
    expect((await img.read(size, 100)).length).toBe(0);

    const extents = await collectExtents(img);
    expect(nonZeroOutside(expected, extents)).toEqual([]);
    return { img, extents, expected, stats: { ...src.stats } };
  } finally {
    await src.close();
  }
}

/** Total bytes of some extents. */
export function extentBytes(extents: readonly Extent[]): number {
  return extents.reduce((n, e) => n + e.length, 0);
}

/**
 * A raw disk of pseudo-random runs at scattered, unaligned places, with holes between them, whose
 * size (12 MiB + 1536 bytes) is not a multiple of any grain or cluster size.
 */
export function randomSparseDisk(): string {
  const MiB = 1024 * 1024;
  const size = 12 * MiB + 1536;
  const runs: Array<[number, number]> = [
    [0, 200_000],
    [MiB + 1536, 70_000],
    [5 * MiB + 100, 3 * MiB],
    [size - 5000, 5000],
  ];
  return cached(`sparse-random-${size}.raw`, (file) => {
    const fd = fs.openSync(file, 'w');
    try {
      fs.ftruncateSync(fd, size);
      runs.forEach(([at, n], i) => fs.writeSync(fd, pseudoRandom(n, 100 + i), 0, n, at));
    } finally {
      fs.closeSync(fd);
    }
  });
}

/**
 * A sparse raw disk of `size` bytes (1 GiB, 1 TiB, …) with 256 KiB of pseudo-random data at the
 * start and nothing else, for measuring what opening a large image costs.
 */
export function sparseHeadDisk(size: number): string {
  return cached(`sparse-head-${size}.raw`, (file) => {
    const fd = fs.openSync(file, 'w');
    try {
      fs.ftruncateSync(fd, size);
      fs.writeSync(fd, pseudoRandom(256 * 1024, 42), 0, 256 * 1024, 0);
    } finally {
      fs.closeSync(fd);
    }
  });
}

/** Opens a file, runs `f` on the source, and closes it. */
export async function withFile<T>(file: string, f: (src: ByteSource) => Promise<T>): Promise<T> {
  const src = await FileSource.open(file);
  try {
    return await f(src);
  } finally {
    await src.close();
  }
}

/** The error `p` rejects with (fails the test when it resolves). */
export async function rejection(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (e) {
    return e as Error;
  }
  throw new Error('expected a rejection, but the promise resolved');
}
