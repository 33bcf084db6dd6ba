import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { decompress, decompressedPrefix, detectCompression, type Compression } from '../../lambda/disk/compressed';
import { ImageFormatError, ImageReadError } from '../../lambda/disk/errors';
import { BufferSource, FileSource, type ByteSource } from '../../lambda/disk/source';
import { cached, pseudoRandom, run, sampleMbrDisk, tool } from '../helpers/fixtures';

const MiB = 1024 * 1024;
const KINDS: readonly Compression[] = ['gzip', 'xz', 'zstd', 'bzip2'];
const EXT: Record<Compression, string> = { gzip: 'gz', xz: 'xz', zstd: 'zst', bzip2: 'bz2' };

/** The disk the compressed fixtures hold: a 16 MiB MBR disk, half ext4, half random data. */
function sampleDisk(): string {
  return sampleMbrDisk(16);
}

/** `file` compressed by the real tool (`gzip -k`, `xz -k`, `zstd -k`, `bzip2 -k`), cached. */
function compressedWith(kind: Compression, file: string, tag = ''): string {
  return cached(`${file.split('/').pop()}${tag}.${EXT[kind]}`, (out) => {
    const tmp = `${out}.in`;
    fs.copyFileSync(file, tmp);
    try {
      if (kind === 'zstd') run('zstd', ['-q', '-k', tmp, '-o', `${tmp}.zst`]);
      else run(kind, ['-k', tmp]);
      fs.renameSync(`${tmp}.${EXT[kind]}`, out);
    } finally {
      fs.rmSync(tmp, { force: true });
    }
  });
}

/** A file of `size` zero bytes compressed by the real tool: the best-compressing input there is. */
function zerosCompressed(kind: Compression, size: number): string {
  return cached(`zeros-${size}.${EXT[kind]}`, (out) => {
    const args = kind === 'zstd' ? ['-q', '-c'] : kind === 'xz' ? ['-0', '-c'] : ['-c'];
    const result = spawnSync('sh', ['-c', `head -c ${size} /dev/zero | "${tool(kind)}" ${args.join(' ')} > "${out}"`]);
    if (result.status !== 0) throw new Error(`${kind} failed: ${result.stderr}`);
  });
}

async function sha256Of(stream: AsyncIterable<Buffer>): Promise<{ digest: string; length: number; largest: number; peakExternal: number }> {
  const hash = createHash('sha256');
  let length = 0;
  let largest = 0;
  const base = process.memoryUsage().arrayBuffers;
  let peakExternal = 0;
  for await (const chunk of stream) {
    hash.update(chunk);
    length += chunk.length;
    largest = Math.max(largest, chunk.length);
    peakExternal = Math.max(peakExternal, process.memoryUsage().arrayBuffers - base);
  }
  return { digest: hash.digest('hex'), length, largest, peakExternal };
}

function fileSha256(file: string): string {
  return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

async function withFile<T>(file: string, fn: (src: ByteSource) => Promise<T>): Promise<T> {
  const src = await FileSource.open(file);
  try {
    return await fn(src);
  } finally {
    await src.close();
  }
}

describe('detectCompression', () => {
  test.each(KINDS)('recognises %s by its magic bytes', async (kind) => {
    // GIVEN
    const file = compressedWith(kind, sampleDisk());
    const head = Buffer.alloc(64);
    const fd = fs.openSync(file, 'r');
    fs.readSync(fd, head, 0, 64, 0);
    fs.closeSync(fd);
    // WHEN
    const detected = detectCompression(head);
    // THEN
    expect(detected).toBe(kind);
  });

  test('does not take a raw disk, random bytes or a short head for a compressed stream', () => {
    // GIVEN
    const raw = fs.readFileSync(sampleDisk()).subarray(0, 4096);
    // WHEN / THEN
    expect(detectCompression(raw)).toBeUndefined();
    expect(detectCompression(pseudoRandom(4096, 5))).toBeUndefined();
    expect(detectCompression(Buffer.from([0x1f]))).toBeUndefined();
    expect(detectCompression(Buffer.from('BZh0'))).toBeUndefined();
  });
});

describe('decompress', () => {
  test.each(KINDS)('%s: the decompressed bytes equal the original disk, read once front to back', async (kind) => {
    // GIVEN
    const disk = sampleDisk();
    const file = compressedWith(kind, disk);
    const src = await FileSource.open(file);
    const reads: Array<[number, number]> = [];
    const spy: ByteSource = {
      name: src.name,
      size: src.size,
      stats: src.stats,
      read: (offset, length) => {
        reads.push([offset, length]);
        return src.read(offset, length);
      },
      close: () => src.close(),
    };
    // WHEN
    const got = await sha256Of(decompress(spy, kind, { chunkSize: 2 * MiB }));
    await src.close();
    // THEN
    expect(got.length).toBe(fs.statSync(disk).size);
    expect(got.digest).toBe(fileSha256(disk));
    let next = 0;
    for (const [offset, length] of reads) {
      expect(offset).toBe(next);
      expect(length).toBeLessThanOrEqual(2 * MiB);
      next = offset + length;
    }
    expect(next).toBe(src.size);
    expect(src.stats.bytesRead).toBe(src.size);
  });

  test.each(KINDS)('%s: 256 MiB of zeros pass through bounded memory', async (kind) => {
    // GIVEN: the best compression ratio the format offers (a few hundred bytes to KiB)
    const size = 256 * MiB;
    const file = zerosCompressed(kind, size);
    // WHEN
    const got = await withFile(file, (src) => sha256Of(decompress(src, kind)));
    // THEN: never the whole output in memory at once (the peak includes garbage not yet collected)
    expect(got.length).toBe(size);
    expect(got.largest).toBeLessThanOrEqual(48 * MiB);
    expect(got.peakExternal).toBeLessThan(192 * MiB);
    expect(got.digest).toBe(createHash('sha256').update(Buffer.alloc(size)).digest('hex'));
  });

  test.each(KINDS)('%s: concatenated streams decompress to all of them', async (kind) => {
    // GIVEN: two files compressed by the real tool and joined, with what may lie between streams:
    // stream padding for xz, a skippable frame for zstd
    const a = cached('concat-a.bin', (f) => fs.writeFileSync(f, pseudoRandom(300_000, 21)));
    const b = cached('concat-b.bin', (f) => fs.writeFileSync(f, Buffer.concat([Buffer.alloc(200_000), pseudoRandom(1000, 22)])));
    const between: Record<Compression, Buffer> = {
      gzip: Buffer.alloc(0),
      xz: Buffer.alloc(4),
      zstd: Buffer.from([0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4]),
      bzip2: Buffer.alloc(0),
    };
    const joined = Buffer.concat([fs.readFileSync(compressedWith(kind, a)), between[kind], fs.readFileSync(compressedWith(kind, b))]);
    // WHEN
    const got = await sha256Of(decompress(new BufferSource(`joined.${EXT[kind]}`, joined), kind));
    // THEN
    expect(got.length).toBe(501_000);
    expect(got.digest).toBe(createHash('sha256').update(Buffer.concat([fs.readFileSync(a), fs.readFileSync(b)])).digest('hex'));
  });

  test.each(KINDS)('%s: bytes after the end of the stream are an error, not silently dropped', async (kind) => {
    // GIVEN
    const original = cached('prefix-small-200000.bin', (f) => fs.writeFileSync(f, Buffer.concat([pseudoRandom(100_000, 8), Buffer.alloc(100_000)])));
    const data = Buffer.concat([fs.readFileSync(compressedWith(kind, original)), Buffer.from('trailing garbage!')]);
    // WHEN
    const err = await sha256Of(decompress(new BufferSource(`x.${EXT[kind]}`, data), kind)).then(() => undefined, (e: unknown) => e);
    // THEN
    expect(err).toBeInstanceOf(ImageFormatError);
  });

  test.each(KINDS)('%s: a failing source read comes through as it is', async (kind) => {
    // GIVEN: a source whose second read fails
    const inner = await FileSource.open(compressedWith(kind, sampleDisk()));
    let reads = 0;
    const failing: ByteSource = {
      name: inner.name,
      size: inner.size,
      stats: inner.stats,
      read: async (offset, length) => {
        if (++reads === 2) throw new ImageReadError('connection reset');
        return inner.read(offset, length);
      },
      close: () => inner.close(),
    };
    // WHEN
    const err = await sha256Of(decompress(failing, kind)).then(() => undefined, (e: unknown) => e);
    await inner.close();
    // THEN
    expect(err).toBeInstanceOf(ImageReadError);
    expect((err as Error).message).toBe('connection reset');
  });

  test.each(KINDS)('%s: a corrupt stream gives ImageFormatError naming the format', async (kind) => {
    // GIVEN: the compressed disk with a run of bytes overwritten, in the random half of the disk
    const data = fs.readFileSync(compressedWith(kind, sampleDisk()));
    pseudoRandom(4096, 99).copy(data, Math.floor(data.length * 0.3));
    const src = new BufferSource(`disk.${EXT[kind]}`, data);
    // WHEN
    const err = await sha256Of(decompress(src, kind)).then(() => undefined, (e: unknown) => e);
    // THEN
    expect(err).toBeInstanceOf(ImageFormatError);
    expect((err as Error).message).toContain(kind);
  });

  test.each(KINDS)('%s: a stream cut short gives ImageReadError TRUNCATED', async (kind) => {
    // GIVEN
    const data = fs.readFileSync(compressedWith(kind, sampleDisk()));
    const src = new BufferSource(`disk.${EXT[kind]}`, data.subarray(0, Math.floor(data.length * 0.3)));
    // WHEN
    const err = await sha256Of(decompress(src, kind)).then(() => undefined, (e: unknown) => e);
    // THEN
    expect(err).toBeInstanceOf(ImageReadError);
    expect((err as ImageReadError).code).toBe('TRUNCATED');
  });

  test.each(KINDS)('%s: a stream that is not of the format at all gives a typed error', async (kind) => {
    // GIVEN
    const src = new BufferSource('noise.bin', pseudoRandom(300_000, 4));
    // WHEN
    const err = await sha256Of(decompress(src, kind)).then(() => undefined, (e: unknown) => e);
    // THEN
    expect(err instanceof ImageFormatError || err instanceof ImageReadError).toBe(true);
  });
});

describe('decompressedPrefix', () => {
  test.each(KINDS)('%s: stops reading once the prefix is out', async (kind) => {
    // GIVEN
    const disk = sampleDisk();
    const file = compressedWith(kind, disk);
    const expected = fs.readFileSync(disk).subarray(0, MiB);
    // WHEN
    const got = await withFile(file, async (src) => ({ ...(await decompressedPrefix(src, kind, MiB)), size: src.size }));
    // THEN
    expect(got.complete).toBe(false);
    expect(got.compressedBytesRead).toBeLessThan(got.size / 4);
    expect(got.source.size).toBe(MiB);
    expect((await got.source.read(0, MiB)).equals(expected)).toBe(true);
    expect(got.source.name).toBe(disk.split('/').pop());
  });

  test.each(KINDS)('%s: a stream that fits is complete', async (kind) => {
    // GIVEN: a small file, compressed by the real tool
    const original = cached('prefix-small-200000.bin', (f) => fs.writeFileSync(f, Buffer.concat([pseudoRandom(100_000, 8), Buffer.alloc(100_000)])));
    const file = compressedWith(kind, original);
    // WHEN
    const fits = await withFile(file, (src) => decompressedPrefix(src, kind, 200_000));
    const over = await withFile(file, (src) => decompressedPrefix(src, kind, 199_999));
    // THEN
    expect(fits.complete).toBe(true);
    expect((await fits.source.read(0, 200_000)).equals(fs.readFileSync(original))).toBe(true);
    expect(over.complete).toBe(false);
    expect(over.source.size).toBe(199_999);
  });

  test('xz: an abandoned prefix frees the decoder for the next stream', async () => {
    // GIVEN: the xz decoder runs one stream at a time
    const file = compressedWith('xz', sampleDisk());
    // WHEN: two prefixes in a row, then a full read
    const a = await withFile(file, (src) => decompressedPrefix(src, 'xz', 4096));
    const b = await withFile(file, (src) => decompressedPrefix(src, 'xz', 8192));
    const full = await withFile(file, (src) => sha256Of(decompress(src, 'xz')));
    // THEN
    expect(a.complete).toBe(false);
    expect((await b.source.read(0, 4096)).equals(await a.source.read(0, 4096))).toBe(true);
    expect(full.length).toBe(fs.statSync(sampleDisk()).size);
  });
});
