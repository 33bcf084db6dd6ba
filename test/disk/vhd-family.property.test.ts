/* eslint-disable no-bitwise -- checksums of mutated headers */
import * as fs from 'node:fs';
import fc from 'fast-check';
import { crc32c } from '../../lambda/disk/crc32c';
import { ImageFormatError, ImageReadError, UnsupportedImageError } from '../../lambda/disk/errors';
import type { DiskImage } from '../../lambda/disk/image';
import type { ByteSource } from '../../lambda/disk/source';
import { openVdi } from '../../lambda/disk/vdi';
import { openVhd } from '../../lambda/disk/vhd';
import { openVhdx } from '../../lambda/disk/vhdx';
import { pseudoRandom, rawDisk } from '../helpers/fixtures';
import { converted, KiB, MiB, MutatedSource, vhdSum } from '../helpers/vhd-family';

type Opener = (source: ByteSource) => Promise<DiskImage>;

/** The largest single request a reader may make, and what opening may read in all. */
const MAX_REQUEST = MiB;
const OPEN_BUDGET = MiB;
/** Bytes asked of each probing read after open. */
const PROBE_READ = 256 * KiB;

function isTyped(e: unknown): boolean {
  return e instanceof ImageReadError || e instanceof ImageFormatError || e instanceof UnsupportedImageError;
}

/**
 * Opens `src` and, when that works, reads at a few offsets and walks the extents. Every failure
 * must be a typed error; reads stay within the budget: opening reads at most OPEN_BUDGET, each
 * probe read at most its length plus table pages, and the extents walk at most the file.
 */
async function exercise(open: Opener, src: MutatedSource): Promise<'opened' | 'rejected'> {
  let img: DiskImage;
  try {
    img = await open(src);
  } catch (e) {
    if (!isTyped(e)) throw e;
    expect(src.stats.bytesRead).toBeLessThanOrEqual(OPEN_BUDGET);
    return 'rejected';
  }
  expect(src.stats.bytesRead).toBeLessThanOrEqual(OPEN_BUDGET);
  expect(Number.isSafeInteger(img.virtualSize) && img.virtualSize >= 0).toBe(true);
  const offsets = [0, Math.floor(img.virtualSize / 2), Math.max(0, img.virtualSize - 1000)];
  for (const off of offsets) {
    const before = src.stats.bytesRead;
    try {
      const got = await img.read(off, PROBE_READ);
      expect(got.length).toBe(Math.max(0, Math.min(PROBE_READ, img.virtualSize - off)));
    } catch (e) {
      if (!isTyped(e)) throw e;
    }
    expect(src.stats.bytesRead - before).toBeLessThanOrEqual(2 * PROBE_READ + 64 * KiB);
  }
  const before = src.stats.bytesRead;
  try {
    let prevEnd = -1;
    let n = 0;
    for await (const e of img.extents()) {
      expect(e.offset).toBeGreaterThan(prevEnd);
      expect(e.length).toBeGreaterThan(0);
      expect(e.offset + e.length).toBeLessThanOrEqual(img.virtualSize);
      prevEnd = e.offset + e.length;
      if (++n > 100_000) throw new Error('too many extents');
    }
  } catch (e) {
    if (!isTyped(e)) throw e;
  }
  expect(src.stats.bytesRead - before).toBeLessThanOrEqual(src.size + 64 * KiB);
  return 'opened';
}

/** A small raw disk with data in its first and last MiB and a hole between. */
function smallRaw(): string {
  return rawDisk({
    sizeMiB: 6,
    table: 'mbr',
    partitions: [{ sizeMiB: 2, type: '83', randomSeed: 31 }, { type: '83' }],
    scatter: [5],
  });
}

interface Base {
  readonly name: string;
  readonly open: Opener;
  readonly bytes: Buffer;
  /** [start, length] ranges worth mutating. */
  readonly hot: Array<[number, number]>;
  /** Adds patches that make the checksums of mutated structures right again. */
  readonly fixSums: (read: (at: number, n: number) => Buffer, patch: Map<number, number>) => void;
}

function putU32(patch: Map<number, number>, at: number, v: number, le: boolean): void {
  const b = Buffer.alloc(4);
  if (le) b.writeUInt32LE(v >>> 0);
  else b.writeUInt32BE(v >>> 0);
  for (let i = 0; i < 4; i++) patch.set(at + i, b[i]);
}

function vhdBase(name: string, file: string): Base {
  const bytes = fs.readFileSync(file);
  const size = bytes.length;
  const dynamic = bytes.toString('latin1', 0, 8) === 'conectix';
  const bat = dynamic ? Number(bytes.readBigUInt64BE(512 + 16)) : 0;
  const hot: Array<[number, number]> = [[size - 512, 100]];
  if (dynamic) hot.push([0, 100], [512, 48], [bat, 64]);
  return {
    name,
    open: openVhd,
    bytes,
    hot,
    fixSums: (read, patch) => {
      putU32(patch, size - 512 + 64, vhdSum(read(size - 512, 512), 64), false);
      if (dynamic) {
        putU32(patch, 64, vhdSum(read(0, 512), 64), false);
        putU32(patch, 512 + 36, vhdSum(read(512, 1024), 36), false);
      }
    },
  };
}

function vhdxBase(file: string): Base {
  const bytes = fs.readFileSync(file);
  const region = (lo: number) => {
    for (let i = 0; i < bytes.readUInt32LE(192 * KiB + 8); i++) {
      const at = 192 * KiB + 16 + i * 32;
      if (bytes.readUInt32LE(at) === lo) return Number(bytes.readBigUInt64LE(at + 16));
    }
    throw new Error('region missing');
  };
  const meta = region(0x8b7ca206);
  const bat = region(0x2dc27766);
  const crcAt = (read: (at: number, n: number) => Buffer, at: number, n: number, patch: Map<number, number>) => {
    const buf = Buffer.from(read(at, n));
    buf.writeUInt32LE(0, 4);
    putU32(patch, at + 4, crc32c(buf), true);
  };
  return {
    name: 'dynamic VHDX',
    open: openVhdx,
    bytes,
    hot: [[64 * KiB, 80], [128 * KiB, 80], [192 * KiB, 80], [256 * KiB, 80], [meta, 192], [meta + 64 * KiB, 48], [bat, 64]],
    fixSums: (read, patch) => {
      for (const at of [64 * KiB, 128 * KiB]) crcAt(read, at, 4 * KiB, patch);
      for (const at of [192 * KiB, 256 * KiB]) crcAt(read, at, 64 * KiB, patch);
    },
  };
}

function vdiBase(file: string): Base {
  const bytes = fs.readFileSync(file);
  return {
    name: 'dynamic VDI',
    open: openVdi,
    bytes,
    hot: [[64, 336], [bytes.readUInt32LE(340), 64]],
    fixSums: () => {},
  };
}

const bases: Array<() => Base> = [
  () => vhdBase('dynamic VHD', converted(smallRaw(), 'vpc', ['subformat=dynamic', 'force_size=on'])),
  () => vhdBase('fixed VHD', converted(smallRaw(), 'vpc', ['subformat=fixed', 'force_size=on'])),
  () => vhdxBase(converted(smallRaw(), 'vhdx', ['subformat=dynamic', 'block_size=1048576'])),
  () => vdiBase(converted(smallRaw(), 'vdi', [])),
];

const mutation = fc.record({
  edits: fc.array(fc.record({ hot: fc.nat(), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }), { minLength: 1, maxLength: 8 }),
  fixSums: fc.boolean(),
  // Mostly whole files; one in four cut at a random point.
  cut: fc.oneof({ weight: 3, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: fc.double({ min: 0, max: 1, noNaN: true }) }),
});

describe('VHD-family readers on mutated qemu-made images', () => {
  for (const make of bases) {
    const base = make();
    test(`${base.name}: mutated headers and tables give an image or a typed error, with bounded reads`, async () => {
      // GIVEN the unmutated image opens
      const plain = new MutatedSource(base.name, base.bytes, base.bytes.length, new Map(), MAX_REQUEST);
      expect(await exercise(base.open, plain)).toBe('opened');
      const seen = { opened: 0, rejected: 0 };
      // WHEN / THEN
      await fc.assert(
        fc.asyncProperty(mutation, async ({ edits, fixSums, cut }) => {
          const patch = new Map<number, number>();
          for (const e of edits) {
            const [start, len] = base.hot[e.hot % base.hot.length];
            patch.set(start + (e.at % len), e.value);
          }
          const read = (at: number, n: number) => {
            const b = Buffer.from(base.bytes.subarray(at, at + n));
            for (const [p, v] of patch) if (p >= at && p < at + n) b[p - at] = v;
            return b;
          };
          if (fixSums) base.fixSums(read, patch);
          const size = cut === null ? base.bytes.length : Math.floor(cut * base.bytes.length);
          const src = new MutatedSource(base.name, base.bytes, size, patch, MAX_REQUEST);
          seen[await exercise(base.open, src)]++;
        }),
        { numRuns: 250 },
      );
      // Both outcomes occur: mutations are neither all harmless nor all fatal.
      expect(seen.opened).toBeGreaterThan(0);
      expect(seen.rejected).toBeGreaterThan(0);
    });
  }
});

describe('VHD-family readers on random bytes', () => {
  const openers: Array<[string, Opener]> = [['VHD', openVhd], ['VHDX', openVhdx], ['VDI', openVdi]];
  for (const [name, open] of openers) {
    test(`${name}: arbitrary bytes give a typed error or an image, with bounded reads`, async () => {
      await fc.assert(
        fc.asyncProperty(fc.uint8Array({ maxLength: 4096 }), async (bytes) => {
          // GIVEN
          const src = new MutatedSource('random', Buffer.from(bytes), bytes.length, new Map(), MAX_REQUEST);
          // WHEN / THEN
          await exercise(open, src);
        }),
        { numRuns: 300 },
      );
    });
  }

  test('VHD: random footers and dynamic headers with the right cookies and checksums', async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 1, max: 2 ** 31 }), fc.integer({ min: 2048, max: 64 * KiB }), fc.constantFrom(2, 3, 4),
        async (seed, size, type) => {
          // GIVEN
          const buf = pseudoRandom(size, seed);
          const footer = buf.subarray(size - 512);
          footer.write('conectix', 0, 'latin1');
          footer.writeUInt32BE(type, 60);
          footer.writeBigUInt64BE(512n, 16);
          footer.writeUInt32BE(vhdSum(footer, 64), 64);
          footer.copy(buf, 0);
          buf.write('cxsparse', 512, 'latin1');
          buf.writeUInt32BE(vhdSum(buf.subarray(512, 1536), 36), 512 + 36);
          // WHEN / THEN
          await exercise(openVhd, new MutatedSource('random.vhd', buf, size, new Map(), MAX_REQUEST));
        }),
      { numRuns: 300 },
    );
  });

  test('VHDX: random header section with the right signatures and CRCs', async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 1, max: 2 ** 31 }), fc.integer({ min: 256 * KiB, max: 3 * MiB }), async (seed, size) => {
        // GIVEN
        const buf = pseudoRandom(size, seed);
        buf.write('vhdxfile', 0, 'latin1');
        for (const [at, sig, n] of [[64 * KiB, 'head', 4 * KiB], [128 * KiB, 'head', 4 * KiB], [192 * KiB, 'regi', 64 * KiB]] as const) {
          buf.write(sig, at, 'latin1');
          if (sig === 'head') buf.writeUInt16LE(1, at + 66);
          if (sig === 'regi') buf.writeUInt32LE(seed % 4, at + 8);
          buf.writeUInt32LE(0, at + 4);
          buf.writeUInt32LE(crc32c(buf.subarray(at, at + n)), at + 4);
        }
        // WHEN / THEN
        await exercise(openVhdx, new MutatedSource('random.vhdx', buf, size, new Map(), MAX_REQUEST));
      }),
      { numRuns: 100 },
    );
  });

  test('VDI: random headers with the right signature and version', async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 1, max: 2 ** 31 }), fc.integer({ min: 512, max: 64 * KiB }), async (seed, size) => {
        // GIVEN
        const buf = pseudoRandom(size, seed);
        buf.writeUInt32LE(0xbeda107f, 64);
        buf.writeUInt32LE(0x00010001, 68);
        buf.writeUInt32LE(384 + (seed % 32), 72);
        buf.writeUInt32LE(1 + (seed % 4), 76);
        buf.writeUInt32LE(512, 340);
        buf.writeUInt32LE(1 << (12 + (seed % 10)), 376);
        // WHEN / THEN
        await exercise(openVdi, new MutatedSource('random.vdi', buf, size, new Map(), MAX_REQUEST));
      }),
      { numRuns: 300 },
    );
  });
});
