/**
 * Sinks: where a writer's output goes, and the stream contract between a reader and a writer.
 *
 * A {@link Sink} takes bytes in order. Some sinks can do more: a {@link SeekableSink} can patch
 * bytes it has already taken (a local file can; an upload cannot), and a {@link SparseSink} can
 * skip a run of zeros without writing them (a local file leaves a hole). Writers use these
 * abilities when present and fall back to plain writes otherwise.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';

/** An ordered output stream. */
export interface Sink {
  /** Bytes taken so far: the offset of the next write. */
  readonly position: number;
  /** Appends `chunk` at {@link position}. */
  write(chunk: Buffer): Promise<void>;
  /** Completes the output: after this it exists, whole, under its final name. */
  close(): Promise<void>;
  /** Abandons the output: nothing of it is left behind. Idempotent, and safe after a failure. */
  abort(): Promise<void>;
}

/** A sink that can overwrite bytes it has already taken. */
export interface SeekableSink extends Sink {
  /** Overwrites `data` at `offset`; the range must lie below {@link Sink.position}. */
  writeAt(offset: number, data: Buffer): Promise<void>;
}

/** A sink that can append a run of zeros without being handed them. */
export interface SparseSink extends Sink {
  /** Appends `length` zero bytes (a local file leaves a hole). */
  skip(length: number): Promise<void>;
}

/** Whether `sink` can patch earlier bytes. */
export function isSeekable(sink: Sink): sink is SeekableSink {
  return typeof (sink as Partial<SeekableSink>).writeAt === 'function';
}

/** Whether `sink` can skip zeros. */
export function isSparse(sink: Sink): sink is SparseSink {
  return typeof (sink as Partial<SparseSink>).skip === 'function';
}

/** A run of virtual bytes handed to a writer. */
export interface WriterChunk {
  /** Virtual offset of `data`, in bytes. */
  readonly offset: number;
  readonly data: Buffer;
}

/** The virtual disk as a writer consumes it. */
export interface WriterInput {
  /** Size of the virtual disk in bytes. */
  virtualSize: number;
  /**
   * The data, in increasing offset order, not overlapping, inside the disk. Gaps read as zeros.
   * Iterated once.
   */
  chunks: AsyncIterable<WriterChunk>;
  /**
   * The ranges that may hold data (at least every range a chunk will cover), in increasing order.
   * Writers whose table must precede the data on a sink that cannot seek (a dynamic VHD on an
   * upload) take a first pass over these. Optional otherwise.
   */
  extents?: () => AsyncIterable<{ readonly offset: number; readonly length: number }>;
}

/** What a writer did. */
export interface WriteResult {
  /** Size of the output. */
  readonly bytesWritten: number;
  /**
   * Allocation units holding data that were written: grains (VMDK), blocks (dynamic VHD), or
   * 1 MiB runs (raw, fixed VHD).
   */
  readonly grainsWritten: number;
  /** Allocation units of the disk that were not written because they are all zeros. */
  readonly zeroGrainsSkipped: number;
}

const ZERO_RUN = 1024 * 1024;
let zeros: Buffer | undefined;

/** Appends `length` zero bytes: a hole where the sink can leave one, else bounded zero buffers. */
export async function writeZeros(sink: Sink, length: number): Promise<void> {
  if (length <= 0) return;
  if (isSparse(sink)) {
    await sink.skip(length);
    return;
  }
  zeros ??= Buffer.alloc(ZERO_RUN);
  for (let left = length; left > 0; left -= ZERO_RUN) {
    await sink.write(left >= ZERO_RUN ? zeros : zeros.subarray(0, left));
  }
}

/**
 * Checks the chunk contract (ordered, not overlapping, inside the disk, none below `from`) as
 * chunks go by.
 */
export async function* checkedChunks(input: WriterInput, from = 0): AsyncIterable<WriterChunk> {
  let end = from;
  for await (const c of input.chunks) {
    if (!Number.isSafeInteger(c.offset) || c.offset < end || c.offset + c.data.length > input.virtualSize) {
      throw new RangeError(
        `chunk at ${c.offset} (+${c.data.length}) is out of order, overlaps the previous one or the part already written (ending at ${end}), or runs past the disk (${input.virtualSize} bytes)`,
      );
    }
    if (c.data.length === 0) continue;
    end = c.offset + c.data.length;
    yield c;
  }
}

/** A fixed-size unit of the virtual disk touched by at least one chunk. */
export interface Block {
  /** Index of the block: its offset is `index * blockSize`. */
  readonly index: number;
  /** The block's bytes, `blockSize` long; gaps and the tail past the disk are zeros. */
  readonly data: Buffer;
}

/**
 * Regroups ordered chunks into whole blocks of `blockSize`, yielding only blocks that some chunk
 * touches, in order. A block that lies inside one chunk is a view of it (no copy). Chunks must lie
 * at or above `from`.
 */
export async function* blocksOf(input: WriterInput, blockSize: number, from = 0): AsyncIterable<Block> {
  let index = -1;
  let buf: Buffer | undefined;
  for await (const c of checkedChunks(input, from)) {
    let pos = c.offset;
    const end = c.offset + c.data.length;
    while (pos < end) {
      const b = Math.floor(pos / blockSize);
      const start = b * blockSize;
      if (b !== index && buf) {
        yield { index, data: buf };
        buf = undefined;
      }
      index = b;
      const n = Math.min(end, start + blockSize) - pos;
      if (!buf && pos === start && n === blockSize) {
        // The whole block lies inside this chunk.
        yield { index: b, data: c.data.subarray(pos - c.offset, pos - c.offset + n) };
        index = -1;
      } else {
        buf ??= Buffer.alloc(blockSize);
        c.data.copy(buf, pos - start, pos - c.offset, pos - c.offset + n);
      }
      pos += n;
    }
  }
  if (buf) yield { index, data: buf };
}

/** Where a suspended {@link FileSink}'s partial output lies (JSON-serialisable). */
export interface FileSinkState {
  /** The final name. */
  readonly target: string;
  /** The partial output. */
  readonly tempPath: string;
  /** Bytes taken: where the output continues. */
  readonly position: number;
}

/**
 * A local file. Output goes to a temporary name beside the target and is renamed into place on
 * {@link close}; {@link abort}, and any failed write, remove it, so that no partial output is ever
 * left under either name. Zero runs passed to {@link skip} become holes.
 *
 * A paused conversion can {@link suspend} the sink: the file is closed and kept under its
 * temporary name, and {@link FileSink.resume} (in this process or another) continues it.
 */
export class FileSink implements SeekableSink, SparseSink {
  /** Opens a sink that will become `target` on close. */
  public static async create(target: string): Promise<FileSink> {
    const dir = path.dirname(target);
    const temp = path.join(dir, `.${path.basename(target)}.partial-${process.pid}-${randomBytes(4).toString('hex')}`);
    const handle = await fs.open(temp, 'wx');
    return new FileSink(target, temp, handle);
  }

  /**
   * Reopens the partial output of a suspended sink, positioned at `saved.position`. Bytes past that
   * position (written after the state was taken) are cut off; a shorter file is a trailing hole.
   */
  public static async resume(saved: FileSinkState): Promise<FileSink> {
    const { target, tempPath, position } = saved;
    if (typeof target !== 'string' || typeof tempPath !== 'string' || !Number.isSafeInteger(position) || position < 0) {
      throw new RangeError('a file sink state needs a target, a temporary path and a position');
    }
    if (path.dirname(tempPath) !== path.dirname(target)) {
      throw new RangeError(`${tempPath} is not beside ${target}`);
    }
    const handle = await fs.open(tempPath, 'r+');
    try {
      const { size } = await handle.stat();
      if (size > position) await handle.truncate(position);
      const sink = new FileSink(target, tempPath, handle);
      sink.pos = position;
      sink.fileEnd = Math.min(size, position);
      return sink;
    } catch (e) {
      await handle.close().catch(() => undefined);
      throw e;
    }
  }

  private pos = 0;
  /** Bytes actually written to the file (the rest up to `pos` is a hole). */
  private fileEnd = 0;
  private state: 'open' | 'closed' | 'aborted' | 'suspended' = 'open';

  private constructor(
    /** The final name. */
    public readonly target: string,
    /** Where the output is written until it is complete. */
    public readonly tempPath: string,
    private readonly handle: fs.FileHandle,
  ) {}

  public get position(): number {
    return this.pos;
  }

  public async write(chunk: Buffer): Promise<void> {
    this.checkOpen();
    await this.guard(() => this.writeFully(chunk, this.pos));
    this.pos += chunk.length;
    this.fileEnd = this.pos;
  }

  public async skip(length: number): Promise<void> {
    this.checkOpen();
    if (!Number.isSafeInteger(length) || length < 0) throw new RangeError(`invalid skip length ${length}`);
    this.pos += length;
  }

  public async writeAt(offset: number, data: Buffer): Promise<void> {
    this.checkOpen();
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + data.length > this.pos) {
      throw new RangeError(`writeAt ${offset} (+${data.length}) lies beyond the ${this.pos} bytes written`);
    }
    await this.guard(() => this.writeFully(data, offset));
    this.fileEnd = Math.max(this.fileEnd, offset + data.length);
  }

  public async close(): Promise<void> {
    this.checkOpen();
    await this.guard(async () => {
      if (this.fileEnd < this.pos) await this.handle.truncate(this.pos);
      await this.handle.sync();
      this.state = 'closed';
      await this.handle.close();
      await fs.rename(this.tempPath, this.target);
    });
  }

  /**
   * Closes the file and keeps the partial output under its temporary name, for
   * {@link FileSink.resume}. The sink takes nothing more; {@link abort} no longer removes the file
   * (resume it and abort that sink to discard it).
   */
  public async suspend(): Promise<FileSinkState> {
    this.checkOpen();
    await this.guard(async () => {
      await this.handle.sync();
      this.state = 'suspended';
      await this.handle.close();
    });
    return { target: this.target, tempPath: this.tempPath, position: this.pos };
  }

  public async abort(): Promise<void> {
    // Once closed, the output is complete and no longer ours to remove; once aborted, it is gone;
    // once suspended, it belongs to whoever resumes it.
    if (this.state !== 'open') return;
    this.state = 'aborted';
    await this.handle.close().catch(() => undefined);
    await fs.rm(this.tempPath, { force: true });
  }

  private checkOpen(): void {
    if (this.state !== 'open') throw new Error(`${this.target}: the sink is ${this.state}`);
  }

  private async writeFully(data: Buffer, offset: number): Promise<void> {
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await this.handle.write(data, done, data.length - done, offset + done);
      done += bytesWritten;
    }
  }

  /** Runs `op`; on failure removes the partial output and re-throws. */
  private async guard(op: () => Promise<void>): Promise<void> {
    try {
      await op();
    } catch (e) {
      if (this.state === 'closed' || this.state === 'suspended') {
        // The handle is closed but the rename failed, or the close did: remove the temporary file.
        this.state = 'aborted';
        await fs.rm(this.tempPath, { force: true });
      } else {
        await this.abort();
      }
      throw e;
    }
  }
}

/**
 * Output kept in memory, taking bytes in order only, like an upload (neither seekable nor sparse).
 * For tests and small images.
 */
export class BufferSink implements Sink {
  private readonly parts: Buffer[] = [];
  private pos = 0;
  private state: 'open' | 'closed' | 'aborted' = 'open';

  /** A sink whose output starts with `prefix` (the output of a paused conversion, say). */
  public constructor(prefix?: Buffer) {
    if (prefix?.length) {
      this.parts.push(Buffer.from(prefix));
      this.pos = prefix.length;
    }
  }

  public get position(): number {
    return this.pos;
  }

  /** Whether {@link close} completed. */
  public get closed(): boolean {
    return this.state === 'closed';
  }

  public async write(chunk: Buffer): Promise<void> {
    if (this.state !== 'open') throw new Error(`the sink is ${this.state}`);
    this.parts.push(Buffer.from(chunk));
    this.pos += chunk.length;
  }

  public async close(): Promise<void> {
    if (this.state !== 'open') throw new Error(`the sink is ${this.state}`);
    this.state = 'closed';
  }

  public async abort(): Promise<void> {
    if (this.state === 'closed') return;
    this.state = 'aborted';
    this.parts.length = 0;
  }

  /** The output, once closed. */
  public contents(): Buffer {
    if (this.state !== 'closed') throw new Error('the output is not complete');
    return Buffer.concat(this.parts);
  }

  /** A copy of the bytes taken so far, while the sink is open (a paused conversion's output). */
  public snapshot(): Buffer {
    if (this.state !== 'open') throw new Error(`the sink is ${this.state}`);
    return Buffer.concat(this.parts);
  }
}
