import * as fs from 'node:fs';
import * as path from 'node:path';
import fc from 'fast-check';
import { ImageFormatError, ImageReadError, UnsupportedImageError } from '../../lambda/disk/errors';
import type { DiskImage } from '../../lambda/disk/image';
import { openQcow2 } from '../../lambda/disk/qcow2';
import { BufferSource, type ByteSource, type ReadStats } from '../../lambda/disk/source';
import { openVmdk, parseVmdkDescriptor } from '../../lambda/disk/vmdk';
import { cached, pseudoRandom, qemuConvert, run } from '../helpers/fixtures';
import { buildVmwareStreamVmdk } from '../helpers/vmdk-builder';

const KiB = 1024;
const MiB = 1024 * KiB;
/** No single read may ask for more than this (the largest legitimate one is a 2 MiB qcow2 cluster). */
const MAX_ASK = 4 * MiB;

/** Counts what a reader asks of a source, including asks the source clips to its size. */
class WatchedSource implements ByteSource {
  public largestAsk = 0;
  private readonly inner: BufferSource;
  public constructor(data: Uint8Array) {
    this.inner = new BufferSource('image', data);
  }
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
    this.largestAsk = Math.max(this.largestAsk, length);
    return this.inner.read(offset, length);
  }
  public async close(): Promise<void> {}
}

function isTyped(e: unknown): boolean {
  return e instanceof ImageReadError || e instanceof ImageFormatError || e instanceof UnsupportedImageError;
}

/**
 * Opens `data`, reads a few ranges and the first extents. Passes when that gives an image or a
 * typed error; fails on any other exception, on an impossible image, or on reads without bound.
 */
async function exercise(open: (s: ByteSource) => Promise<DiskImage>, data: Uint8Array): Promise<void> {
  const src = new WatchedSource(data);
  try {
    const img = await open(src);
    expect(Number.isSafeInteger(img.virtualSize) && img.virtualSize >= 0).toBe(true);
    const size = img.virtualSize;
    for (const [offset, length] of [[0, 64 * KiB], [Math.floor(size / 2), 8 * KiB], [Math.max(0, size - 4 * KiB), 8 * KiB]]) {
      try {
        const got = await img.read(offset, length);
        expect(got.length).toBe(Math.max(0, Math.min(length, size - offset)));
      } catch (e) {
        if (!isTyped(e)) throw e;
      }
    }
    try {
      let n = 0;
      let end = -1;
      for await (const e of img.extents()) {
        expect(e.offset).toBeGreaterThan(end);
        expect(e.length).toBeGreaterThan(0);
        end = e.offset + e.length;
        expect(end).toBeLessThanOrEqual(size);
        if (++n >= 64) break;
      }
    } catch (e) {
      if (!isTyped(e)) throw e;
    }
  } catch (e) {
    if (!isTyped(e)) throw e;
  }
  expect(src.largestAsk).toBeLessThanOrEqual(MAX_ASK);
  // Tables are read at most once each (used twice is refused), so what is read stays near the
  // size of the file, plus a few clusters for the reads above.
  expect(src.stats.bytesRead).toBeLessThanOrEqual(4 * data.length + 16 * MiB);
}

/** A small raw disk: random data, compressible text, holes, and data in its last sector. */
function smallDisk(): string {
  return cached('prop-small-1M512.raw', (file) => {
    const d = Buffer.alloc(MiB + 512);
    pseudoRandom(64 * KiB, 5).copy(d, 0);
    Buffer.from('a disk sector of compressible text; '.repeat(6000)).copy(d, 256 * KiB);
    pseudoRandom(10 * KiB, 6).copy(d, d.length - 10 * KiB);
    fs.writeFileSync(file, d);
  });
}

function qemuCompressed(raw: string, options: string[]): string {
  return cached(`${path.basename(raw)}.prop-c-${options.join('-').replace(/[^a-z0-9-]/gi, '_')}.qcow2`, (file) => {
    run('qemu-img', ['convert', '-q', '-c', '-f', 'raw', '-O', 'qcow2', ...(options.length ? ['-o', options.join(',')] : []), raw, file]);
  });
}

/** A region of a real image worth mutating: [start, start + length). */
type Region = readonly [number, number];

interface Base {
  readonly name: string;
  readonly data: Buffer;
  readonly regions: readonly Region[];
}

function vmdkBase(name: string, data: Buffer): Base {
  const regions: Region[] = [[0, 512], [512, 1024]];
  const gd = data.readBigUInt64LE(56);
  if (gd !== 0xffffffffffffffffn && Number(gd) * 512 < data.length) regions.push([Number(gd) * 512, 4096]);
  regions.push([Math.max(0, data.length - 1536), 1536]);
  return { name, data, regions };
}

function qcow2Base(name: string, data: Buffer): Base {
  const l1 = Number(data.readBigUInt64BE(40));
  const l2 = Number(data.readBigUInt64BE(l1) & 0x00fffffffffffe00n);
  return { name, data, regions: [[0, 512], [l1, 512], [l2, 4096]] };
}

/** Byte, u32 or u64 overwrites at places inside a region, with ordinary and hostile values. */
function mutations(base: Base, littleEndian: boolean): fc.Arbitrary<(d: Buffer) => void> {
  const size = base.data.length;
  const one = fc.record({
    region: fc.nat(base.regions.length - 1),
    at: fc.nat(4095),
    width: fc.constantFrom(1, 4, 8),
    value: fc.oneof(
      fc.bigInt({ min: 0n, max: 0xffffffffffffffffn }),
      fc.constantFrom(0n, 1n, 2n, 0xffn, 0xffffffffn, 0xffffffffffffffffn, BigInt(size), BigInt(size * 2), 1n << 53n, 1n << 62n, 1n << 63n),
      fc.bigInt({ min: 0n, max: BigInt(size) }),
    ),
  });
  return fc.array(one, { minLength: 1, maxLength: 6 }).map((ms) => (d: Buffer) => {
    for (const m of ms) {
      const [start, len] = base.regions[m.region];
      const at = start + (m.at % len);
      if (at + m.width > d.length) continue;
      if (m.width === 1) {
        d[at] = Number(m.value & 0xffn);
      } else if (m.width === 4) {
        const v = Number(m.value & 0xffffffffn);
        if (littleEndian) d.writeUInt32LE(v, at);
        else d.writeUInt32BE(v, at);
      } else if (littleEndian) {
        d.writeBigUInt64LE(m.value, at);
      } else {
        d.writeBigUInt64BE(m.value, at);
      }
    }
  });
}

describe('VMDK and qcow2 readers under arbitrary and damaged input', () => {
  const runs = { numRuns: 400 };

  test('random bytes behind each magic give an image or a typed error', async () => {
    // GIVEN
    const prefixes = ['', 'KDMV', 'COWD', '# Disk DescriptorFile\n', 'QFI\xfb'].map((p) => Buffer.from(p, 'latin1'));
    // WHEN / THEN
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...prefixes), fc.uint8Array({ maxLength: 8192 }), fc.boolean(), async (prefix, rest, qcow) => {
        await exercise(qcow ? openQcow2 : openVmdk, Buffer.concat([prefix, rest]));
      }),
      { numRuns: 400 },
    );
  });

  test('random VMDK sparse headers give an image or a typed error', async () => {
    // GIVEN
    const descriptor = Buffer.from('# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType="streamOptimized"\nRW 2048 SPARSE "x.vmdk"\n');
    const header = fc.record({
      version: fc.constantFrom(1, 2, 3, 4, 0),
      flags: fc.constantFrom(0, 1, 3, 0x30001, 0x30003, 0x20000, 4, 0xffffffff),
      capacity: fc.oneof(fc.bigInt({ min: 0n, max: 1n << 40n }), fc.constantFrom(0n, 2048n, 1n << 60n)),
      grainSize: fc.oneof(fc.constantFrom(0n, 1n, 8n, 128n, 16384n, 1n << 40n), fc.bigInt({ min: 0n, max: 1n << 16n })),
      numGTEs: fc.constantFrom(0, 1, 512, 513, 0xffffffff),
      gdOffset: fc.oneof(fc.constantFrom(0n, 2n, 3n, 0xffffffffffffffffn), fc.bigInt({ min: 0n, max: 64n })),
      compress: fc.constantFrom(0, 1, 2),
      body: fc.uint8Array({ maxLength: 16384 }),
    });
    // WHEN / THEN
    await fc.assert(
      fc.asyncProperty(header, async (h) => {
        const b = Buffer.alloc(1024 + h.body.length);
        b.write('KDMV', 0, 'latin1');
        b.writeUInt32LE(h.version, 4);
        b.writeUInt32LE(h.flags >>> 0, 8);
        b.writeBigUInt64LE(h.capacity, 12);
        b.writeBigUInt64LE(h.grainSize, 20);
        b.writeBigUInt64LE(1n, 28);
        b.writeBigUInt64LE(1n, 36);
        b.writeUInt32LE(h.numGTEs >>> 0, 44);
        b.writeBigUInt64LE(h.gdOffset, 56);
        Buffer.from('\n \r\n', 'latin1').copy(b, 73);
        b.writeUInt16LE(h.compress, 77);
        descriptor.copy(b, 512);
        Buffer.from(h.body).copy(b, 1024);
        await exercise(openVmdk, b);
      }),
      { numRuns: 300 },
    );
  });

  test('random qcow2 headers give an image or a typed error', async () => {
    // GIVEN
    const header = fc.record({
      version: fc.constantFrom(2, 3, 4),
      clusterBits: fc.oneof(fc.integer({ min: 9, max: 21 }), fc.constantFrom(0, 8, 22, 63)),
      size: fc.oneof(fc.bigInt({ min: 0n, max: 1n << 45n }), fc.constantFrom(0n, 1n << 53n, 1n << 63n)),
      l1Size: fc.oneof(fc.nat(64), fc.constantFrom(0xffffffff, 1 << 22)),
      l1Offset: fc.oneof(fc.constantFrom(0n, 512n, 4096n, 65536n, 1n << 62n), fc.bigInt({ min: 0n, max: 1n << 20n })),
      incompatible: fc.oneof(fc.constantFrom(0n, 1n, 2n, 4n, 8n, 16n, 24n), fc.bigInt({ min: 0n, max: 0xffffffffffffffffn })),
      headerLength: fc.constantFrom(104, 112, 72, 4096, 1 << 30),
      compression: fc.constantFrom(0, 1, 2),
      backing: fc.constantFrom([0n, 0], [200n, 10], [4000n, 1023], [1n << 50n, 5]),
      body: fc.uint8Array({ maxLength: 16384 }),
    });
    // WHEN / THEN
    await fc.assert(
      fc.asyncProperty(header, async (h) => {
        const b = Buffer.alloc(512 + h.body.length);
        b.writeUInt32BE(0x514649fb, 0);
        b.writeUInt32BE(h.version, 4);
        b.writeBigUInt64BE(h.backing[0] as bigint, 8);
        b.writeUInt32BE(h.backing[1] as number, 16);
        b.writeUInt32BE(h.clusterBits, 20);
        b.writeBigUInt64BE(h.size, 24);
        b.writeUInt32BE(h.l1Size >>> 0, 36);
        b.writeBigUInt64BE(h.l1Offset, 40);
        b.writeBigUInt64BE(h.incompatible, 72);
        b.writeUInt32BE(4, 96);
        b.writeUInt32BE(h.headerLength, 100);
        b[104] = h.compression;
        Buffer.from(h.body).copy(b, 512);
        await exercise(openQcow2, b);
      }),
      { numRuns: 300 },
    );
  });

  describe('mutated real images', () => {
    const vmdkBases = (): Base[] => {
      const raw = smallDisk();
      return [
        vmdkBase('qemu streamOptimized', fs.readFileSync(qemuConvert(raw, 'vmdk', ['subformat=streamOptimized']))),
        vmdkBase('qemu monolithicSparse', fs.readFileSync(qemuConvert(raw, 'vmdk', ['subformat=monolithicSparse']))),
        vmdkBase('VMware streamOptimized', buildVmwareStreamVmdk(fs.readFileSync(raw), { grainSectors: 16 }).image),
      ];
    };
    const qcow2Bases = (): Base[] => {
      const raw = smallDisk();
      return [
        qcow2Base('v2', fs.readFileSync(qemuConvert(raw, 'qcow2', ['compat=0.10']))),
        qcow2Base('v3 4 KiB clusters', fs.readFileSync(qemuConvert(raw, 'qcow2', ['cluster_size=4096']))),
        qcow2Base('zlib compressed', fs.readFileSync(qemuCompressed(raw, []))),
        qcow2Base('zstd compressed', fs.readFileSync(qemuCompressed(raw, ['compression_type=zstd']))),
        qcow2Base('extended L2', fs.readFileSync(qemuConvert(raw, 'qcow2', ['extended_l2=on']))),
      ];
    };

    test('every unmutated base opens and reads (the properties below start from good images)', async () => {
      // GIVEN
      const bases = [...vmdkBases().map((b) => [b, openVmdk] as const), ...qcow2Bases().map((b) => [b, openQcow2] as const)];
      for (const [base, open] of bases) {
        // WHEN
        const img = await open(new BufferSource(base.name, base.data));
        const data = await img.read(0, img.virtualSize);
        // THEN
        expect(data.equals(fs.readFileSync(smallDisk()))).toBe(true);
      }
    });

    test('VMDKs with overwritten header, descriptor, tables and footer fields, or cut short', async () => {
      for (const base of vmdkBases()) {
        await fc.assert(
          fc.asyncProperty(mutations(base, true), fc.option(fc.nat(base.data.length)), async (mutate, cut) => {
            const d = Buffer.from(base.data);
            mutate(d);
            await exercise(openVmdk, cut === null ? d : d.subarray(0, cut));
          }),
          runs,
        );
      }
    });

    test('qcow2 images with overwritten header, L1 and L2 fields, or cut short', async () => {
      for (const base of qcow2Bases()) {
        await fc.assert(
          fc.asyncProperty(mutations(base, false), fc.option(fc.nat(base.data.length)), async (mutate, cut) => {
            const d = Buffer.from(base.data);
            mutate(d);
            await exercise(openQcow2, cut === null ? d : d.subarray(0, cut));
          }),
          runs,
        );
      }
    });

    test('bytes overwritten anywhere (compressed grains and clusters included) give an image or a typed error', async () => {
      const bases = [...vmdkBases().map((b) => [b, openVmdk] as const), ...qcow2Bases().map((b) => [b, openQcow2] as const)];
      for (const [base, open] of bases) {
        const garbage = fc.record({ at: fc.nat(base.data.length - 1), bytes: fc.uint8Array({ minLength: 1, maxLength: 64 }) });
        await fc.assert(
          fc.asyncProperty(garbage, async ({ at, bytes }) => {
            const d = Buffer.from(base.data);
            Buffer.from(bytes).copy(d, at);
            await exercise(open, d);
          }),
          { numRuns: 60 },
        );
      }
    });
  });

  describe('parseVmdkDescriptor', () => {
    test('any text gives a descriptor or a format error', () => {
      fc.assert(
        fc.property(fc.string({ unit: 'binary', maxLength: 2000 }), (text) => {
          try {
            const d = parseVmdkDescriptor(text);
            expect(typeof d.createType).toBe('string');
            expect(Number.isSafeInteger(d.virtualSize)).toBe(true);
          } catch (e) {
            expect(e).toBeInstanceOf(ImageFormatError);
          }
        }),
        { numRuns: 500 },
      );
    });

    test('lines that look like a descriptor give a descriptor or a format error, with sizes that add up', () => {
      const line = fc.oneof(
        fc.constantFrom('# Disk DescriptorFile', 'version=1', 'createType="monolithicSparse"', 'createType=', '#DDB', '', 'parentCID=ffffffff'),
        fc.tuple(fc.constantFrom('RW', 'RDONLY', 'NOACCESS', 'rw'), fc.oneof(fc.nat().map(String), fc.stringMatching(/^\d{1,30}$/)), fc.constantFrom('SPARSE', 'FLAT', 'ZERO', 'VMFS', 'sesparse', '')).map(
          ([a, n, t]) => `${a} ${n} ${t} "f.vmdk" 0`,
        ),
        fc.tuple(fc.stringMatching(/^[A-Za-z][\w.]{0,20}$/), fc.string({ maxLength: 30 })).map(([k, v]) => `${k} = "${v}"`),
        fc.string({ maxLength: 60 }),
      );
      fc.assert(
        fc.property(fc.array(line, { maxLength: 40 }), fc.constantFrom('\n', '\r\n'), (lines, eol) => {
          try {
            const d = parseVmdkDescriptor(lines.join(eol));
            expect(d.virtualSize).toBe(d.extents.reduce((n, e) => n + e.sectors, 0) * 512);
            for (const e of d.extents) expect(Number.isSafeInteger(e.sectors)).toBe(true);
          } catch (e) {
            expect(e).toBeInstanceOf(ImageFormatError);
          }
        }),
        { numRuns: 500 },
      );
    });

    test('a written descriptor parses back to what was written', () => {
      const extent = fc.record({
        access: fc.constantFrom('RW' as const, 'RDONLY' as const, 'NOACCESS' as const),
        sectors: fc.integer({ min: 0, max: 2 ** 40 }),
        type: fc.constantFrom('SPARSE', 'FLAT', 'VMFS', 'SESPARSE'),
        file: fc.stringMatching(/^[\w.-]{1,30}$/),
        offset: fc.option(fc.integer({ min: 0, max: 2 ** 32 }), { nil: undefined }),
      });
      const desc = fc.record({
        createType: fc.stringMatching(/^[A-Za-z]{1,24}$/),
        cid: fc.stringMatching(/^[0-9a-f]{8}$/),
        parentCid: fc.oneof(fc.constant('ffffffff'), fc.stringMatching(/^[0-9a-f]{8}$/)),
        extents: fc.array(extent, { maxLength: 8 }),
        adapterType: fc.constantFrom('ide', 'lsilogic', 'buslogic', 'pvscsi'),
        hwVersion: fc.integer({ min: 4, max: 21 }).map(String),
        geometry: fc.tuple(fc.nat(100000), fc.nat(255), fc.nat(63)),
      });
      fc.assert(
        fc.property(desc, (w) => {
          const text = [
            '# Disk DescriptorFile',
            'version=1',
            `CID=${w.cid}`,
            `parentCID=${w.parentCid}`,
            `createType="${w.createType}"`,
            '',
            '# Extent description',
            ...w.extents.map((e) => `${e.access} ${e.sectors} ${e.type} "${e.file}"${e.offset !== undefined ? ` ${e.offset}` : ''}`),
            '',
            '#DDB',
            `ddb.adapterType = "${w.adapterType}"`,
            `ddb.virtualHWVersion = "${w.hwVersion}"`,
            `ddb.geometry.cylinders = "${w.geometry[0]}"`,
            `ddb.geometry.heads = "${w.geometry[1]}"`,
            `ddb.geometry.sectors = "${w.geometry[2]}"`,
          ].join('\n') + '\n\0\0\0';
          const d = parseVmdkDescriptor(text);
          expect(d.createType).toBe(w.createType);
          expect(d.cid).toBe(w.cid);
          expect(d.parentCid).toBe(w.parentCid);
          expect(d.hasParent).toBe(w.parentCid !== 'ffffffff');
          const written = w.extents.map((e) => (e.offset === undefined ? { access: e.access, sectors: e.sectors, type: e.type, file: e.file } : e));
          expect(d.extents).toEqual(written);
          expect(d.virtualSize).toBe(w.extents.reduce((n, e) => n + e.sectors, 0) * 512);
          expect(d.adapterType).toBe(w.adapterType);
          expect(d.hwVersion).toBe(w.hwVersion);
          expect(d.geometry).toEqual({ cylinders: w.geometry[0], heads: w.geometry[1], sectors: w.geometry[2] });
        }),
        { numRuns: 300 },
      );
    });
  });
});
