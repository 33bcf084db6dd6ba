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
 *
 * Paused at virtual offset R (a multiple of 2 MiB), a dynamic VHD has written every block below R
 * (with a planned BAT, also the planned blocks that turned out to hold only zeros). Blocks are
 * all the same size and written in increasing order, so the BAT is fully described by which blocks
 * have been written: the state keeps that as a bitmap (one bit per block up to the last one
 * written, deflated: at most 128 KiB for the largest VHD, a few bytes for a sparse one), the block
 * count, the footer (time stamp and unique id included) and where the output started. On resume a
 * patched BAT is rebuilt from the bitmap; a planned BAT is recomputed from the extents (it has
 * already gone out) and must agree with the bitmap, or the image has changed and resuming is
 * refused. A fixed VHD pauses as raw output does, its footer kept in the state.
 */
import { randomBytes } from 'node:crypto';
import {
  checkResumePoint, intField, objectField, oneOf, packBytes, unpackBytes, type ResumeContext, type WriterSession,
} from './checkpoint';
import { RawWriter } from './raw-writer';
import { blocksOf, isSeekable, writeZeros, type Sink, type WriteResult, type WriterChunk, type WriterInput } from './sink';
import { isZero } from '../bytes';

const SECTOR = 512;
const MiB = 1024 * 1024;
const BLOCK = 2 * MiB;
const BITMAP = Math.ceil(BLOCK / SECTOR / 8 / SECTOR) * SECTOR;
const FOOTER_SIZE = 512;
const DYNAMIC_HEADER_SIZE = 1024;
const BAT_OFFSET = FOOTER_SIZE + DYNAMIC_HEADER_SIZE;
const BLOCK_SECTORS = (BITMAP + BLOCK) / SECTOR;
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

/** The ranges that may hold data, as {@link WriterInput.extents} gives them. */
type ExtentsOf = () => AsyncIterable<{ readonly offset: number; readonly length: number }>;

function checkSize(virtualSize: number): number {
  if (!Number.isSafeInteger(virtualSize) || virtualSize < 0) {
    throw new RangeError(`invalid virtual size ${virtualSize}`);
  }
  const size = vhdSize(virtualSize);
  if (size > VHD_MAX_SIZE) {
    throw new RangeError(`a VHD holds at most 2040 GiB; this disk has ${virtualSize} bytes`);
  }
  return size;
}

/**
 * Writes the virtual disk of `input` to `sink` as a VHD. Does not close the sink. A dynamic VHD
 * needs a {@link SeekableSink} or `input.extents` (see the module's documentation).
 */
export async function writeVhd(input: WriterInput, sink: Sink, options: VhdWriterOptions): Promise<WriteResult> {
  const writer = await beginVhd(input.virtualSize, sink, options, input.extents);
  await writer.consume(input.chunks, 0);
  return writer.finish();
}

/** Starts a VHD output at the sink's position (a dynamic one writes its headers and BAT now). */
export async function beginVhd(virtualSize: number, sink: Sink, options: VhdWriterOptions, extents?: ExtentsOf): Promise<WriterSession> {
  const size = checkSize(virtualSize);
  if (options.type !== 'fixed' && options.type !== 'dynamic') throw new RangeError(`unknown VHD type ${String(options.type)}`);
  const footer = vhdFooter(size, options.type, options);
  if (options.type === 'fixed') return RawWriter.begin(sink, size, footer);
  return DynamicVhdWriter.begin(virtualSize, sink, footer, extents);
}

/** Continues the VHD output a checkpoint's writer `state` describes. */
export async function restoreVhd(state: unknown, ctx: ResumeContext, type: 'dynamic' | 'fixed', extents?: ExtentsOf): Promise<WriterSession> {
  const size = checkSize(ctx.virtualSize);
  if (type === 'fixed') {
    const writer = RawWriter.restore(state, size, ctx, FOOTER_SIZE);
    checkFooter(writer.trailer, size, 'fixed');
    return writer;
  }
  return DynamicVhdWriter.restore(state, ctx, extents);
}

/** A RangeError unless `footer` is a valid footer of a VHD of `size` bytes and type `type`. */
function checkFooter(footer: Buffer, size: number, type: 'dynamic' | 'fixed'): void {
  const copy = Buffer.from(footer);
  copy.writeUInt32BE(0, 64);
  if (
    footer.toString('latin1', 0, 8) !== 'conectix' ||
    footer.readUInt32BE(64) !== vhdChecksumOf(copy) ||
    footer.readBigUInt64BE(48) !== BigInt(size) ||
    footer.readUInt32BE(60) !== (type === 'fixed' ? 2 : 3)
  ) {
    throw new RangeError(`checkpoint: the footer is not that of a ${type} VHD of ${size} bytes`);
  }
}

/** State of a paused dynamic VHD. */
export interface DynamicVhdState {
  readonly kind: 'vhd-dynamic';
  /** Virtual offset the state was taken at. */
  readonly resumeAt: number;
  /** Sink position where the output began. */
  readonly start: number;
  /** How the BAT goes out: computed from the extents and written first, or patched in at the end. */
  readonly bat: 'planned' | 'patched';
  /** The footer, packed. */
  readonly footer: string;
  /** Blocks written. */
  readonly blocks: number;
  /** Bytes of the bitmap of written blocks kept (block i is bit i % 8 of byte i / 8). */
  readonly mapBytes: number;
  /** That bitmap, packed. */
  readonly map: string;
}

/** A dynamic VHD, written in segments. */
class DynamicVhdWriter implements WriterSession {
  public static async begin(virtualSize: number, sink: Sink, footer: Buffer, extents: ExtentsOf | undefined): Promise<DynamicVhdWriter> {
    const size = vhdSize(virtualSize);
    const entries = Math.ceil(size / BLOCK);
    const batBytes = Math.ceil((entries * 4) / SECTOR) * SECTOR;
    const bat = Buffer.alloc(batBytes, 0xff); // every entry 0xFFFFFFFF: absent
    let planned: Uint32Array | undefined;
    if (!isSeekable(sink)) {
      if (!extents) {
        throw new Error('a dynamic VHD on a sink that cannot seek needs the input extents to place its block table first');
      }
      // The BAT is known now: assign the planned blocks their places in order.
      planned = await planBlocks(virtualSize, extents, entries);
      let at = (BAT_OFFSET + batBytes) / SECTOR;
      for (const b of planned) {
        bat.writeUInt32BE(at, b * 4);
        at += BLOCK_SECTORS;
      }
    }
    const writer = new DynamicVhdWriter(sink, virtualSize, footer, sink.position, planned ? undefined : bat, planned);
    await sink.write(footer);
    await sink.write(dynamicHeader(entries));
    await sink.write(bat);
    return writer;
  }

  public static async restore(state: unknown, ctx: ResumeContext, extents: ExtentsOf | undefined): Promise<DynamicVhdWriter> {
    const s = objectField(state, 'the dynamic VHD writer state');
    oneOf(s.kind, ['vhd-dynamic'], 'the writer kind');
    checkResumePoint(s, ctx);
    const mode = oneOf(s.bat, ['planned', 'patched'], 'the block table mode');
    const size = vhdSize(ctx.virtualSize);
    const entries = Math.ceil(size / BLOCK);
    const batBytes = Math.ceil((entries * 4) / SECTOR) * SECTOR;
    const footer = unpackBytes(s.footer, FOOTER_SIZE, 'the footer');
    checkFooter(footer, size, 'dynamic');
    const start = intField(s.start, 'the output start', 0, ctx.sink.position);
    const blocks = intField(s.blocks, 'the blocks written', 0, entries);
    if (ctx.sink.position - start !== BAT_OFFSET + batBytes + blocks * BLOCK_SECTORS * SECTOR) {
      throw new RangeError(`checkpoint: a dynamic VHD with ${blocks} blocks written cannot hold ${ctx.sink.position - start} bytes`);
    }
    const resumeBlock = ctx.resumeAt / BLOCK;
    if (!Number.isInteger(resumeBlock)) throw new RangeError(`checkpoint: a dynamic VHD cannot resume at ${ctx.resumeAt}, inside a block`);
    const mapBytes = intField(s.mapBytes, 'the block map length', 0, Math.ceil(Math.min(entries, resumeBlock) / 8));
    const map = Buffer.alloc(Math.ceil(entries / 8));
    unpackBytes(s.map, mapBytes, 'the block map').copy(map);
    const written: number[] = [];
    for (let i = 0; i < mapBytes * 8; i++) {
      if (map[i >> 3] & (1 << (i & 7))) {
        if (i >= resumeBlock) throw new RangeError(`checkpoint: the block map marks block ${i}, at or past the resume offset`);
        written.push(i);
      }
    }
    if (written.length !== blocks) throw new RangeError(`checkpoint: the block map marks ${written.length} blocks, the state says ${blocks}`);

    if (mode === 'planned') {
      if (!extents) throw new RangeError('checkpoint: a dynamic VHD whose block table was planned needs the input extents to resume');
      const planned = await planBlocks(ctx.virtualSize, extents, entries);
      const agrees = planned.length >= blocks
        && written.every((b, k) => planned[k] === b)
        && (planned.length === blocks || planned[blocks] >= resumeBlock);
      if (!agrees) {
        throw new RangeError('checkpoint: the image\'s extents no longer give the block table the output was started with');
      }
      return new DynamicVhdWriter(ctx.sink, ctx.virtualSize, footer, start, undefined, planned, blocks, map);
    }
    if (!isSeekable(ctx.sink)) {
      throw new RangeError('checkpoint: this dynamic VHD writes its block table at the end and needs a sink that can seek, as the one it was started on');
    }
    const bat = Buffer.alloc(batBytes, 0xff);
    written.forEach((b, k) => bat.writeUInt32BE((BAT_OFFSET + batBytes) / SECTOR + k * BLOCK_SECTORS, b * 4));
    return new DynamicVhdWriter(ctx.sink, ctx.virtualSize, footer, start, bat, undefined, blocks, map);
  }

  private readonly size: number;
  private readonly entries: number;
  private readonly firstBlockSector: number;
  private readonly bitmap = Buffer.alloc(BITMAP, 0xff);

  private constructor(
    private readonly sink: Sink,
    private readonly virtualSize: number,
    private readonly footer: Buffer,
    /** Sink position where the output began. */
    private readonly start: number,
    /** The BAT to patch in at the end (seekable sink), or undefined when it was planned. */
    private readonly bat: Buffer | undefined,
    /** The planned blocks, in order, when the BAT went out first. */
    private readonly planned: Uint32Array | undefined,
    /** Blocks written (with a plan: the index in it of the next block to write). */
    private written = 0,
    /** Bit i set: block i has been written. */
    private readonly map: Buffer = Buffer.alloc(Math.ceil(Math.ceil(vhdSize(virtualSize) / BLOCK) / 8)),
  ) {
    this.size = vhdSize(virtualSize);
    this.entries = Math.ceil(this.size / BLOCK);
    this.firstBlockSector = (BAT_OFFSET + Math.ceil((this.entries * 4) / SECTOR) * SECTOR) / SECTOR;
  }

  public async consume(chunks: AsyncIterable<WriterChunk>, from: number): Promise<void> {
    for await (const blk of blocksOf({ virtualSize: this.virtualSize, chunks }, BLOCK, from)) {
      if (this.planned) {
        await this.writePlannedUpTo(blk.index);
        if (this.written < this.planned.length && this.planned[this.written] === blk.index) {
          await this.writeBlock(blk.index, blk.data);
        } else if (!isZero(blk.data)) {
          throw new Error(`the input extents leave out data in the VHD block at ${blk.index * BLOCK}`);
        }
      } else if (!isZero(blk.data)) {
        await this.writeBlock(blk.index, blk.data);
      }
    }
  }

  public async suspend(resumeAt: number): Promise<DynamicVhdState> {
    if (resumeAt % BLOCK !== 0 || resumeAt > this.size) throw new RangeError(`cannot pause a dynamic VHD at ${resumeAt}, inside a block`);
    await this.writePlannedUpTo(resumeAt / BLOCK);
    let last = -1;
    for (let i = this.map.length - 1; i >= 0 && last < 0; i--) {
      if (this.map[i]) last = i * 8 + 31 - Math.clz32(this.map[i]);
    }
    const mapBytes = Math.ceil((last + 1) / 8);
    return {
      kind: 'vhd-dynamic',
      resumeAt,
      start: this.start,
      bat: this.planned ? 'planned' : 'patched',
      footer: packBytes(this.footer),
      blocks: this.written,
      mapBytes,
      map: packBytes(this.map.subarray(0, mapBytes)),
    };
  }

  public async finish(): Promise<WriteResult> {
    await this.writePlannedUpTo(Infinity);
    await this.sink.write(this.footer);
    if (this.bat) {
      if (!isSeekable(this.sink)) throw new Error('a dynamic VHD without a planned block table needs a sink that can seek');
      await this.sink.writeAt(this.start + BAT_OFFSET, this.bat);
    }
    return { bytesWritten: this.sink.position - this.start, grainsWritten: this.written, zeroGrainsSkipped: this.entries - this.written };
  }

  /** With a planned BAT: writes the planned blocks below `limit` not written yet (all zeros). */
  private async writePlannedUpTo(limit: number): Promise<void> {
    const planned = this.planned;
    if (!planned) return;
    while (this.written < planned.length && planned[this.written] < limit) await this.writeBlock(planned[this.written], undefined);
  }

  private async writeBlock(index: number, data: Buffer | undefined): Promise<void> {
    const at = (this.sink.position - this.start) / SECTOR;
    if (this.planned) {
      if (at !== this.firstBlockSector + this.written * BLOCK_SECTORS || this.planned[this.written] !== index) {
        throw new Error('the VHD blocks were not written where the block table says');
      }
    } else {
      this.bat!.writeUInt32BE(at, index * 4);
    }
    await this.sink.write(this.bitmap);
    if (data) await this.sink.write(data);
    else await writeZeros(this.sink, BLOCK);
    this.map[index >> 3] |= 1 << (index & 7);
    this.written++;
  }
}

/** The blocks that the input's extents touch, in increasing order. */
async function planBlocks(virtualSize: number, extents: ExtentsOf, entries: number): Promise<Uint32Array> {
  const present: number[] = [];
  let last = -1;
  for await (const e of extents()) {
    const end = Math.min(virtualSize, e.offset + e.length);
    if (!(e.length > 0) || e.offset >= end) continue;
    const first = Math.max(last + 1, Math.floor(e.offset / BLOCK));
    const final = Math.min(entries - 1, Math.floor((end - 1) / BLOCK));
    for (let b = first; b <= final; b++) present.push(b);
    last = Math.max(last, final);
  }
  return Uint32Array.from(present);
}
