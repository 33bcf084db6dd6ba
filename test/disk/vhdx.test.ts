/* eslint-disable no-bitwise -- BAT states and sector bitmaps are bit fields */
import * as fs from 'node:fs';
import { crc32c } from '../../lambda/disk/crc32c';
import { ImageFormatError, ImageReadError } from '../../lambda/disk/errors';
import type { DiskImage } from '../../lambda/disk/image';
import { CachedSource, FileSource } from '../../lambda/disk/source';
import { openVhdx } from '../../lambda/disk/vhdx';
import { pseudoRandom, qemuCreate, sampleMbrDisk, tempDir } from '../helpers/fixtures';
import {
  allExtents, converted, copyTo, firstDifference, firstNonZeroOutside, guidBytes, KiB, MiB,
  qemuInfoAs, qemuRawAs, randomDataDisk, readAt, sampleDisks, writeAt,
} from '../helpers/vhd-family';

async function withVhdx<T>(file: string, fn: (img: DiskImage) => Promise<T>): Promise<T> {
  const src = await FileSource.open(file);
  try {
    return await fn(await openVhdx(src));
  } finally {
    await src.close();
  }
}

function dynamicOf(raw: string): string {
  return converted(raw, 'vhdx', ['subformat=dynamic']);
}

/** Rewrites the 4 KiB header at `at` with `edit` and fixes its CRC-32C. */
function editHeader(file: string, at: number, edit: (h: Buffer) => void): void {
  const h = readAt(file, at, 4 * KiB);
  edit(h);
  h.writeUInt32LE(0, 4);
  h.writeUInt32LE(crc32c(h), 4);
  writeAt(file, at, h);
}

/** The file offset of the metadata region, from the first region table. */
function metadataOffset(file: string): number {
  const table = readAt(file, 192 * KiB, 64 * KiB);
  for (let i = 0; i < table.readUInt32LE(8); i++) {
    const at = 16 + i * 32;
    if (table.readUInt32LE(at) === 0x8b7ca206) return Number(table.readBigUInt64LE(at + 16));
  }
  throw new Error('no metadata region');
}

/** The file offset of the BAT, from the first region table. */
function batOffset(file: string): number {
  const table = readAt(file, 192 * KiB, 64 * KiB);
  for (let i = 0; i < table.readUInt32LE(8); i++) {
    const at = 16 + i * 32;
    if (table.readUInt32LE(at) === 0x2dc27766) return Number(table.readBigUInt64LE(at + 16));
  }
  throw new Error('no BAT region');
}

/** Sets the HasParent flag in the file parameters item. */
function setHasParent(file: string): void {
  const meta = metadataOffset(file);
  const table = readAt(file, meta, 64 * KiB);
  for (let i = 0; i < table.readUInt16LE(10); i++) {
    const at = 32 + i * 32;
    if (table.readUInt32LE(at) === 0xcaa16737) {
      const item = meta + table.readUInt32LE(at + 16);
      const params = readAt(file, item, 8);
      params.writeUInt32LE(params.readUInt32LE(4) | 2, 4);
      writeAt(file, item, params);
      return;
    }
  }
  throw new Error('no file parameters item');
}

/** Adds a parent locator item with one `relative_path` entry to the metadata. */
function addParentLocator(file: string, relativePath: string): void {
  const meta = metadataOffset(file);
  const table = readAt(file, meta, 64 * KiB);
  const count = table.readUInt16LE(10);
  const itemOffset = 512 * KiB; // free space in qemu's 1 MiB metadata region
  const key = Buffer.from('relative_path', 'utf16le');
  const value = Buffer.from(relativePath, 'utf16le');
  const item = Buffer.alloc(20 + 12 + key.length + value.length);
  guidBytes('B04AEFB7-D19E-4A81-B789-25B8E9445913').copy(item, 0); // the locator type of VHDX parents
  item.writeUInt16LE(1, 18);
  item.writeUInt32LE(32, 20);
  item.writeUInt32LE(32 + key.length, 24);
  item.writeUInt16LE(key.length, 28);
  item.writeUInt16LE(value.length, 30);
  key.copy(item, 32);
  value.copy(item, 32 + key.length);
  writeAt(file, meta + itemOffset, item);
  const entry = Buffer.alloc(32);
  guidBytes('A8D35F2D-B30B-454D-ABF7-D3D84834AB0C').copy(entry, 0); // the parent locator item
  entry.writeUInt32LE(itemOffset, 16);
  entry.writeUInt32LE(item.length, 20);
  entry.writeUInt32LE(4 | 2, 24); // IsRequired, IsVirtualDisk
  writeAt(file, meta + 32 + count * 32, entry);
  const c = Buffer.alloc(2);
  c.writeUInt16LE(count + 1, 0);
  writeAt(file, meta + 10, c);
}

describe('CRC-32C', () => {
  test('gives the published check value and continues over pieces', () => {
    // GIVEN
    const data = Buffer.from('123456789');
    // WHEN
    const whole = crc32c(data);
    const pieces = crc32c(data.subarray(4), crc32c(data.subarray(0, 4)));
    // THEN
    expect(whole).toBe(0xe3069283);
    expect(pieces).toBe(whole);
  });
});

describe('VHDX reader on qemu-made images', () => {
  const variants: Array<[string, string[]]> = [
    ['dynamic', ['subformat=dynamic']],
    ['fixed', ['subformat=fixed']],
    ['dynamic', ['subformat=dynamic', 'block_size=1048576']],
  ];
  for (const [subformat, options] of variants) {
    for (const [label, raw] of sampleDisks()) {
      test(`${subformat} (${options.join(',')}) of the ${label}: size, bytes and extents match qemu-img`, async () => {
        // GIVEN
        const file = converted(raw(), 'vhdx', options);
        const info = qemuInfoAs(file, 'vhdx');
        const expected = qemuRawAs(file, 'vhdx');
        // WHEN
        await withVhdx(file, async (img) => {
          const diff = await firstDifference(img, expected, 3 * MiB + 7 * KiB, 5 * MiB - 512);
          const extents = await allExtents(img);
          // THEN
          expect(img.format).toBe('vhdx');
          expect(img.subformat).toBe(subformat);
          expect(img.virtualSize).toBe(info['virtual-size']);
          expect(img.findings).toEqual([]);
          expect(diff).toBe(-1);
          expect(firstNonZeroOutside(expected, extents, img.virtualSize)).toBe(-1);
          expect(img.details.blockSize).toBe(info['cluster-size']);
          expect(img.details.logicalSectorSize).toBe(512);
          expect(img.details.leaveBlocksAllocated).toBe(subformat === 'fixed');
          expect(img.details.hasParent).toBe(false);
        });
      });
    }
  }
});

describe('VHDX reader on hand-built images', () => {
  let dir: string;
  let cleanup: () => void;
  beforeEach(() => ({ dir, cleanup } = tempDir('vhdx-test-')));
  afterEach(() => cleanup());

  test('a log GUID in the current header is reported, and the blocks still read', async () => {
    // GIVEN
    const base = dynamicOf(sampleMbrDisk());
    const file = copyTo(base, dir, 'log.vhdx');
    for (const at of [64 * KiB, 128 * KiB]) editHeader(file, at, (h) => pseudoRandom(16, 5).copy(h, 48));
    // WHEN
    await withVhdx(file, async (img) => {
      // THEN
      expect(img.findings.map((f) => f.code)).toEqual(['VHDX_LOG_NOT_REPLAYED']);
      expect(await firstDifference(img, qemuRawAs(base, 'vhdx'), 16 * MiB)).toBe(-1);
    });
  });

  test('the valid header with the higher sequence number is the current one', async () => {
    // GIVEN two copies: in each, header 2 has a log GUID; in one it is newer, in the other older
    const base = dynamicOf(sampleMbrDisk());
    const newer = copyTo(base, dir, 'newer.vhdx');
    const older = copyTo(base, dir, 'older.vhdx');
    const seq1 = readAt(base, 64 * KiB + 8, 8).readBigUInt64LE(0);
    editHeader(newer, 128 * KiB, (h) => {
      pseudoRandom(16, 6).copy(h, 48);
      h.writeBigUInt64LE(seq1 + 1n, 8);
    });
    editHeader(older, 128 * KiB, (h) => {
      pseudoRandom(16, 6).copy(h, 48);
      h.writeBigUInt64LE(seq1 - 1n, 8);
    });
    // WHEN
    const [a, b] = await Promise.all([newer, older].map((f) => withVhdx(f, async (img) => img)));
    // THEN
    expect(a.details.activeHeader).toBe(2);
    expect(a.findings.map((f) => f.code)).toEqual(['VHDX_LOG_NOT_REPLAYED']);
    expect(b.details.activeHeader).toBe(1);
    expect(b.findings).toEqual([]);
  });

  test('a damaged header is passed over; two damaged headers are a checksum error', async () => {
    // GIVEN
    const base = dynamicOf(sampleMbrDisk());
    const one = copyTo(base, dir, 'one-bad.vhdx');
    const two = copyTo(base, dir, 'two-bad.vhdx');
    const seq1 = readAt(base, 64 * KiB + 8, 8).readBigUInt64LE(0);
    const seq2 = readAt(base, 128 * KiB + 8, 8).readBigUInt64LE(0);
    const newest = seq2 > seq1 ? 128 * KiB : 64 * KiB;
    writeAt(one, newest + 200, Buffer.from([0x55])); // inside the CRC, outside the fields
    for (const at of [64 * KiB, 128 * KiB]) writeAt(two, at + 200, Buffer.from([0x55]));
    // WHEN
    const img = await withVhdx(one, async (i) => i);
    const src = await FileSource.open(two);
    const opening = openVhdx(src);
    // THEN
    expect(img.details.activeHeader).toBe(newest === 64 * KiB ? 2 : 1);
    await expect(opening).rejects.toBeInstanceOf(ImageFormatError);
    await expect(opening).rejects.toMatchObject({ code: 'CHECKSUM_MISMATCH' });
    await src.close();
  });

  test('a damaged first region table is replaced by the second copy', async () => {
    // GIVEN
    const base = dynamicOf(sampleMbrDisk());
    const file = copyTo(base, dir, 'region.vhdx');
    writeAt(file, 192 * KiB + 100, Buffer.from([0xaa]));
    // WHEN
    await withVhdx(file, async (img) => {
      // THEN
      expect(img.findings).toEqual([]);
      expect(await firstDifference(img, qemuRawAs(base, 'vhdx'), 16 * MiB)).toBe(-1);
    });
  });

  test('HasParent makes a differencing disk, reported with the parent path from the locator', async () => {
    // GIVEN
    const base = dynamicOf(sampleMbrDisk());
    const file = copyTo(base, dir, 'child.vhdx');
    setHasParent(file);
    addParentLocator(file, '.\\base.vhdx');
    // WHEN
    await withVhdx(file, async (img) => {
      // THEN
      expect(img.subformat).toBe('differencing');
      expect(img.details.parentPath).toBe('.\\base.vhdx');
      expect(img.findings.map((f) => f.code)).toEqual(['DIFFERENCING_DISK']);
      expect(img.findings[0].message).toContain('.\\base.vhdx');
      expect(await firstDifference(img, qemuRawAs(base, 'vhdx'), 16 * MiB)).toBe(-1);
    });
  });

  test('a partially present block reads the sectors its sector bitmap marks, zeros for the others', async () => {
    // GIVEN a differencing copy of the pseudo-random disk whose block 0 is partially present, with
    // a sector bitmap block appended at the end of the file
    const base = dynamicOf(randomDataDisk());
    const file = copyTo(base, dir, 'partial.vhdx');
    setHasParent(file);
    const img0 = await withVhdx(file, async (i) => i);
    const chunkRatio = Number(img0.details.chunkRatio);
    const bat = batOffset(file);
    const entry0 = readAt(file, bat, 8);
    entry0[0] = (entry0[0] & ~7) | 7;
    writeAt(file, bat, entry0);
    const bitmapAt = Math.ceil(fs.statSync(file).size / MiB) * MiB;
    const bitmap = pseudoRandom(MiB, 9);
    writeAt(file, bitmapAt, bitmap);
    const sb = Buffer.alloc(8);
    sb.writeBigUInt64LE((BigInt(bitmapAt / MiB) << 20n) | 6n);
    writeAt(file, bat + chunkRatio * 8, sb);
    // WHEN
    await withVhdx(file, async (img) => {
      const got = await img.read(1000, 256 * KiB);
      // THEN
      const expected = readAt(qemuRawAs(base, 'vhdx'), 1000, 256 * KiB);
      for (let s = 0; s * 512 < 1000 + 256 * KiB; s++) {
        if (((bitmap[s >> 3] >> (s & 7)) & 1) === 0) {
          expected.fill(0, Math.max(0, s * 512 - 1000), Math.max(0, (s + 1) * 512 - 1000));
        }
      }
      expect(got.equals(expected)).toBe(true);
      expect(got.equals(readAt(qemuRawAs(base, 'vhdx'), 1000, 256 * KiB))).toBe(false);
    });
  });

  test('a file cut inside its header section fails at open with TRUNCATED', async () => {
    // GIVEN
    const file = copyTo(dynamicOf(sampleMbrDisk()), dir, 'cut-head.vhdx');
    fs.truncateSync(file, 200 * KiB);
    // WHEN
    const src = await FileSource.open(file);
    const opening = openVhdx(src);
    // THEN
    await expect(opening).rejects.toBeInstanceOf(ImageReadError);
    await expect(opening).rejects.toMatchObject({ code: 'TRUNCATED' });
    await src.close();
  });

  test('a file cut inside its data opens, and a read that needs the missing bytes fails with TRUNCATED', async () => {
    // GIVEN
    const file = copyTo(dynamicOf(sampleMbrDisk()), dir, 'cut-data.vhdx');
    fs.truncateSync(file, Math.floor(fs.statSync(file).size / 2));
    await withVhdx(file, async (img) => {
      // WHEN
      const reading = img.read(0, img.virtualSize);
      // THEN
      await expect(reading).rejects.toMatchObject({ code: 'TRUNCATED' });
    });
  });
});

describe('VHDX read cost', () => {
  for (const size of ['1T', '1G']) {
    test(`opening a ${size} sparse dynamic VHDX and reading 64 KiB costs few requests`, async () => {
      // GIVEN
      const file = qemuCreate('vhdx', size);
      const src = new CachedSource(await FileSource.open(file));
      // WHEN
      const img = await openVhdx(src);
      const data = await img.read(0, 64 * KiB);
      // THEN
      expect(img.virtualSize).toBe(qemuInfoAs(file, 'vhdx')['virtual-size']);
      expect(data.equals(Buffer.alloc(64 * KiB))).toBe(true);
      expect(src.stats.requests).toBeLessThanOrEqual(8);
      expect(src.stats.bytesRead).toBeLessThanOrEqual(MiB);
      await src.close();
    });
  }
});
