import * as fs from 'node:fs';
import * as path from 'node:path';
import { ImageFormatError, UnsupportedImageError } from '../../lambda/disk/errors';
import { openQcow2 } from '../../lambda/disk/qcow2';
import { CachedSource, FileSource } from '../../lambda/disk/source';
import { cached, qemuConvert, qemuInfo, qemuLuksQcow2, qemuRaw, run, sampleGptDisk, sampleMbrDisk, tempDir } from '../helpers/fixtures';
import { expectMatchesQemu, extentBytes, firstDifference, randomSparseDisk, rejection, sparseHeadDisk, withFile } from '../helpers/sparse-reader-checks';

const MiB = 1024 * 1024;

const DISKS: Array<[string, () => string]> = [
  ['the sample MBR disk', () => sampleMbrDisk()],
  ['the sample GPT disk', () => sampleGptDisk()],
  ['pseudo-random data with holes', () => randomSparseDisk()],
];

/** `qemu-img convert -c` (compressed clusters) with `-o` options, cached. */
function qemuCompressed(raw: string, options: string[] = []): string {
  const tag = ['c', ...options].join('-').replace(/[^a-z0-9-]/gi, '_');
  return cached(`${path.basename(raw)}.${tag}.qcow2`, (file) => {
    const args = ['convert', '-q', '-c', '-f', 'raw', '-O', 'qcow2'];
    if (options.length) args.push('-o', options.join(','));
    run('qemu-img', [...args, raw, file]);
  });
}

/** What qemu reads from a qcow2 image when its backing file is ignored (unallocated = zeros). */
function qemuRawWithoutBacking(file: string, out: string): string {
  const spec = JSON.stringify({ driver: 'qcow2', backing: null, file: { driver: 'file', filename: file } });
  run('qemu-img', ['convert', '-q', '-O', 'raw', `json:${spec}`, out]);
  return out;
}

/** A copy of `file` in `dir`, changed by `patch`. */
function patched(file: string, dir: string, patch: (data: Buffer) => void): string {
  const data = fs.readFileSync(file);
  patch(data);
  const out = path.join(dir, `patched-${path.basename(file)}`);
  fs.writeFileSync(out, data);
  return out;
}

/** The host offset of the first L2 table, and the L2 entry of virtual cluster 0, as laid out by qemu. */
function firstL2(data: Buffer): { l2: number; entry: bigint } {
  const l1 = Number(data.readBigUInt64BE(40));
  const l2 = Number(data.readBigUInt64BE(l1) & 0x00fffffffffffe00n);
  return { l2, entry: data.readBigUInt64BE(l2) };
}

const VARIANTS: Array<[string, (raw: string) => string, Record<string, unknown>]> = [
  ['compat=0.10 (v2)', (raw) => qemuConvert(raw, 'qcow2', ['compat=0.10']), { version: 2, clusterSize: 65536 }],
  ['compat=1.1 (v3)', (raw) => qemuConvert(raw, 'qcow2', ['compat=1.1']), { version: 3, clusterSize: 65536 }],
  ['-c (zlib compressed clusters)', (raw) => qemuCompressed(raw), { compressionType: 'zlib' }],
  ['-c compression_type=zstd', (raw) => qemuCompressed(raw, ['compression_type=zstd']), { compressionType: 'zstd' }],
  ['cluster_size=4096', (raw) => qemuConvert(raw, 'qcow2', ['cluster_size=4096']), { clusterSize: 4096 }],
  ['cluster_size=2M', (raw) => qemuConvert(raw, 'qcow2', ['cluster_size=2M']), { clusterSize: 2 * MiB }],
  ['extended_l2=on', (raw) => qemuConvert(raw, 'qcow2', ['extended_l2=on']), { extendedL2: true }],
  ['-c extended_l2=on cluster_size=128k', (raw) => qemuCompressed(raw, ['extended_l2=on', 'cluster_size=128k']), { extendedL2: true, clusterSize: 131072 }],
];

describe('qcow2 reader', () => {
  describe.each(DISKS)('on %s', (_label, disk) => {
    test.each(VARIANTS)('%s: size, bytes and extents match qemu', async (_v, make, details) => {
      // GIVEN
      const file = make(disk());
      // WHEN
      const { img } = await expectMatchesQemu(file, openQcow2);
      // THEN
      expect(img.format).toBe('qcow2');
      expect(img.subformat).toBe(details.version === 2 ? 'v2' : 'v3');
      expect(img.details).toMatchObject(details);
      expect(img.findings.map((f) => [f.code, f.severity])).toEqual([['FORMAT_NEEDS_CONVERSION', 'convertible']]);
    });
  });

  test('holes of the disk are holes in extents(), at subcluster precision with extended L2', async () => {
    // GIVEN
    const raw = randomSparseDisk();
    // WHEN
    const plain = await expectMatchesQemu(qemuConvert(raw, 'qcow2'), openQcow2);
    const ext = await expectMatchesQemu(qemuConvert(raw, 'qcow2', ['extended_l2=on']), openQcow2);
    // THEN
    expect(extentBytes(plain.extents)).toBeLessThan(plain.img.virtualSize);
    expect(extentBytes(ext.extents)).toBeLessThan(extentBytes(plain.extents));
    expect(ext.extents.some((e) => e.offset % 65536 !== 0)).toBe(true);
  });

  test.each([
    ['v3', [] as string[]],
    ['extended L2', ['extended_l2=on']],
  ])('zero clusters, partial writes and discards by qemu-io over an internal snapshot read as qemu reads them (%s)', async (_k, options) => {
    // GIVEN
    const { dir, cleanup } = tempDir();
    try {
      const file = path.join(dir, 'written.qcow2');
      fs.copyFileSync(qemuConvert(randomSparseDisk(), 'qcow2', options), file);
      run('qemu-img', ['snapshot', '-c', 'before', file]);
      const writes = ['write -z 0 128k', 'write -P 0x5a 200k 3k', 'write -z 1m 2k', 'discard 2m 64k', 'write -P 0x11 9m 5k'];
      run('qemu-io', ['-f', 'qcow2', ...writes.flatMap((w) => ['-c', w]), file]);
      const expected = path.join(dir, 'expected.raw');
      run('qemu-img', ['convert', '-q', '-O', 'raw', file, expected]);
      // WHEN
      const { img, extents } = await expectMatchesQemu(file, openQcow2, expected);
      // THEN
      expect(img.details.snapshots).toBe(1);
      expect(extents[0].offset).toBeGreaterThanOrEqual(128 * 1024); // the zeroed start is not data
    } finally {
      cleanup();
    }
  });

  describe('backing files', () => {
    let dir: string;
    let cleanup: () => void;
    beforeEach(() => ({ dir, cleanup } = tempDir()));
    afterEach(() => cleanup());

    test('an overlay made by qemu-img create -b base -F raw is a differencing disk naming its base', async () => {
      // GIVEN
      const base = path.join(dir, 'base.raw');
      fs.copyFileSync(randomSparseDisk(), base);
      const file = path.join(dir, 'overlay.qcow2');
      run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'raw', file]);
      // WHEN
      const { img, extents } = await expectMatchesQemu(file, openQcow2, qemuRawWithoutBacking(file, path.join(dir, 'own.raw')));
      // THEN
      const diff = img.findings.find((f) => f.code === 'DIFFERENCING_DISK');
      expect(diff?.severity).toBe('error');
      expect(diff?.message).toContain(base);
      expect(diff?.message).toContain('raw');
      expect(img.details).toMatchObject({ backingFile: base, backingFormat: 'raw' });
      expect(extents).toEqual([]);
    });

    test('an image with data of its own over a backing file reads its own layer', async () => {
      // GIVEN
      const file = path.join(dir, 'layer.qcow2');
      fs.copyFileSync(qemuConvert(randomSparseDisk(), 'qcow2'), file);
      run('qemu-img', ['rebase', '-q', '-u', '-b', sampleMbrDisk(), '-F', 'raw', file]);
      // WHEN
      const { img, extents } = await expectMatchesQemu(file, openQcow2, qemuRawWithoutBacking(file, path.join(dir, 'own.raw')));
      // THEN
      expect(img.details.backingFile).toBe(sampleMbrDisk());
      expect(extents.length).toBeGreaterThan(0);
    });
  });

  describe('what cannot be read', () => {
    let dir: string;
    let cleanup: () => void;
    beforeEach(() => ({ dir, cleanup } = tempDir()));
    afterEach(() => cleanup());

    test('an encrypted (LUKS) image throws QCOW2_ENCRYPTED with its size', async () => {
      // GIVEN
      // (A short key-derivation benchmark keeps this fast; below ~100 ms qemu cannot time it under load.)
      const file = qemuLuksQcow2();
      // WHEN
      const err = await rejection(withFile(file, openQcow2));
      // THEN
      expect(err).toBeInstanceOf(UnsupportedImageError);
      expect((err as UnsupportedImageError).code).toBe('QCOW2_ENCRYPTED');
      expect((err as UnsupportedImageError).info).toEqual({ format: 'qcow2', subformat: 'v3', virtualSize: qemuInfo(file)['virtual-size'] });
    });

    test('an image with an external data file throws QCOW2_EXTERNAL_DATA', async () => {
      // GIVEN
      const file = path.join(dir, 'meta.qcow2');
      run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `data_file=${path.join(dir, 'data.raw')}`, file, '16M']);
      // WHEN
      const err = await rejection(withFile(file, openQcow2));
      // THEN
      expect(err).toBeInstanceOf(UnsupportedImageError);
      expect((err as UnsupportedImageError).code).toBe('QCOW2_EXTERNAL_DATA');
    });

    test('an unknown incompatible feature bit throws QCOW2_UNSUPPORTED_FEATURE', async () => {
      // GIVEN
      const file = patched(qemuConvert(randomSparseDisk(), 'qcow2'), dir, (d) => {
        d.writeBigUInt64BE(d.readBigUInt64BE(72) | (1n << 20n), 72);
      });
      // WHEN
      const err = await rejection(withFile(file, openQcow2));
      // THEN
      expect(err).toBeInstanceOf(UnsupportedImageError);
      expect((err as UnsupportedImageError).code).toBe('QCOW2_UNSUPPORTED_FEATURE');
    });
  });

  describe('damage', () => {
    let dir: string;
    let cleanup: () => void;
    beforeEach(() => ({ dir, cleanup } = tempDir()));
    afterEach(() => cleanup());

    test('the dirty bit gives QCOW2_DIRTY; the data still reads', async () => {
      // GIVEN
      const source = qemuConvert(randomSparseDisk(), 'qcow2');
      const file = patched(source, dir, (d) => {
        d.writeBigUInt64BE(d.readBigUInt64BE(72) | 1n, 72);
      });
      // WHEN
      const { img } = await expectMatchesQemu(file, openQcow2, qemuRaw(source));
      // THEN
      expect(img.findings.map((f) => f.code)).toContain('QCOW2_DIRTY');
    });

    test('an L1 table offset past the end of the file is a format error at open', async () => {
      // GIVEN
      const file = patched(qemuConvert(randomSparseDisk(), 'qcow2'), dir, (d) => {
        d.writeBigUInt64BE(BigInt(Math.ceil(d.length / 65536) * 65536 + 65536), 40);
      });
      // WHEN
      const err = await rejection(withFile(file, openQcow2));
      // THEN
      expect(err).toBeInstanceOf(ImageFormatError);
      expect(err.message).toMatch(/L1 table/);
    });

    test('an L2 entry pointing past the end of the file is a format error when read', async () => {
      // GIVEN
      const file = patched(qemuConvert(randomSparseDisk(), 'qcow2'), dir, (d) => {
        const { l2 } = firstL2(d);
        d.writeBigUInt64BE((1n << 63n) | BigInt(Math.ceil(d.length / 65536) * 65536 + 10 * 65536), l2);
      });
      // WHEN
      const err = await rejection(withFile(file, async (src) => (await openQcow2(src)).read(0, 512)));
      // THEN
      expect(err).toBeInstanceOf(ImageFormatError);
      expect(err.message).toMatch(/past the end/);
    });

    test('an L2 table pointing past the end of the file is a format error when read', async () => {
      // GIVEN
      const file = patched(qemuConvert(randomSparseDisk(), 'qcow2'), dir, (d) => {
        const l1 = Number(d.readBigUInt64BE(40));
        d.writeBigUInt64BE((1n << 63n) | BigInt(Math.ceil(d.length / 65536) * 65536 + 65536), l1);
      });
      // WHEN
      const err = await rejection(withFile(file, async (src) => (await openQcow2(src)).read(0, 512)));
      // THEN
      expect(err).toBeInstanceOf(ImageFormatError);
      expect(err.message).toMatch(/L2 table/);
    });

    test.each([
      ['zlib', [] as string[]],
      ['zstd', ['compression_type=zstd']],
    ])('a corrupted %s compressed cluster is a format error naming where it is', async (_c, options) => {
      // GIVEN: the first compressed cluster's data overwritten with bytes no decoder accepts
      const file = patched(qemuCompressed(sampleMbrDisk(), options), dir, (d) => {
        const { entry } = firstL2(d);
        expect(entry & (1n << 62n)).toBe(1n << 62n); // compressed
        const host = Number(entry & ((1n << 54n) - 1n)); // cluster_bits 16: 54 offset bits
        d.fill(0xff, host, host + 16);
      });
      // WHEN
      const err = await rejection(withFile(file, async (src) => (await openQcow2(src)).read(0, 4096)));
      // THEN
      expect(err).toBeInstanceOf(ImageFormatError);
      expect(err.message).toContain('virtual offset 0');
    });
  });

  describe('read cost', () => {
    const TiB = 1024 ** 4;
    test.each([
      ['v3', '1 GiB', [] as string[], 1024 ** 3],
      ['v3', '1 TiB', [] as string[], TiB],
      ['v2', '1 TiB', ['compat=0.10'], TiB],
      ['extended L2', '1 TiB', ['extended_l2=on'], TiB],
      ['4 KiB cluster', '1 TiB', ['cluster_size=4096'], TiB],
    ])('open + first 64 KiB of a %s image of %s: <= 8 requests, <= 1 MiB', async (_k, _s, options, size) => {
      // GIVEN
      const raw = sparseHeadDisk(size);
      const file = qemuConvert(raw, 'qcow2', options);
      const src = new CachedSource(await FileSource.open(file));
      // WHEN
      const img = await openQcow2(src);
      const head = await img.read(0, 65536);
      await src.close();
      // THEN
      expect(img.virtualSize).toBe(size);
      const expected = Buffer.alloc(65536);
      const fd = fs.openSync(raw, 'r');
      fs.readSync(fd, expected, 0, 65536, 0);
      fs.closeSync(fd);
      expect(firstDifference(head, expected)).toBe(-1);
      expect(src.stats.requests).toBeLessThanOrEqual(8);
      expect(src.stats.bytesRead).toBeLessThanOrEqual(MiB);
    });
  });
});

