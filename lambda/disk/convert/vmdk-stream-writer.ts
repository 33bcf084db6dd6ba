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
 */
import { randomBytes } from 'node:crypto';
import { deflateOrdered, type DeflateOptions } from './deflate-pool';
import { blocksOf, type Sink, type WriteResult, type WriterInput } from './sink';
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

/**
 * Writes the virtual disk of `input` to `sink` as a stream-optimized VMDK. Does not close the sink.
 */
export async function writeStreamOptimizedVmdk(
  input: WriterInput,
  sink: Sink,
  options: VmdkStreamOptions = {},
): Promise<WriteResult> {
  if (!Number.isSafeInteger(input.virtualSize) || input.virtualSize < 0) {
    throw new RangeError(`invalid virtual size ${input.virtualSize}`);
  }
  const capacity = sectorsFor(input.virtualSize);
  const totalGrains = Math.ceil(capacity / GRAIN_SECTORS);
  const numGts = Math.ceil(totalGrains / GTES_PER_GT);
  const gdSectors = Math.max(1, sectorsFor(numGts * 4));
  if (1 + gdSectors + numGts * (1 + GT_SECTORS) > MAX_SECTOR) {
    throw new RangeError(`a ${input.virtualSize}-byte disk is beyond what a stream-optimized VMDK can describe`);
  }

  const descriptor = Buffer.from(streamDescriptor(capacity, options), 'utf8');
  const descriptorSectors = sectorsFor(descriptor.length);
  const overHead = Math.ceil((1 + descriptorSectors) / GRAIN_SECTORS) * GRAIN_SECTORS;
  const out = new Coalescer(sink);
  const sectorNow = (): number => {
    if (out.written % SECTOR !== 0) throw new Error('stream-optimized VMDK output lost its sector alignment');
    return out.written / SECTOR;
  };

  const head = Buffer.alloc(overHead * SECTOR);
  sparseHeader(capacity, descriptorSectors, overHead, 0xffffffffffffffffn).copy(head, 0);
  descriptor.copy(head, SECTOR);
  await out.write(head);

  const gd = Buffer.alloc(gdSectors * SECTOR);
  let gt: Buffer | undefined;
  let gtIndex = -1;
  let grainsWritten = 0;

  const flushGt = async (): Promise<void> => {
    if (!gt) return;
    await out.write(marker(GT_SECTORS, MARKER_GT));
    gd.writeUInt32LE(checkedSector(sectorNow()), gtIndex * 4);
    await out.write(gt);
    gt = undefined;
  };

  const dataGrains = nonZero(blocksOf(input, GRAIN));
  for await (const { item, result } of deflateOrdered(dataGrains, options)) {
    const g = item.index;
    const t = Math.floor(g / GTES_PER_GT);
    if (t !== gtIndex) {
      await flushGt();
      gtIndex = t;
      gt = Buffer.alloc(GT_SECTORS * SECTOR);
    }
    const at = checkedSector(sectorNow());
    const rec = Buffer.alloc(Math.ceil((12 + result.length) / SECTOR) * SECTOR);
    rec.writeBigUInt64LE(BigInt(g * GRAIN_SECTORS), 0);
    rec.writeUInt32LE(result.length, 8);
    result.copy(rec, 12);
    await out.write(rec);
    gt!.writeUInt32LE(at, (g % GTES_PER_GT) * 4);
    grainsWritten++;
  }
  await flushGt();

  await out.write(marker(gdSectors, MARKER_GD));
  const gdOffset = checkedSector(sectorNow());
  await out.write(gd);
  await out.write(marker(1, MARKER_FOOTER));
  await out.write(sparseHeader(capacity, descriptorSectors, overHead, BigInt(gdOffset)));
  await out.write(marker(0, MARKER_EOS));

  await out.flush();
  return { bytesWritten: out.written, grainsWritten, zeroGrainsSkipped: totalGrains - grainsWritten };
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
  /** Bytes handed to this writer so far. */
  public written = 0;
  private pending: Buffer[] = [];
  private pendingBytes = 0;

  public constructor(private readonly sink: Sink) {}

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
