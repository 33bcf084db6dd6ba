/**
 * Conversion: a reader's virtual disk streamed into a writer. Only the image's extents are read,
 * in runs of at most 1 MiB aligned to 1 MiB; runs that are all zeros are dropped before they reach
 * the writer, so zeros are never compressed, written or uploaded.
 */
import * as path from 'node:path';
import { writeRaw } from './raw-writer';
import { FileSink, type Sink, type WriterChunk, type WriterInput } from './sink';
import { writeVhd } from './vhd-writer';
import { writeStreamOptimizedVmdk, type VmdkStreamOptions } from './vmdk-stream-writer';
import { isZero } from '../bytes';
import { mapOrdered } from './deflate-pool';
import { ImageReadError } from '../errors';
import type { DiskImage } from '../image';

export { BufferSink, FileSink, isSeekable, isSparse } from './sink';
export type { Sink, SeekableSink, SparseSink, WriterInput, WriterChunk, WriteResult } from './sink';
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
  try {
    const input: WriterInput = {
      virtualSize: image.virtualSize,
      chunks: dataChunks(image, options),
      extents: () => image.extents(),
    };
    let result: ConvertResult;
    switch (target) {
      case 'vmdk':
        result = await writeStreamOptimizedVmdk(input, sink, {
          ...options.vmdk,
          fileName: options.vmdk?.fileName ?? (sink instanceof FileSink ? path.basename(sink.target) : undefined),
        });
        break;
      case 'vhd':
        result = await writeVhd(input, sink, { type: 'dynamic' });
        break;
      case 'vhd-fixed':
        result = await writeVhd(input, sink, { type: 'fixed' });
        break;
      case 'raw':
        result = await writeRaw(input, sink);
        break;
      default:
        throw new RangeError(`unknown conversion target ${String(target)}`);
    }
    await sink.close();
    return { bytesWritten: result.bytesWritten, grainsWritten: result.grainsWritten, zeroGrainsSkipped: result.zeroGrainsSkipped };
  } catch (e) {
    await sink.abort().catch(() => undefined);
    throw e;
  }
}

/** The runs to read: the image's extents, clipped to the disk, cut at 1 MiB boundaries. */
async function* runsOf(image: DiskImage): AsyncIterable<{ offset: number; length: number }> {
  let done = 0;
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
async function* dataChunks(image: DiskImage, options: ConvertOptions): AsyncIterable<WriterChunk> {
  const total = image.virtualSize;
  const read = async (run: { offset: number; length: number }) => {
    const data = await image.read(run.offset, run.length);
    if (data.length !== run.length) {
      throw new ImageReadError(`the disk gave ${data.length} bytes at ${run.offset} where ${run.length} were asked`, 'TRUNCATED');
    }
    return data;
  };
  for await (const { item, result } of mapOrdered(runsOf(image), read, options.readConcurrency ?? 2)) {
    options.onProgress?.(item.offset + item.length, total);
    if (!isZero(result)) yield { offset: item.offset, data: result };
  }
  options.onProgress?.(total, total);
}
