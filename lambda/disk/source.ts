/**
 * Byte sources: where an image's bytes come from. Every read is counted, so tests and benchmarks
 * can see how much a check reads and in how many requests.
 *
 * This module knows nothing of AWS: the S3 source lives in `lambda/aws/` and implements the same
 * interface.
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { ImageReadError } from './errors';

/** How much a source has read, and in how many requests. */
export interface ReadStats {
  /** Bytes read from the underlying store. */
  bytesRead: number;
  /** Requests made to the underlying store (one per ranged GET or per file read). */
  requests: number;
}

/** Random-access bytes of a file, an S3 object, or a slice of another source. */
export interface ByteSource {
  /** A short name for messages and extension checks (a file name or an S3 key). */
  readonly name: string;
  /** The total size in bytes. */
  readonly size: number;
  /** What this source has read so far (for a derived source, what its root has read). */
  readonly stats: ReadStats;
  /**
   * Reads `length` bytes at `offset`. The result is shorter only when the range runs past the end
   * of the source; a range that starts at or past the end gives an empty buffer.
   */
  read(offset: number, length: number): Promise<Buffer>;
  /** Releases what the source holds open. Idempotent. */
  close(): Promise<void>;
}

/** Checks arguments shared by every source's `read`. */
export function checkRange(offset: number, length: number): void {
  if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
    throw new RangeError(`invalid read range: offset ${offset}, length ${length}`);
  }
}

/** A local file. */
export class FileSource implements ByteSource {
  /** Opens `file` for reading. */
  public static async open(file: string): Promise<FileSource> {
    const handle = await fs.open(file, 'r');
    try {
      const st = await handle.stat();
      if (!st.isFile()) {
        throw new ImageReadError(`${file} is not a regular file`);
      }
      return new FileSource(path.basename(file), st.size, handle);
    } catch (e) {
      await handle.close();
      throw e;
    }
  }

  public readonly stats: ReadStats = { bytesRead: 0, requests: 0 };
  private closed = false;

  private constructor(
    public readonly name: string,
    public readonly size: number,
    private readonly handle: fs.FileHandle,
  ) {}

  public async read(offset: number, length: number): Promise<Buffer> {
    checkRange(offset, length);
    const n = Math.max(0, Math.min(length, this.size - offset));
    const buf = Buffer.alloc(n);
    if (n === 0) return buf;
    this.stats.requests++;
    let done = 0;
    while (done < n) {
      const { bytesRead } = await this.handle.read(buf, done, n - done, offset + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    this.stats.bytesRead += done;
    return done === n ? buf : buf.subarray(0, done);
  }

  public async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.handle.close();
  }
}

/** Bytes held in memory (tests, decompressed prefixes, hand-built headers). */
export class BufferSource implements ByteSource {
  public readonly stats: ReadStats = { bytesRead: 0, requests: 0 };
  public readonly size: number;

  public constructor(public readonly name: string, private readonly data: Uint8Array) {
    this.size = data.length;
  }

  public async read(offset: number, length: number): Promise<Buffer> {
    checkRange(offset, length);
    if (offset >= this.size) return Buffer.alloc(0);
    const end = Math.min(this.size, offset + length);
    this.stats.requests++;
    this.stats.bytesRead += end - offset;
    return Buffer.from(this.data.subarray(offset, end));
  }

  public async close(): Promise<void> {}
}

/** A window `[start, start + size)` of another source, such as a member of a tar archive. */
export class SliceSource implements ByteSource {
  public constructor(
    private readonly inner: ByteSource,
    private readonly start: number,
    public readonly size: number,
    public readonly name: string,
  ) {
    if (start < 0 || size < 0 || start + size > inner.size) {
      throw new ImageReadError(`slice ${start}+${size} lies outside ${inner.name} (${inner.size} bytes)`);
    }
  }

  public get stats(): ReadStats {
    return this.inner.stats;
  }

  public async read(offset: number, length: number): Promise<Buffer> {
    checkRange(offset, length);
    if (offset >= this.size) return Buffer.alloc(0);
    return this.inner.read(this.start + offset, Math.min(length, this.size - offset));
  }

  /** Slices do not own their parent: closing one leaves the parent open. */
  public async close(): Promise<void> {}
}

/** Options of a {@link CachedSource}. */
export interface CachedSourceOptions {
  /** Reads are widened to whole blocks of this size. @default 65536 */
  readonly blockSize?: number;
  /** At most this many blocks are kept (least recently used go first). @default 64 */
  readonly maxBlocks?: number;
}

/**
 * A read-through block cache over a slow source. Reads are widened to aligned blocks, the missing
 * blocks of one read are fetched in a single request, and recent blocks are kept, so that parsers
 * can ask for small fields one at a time without paying a request each. Memory is bounded by
 * `blockSize * maxBlocks`, plus the blocks of the read in progress.
 */
export class CachedSource implements ByteSource {
  public readonly name: string;
  public readonly size: number;
  private readonly blockSize: number;
  private readonly maxBlocks: number;
  private readonly blocks = new Map<number, Buffer>();

  public constructor(private readonly inner: ByteSource, options: CachedSourceOptions = {}) {
    this.name = inner.name;
    this.size = inner.size;
    this.blockSize = options.blockSize ?? 64 * 1024;
    this.maxBlocks = Math.max(1, options.maxBlocks ?? 64);
  }

  public get stats(): ReadStats {
    return this.inner.stats;
  }

  public async read(offset: number, length: number): Promise<Buffer> {
    checkRange(offset, length);
    const end = Math.min(this.size, offset + length);
    if (offset >= end) return Buffer.alloc(0);
    const bs = this.blockSize;
    const first = Math.floor(offset / bs);
    const last = Math.floor((end - 1) / bs);
    const got = new Map<number, Buffer>();
    // Fetch each run of consecutive missing blocks with one request.
    let runStart = -1;
    for (let b = first; b <= last + 1; b++) {
      const cached = b <= last ? this.blocks.get(b) : undefined;
      if (b <= last && cached) {
        got.set(b, cached);
        this.blocks.delete(b);
        this.blocks.set(b, cached); // most recently used
      }
      const missing = b <= last && !cached;
      if (missing && runStart < 0) runStart = b;
      if (!missing && runStart >= 0) {
        const from = runStart * bs;
        const data = await this.inner.read(from, Math.min(this.size, b * bs) - from);
        for (let k = runStart; k < b; k++) {
          const blk = data.subarray((k - runStart) * bs, (k - runStart + 1) * bs);
          got.set(k, blk);
          this.remember(k, blk);
        }
        runStart = -1;
      }
    }
    if (first === last) {
      const blk = got.get(first)!;
      return blk.subarray(offset - first * bs, end - first * bs);
    }
    const out = Buffer.allocUnsafe(end - offset);
    for (let b = first; b <= last; b++) {
      const blk = got.get(b)!;
      const s = Math.max(offset, b * bs);
      const e = Math.min(end, (b + 1) * bs);
      blk.copy(out, s - offset, s - b * bs, e - b * bs);
    }
    return out;
  }

  public async close(): Promise<void> {
    this.blocks.clear();
    await this.inner.close();
  }

  private remember(block: number, data: Buffer): void {
    this.blocks.set(block, data);
    while (this.blocks.size > this.maxBlocks) {
      const oldest = this.blocks.keys().next().value as number;
      this.blocks.delete(oldest);
    }
  }
}

/** Reads exactly `length` bytes at `offset`, or throws a truncation error naming `what`. */
export async function readExact(src: ByteSource, offset: number, length: number, what: string): Promise<Buffer> {
  const buf = await src.read(offset, length);
  if (buf.length !== length) {
    throw new ImageReadError(
      `${src.name}: ${what} at offset ${offset} needs ${length} bytes but the image ends at ${src.size}; the file is truncated`,
      'TRUNCATED',
    );
  }
  return buf;
}
