import * as fs from 'node:fs';
import * as path from 'node:path';
import { ImageFormatError, ImageReadError, UnsupportedImageError } from '../../lambda/disk/errors';
import { BufferSource, CachedSource, FileSource } from '../../lambda/disk/source';
import { openVmdk, parseVmdkDescriptor } from '../../lambda/disk/vmdk';
import { cached, qemuConvert, qemuInfo, run, sampleGptDisk, sampleMbrDisk, tempDir } from '../helpers/fixtures';
import { expectMatchesQemu, extentBytes, firstDifference, randomSparseDisk, rejection, sparseHeadDisk, withFile } from '../helpers/sparse-reader-checks';
import { buildVmwareStreamVmdk, vmwareStreamVmdk } from '../helpers/vmdk-builder';

const MiB = 1024 * 1024;

const DISKS: Array<[string, () => string]> = [
  ['the sample MBR disk', () => sampleMbrDisk()],
  ['the sample GPT disk', () => sampleGptDisk()],
  ['pseudo-random data with holes', () => randomSparseDisk()],
];

/** A copy of `file` in `dir`, changed by `patch`. */
function patched(file: string, dir: string, patch: (data: Buffer) => Buffer | void): string {
  const data = fs.readFileSync(file);
  const out = path.join(dir, `patched-${path.basename(file)}`);
  fs.writeFileSync(out, patch(data) ?? data);
  return out;
}

describe('VMDK reader', () => {
  describe.each(DISKS)('on %s', (_label, disk) => {
    test('qemu-img streamOptimized (grain directory after the header): size, bytes and extents match qemu', async () => {
      // GIVEN
      const file = qemuConvert(disk(), 'vmdk', ['subformat=streamOptimized']);
      // WHEN
      const { img, extents } = await expectMatchesQemu(file, openVmdk);
      // THEN
      expect(img.format).toBe('vmdk');
      expect(img.subformat).toBe('streamOptimized');
      expect(img.findings).toEqual([]);
      expect(img.details).toMatchObject({ version: 3, compression: 'deflate', gdLocation: 'header', grainSize: 65536 });
      expect(extentBytes(extents)).toBeLessThan(img.virtualSize); // holes are reported as holes
    });

    test('qemu-img monolithicSparse: same bytes, and the not-stream-optimized finding', async () => {
      // GIVEN
      const file = qemuConvert(disk(), 'vmdk', ['subformat=monolithicSparse']);
      // WHEN
      const { img, extents } = await expectMatchesQemu(file, openVmdk);
      // THEN
      expect(img.subformat).toBe('monolithicSparse');
      expect(img.findings.map((f) => [f.code, f.severity])).toEqual([['VMDK_NOT_STREAM_OPTIMIZED', 'convertible']]);
      expect(img.details).toMatchObject({ version: 1, compression: 'none', gdLocation: 'header', adapterType: 'ide' });
      expect(extentBytes(extents)).toBeLessThan(img.virtualSize);
    });

    test('VMware-layout streamOptimized (grain directory in the footer): size, bytes and extents match qemu', async () => {
      // GIVEN
      const file = vmwareStreamVmdk(disk());
      // WHEN
      const { img, extents } = await expectMatchesQemu(file, openVmdk);
      // THEN
      expect(img.subformat).toBe('streamOptimized');
      expect(img.findings).toEqual([]);
      expect(img.details).toMatchObject({ version: 3, gdLocation: 'footer', adapterType: 'lsilogic', hwVersion: '14' });
      expect(extentBytes(extents)).toBeLessThan(img.virtualSize);
    });

    test('a monolithicFlat descriptor alone cannot be read, and says what it describes', async () => {
      // GIVEN
      const { dir, cleanup } = tempDir();
      try {
        const file = path.join(dir, 'disk.vmdk');
        run('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=monolithicFlat', disk(), file]);
        // WHEN
        const err = await rejection(withFile(file, openVmdk));
        // THEN
        expect(err).toBeInstanceOf(UnsupportedImageError);
        expect((err as UnsupportedImageError).code).toBe('VMDK_DESCRIPTOR_ONLY');
        expect((err as UnsupportedImageError).info).toEqual({
          format: 'vmdk',
          subformat: 'monolithicFlat',
          virtualSize: qemuInfo(file)['virtual-size'],
        });
        expect(err.message).toContain('disk-flat.vmdk');
      } finally {
        cleanup();
      }
    });

    test('a twoGbMaxExtentSparse descriptor and its extent alone are split extents', async () => {
      // GIVEN
      const { dir, cleanup } = tempDir();
      try {
        const file = path.join(dir, 'split.vmdk');
        run('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=twoGbMaxExtentSparse', disk(), file]);
        // WHEN
        const err = await rejection(withFile(file, openVmdk));
        const extentErr = await rejection(withFile(path.join(dir, 'split-s001.vmdk'), openVmdk));
        // THEN
        expect(err).toBeInstanceOf(UnsupportedImageError);
        expect((err as UnsupportedImageError).code).toBe('VMDK_SPLIT_EXTENTS');
        expect((err as UnsupportedImageError).info).toEqual({
          format: 'vmdk',
          subformat: 'twoGbMaxExtentSparse',
          virtualSize: qemuInfo(file)['virtual-size'],
        });
        expect(extentErr).toBeInstanceOf(UnsupportedImageError);
        expect((extentErr as UnsupportedImageError).code).toBe('VMDK_SPLIT_EXTENTS');
      } finally {
        cleanup();
      }
    });
  });

  test('the VMware-layout builder writes what qemu-img reads as identical to its input, and check finds no errors', () => {
    // GIVEN
    for (const raw of [sampleMbrDisk(), randomSparseDisk()]) {
      // WHEN
      const file = vmwareStreamVmdk(raw);
      // THEN
      expect(run('qemu-img', ['compare', '-f', 'raw', '-F', 'vmdk', raw, file])).toContain('Images are identical');
      expect(run('qemu-img', ['check', '-f', 'vmdk', file])).toContain('No errors');
      const head = fs.readFileSync(file).subarray(0, 512);
      expect(head.readBigUInt64LE(56)).toBe(0xffffffffffffffffn); // gdOffset only in the footer
    }
  });

  test('a small grain size (8 KiB) and a disk that ends inside a grain read right', async () => {
    // GIVEN
    const raw = randomSparseDisk();
    const file = vmwareStreamVmdk(raw, { grainSectors: 16 });
    // WHEN
    const { img } = await expectMatchesQemu(file, openVmdk);
    // THEN
    expect(img.details.grainSize).toBe(8192);
    expect(img.virtualSize % 8192).not.toBe(0);
  });

  test('zeroed grains (zeroed_grain=on, written by qemu-io) read as zeros and are not extents', async () => {
    // GIVEN
    const { dir, cleanup } = tempDir();
    try {
      const file = path.join(dir, 'zeroed.vmdk');
      run('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=monolithicSparse,zeroed_grain=on', randomSparseDisk(), file]);
      run('qemu-io', ['-f', 'vmdk', '-c', 'write -z 0 128k', '-c', 'write -P 0x5a 200k 3k', file]);
      const expected = path.join(dir, 'expected.raw');
      run('qemu-img', ['convert', '-q', '-O', 'raw', file, expected]);
      // WHEN
      const { img, extents } = await expectMatchesQemu(file, openVmdk, expected);
      // THEN
      expect(img.details.version).toBe(2);
      expect(extents[0].offset).toBe(128 * 1024);
    } finally {
      cleanup();
    }
  });

  test('a delta disk on a parent carries DIFFERENCING_DISK and reads its own (empty) layer', async () => {
    // GIVEN
    const { dir, cleanup } = tempDir();
    try {
      const base = path.join(dir, 'base.vmdk');
      const delta = path.join(dir, 'delta.vmdk');
      run('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'vmdk', randomSparseDisk(), base]);
      run('qemu-img', ['create', '-q', '-f', 'vmdk', '-b', base, '-F', 'vmdk', delta]);
      // WHEN
      const [img, data, extents] = await withFile(delta, async (src) => {
        const i = await openVmdk(src);
        const e = [];
        for await (const x of i.extents()) e.push(x);
        return [i, await i.read(0, i.virtualSize), e] as const;
      });
      // THEN
      expect(img.virtualSize).toBe(qemuInfo(delta)['virtual-size']);
      const diff = img.findings.find((f) => f.code === 'DIFFERENCING_DISK');
      expect(diff?.message).toContain('base.vmdk');
      expect(data.every((b) => b === 0)).toBe(true);
      expect(extents).toEqual([]);
    } finally {
      cleanup();
    }
  });

  describe('what a single file cannot hold', () => {
    const descriptor = (createType: string, extents: string[]): Buffer =>
      Buffer.from(['# Disk DescriptorFile', 'version=1', 'CID=fffffffe', 'parentCID=ffffffff', `createType="${createType}"`, ...extents, ''].join('\n'));

    test.each([
      ['seSparse', ['RW 6144 SESPARSE "a-sesparse.vmdk"'], 'VMDK_SESPARSE'],
      ['vmfsSparse', ['RW 6144 VMFSSPARSE "a-delta.vmdk"'], 'VMDK_SESPARSE'],
      ['vmfs', ['RW 6144 VMFS "a-flat.vmdk"'], 'VMDK_DESCRIPTOR_ONLY'],
      ['monolithicFlat', ['RW 2048 FLAT "a-flat.vmdk" 0', 'RW 4096 ZERO'], 'VMDK_SPLIT_EXTENTS'],
      ['twoGbMaxExtentFlat', ['RW 2048 FLAT "a-f001.vmdk" 0', 'RW 4096 FLAT "a-f002.vmdk" 0'], 'VMDK_SPLIT_EXTENTS'],
    ])('a %s descriptor throws its code with the size of its extents', async (createType, extents, code) => {
      // GIVEN
      const src = new BufferSource('d.vmdk', descriptor(createType, extents));
      // WHEN
      const err = await rejection(openVmdk(src));
      // THEN
      expect(err).toBeInstanceOf(UnsupportedImageError);
      expect((err as UnsupportedImageError).code).toBe(code);
      expect((err as UnsupportedImageError).info).toEqual({ format: 'vmdk', subformat: createType, virtualSize: 6144 * 512 });
    });

    test('an ESX COWD redo log throws VMDK_COWD with its size', async () => {
      // GIVEN
      const head = Buffer.alloc(2048);
      head.write('COWD', 0, 'latin1');
      head.writeUInt32LE(1, 4);
      head.writeUInt32LE(3, 8);
      head.writeUInt32LE(40960, 12); // numSectors
      // WHEN
      const err = await rejection(openVmdk(new BufferSource('redo.vmdk', head)));
      // THEN
      expect(err).toBeInstanceOf(UnsupportedImageError);
      expect((err as UnsupportedImageError).code).toBe('VMDK_COWD');
      expect((err as UnsupportedImageError).info.virtualSize).toBe(40960 * 512);
    });

    test('a compressAlgorithm other than none or deflate throws VMDK_UNSUPPORTED_COMPRESSION', async () => {
      // GIVEN
      const { dir, cleanup } = tempDir();
      try {
        const file = patched(qemuConvert(randomSparseDisk(), 'vmdk', ['subformat=streamOptimized']), dir, (d) => {
          d.writeUInt16LE(2, 77);
        });
        // WHEN
        const err = await rejection(withFile(file, openVmdk));
        // THEN
        expect(err).toBeInstanceOf(UnsupportedImageError);
        expect((err as UnsupportedImageError).code).toBe('VMDK_UNSUPPORTED_COMPRESSION');
      } finally {
        cleanup();
      }
    });

    test('bytes that are no VMDK at all are a format error', async () => {
      // GIVEN
      const src = new BufferSource('x.vmdk', Buffer.from('hello, this is not a disk'));
      // WHEN
      const err = await rejection(openVmdk(src));
      // THEN
      expect(err).toBeInstanceOf(ImageFormatError);
    });
  });

  describe('damage', () => {
    let dir: string;
    let cleanup: () => void;
    beforeEach(() => ({ dir, cleanup } = tempDir()));
    afterEach(() => cleanup());

    test.each([
      ['qemu-img layout', () => qemuConvert(randomSparseDisk(), 'vmdk', ['subformat=streamOptimized'])],
      ['VMware layout', () => vmwareStreamVmdk(randomSparseDisk())],
    ])('a truncated stream VMDK (%s) is a TRUNCATED read error at open', async (_l, make) => {
      // GIVEN
      const file = patched(make(), dir, (d) => d.subarray(0, Math.floor(d.length * 0.6) + 100));
      // WHEN
      const err = await rejection(withFile(file, openVmdk));
      // THEN
      expect(err).toBeInstanceOf(ImageReadError);
      expect((err as ImageReadError).code).toBe('TRUNCATED');
    });

    test('a corrupted compressed grain (VMware layout) is a format error naming its LBA; other grains still read', async () => {
      // GIVEN
      const raw = fs.readFileSync(randomSparseDisk());
      const built = buildVmwareStreamVmdk(raw);
      const victim = built.grains[2];
      const image = Buffer.from(built.image);
      image.fill(0x55, victim.sector * 512 + 12 + 40, victim.sector * 512 + 12 + 80);
      const img = await openVmdk(new BufferSource('bad.vmdk', image));
      // WHEN
      const err = await rejection(img.read(victim.lba * 512, 512));
      const other = await img.read(built.grains[0].lba * 512, 65536);
      // THEN
      expect(err).toBeInstanceOf(ImageFormatError);
      expect(err.message).toContain(`LBA ${victim.lba}`);
      const at = built.grains[0].lba * 512;
      expect(firstDifference(other, raw.subarray(at, at + 65536))).toBe(-1);
    });

    test('a corrupted compressed grain (qemu-img layout) is a format error naming its LBA', async () => {
      // GIVEN: qemu writes the first grain at the sector the header's overHead names
      const file = patched(qemuConvert(randomSparseDisk(), 'vmdk', ['subformat=streamOptimized']), dir, (d) => {
        const first = Number(d.readBigUInt64LE(64)) * 512;
        d.fill(0xaa, first + 12 + 100, first + 12 + 140);
      });
      // WHEN
      const err = await rejection(withFile(file, async (src) => (await openVmdk(src)).read(0, 4096)));
      // THEN
      expect(err).toBeInstanceOf(ImageFormatError);
      expect(err.message).toContain('LBA 0');
    });

    test('a grain directory pointing past the end of the file is a format error at open', async () => {
      // GIVEN
      const sparse = patched(qemuConvert(randomSparseDisk(), 'vmdk', ['subformat=monolithicSparse']), dir, (d) => {
        d.writeBigUInt64LE(BigInt(Math.ceil(d.length / 512) + 8), 56);
      });
      const built = buildVmwareStreamVmdk(fs.readFileSync(randomSparseDisk()));
      const footer = Buffer.from(built.image);
      footer.writeBigUInt64LE(BigInt(footer.length / 512 + 100), built.footerSector * 512 + 56);
      // WHEN
      const err = await rejection(withFile(sparse, openVmdk));
      const footerErr = await rejection(openVmdk(new BufferSource('f.vmdk', footer)));
      // THEN
      expect(err).toBeInstanceOf(ImageFormatError);
      expect(err.message).toMatch(/grain directory/);
      expect(footerErr).toBeInstanceOf(ImageFormatError);
    });

    test('a grain table pointing past the end of the file is a format error when read', async () => {
      // GIVEN
      const file = patched(qemuConvert(randomSparseDisk(), 'vmdk', ['subformat=monolithicSparse']), dir, (d) => {
        const gd = Number(d.readBigUInt64LE(56)) * 512;
        d.writeUInt32LE(Math.ceil(d.length / 512) + 64, gd);
      });
      // WHEN
      const err = await rejection(withFile(file, async (src) => (await openVmdk(src)).read(0, 512)));
      // THEN
      expect(err).toBeInstanceOf(ImageFormatError);
      expect(err.message).toMatch(/grain table/);
    });
  });

  describe('read cost', () => {
    const TiB = 1024 ** 4;
    test.each([
      ['streamOptimized', '1 GiB', 1024 ** 3],
      ['streamOptimized', '1 TiB', TiB],
      ['monolithicSparse', '1 GiB', 1024 ** 3],
      ['monolithicSparse', '1 TiB', TiB],
      ['VMware streamOptimized', '1 GiB', 1024 ** 3],
      ['VMware streamOptimized', '1 TiB', TiB],
    ])('open + first 64 KiB of a %s disk of %s: <= 8 requests, <= 1 MiB', async (kind, _s, size) => {
      // GIVEN
      const raw = sparseHeadDisk(size);
      const file = kind.startsWith('VMware')
        ? cached(`sparse-head-${size}.vmware-stream.vmdk`, (f) => {
          // Only the first 256 KiB hold data: build from them, then say the disk is `size` long.
          const built = buildVmwareStreamVmdkOfSize(raw, size);
          fs.writeFileSync(f, built);
        })
        : qemuConvert(raw, 'vmdk', [`subformat=${kind}`]);
      const src = new CachedSource(await FileSource.open(file));
      // WHEN
      const img = await openVmdk(src);
      const head = await img.read(0, 65536);
      await src.close();
      // THEN
      expect(img.virtualSize).toBe(size);
      const expected = Buffer.alloc(65536);
      const fd = fs.openSync(raw, 'r');
      fs.readSync(fd, expected, 0, 65536, 0);
      fs.closeSync(fd);
      expect(head.equals(expected)).toBe(true);
      expect(src.stats.requests).toBeLessThanOrEqual(8);
      expect(src.stats.bytesRead).toBeLessThanOrEqual(MiB);
    });
  });

  test('parseVmdkDescriptor reads what qemu-img writes', () => {
    // GIVEN
    const file = qemuConvert(sampleMbrDisk(), 'vmdk', ['subformat=monolithicSparse']);
    const head = fs.readFileSync(file).subarray(0, 64 * 1024);
    const at = Number(head.readBigUInt64LE(28)) * 512;
    const text = head.toString('utf8', at, at + Number(head.readBigUInt64LE(36)) * 512);
    // WHEN
    const d = parseVmdkDescriptor(text);
    // THEN
    expect(d.createType).toBe('monolithicSparse');
    expect(d.parentCid).toBe('ffffffff');
    expect(d.hasParent).toBe(false);
    expect(d.extents).toHaveLength(1);
    expect(d.extents[0]).toMatchObject({ access: 'RW', sectors: qemuInfo(file)['virtual-size'] / 512, type: 'SPARSE' });
    expect(d.extents[0].file?.startsWith(path.basename(file))).toBe(true);
    expect(d.adapterType).toBe('ide');
    expect(d.hwVersion).toBe('4');
    expect(d.geometry?.heads).toBe(16);
  });
});

/**
 * A VMware-layout stream VMDK of `size` bytes whose data is the first 256 KiB of `raw` (the rest
 * of `raw` is a hole): the builder is given only the data, and the header's capacity is widened,
 * with the grain directory sized for the whole disk.
 */
function buildVmwareStreamVmdkOfSize(raw: string, size: number): Buffer {
  const fd = fs.openSync(raw, 'r');
  const data = Buffer.alloc(256 * 1024);
  fs.readSync(fd, data, 0, data.length, 0);
  fs.closeSync(fd);
  return buildVmwareStreamVmdk(data, { capacitySectors: size / 512 }).image;
}
