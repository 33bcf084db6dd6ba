import * as fs from 'node:fs';
import * as path from 'node:path';
import fc from 'fast-check';
import {
  BufferSink, convert, FileSink, mapOrdered, writeRaw, writeStreamOptimizedVmdk, writeVhd,
  type Sink, type WriterChunk,
} from '../../../lambda/disk/convert';
import type { DiskImage, Extent } from '../../../lambda/disk/image';
import { BufferSource } from '../../../lambda/disk/source';
import { openVhd } from '../../../lambda/disk/vhd';
import { openVmdk } from '../../../lambda/disk/vmdk';
import { pseudoRandom, run, tempDir } from '../../helpers/fixtures';

const KiB = 1024;
const MiB = 1024 * KiB;
const TiB = 1024 * 1024 * MiB;

/** A sink in memory that can also patch earlier bytes, like a local file. */
class SeekableMemorySink implements Sink {
  private buf = Buffer.alloc(0);
  public get position(): number {
    return this.buf.length;
  }
  public async write(chunk: Buffer): Promise<void> {
    this.buf = Buffer.concat([this.buf, chunk]);
  }
  public async writeAt(offset: number, data: Buffer): Promise<void> {
    data.copy(this.buf, offset);
  }
  public async close(): Promise<void> {}
  public async abort(): Promise<void> {}
  public contents(): Buffer {
    return this.buf;
  }
}

/** A disk layout: virtual size and the runs of data in it (ordered, not overlapping). */
interface Layout {
  readonly size: number;
  readonly runs: ReadonlyArray<{ offset: number; length: number; seed: number; zero: boolean }>;
}

/** Random layouts of up to 6 MiB, in sectors, with runs of data, some of them all zeros. */
const layouts: fc.Arbitrary<Layout> = fc
  .record({
    sectors: fc.integer({ min: 1, max: 12 * 1024 }),
    cuts: fc.array(fc.tuple(fc.integer({ min: 0, max: 12 * 1024 }), fc.integer({ min: 1, max: 600 }), fc.nat(), fc.boolean()), { maxLength: 8 }),
    byteTail: fc.integer({ min: 0, max: 511 }),
  })
  .map(({ sectors, cuts, byteTail }) => {
    const size = sectors * 512 - (byteTail && sectors > 1 ? byteTail : 0);
    const runs: Array<{ offset: number; length: number; seed: number; zero: boolean }> = [];
    let end = 0;
    for (const [at, len, seed, zero] of [...cuts].sort((a, b) => a[0] - b[0])) {
      // Runs start anywhere (not only on sectors) to exercise the regrouping into grains.
      const offset = Math.max(end, at * 512 + (seed % 7) * 3);
      const length = Math.min(len * 512 - (seed % 5), size - offset);
      if (length <= 0) continue;
      runs.push({ offset, length, seed, zero: zero && seed % 3 === 0 });
      end = offset + length;
    }
    return { size, runs };
  });

function expected(layout: Layout): Buffer {
  const buf = Buffer.alloc(layout.size);
  for (const r of layout.runs) if (!r.zero) pseudoRandom(r.length, r.seed + 1).copy(buf, r.offset);
  return buf;
}

function inputOf(layout: Layout) {
  const data = expected(layout);
  return {
    virtualSize: layout.size,
    chunks: (async function* (): AsyncIterable<WriterChunk> {
      for (const r of layout.runs) yield { offset: r.offset, data: data.subarray(r.offset, r.offset + r.length) };
    })(),
    extents: async function* (): AsyncIterable<Extent> {
      for (const r of layout.runs) yield { offset: r.offset, length: r.length };
    },
  };
}

async function readAll(img: DiskImage): Promise<Buffer> {
  return img.read(0, img.virtualSize);
}

describe('writers on random layouts read back identical through our readers', () => {
  test('stream-optimized VMDK', async () => {
    await fc.assert(
      fc.asyncProperty(layouts, async (layout) => {
        // GIVEN
        const sink = new BufferSink();
        // WHEN
        const result = await writeStreamOptimizedVmdk(inputOf(layout), sink, { concurrency: 3 });
        await sink.close();
        const img = await openVmdk(new BufferSource('out.vmdk', sink.contents()));
        // THEN
        const want = expected(layout);
        const sectors = Math.ceil(layout.size / 512) * 512;
        expect(img.virtualSize).toBe(sectors);
        const got = await readAll(img);
        expect(got.subarray(0, layout.size).equals(want)).toBe(true);
        expect(got.subarray(layout.size).every((b) => b === 0)).toBe(true);
        let grains = 0;
        for (let off = 0; off < want.length; off += 64 * KiB) if (want.subarray(off, off + 64 * KiB).some((b) => b !== 0)) grains++;
        expect(result.grainsWritten).toBe(grains);
        expect(result.bytesWritten).toBe(sink.contents().length);
      }),
      { numRuns: 40 },
    );
  });

  for (const [label, makeSink] of [
    ['a seekable sink', () => new SeekableMemorySink()],
    ['a sink that cannot seek', () => new BufferSink()],
  ] as Array<[string, () => Sink & { contents(): Buffer }]>) {
    test(`dynamic and fixed VHD on ${label}`, async () => {
      await fc.assert(
        fc.asyncProperty(layouts, fc.constantFrom('dynamic' as const, 'fixed' as const), async (layout, type) => {
          // GIVEN
          const sink = makeSink();
          // WHEN
          await writeVhd(inputOf(layout), sink, { type });
          await sink.close();
          const img = await openVhd(new BufferSource('out.vhd', sink.contents()));
          // THEN
          expect(img.subformat).toBe(type);
          expect(img.virtualSize).toBe(Math.ceil(layout.size / MiB) * MiB);
          expect(img.findings).toEqual([]);
          const got = await readAll(img);
          expect(got.subarray(0, layout.size).equals(expected(layout))).toBe(true);
          expect(got.subarray(layout.size).every((b) => b === 0)).toBe(true);
        }),
        { numRuns: 40 },
      );
    });
  }

  test('raw', async () => {
    await fc.assert(
      fc.asyncProperty(layouts, async (layout) => {
        // GIVEN
        const sink = new BufferSink();
        // WHEN
        await writeRaw(inputOf(layout), sink);
        await sink.close();
        // THEN
        expect(sink.contents().equals(expected(layout))).toBe(true);
      }),
      { numRuns: 40 },
    );
  });
});

describe('ordered parallel map', () => {
  test('results come in input order with never more than the limit in flight, and failures surface in turn', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.integer({ min: 0, max: 5 }), { minLength: 0, maxLength: 40 }),
        fc.integer({ min: 1, max: 6 }),
        fc.option(fc.nat(), { nil: undefined }),
        async (delays, limit, failAt) => {
          // GIVEN
          let inFlight = 0;
          let peak = 0;
          const fail = failAt === undefined || delays.length === 0 ? -1 : failAt % delays.length;
          const items = (async function* () {
            for (let i = 0; i < delays.length; i++) yield i;
          })();
          const job = async (i: number) => {
            inFlight++;
            peak = Math.max(peak, inFlight);
            await new Promise((r) => setTimeout(r, delays[i]));
            inFlight--;
            if (i === fail) throw new Error(`job ${i} failed`);
            return i * 10;
          };
          // WHEN
          const seen: number[] = [];
          let error: unknown;
          try {
            for await (const { item, result } of mapOrdered(items, job, limit)) {
              expect(result).toBe(item * 10);
              seen.push(item);
            }
          } catch (e) {
            error = e;
          }
          // THEN
          const upTo = fail >= 0 ? fail : delays.length;
          expect(seen).toEqual([...Array(upTo).keys()]);
          expect(peak).toBeLessThanOrEqual(limit);
          expect(inFlight).toBe(0); // nothing left running
          if (fail >= 0) expect(String(error)).toContain(`job ${fail} failed`);
          else expect(error).toBeUndefined();
        },
      ),
      { numRuns: 60 },
    );
  });
});

describe('cost does not grow with the disk', () => {
  /** A sparse disk of `size` bytes with 64 KiB of data at each of `at`, counting what is read. */
  function sparseImage(size: number, at: number[]) {
    const data = new Map(at.map((o, i) => [o, pseudoRandom(64 * KiB, i + 1)]));
    const stats = { reads: 0, bytes: 0 };
    const img: DiskImage = {
      format: 'raw',
      subformat: 'raw',
      virtualSize: size,
      findings: [],
      details: {},
      async read(offset: number, length: number) {
        stats.reads++;
        stats.bytes += length;
        const out = Buffer.alloc(Math.max(0, Math.min(length, size - offset)));
        for (const [o, d] of data) {
          const s = Math.max(o, offset);
          const e = Math.min(o + d.length, offset + out.length);
          if (s < e) d.copy(out, s - offset, s - o, e - o);
        }
        return out;
      },
      async *extents() {
        for (const o of at) yield { offset: o, length: 64 * KiB };
      },
    };
    return { img, stats, data };
  }

  test('a 1 TiB sparse disk converts to VMDK and VHD reading only its extents, into small files qemu-img accepts', async () => {
    const { dir, cleanup } = tempDir('vmie-convert-big-');
    try {
      for (const target of ['vmdk', 'vhd'] as const) {
        // GIVEN
        const at = [0, 3 * MiB + 64 * KiB, 700 * 1024 * MiB, TiB - 64 * KiB];
        const { img, stats, data } = sparseImage(TiB, at);
        const out = path.join(dir, `big.${target}`);
        // WHEN
        const result = await convert(img, target, await FileSink.create(out));
        // THEN
        expect(stats.bytes).toBe(at.length * 64 * KiB);
        expect(result.grainsWritten).toBe(target === 'vmdk' ? at.length : 4);
        const size = fs.statSync(out).size;
        // VMDK: 4 grains, their tables and a 128 KiB directory; VHD: a 2 MiB table and 4 blocks.
        expect(size).toBeLessThan(target === 'vmdk' ? MiB : 12 * MiB);
        const info = JSON.parse(run('qemu-img', ['info', '--output=json', '-f', target === 'vmdk' ? 'vmdk' : 'vpc', out]));
        if (target === 'vmdk') {
          expect(info['virtual-size']).toBe(TiB);
          expect(run('qemu-img', ['check', '-f', 'vmdk', out])).toContain('No errors');
        }
        const back = target === 'vmdk' ? await openVmdk(new BufferSource(out, fs.readFileSync(out))) : await openVhd(new BufferSource(out, fs.readFileSync(out)));
        expect(back.virtualSize).toBe(TiB);
        for (const [o, d] of data) expect((await back.read(o, d.length)).equals(d)).toBe(true);
        expect((await back.read(TiB / 2, 64 * KiB)).every((b) => b === 0)).toBe(true);
      }
    } finally {
      cleanup();
    }
  });

  test('the VMDK writer holds a bounded number of grains whatever the input length', async () => {
    // GIVEN: 64 MiB of incompressible data, produced lazily
    const size = 64 * MiB;
    let produced = 0;
    let consumed = 0;
    let maxAhead = 0;
    const chunks = (async function* () {
      for (let off = 0; off < size; off += MiB) {
        produced += MiB;
        yield { offset: off, data: pseudoRandom(MiB, off / MiB) };
      }
    })();
    const sink: Sink = {
      position: 0,
      async write(chunk: Buffer) {
        (this as { position: number }).position += chunk.length;
        consumed = Math.max(consumed, Math.floor((this.position - 64 * KiB) / (64 * KiB + 512)) * 64 * KiB);
        maxAhead = Math.max(maxAhead, produced - consumed);
      },
      async close() {},
      async abort() {},
    };
    // WHEN
    await writeStreamOptimizedVmdk({ virtualSize: size, chunks }, sink, { concurrency: 4, level: 1 });
    // THEN: what was read ahead of what was written is a few chunks, not the disk
    expect(maxAhead).toBeLessThanOrEqual(4 * MiB);
  });
});
