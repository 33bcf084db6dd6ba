/**
 * Conversion: a reader's virtual disk streamed into a writer. Only the image's extents are read,
 * in runs of at most 1 MiB aligned to 1 MiB; runs that are all zeros are dropped before they reach
 * the writer, so zeros are never compressed, written or uploaded.
 *
 * A conversion can pause and resume ({@link convertResumable}), in another process, on a new sink
 * that continues the same output, and the output is byte for byte the one an uninterrupted
 * conversion writes.
 *
 * - Clean points. The conversion pauses only at a virtual offset R that is a multiple of
 *   {@link PAUSE_ALIGN} (2 MiB: a dynamic VHD block, 32 VMDK grains, two runs). `shouldPause` is
 *   polled before each run is read; once it says yes at a run at offset o, the runs below
 *   R = ceil(o / 2 MiB) * 2 MiB are still read and written, and the first run at or above R ends
 *   the segment. Nothing at or above R has been read; the reads and compression jobs in flight are
 *   all below R and are awaited; the writer then brings its output up to R (a dynamic VHD writes
 *   the planned zero blocks below R, raw output the zeros up to R) and hands the bytes it was
 *   holding back to the sink. When no run is left the conversion completes instead of pausing.
 * - The checkpoint ({@link ConvertCheckpoint}) is plain JSON data: the target, virtual size, R, the
 *   sink position, and the writer's state (see each writer: stream VMDK in
 *   `vmdk-stream-writer.ts`, VHD in `vhd-writer.ts`, raw and fixed VHD in `raw-writer.ts`).
 *   Binary state is base64, deflated when large, and stays small whatever the disk size.
 * - Resuming reads data only from R on: the runs are the same 1 MiB-aligned runs an uninterrupted
 *   conversion reads (R is a multiple of the run size), so the writer sees the same chunks. The
 *   image's extents are walked from the start (a reader's allocation map has no entry point in the
 *   middle), which costs metadata reads, never data reads; a dynamic VHD whose block table was
 *   planned from the extents recomputes the plan in that walk and checks it against the state.
 * - A checkpoint that does not fit (version, target, virtual size, sink position, a seal that does
 *   not match its fields, or a writer state that does not agree with the image, the options or
 *   itself) is refused with a RangeError before anything is written, and the sink is left as it
 *   is: the caller decides whether to abort it. Any other failure aborts the sink. The seal (a
 *   SHA-256 of the checkpoint's fields, kept in the writer state) catches a checkpoint damaged in
 *   storage, which would otherwise continue into a wrong output.
 */
import * as path from 'node:path';
import { intField, objectField, sealOf, type ResumeContext, type WriterSession } from './checkpoint';
import { RawWriter } from './raw-writer';
import { FileSink, type Sink, type WriterChunk } from './sink';
import { beginVhd, restoreVhd, type VhdWriterOptions } from './vhd-writer';
import { VmdkStreamWriter, type VmdkStreamOptions } from './vmdk-stream-writer';
import { isZero } from '../bytes';
import { mapOrdered } from './deflate-pool';
import { ImageReadError } from '../errors';
import type { DiskImage } from '../image';

export { BufferSink, FileSink, isSeekable, isSparse } from './sink';
export type { Sink, SeekableSink, SparseSink, WriterInput, WriterChunk, WriteResult, FileSinkState } from './sink';
export { writeRaw } from './raw-writer';
export { writeVhd, vhdGeometry, vhdFooter, vhdSize, VHD_MAX_SIZE } from './vhd-writer';
export type { VhdWriterOptions, VhdGeometry } from './vhd-writer';
export { writeStreamOptimizedVmdk, streamDescriptor } from './vmdk-stream-writer';
export type { VmdkStreamOptions, VmdkAdapterType } from './vmdk-stream-writer';
export { deflateOrdered, mapOrdered } from './deflate-pool';

/** Formats {@link convert} writes: stream-optimized VMDK, dynamic VHD, fixed VHD, raw. */
export type ConvertTarget = 'vmdk' | 'vhd' | 'vhd-fixed' | 'raw';

/** Options of {@link convert}. */
export interface ConvertOptions {
  /** Called after each run is read, with the virtual bytes done and the virtual size. */
  readonly onProgress?: (bytesDone: number, total: number) => void;
  /** Options of the VMDK writer (adapter, compression level, …); the file name defaults to a file sink's. */
  readonly vmdk?: VmdkStreamOptions;
  /** The VHD footer's time stamp and unique id (fixed and dynamic VHD). @default - now, and random */
  readonly vhd?: Omit<VhdWriterOptions, 'type'>;
  /**
   * Reads of the image in flight at most (they overlap a slow source's latency).
   * @default 2
   */
  readonly readConcurrency?: number;
}

/** What {@link convert} did. */
export interface ConvertResult {
  /** Size of the output. */
  readonly bytesWritten: number;
  /** Allocation units written: VMDK grains, VHD blocks, or 1 MiB runs (raw, fixed VHD). */
  readonly grainsWritten: number;
  /** Allocation units of the disk not written because they hold only zeros. */
  readonly zeroGrainsSkipped: number;
}

/** Size of the runs read from the image. */
export const CONVERT_CHUNK = 1024 * 1024;

/** Virtual offsets a conversion may pause at are multiples of this: the largest unit any writer groups by. */
export const PAUSE_ALIGN = 2 * CONVERT_CHUNK;

/** JSON-serialisable state of a paused conversion (Buffers as base64 strings, compressed if large). */
export interface ConvertCheckpoint {
  readonly version: 1;
  readonly target: ConvertTarget;
  readonly virtualSize: number;
  /** Virtual offset where the reading resumes (all data below it has been written). */
  readonly resumeAt: number;
  /** Bytes the writer has handed to the sink: the sink must be at exactly this position on resume. */
  readonly outputPosition: number;
  /** Writer state (opaque to callers). Includes everything needed for byte-identical output (e.g. the VMDK CID). */
  readonly writer: unknown;
}

/** Options of {@link convertResumable}. */
export interface ResumableConvertOptions extends ConvertOptions {
  /** Continue from this checkpoint (the sink passed must be positioned at checkpoint.outputPosition). */
  readonly resume?: ConvertCheckpoint;
  /** Polled between runs; when it returns true the conversion stops at the next clean point. */
  readonly shouldPause?: () => boolean;
}

/** What {@link convertResumable} did: completed, or paused with a checkpoint to resume from. */
export type ResumableConvertResult =
  | { readonly done: true; readonly result: ConvertResult }
  | { readonly done: false; readonly checkpoint: ConvertCheckpoint; readonly bytesDone: number };

const TARGETS: readonly ConvertTarget[] = ['vmdk', 'vhd', 'vhd-fixed', 'raw'];

/**
 * Converts `image` into `target` on `sink`, and closes the sink. On any error the sink is aborted
 * (no partial output is left) and the error re-thrown.
 */
export async function convert(
  image: DiskImage,
  target: ConvertTarget,
  sink: Sink,
  options: ConvertOptions = {},
): Promise<ConvertResult> {
  const outcome = await convertResumable(image, target, sink, options);
  if (!outcome.done) throw new Error('the conversion paused though no pause was asked for');
  return outcome.result;
}

/**
 * Like convert(), but may pause. When paused, the sink is neither closed nor aborted (the caller
 * checkpoints it); everything the writer produced so far has been written to it. When done, the
 * sink is closed. On error the sink is aborted, except when the checkpoint to resume from does not
 * fit: that RangeError leaves the sink untouched. See the module's documentation.
 */
export async function convertResumable(
  image: DiskImage,
  target: ConvertTarget,
  sink: Sink,
  options: ResumableConvertOptions = {},
): Promise<ResumableConvertResult> {
  if (!TARGETS.includes(target)) {
    await sink.abort().catch(() => undefined);
    throw new RangeError(`unknown conversion target ${String(target)}`);
  }
  let from = 0;
  let writer: WriterSession | undefined;
  if (options.resume) {
    try {
      from = checkResume(options.resume, image, target, sink);
      // Restoring writes nothing.
      writer = await restoreWriter(options.resume.writer, { virtualSize: image.virtualSize, resumeAt: from, sink }, image, target, options);
    } catch (e) {
      // A checkpoint that does not fit leaves the sink as it is: the caller decides its fate.
      if (!(e instanceof RangeError)) await sink.abort().catch(() => undefined);
      throw e;
    }
  }
  try {
    writer ??= await beginWriter(image, target, sink, options);
    const runs = new PausableRuns(image, from, options.shouldPause);
    await writer.consume(dataChunks(image, runs, options), from);
    if (runs.pausedAt !== undefined) {
      const resumeAt = runs.pausedAt;
      const state = await writer.suspend(resumeAt);
      options.onProgress?.(resumeAt, image.virtualSize);
      const unsealed: ConvertCheckpoint = {
        version: 1,
        target,
        virtualSize: image.virtualSize,
        resumeAt,
        outputPosition: sink.position,
        writer: state,
      };
      const checkpoint = { ...unsealed, writer: { ...state, seal: sealOf(unsealed) } };
      return { done: false, checkpoint, bytesDone: resumeAt };
    }
    const result = await writer.finish();
    options.onProgress?.(image.virtualSize, image.virtualSize);
    await sink.close();
    return {
      done: true,
      result: { bytesWritten: result.bytesWritten, grainsWritten: result.grainsWritten, zeroGrainsSkipped: result.zeroGrainsSkipped },
    };
  } catch (e) {
    await sink.abort().catch(() => undefined);
    throw e;
  }
}

/** Checks a checkpoint against the image, target and sink; returns where the reading resumes. */
function checkResume(checkpoint: ConvertCheckpoint, image: DiskImage, target: ConvertTarget, sink: Sink): number {
  const c = objectField(checkpoint, 'the checkpoint');
  if (c.version !== 1) throw new RangeError(`checkpoint: version ${JSON.stringify(c.version)} is not one this converter reads (1)`);
  if (c.target !== target) throw new RangeError(`checkpoint: it is of a conversion to ${JSON.stringify(c.target)}, not to ${target}`);
  if (c.virtualSize !== image.virtualSize) {
    throw new RangeError(`checkpoint: it is of a disk of ${JSON.stringify(c.virtualSize)} bytes; this image has ${image.virtualSize}`);
  }
  const resumeAt = intField(c.resumeAt, 'the resume offset', 0, image.virtualSize);
  if (resumeAt % PAUSE_ALIGN !== 0) throw new RangeError(`checkpoint: the resume offset ${resumeAt} is not a multiple of ${PAUSE_ALIGN}`);
  const outputPosition = intField(c.outputPosition, 'the output position', 0);
  if (sink.position !== outputPosition) {
    throw new RangeError(`checkpoint: the output was paused at byte ${outputPosition}, but the sink is at ${sink.position}`);
  }
  const writer = objectField(c.writer, 'the writer state');
  if (writer.seal !== sealOf(checkpoint)) {
    throw new RangeError('checkpoint: its fields do not match its seal (it was damaged or altered since it was taken)');
  }
  return resumeAt;
}

async function beginWriter(image: DiskImage, target: ConvertTarget, sink: Sink, options: ConvertOptions): Promise<WriterSession> {
  const extents = () => image.extents();
  switch (target) {
    case 'vmdk':
      return VmdkStreamWriter.begin(image.virtualSize, sink, {
        ...options.vmdk,
        fileName: options.vmdk?.fileName ?? (sink instanceof FileSink ? path.basename(sink.target) : undefined),
      });
    case 'vhd':
      return beginVhd(image.virtualSize, sink, { ...options.vhd, type: 'dynamic' }, extents);
    case 'vhd-fixed':
      return beginVhd(image.virtualSize, sink, { ...options.vhd, type: 'fixed' }, extents);
    case 'raw':
      return RawWriter.begin(sink, image.virtualSize);
  }
}

async function restoreWriter(
  state: unknown,
  ctx: ResumeContext,
  image: DiskImage,
  target: ConvertTarget,
  options: ConvertOptions,
): Promise<WriterSession> {
  switch (target) {
    case 'vmdk':
      // Only options given explicitly are held against the checkpoint (not a file sink's name).
      return VmdkStreamWriter.restore(state, ctx, options.vmdk);
    case 'vhd':
    case 'vhd-fixed':
      return restoreVhd(state, ctx, target === 'vhd' ? 'dynamic' : 'fixed', () => image.extents());
    case 'raw':
      return RawWriter.restore(state, image.virtualSize, ctx);
  }
}

/** A run of virtual bytes to read. */
interface Run {
  readonly offset: number;
  readonly length: number;
}

/**
 * The runs to read from `from` on: the image's extents, clipped to the disk, cut at 1 MiB
 * boundaries. Polls `shouldPause` before each run; once it says yes, ends at the first run at or
 * above the next multiple of {@link PAUSE_ALIGN} and records that offset in {@link pausedAt}.
 */
class PausableRuns implements AsyncIterable<Run> {
  /** Where the runs stopped for a pause, if they did. */
  public pausedAt: number | undefined;

  public constructor(
    private readonly image: DiskImage,
    private readonly from: number,
    private readonly shouldPause: (() => boolean) | undefined,
  ) {}

  public async *[Symbol.asyncIterator](): AsyncIterator<Run> {
    let stopAt = Infinity;
    for await (const run of runsOf(this.image, this.from)) {
      if (stopAt === Infinity && this.shouldPause?.()) stopAt = Math.ceil(run.offset / PAUSE_ALIGN) * PAUSE_ALIGN;
      if (run.offset >= stopAt) {
        this.pausedAt = stopAt;
        return;
      }
      yield run;
    }
  }
}

/** The runs of the image's extents at or above `from`, clipped to the disk, cut at 1 MiB boundaries. */
async function* runsOf(image: DiskImage, from: number): AsyncIterable<Run> {
  let done = from;
  for await (const e of image.extents()) {
    const start = Math.max(done, e.offset);
    const end = Math.min(image.virtualSize, e.offset + e.length);
    for (let pos = start; pos < end;) {
      const next = Math.min(end, (Math.floor(pos / CONVERT_CHUNK) + 1) * CONVERT_CHUNK);
      yield { offset: pos, length: next - pos };
      pos = next;
    }
    done = Math.max(done, end);
  }
}

/** The image's data in runs, zero runs left out, reporting progress. */
async function* dataChunks(image: DiskImage, runs: AsyncIterable<Run>, options: ConvertOptions): AsyncIterable<WriterChunk> {
  const total = image.virtualSize;
  const read = async (run: Run) => {
    const data = await image.read(run.offset, run.length);
    if (data.length !== run.length) {
      throw new ImageReadError(`the disk gave ${data.length} bytes at ${run.offset} where ${run.length} were asked`, 'TRUNCATED');
    }
    return data;
  };
  for await (const { item, result } of mapOrdered(runs, read, options.readConcurrency ?? 2)) {
    options.onProgress?.(item.offset + item.length, total);
    if (!isZero(result)) yield { offset: item.offset, data: result };
  }
}
