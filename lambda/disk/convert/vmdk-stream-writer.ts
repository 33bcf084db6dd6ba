/**
 * Stream-optimized VMDK, in VMware's streaming layout (VMware Virtual Disk Format 1.1), the form
 * OVF export writes and VM Import takes as is.
 *
 * The file, in sectors of 512 bytes, all little-endian:
 *
 * 1. the sparse header (version 3; flags: newline test, compressed grains, markers; grains of 128
 *    sectors; 512 entries per grain table; gdOffset 0xFFFFFFFFFFFFFFFF, "see the footer"; deflate),
 *    then the text descriptor (`createType="streamOptimized"`), padded to the first grain
 *    (overHead sectors);
 * 2. for each grain holding data, in increasing order: a grain marker (lba u64, size u32) followed
 *    by the zlib stream of the whole grain, padded to a sector. All-zero grains are not written;
 * 3. after the last grain of each grain table's span, the table: a metadata marker (numSectors,
 *    size 0, type 1) and 512 u32 entries, the sector of each grain's marker or 0. A table whose
 *    span holds no data is not written, and its directory entry is 0;
 * 4. the grain directory: marker type 2, then one u32 per table (its sector, or 0);
 * 5. the footer: marker type 3, then a copy of the header whose gdOffset is the directory's sector;
 * 6. the end-of-stream marker (a zero sector).
 *
 * Everything is written in one pass, in order, so any sink will do. Grains are deflated on every
 * core (see `deflate-pool.ts`); memory is bounded by the grains in flight.
 *
 * Paused at virtual offset R (a multiple of the grain), every grain below R has been written and
 * no compression job is running; the grain table being filled, the directory and the counters are
 * the whole state. The state keeps the open table (2 KiB, packed), the directory up to its last
 * entry written (4 bytes per 32 MiB of disk, deflated: a few KiB even for a 16 TiB disk), the
 * bytes and grains written, the header's layout (descriptor and overhead sectors, for the footer's
 * copy of the header), and what fixed the bytes already written and still to come: the CID,
 * adapter, hardware version, file name and compression level.
 */
import { randomBytes } from 'node:crypto';
import { constants as zlibConstants } from 'node:zlib';
import {
  checkResumePoint, intField, objectField, oneOf, packBytes, sameOption, stringField, unpackBytes, type ResumeContext, type WriterSession,
} from './checkpoint';
import { deflateOrdered, type DeflateOptions } from './deflate-pool';
import { blocksOf, type Sink, type WriteResult, type WriterChunk, type WriterInput } from './sink';
import { isZero } from '../bytes';

const SECTOR = 512;
const GRAIN_SECTORS = 128;
const GRAIN = GRAIN_SECTORS * SECTOR;
const GTES_PER_GT = 512;
const GT_SECTORS = (GTES_PER_GT * 4) / SECTOR;
/** Grain table entries are u32 sector offsets: the file cannot reach past 2^32 sectors. */
const MAX_SECTOR = 0xffffffff;

const FLAG_NEWLINE_TEST = 0x1;
const FLAG_COMPRESSED = 0x10000;
const FLAG_MARKERS = 0x20000;
const COMPRESS_DEFLATE = 1;

const MARKER_EOS = 0;
const MARKER_GT = 1;
const MARKER_GD = 2;
const MARKER_FOOTER = 3;

/** Disk adapters a VMDK descriptor may name. */
export type VmdkAdapterType = 'ide' | 'buslogic' | 'lsilogic' | 'legacyESX';

/** Options of {@link writeStreamOptimizedVmdk}. */
export interface VmdkStreamOptions extends DeflateOptions {
  /** The adapter in the descriptor. @default 'lsilogic' */
  readonly adapterType?: VmdkAdapterType;
  /** `ddb.virtualHWVersion`. @default 4 */
  readonly hwVersion?: number;
  /** The file name in the descriptor's extent line. @default 'disk.vmdk' */
  readonly fileName?: string;
  /** The content id (CID) in the descriptor. @default - random */
  readonly cid?: number;
}

/** Sectors rounded up. */
function sectorsFor(bytes: number): number {
  return Math.ceil(bytes / SECTOR);
}

/** The descriptor text of a stream-optimized disk of `capacity` sectors. */
export function streamDescriptor(capacity: number, options: VmdkStreamOptions = {}): string {
  const adapter = options.adapterType ?? 'lsilogic';
  const heads = adapter === 'ide' ? 16 : 255;
  const sectors = 63;
  const cylinders = Math.max(1, Math.min(adapter === 'ide' ? 16383 : 65535, Math.floor(capacity / (heads * sectors))));
  const cid = (options.cid ?? randomBytes(4).readUInt32LE(0)) >>> 0;
  const name = (options.fileName ?? 'disk.vmdk').replace(/["\r\n]/g, '_');
  return [
    '# Disk DescriptorFile',
    'version=1',
    'encoding="UTF-8"',
    `CID=${cid.toString(16).padStart(8, '0')}`,
    'parentCID=ffffffff',
    'createType="streamOptimized"',
    '',
    '# Extent description',
    `RW ${capacity} SPARSE "${name}"`,
    '',
    '# The Disk Data Base',
    '#DDB',
    '',
    `ddb.adapterType = "${adapter}"`,
    `ddb.geometry.cylinders = "${cylinders}"`,
    `ddb.geometry.heads = "${heads}"`,
    `ddb.geometry.sectors = "${sectors}"`,
    `ddb.virtualHWVersion = "${options.hwVersion ?? 4}"`,
    '',
  ].join('\n');
}

/** The 512-byte sparse header (or, with a real `gdOffset`, the footer's copy of it). */
function sparseHeader(capacity: number, descriptorSectors: number, overHead: number, gdOffset: bigint): Buffer {
  const h = Buffer.alloc(SECTOR);
  h.write('KDMV', 0, 'latin1');
  h.writeUInt32LE(3, 4);
  h.writeUInt32LE(FLAG_NEWLINE_TEST | FLAG_COMPRESSED | FLAG_MARKERS, 8);
  h.writeBigUInt64LE(BigInt(capacity), 12);
  h.writeBigUInt64LE(BigInt(GRAIN_SECTORS), 20);
  h.writeBigUInt64LE(1n, 28); // descriptorOffset
  h.writeBigUInt64LE(BigInt(descriptorSectors), 36);
  h.writeUInt32LE(GTES_PER_GT, 44);
  h.writeBigUInt64LE(0n, 48); // rgdOffset: no redundant directory
  h.writeBigUInt64LE(gdOffset, 56);
  h.writeBigUInt64LE(BigInt(overHead), 64);
  h.writeUInt8(0, 72); // uncleanShutdown
  h.write('\n \r\n', 73, 'latin1');
  h.writeUInt16LE(COMPRESS_DEFLATE, 77);
  return h;
}

/** A metadata marker sector. */
function marker(numSectors: number, type: number): Buffer {
  const m = Buffer.alloc(SECTOR);
  m.writeBigUInt64LE(BigInt(numSectors), 0);
  m.writeUInt32LE(0, 8);
  m.writeUInt32LE(type, 12);
  return m;
}

/** The layout of a stream-optimized VMDK of `virtualSize` bytes. */
function layoutOf(virtualSize: number) {
  if (!Number.isSafeInteger(virtualSize) || virtualSize < 0) {
    throw new RangeError(`invalid virtual size ${virtualSize}`);
  }
  const capacity = sectorsFor(virtualSize);
  const totalGrains = Math.ceil(capacity / GRAIN_SECTORS);
  const numGts = Math.ceil(totalGrains / GTES_PER_GT);
  const gdSectors = Math.max(1, sectorsFor(numGts * 4));
  if (1 + gdSectors + numGts * (1 + GT_SECTORS) > MAX_SECTOR) {
    throw new RangeError(`a ${virtualSize}-byte disk is beyond what a stream-optimized VMDK can describe`);
  }
  return { capacity, totalGrains, numGts, gdSectors };
}

/** What fixes the bytes of the output besides the data: the descriptor's fields and the compression level. */
interface VmdkSettings {
  readonly cid: number;
  readonly adapterType: VmdkAdapterType;
  readonly hwVersion: number;
  readonly fileName: string;
  readonly level: number;
}

/** State of a paused stream-optimized VMDK. */
export interface VmdkWriterState extends VmdkSettings {
  readonly kind: 'vmdk';
  /** Virtual offset the state was taken at. */
  readonly resumeAt: number;
  /** Sink position where the output began. */
  readonly start: number;
  /** Bytes of output so far. */
  readonly written: number;
  /** Grains written. */
  readonly grains: number;
  /** Sectors of the descriptor and of the whole header area (for the footer's copy of the header). */
  readonly descriptorSectors: number;
  readonly overHead: number;
  /** The grain table being filled (-1 for none) and its entries, packed ('' for none). */
  readonly gtIndex: number;
  readonly gt: string;
  /** Directory entries kept (up to the last one written) and those entries, packed. */
  readonly gdEntries: number;
  readonly gd: string;
}

/** A stream-optimized VMDK, written in segments. */
export class VmdkStreamWriter implements WriterSession {
  /** Starts an output: writes the header and descriptor. */
  public static async begin(virtualSize: number, sink: Sink, options: VmdkStreamOptions = {}): Promise<VmdkStreamWriter> {
    const layout = layoutOf(virtualSize);
    const level = options.level ?? zlibConstants.Z_DEFAULT_COMPRESSION;
    if (!Number.isInteger(level) || level < -1 || level > 9) throw new RangeError(`invalid zlib level ${level}`);
    const settings: VmdkSettings = {
      cid: (options.cid ?? randomBytes(4).readUInt32LE(0)) >>> 0,
      adapterType: options.adapterType ?? 'lsilogic',
      hwVersion: options.hwVersion ?? 4,
      fileName: options.fileName ?? 'disk.vmdk',
      level,
    };
    const descriptor = Buffer.from(streamDescriptor(layout.capacity, settings), 'utf8');
    const descriptorSectors = sectorsFor(descriptor.length);
    const overHead = Math.ceil((1 + descriptorSectors) / GRAIN_SECTORS) * GRAIN_SECTORS;
    const writer = new VmdkStreamWriter(sink, virtualSize, settings, options.concurrency, descriptorSectors, overHead, sink.position, 0);
    const head = Buffer.alloc(overHead * SECTOR);
    sparseHeader(layout.capacity, descriptorSectors, overHead, 0xffffffffffffffffn).copy(head, 0);
    descriptor.copy(head, SECTOR);
    await writer.out.write(head);
    return writer;
  }

  /**
   * Continues the output a checkpoint's writer `state` describes. Options given again must agree
   * with those the output was started with (a RangeError names the one that does not).
   */
  public static restore(state: unknown, ctx: ResumeContext, options: VmdkStreamOptions = {}): VmdkStreamWriter {
    const s = objectField(state, 'the VMDK writer state');
    oneOf(s.kind, ['vmdk'], 'the writer kind');
    checkResumePoint(s, ctx);
    const layout = layoutOf(ctx.virtualSize);
    const settings: VmdkSettings = {
      cid: intField(s.cid, 'the CID', 0, 0xffffffff),
      adapterType: stringField(s.adapterType, 'the adapter type', 64) as VmdkAdapterType,
      hwVersion: intField(s.hwVersion, 'the hardware version', 0, 0xffff),
      fileName: stringField(s.fileName, 'the file name'),
      level: intField(s.level, 'the compression level', -1, 9),
    };
    sameOption(options.cid === undefined ? undefined : options.cid >>> 0, settings.cid, 'CID');
    sameOption(options.adapterType, settings.adapterType, 'adapter type');
    sameOption(options.hwVersion, settings.hwVersion, 'hardware version');
    sameOption(options.fileName, settings.fileName, 'file name');
    sameOption(options.level, settings.level, 'compression level');

    const start = intField(s.start, 'the output start', 0, ctx.sink.position);
    const written = intField(s.written, 'the bytes written', 0);
    if (written !== ctx.sink.position - start || written % SECTOR !== 0) {
      throw new RangeError(`checkpoint: the VMDK writer wrote ${written} bytes from ${start}; the sink holds ${ctx.sink.position - start} since`);
    }
    const descriptorSectors = intField(s.descriptorSectors, 'the descriptor sectors', 1, 2 * GRAIN_SECTORS);
    const overHead = intField(s.overHead, 'the header sectors', GRAIN_SECTORS, 3 * GRAIN_SECTORS);
    if (overHead !== Math.ceil((1 + descriptorSectors) / GRAIN_SECTORS) * GRAIN_SECTORS || written < overHead * SECTOR) {
      throw new RangeError('checkpoint: the VMDK header sectors do not fit the descriptor or the bytes written');
    }
    if (ctx.resumeAt % GRAIN !== 0) throw new RangeError(`checkpoint: a VMDK cannot resume at ${ctx.resumeAt}, inside a grain`);
    const grains = intField(s.grains, 'the grains written', 0, ctx.resumeAt / GRAIN);
    const gtIndex = intField(s.gtIndex, 'the open grain table', -1, layout.numGts - 1);
    if (gtIndex * GTES_PER_GT * GRAIN >= Math.max(ctx.resumeAt, 1)) {
      throw new RangeError(`checkpoint: grain table ${gtIndex} lies past the resume offset`);
    }
    const gt = gtIndex < 0 ? undefined : unpackBytes(s.gt, GT_SECTORS * SECTOR, 'the open grain table');
    if (gtIndex < 0 && s.gt !== '') throw new RangeError('checkpoint: a grain table is given but none is open');
    const gdEntries = intField(s.gdEntries, 'the directory entries', 0, layout.numGts);
    const gd = Buffer.alloc(layout.gdSectors * SECTOR);
    unpackBytes(s.gd, gdEntries * 4, 'the grain directory').copy(gd);

    const writer = new VmdkStreamWriter(ctx.sink, ctx.virtualSize, settings, options.concurrency, descriptorSectors, overHead, start, written);
    writer.grains = grains;
    writer.gtIndex = gtIndex;
    writer.gt = gt;
    writer.gd = gd;
    writer.gdEntries = gdEntries;
    return writer;
  }

  private readonly out: Coalescer;
  private readonly layout: ReturnType<typeof layoutOf>;
  private gd: Buffer;
  /** Directory entries up to the last one set. */
  private gdEntries = 0;
  private gt: Buffer | undefined;
  private gtIndex = -1;
  private grains = 0;

  private constructor(
    sink: Sink,
    private readonly virtualSize: number,
    private readonly settings: VmdkSettings,
    private readonly concurrency: number | undefined,
    private readonly descriptorSectors: number,
    private readonly overHead: number,
    private readonly start: number,
    written: number,
  ) {
    this.layout = layoutOf(virtualSize);
    this.out = new Coalescer(sink, written);
    this.gd = Buffer.alloc(this.layout.gdSectors * SECTOR);
  }

  public async consume(chunks: AsyncIterable<WriterChunk>, from: number): Promise<void> {
    const dataGrains = nonZero(blocksOf({ virtualSize: this.virtualSize, chunks }, GRAIN, from));
    for await (const { item, result } of deflateOrdered(dataGrains, { level: this.settings.level, concurrency: this.concurrency })) {
      const g = item.index;
      const t = Math.floor(g / GTES_PER_GT);
      if (t !== this.gtIndex) {
        await this.flushGt();
        this.gtIndex = t;
        this.gt = Buffer.alloc(GT_SECTORS * SECTOR);
      }
      const at = checkedSector(this.sectorNow());
      const rec = Buffer.alloc(Math.ceil((12 + result.length) / SECTOR) * SECTOR);
      rec.writeBigUInt64LE(BigInt(g * GRAIN_SECTORS), 0);
      rec.writeUInt32LE(result.length, 8);
      result.copy(rec, 12);
      await this.out.write(rec);
      this.gt!.writeUInt32LE(at, (g % GTES_PER_GT) * 4);
      this.grains++;
    }
  }

  public async suspend(resumeAt: number): Promise<VmdkWriterState> {
    if (resumeAt % GRAIN !== 0) throw new RangeError(`cannot pause a VMDK at ${resumeAt}, inside a grain`);
    await this.out.flush();
    return {
      kind: 'vmdk',
      resumeAt,
      start: this.start,
      written: this.out.written,
      grains: this.grains,
      ...this.settings,
      descriptorSectors: this.descriptorSectors,
      overHead: this.overHead,
      gtIndex: this.gt ? this.gtIndex : -1,
      gt: this.gt ? packBytes(this.gt) : '',
      gdEntries: this.gdEntries,
      gd: packBytes(this.gd.subarray(0, this.gdEntries * 4)),
    };
  }

  public async finish(): Promise<WriteResult> {
    await this.flushGt();
    const { capacity, gdSectors, totalGrains } = this.layout;
    await this.out.write(marker(gdSectors, MARKER_GD));
    const gdOffset = checkedSector(this.sectorNow());
    await this.out.write(this.gd);
    await this.out.write(marker(1, MARKER_FOOTER));
    await this.out.write(sparseHeader(capacity, this.descriptorSectors, this.overHead, BigInt(gdOffset)));
    await this.out.write(marker(0, MARKER_EOS));
    await this.out.flush();
    return { bytesWritten: this.out.written, grainsWritten: this.grains, zeroGrainsSkipped: totalGrains - this.grains };
  }

  private sectorNow(): number {
    if (this.out.written % SECTOR !== 0) throw new Error('stream-optimized VMDK output lost its sector alignment');
    return this.out.written / SECTOR;
  }

  /** Writes the open grain table and points the directory at it. */
  private async flushGt(): Promise<void> {
    if (!this.gt) return;
    await this.out.write(marker(GT_SECTORS, MARKER_GT));
    this.gd.writeUInt32LE(checkedSector(this.sectorNow()), this.gtIndex * 4);
    this.gdEntries = this.gtIndex + 1;
    await this.out.write(this.gt);
    this.gt = undefined;
  }
}

/**
 * Writes the virtual disk of `input` to `sink` as a stream-optimized VMDK. Does not close the sink.
 */
export async function writeStreamOptimizedVmdk(
  input: WriterInput,
  sink: Sink,
  options: VmdkStreamOptions = {},
): Promise<WriteResult> {
  const writer = await VmdkStreamWriter.begin(input.virtualSize, sink, options);
  await writer.consume(input.chunks, 0);
  return writer.finish();
}

function checkedSector(sector: number): number {
  if (sector > MAX_SECTOR) {
    throw new RangeError('the stream-optimized VMDK grows past 2 TiB, beyond what its grain tables can address');
  }
  return sector;
}

/** The blocks whose bytes are not all zero. */
async function* nonZero<T extends { readonly data: Buffer }>(blocks: AsyncIterable<T>): AsyncIterable<T> {
  for await (const b of blocks) if (!isZero(b.data)) yield b;
}

/** Joins small writes into runs of about 1 MiB, so that a sink sees few, large writes. */
class Coalescer {
  private static readonly RUN = 1024 * 1024;
  private pending: Buffer[] = [];
  private pendingBytes = 0;

  public constructor(
    private readonly sink: Sink,
    /** Bytes handed to this writer so far. */
    public written = 0,
  ) {}

  public async write(buf: Buffer): Promise<void> {
    this.pending.push(buf);
    this.pendingBytes += buf.length;
    this.written += buf.length;
    if (this.pendingBytes >= Coalescer.RUN) await this.flush();
  }

  public async flush(): Promise<void> {
    if (this.pendingBytes === 0) return;
    const run = this.pending.length === 1 ? this.pending[0] : Buffer.concat(this.pending, this.pendingBytes);
    this.pending = [];
    this.pendingBytes = 0;
    await this.sink.write(run);
  }
}
