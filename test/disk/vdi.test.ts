import * as fs from 'node:fs';
import { guidAt } from '../../lambda/disk/bytes';
import { ImageFormatError, ImageReadError } from '../../lambda/disk/errors';
import type { DiskImage } from '../../lambda/disk/image';
import { CachedSource, FileSource } from '../../lambda/disk/source';
import { openVdi } from '../../lambda/disk/vdi';
import { pseudoRandom, qemuCreate, sampleMbrDisk, tempDir } from '../helpers/fixtures';
import {
  allExtents, converted, copyTo, firstDifference, firstNonZeroOutside, KiB, MiB,
  qemuInfoAs, qemuRawAs, readAt, sampleDisks, writeAt,
} from '../helpers/vhd-family';

async function withVdi<T>(file: string, fn: (img: DiskImage) => Promise<T>): Promise<T> {
  const src = await FileSource.open(file);
  try {
    return await fn(await openVdi(src));
  } finally {
    await src.close();
  }
}

function dynamicMbr(): string {
  return converted(sampleMbrDisk(), 'vdi', []);
}

describe('VDI reader on qemu-made images', () => {
  const variants: Array<[string, string[]]> = [
    ['dynamic', []],
    ['fixed', ['static=on']],
  ];
  for (const [subformat, options] of variants) {
    for (const [label, raw] of sampleDisks()) {
      test(`${subformat} image of the ${label}: size, bytes and extents match qemu-img`, async () => {
        // GIVEN
        const file = converted(raw(), 'vdi', options);
        const info = qemuInfoAs(file, 'vdi');
        const expected = qemuRawAs(file, 'vdi');
        // WHEN
        await withVdi(file, async (img) => {
          const diff = await firstDifference(img, expected, 3 * MiB + 5 * KiB, 2 * MiB - 4096 + 17);
          const extents = await allExtents(img);
          // THEN
          expect(img.format).toBe('vdi');
          expect(img.subformat).toBe(subformat);
          expect(img.virtualSize).toBe(info['virtual-size']);
          expect(img.findings).toEqual([]);
          expect(diff).toBe(-1);
          expect(firstNonZeroOutside(expected, extents, img.virtualSize)).toBe(-1);
          expect(img.details.blockSize).toBe(info['cluster-size']);
          const allocated = extents.reduce((n, e) => n + e.length, 0);
          if (subformat === 'fixed') expect(extents).toEqual([{ offset: 0, length: img.virtualSize }]);
          else if (label !== 'pseudo-random disk') expect(allocated).toBeLessThan(img.virtualSize);
        });
      });
    }
  }
});

describe('VDI reader on hand-built images', () => {
  let dir: string;
  let cleanup: () => void;
  beforeEach(() => ({ dir, cleanup } = tempDir('vdi-test-')));
  afterEach(() => cleanup());

  test('a differencing image (type 4) is reported with its parent UUID and still reads', async () => {
    // GIVEN
    const base = dynamicMbr();
    const file = copyTo(base, dir, 'diff.vdi');
    const header = readAt(file, 0, 512);
    header.writeUInt32LE(4, 76);
    pseudoRandom(16, 3).copy(header, 424);
    writeAt(file, 0, header);
    // WHEN
    await withVdi(file, async (img) => {
      // THEN
      expect(img.subformat).toBe('differencing');
      expect(img.findings.map((f) => f.code)).toEqual(['DIFFERENCING_DISK']);
      expect(img.details.parentUuid).toBe(guidAt(header, 424));
      expect(img.findings[0].message).toContain(guidAt(header, 424));
      expect(await firstDifference(img, qemuRawAs(base, 'vdi'), 16 * MiB)).toBe(-1);
    });
  });

  test('an image cut inside its header fails at open with TRUNCATED', async () => {
    // GIVEN
    const file = copyTo(dynamicMbr(), dir, 'cut-header.vdi');
    fs.truncateSync(file, 300);
    // WHEN
    const src = await FileSource.open(file);
    const opening = openVdi(src);
    // THEN
    await expect(opening).rejects.toBeInstanceOf(ImageReadError);
    await expect(opening).rejects.toMatchObject({ code: 'TRUNCATED' });
    await src.close();
  });

  test('an image cut inside its block map fails at open with TRUNCATED', async () => {
    // GIVEN a 1 GiB image: 1024 map entries at offset 512
    const file = copyTo(qemuCreate('vdi', '1G'), dir, 'cut-map.vdi');
    fs.truncateSync(file, 2048);
    // WHEN
    const src = await FileSource.open(file);
    const opening = openVdi(src);
    // THEN
    await expect(opening).rejects.toMatchObject({ code: 'TRUNCATED' });
    await src.close();
  });

  test('an image cut inside its data opens, and a read that needs the missing bytes fails with TRUNCATED', async () => {
    // GIVEN
    const file = copyTo(dynamicMbr(), dir, 'cut-data.vdi');
    fs.truncateSync(file, Math.floor(fs.statSync(file).size / 2));
    await withVdi(file, async (img) => {
      // WHEN
      const reading = img.read(0, img.virtualSize);
      // THEN
      await expect(reading).rejects.toBeInstanceOf(ImageReadError);
      await expect(img.read(0, img.virtualSize)).rejects.toMatchObject({ code: 'TRUNCATED' });
      expect((await img.read(0, 512)).equals(readAt(qemuRawAs(dynamicMbr(), 'vdi'), 0, 512))).toBe(true);
    });
  });

  test('a zero block (0xFFFFFFFE) reads as zeros and is not an extent', async () => {
    // GIVEN the MBR sample with its first block marked as a zero block
    const file = copyTo(dynamicMbr(), dir, 'zero.vdi');
    const header = readAt(file, 0, 512);
    const mapOffset = header.readUInt32LE(340);
    const blockSize = header.readUInt32LE(376);
    const entry = Buffer.alloc(4);
    entry.writeUInt32LE(0xfffffffe, 0);
    writeAt(file, mapOffset, entry);
    await withVdi(file, async (img) => {
      // WHEN
      const first = await img.read(0, blockSize);
      const extents = await allExtents(img);
      // THEN
      expect(first.equals(Buffer.alloc(blockSize))).toBe(true);
      expect(extents[0].offset).toBeGreaterThanOrEqual(blockSize);
    });
  });

  test('a block map entry beyond the blocks of the image is a format error', async () => {
    // GIVEN
    const file = copyTo(dynamicMbr(), dir, 'wild.vdi');
    const mapOffset = readAt(file, 0, 512).readUInt32LE(340);
    const entry = Buffer.alloc(4);
    entry.writeUInt32LE(0x7fff0000, 0);
    writeAt(file, mapOffset, entry);
    await withVdi(file, async (img) => {
      // WHEN
      const reading = img.read(0, 512);
      // THEN
      await expect(reading).rejects.toBeInstanceOf(ImageFormatError);
    });
  });
});

describe('VDI read cost', () => {
  for (const size of ['1T', '1G']) {
    test(`opening a ${size} sparse dynamic VDI and reading 64 KiB costs few requests`, async () => {
      // GIVEN
      const file = qemuCreate('vdi', size);
      const src = new CachedSource(await FileSource.open(file));
      // WHEN
      const img = await openVdi(src);
      const data = await img.read(0, 64 * KiB);
      // THEN
      expect(img.virtualSize).toBe(qemuInfoAs(file, 'vdi')['virtual-size']);
      expect(data.equals(Buffer.alloc(64 * KiB))).toBe(true);
      expect(src.stats.requests).toBeLessThanOrEqual(8);
      expect(src.stats.bytesRead).toBeLessThanOrEqual(MiB);
      await src.close();
    });
  }
});
