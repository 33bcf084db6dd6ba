/**
 * Inputs opened for conversion: plain disk images as {@link openDiskImage} opens them, and images
 * wrapped in gzip, xz, zstd or bzip2, decompressed on the fly.
 *
 * A compressed raw disk (`disk.img.gz`, `disk.raw.xz`, `disk.img.zst`) is read as a stream: the
 * converter reads the disk front to back, so the decompressed bytes are handed on as they come,
 * through a window of a few MiB, and memory stays bounded whatever the size of the disk. The writers
 * need the virtual size before the first byte, so it is taken from the format where the format
 * carries it (the index of an xz file, the content size in the header of a zstd frame); otherwise
 * (gzip, whose trailer holds the size modulo 2^32 only, bzip2, zstd without a content size) a first
 * decompression pass counts the bytes. Each compressed byte is thus read once, or twice when a
 * counting pass is needed.
 *
 * A read behind the window (a read backwards, or behind the bytes already handed on) restarts the
 * decompression from the start of the stream, and {@link ConversionInput.restarts} counts it: such
 * reads are correct but slow, and the converter never makes them.
 *
 * A compressed container (qcow2, VDI, VMDK, VHD, VHDX inside gzip, xz, zstd or bzip2) must be read
 * at random, so it is first decompressed in full into a temporary file (the spool), opened from
 * there, and removed by {@link ConversionInput.close}, or at once when opening fails.
 *
 * Images that hold only the changes against a parent (a qcow2 with a backing file, a differencing
 * VHD or VDI, a VMDK delta disk) are refused: the parent is not at hand, and the converted disk
 * would have holes where the parent's data belongs.
 */
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { formatBytes, isZero } from './bytes';
import { decompress, detectCompression, type Compression } from './compressed';
import { classify, detect, expectedFormatFromName, HEAD_BYTES, stripCompressionExtension } from './detect';
import { ImageFormatError, UnsupportedImageError } from './errors';
import type { DiskImage, Extent, FormatId } from './image';
import { openDiskImage } from './inspect';
import { BufferSource, checkRange, FileSource, readExact, type ByteSource } from './source';

/** Options of {@link openForConversion}. */
export interface OpenForConversionOptions {
  /**
   * Where a compressed container format (qcow2.gz, vdi.xz, ...) may be spooled to read it at random.
   * @default - os.tmpdir()
   */
  readonly tempDir?: string;
  /**
   * Most bytes that may be spooled; beyond it an UnsupportedImageError names the limit and the remedy
   * (decompress before upload). Runs of zeros are left as holes in the spool and do not count.
   * @default - free space
   */
  readonly spoolLimit?: number;
}

/** How a {@link ConversionInput} reads its image. */
export type ConversionMode = 'direct' | 'stream' | 'spool';

/** An image opened for conversion, and what must be released after it. */
export interface ConversionInput {
  readonly image: DiskImage;
  /** The compression the input was wrapped in, when it was. */
  readonly compression?: Compression;
  /**
   * `direct`: a plain image read at random from the source (or, for a compressed input that
   * decompresses to at most 64 KiB, from memory); `stream`: a compressed raw disk read
   * in increasing order from the decompression stream; `spool`: a compressed container read from
   * a decompressed temporary copy.
   */
  readonly mode: ConversionMode;
  /** How many times a read behind the window restarted the decompression (mode `stream` only). */
  readonly restarts: number;
  /** Releases the decompression stream and removes the spool. Does not close the source. Idempotent. */
  close(): Promise<void>;
}

const KiB = 1024;
const MiB = 1024 * KiB;
/** Decompressed bytes kept behind the stream position, for reads that come slightly out of order. */
export const STREAM_WINDOW = 4 * MiB;
/** The spool is written in pieces of this size; pieces of zeros become holes. */
const SPOOL_PIECE = 64 * KiB;
/** The end of an xz file read at once to find its stream footer and index. */
const XZ_TAIL = 64 * KiB;
/** xz indexes larger than this are not read (a counting pass gives the size instead). */
const XZ_MAX_INDEX = 16 * MiB;
/** Concatenated xz streams followed back from the end at most (more: a counting pass). */
const XZ_MAX_STREAMS = 64;
const VHD_FOOTER = 512;

/**
 * Opens `source` for conversion: a plain image as openDiskImage does; a gzip/xz/zstd (and bzip2)
 * compressed one decompressed on the fly.
 *
 * Throws {@link UnsupportedImageError} for what cannot be converted (not a disk, an OVA, a
 * differencing disk, a compressed container larger than the spool limit, compression inside
 * compression), {@link ImageFormatError} for a corrupt image or stream, and
 * {@link ImageReadError} (code `TRUNCATED`) for one that ends early.
 */
export async function openForConversion(source: ByteSource, options: OpenForConversionOptions = {}): Promise<ConversionInput> {
  if (options.spoolLimit !== undefined && (!Number.isSafeInteger(options.spoolLimit) || options.spoolLimit < 0)) {
    throw new RangeError(`invalid spool limit ${options.spoolLimit}`);
  }
  // A compressed stream is told by its first bytes; detect() confirms it with the precedence it
  // gives the disk formats, so that both agree on what the input is.
  const magic = await source.read(0, 16);
  const found = detectCompression(magic) ? await detect(source) : undefined;
  if (found?.kind !== 'compressed') {
    const image = await openDiskImage(source);
    refuseDifferencing(source.name, image);
    return plainInput(image);
  }
  return openCompressed(source, found.compression, options);
}

function plainInput(image: DiskImage): ConversionInput {
  return { image, mode: 'direct', restarts: 0, close: async () => {} };
}

/** Refuses an image that holds only the changes against a parent, which is not at hand. */
function refuseDifferencing(name: string, image: DiskImage): void {
  const diff = image.findings.find((f) => f.code === 'DIFFERENCING_DISK');
  if (!diff) return;
  const what = diff.message.replace(/\s*VM Import would fail with .*$/s, '');
  throw new UnsupportedImageError(
    `${name}: ${what} Its parent cannot be resolved here, and the disk converted without it would have holes where the parent's data belongs; ` +
      'merge the chain into one image first (for example `qemu-img convert` of the child, which reads its parents) and convert that.',
    'DIFFERENCING_DISK',
    { format: image.format, subformat: image.subformat, virtualSize: image.virtualSize },
  );
}

// ---------------------------------------------------------------------------------------------
// Compressed inputs

async function openCompressed(source: ByteSource, kind: Compression, options: OpenForConversionOptions): Promise<ConversionInput> {
  const innerName = stripCompressionExtension(source.name) ?? `${source.name}.decompressed`;
  const it = decompress(source, kind)[Symbol.asyncIterator]();
  let handedOver = false;
  try {
    // The first bytes tell what the stream holds.
    const chunks: Buffer[] = [];
    let have = 0;
    let complete = false;
    while (have < HEAD_BYTES) {
      const r = await it.next();
      if (r.done) {
        complete = true;
        break;
      }
      if (r.value.length === 0) continue;
      chunks.push(r.value);
      have += r.value.length;
    }
    const head = Buffer.concat(chunks, have);

    if (complete) {
      // Small enough to hold: open it like any other image (never a stream inside a stream).
      const inner = new BufferSource(innerName, head);
      if (detectCompression(head)) throw nested(source.name, kind, detectCompression(head)!);
      const image = await openDiskImage(inner);
      refuseDifferencing(innerName, image);
      return { ...plainInput(image), compression: kind };
    }

    const found = classify(head.subarray(0, HEAD_BYTES), Buffer.alloc(0), Number.MAX_SAFE_INTEGER);
    switch (found.kind) {
      case 'compressed':
        throw nested(source.name, kind, found.compression);
      case 'ova':
        throw new UnsupportedImageError(
          `${source.name} is a ${kind}-compressed OVA package: decompress it and upload the OVA itself, which VM Import takes as it is; to convert its disks, extract them (tar -xf) and convert each.`,
          'UNSUPPORTED_IMAGE',
        );
      case 'not-a-disk':
        throw new UnsupportedImageError(`${source.name} holds ${found.what} (${kind}-compressed), not a disk image.`, 'NOT_A_DISK');
      case 'disk':
        if (found.format === 'raw') {
          handedOver = true;
          return await streamRaw(source, kind, innerName, it, chunks, have);
        }
        break;
      default:
        break;
    }
    handedOver = true;
    return await spoolAndOpen(source, kind, innerName, found.kind === 'disk' ? found.format : 'vmdk', it, chunks, options);
  } finally {
    if (!handedOver) await it.return?.(undefined);
  }
}

function nested(name: string, outer: Compression, inner: Compression): UnsupportedImageError {
  return new UnsupportedImageError(
    `${name} holds a ${inner} stream inside its ${outer} stream; decompress it (both layers) and convert the image inside.`,
    'UNSUPPORTED_IMAGE',
  );
}

/** How the size of a compressed raw disk was learnt. */
type SizeSource = 'xz index' | 'zstd frame header' | 'counting pass';

/** A compressed raw disk (or fixed VHD, raw data and a footer), read as a stream. */
async function streamRaw(
  source: ByteSource,
  kind: Compression,
  innerName: string,
  it: AsyncIterator<Buffer>,
  chunks: Buffer[],
  have: number,
): Promise<ConversionInput> {
  let first: { it: AsyncIterator<Buffer>; chunks: Buffer[]; end: number } | undefined = { it, chunks, end: have };
  try {
    // A fixed VHD looks like a raw disk until its footer, the last 512 bytes of the stream.
    const namedVhd = expectedFormatFromName(innerName) === 'vhd';
    let length: number | undefined;
    let from: SizeSource = 'counting pass';
    if (!namedVhd && kind === 'xz') {
      length = await xzUncompressedSize(source);
      from = 'xz index';
    } else if (!namedVhd && kind === 'zstd') {
      length = zstdContentSize(await source.read(0, 18));
      from = 'zstd frame header';
    }
    // A declared size below what the stream already gave (an empty first zstd frame, a damaged
    // index) is no size at all: count instead.
    if (length !== undefined && length < have) length = undefined;
    let tail: Buffer | undefined;
    if (length === undefined) {
      from = 'counting pass';
      ({ length, tail } = await countRest(it, chunks, have));
      first = undefined;
    }
    let virtualSize = length;
    let format: FormatId = 'raw';
    let subformat = 'raw';
    const footer = tail ? fixedVhdFooterSize(tail, length) : undefined;
    if (footer !== undefined) {
      virtualSize = footer;
      format = 'vhd';
      subformat = 'fixed';
    }
    const stream = new DecompressedStream(source, kind, virtualSize, length, first);
    first = undefined;
    const image: DiskImage = {
      format,
      subformat,
      virtualSize,
      findings: [],
      details: { compression: kind, sizeFrom: from, decompressedBytes: length },
      read: (offset, len) => stream.read(offset, len),
      async *extents(): AsyncIterable<Extent> {
        if (virtualSize > 0) yield { offset: 0, length: virtualSize };
      },
    };
    return {
      image,
      compression: kind,
      mode: 'stream',
      get restarts() {
        return stream.restarts;
      },
      close: () => stream.close(),
    };
  } finally {
    if (first) await first.it.return?.(undefined);
  }
}

/** Decompresses the rest of the stream, counting its bytes and keeping the last 512. */
async function countRest(it: AsyncIterator<Buffer>, chunks: readonly Buffer[], have: number): Promise<{ length: number; tail: Buffer }> {
  let length = have;
  let tail = Buffer.alloc(0);
  const keep = (c: Buffer): void => {
    tail = c.length >= VHD_FOOTER ? Buffer.from(c.subarray(c.length - VHD_FOOTER)) : Buffer.concat([tail, c]).subarray(-VHD_FOOTER);
  };
  chunks.forEach(keep);
  for (;;) {
    const r = await it.next();
    if (r.done) break;
    length += r.value.length;
    if (r.value.length > 0) keep(r.value);
  }
  if (!Number.isSafeInteger(length)) throw new ImageFormatError(`the decompressed stream is larger than any disk (${length} bytes)`);
  return { length, tail };
}

/**
 * The virtual size of a fixed VHD whose last 512 bytes are `tail` in a stream of `length` bytes, or
 * undefined when `tail` is not the footer of a fixed VHD with a valid checksum and a size that fits.
 */
export function fixedVhdFooterSize(tail: Buffer, length: number): number | undefined {
  if (tail.length !== VHD_FOOTER || tail.toString('latin1', 0, 8) !== 'conectix') return undefined;
  if (tail.readUInt32BE(60) !== 2) return undefined;
  let sum = 0;
  for (let i = 0; i < VHD_FOOTER; i++) if (i < 64 || i >= 68) sum += tail[i];
  // One's complement of the byte sum, as an unsigned 32-bit number.
  if ((0xffffffff - (sum % 0x100000000)) !== tail.readUInt32BE(64)) return undefined;
  const size = tail.readBigUInt64BE(48);
  if (size > BigInt(length - VHD_FOOTER)) return undefined;
  return Number(size);
}

/**
 * The decompressed bytes of a stream as random-access reads that are cheap when they come in
 * increasing order. Reads are served one at a time, in the order they were asked for.
 */
class DecompressedStream {
  /** Reads that went behind the window and restarted the decompression. */
  public restarts = 0;
  private it: AsyncIterator<Buffer> | undefined;
  /** The window: decompressed chunks, the first starting at `windowStart`. */
  private chunks: Buffer[] = [];
  private windowStart = 0;
  /** Bytes decompressed so far: the offset just past the last chunk. */
  private end = 0;
  /** The decompression has reached the end of the stream. */
  private finished = false;
  private failure: unknown;
  private closed = false;
  private queue: Promise<unknown> = Promise.resolve();

  public constructor(
    private readonly source: ByteSource,
    private readonly kind: Compression,
    /** The bytes the disk has. */
    private readonly virtualSize: number,
    /** The bytes the stream has: the disk, and what follows it (the footer of a fixed VHD). */
    private readonly length: number,
    first?: { it: AsyncIterator<Buffer>; chunks: Buffer[]; end: number },
  ) {
    if (first) {
      this.it = first.it;
      this.chunks = [...first.chunks];
      this.end = first.end;
      this.trim();
    }
  }

  public read(offset: number, length: number): Promise<Buffer> {
    checkRange(offset, length);
    const run = this.queue.then(() => this.readNow(offset, length));
    this.queue = run.catch(() => undefined);
    return run;
  }

  public async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.queue;
    const it = this.it;
    this.it = undefined;
    this.chunks = [];
    await it?.return?.(undefined);
  }

  private async readNow(offset: number, length: number): Promise<Buffer> {
    if (this.closed) throw new Error(`${this.source.name}: the decompression stream is closed`);
    const end = Math.min(this.virtualSize, offset + length);
    if (offset >= end) return Buffer.alloc(0);
    if (this.failure !== undefined) throw this.failure;
    if (offset < this.windowStart) await this.restart();
    const out = Buffer.alloc(end - offset);
    let at = this.windowStart;
    for (const c of this.chunks) {
      copyOverlap(c, at, out, offset);
      at += c.length;
    }
    while (this.end < end) {
      const c = await this.pull();
      copyOverlap(c, this.end - c.length, out, offset);
    }
    if (end === this.virtualSize) await this.finish();
    return out;
  }

  /** The next chunk of the stream, appended to the window. */
  private async pull(): Promise<Buffer> {
    this.it ??= decompress(this.source, this.kind)[Symbol.asyncIterator]();
    for (;;) {
      let r: IteratorResult<Buffer>;
      try {
        r = await this.it.next();
      } catch (e) {
        this.failure = e;
        throw e;
      }
      if (r.done) {
        this.finished = true;
        this.failure = new ImageFormatError(
          `${this.source.name}: the ${this.kind} stream ends after ${this.end} decompressed bytes, before the ${this.length} it was found to hold`,
          'SIZE_MISMATCH',
        );
        throw this.failure;
      }
      if (r.value.length === 0) continue;
      this.chunks.push(r.value);
      this.end += r.value.length;
      this.trim();
      return r.value;
    }
  }

  /** Drops the chunks that lie wholly more than the window behind the end. */
  private trim(): void {
    while (this.chunks.length > 1 && this.end - (this.windowStart + this.chunks[0].length) >= STREAM_WINDOW) {
      this.windowStart += this.chunks.shift()!.length;
    }
  }

  /**
   * After the last byte of the disk: the stream must end where it was found to end, so that its
   * checksums are checked and a stream longer than its declared size is not cut silently.
   */
  private async finish(): Promise<void> {
    const expected = this.length - this.virtualSize;
    let extra = this.end - this.virtualSize;
    while (!this.finished && extra <= expected) {
      let r: IteratorResult<Buffer>;
      try {
        r = await this.it!.next();
      } catch (e) {
        this.failure = e;
        throw e;
      }
      if (r.done) this.finished = true;
      else extra += r.value.length;
    }
    if (extra !== expected) {
      const why = extra > expected
        ? `continues past the ${this.length} bytes it was found to hold (a zstd file of several frames declares only its first frame's size)`
        : `ends after ${this.virtualSize + extra} bytes instead of ${this.length}`;
      this.failure = new ImageFormatError(
        `${this.source.name}: the ${this.kind} stream ${why}; decompress it before converting`,
        'SIZE_MISMATCH',
      );
      throw this.failure;
    }
  }

  private async restart(): Promise<void> {
    const it = this.it;
    this.it = undefined;
    await it?.return?.(undefined);
    this.chunks = [];
    this.windowStart = 0;
    this.end = 0;
    this.finished = false;
    this.restarts++;
  }
}

/** Copies the part of `chunk` (at stream offset `at`) that overlaps `out` (at stream offset `offset`). */
function copyOverlap(chunk: Buffer, at: number, out: Buffer, offset: number): void {
  const from = Math.max(at, offset);
  const to = Math.min(at + chunk.length, offset + out.length);
  if (from < to) chunk.copy(out, from - offset, from - at, to - at);
}

// ---------------------------------------------------------------------------------------------
// The spool

async function spoolAndOpen(
  source: ByteSource,
  kind: Compression,
  innerName: string,
  format: FormatId,
  it: AsyncIterator<Buffer>,
  chunks: readonly Buffer[],
  options: OpenForConversionOptions,
): Promise<ConversionInput> {
  const base = options.tempDir ?? os.tmpdir();
  let dir: string | undefined;
  let spooled: FileSource | undefined;
  try {
    dir = await fs.mkdtemp(path.join(base, 'vmie-spool-'));
    const file = path.join(dir, safeFileName(innerName));
    const limit = options.spoolLimit ?? (await freeSpace(base));
    await writeSpool(file, it, chunks, limit, () => tooLarge(source.name, kind, format, limit, options.spoolLimit !== undefined));
    spooled = await FileSource.open(file);
    const image = await openDiskImage(spooled);
    refuseDifferencing(innerName, image);
    const spool = { source: spooled, dir };
    let closed = false;
    return {
      image,
      compression: kind,
      mode: 'spool',
      restarts: 0,
      async close() {
        if (closed) return;
        closed = true;
        await spool.source.close();
        await fs.rm(spool.dir, { recursive: true, force: true });
      },
    };
  } catch (e) {
    await it.return?.(undefined);
    await spooled?.close().catch(() => undefined);
    if (dir) await fs.rm(dir, { recursive: true, force: true });
    if ((e as NodeJS.ErrnoException).code === 'ENOSPC') throw tooLarge(source.name, kind, format, undefined, false);
    throw e;
  }
}

/** Writes the decompressed stream to `file`, leaving pieces of zeros as holes. */
async function writeSpool(
  file: string,
  it: AsyncIterator<Buffer>,
  chunks: readonly Buffer[],
  limit: number,
  overLimit: () => Error,
): Promise<void> {
  const handle = await fs.open(file, 'wx');
  try {
    let pos = 0;
    let written = 0;
    const put = async (chunk: Buffer): Promise<void> => {
      for (let at = 0; at < chunk.length; at += SPOOL_PIECE) {
        const piece = chunk.subarray(at, Math.min(chunk.length, at + SPOOL_PIECE));
        if (!isZero(piece)) {
          written += piece.length;
          if (written > limit) throw overLimit();
          for (let done = 0; done < piece.length;) {
            const { bytesWritten } = await handle.write(piece, done, piece.length - done, pos + done);
            done += bytesWritten;
          }
        }
        pos += piece.length;
      }
    };
    for (const c of chunks) await put(c);
    for (;;) {
      const r = await it.next();
      if (r.done) break;
      await put(r.value);
    }
    await handle.truncate(pos);
  } finally {
    await handle.close();
  }
}

function tooLarge(name: string, kind: Compression, format: FormatId, limit: number | undefined, explicit: boolean): UnsupportedImageError {
  const room = limit === undefined
    ? 'the temporary directory ran out of space'
    : `it needs more than the ${formatBytes(limit)} ${explicit ? 'the spool limit allows' : 'free in the temporary directory'}`;
  return new UnsupportedImageError(
    `${name} holds a ${kind}-compressed ${format} image, which must be decompressed in full to be read, and ${room}. ` +
      'Decompress it before uploading, and upload the image inside (or convert it locally with `vmie convert`).',
    'COMPRESSED_TOO_LARGE',
    { format },
  );
}

async function freeSpace(dir: string): Promise<number> {
  try {
    const st = await fs.statfs(dir);
    return Math.min(Number.MAX_SAFE_INTEGER, st.bavail * st.bsize);
  } catch {
    return Number.MAX_SAFE_INTEGER;
  }
}

/** A file name for the spool from an input name: its last part, with only safe characters. */
function safeFileName(name: string): string {
  const base = name.slice(Math.max(name.lastIndexOf('/'), name.lastIndexOf('\\')) + 1).replace(/[^A-Za-z0-9._-]/g, '_');
  const trimmed = base.replace(/^\.+/, '').slice(-200);
  return trimmed || 'image';
}

// ---------------------------------------------------------------------------------------------
// Sizes the compression formats carry

/**
 * The content size in the header of the zstd frame at the start of `head` (its first 18 bytes
 * suffice), or undefined when `head` does not start with a frame that declares it. The size is
 * that of the first frame: a file of several frames holds more.
 */
export function zstdContentSize(head: Buffer): number | undefined {
  if (head.length < 6 || head.readUInt32LE(0) !== 0xfd2fb528) return undefined;
  const fhd = head[4];
  const fcsFlag = Math.floor(fhd / 64);
  const singleSegment = Math.floor(fhd / 32) % 2 === 1;
  if (Math.floor(fhd / 8) % 2 === 1) return undefined; // reserved bit
  const dictBytes = [0, 1, 2, 4][fhd % 4];
  const fcsBytes = [singleSegment ? 1 : 0, 2, 4, 8][fcsFlag];
  if (fcsBytes === 0) return undefined;
  const at = 5 + (singleSegment ? 0 : 1) + dictBytes;
  if (head.length < at + fcsBytes) return undefined;
  switch (fcsBytes) {
    case 1:
      return head[at];
    case 2:
      return head.readUInt16LE(at) + 256;
    case 4:
      return head.readUInt32LE(at);
    default: {
      const v = head.readBigUInt64LE(at);
      return v > BigInt(Number.MAX_SAFE_INTEGER) ? undefined : Number(v);
    }
  }
}

/**
 * The decompressed size of an xz file, from the stream footers and indexes at its end (several
 * streams, with stream padding between them, are followed back to the start), or undefined when
 * they cannot be read cheaply or do not add up, in which case a counting pass must tell. Reads
 * the last 64 KiB of each stream, and its index when that is larger.
 */
export async function xzUncompressedSize(source: ByteSource): Promise<number | undefined> {
  let end = source.size;
  let total = 0;
  for (let streams = 0; end > 0; streams++) {
    if (streams >= XZ_MAX_STREAMS) return undefined;
    const tailStart = Math.max(0, end - XZ_TAIL);
    const tail = await readExact(source, tailStart, end - tailStart, 'xz stream footer');
    // Stream padding: zero bytes in groups of four.
    let p = tail.length;
    while (p >= 4 && tail.readUInt32LE(p - 4) === 0) p -= 4;
    if (p < 12) return undefined;
    const footer = tail.subarray(p - 12, p);
    if (footer[10] !== 0x59 || footer[11] !== 0x5a) return undefined; // 'YZ'
    if (footer[8] !== 0 || footer[9] > 0x0f || crc32(footer.subarray(4, 10)) !== footer.readUInt32LE(0)) return undefined;
    const indexBytes = (footer.readUInt32LE(4) + 1) * 4;
    const footerEnd = tailStart + p;
    const indexStart = footerEnd - 12 - indexBytes;
    if (indexBytes > XZ_MAX_INDEX || indexStart < 12) return undefined;
    const index = indexStart >= tailStart
      ? tail.subarray(indexStart - tailStart, indexStart - tailStart + indexBytes)
      : await readExact(source, indexStart, indexBytes, 'xz index');
    const parsed = parseXzIndex(index);
    if (!parsed) return undefined;
    total += parsed.uncompressed;
    end = indexStart - parsed.blocks - 12;
    if (end < 0 || !Number.isSafeInteger(total)) return undefined;
  }
  return total;
}

/** The sums of an xz index's records: block bytes (padded) and uncompressed bytes; undefined when invalid. */
function parseXzIndex(index: Buffer): { blocks: number; uncompressed: number } | undefined {
  if (index.length < 8 || index[0] !== 0) return undefined;
  let pos = 1;
  const varint = (): number | undefined => {
    let v = 0;
    for (let i = 0; i < 9; i++) {
      if (pos >= index.length) return undefined;
      const b = index[pos++];
      if (i > 0 && b === 0) return undefined; // not the shortest encoding
      v += (b % 128) * 2 ** (7 * i);
      if (b < 128) return Number.isSafeInteger(v) ? v : undefined;
    }
    return undefined;
  };
  const records = varint();
  if (records === undefined || records > index.length / 2) return undefined;
  let blocks = 0;
  let uncompressed = 0;
  for (let i = 0; i < records; i++) {
    const unpadded = varint();
    const size = varint();
    if (unpadded === undefined || size === undefined || unpadded < 5) return undefined;
    blocks += Math.ceil(unpadded / 4) * 4;
    uncompressed += size;
  }
  while (pos % 4 !== 0) {
    if (pos >= index.length || index[pos] !== 0) return undefined;
    pos++;
  }
  if (pos + 4 !== index.length || crc32(index.subarray(0, pos)) !== index.readUInt32LE(pos)) return undefined;
  if (!Number.isSafeInteger(blocks) || !Number.isSafeInteger(uncompressed)) return undefined;
  return { blocks, uncompressed };
}

let crcTable: Uint32Array | undefined;

/* eslint-disable no-bitwise -- CRC-32 arithmetic */
/** CRC-32 (IEEE 802.3, as xz uses it). */
function crc32(data: Uint8Array): number {
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c % 2 === 1 ? (0xedb88320 ^ (c >>> 1)) >>> 0 : c >>> 1;
      crcTable[n] = c;
    }
  }
  let crc = 0xffffffff;
  for (let i = 0; i < data.length; i++) crc = (crcTable[(crc ^ data[i]) & 0xff] ^ (crc >>> 8)) >>> 0;
  return (crc ^ 0xffffffff) >>> 0;
}
/* eslint-enable no-bitwise */
