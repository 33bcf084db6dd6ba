import * as fs from 'node:fs';
import * as path from 'node:path';
import * as fc from 'fast-check';
import { ImageFormatError, ImageReadError, UnsupportedImageError } from '../../lambda/disk/errors';
import { openOva } from '../../lambda/disk/ova';
import { parseOvf } from '../../lambda/disk/ovf';
import { BufferSource, type ByteSource, type ReadStats } from '../../lambda/disk/source';
import { listTar, tarChecksumOk } from '../../lambda/disk/tar';
import { pseudoRandom, run, tempDir } from '../helpers/fixtures';
import { manifestText, ovfDescriptor, paxRecord, tarBuffer, type TarEntry } from '../helpers/ova-builder';

const MiB = 1024 * 1024;

/** A source that counts what a parser asks of it and fails the property past the caps. */
class GuardedSource implements ByteSource {
  public reads = 0;
  public bytes = 0;
  public largest = 0;
  private readonly inner: BufferSource;

  public constructor(data: Buffer, private readonly caps: { reads: number; length: number }) {
    this.inner = new BufferSource('guarded.ova', data);
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
    this.reads++;
    this.largest = Math.max(this.largest, length);
    if (this.reads > this.caps.reads) throw new Error(`more than ${this.caps.reads} reads`);
    if (length > this.caps.length) throw new Error(`a read of ${length} bytes`);
    const buf = await this.inner.read(offset, length);
    this.bytes += buf.length;
    return buf;
  }

  public async close(): Promise<void> {}
}

function isTyped(e: unknown): boolean {
  return e instanceof ImageFormatError || e instanceof ImageReadError || e instanceof UnsupportedImageError;
}

/** Runs `fn`; a typed error is an acceptable outcome, anything else fails the property. */
async function resultOrTypedError<T>(fn: () => Promise<T>): Promise<T | undefined> {
  try {
    return await fn();
  } catch (e) {
    if (isTyped(e)) return undefined;
    throw e;
  }
}

/** Caps for a parser over `size` bytes: a few reads per 512-byte block, no read over 4 MiB. */
function capsFor(size: number): { reads: number; length: number } {
  return { reads: Math.ceil(size / 512) * 3 + 16, length: 4 * MiB };
}

/** Rewrites the checksum of every block that was a valid header before `mutate`. */
function mutate(base: Buffer, edits: ReadonlyArray<[number, number]>, fixChecksums: boolean): Buffer {
  const out = Buffer.from(base);
  const headerBlocks = new Set<number>();
  for (const [pos, value] of edits) {
    const p = pos % out.length;
    const block = Math.floor(p / 512) * 512;
    if (block + 512 <= base.length && tarChecksumOk(base.subarray(block, block + 512))) headerBlocks.add(block);
    out[p] = value;
  }
  if (fixChecksums) {
    for (const block of headerBlocks) {
      const h = out.subarray(block, block + 512);
      h.fill(0x20, 148, 156);
      let sum = 0;
      for (const b of h) sum += b;
      h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'latin1');
    }
  }
  return out;
}

/** Small archives of every kind listTar reads: ustar, pax, GNU long names, base-256, and GNU tar's own. */
function baseArchives(): Buffer[] {
  const disk = pseudoRandom(3000, 7);
  const built = [
    tarBuffer([
      { name: 'vm.ovf', data: Buffer.from('<Envelope/>') },
      { name: `long/${'x'.repeat(120)}.vmdk`, data: disk, nameEncoding: 'gnu' },
      { name: `pax/${'y'.repeat(120)}.vmdk`, data: disk, nameEncoding: 'pax' },
      { name: 'sized.vmdk', data: disk, sizeEncoding: 'base256' },
      { name: 'paxsize.vmdk', data: disk, sizeEncoding: 'pax' },
      { name: 'glob', data: Buffer.from(paxRecord('comment', 'x')), typeflag: 'g' },
      { name: 'dir/', data: Buffer.alloc(0), typeflag: '5' },
    ]),
  ];
  const { dir, cleanup } = tempDir();
  try {
    fs.writeFileSync(path.join(dir, 'a.ovf'), '<Envelope/>');
    fs.writeFileSync(path.join(dir, `${'z'.repeat(110)}.vmdk`), disk);
    for (const format of ['pax', 'gnu', 'ustar']) {
      const file = path.join(dir, `${format}.tar`);
      const names = format === 'ustar' ? ['a.ovf'] : ['a.ovf', `${'z'.repeat(110)}.vmdk`];
      run('tar', [`--format=${format}`, '-cf', file, '-C', dir, ...names]);
      built.push(fs.readFileSync(file));
    }
  } finally {
    cleanup();
  }
  return built;
}

/** Small OVA packages: a two-disk package with a manifest, a chunked one, a compressed one. */
function baseOvas(): Buffer[] {
  const d1 = pseudoRandom(4096, 1);
  const d2 = pseudoRandom(2048, 2);
  const ovf = Buffer.from(
    ovfDescriptor({
      disks: [
        { href: 'vm-disk1.vmdk', capacity: 1, units: 'byte * 2^30', size: d1.length },
        { href: 'vm-disk2.vmdk', capacity: 2048, units: 'byte * 1024 * 1024', size: d2.length },
      ],
      firmware: 'efi',
      nics: 2,
    }),
  );
  const files: TarEntry[] = [
    { name: 'vm.ovf', data: ovf },
    { name: 'vm-disk1.vmdk', data: d1 },
    { name: 'vm-disk2.vmdk', data: d2 },
  ];
  const mf = Buffer.from(manifestText(files.map((f) => ({ name: f.name, data: f.data! }))));
  const chunkedOvf = Buffer.from(ovfDescriptor({ disks: [{ href: 'c.vmdk', capacity: 1, units: 'byte * 2^20', chunkSize: 2048 }] }));
  const gzOvf = Buffer.from(ovfDescriptor({ disks: [{ href: 'g.vmdk', capacity: 1, compression: 'gzip' }] }));
  return [
    tarBuffer([files[0], { name: 'vm.mf', data: mf }, files[1], files[2]]),
    tarBuffer([
      { name: 'c.ovf', data: chunkedOvf },
      { name: 'c.vmdk.000000000', data: d1.subarray(0, 2048) },
      { name: 'c.vmdk.000000001', data: d1.subarray(2048) },
    ]),
    tarBuffer([{ name: 'g.ovf', data: gzOvf }, { name: 'g.vmdk', data: d2, sizeEncoding: 'pax' }]),
  ];
}

const edits = fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 12 });

describe('listTar never crashes, hangs or reads without bound', () => {
  const archives = baseArchives();

  test('on random bytes', async () => {
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ maxLength: 6 * 512 }), async (bytes) => {
        // GIVEN
        const src = new GuardedSource(Buffer.from(bytes), capsFor(bytes.length));
        // WHEN
        const out = await resultOrTypedError(() => listTar(src));
        // THEN
        for (const m of out?.members ?? []) expect(m.offset + m.size).toBeLessThanOrEqual(bytes.length);
        expect(src.largest).toBeLessThanOrEqual(MiB);
      }),
      { numRuns: 300 },
    );
  });

  test('on mutated real archives, with and without repaired checksums', async () => {
    await fc.assert(
      fc.asyncProperty(fc.nat({ max: archives.length - 1 }), edits, fc.boolean(), async (which, changes, fix) => {
        // GIVEN
        const data = mutate(archives[which], changes, fix);
        const src = new GuardedSource(data, capsFor(data.length));
        // WHEN
        const out = await resultOrTypedError(() => listTar(src));
        // THEN
        for (const m of out?.members ?? []) {
          expect(m.offset + m.size).toBeLessThanOrEqual(data.length);
          expect(Number.isSafeInteger(m.size) && m.size >= 0).toBe(true);
        }
        expect(src.largest).toBeLessThanOrEqual(MiB);
      }),
      { numRuns: 400 },
    );
  });
});

describe('parseOvf gives a descriptor or ImageFormatError', () => {
  const base = ovfDescriptor({
    disks: [
      { href: 'a.vmdk', capacity: 10, units: 'byte * 2^30', size: 100, compression: 'gzip' },
      { href: 'b.vmdk', capacity: 5, chunkSize: 1000 },
    ],
    firmware: 'efi',
    nics: 2,
  });
  const fragments = [
    '<', '>', '/>', '</Item>', '<Item>', '&', '&amp;', '&#0;', '"', "'", '<!DOCTYPE x>', '<!ENTITY a "b">', '<![CDATA[', ']]>',
    '<!--', '-->', '<?pi x?>', 'ovf:capacity="99999999999999999999"', 'ovf:capacityAllocationUnits="byte * 2^99"',
    '<Disk ovf:diskId="x"/>', '<rasd:ResourceType>10</rasd:ResourceType>', '<__proto__/>', '<constructor/>', 'xmlns:ovf="x"',
    '<VirtualSystemCollection>', '</VirtualSystem>', '\u0000', '\uffff', '\ud800',
  ];
  const edit = fc.oneof(
    fc.tuple(fc.constant('delete' as const), fc.nat(), fc.nat({ max: 200 }), fc.constant('')),
    fc.tuple(fc.constant('insert' as const), fc.nat(), fc.constant(0), fc.constantFrom(...fragments)),
    fc.tuple(fc.constant('insert' as const), fc.nat(), fc.constant(0), fc.string({ maxLength: 20 })),
    fc.tuple(fc.constant('duplicate' as const), fc.nat(), fc.nat({ max: 400 }), fc.constant('')),
  );

  function check(xml: string): void {
    try {
      const ovf = parseOvf(xml);
      for (const d of ovf.disks) {
        if (d.capacityBytes !== undefined) expect(Number.isSafeInteger(d.capacityBytes) && d.capacityBytes >= 0).toBe(true);
      }
      for (const f of ovf.files) if (f.size !== undefined) expect(Number.isSafeInteger(f.size)).toBe(true);
      expect(ovf.networkAdapters).toBeGreaterThanOrEqual(0);
    } catch (e) {
      if (!(e instanceof ImageFormatError)) throw e;
    }
  }

  test('on random text', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 2000, unit: 'binary' }), (text) => {
        check(text);
      }),
      { numRuns: 300 },
    );
  });

  test('on edited descriptors', () => {
    fc.assert(
      fc.property(fc.array(edit, { minLength: 1, maxLength: 6 }), (changes) => {
        // GIVEN
        let xml = base;
        for (const [kind, at, len, text] of changes) {
          const p = at % (xml.length + 1);
          if (kind === 'delete') xml = xml.slice(0, p) + xml.slice(p + len);
          else if (kind === 'insert') xml = xml.slice(0, p) + text + xml.slice(p);
          else xml = xml.slice(0, p) + xml.slice(p, p + len) + xml.slice(p);
        }
        // WHEN / THEN
        check(xml);
      }),
      { numRuns: 500 },
    );
  });
});

describe('openOva never crashes, hangs or reads without bound', () => {
  const ovas = baseOvas();

  test('the base packages open as expected', async () => {
    // GIVEN / WHEN
    const pkgs = await Promise.all(ovas.map((o) => openOva(new BufferSource('base.ova', o))));
    // THEN: the property below mutates packages that really are read as OVAs
    expect(pkgs.map((p) => p.findings.map((f) => f.code))).toEqual([[], ['OVA_CHUNKED'], ['OVA_COMPRESSED_DISK']]);
    expect(pkgs[0].disks.map((d) => d.source?.size)).toEqual([4096, 2048]);
  });

  test('on mutated packages', async () => {
    await fc.assert(
      fc.asyncProperty(fc.nat({ max: ovas.length - 1 }), edits, fc.boolean(), async (which, changes, fix) => {
        // GIVEN
        const data = mutate(ovas[which], changes, fix);
        const src = new GuardedSource(data, capsFor(data.length));
        // WHEN
        const pkg = await resultOrTypedError(() => openOva(src));
        // THEN
        for (const d of pkg?.disks ?? []) {
          if (d.source) expect(d.source.size).toBeLessThanOrEqual(data.length);
          expect(d.chunked && d.source !== undefined).toBe(false);
        }
        expect(src.bytes).toBeLessThanOrEqual(4 * data.length + 64 * 1024);
      }),
      { numRuns: 400 },
    );
  });

  test('on random bytes behind a valid first header', async () => {
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ maxLength: 4096 }), async (bytes) => {
        // GIVEN: a descriptor member whose content is noise
        const data = tarBuffer([{ name: 'x.ovf', data: Buffer.from(bytes) }]);
        const src = new GuardedSource(data, capsFor(data.length));
        // WHEN
        const pkg = await resultOrTypedError(() => openOva(src));
        // THEN
        expect(pkg === undefined || pkg.ovfName === 'x.ovf').toBe(true);
        expect(src.largest).toBeLessThanOrEqual(4 * MiB);
      }),
      { numRuns: 200 },
    );
  });
});
