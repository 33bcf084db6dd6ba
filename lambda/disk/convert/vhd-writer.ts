/**
 * VHD (Microsoft Virtual Hard Disk Image Format Specification), fixed and dynamic, big-endian.
 *
 * The disk size is rounded up to a whole MiB (Azure requires it; the added tail reads as zeros).
 * The footer carries that size as both original and current size, a CHS geometry computed from it
 * by the specification's algorithm, creator application `vmie`, and its checksum.
 *
 * Fixed: the virtual bytes, then the footer.
 *
 * Dynamic: a copy of the footer at 0, the dynamic header at 512, the block allocation table (BAT)
 * at 1536 (one u32 sector offset per 2 MiB block, 0xFFFFFFFF for an absent block, padded to a
 * sector), then each present block in increasing order (a 512-byte sector bitmap, all ones, and
 * the block's 2 MiB), then the footer. Blocks that hold only zeros are absent.
 *
 * The BAT precedes the data, so it must be known before the blocks or patched after them:
 * - on a {@link SeekableSink} (a local file) the BAT's space is reserved, blocks are written as
 *   they come (all-zero blocks are left out), and the BAT is written over the reserved space at
 *   the end: one pass, exact;
 * - on a sink that cannot seek (an upload) the BAT is computed first from the input's extents
 *   (`WriterInput.extents`), a pass over the allocation map alone, and every block that an extent
 *   touches is present, even if it turns out to hold only zeros (written as zeros), since the BAT
 *   has already gone out. Without extents such a sink is refused.
 * The BAT is held in memory: 4 bytes per 2 MiB block, 4 MiB for the largest VHD.
 */
import { randomBytes } from 'node:crypto';
import { writeRaw } from './raw-writer';
import { blocksOf, isSeekable, writeZeros, type Sink, type WriteResult, type WriterInput } from './sink';
import { isZero } from '../bytes';

const SECTOR = 512;
const MiB = 1024 * 1024;
const BLOCK = 2 * MiB;
const BITMAP = Math.ceil(BLOCK / SECTOR / 8 / SECTOR) * SECTOR;
const FOOTER_SIZE = 512;
const DYNAMIC_HEADER_SIZE = 1024;
const BAT_OFFSET = FOOTER_SIZE + DYNAMIC_HEADER_SIZE;
/** The largest VHD: 2040 GiB (the specification's limit, and qemu's). */
export const VHD_MAX_SIZE = 2040 * 1024 * MiB;
/** Seconds from the Unix epoch to 2000-01-01T00:00:00Z, the VHD epoch. */
const VHD_EPOCH = 946684800;

/** Options of {@link writeVhd}. */
export interface VhdWriterOptions {
  /** A fixed disk (bytes then footer) or a dynamic one (only blocks holding data). */
  readonly type: 'dynamic' | 'fixed';
  /** The footer's time stamp. @default - now */
  readonly timestamp?: Date;
  /** The footer's unique id (16 bytes). @default - random */
  readonly uniqueId?: Buffer;
}

/** A CHS geometry. */
export interface VhdGeometry {
  readonly cylinders: number;
  readonly heads: number;
  readonly sectorsPerTrack: number;
}

/** The CHS geometry of a disk of `size` bytes, by the VHD specification's algorithm. */
export function vhdGeometry(size: number): VhdGeometry {
  let total = Math.floor(size / SECTOR);
  if (total > 65535 * 16 * 255) total = 65535 * 16 * 255;
  let spt: number;
  let heads: number;
  let cth: number;
  if (total >= 65535 * 16 * 63) {
    spt = 255;
    heads = 16;
    cth = Math.floor(total / spt);
  } else {
    spt = 17;
    cth = Math.floor(total / spt);
    heads = Math.floor((cth + 1023) / 1024);
    if (heads < 4) heads = 4;
    if (cth >= heads * 1024 || heads > 16) {
      spt = 31;
      heads = 16;
      cth = Math.floor(total / spt);
    }
    if (cth >= heads * 1024) {
      spt = 63;
      heads = 16;
      cth = Math.floor(total / spt);
    }
  }
  return { cylinders: Math.floor(cth / heads), heads, sectorsPerTrack: spt };
}

/** The one's complement of the byte sum of `buf`, whose checksum field must be zero. */
export function vhdChecksumOf(buf: Buffer): number {
  let sum = 0;
  for (const b of buf) sum += b;
  return ~sum >>> 0;
}

/** The size a VHD of `virtualSize` bytes gets: rounded up to a whole MiB. */
export function vhdSize(virtualSize: number): number {
  return Math.ceil(virtualSize / MiB) * MiB;
}

/** The 512-byte VHD footer. */
export function vhdFooter(size: number, type: 'dynamic' | 'fixed', options: Omit<VhdWriterOptions, 'type'> = {}): Buffer {
  const f = Buffer.alloc(FOOTER_SIZE);
  f.write('conectix', 0, 'latin1');
  f.writeUInt32BE(2, 8); // features: the reserved bit, always set
  f.writeUInt32BE(0x00010000, 12);
  f.writeBigUInt64BE(type === 'fixed' ? 0xffffffffffffffffn : BigInt(FOOTER_SIZE), 16);
  const seconds = Math.floor((options.timestamp ?? new Date()).getTime() / 1000) - VHD_EPOCH;
  f.writeUInt32BE(Math.max(0, Math.min(0xffffffff, seconds)), 24);
  f.write('vmie', 28, 'latin1');
  f.writeUInt32BE(0x00010000, 32);
  f.write('Wi2k', 36, 'latin1');
  f.writeBigUInt64BE(BigInt(size), 40);
  f.writeBigUInt64BE(BigInt(size), 48);
  const g = vhdGeometry(size);
  f.writeUInt16BE(g.cylinders, 56);
  f.writeUInt8(g.heads, 58);
  f.writeUInt8(g.sectorsPerTrack, 59);
  f.writeUInt32BE(type === 'fixed' ? 2 : 3, 60);
  const id = options.uniqueId ?? randomBytes(16);
  if (id.length !== 16) throw new RangeError('a VHD unique id is 16 bytes');
  id.copy(f, 68);
  f.writeUInt32BE(vhdChecksumOf(f), 64);
  return f;
}

/** The 1024-byte dynamic disk header. */
function dynamicHeader(entries: number): Buffer {
  const h = Buffer.alloc(DYNAMIC_HEADER_SIZE);
  h.write('cxsparse', 0, 'latin1');
  h.writeBigUInt64BE(0xffffffffffffffffn, 8);
  h.writeBigUInt64BE(BigInt(BAT_OFFSET), 16);
  h.writeUInt32BE(0x00010000, 24);
  h.writeUInt32BE(entries, 28);
  h.writeUInt32BE(BLOCK, 32);
  h.writeUInt32BE(vhdChecksumOf(h), 36);
  return h;
}

/**
 * Writes the virtual disk of `input` to `sink` as a VHD. Does not close the sink. A dynamic VHD
 * needs a {@link SeekableSink} or `input.extents` (see the module's documentation).
 */
export async function writeVhd(input: WriterInput, sink: Sink, options: VhdWriterOptions): Promise<WriteResult> {
  if (!Number.isSafeInteger(input.virtualSize) || input.virtualSize < 0) {
    throw new RangeError(`invalid virtual size ${input.virtualSize}`);
  }
  const size = vhdSize(input.virtualSize);
  if (size > VHD_MAX_SIZE) {
    throw new RangeError(`a VHD holds at most 2040 GiB; this disk has ${input.virtualSize} bytes`);
  }
  const footer = vhdFooter(size, options.type, options);
  if (options.type === 'fixed') return writeFixed(input, sink, size, footer);
  if (options.type !== 'dynamic') throw new RangeError(`unknown VHD type ${String(options.type)}`);
  return writeDynamic(input, sink, size, footer);
}

async function writeFixed(input: WriterInput, sink: Sink, size: number, footer: Buffer): Promise<WriteResult> {
  const start = sink.position;
  const data = await writeRaw({ virtualSize: size, chunks: input.chunks }, sink);
  await sink.write(footer);
  return { ...data, bytesWritten: sink.position - start };
}

async function writeDynamic(input: WriterInput, sink: Sink, size: number, footer: Buffer): Promise<WriteResult> {
  const entries = Math.ceil(size / BLOCK);
  const batBytes = Math.ceil((entries * 4) / SECTOR) * SECTOR;
  const bat = Buffer.alloc(batBytes, 0xff); // every entry 0xFFFFFFFF: absent
  const seekable = isSeekable(sink);
  let planned: Uint32Array | undefined;
  if (!seekable) {
    if (!input.extents) {
      throw new Error('a dynamic VHD on a sink that cannot seek needs the input extents to place its block table first');
    }
    planned = await planBlocks(input, entries);
  }

  const start = sink.position;
  const sectorNow = () => (sink.position - start) / SECTOR;
  const bitmap = Buffer.alloc(BITMAP, 0xff);
  let written = 0;

  const writeBlock = async (index: number, data: Buffer | undefined): Promise<void> => {
    bat.writeUInt32BE(sectorNow(), index * 4);
    await sink.write(bitmap);
    if (data) await sink.write(data);
    else await writeZeros(sink, BLOCK);
    written++;
  };

  if (planned) {
    // The BAT is known now: assign the planned blocks their places in order.
    let at = (BAT_OFFSET + batBytes) / SECTOR;
    for (const b of planned) {
      bat.writeUInt32BE(at, b * 4);
      at += (BITMAP + BLOCK) / SECTOR;
    }
  }
  await sink.write(footer);
  await sink.write(dynamicHeader(entries));
  await sink.write(bat);

  if (planned) {
    const plannedBat = Buffer.from(bat);
    let next = 0; // index into `planned` of the next block to write
    const writeUpTo = async (limit: number) => {
      while (next < planned!.length && planned![next] < limit) await writeBlock(planned![next++], undefined);
    };
    for await (const blk of blocksOf(input, BLOCK)) {
      await writeUpTo(blk.index);
      if (next < planned.length && planned[next] === blk.index) {
        await writeBlock(planned[next++], blk.data);
      } else if (!isZero(blk.data)) {
        throw new Error(`the input extents leave out data in the VHD block at ${blk.index * BLOCK}`);
      }
    }
    await writeUpTo(Infinity);
    if (!bat.equals(plannedBat)) throw new Error('the VHD blocks were not written where the block table says');
  } else {
    for await (const blk of blocksOf(input, BLOCK)) {
      if (!isZero(blk.data)) await writeBlock(blk.index, blk.data);
    }
  }
  await sink.write(footer);
  if (seekable && !planned) await sink.writeAt(start + BAT_OFFSET, bat);
  return { bytesWritten: sink.position - start, grainsWritten: written, zeroGrainsSkipped: entries - written };
}

/** The blocks that the input's extents touch, in increasing order. */
async function planBlocks(input: WriterInput, entries: number): Promise<Uint32Array> {
  const present: number[] = [];
  let last = -1;
  for await (const e of input.extents!()) {
    const end = Math.min(input.virtualSize, e.offset + e.length);
    if (!(e.length > 0) || e.offset >= end) continue;
    const first = Math.max(last + 1, Math.floor(e.offset / BLOCK));
    const final = Math.min(entries - 1, Math.floor((end - 1) / BLOCK));
    for (let b = first; b <= final; b++) present.push(b);
    last = Math.max(last, final);
  }
  return Uint32Array.from(present);
}
