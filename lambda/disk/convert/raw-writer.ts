/**
 * Raw disks: the virtual bytes, nothing else. Gaps between chunks are zeros: on a sink that can
 * skip (a local file) they become holes, so the output is as sparse as the input; elsewhere they
 * are written as zero buffers of at most 1 MiB at a time.
 *
 * The same writer lays out the body of a fixed VHD, with the footer as a trailer.
 *
 * Paused at virtual offset R, the output is the first R bytes exactly (the zeros up to R included),
 * so the state is where the output started, the 1 MiB units written, and the trailer if any.
 */
import {
  checkResumePoint, intField, objectField, oneOf, packBytes, unpackBytes, type ResumeContext, type WriterSession,
} from './checkpoint';
import { checkedChunks, writeZeros, type Sink, type WriteResult, type WriterChunk, type WriterInput } from './sink';

const MiB = 1024 * 1024;

/** State of a paused raw (or fixed VHD) output. */
export interface RawWriterState {
  readonly kind: 'raw';
  /** Virtual offset the state was taken at. */
  readonly resumeAt: number;
  /** Sink position where the output began. */
  readonly start: number;
  /** 1 MiB units holding data written so far. */
  readonly units: number;
  /** Bytes written after the body (the fixed VHD footer), packed; '' for none. */
  readonly trailer: string;
}

/** Raw bytes of a disk of `size` bytes, in segments, followed by an optional trailer. */
export class RawWriter implements WriterSession {
  /** Starts an output at the sink's position. */
  public static begin(sink: Sink, size: number, trailer: Buffer = Buffer.alloc(0)): RawWriter {
    if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`invalid virtual size ${size}`);
    return new RawWriter(sink, size, sink.position, 0, 0, trailer);
  }

  /** Continues the output `state` describes; `trailerLength` is the trailer's fixed length. */
  public static restore(state: unknown, size: number, ctx: ResumeContext, trailerLength = 0): RawWriter {
    const s = objectField(state, 'the raw writer state');
    oneOf(s.kind, ['raw'], 'the writer kind');
    checkResumePoint(s, ctx);
    const start = intField(s.start, 'the output start', 0, ctx.sink.position);
    if (ctx.sink.position - start !== ctx.resumeAt) {
      throw new RangeError(`checkpoint: a raw output resumed at ${ctx.resumeAt} must hold that many bytes, not ${ctx.sink.position - start}`);
    }
    const units = intField(s.units, 'the units written', 0, Math.ceil(ctx.resumeAt / MiB));
    const trailer = trailerLength > 0 ? unpackBytes(s.trailer, trailerLength, 'the trailer') : Buffer.alloc(0);
    if (trailerLength === 0 && s.trailer !== '') throw new RangeError('checkpoint: a raw output has no trailer');
    return new RawWriter(ctx.sink, size, start, ctx.resumeAt, units, trailer);
  }

  private constructor(
    private readonly sink: Sink,
    private readonly size: number,
    private readonly start: number,
    /** Virtual bytes the output holds. */
    private pos: number,
    private units: number,
    /** The trailer (a fixed VHD's footer). */
    public readonly trailer: Buffer,
  ) {}

  public async consume(chunks: AsyncIterable<WriterChunk>, from: number): Promise<void> {
    // Units below `from` were all counted before; none of these chunks can touch them.
    let lastUnit = Math.ceil(from / MiB) - 1;
    for await (const c of checkedChunks({ virtualSize: this.size, chunks }, Math.max(from, this.pos))) {
      await writeZeros(this.sink, c.offset - this.pos);
      await this.sink.write(c.data);
      this.pos = c.offset + c.data.length;
      const first = Math.max(lastUnit + 1, Math.floor(c.offset / MiB));
      const last = Math.floor((this.pos - 1) / MiB);
      if (last >= first) this.units += last - first + 1;
      lastUnit = Math.max(lastUnit, last);
    }
  }

  public async suspend(resumeAt: number): Promise<RawWriterState> {
    if (resumeAt < this.pos || resumeAt > this.size || resumeAt % MiB !== 0) {
      throw new RangeError(`cannot pause a raw output holding ${this.pos} bytes at ${resumeAt}`);
    }
    await writeZeros(this.sink, resumeAt - this.pos);
    this.pos = resumeAt;
    return { kind: 'raw', resumeAt, start: this.start, units: this.units, trailer: this.trailer.length ? packBytes(this.trailer) : '' };
  }

  public async finish(): Promise<WriteResult> {
    await writeZeros(this.sink, this.size - this.pos);
    this.pos = this.size;
    if (this.trailer.length) await this.sink.write(this.trailer);
    return {
      bytesWritten: this.sink.position - this.start,
      grainsWritten: this.units,
      zeroGrainsSkipped: Math.ceil(this.size / MiB) - this.units,
    };
  }
}

/** Writes the virtual disk of `input` to `sink` as raw bytes. Does not close the sink. */
export async function writeRaw(input: WriterInput, sink: Sink): Promise<WriteResult> {
  const writer = RawWriter.begin(sink, input.virtualSize);
  await writer.consume(input.chunks, 0);
  return writer.finish();
}
