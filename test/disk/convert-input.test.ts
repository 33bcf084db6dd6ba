import * as fs from 'node:fs';
import * as path from 'node:path';
import fc from 'fast-check';
import { BufferSink, convert, FileSink } from '../../lambda/disk/convert';
import {
  fixedVhdFooterSize, openForConversion, STREAM_WINDOW, xzUncompressedSize, zstdContentSize,
} from '../../lambda/disk/convert-source';
import { ImageFormatError, ImageReadError, UnsupportedImageError } from '../../lambda/disk/errors';
import { BufferSource, FileSource } from '../../lambda/disk/source';
import {
  compressedCopy, concatenated, EXT, KINDS, MiB, KiB, qemuCompare, runPipeline, sampleDisk, sliceOf, tinyDisk, type Kind,
} from '../helpers/convert-inputs';
import { cached, pseudoRandom, qemuConvert, run, tempDir } from '../helpers/fixtures';

/** What detection reads besides the stream: the first 16 bytes, 64 KiB at the start and 512 at the end, an xz stream's last 64 KiB, a zstd frame header. */
const OPEN_OVERHEAD = 16 + 64 * KiB + 512 + 64 * KiB + 18;

/** How many times the compressed input may be read: once when the format says the size, else twice. */
const PASSES: Record<Kind, number> = { gzip: 2, xz: 1, zstd: 1, bzip2: 2 };

function isTyped(e: unknown): boolean {
  return e instanceof ImageReadError || e instanceof ImageFormatError || e instanceof UnsupportedImageError;
}

async function withInput<T>(file: string, fn: (src: FileSource) => Promise<T>): Promise<T> {
  const src = await FileSource.open(file);
  try {
    return await fn(src);
  } finally {
    await src.close();
  }
}

describe('openForConversion: compressed inputs convert to what qemu-img calls identical', () => {
  let tmp: ReturnType<typeof tempDir>;
  let spool: string;
  beforeAll(() => {
    tmp = tempDir('vmie-convert-input-');
    spool = path.join(tmp.dir, 'spool');
    fs.mkdirSync(spool);
  });
  afterAll(() => tmp.cleanup());

  const CASES: Array<[Kind, 'raw' | 'qcow2', 'vmdk' | 'raw']> = [];
  for (const kind of KINDS) {
    for (const inner of ['raw', 'qcow2'] as const) {
      for (const target of ['vmdk', 'raw'] as const) CASES.push([kind, inner, target]);
    }
  }

  test.each(CASES)('%s of a %s disk to %s', async (kind, inner, target) => {
    // GIVEN
    const original = sampleDisk();
    const file = compressedCopy(inner === 'raw' ? original : qemuConvert(original, 'qcow2'), kind);
    const outDir = fs.mkdtempSync(path.join(tmp.dir, 'out-'));
    // WHEN
    const outcome = await runPipeline(file, target, 'file', outDir, { tempDir: spool });
    // THEN
    expect(outcome.error).toBeUndefined();
    expect(outcome.input).toMatchObject({ compression: kind, mode: inner === 'raw' ? 'stream' : 'spool', restarts: 0 });
    expect(outcome.input!.image).toMatchObject({ format: inner, virtualSize: fs.statSync(original).size });
    const compare = qemuCompare(original, path.join(outDir, `out.${target}`), target);
    expect(compare.out).toMatch(/Images are identical/);
    expect(compare.status).toBe(0);
    // Each compressed byte read once (spooled, or the size in the format) or twice (a counting pass).
    const size = fs.statSync(file).size;
    const passes = inner === 'raw' ? PASSES[kind] : 1;
    expect(outcome.bytesRead).toBeGreaterThanOrEqual(passes * size);
    expect(outcome.bytesRead).toBeLessThanOrEqual(passes * size + OPEN_OVERHEAD);
    // The spool is gone once the input is closed.
    expect(fs.readdirSync(spool)).toEqual([]);
  });

  test('a plain image is read directly, without decompression', async () => {
    // GIVEN
    const original = sampleDisk();
    const file = qemuConvert(original, 'qcow2');
    // WHEN
    const outcome = await runPipeline(file, 'raw', 'buffer', tmp.dir);
    // THEN
    expect(outcome.error).toBeUndefined();
    expect(outcome.input).toMatchObject({ mode: 'direct', restarts: 0 });
    expect(outcome.input!.compression).toBeUndefined();
    expect((outcome.sink as BufferSink).contents().equals(fs.readFileSync(original))).toBe(true);
  });

  test('xz of several streams and of many blocks: the size comes from the indexes, read once', async () => {
    // GIVEN: the disk cut in two, each half compressed alone and the two files put one after the
    // other, with 8 bytes of stream padding between them; and the disk compressed in 1 MiB blocks
    const original = sampleDisk();
    const half = 11 * MiB + 4096;
    const size = fs.statSync(original).size;
    const a = compressedCopy(sliceOf(original, 0, half), 'xz');
    const b = compressedCopy(sliceOf(original, half, size), 'xz');
    const padding = cached('convert-input-xz-padding-8.bin', (f) => fs.writeFileSync(f, Buffer.alloc(8)));
    const streams = concatenated([a, padding, b], 'xz');
    const blocks = compressedCopy(original, 'xz', 'blocks');
    for (const [file, count] of [[streams, 2], [blocks, 1]] as const) {
      // WHEN
      const indexed = await withInput(file, xzUncompressedSize);
      const outcome = await runPipeline(file, 'raw', 'buffer', tmp.dir);
      // THEN
      expect(indexed).toBe(size);
      expect(outcome.error).toBeUndefined();
      expect(outcome.input!.image.details).toMatchObject({ sizeFrom: 'xz index' });
      expect((outcome.sink as BufferSink).contents().equals(fs.readFileSync(original))).toBe(true);
      // Once, plus the end of each stream (its footer and index).
      expect(outcome.bytesRead).toBeLessThanOrEqual(fs.statSync(file).size + OPEN_OVERHEAD + (count - 1) * 64 * KiB);
    }
    expect(run('xz', ['--robot', '--list', '-vv', blocks]).split('\n').filter((l) => l.startsWith('block')).length).toBeGreaterThan(10);
  });

  test('zstd from a pipe has no content size: a counting pass finds it, and the input is read twice', async () => {
    // GIVEN
    const original = sampleDisk();
    const file = compressedCopy(original, 'zstd', 'piped');
    const header = Buffer.alloc(18);
    const fd = fs.openSync(file, 'r');
    fs.readSync(fd, header, 0, 18, 0);
    fs.closeSync(fd);
    // WHEN
    const outcome = await runPipeline(file, 'raw', 'buffer', tmp.dir);
    // THEN
    expect(zstdContentSize(header)).toBeUndefined();
    expect(zstdContentSize(fs.readFileSync(compressedCopy(original, 'zstd')).subarray(0, 18))).toBe(fs.statSync(original).size);
    expect(outcome.error).toBeUndefined();
    expect(outcome.input!.image.details).toMatchObject({ sizeFrom: 'counting pass' });
    expect((outcome.sink as BufferSink).contents().equals(fs.readFileSync(original))).toBe(true);
    expect(outcome.bytesRead).toBeGreaterThanOrEqual(2 * fs.statSync(file).size);
  });

  test.each(['gzip', 'xz'] as const)('a %s-compressed fixed VHD converts to its disk, without the footer', async (kind) => {
    // GIVEN: qemu-img's fixed VHD (raw data, then a 512-byte footer), named .vhd inside the compression
    const original = sampleDisk();
    const vhd = qemuConvert(original, 'vpc', ['subformat=fixed', 'force_size=on'], 'vhd');
    const file = compressedCopy(vhd, kind);
    const outDir = fs.mkdtempSync(path.join(tmp.dir, 'vhd-'));
    // WHEN
    const outcome = await runPipeline(file, 'vmdk', 'file', outDir);
    // THEN
    expect(outcome.error).toBeUndefined();
    expect(outcome.input!.image).toMatchObject({ format: 'vhd', subformat: 'fixed', virtualSize: fs.statSync(original).size });
    expect(outcome.input!.image.details).toMatchObject({ decompressedBytes: fs.statSync(original).size + 512 });
    expect(qemuCompare(original, path.join(outDir, 'out.vmdk'), 'vmdk').status).toBe(0);
  });

  test('reads behind the window restart the decompression, counted, and give the right bytes', async () => {
    // GIVEN
    const original = fs.readFileSync(sampleDisk());
    const file = compressedCopy(sampleDisk(), 'zstd');
    await withInput(file, async (src) => {
      const input = await openForConversion(src);
      try {
        // WHEN: forward reads (one skipping ahead past the window), then back to the start
        const a = await input.image.read(MiB, 4096);
        const b = await input.image.read(MiB + STREAM_WINDOW + 3 * MiB, 8192);
        const restartsBefore = input.restarts;
        const c = await input.image.read(0, 1024);
        const d = await input.image.read(512, 512); // inside the window again: no restart
        // THEN
        expect(a.equals(original.subarray(MiB, MiB + 4096))).toBe(true);
        expect(b.equals(original.subarray(MiB + STREAM_WINDOW + 3 * MiB, MiB + STREAM_WINDOW + 3 * MiB + 8192))).toBe(true);
        expect(c.equals(original.subarray(0, 1024))).toBe(true);
        expect(d.equals(original.subarray(512, 1024))).toBe(true);
        expect(restartsBefore).toBe(0);
        expect(input.restarts).toBe(1);
      } finally {
        await input.close();
      }
    });
  });

  test('concurrent reads are served in the order they were asked for', async () => {
    // GIVEN
    const original = fs.readFileSync(sampleDisk());
    const file = compressedCopy(sampleDisk(), 'gzip');
    await withInput(file, async (src) => {
      const input = await openForConversion(src);
      try {
        // WHEN: eight 1 MiB reads in flight at once, as a converter with a deep queue would make
        const got = await Promise.all([...Array(8).keys()].map((i) => input.image.read(i * MiB, MiB)));
        // THEN
        got.forEach((buf, i) => expect(buf.equals(original.subarray(i * MiB, (i + 1) * MiB))).toBe(true));
        expect(input.restarts).toBe(0);
      } finally {
        await input.close();
      }
    });
  });

  test('a spooled container lives in its own directory under tempDir until close()', async () => {
    // GIVEN
    const file = compressedCopy(qemuConvert(sampleDisk(), 'qcow2'), 'xz');
    const dir = fs.mkdtempSync(path.join(tmp.dir, 'spool-life-'));
    await withInput(file, async (src) => {
      // WHEN
      const input = await openForConversion(src, { tempDir: dir });
      const during = fs.readdirSync(dir);
      const inside = fs.readdirSync(path.join(dir, during[0]));
      await input.close();
      await input.close(); // idempotent
      // THEN
      expect(during).toHaveLength(1);
      expect(during[0]).toMatch(/^vmie-spool-/);
      expect(inside).toEqual([path.basename(qemuConvert(sampleDisk(), 'qcow2'))]);
      expect(fs.readdirSync(dir)).toEqual([]);
    });
  });

  test('a container larger than the spool limit is refused, naming the limit and the remedy, and nothing is left', async () => {
    // GIVEN
    const file = compressedCopy(qemuConvert(sampleDisk(), 'qcow2'), 'gzip');
    const dir = fs.mkdtempSync(path.join(tmp.dir, 'spool-limit-'));
    // WHEN
    const err = await withInput(file, (src) => openForConversion(src, { tempDir: dir, spoolLimit: MiB }).then(
      () => undefined,
      (e: unknown) => e,
    ));
    // THEN
    expect(err).toBeInstanceOf(UnsupportedImageError);
    expect(err).toMatchObject({ code: 'COMPRESSED_TOO_LARGE', info: { format: 'qcow2' } });
    expect((err as Error).message).toMatch(/1 MiB/);
    expect((err as Error).message).toMatch(/Decompress it before uploading/);
    expect(fs.readdirSync(dir)).toEqual([]);
  });

  test('a 256 MiB disk streams through bounded memory, in the counting pass and in the conversion', async () => {
    // GIVEN: a mostly empty disk with data at its start, middle and end, gzip-compressed (whose
    // size only a counting pass tells)
    const size = 256 * MiB;
    const raw = cached(`convert-input-sparse-${size}.raw`, (f) => {
      fs.writeFileSync(f, '');
      fs.truncateSync(f, size);
      const fd = fs.openSync(f, 'r+');
      for (const at of [0, size / 2 + 12345, size - 3 * MiB]) fs.writeSync(fd, pseudoRandom(2 * MiB, at % 97), 0, undefined, at);
      fs.closeSync(fd);
    });
    const file = compressedCopy(raw, 'gzip');
    const outDir = fs.mkdtempSync(path.join(tmp.dir, 'big-'));
    const base = process.memoryUsage().arrayBuffers;
    let peak = base;
    let samples = 0;
    const sample = (): void => {
      samples++;
      peak = Math.max(peak, process.memoryUsage().arrayBuffers);
    };
    // WHEN
    await withInput(file, async (src) => {
      const input = await openForConversion(src);
      sample();
      try {
        await convert(input.image, 'vmdk', await FileSink.create(path.join(outDir, 'out.vmdk')), { onProgress: sample });
      } finally {
        await input.close();
      }
    });
    // THEN: far less than the disk in memory at any time (the peak includes garbage not yet collected)
    expect(samples).toBeGreaterThan(size / MiB);
    expect(peak - base).toBeLessThan(128 * MiB);
    expect(qemuCompare(raw, path.join(outDir, 'out.vmdk'), 'vmdk').status).toBe(0);
  });
});

describe('properties of the parsers of compressed inputs', () => {
  const FC = { numRuns: 150, seed: 4242 };

  test('zstdContentSize: any bytes give undefined or a safe size, never an exception', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 0, maxLength: 24 }), fc.boolean(), (bytes, magic) => {
        // GIVEN
        const head = Buffer.from(bytes);
        if (magic && head.length >= 4) head.writeUInt32LE(0xfd2fb528, 0);
        // WHEN
        const size = zstdContentSize(head);
        // THEN
        expect(size === undefined || (Number.isSafeInteger(size) && size >= 0)).toBe(true);
      }),
      FC,
    );
  });

  test('fixedVhdFooterSize: random and mutated footers give undefined or a size that fits the stream', () => {
    // GIVEN: the footer qemu-img wrote
    const vhd = fs.readFileSync(qemuConvert(sampleDisk(), 'vpc', ['subformat=fixed', 'force_size=on'], 'vhd'));
    const footer = vhd.subarray(vhd.length - 512);
    expect(fixedVhdFooterSize(footer, vhd.length)).toBe(vhd.length - 512);
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.nat(511), fc.integer({ min: 0, max: 255 })), { maxLength: 8 }),
        fc.integer({ min: 0, max: 2 * vhd.length }),
        (edits, length) => {
          const tail = Buffer.from(footer);
          for (const [at, v] of edits) tail[at] = v;
          // WHEN
          const size = fixedVhdFooterSize(tail, length);
          // THEN
          expect(size === undefined || (Number.isSafeInteger(size) && size >= 0 && size <= length - 512)).toBe(true);
        },
      ),
      FC,
    );
  });

  test('xzUncompressedSize: mutated xz tails give undefined or a size, read within the file, never an exception', async () => {
    // GIVEN: two concatenated xz streams of a small disk, and mutations of their last bytes
    const disk = tinyDisk();
    const one = fs.readFileSync(compressedCopy(disk, 'xz'));
    const file = Buffer.concat([one, Buffer.alloc(4), one]);
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(fc.nat(199), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 6 }),
        fc.boolean(),
        async (edits, firstStream) => {
          const data = Buffer.from(file);
          const end = firstStream ? one.length : data.length;
          for (const [back, v] of edits) data[Math.max(0, end - 1 - back)] = v;
          const src = new BufferSource('fuzz.raw.xz', data);
          // WHEN
          const size = await xzUncompressedSize(src);
          // THEN
          expect(size === undefined || Number.isSafeInteger(size)).toBe(true);
          expect(src.stats.bytesRead).toBeLessThanOrEqual(2 * data.length);
        },
      ),
      FC,
    );
    // And the untouched file gives the size of both disks.
    expect(await xzUncompressedSize(new BufferSource('two.xz', file))).toBe(2 * fs.statSync(disk).size);
  });

  test('xzUncompressedSize: random bytes give undefined, read within a bound', async () => {
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ minLength: 0, maxLength: 4096 }), fc.boolean(), async (bytes, footer) => {
        // GIVEN: random bytes, some ending in the xz footer magic
        const data = Buffer.from(bytes);
        if (footer && data.length >= 2) data.write('YZ', data.length - 2, 'latin1');
        const src = new BufferSource('random.xz', data);
        // WHEN
        const size = await xzUncompressedSize(src);
        // THEN
        expect(size === undefined || Number.isSafeInteger(size)).toBe(true);
        expect(src.stats.bytesRead).toBeLessThanOrEqual(2 * data.length);
      }),
      FC,
    );
  });

  test.each(KINDS)('%s: mutated compressed raw and qcow2 disks convert or fail with a typed error, within bounded reads', async (kind) => {
    // GIVEN: small disks compressed by the real tool; mutations anywhere in them
    const tmp = tempDir('vmie-convert-fuzz-');
    try {
      const inputs = [compressedCopy(tinyDisk(), kind), compressedCopy(qemuConvert(tinyDisk(), 'qcow2'), kind)].map((f) => fs.readFileSync(f));
      const outcomes = new Set<string>();
      await fc.assert(
        fc.asyncProperty(
          fc.nat(1),
          fc.array(fc.tuple(fc.nat(1 << 20), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 }),
          fc.option(fc.integer({ min: 1, max: 999 }), { nil: undefined }),
          async (which, edits, cutPerMille) => {
            const data = Buffer.from(inputs[which]);
            for (const [where, v] of edits) data[where % data.length] = v;
            const bytes = cutPerMille === undefined ? data : data.subarray(0, Math.max(1, Math.floor((cutPerMille / 1000) * data.length)));
            const src = new BufferSource(`fuzz.${which ? 'qcow2' : 'raw'}.${EXT[kind]}`, bytes);
            // WHEN
            let error: unknown;
            try {
              const input = await openForConversion(src, { tempDir: tmp.dir, spoolLimit: 64 * MiB });
              try {
                await convert(input.image, 'raw', new BufferSink());
              } finally {
                await input.close();
              }
            } catch (e) {
              error = e;
            }
            // THEN
            outcomes.add(error === undefined ? 'converted' : (error as Error).name);
            if (error !== undefined && !isTyped(error)) throw error;
            expect(src.stats.bytesRead).toBeLessThanOrEqual(2 * bytes.length + OPEN_OVERHEAD);
            expect(fs.readdirSync(tmp.dir)).toEqual([]);
          },
        ),
        { numRuns: 40, seed: 7, timeout: 20_000 },
      );
      // The mutations reached the decoders: some inputs were refused.
      expect([...outcomes].some((o) => o !== 'converted')).toBe(true);
    } finally {
      tmp.cleanup();
    }
  });
});
