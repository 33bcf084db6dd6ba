/**
 * Compressed images (gzip, xz, zstd, bzip2): recognised by their magic bytes and decompressed as a
 * stream. The source is read sequentially in chunks of a few MiB, and memory stays bounded however
 * large the image or however well it compresses: each decoder is fed only as much input as keeps
 * its output within a few MiB before that output is handed on.
 */
import { Readable } from 'node:stream';
import * as zlib from 'node:zlib';
// The decoders are bundled into the Lambda assets and the vmie command by esbuild; they are not
// runtime dependencies of the construct library.
// eslint-disable-next-line import/no-extraneous-dependencies
import { Decompress as ZstdDecompress } from 'fzstd';
// eslint-disable-next-line import/no-extraneous-dependencies
import { XzReadableStream } from 'xz-decompress';
import { ImageFormatError, ImageReadError, UnsupportedImageError } from './errors';
import { BufferSource, type ByteSource } from './source';

/** The compressions the engine can undo. */
export type Compression = 'gzip' | 'xz' | 'zstd' | 'bzip2';

/** Options of {@link decompress}. */
export interface DecompressOptions {
  /** The largest read of the compressed source, in bytes. @default 4 MiB */
  chunkSize?: number;
}

const MiB = 1024 * 1024;
const DEFAULT_CHUNK = 4 * MiB;
/** The first read is this small, and reads double from there up to the chunk size. */
const FIRST_CHUNK = 64 * 1024;
/** The largest zstd window accepted (the default limit of the reference decoder). */
const MAX_ZSTD_WINDOW = 128 * MiB;
/** The zstd input fed to the decoder at once (see {@link unzstd}). */
const ZSTD_PIECE = 512;

/** File name extensions of compressed files, removed to name the decompressed bytes. */
const EXTENSIONS = /\.(gz|gzip|xz|zst|zstd|bz2|bzip2)$/i;

/** Recognises a compressed stream by its first bytes. */
export function detectCompression(head: Buffer): Compression | undefined {
  if (head.length >= 3 && head[0] === 0x1f && head[1] === 0x8b && head[2] === 0x08) return 'gzip';
  if (head.length >= 6 && head.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) return 'xz';
  if (head.length >= 4 && head.readUInt32LE(0) === 0xfd2fb528) return 'zstd';
  if (head.length >= 4 && head.subarray(0, 3).toString('latin1') === 'BZh' && head[3] >= 0x31 && head[3] <= 0x39) {
    // A block (pi) or the end of an empty stream (sqrt pi) follows the header.
    if (head.length < 10) return 'bzip2';
    const magic = head.subarray(4, 10).toString('hex');
    if (magic === '314159265359' || magic === '177245385090') return 'bzip2';
  }
  return undefined;
}

/**
 * Streams the decompressed bytes of `source`. Reads the source once, front to back. Throws
 * {@link ImageFormatError} naming the format when the stream is corrupt, and
 * {@link ImageReadError} with code `TRUNCATED` when it ends early.
 */
export function decompress(source: ByteSource, kind: Compression, options: DecompressOptions = {}): AsyncIterable<Buffer> {
  const counter = { bytes: 0 };
  return {
    [Symbol.asyncIterator]: () => decompressStream(source, kind, options.chunkSize ?? DEFAULT_CHUNK, counter),
  };
}

/**
 * The first `maxBytes` of the decompressed stream, as a {@link BufferSource} named like `source`
 * without its compression extension. `complete` says whether the whole stream fit. Reading of the
 * compressed source stops as soon as `maxBytes` are out.
 */
export async function decompressedPrefix(
  source: ByteSource,
  kind: Compression,
  maxBytes: number,
): Promise<{ source: ByteSource; complete: boolean; compressedBytesRead: number }> {
  if (!Number.isSafeInteger(maxBytes) || maxBytes < 0) throw new RangeError(`invalid prefix length ${maxBytes}`);
  const counter = { bytes: 0 };
  const chunks: Buffer[] = [];
  let total = 0;
  let complete = true;
  const it = decompressStream(source, kind, DEFAULT_CHUNK, counter);
  try {
    for (;;) {
      const r = await it.next();
      if (r.done) break;
      if (total >= maxBytes) {
        if (r.value.length > 0) {
          complete = false;
          break;
        }
        continue;
      }
      const take = Math.min(r.value.length, maxBytes - total);
      chunks.push(r.value.subarray(0, take));
      total += take;
      if (take < r.value.length) {
        complete = false;
        break;
      }
    }
  } finally {
    await it.return?.(undefined);
  }
  const name = source.name.replace(EXTENSIONS, '');
  return { source: new BufferSource(name, Buffer.concat(chunks, total)), complete, compressedBytesRead: counter.bytes };
}

async function* decompressStream(
  source: ByteSource,
  kind: Compression,
  chunkSize: number,
  counter: { bytes: number },
): AsyncGenerator<Buffer, void, undefined> {
  if (!Number.isSafeInteger(chunkSize) || chunkSize < 1) throw new RangeError(`invalid chunk size ${chunkSize}`);
  if (source.size === 0) {
    throw new ImageReadError(`${source.name}: the ${kind} stream is empty`, 'TRUNCATED');
  }
  const input = readChunks(source, chunkSize, counter);
  try {
    switch (kind) {
      case 'gzip':
        yield* gunzip(input, source.name);
        break;
      case 'xz':
        yield* unxz(input, source.name);
        break;
      case 'zstd':
        yield* unzstd(input, source.name);
        break;
      case 'bzip2':
        yield* bunzip2(input, source.name);
        break;
      default:
        throw new ImageFormatError(`${source.name}: unknown compression ${String(kind)}`);
    }
  } finally {
    await input.return(undefined);
  }
}

/** Reads `source` front to back, in reads that grow from 64 KiB to `chunkSize`. */
async function* readChunks(source: ByteSource, chunkSize: number, counter: { bytes: number }): AsyncGenerator<Buffer, void, undefined> {
  let pos = 0;
  let size = Math.min(FIRST_CHUNK, chunkSize);
  while (pos < source.size) {
    const buf = await source.read(pos, Math.min(size, source.size - pos));
    if (buf.length === 0) {
      throw new ImageReadError(`${source.name}: the source ended at ${pos} instead of ${source.size}`, 'TRUNCATED');
    }
    counter.bytes += buf.length;
    pos += buf.length;
    size = Math.min(chunkSize, size * 2);
    yield buf;
  }
}

/** True for the engine's own errors, which pass through the decoders unchanged. */
function isTyped(e: unknown): boolean {
  return e instanceof ImageReadError || e instanceof ImageFormatError || e instanceof UnsupportedImageError;
}

function truncated(name: string, format: string): ImageReadError {
  return new ImageReadError(`${name}: the ${format} stream ends before its end marker; the file is truncated`, 'TRUNCATED');
}

function corrupt(name: string, format: string, e: unknown): ImageFormatError {
  const why = e instanceof Error ? e.message : String(e);
  return new ImageFormatError(`${name}: the ${format} stream is corrupt (${why})`, 'CORRUPT_STREAM');
}

// --- gzip ---

async function* gunzip(input: AsyncGenerator<Buffer, void, undefined>, name: string): AsyncGenerator<Buffer, void, undefined> {
  // One input chunk is buffered ahead at most; zlib's output side holds back input when the
  // consumer is slow, so memory stays at a few chunks whatever the compression ratio.
  const readable = Readable.from(input, { objectMode: false, highWaterMark: 1 });
  const z = zlib.createGunzip({ chunkSize: 256 * 1024 });
  let inputError: unknown;
  readable.on('error', (e) => {
    inputError = e;
    z.destroy(e);
  });
  readable.pipe(z);
  try {
    for await (const chunk of z) yield chunk as Buffer;
  } catch (e) {
    const cause = inputError ?? e;
    if (isTyped(cause)) throw cause;
    if ((cause as { code?: string }).code === 'Z_BUF_ERROR') throw truncated(name, 'gzip');
    throw corrupt(name, 'gzip', cause);
  } finally {
    readable.unpipe(z);
    readable.destroy();
    z.destroy();
  }
}

// --- xz ---

async function* unxz(input: AsyncGenerator<Buffer, void, undefined>, name: string): AsyncGenerator<Buffer, void, undefined> {
  let inputError: unknown;
  const compressed = new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        try {
          const r = await input.next();
          if (r.done) controller.close();
          else controller.enqueue(new Uint8Array(r.value.buffer, r.value.byteOffset, r.value.length));
        } catch (e) {
          inputError = e;
          controller.error(e);
        }
      },
    },
    { highWaterMark: 0 },
  );
  const reader = new XzReadableStream(compressed).getReader();
  let finished = false;
  try {
    for (;;) {
      let r: { done: boolean; value?: Uint8Array };
      try {
        r = await reader.read();
      } catch (e) {
        finished = true; // the decoder has released itself
        const cause = inputError ?? e;
        if (isTyped(cause)) throw cause;
        // xz-embedded return codes: 8 is XZ_BUF_ERROR, no progress possible (input ended early).
        if (/error code 8\b/.test(String((cause as Error).message))) throw truncated(name, 'xz');
        if (cause instanceof TypeError && /byteLength/.test(cause.message)) throw truncated(name, 'xz');
        throw corrupt(name, 'xz', cause);
      }
      if (r.done || !r.value) {
        finished = true;
        break;
      }
      const v = r.value;
      if (v.length > 0) yield Buffer.from(v.buffer, v.byteOffset, v.length);
    }
  } finally {
    // The decoder serialises its instances: it must be cancelled to free it for the next stream.
    if (!finished) await reader.cancel().catch(() => undefined);
    reader.releaseLock();
  }
}

// --- zstd ---

/** The window size of the zstd frame at the start of `head`, or undefined when it is not a frame. */
export function zstdWindowSize(head: Buffer): number | undefined {
  if (head.length < 6 || head.readUInt32LE(0) !== 0xfd2fb528) return undefined;
  const fhd = head[4];
  const singleSegment = Math.floor(fhd / 32) % 2 === 1;
  if (!singleSegment) {
    const wd = head[5];
    const windowLog = 10 + Math.floor(wd / 8);
    const base = 2 ** windowLog;
    return base + (base / 8) * (wd % 8);
  }
  // Single segment: the window is the frame content size.
  const dictBytes = [0, 1, 2, 4][fhd % 4];
  const fcsFlag = Math.floor(fhd / 64);
  const fcsBytes = [1, 2, 4, 8][fcsFlag];
  const at = 5 + dictBytes;
  if (head.length < at + fcsBytes) return undefined;
  if (fcsBytes === 1) return head[at];
  if (fcsBytes === 2) return head.readUInt16LE(at) + 256;
  if (fcsBytes === 4) return head.readUInt32LE(at);
  const big = head.readBigUInt64LE(at);
  return big > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(big);
}

/** The zstd block size limit (Block_Maximum_Size). */
const ZSTD_MAX_BLOCK = 128 * 1024;

/**
 * Follows the frame structure of a zstd stream (frame headers, block headers, checksums, skippable
 * frames) without decompressing, so that each frame's content checksum can be checked and each
 * frame's window size refused before the decoder allocates it.
 */
class ZstdFrames {
  /** The content checksum of the frame that just ended, when it has one. */
  public checksum: number | undefined;
  private state: 'magic' | 'header' | 'blockHeader' | 'body' | 'checksum' | 'skipSize' | 'skip' = 'magic';
  /** Bytes still to collect (header states) or to pass over (body states). */
  private need = 4;
  private readonly acc = Buffer.alloc(18);
  private accLen = 0;
  private hasChecksum = false;
  private lastBlock = false;

  public constructor(private readonly name: string) {}

  /** Whether the stream may end here (between frames). */
  public get atBoundary(): boolean {
    return this.state === 'magic' && this.accLen === 0;
  }

  /**
   * Scans `piece` and returns the offset just past the first frame end in it, or -1. Throws when
   * the structure is impossible or a frame needs too large a window.
   */
  public scan(piece: Uint8Array, from: number): number {
    let p = from;
    while (p < piece.length) {
      if (this.state === 'body' || this.state === 'skip') {
        const n = Math.min(this.need, piece.length - p);
        p += n;
        this.need -= n;
        if (this.need === 0 && this.afterBody()) return p;
        continue;
      }
      this.acc[this.accLen++] = piece[p++];
      if (--this.need > 0) continue;
      if (this.afterCollect()) return p;
    }
    return -1;
  }

  /** Handles a completed header field; true when a frame ended. */
  private afterCollect(): boolean {
    const acc = this.acc;
    switch (this.state) {
      case 'magic': {
        const magic = acc.readUInt32LE(0);
        if (magic === 0xfd2fb528) {
          this.state = 'header';
          this.need = 1;
          return false;
        }
        if (Math.floor(magic / 16) === 0x184d2a5) {
          this.state = 'skipSize';
          this.accLen = 0;
          this.need = 4;
          return false;
        }
        throw new ImageFormatError(`${this.name}: the zstd stream has no frame where one should start (magic ${magic.toString(16)})`, 'CORRUPT_STREAM');
      }
      case 'header': {
        const fhd = acc[4];
        if (this.accLen === 5) {
          if (Math.floor(fhd / 8) % 2 === 1) {
            throw new ImageFormatError(`${this.name}: a zstd frame header sets its reserved bit`, 'CORRUPT_STREAM');
          }
          const singleSegment = Math.floor(fhd / 32) % 2 === 1;
          const fcsFlag = Math.floor(fhd / 64);
          const fcsBytes = fcsFlag === 0 ? (singleSegment ? 1 : 0) : [0, 2, 4, 8][fcsFlag];
          this.need = (singleSegment ? 0 : 1) + [0, 1, 2, 4][fhd % 4] + fcsBytes;
          this.hasChecksum = Math.floor(fhd / 4) % 2 === 1;
          if (this.need > 0) return false;
        }
        const window = zstdWindowSize(acc.subarray(0, this.accLen));
        if (window !== undefined && window > MAX_ZSTD_WINDOW) {
          throw new UnsupportedImageError(
            `${this.name}: a zstd frame needs a ${window}-byte window, more than the ${MAX_ZSTD_WINDOW} bytes this reader allows; decompress it locally`,
            'COMPRESSED_NOT_INSPECTABLE',
          );
        }
        this.toBlockHeader();
        return false;
      }
      case 'blockHeader': {
        const v = acc[0] + acc[1] * 256 + acc[2] * 65536;
        this.lastBlock = v % 2 === 1;
        const type = Math.floor(v / 2) % 4;
        const size = Math.floor(v / 8);
        if (type === 3 || size > ZSTD_MAX_BLOCK) {
          throw new ImageFormatError(`${this.name}: a zstd block header is invalid (type ${type}, size ${size})`, 'CORRUPT_STREAM');
        }
        this.state = 'body';
        this.need = type === 1 ? 1 : size;
        return this.need === 0 ? this.afterBody() : false;
      }
      case 'checksum':
        this.checksum = acc.readUInt32LE(0);
        this.toMagic();
        return true;
      case 'skipSize':
        this.state = 'skip';
        this.need = acc.readUInt32LE(0);
        return this.need === 0 ? this.afterBody() : false;
      default:
        return false;
    }
  }

  /** Handles the end of a block body or a skippable frame; true when a frame ended. */
  private afterBody(): boolean {
    if (this.state === 'skip') {
      this.checksum = undefined;
      this.toMagic();
      return true;
    }
    if (!this.lastBlock) {
      this.toBlockHeader();
      return false;
    }
    if (this.hasChecksum) {
      this.state = 'checksum';
      this.accLen = 0;
      this.need = 4;
      return false;
    }
    this.checksum = undefined;
    this.toMagic();
    return true;
  }

  private toBlockHeader(): void {
    this.state = 'blockHeader';
    this.accLen = 0;
    this.need = 3;
  }

  private toMagic(): void {
    this.state = 'magic';
    this.accLen = 0;
    this.need = 4;
  }
}

async function* unzstd(input: AsyncGenerator<Buffer, void, undefined>, name: string): AsyncGenerator<Buffer, void, undefined> {
  let out: Buffer[] = [];
  let hash = new Xxh64();
  const decoder = new ZstdDecompress((data) => {
    if (data.length > 0) {
      const b = Buffer.from(data);
      out.push(b);
      hash.update(b);
    }
  });
  const push = (piece: Uint8Array, final: boolean): void => {
    try {
      decoder.push(piece, final);
    } catch (e) {
      if ((e as { code?: number }).code === 5) throw truncated(name, 'zstd');
      throw corrupt(name, 'zstd', e);
    }
  };
  const frames = new ZstdFrames(name);
  // fzstd decodes all it is given at once. A block of 4 bytes (an RLE block) can stand for 128 KiB,
  // so it is fed pieces small enough that one push yields at most about 16 MiB. Pieces end at frame
  // ends, where the frame's output is complete and its checksum is checked.
  for await (const chunk of input) {
    for (let p = 0; p < chunk.length;) {
      const limit = Math.min(chunk.length, p + ZSTD_PIECE);
      const piece = chunk.subarray(0, limit);
      const frameEnd = frames.scan(piece, p);
      const end = frameEnd < 0 ? limit : frameEnd;
      push(chunk.subarray(p, end), false);
      p = end;
      if (frameEnd >= 0) {
        const expected = frames.checksum;
        const actual = hash.digest32();
        hash = new Xxh64();
        if (expected !== undefined && expected !== actual) {
          throw new ImageFormatError(
            `${name}: the zstd stream is corrupt (content checksum ${actual.toString(16)} instead of ${expected.toString(16)})`,
            'CORRUPT_STREAM',
          );
        }
      }
      if (out.length) {
        const ready = out;
        out = [];
        yield* ready;
      }
    }
  }
  if (!frames.atBoundary) throw truncated(name, 'zstd');
  push(new Uint8Array(0), true);
  yield* out;
}

// --- XXH64 (the zstd content checksum), on pairs of unsigned 32-bit halves ---

/* eslint-disable no-bitwise -- 64-bit hash arithmetic on 32-bit halves */
const P1H = 0x9e3779b1;
const P1L = 0x85ebca87;
const P2H = 0xc2b2ae3d;
const P2L = 0x27d4eb4f;
const P3H = 0x165667b1;
const P3L = 0x9e3779f9;
const P4H = 0x85ebca77;
const P4L = 0xc2b2ae63;
const P5H = 0x27d4eb2f;
const P5L = 0x165667c5;

/** Held locally: a global lookup per call is slow where modules run inside a vm context. */
const imul = Math.imul;

/** The result registers of the 64-bit helpers below. */
let rh = 0;
let rl = 0;

function add64(ah: number, al: number, bh: number, bl: number): void {
  const lo = al + bl;
  rh = (ah + bh + (lo > 0xffffffff ? 1 : 0)) >>> 0;
  rl = lo >>> 0;
}

function mul64(ah: number, al: number, bh: number, bl: number): void {
  const a0 = al & 0xffff;
  const a1 = al >>> 16;
  const b0 = bl & 0xffff;
  const b1 = bl >>> 16;
  const p00 = a0 * b0;
  const p01 = a0 * b1;
  const p10 = a1 * b0;
  const p11 = a1 * b1;
  const mid = (p00 >>> 16) + (p01 & 0xffff) + (p10 & 0xffff);
  rl = (((mid & 0xffff) << 16) | (p00 & 0xffff)) >>> 0;
  const high = p11 + (p01 >>> 16) + (p10 >>> 16) + (mid >>> 16);
  rh = (high + imul(al, bh) + imul(ah, bl)) >>> 0;
}

function rotl64(h: number, l: number, r: number): void {
  rh = ((h << r) | (l >>> (32 - r))) >>> 0;
  rl = ((l << r) | (h >>> (32 - r))) >>> 0;
}

/** acc = rotl(acc + input * P2, 31) * P1 */
function round64(acch: number, accl: number, inh: number, inl: number): void {
  mul64(inh, inl, P2H, P2L);
  add64(acch, accl, rh, rl);
  rotl64(rh, rl, 31);
  mul64(rh, rl, P1H, P1L);
}

/** XXH64 with seed 0, fed incrementally. */
export class Xxh64 {
  private readonly v = new Array<number>(8);
  private readonly mem = Buffer.alloc(32);
  private memSize = 0;
  private total = 0;

  public constructor() {
    add64(P1H, P1L, P2H, P2L);
    this.v[0] = rh;
    this.v[1] = rl;
    this.v[2] = P2H;
    this.v[3] = P2L;
    this.v[4] = 0;
    this.v[5] = 0;
    add64(~P1H >>> 0, ~P1L >>> 0, 0, 1); // -P1
    this.v[6] = rh;
    this.v[7] = rl;
  }

  public update(data: Uint8Array): void {
    const buf = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.length);
    this.total += buf.length;
    let p = 0;
    if (this.memSize > 0) {
      const n = Math.min(32 - this.memSize, buf.length);
      buf.copy(this.mem, this.memSize, 0, n);
      this.memSize += n;
      p = n;
      if (this.memSize < 32) return;
      this.stripe(this.mem, 0);
      this.memSize = 0;
    }
    const whole = p + Math.floor((buf.length - p) / 32) * 32;
    if (whole > p) this.stripes(buf, p, whole);
    p = whole;
    if (p < buf.length) {
      buf.copy(this.mem, 0, p);
      this.memSize = buf.length - p;
    }
  }

  /** The low 32 bits of the digest, as zstd stores them. */
  public digest32(): number {
    const v = this.v;
    let hh: number;
    let hl: number;
    if (this.total >= 32) {
      rotl64(v[0], v[1], 1);
      hh = rh;
      hl = rl;
      rotl64(v[2], v[3], 7);
      add64(hh, hl, rh, rl);
      hh = rh;
      hl = rl;
      rotl64(v[4], v[5], 12);
      add64(hh, hl, rh, rl);
      hh = rh;
      hl = rl;
      rotl64(v[6], v[7], 18);
      add64(hh, hl, rh, rl);
      hh = rh;
      hl = rl;
      for (let i = 0; i < 8; i += 2) {
        round64(0, 0, v[i], v[i + 1]);
        mul64((hh ^ rh) >>> 0, (hl ^ rl) >>> 0, P1H, P1L);
        add64(rh, rl, P4H, P4L);
        hh = rh;
        hl = rl;
      }
    } else {
      hh = P5H;
      hl = P5L;
    }
    add64(hh, hl, Math.floor(this.total / 0x100000000) >>> 0, this.total >>> 0);
    hh = rh;
    hl = rl;
    const mem = this.mem;
    let p = 0;
    for (; p + 8 <= this.memSize; p += 8) {
      round64(0, 0, mem.readUInt32LE(p + 4), mem.readUInt32LE(p));
      rotl64((hh ^ rh) >>> 0, (hl ^ rl) >>> 0, 27);
      mul64(rh, rl, P1H, P1L);
      add64(rh, rl, P4H, P4L);
      hh = rh;
      hl = rl;
    }
    if (p + 4 <= this.memSize) {
      mul64(0, mem.readUInt32LE(p), P1H, P1L);
      rotl64((hh ^ rh) >>> 0, (hl ^ rl) >>> 0, 23);
      mul64(rh, rl, P2H, P2L);
      add64(rh, rl, P3H, P3L);
      hh = rh;
      hl = rl;
      p += 4;
    }
    for (; p < this.memSize; p++) {
      mul64(0, mem[p], P5H, P5L);
      rotl64((hh ^ rh) >>> 0, (hl ^ rl) >>> 0, 11);
      mul64(rh, rl, P1H, P1L);
      hh = rh;
      hl = rl;
    }
    // Avalanche.
    hl = (hl ^ (hh >>> 1)) >>> 0; // h ^= h >> 33
    mul64(hh, hl, P2H, P2L);
    hh = rh;
    hl = (rl ^ ((rl >>> 29) | (rh << 3))) >>> 0; // h ^= h >> 29
    hh = (hh ^ (hh >>> 29)) >>> 0;
    mul64(hh, hl, P3H, P3L);
    return (rl ^ rh) >>> 0; // low half of h ^ (h >> 32)
  }

  private stripe(buf: Buffer, off: number): void {
    this.stripes(buf, off, off + 32);
  }

  /**
   * Consumes the 32-byte stripes in `buf[from, to)`: for each lane, acc = rotl(acc + lane * P2, 31)
   * * P1. Written out with locals, as this runs over every decompressed byte.
   */
  private stripes(buf: Buffer, from: number, to: number): void {
    const v = this.v;
    const p1l0 = P1L & 0xffff;
    const p1l1 = P1L >>> 16;
    const p2l0 = P2L & 0xffff;
    const p2l1 = P2L >>> 16;
    for (let lane = 0; lane < 8; lane += 2) {
      let ah = v[lane];
      let al = v[lane + 1];
      for (let o = from + lane * 4; o < to; o += 32) {
        const xl = (buf[o] | (buf[o + 1] << 8) | (buf[o + 2] << 16) | (buf[o + 3] << 24)) >>> 0;
        const xh = (buf[o + 4] | (buf[o + 5] << 8) | (buf[o + 6] << 16) | (buf[o + 7] << 24)) >>> 0;
        // m = x * P2
        let a0 = xl & 0xffff;
        let a1 = xl >>> 16;
        let p00 = a0 * p2l0;
        let p01 = a0 * p2l1;
        let p10 = a1 * p2l0;
        let mid = (p00 >>> 16) + (p01 & 0xffff) + (p10 & 0xffff);
        const ml = ((mid << 16) | (p00 & 0xffff)) >>> 0;
        const mh = (a1 * p2l1 + (p01 >>> 16) + (p10 >>> 16) + (mid >>> 16) + imul(xl, P2H) + imul(xh, P2L)) >>> 0;
        // s = acc + m
        const sl = al + ml;
        const sh = (ah + mh + (sl > 0xffffffff ? 1 : 0)) >>> 0;
        const sl32 = sl >>> 0;
        // r = rotl(s, 31)
        const rh32 = ((sh << 31) | (sl32 >>> 1)) >>> 0;
        const rl32 = ((sl32 << 31) | (sh >>> 1)) >>> 0;
        // acc = r * P1
        a0 = rl32 & 0xffff;
        a1 = rl32 >>> 16;
        p00 = a0 * p1l0;
        p01 = a0 * p1l1;
        p10 = a1 * p1l0;
        mid = (p00 >>> 16) + (p01 & 0xffff) + (p10 & 0xffff);
        al = ((mid << 16) | (p00 & 0xffff)) >>> 0;
        ah = (a1 * p1l1 + (p01 >>> 16) + (p10 >>> 16) + (mid >>> 16) + imul(rl32, P1H) + imul(rh32, P1L)) >>> 0;
      }
      v[lane] = ah;
      v[lane + 1] = al;
    }
  }
}
/* eslint-enable no-bitwise */

// --- bzip2 ---

/* eslint-disable @typescript-eslint/no-require-imports, import/no-extraneous-dependencies */
// The block decoder and bit reader of unbzip2-stream, driven one block at a time: its stream
// wrapper decodes every complete block it holds at once, without bound on the output.
const bz2 = require('unbzip2-stream/lib/bzip2') as {
  header(bits: BitReader): number;
  decompress(bits: BitReader, out: (byte: number) => void, buf: Int32Array, bufsize: number, streamCRC: number): number | null;
};
const bitIterator = require('unbzip2-stream/lib/bit_iterator') as (next: () => Uint8Array) => BitReader;
/* eslint-enable @typescript-eslint/no-require-imports, import/no-extraneous-dependencies */

interface BitReader {
  (n: number | null): number;
  bytesRead: number;
}

/** Thrown by the bit reader's feeder when the buffered input is used up. */
class NeedInput extends Error {}

/** Collects single bytes into 1 MiB buffers. */
class ByteCollector {
  public readonly chunks: Buffer[] = [];
  private buf = Buffer.allocUnsafe(MiB);
  private pos = 0;

  public push(b: number): void {
    this.buf[this.pos++] = b;
    if (this.pos === this.buf.length) {
      this.chunks.push(this.buf);
      this.buf = Buffer.allocUnsafe(MiB);
      this.pos = 0;
    }
  }

  public finish(): Buffer[] {
    if (this.pos > 0) this.chunks.push(this.buf.subarray(0, this.pos));
    this.pos = 0;
    return this.chunks;
  }
}

async function* bunzip2(input: AsyncGenerator<Buffer, void, undefined>, name: string): AsyncGenerator<Buffer, void, undefined> {
  const queue: Buffer[] = [];
  let pushed = 0;
  let ended = false;
  const fill = async (need: number, consumed: number): Promise<void> => {
    while (!ended && pushed - consumed < need) {
      const r = await input.next();
      if (r.done) {
        ended = true;
      } else {
        queue.push(r.value);
        pushed += r.value.length;
      }
    }
  };
  const next = (): Uint8Array => {
    const b = queue.shift();
    if (!b) throw new NeedInput();
    return b;
  };
  const fail = (e: unknown): Error => {
    if (isTyped(e)) return e as Error;
    if (e instanceof NeedInput) {
      return ended
        ? truncated(name, 'bzip2')
        : new ImageFormatError(`${name}: a bzip2 block is larger than its header allows`, 'CORRUPT_STREAM');
    }
    return corrupt(name, 'bzip2', e);
  };

  await fill(4, 0);
  let bits: BitReader;
  try {
    bits = bitIterator(next);
  } catch (e) {
    throw fail(e);
  }
  for (let stream = 0; ; stream++) {
    // A stream: "BZh" and the block size level, blocks, then the end marker and its CRC.
    await fill(64, bits.bytesRead);
    if (stream > 0 && pushed - bits.bytesRead <= 0 && ended) return;
    let level: number;
    try {
      level = bz2.header(bits);
    } catch (e) {
      if (stream > 0 && !isTyped(e)) {
        throw new ImageFormatError(`${name}: the bzip2 stream is followed by bytes that are not a bzip2 stream`, 'CORRUPT_STREAM');
      }
      throw fail(e);
    }
    const bufsize = 100000 * level;
    const work = new Int32Array(bufsize);
    let crc: number | null = 0;
    while (crc !== null) {
      // A compressed block never exceeds its level's size by much: have it all in memory first.
      await fill(bufsize + 25000, bits.bytesRead);
      const out = new ByteCollector();
      try {
        crc = bz2.decompress(bits, (b) => out.push(b), work, bufsize, crc);
      } catch (e) {
        throw fail(e);
      }
      yield* out.finish();
    }
  }
}
