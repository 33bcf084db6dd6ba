import * as fs from 'node:fs';
import { ImageFormatError, ImageReadError } from '../../lambda/disk/errors';
import type { DiskImage } from '../../lambda/disk/image';
import { CachedSource, FileSource } from '../../lambda/disk/source';
import { openVhd } from '../../lambda/disk/vhd';
import { qemuCreate, sampleMbrDisk, tempDir } from '../helpers/fixtures';
import {
  allExtents, converted, copyTo, firstDifference, firstNonZeroOutside, fixVhdSum, KiB, MiB,
  qemuInfoAs, qemuRawAs, randomDataDisk, readAt, sampleDisks, utf16be, writeAt,
} from '../helpers/vhd-family';

async function withVhd<T>(file: string, fn: (img: DiskImage, src: FileSource) => Promise<T>): Promise<T> {
  const src = await FileSource.open(file);
  try {
    return await fn(await openVhd(src), src);
  } finally {
    await src.close();
  }
}

/** A dynamic VHD of the MBR sample, qemu-made. */
function dynamicMbr(): string {
  return converted(sampleMbrDisk(), 'vpc', ['subformat=dynamic', 'force_size=on']);
}

describe('VHD reader on qemu-made images', () => {
  const variants: Array<[string, string[]]> = [
    ['fixed', ['subformat=fixed', 'force_size=on']],
    ['dynamic', ['subformat=dynamic', 'force_size=on']],
    ['dynamic', ['subformat=dynamic']], // sized by CHS geometry
  ];
  for (const [subformat, options] of variants) {
    for (const [label, raw] of sampleDisks()) {
      test(`${subformat} (${options.join(',')}) of the ${label}: size, bytes and extents match qemu-img`, async () => {
        // GIVEN
        const file = converted(raw(), 'vpc', options);
        const info = qemuInfoAs(file, 'vpc');
        const expected = qemuRawAs(file, 'vpc');
        // WHEN
        await withVhd(file, async (img) => {
          const diff = await firstDifference(img, expected, 3 * MiB + 3 * KiB, 1536 * KiB + 512);
          const extents = await allExtents(img);
          // THEN
          expect(img.format).toBe('vhd');
          expect(img.subformat).toBe(subformat);
          expect(img.virtualSize).toBe(info['virtual-size']);
          expect(img.findings).toEqual([]);
          expect(diff).toBe(-1);
          expect(firstNonZeroOutside(expected, extents, img.virtualSize)).toBe(-1);
          expect(img.details.diskType).toBe(subformat);
          expect(img.details.currentSize).toBe(img.virtualSize);
          expect(img.details.sizeAlignedTo1MiB).toBe(img.virtualSize % MiB === 0);
          const [c, h, s] = String(img.details.geometry).split('/').map(Number);
          expect(img.details.geometrySize).toBe(c * h * s * 512);
          if (subformat === 'dynamic') {
            expect(img.details.blockSize).toBe(info['cluster-size']);
            const allocated = extents.reduce((n, e) => n + e.length, 0);
            if (label !== 'pseudo-random disk') expect(allocated).toBeLessThan(img.virtualSize); // the samples have holes
          } else {
            expect(extents).toEqual([{ offset: 0, length: img.virtualSize }]);
          }
        });
      });
    }
  }

  test('reads past the end of the disk are clipped, reads inside a hole are zeros', async () => {
    // GIVEN
    const file = dynamicMbr();
    await withVhd(file, async (img) => {
      const extents = await allExtents(img);
      const holeStart = extents[0].offset + extents[0].length;
      // WHEN
      const tail = await img.read(img.virtualSize - 100, 1000);
      const beyond = await img.read(img.virtualSize + 10, 10);
      const hole = await img.read(holeStart, 4096);
      // THEN
      expect(tail.equals(readAt(qemuRawAs(file, 'vpc'), img.virtualSize - 100, 100))).toBe(true);
      expect(beyond.length).toBe(0);
      expect(hole.equals(Buffer.alloc(4096))).toBe(true);
    });
  });
});

describe('VHD reader on hand-built images', () => {
  let dir: string;
  let cleanup: () => void;
  beforeEach(() => ({ dir, cleanup } = tempDir('vhd-test-')));
  afterEach(() => cleanup());

  /** Rewrites both footers of a dynamic VHD with `edit`, fixing their checksums. */
  function editFooters(file: string, edit: (footer: Buffer) => void): void {
    const size = fs.statSync(file).size;
    for (const at of [0, size - 512]) {
      const footer = readAt(file, at, 512);
      edit(footer);
      fixVhdSum(footer, 64);
      writeAt(file, at, footer);
    }
  }

  test('a differencing VHD reports its parent and reads only the sectors its bitmaps mark', async () => {
    // GIVEN a dynamic VHD turned into a differencing one, with some sectors of its first block
    // handed to the (missing) parent
    const base = converted(randomDataDisk(), 'vpc', ['subformat=dynamic', 'force_size=on']);
    const file = copyTo(base, dir, 'diff.vhd');
    editFooters(file, (f) => f.writeUInt32BE(4, 60));
    const header = readAt(file, 512, 1024);
    header.fill(0, 64, 576);
    utf16be('C:\\vms\\base.vhd').copy(header, 64);
    fixVhdSum(header, 36);
    writeAt(file, 512, header);
    const batOffset = Number(header.readBigUInt64BE(16));
    const firstBlock = readAt(file, batOffset, 4).readUInt32BE(0) * 512;
    writeAt(file, firstBlock, Buffer.from([0x0f, 0xff, 0x00])); // sectors 0-3 and 16-23 go to the parent
    // WHEN
    await withVhd(file, async (img) => {
      const got = await img.read(0, 32 * 512);
      // THEN
      expect(img.subformat).toBe('differencing');
      expect(img.findings.map((f) => f.code)).toEqual(['DIFFERENCING_DISK']);
      expect(img.findings[0].message).toContain('C:\\vms\\base.vhd');
      expect(img.details.parentName).toBe('C:\\vms\\base.vhd');
      const expected = readAt(qemuRawAs(base, 'vpc'), 0, 32 * 512);
      expected.fill(0, 0, 4 * 512);
      expected.fill(0, 16 * 512, 24 * 512);
      expect(got.equals(expected)).toBe(true);
    });
  });

  test('a footer copy at 0 that differs from the footer at the end is reported, and the data still reads', async () => {
    // GIVEN
    const base = dynamicMbr();
    const file = copyTo(base, dir, 'mismatch.vhd');
    const copy = readAt(file, 0, 512);
    copy.writeUInt32BE(copy.readUInt32BE(24) + 3600, 24); // another timestamp
    fixVhdSum(copy, 64);
    writeAt(file, 0, copy);
    // WHEN
    await withVhd(file, async (img) => {
      // THEN
      expect(img.findings.map((f) => f.code)).toEqual(['VHD_FOOTER_MISMATCH']);
      expect(await firstDifference(img, qemuRawAs(base, 'vpc'), 8 * MiB)).toBe(-1);
    });
  });

  test('a bad footer checksum is reported, not thrown', async () => {
    // GIVEN a fixed VHD whose footer checksum is off by one
    const base = qemuCreate('vpc', '8M', ['subformat=fixed', 'force_size=on'], 'vhd');
    const file = copyTo(base, dir, 'badsum.vhd');
    const size = fs.statSync(file).size;
    const footer = readAt(file, size - 512, 512);
    footer.writeUInt32BE((footer.readUInt32BE(64) + 1) % 0x100000000, 64);
    writeAt(file, size - 512, footer);
    // WHEN
    await withVhd(file, async (img) => {
      // THEN
      expect(img.subformat).toBe('fixed');
      expect(img.virtualSize).toBe(8 * MiB);
      expect(img.findings.map((f) => f.code)).toEqual(['CHECKSUM_MISMATCH']);
    });
  });

  test('a dynamic VHD cut short: missing footer reported at open, TRUNCATED when a read needs the missing bytes', async () => {
    // GIVEN the MBR sample cut in the middle of its data blocks
    const base = dynamicMbr();
    const file = copyTo(base, dir, 'cut.vhd');
    const size = fs.statSync(file).size;
    fs.truncateSync(file, Math.floor(size / 2));
    await withVhd(file, async (img) => {
      // WHEN
      const whole = img.read(0, img.virtualSize);
      // THEN
      expect(img.findings.map((f) => f.code)).toEqual(['TRUNCATED']);
      await expect(whole).rejects.toThrow(ImageReadError);
      await expect(img.read(0, img.virtualSize)).rejects.toMatchObject({ code: 'TRUNCATED' });
    });
  });

  test('a dynamic VHD cut inside its BAT fails at open with TRUNCATED', async () => {
    // GIVEN
    const base = qemuCreate('vpc', '1G', ['subformat=dynamic', 'force_size=on'], 'vhd');
    const file = copyTo(base, dir, 'cut-bat.vhd');
    fs.truncateSync(file, 1536 + 1000);
    // WHEN
    const src = await FileSource.open(file);
    const opening = openVhd(src);
    // THEN
    await expect(opening).rejects.toBeInstanceOf(ImageReadError);
    await expect(opening).rejects.toMatchObject({ code: 'TRUNCATED' });
    await src.close();
  });

  test('a BAT entry pointing into the headers is a format error', async () => {
    // GIVEN
    const base = dynamicMbr();
    const file = copyTo(base, dir, 'bad-bat.vhd');
    const header = readAt(file, 512, 1024);
    writeAt(file, Number(header.readBigUInt64BE(16)), Buffer.from([0, 0, 0, 1])); // block 0 at sector 1
    await withVhd(file, async (img) => {
      // WHEN
      const reading = img.read(0, 512);
      // THEN
      await expect(reading).rejects.toBeInstanceOf(ImageFormatError);
    });
  });
});

describe('VHD read cost', () => {
  for (const size of ['1T', '1G']) {
    test(`opening a ${size} sparse dynamic VHD and reading 64 KiB costs few requests`, async () => {
      // GIVEN
      const file = qemuCreate('vpc', size, ['subformat=dynamic', 'force_size=on'], 'vhd');
      const src = new CachedSource(await FileSource.open(file));
      // WHEN
      const img = await openVhd(src);
      const data = await img.read(0, 64 * KiB);
      // THEN
      expect(img.virtualSize).toBe(qemuInfoAs(file, 'vpc')['virtual-size']);
      expect(data.equals(Buffer.alloc(64 * KiB))).toBe(true);
      expect(src.stats.requests).toBeLessThanOrEqual(8);
      expect(src.stats.bytesRead).toBeLessThanOrEqual(MiB);
      await src.close();
    });
  }
});
