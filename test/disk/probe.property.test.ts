import * as fc from 'fast-check';
import { ImageFormatError, ImageReadError, UnsupportedImageError } from '../../lambda/disk/errors';
import { RULES } from '../../lambda/disk/findings';
import {
  crc32,
  detectFilesystem,
  findFallbackLoader,
  FS_WINDOW,
  identifyFilesystem,
  parseFatBootSector,
  probeDisk,
  type DiskLayout,
  type ProbeOptions,
} from '../../lambda/disk/probe';
import { MAX_WALK_READS } from '../../lambda/disk/probe/fat';
import { openRaw } from '../../lambda/disk/raw';
import { FileSource } from '../../lambda/disk/source';
import { sampleGptDisk } from '../helpers/fixtures';
import {
  extendedMbrDisk,
  fat32WithLoader,
  mbrExt4Disk,
  readFileAt,
  RecordingSource,
  SparseSource,
  testDisk,
  vvfatImage,
  vvfatPartition,
} from '../helpers/probe-disks';

const MiB = 1024 * 1024;
const ESP = 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B';
const LINUX = '0FC63DAF-8483-4772-8E79-3D69D8477DE4';

/** What any probe may read, whatever the bytes say: the head, GPT entries twice, EBRs, 128 windows, one ESP walk. */
const MAX_BYTES = 16 * MiB;
const MAX_REQUESTS = 2 + 2 + 128 + 128 + MAX_WALK_READS;
const RUN_TIMEOUT = 5000;

const FILESYSTEMS = new Set(['ext2', 'ext3', 'ext4', 'xfs', 'btrfs', 'ntfs', 'jfs', 'fat12', 'fat16', 'fat32', 'lvm2', 'swap', 'luks', 'unknown']);

function isTyped(e: unknown): boolean {
  return e instanceof ImageReadError || e instanceof ImageFormatError || e instanceof UnsupportedImageError;
}

/** Checks a layout for what must hold of any: numbers that are byte offsets, known codes. */
function checkLayout(layout: DiskLayout, diskIndex?: number): void {
  expect(['mbr', 'gpt', 'none']).toContain(layout.table);
  for (const p of layout.partitions) {
    expect(Number.isSafeInteger(p.index) && p.index >= 1).toBe(true);
    expect(Number.isSafeInteger(p.start) && p.start >= 0).toBe(true);
    expect(Number.isSafeInteger(p.size) && p.size >= 0).toBe(true);
    if (p.filesystem) expect(FILESYSTEMS.has(p.filesystem)).toBe(true);
  }
  for (const f of layout.findings) {
    expect(Object.keys(RULES)).toContain(f.code);
    expect(f.disk).toBe(diskIndex);
  }
}

/** Probes `source` and checks the result or the error, and what was read. */
async function probeChecked(source: SparseSource, options: ProbeOptions): Promise<void> {
  try {
    const layout = await probeDisk(await openRaw(source), options);
    checkLayout(layout, options.diskIndex);
  } catch (e) {
    if (!isTyped(e)) throw e;
  }
  expect(source.stats.requests).toBeLessThanOrEqual(MAX_REQUESTS);
  expect(source.stats.bytesRead).toBeLessThanOrEqual(MAX_BYTES);
}

const optionsArb: fc.Arbitrary<ProbeOptions> = fc.record(
  {
    isBootDisk: fc.boolean(),
    firmware: fc.constantFrom<'bios' | 'efi'>('bios', 'efi'),
    diskIndex: fc.nat(20),
  },
  { requiredKeys: ['isBootDisk'] },
);

/** The bytes a probe of `file` reads, as disjoint chunks, so that a sparse copy probes the same. */
interface Snapshot {
  readonly name: string;
  readonly size: number;
  readonly chunks: ReadonlyArray<{ offset: number; data: Buffer }>;
  /** The ESP whose directories the probe walked. */
  readonly esp?: { start: number; size: number };
}

async function snapshot(file: string): Promise<Snapshot> {
  const rec = new RecordingSource(await FileSource.open(file));
  const layout = await probeDisk(await openRaw(rec), { isBootDisk: true });
  const esp = layout.esp?.hasFallbackLoader !== undefined ? layout.partitions.find((p) => p.index === layout.esp!.partition) : undefined;
  await rec.close();
  const ranges = rec.ranges.map((r) => ({ start: r.offset, end: Math.min(rec.size, r.offset + r.length) })).sort((a, b) => a.start - b.start);
  const merged: Array<{ start: number; end: number }> = [];
  for (const r of ranges) {
    const last = merged[merged.length - 1];
    if (last && r.start <= last.end) last.end = Math.max(last.end, r.end);
    else merged.push({ ...r });
  }
  return {
    name: file,
    size: rec.size,
    chunks: merged.map((r) => ({ offset: r.start, data: readFileAt(file, r.start, r.end - r.start) })),
    ...(esp ? { esp: { start: esp.start, size: esp.size } } : {}),
  };
}

/** Offsets of fields that steer the parsers: MBR entries, the GPT header and first entries, FAT BPB, ext superblock. */
const FIELDS = [
  ...[0, 1, 2, 3].flatMap((i) => [446 + 16 * i, 446 + 16 * i + 4, 446 + 16 * i + 8, 446 + 16 * i + 12]),
  ...[8, 12, 16, 24, 28, 32, 36, 40, 48, 72, 76, 80, 84, 88].map((o) => 512 + o),
  ...[0, 1].flatMap((i) => [1024 + 128 * i + 32, 1024 + 128 * i + 36, 1024 + 128 * i + 40, 1024 + 128 * i + 44]),
  11, 13, 14, 16, 17, 19, 22, 32, 36, 44,
  ...[0, 4, 24, 56, 92, 96, 100].map((o) => 1024 + o),
];

/** One change to a snapshot: a byte, a 32-bit value anywhere, or a field set to an awkward value. */
const mutationArb = fc.record({
  chunk: fc.oneof(fc.constant(0), fc.nat()),
  // most of the structure sits in the first sectors of each chunk
  pos: fc.oneof(fc.nat(1535), fc.nat(FS_WINDOW), fc.constantFrom(...FIELDS)),
  kind: fc.constantFrom('byte', 'u32', 'field', 'field'),
  value: fc.oneof(fc.integer({ min: 0, max: 255 }), fc.constantFrom(0, 1, 2, 0x7fffffff, 0x80000000, 0xffffffff), fc.nat(1 << 22), fc.nat()),
});

type Mutation = typeof mutationArb extends fc.Arbitrary<infer T> ? T : never;

function mutate(s: Snapshot, mutations: readonly Mutation[], reseal: boolean) {
  const chunks = s.chunks.map((c) => ({ offset: c.offset, data: Buffer.from(c.data) }));
  for (const m of mutations) {
    const c = chunks[m.chunk % chunks.length];
    if (c.data.length < 4) continue;
    if (m.kind === 'byte') {c.data[m.pos % c.data.length] = m.value & 0xff;} else if (m.kind === 'u32') {c.data.writeUInt32LE(m.value >>> 0, (m.pos % (c.data.length - 3)) & ~3);} else {
      const at = FIELDS[m.pos % FIELDS.length];
      if (at + 4 <= c.data.length) c.data.writeUInt32LE(m.value >>> 0, at);
    }
  }
  if (reseal) resealGpt(chunks[0]);
  return chunks;
}

/** Recomputes the primary GPT's entry and header CRCs after a mutation, so that the fields get parsed. */
function resealGpt(head: { offset: number; data: Buffer }): void {
  const d = head.data;
  if (head.offset !== 0 || d.length < 1024 || d.toString('latin1', 512, 520) !== 'EFI PART') return;
  const entriesLba = Number(d.readBigUInt64LE(512 + 72));
  const bytes = d.readUInt32LE(512 + 80) * d.readUInt32LE(512 + 84);
  if (entriesLba * 512 + bytes <= d.length) d.writeUInt32LE(crc32(d.subarray(entriesLba * 512, entriesLba * 512 + bytes)), 512 + 88);
  const size = d.readUInt32LE(512 + 12);
  if (size >= 92 && size <= 512) {
    d.writeUInt32LE(0, 512 + 16);
    d.writeUInt32LE(crc32(d.subarray(512, 512 + size)), 512 + 16);
  }
}

let snapshots: Snapshot[] = [];

beforeAll(async () => {
  const vv = vvfatImage({ 'EFI/BOOT/BOOTX64.EFI': 'MZ loader', 'efi/debian/grubx64.efi': 'MZ grub' }, '16');
  const part = vvfatPartition(vv);
  const fat32 = fat32WithLoader(40, 'BOOTX64.EFI', true);
  const files = [
    mbrExt4Disk(),
    extendedMbrDisk(),
    sampleGptDisk(),
    testDisk({
      sizeMiB: 560,
      table: 'gpt',
      partitions: [
        { sizeSectors: part.size / 512, type: ESP, content: { file: vv, from: part.start, length: part.size } },
        { type: LINUX, fs: 'ext4' },
      ],
    }),
    testDisk({
      sizeMiB: 64,
      table: 'gpt',
      partitions: [
        { sizeMiB: 40, type: ESP, content: { file: fat32, from: 0, length: 40 * MiB } },
        { type: LINUX, fs: 'ext4' },
      ],
    }),
  ];
  snapshots = [];
  for (const f of files) snapshots.push(await snapshot(f));
}, 120_000);

describe('probe properties', () => {
  test('random bytes give a layout or a typed error, within the read bounds', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.uint8Array({ maxLength: 4096 }),
        fc.oneof(fc.nat(1 << 20), fc.nat(Number.MAX_SAFE_INTEGER)),
        fc.boolean(),
        fc.boolean(),
        optionsArb,
        async (bytes, extra, signature, gpt, options) => {
          // GIVEN
          const data = Buffer.from(bytes.length >= 1024 ? bytes : Buffer.concat([bytes, Buffer.alloc(1024 - bytes.length)]));
          if (signature) data.set([0x55, 0xaa], 510);
          if (gpt) data.write('EFI PART', 512, 'latin1');
          const size = Math.min(Number.MAX_SAFE_INTEGER, data.length + extra);
          // WHEN / THEN
          await probeChecked(new SparseSource('random', size, [{ offset: 0, data }]), options);
        },
      ),
      { numRuns: 300, timeout: RUN_TIMEOUT },
    );
  });

  test('hand-made MBRs with chains of EBRs that link anywhere, loops included, are followed within bounds', async () => {
    const entryArb = fc.record({
      status: fc.constantFrom(0, 0x80, 0x80, 0, 0x13),
      type: fc.constantFrom(0x00, 0x05, 0x0f, 0x85, 0x83, 0x07, 0x0c, 0xee, 0xef, 0x8e),
      first: fc.oneof(fc.nat(4096), fc.nat(0xffffffff)),
      count: fc.oneof(fc.nat(4096), fc.nat(0xffffffff)),
    });
    const writeEntry = (buf: Buffer, at: number, e: typeof entryArb extends fc.Arbitrary<infer T> ? T : never) => {
      buf[at] = e.status;
      buf[at + 4] = e.type;
      buf.writeUInt32LE(e.first >>> 0, at + 8);
      buf.writeUInt32LE(e.count >>> 0, at + 12);
    };
    await fc.assert(
      fc.asyncProperty(
        fc.array(entryArb, { minLength: 4, maxLength: 4 }),
        fc.array(fc.tuple(fc.nat(2047), entryArb, entryArb), { maxLength: 40 }),
        fc.nat(4 * MiB),
        optionsArb,
        async (primaries, ebrs, extra, options) => {
          // GIVEN a 1 MiB region holding the MBR and EBRs at random sectors
          const data = Buffer.alloc(MiB);
          primaries.forEach((e, i) => writeEntry(data, 446 + 16 * i, e));
          data.set([0x55, 0xaa], 510);
          for (const [sector, logical, link] of ebrs) {
            if (sector === 0) continue;
            writeEntry(data, sector * 512 + 446, logical);
            writeEntry(data, sector * 512 + 462, link);
            data.set([0x55, 0xaa], sector * 512 + 510);
          }
          // WHEN / THEN
          await probeChecked(new SparseSource('mbr', MiB + extra, [{ offset: 0, data }]), options);
        },
      ),
      { numRuns: 300, timeout: RUN_TIMEOUT },
    );
  });

  test('mutated real partition tables, superblocks and ESP directories give a layout or a typed error, within the read bounds', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.nat(),
        fc.array(mutationArb, { minLength: 1, maxLength: 24 }),
        fc.boolean(),
        fc.option(fc.double({ min: 0, max: 2, noNaN: true }), { nil: undefined }),
        optionsArb,
        async (which, mutations, reseal, resize, options) => {
          // GIVEN
          const s = snapshots[which % snapshots.length];
          const chunks = mutate(s, mutations, reseal);
          const size = resize === undefined ? s.size : Math.floor(s.size * resize);
          // WHEN / THEN
          await probeChecked(new SparseSource(s.name, size, chunks), options);
        },
      ),
      { numRuns: 400, timeout: RUN_TIMEOUT },
    );
  });

  test('GPT headers with arbitrary fields and valid CRCs are bounded by the header checks', async () => {
    const gpts = snapshots.filter((s) => s.chunks[0].data.toString('latin1', 512, 520) === 'EFI PART');
    // a 64-bit sector number: anything, small, near the last sector, or inside the disk
    const sectorArb = fc.oneof(
      fc.record({ abs: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }) }),
      fc.record({ abs: fc.nat(64).map(BigInt) }),
      fc.record({ fromEnd: fc.integer({ min: -64, max: 64 }) }),
      fc.record({ fraction: fc.double({ min: 0, max: 1, noNaN: true }) }),
    );
    const sector = (v: { abs?: bigint; fromEnd?: number; fraction?: number }, size: number): bigint => {
      const sectors = Math.floor(size / 512);
      if (v.abs !== undefined) return v.abs;
      if (v.fromEnd !== undefined) return BigInt(Math.max(0, sectors - 1 + v.fromEnd));
      return BigInt(Math.floor((v.fraction ?? 0) * sectors));
    };
    const u32 = fc.oneof(fc.constantFrom(0, 1, 92, 128, 256, 4096, 0x7fffffff, 0xffffffff), fc.nat(1 << 22), fc.nat(0xffffffff));
    await fc.assert(
      fc.asyncProperty(
        fc.nat(),
        fc.array(fc.tuple(fc.constantFrom(24, 32, 40, 48, 72), sectorArb), { maxLength: 5 }),
        fc.array(fc.tuple(fc.constantFrom(12, 80, 84), u32), { maxLength: 3 }),
        fc.array(fc.tuple(fc.nat(3), fc.constantFrom(32, 40), fc.bigInt({ min: 0n, max: (1n << 64n) - 1n })), { maxLength: 3 }),
        fc.boolean(),
        optionsArb,
        async (which, wide, narrow, entries, backupToo, options) => {
          // GIVEN a copy of a real GPT whose header fields (and entry ranges) are changed and resealed
          const s = gpts[which % gpts.length];
          const chunks = s.chunks.map((c) => ({ offset: c.offset, data: Buffer.from(c.data) }));
          const head = chunks[0].data;
          for (const [at, v] of wide) head.writeBigUInt64LE(sector(v, s.size), 512 + at);
          for (const [at, v] of narrow) head.writeUInt32LE(v >>> 0, 512 + at);
          for (const [entry, at, v] of entries) head.writeBigUInt64LE(v, 1024 + 128 * entry + at);
          resealGpt(chunks[0]);
          if (backupToo) {
            const last = chunks[chunks.length - 1];
            if (last.offset === s.size - 512) head.copy(last.data, 0, 512, 1024);
          }
          // WHEN / THEN
          await probeChecked(new SparseSource(s.name, s.size, chunks), options);
        },
      ),
      { numRuns: 400, timeout: RUN_TIMEOUT },
    );
  });

  test('mutated filesystem windows: one read, a known filesystem id', async () => {
    // every window the snapshots read at a partition start
    const windows = snapshots.flatMap((s) => s.chunks.filter((c) => c.offset > 0 && c.data.length >= 4096));
    await fc.assert(
      fc.asyncProperty(fc.nat(), fc.array(mutationArb, { maxLength: 6 }), fc.nat(FS_WINDOW * 2), async (which, mutations, size) => {
        // GIVEN
        const w = windows[which % windows.length];
        const chunks = mutate({ name: 'window', size: w.data.length, chunks: [{ offset: 0, data: w.data }] }, mutations, false);
        const src = new SparseSource('window', chunks[0].data.length, chunks);
        // WHEN
        const info = await detectFilesystem(await openRaw(src), 0, size);
        // THEN
        expect(FILESYSTEMS.has(info.filesystem)).toBe(true);
        expect(src.stats.requests).toBeLessThanOrEqual(1);
        expect(src.stats.bytesRead).toBeLessThanOrEqual(FS_WINDOW);
      }),
      { numRuns: 1000, timeout: RUN_TIMEOUT },
    );
  });

  test('mutated FATs and directories behind an intact boot sector: the walk ends within its read budget', async () => {
    // the ESP of each snapshot whose probe walked one: its chunks, shifted to the partition start
    const esps = snapshots.flatMap((s) => {
      if (!s.esp) return [];
      const { start, size } = s.esp;
      const inside = s.chunks.filter((c) => c.offset >= start && c.offset < start + size);
      return [{ chunks: inside.map((c) => ({ offset: c.offset - start, data: c.data })) }];
    });
    expect(esps.length).toBe(3);
    await fc.assert(
      fc.asyncProperty(fc.nat(), fc.array(mutationArb, { minLength: 1, maxLength: 32 }), async (which, mutations) => {
        // GIVEN
        const esp = esps[which % esps.length];
        const bs = parseFatBootSector(esp.chunks[0].data)!;
        const chunks = mutate({ name: 'esp', size: 0, chunks: esp.chunks }, mutations, false);
        chunks[0].data.set(esp.chunks[0].data.subarray(0, 512), 0); // keep the boot sector
        const size = bs.totalSectors * bs.bytesPerSector;
        const src = new SparseSource('esp', size, chunks);
        // WHEN
        let result: string | null | undefined;
        try {
          result = await findFallbackLoader(await openRaw(src), 0, size, bs);
        } catch (e) {
          if (!isTyped(e)) throw e;
        }
        // THEN
        expect(result === undefined || result === null || typeof result === 'string').toBe(true);
        expect(src.stats.requests).toBeLessThanOrEqual(MAX_WALK_READS);
        expect(src.stats.bytesRead).toBeLessThanOrEqual(MAX_WALK_READS * 128 * 1024);
      }),
      { numRuns: 400, timeout: RUN_TIMEOUT },
    );
  });

  test('the pure parsers never throw on arbitrary bytes', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: FS_WINDOW + 100 }), (bytes) => {
        const buf = Buffer.from(bytes);
        expect(FILESYSTEMS.has(identifyFilesystem(buf).filesystem)).toBe(true);
        const bs = parseFatBootSector(buf);
        if (bs) expect(bs.clusterCount).toBeGreaterThan(0);
      }),
      { numRuns: 300 },
    );
  });
});
