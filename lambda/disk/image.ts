/**
 * The contract every format reader meets: the virtual size, which ranges are allocated, and the
 * bytes at any virtual offset. Probes and writers work on this interface alone.
 */
import type { Finding } from './findings';
import type { ByteSource } from './source';

/** Container formats the engine reads. */
export type FormatId = 'raw' | 'vhd' | 'vhdx' | 'vmdk' | 'qcow2' | 'vdi';

/** A range of virtual bytes. */
export interface Extent {
  /** Virtual offset, in bytes. */
  readonly offset: number;
  /** Length in bytes. */
  readonly length: number;
}

/** A virtual disk opened for reading. */
export interface DiskImage {
  readonly format: FormatId;
  /**
   * The variant: `fixed`, `dynamic`, `differencing` (VHD, VHDX, VDI); the VMDK createType
   * (`streamOptimized`, `monolithicSparse`, …); `v2`/`v3` (qcow2); `raw`.
   */
  readonly subformat: string;
  /** Size of the virtual disk in bytes. */
  readonly virtualSize: number;
  /** What opening the image found wrong or notable about its container (not its contents). */
  readonly findings: readonly Finding[];
  /** Format-specific facts for the report (cluster size, block size, creator, …). */
  readonly details: Readonly<Record<string, string | number | boolean>>;
  /**
   * Reads virtual bytes. Unallocated ranges read as zeros. The result is exactly `length` bytes
   * unless the range runs past `virtualSize`. Throws {@link ImageFormatError} when the structures
   * point outside the file, {@link ImageReadError} when the file ends early.
   */
  read(offset: number, length: number): Promise<Buffer>;
  /**
   * The ranges that may hold data, in increasing order, not overlapping. Ranges outside them read
   * as zeros. May be coarser than the truth (a fixed or raw disk is one extent), never finer.
   */
  extents(): AsyncIterable<Extent>;
}

/** Opens a reader over `source`, which has already been recognised as the reader's format. */
export type ReaderFactory = (source: ByteSource) => Promise<DiskImage>;

/** The usual shape of `read` for readers whose data is addressed in fixed-size blocks. */
export async function readBlocks(
  virtualSize: number,
  blockSize: number,
  offset: number,
  length: number,
  readInBlock: (block: number, within: number, length: number) => Promise<Buffer | undefined>,
): Promise<Buffer> {
  const end = Math.min(virtualSize, offset + length);
  if (offset >= end) return Buffer.alloc(0);
  const out = Buffer.alloc(end - offset);
  let pos = offset;
  while (pos < end) {
    const block = Math.floor(pos / blockSize);
    const within = pos - block * blockSize;
    const n = Math.min(blockSize - within, end - pos);
    const data = await readInBlock(block, within, n);
    if (data) data.copy(out, pos - offset, 0, n);
    pos += n;
  }
  return out;
}
