/* eslint-disable no-bitwise -- bit fields, bitmaps and checksums of a binary format */
/**
 * VMDK: hosted sparse extents (`KDMV`: monolithicSparse, streamOptimized in both the layout with
 * the grain directory near the header and the layout with the grain directory and a copy of the
 * header in a footer at the end), and recognition of what cannot be read from one file alone
 * (descriptor files of flat, split and ESX disks, seSparse, COWD redo logs).
 *
 * Layout (VMware Virtual Disk Format 1.1): a 512-byte header in sector 0, the text descriptor,
 * a grain directory (GD) of u32 sector offsets of grain tables (GT), each GT holding u32 sector
 * offsets of grains. In a stream-optimized extent each grain starts with a marker (lba u64, size
 * u32) followed by a zlib stream; metadata (GT, GD, footer, end of stream) follows a marker with
 * size 0 and a type.
 *
 * Opening reads the first 64 KiB (header and descriptor), then either the last three sectors
 * (footer layout) or the end of the grain directory and the grain table of the last allocated grain
 * (to tell a file that was cut short). Otherwise the GD and GTs are read lazily, a page at a time,
 * through a small bounded cache.
 */
import { inflateSync } from 'node:zlib';
import { ImageFormatError, ImageReadError, UnsupportedImageError } from './errors';
import { finding, type Finding } from './findings';
import { readBlocks, type DiskImage, type Extent } from './image';
import { remember } from './lru';
import { readExact, type ByteSource } from './source';
import { looksLikeDescriptor, parseVmdkDescriptor, type VmdkDescriptor } from './vmdk-descriptor';

export { parseVmdkDescriptor } from './vmdk-descriptor';
export type { VmdkDescriptor, VmdkExtentLine, VmdkAccess } from './vmdk-descriptor';

const SECTOR = 512;
/** Bytes read at open: the header and, in every known writer's layout, the descriptor. */
const HEAD_BYTES = 64 * 1024;
/** Descriptors larger than this are not descriptors. */
const MAX_DESCRIPTOR_BYTES = 1024 * 1024;
/** gdOffset meaning "the grain directory is described by the footer". */
const GD_AT_END = 0xffffffffffffffffn;
/** Largest grain accepted (8 MiB); VMware writes 64 KiB. */
const MAX_GRAIN_SECTORS = 16384;
/** Largest grain table accepted, in entries (VMware and qemu: 512). */
const MAX_GTES_PER_GT = 512;
/** A compressed grain may exceed its grain by the deflate framing of incompressible data. */
const COMPRESSED_SLACK = 4096;
/** Table pages: entries are fetched this many bytes at a time. */
const PAGE = 4096;
/** At most this many table pages are cached (1 MiB). */
const MAX_PAGES = 256;
/** How many grain tables {@link SparseExtent.checkLastGrain} looks at, at most. */
const LAST_GRAIN_TABLES = 8;
/** The first read of a compressed grain: its marker and what usually is all of its data. */
const FIRST_GRAIN_READ = 4096;
/** At most this many inflated grains are cached. */
const MAX_GRAINS = 4;

const FLAG_NEWLINE_TEST = 1 << 0;
const FLAG_ZERO_GRAIN_GTE = 1 << 2;
const FLAG_MARKERS = 1 << 17;

const MARKER_EOS = 0;
const MARKER_FOOTER = 3;

/** The fields of a hosted sparse extent header. */
interface SparseHeader {
  readonly version: number;
  readonly flags: number;
  /** Sectors. */
  readonly capacity: number;
  /** Sectors. */
  readonly grainSize: number;
  readonly descriptorOffset: number;
  readonly descriptorSize: number;
  readonly numGTEsPerGT: number;
  /** Sector of the grain directory, or 'footer'. */
  readonly gdOffset: number | 'footer';
  readonly uncleanShutdown: boolean;
  readonly compressAlgorithm: number;
}

/**
 * Opens a VMDK. Hosted sparse extents (monolithicSparse, streamOptimized) are read; descriptor
 * files, split and ESX disks, seSparse and COWD throw {@link UnsupportedImageError} with the
 * finding code that explains them and what could be learned (createType, virtual size).
 */
export async function openVmdk(source: ByteSource): Promise<DiskImage> {
  const head = await source.read(0, Math.min(source.size, HEAD_BYTES));
  if (head.length >= 4 && head.toString('latin1', 0, 4) === 'KDMV') {
    return openSparse(source, head);
  }
  if (head.length >= 4 && head.toString('latin1', 0, 4) === 'COWD') {
    const sectors = head.length >= 16 ? head.readUInt32LE(12) : undefined;
    throw new UnsupportedImageError(
      `${source.name} is an ESX COWD (redo log) sparse extent, which holds only the changes against a parent disk`,
      'VMDK_COWD',
      { format: 'vmdk', subformat: 'vmfsSparse', ...(sectors !== undefined ? { virtualSize: sectors * SECTOR } : {}) },
    );
  }
  if (looksLikeDescriptor(head)) {
    return descriptorOnly(source, head);
  }
  throw new ImageFormatError(`${source.name} is not a VMDK: it starts with neither KDMV, COWD nor a descriptor`, 'NOT_VMDK');
}

/** A descriptor file alone: tell what it describes, and why it cannot be read by itself. */
async function descriptorOnly(source: ByteSource, head: Buffer): Promise<never> {
  if (source.size > MAX_DESCRIPTOR_BYTES) {
    throw new ImageFormatError(`${source.name} starts like a VMDK descriptor but is ${source.size} bytes long`);
  }
  const text = source.size <= head.length ? head : await readExact(source, 0, source.size, 'VMDK descriptor');
  const d = parseVmdkDescriptor(text.toString('utf8'));
  const info = { format: 'vmdk', subformat: d.createType, virtualSize: d.virtualSize };
  const kind = unreadableKind(d);
  const files = d.extents.map((e) => e.file).filter((f) => f !== undefined);
  const where = files.length ? `; its data is in ${files.map((f) => `"${f}"`).join(', ')}` : '';
  switch (kind) {
    case 'VMDK_SESPARSE':
      throw new UnsupportedImageError(`${source.name} describes a ${d.createType} disk, which VM Import does not support${where}`, kind, info);
    case 'VMDK_SPLIT_EXTENTS':
      throw new UnsupportedImageError(`${source.name} describes a ${d.createType} disk split into separate extent files${where}`, kind, info);
    default:
      throw new UnsupportedImageError(`${source.name} is only the descriptor of a ${d.createType} disk${where}`, 'VMDK_DESCRIPTOR_ONLY', info);
  }
}

/** Why a disk with this descriptor cannot be read from one file, or undefined when it can. */
function unreadableKind(d: VmdkDescriptor): 'VMDK_SESPARSE' | 'VMDK_SPLIT_EXTENTS' | undefined {
  const t = d.createType.toLowerCase();
  if (t === 'sesparse' || t === 'vmfssparse' || d.extents.some((e) => e.type === 'SESPARSE' || e.type === 'VMFSSPARSE')) {
    return 'VMDK_SESPARSE';
  }
  if (t.startsWith('twogbmaxextent') || d.extents.length > 1) return 'VMDK_SPLIT_EXTENTS';
  return undefined;
}

/** Parses and validates a hosted sparse extent header (the one at sector 0 or the footer copy). */
function parseHeader(buf: Buffer, name: string, where: string): SparseHeader {
  const u64 = (off: number, what: string): number => {
    const v = buf.readBigUInt64LE(off);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new ImageFormatError(`${name}: ${where} ${what} is ${v}, beyond any disk`);
    }
    return Number(v);
  };
  const version = buf.readUInt32LE(4);
  if (version < 1 || version > 3) {
    throw new ImageFormatError(`${name}: ${where} has VMDK sparse version ${version}; versions 1 to 3 are known`, 'UNSUPPORTED_VERSION');
  }
  const flags = buf.readUInt32LE(8);
  const capacity = u64(12, 'capacity');
  const grainSize = u64(20, 'grainSize');
  const descriptorOffset = u64(28, 'descriptorOffset');
  const descriptorSize = u64(36, 'descriptorSize');
  const numGTEsPerGT = buf.readUInt32LE(44);
  const gdRaw = buf.readBigUInt64LE(56);
  const gdOffset = gdRaw === GD_AT_END ? 'footer' : u64(56, 'gdOffset');
  if (flags & FLAG_NEWLINE_TEST && !(buf[73] === 0x0a && buf[74] === 0x20 && buf[75] === 0x0d && buf[76] === 0x0a)) {
    throw new ImageFormatError(`${name}: ${where} newline test bytes are damaged: the file was transferred in text mode`);
  }
  if (capacity > Math.floor(Number.MAX_SAFE_INTEGER / SECTOR)) {
    throw new ImageFormatError(`${name}: ${where} capacity of ${capacity} sectors is beyond any disk`);
  }
  if (grainSize < 1 || grainSize > MAX_GRAIN_SECTORS) {
    throw new ImageFormatError(`${name}: ${where} grain size of ${grainSize} sectors is outside 1..${MAX_GRAIN_SECTORS}`);
  }
  if (numGTEsPerGT < 1 || numGTEsPerGT > MAX_GTES_PER_GT) {
    throw new ImageFormatError(`${name}: ${where} has ${numGTEsPerGT} entries per grain table; 1..${MAX_GTES_PER_GT} are valid`);
  }
  return {
    version,
    flags,
    capacity,
    grainSize,
    descriptorOffset,
    descriptorSize,
    numGTEsPerGT,
    gdOffset,
    uncleanShutdown: buf[72] !== 0,
    compressAlgorithm: buf.readUInt16LE(77),
  };
}

async function openSparse(source: ByteSource, head: Buffer): Promise<DiskImage> {
  const name = source.name;
  if (head.length < SECTOR) {
    throw new ImageReadError(`${name}: the VMDK header needs 512 bytes but the file has ${source.size}; the file is truncated`, 'TRUNCATED');
  }
  const first = parseHeader(head, name, 'header');

  // The descriptor (embedded text) says what kind of disk this extent belongs to.
  let descriptor: VmdkDescriptor | undefined;
  if (first.descriptorOffset > 0 && first.descriptorSize > 0) {
    const bytes = first.descriptorSize * SECTOR;
    const at = first.descriptorOffset * SECTOR;
    if (bytes > MAX_DESCRIPTOR_BYTES || at + bytes > source.size) {
      throw new ImageFormatError(
        `${name}: the embedded descriptor (sector ${first.descriptorOffset}, ${first.descriptorSize} sectors) lies outside the file or is too large`,
      );
    }
    const text = at + bytes <= head.length ? head.subarray(at, at + bytes) : await readExact(source, at, bytes, 'VMDK descriptor');
    const nul = text.indexOf(0);
    const body = text.toString('utf8', 0, nul >= 0 ? nul : text.length);
    if (body.trim() !== '') descriptor = parseVmdkDescriptor(body);
  }
  const capacityBytes = first.capacity * SECTOR;
  if (!descriptor) {
    throw new UnsupportedImageError(
      `${name} is a sparse extent without an embedded descriptor: it is one extent of a disk whose descriptor is another file`,
      'VMDK_SPLIT_EXTENTS',
      { format: 'vmdk' },
    );
  }
  const createType = descriptor.createType;
  const kind = unreadableKind(descriptor);
  if (kind) {
    throw new UnsupportedImageError(
      kind === 'VMDK_SESPARSE'
        ? `${name} is a ${createType} disk, which VM Import does not support`
        : `${name} is one extent of a ${createType} disk split into ${descriptor.extents.length} extent files`,
      kind,
      { format: 'vmdk', subformat: createType, virtualSize: kind === 'VMDK_SPLIT_EXTENTS' ? descriptor.virtualSize : capacityBytes },
    );
  }
  if (first.compressAlgorithm > 1) {
    throw new UnsupportedImageError(
      `${name}: grains are compressed with algorithm ${first.compressAlgorithm}; only deflate (1) is known`,
      'VMDK_UNSUPPORTED_COMPRESSION',
      { format: 'vmdk', subformat: createType, virtualSize: capacityBytes },
    );
  }

  // When the header leaves gdOffset to the footer, the file ends with the footer marker, the
  // footer and the end-of-stream marker; without them it was cut short.
  let header = first;
  if (first.gdOffset === 'footer') {
    if (source.size < 4 * SECTOR) {
      throw truncated(name, 'footer');
    }
    const tail = await readExact(source, source.size - 3 * SECTOR, 3 * SECTOR, 'VMDK footer');
    const footerMarker = marker(tail, 0);
    if (
      footerMarker.size !== 0 || footerMarker.type !== MARKER_FOOTER || footerMarker.numSectors !== 1n ||
      tail.toString('latin1', SECTOR, SECTOR + 4) !== 'KDMV' || !isEos(tail, 2 * SECTOR)
    ) {
      throw truncated(name, 'footer marker, footer and end-of-stream marker');
    }
    header = parseHeader(tail.subarray(SECTOR, 2 * SECTOR), name, 'footer');
    if (header.gdOffset === 'footer') {
      throw new ImageFormatError(`${name}: the footer does not say where the grain directory is`);
    }
    if (header.compressAlgorithm > 1) {
      throw new UnsupportedImageError(
        `${name}: grains are compressed with algorithm ${header.compressAlgorithm}; only deflate (1) is known`,
        'VMDK_UNSUPPORTED_COMPRESSION',
        { format: 'vmdk', subformat: createType, virtualSize: header.capacity * SECTOR },
      );
    }
  }

  const extent = new SparseExtent(source, header, (header.flags & FLAG_MARKERS) !== 0);
  const virtualSize = header.capacity * SECTOR;
  if (first.gdOffset !== 'footer') {
    // With the tables ahead of the grains, a file cut short loses its last grains first.
    await extent.checkLastGrain();
  }

  const findings: Finding[] = [];
  const compressed = header.compressAlgorithm === 1;
  if (createType !== 'streamOptimized') {
    findings.push(finding('VMDK_NOT_STREAM_OPTIMIZED', `The VMDK is ${createType}, not streamOptimized.`));
  } else if (!compressed) {
    findings.push(finding('VMDK_NOT_STREAM_OPTIMIZED', 'The VMDK says streamOptimized but its grains are not compressed (compressAlgorithm 0).'));
  }
  if (descriptor.hasParent) {
    const parent = descriptor.parentFileNameHint ? ` "${descriptor.parentFileNameHint}"` : '';
    findings.push(finding('DIFFERENCING_DISK', `The VMDK is a delta disk on the parent${parent} (parentCID ${descriptor.parentCid}).`));
  }

  const details: Record<string, string | number | boolean> = {
    version: header.version,
    createType,
    grainSize: header.grainSize * SECTOR,
    compression: compressed ? 'deflate' : 'none',
    gdLocation: first.gdOffset === 'footer' ? 'footer' : 'header',
  };
  if (descriptor.hwVersion !== undefined) details.hwVersion = descriptor.hwVersion;
  if (descriptor.adapterType !== undefined) details.adapterType = descriptor.adapterType;
  if (header.uncleanShutdown) details.uncleanShutdown = true;
  if (descriptor.parentFileNameHint !== undefined && descriptor.hasParent) details.parent = descriptor.parentFileNameHint;

  return {
    format: 'vmdk',
    subformat: createType,
    virtualSize,
    findings,
    details,
    read: (offset, length) => {
      return readBlocks(virtualSize, extent.grainBytes, offset, length, (grain, within, n) => extent.readInGrain(grain, within, n));
    },
    extents: () => extent.extents(),
  };
}

function truncated(name: string, what: string): ImageReadError {
  return new ImageReadError(`${name}: the stream-optimized VMDK does not end with its ${what}; the file is truncated`, 'TRUNCATED');
}

function marker(buf: Buffer, off: number): { numSectors: bigint; size: number; type: number } {
  return { numSectors: buf.readBigUInt64LE(off), size: buf.readUInt32LE(off + 8), type: buf.readUInt32LE(off + 12) };
}

function isEos(buf: Buffer, off: number): boolean {
  const m = marker(buf, off);
  return m.numSectors === 0n && m.size === 0 && m.type === MARKER_EOS;
}

/** The grain directory and grain tables of one sparse extent, read lazily. */
class SparseExtent {
  public readonly grainBytes: number;
  private readonly gdEntries: number;
  private readonly gdAt: number;
  private readonly gtBytes: number;
  private readonly virtualSize: number;
  private readonly compressed: boolean;
  private readonly zeroGrainGte: boolean;
  private readonly pages = new Map<string, Promise<Buffer>>();
  private readonly grains = new Map<number, Promise<Buffer>>();

  public constructor(private readonly source: ByteSource, header: SparseHeader, private readonly markers: boolean) {
    this.grainBytes = header.grainSize * SECTOR;
    this.virtualSize = header.capacity * SECTOR;
    const grains = Math.ceil(header.capacity / header.grainSize);
    this.gdEntries = Math.ceil(grains / header.numGTEsPerGT);
    this.gtBytes = header.numGTEsPerGT * 4;
    this.compressed = header.compressAlgorithm === 1;
    this.zeroGrainGte = (header.flags & FLAG_ZERO_GRAIN_GTE) !== 0;
    const gdSector = header.gdOffset as number;
    this.gdAt = gdSector * SECTOR;
    if (this.gdEntries > 0 && (gdSector === 0 || this.gdAt + this.gdEntries * 4 > source.size)) {
      throw new ImageFormatError(
        `${source.name}: the grain directory (sector ${gdSector}, ${this.gdEntries} entries) lies outside the file of ${source.size} bytes`,
      );
    }
  }

  private get gtesPerGt(): number {
    return this.gtBytes / 4;
  }

  /** Reads `n` bytes at `within` of grain `grain`, or undefined when the grain reads as zeros. */
  public async readInGrain(grain: number, within: number, n: number): Promise<Buffer | undefined> {
    const sector = await this.grainSector(grain);
    if (sector === 0 || (sector === 1 && this.zeroGrainGte)) return undefined;
    const at = sector * SECTOR;
    if (at >= this.source.size) {
      const lba = grain * (this.grainBytes / SECTOR);
      throw new ImageReadError(
        `${this.source.name}: the grain table points LBA ${lba} at sector ${sector}, past the end of the file (${this.source.size} bytes): the file is truncated or its grain table is damaged`,
        'TRUNCATED',
      );
    }
    if (!this.compressed) {
      return readExact(this.source, at + within, n, `grain ${grain}`);
    }
    const data = await this.inflated(grain, sector);
    return data.subarray(within, within + n);
  }

  /**
   * Checks that the last allocated grain (by LBA) lies inside the file. Writers that put the
   * tables ahead of the grains (qemu-img, VMware's monolithicSparse) append grains in LBA order,
   * so a file cut short loses that grain first. The scan is bounded (one GD page, a few GTs): when
   * the end of the disk is empty, nothing is checked here, and reads still find what is missing.
   */
  public async checkLastGrain(): Promise<void> {
    const per = this.gtesPerGt;
    const stop = Math.max(0, this.gdEntries - PAGE / 4);
    const last: Array<{ g: number; gt: number }> = [];
    for (let g = this.gdEntries - 1; g >= stop && last.length < LAST_GRAIN_TABLES; g--) {
      const gt = await this.gdEntry(g);
      if (gt !== 0) last.push({ g, gt });
    }
    if (last.length === 0) return;
    // Writers lay grain tables out one after the other: fetch those tables in one read if so.
    const gtSectors = Math.ceil(this.gtBytes / SECTOR);
    const lo = last[last.length - 1].gt;
    const contiguous = last.every(({ g, gt }) => gt - lo === (g - last[last.length - 1].g) * gtSectors);
    const spanBytes = (last[0].gt - lo) * SECTOR + this.gtBytes;
    const span = contiguous && lo * SECTOR + spanBytes <= this.source.size
      ? await readExact(this.source, lo * SECTOR, spanBytes, 'grain tables')
      : undefined;
    for (const { g, gt } of last) {
      const table = span ? span.subarray((gt - lo) * SECTOR, (gt - lo) * SECTOR + this.gtBytes) : await this.gtPage(gt, 0, this.gtBytes);
      for (let i = per - 1; i >= 0; i--) {
        const sector = table.readUInt32LE(i * 4);
        if (sector === 0 || (sector === 1 && this.zeroGrainGte)) continue;
        const grain = g * per + i;
        const at = sector * SECTOR;
        let end = at + Math.min(this.grainBytes, this.virtualSize - grain * this.grainBytes);
        if (this.markers && at + 12 <= this.source.size) {
          end = at + 12 + (await readExact(this.source, at, 12, 'grain marker')).readUInt32LE(8);
        }
        if (end > this.source.size) throw this.pastEnd(grain, sector);
        return;
      }
    }
  }

  private pastEnd(grain: number, sector: number): ImageReadError {
    const lba = grain * (this.grainBytes / SECTOR);
    return new ImageReadError(
      `${this.source.name}: the grain of LBA ${lba} (sector ${sector}) runs past the end of the file (${this.source.size} bytes); the file is truncated`,
      'TRUNCATED',
    );
  }

  /** The allocated grains, merged into runs. */
  public async *extents(): AsyncIterable<Extent> {
    let runStart = -1;
    let runEnd = -1;
    const per = this.gtesPerGt;
    // Each grain table belongs to one GD entry; one used twice is damage, and refusing it keeps
    // the scan within the size of the file.
    const seen = new Set<number>();
    for (let g = 0; g < this.gdEntries; g++) {
      const gt = await this.gdEntry(g);
      if (gt === 0) continue;
      if (seen.has(gt)) {
        throw new ImageFormatError(`${this.source.name}: the grain table at sector ${gt} is listed twice in the grain directory`);
      }
      seen.add(gt);
      const table = await this.gtPage(gt, 0, this.gtBytes);
      for (let i = 0; i < per; i++) {
        const grain = g * per + i;
        const start = grain * this.grainBytes;
        if (start >= this.virtualSize) break;
        const sector = table.readUInt32LE(i * 4);
        if (sector === 0 || (sector === 1 && this.zeroGrainGte)) continue;
        const end = Math.min(this.virtualSize, start + this.grainBytes);
        if (start === runEnd) {
          runEnd = end;
        } else {
          if (runStart >= 0) yield { offset: runStart, length: runEnd - runStart };
          runStart = start;
          runEnd = end;
        }
      }
    }
    if (runStart >= 0) yield { offset: runStart, length: runEnd - runStart };
  }

  private async grainSector(grain: number): Promise<number> {
    const per = this.gtesPerGt;
    const g = Math.floor(grain / per);
    const gt = await this.gdEntry(g);
    if (gt === 0) return 0;
    const i = grain - g * per;
    const pageStart = Math.floor((i * 4) / PAGE) * PAGE;
    const page = await this.gtPage(gt, pageStart, Math.min(PAGE, this.gtBytes - pageStart));
    return page.readUInt32LE(i * 4 - pageStart);
  }

  private async gdEntry(g: number): Promise<number> {
    const pageStart = Math.floor((g * 4) / PAGE) * PAGE;
    const len = Math.min(PAGE, this.gdEntries * 4 - pageStart);
    const page = await this.cachedPage(this.gdAt + pageStart, len, 'grain directory');
    return page.readUInt32LE(g * 4 - pageStart);
  }

  /** `len` bytes at `pageStart` of the grain table at sector `gtSector`. */
  private async gtPage(gtSector: number, pageStart: number, len: number): Promise<Buffer> {
    const at = gtSector * SECTOR;
    if (at + this.gtBytes > this.source.size) {
      throw new ImageFormatError(`${this.source.name}: a grain table at sector ${gtSector} lies past the end of the file`);
    }
    return this.cachedPage(at + pageStart, len, 'grain table');
  }

  private cachedPage(at: number, len: number, what: string): Promise<Buffer> {
    return remember(this.pages, `${at}+${len}`, MAX_PAGES, () => readExact(this.source, at, len, what));
  }

  private inflated(grain: number, sector: number): Promise<Buffer> {
    return remember(this.grains, grain, MAX_GRAINS, () => this.inflate(grain, sector));
  }

  private async inflate(grain: number, sector: number): Promise<Buffer> {
    const at = sector * SECTOR;
    const lba = grain * (this.grainBytes / SECTOR);
    const limit = this.grainBytes + COMPRESSED_SLACK;
    let data: Buffer;
    if (this.markers) {
      // Most grains compress well: the marker and the first few KiB usually hold the whole grain.
      const first = await readExact(this.source, at, Math.min(FIRST_GRAIN_READ, this.source.size - at), `grain marker of LBA ${lba}`);
      if (first.length < 12) throw this.pastEnd(grain, sector);
      const markedLba = first.readBigUInt64LE(0);
      const size = first.readUInt32LE(8);
      if (size === 0) {
        throw new ImageFormatError(`${this.source.name}: the grain table points LBA ${lba} at sector ${sector}, which holds a metadata marker, not a grain`);
      }
      if (markedLba !== BigInt(lba)) {
        throw new ImageFormatError(`${this.source.name}: the grain at sector ${sector} is marked as LBA ${markedLba}, but the grain table uses it for LBA ${lba}`);
      }
      if (size > limit) {
        throw new ImageFormatError(`${this.source.name}: the compressed grain of LBA ${lba} declares ${size} bytes, more than a ${this.grainBytes}-byte grain can need`);
      }
      data = 12 + size <= first.length
        ? first.subarray(12, 12 + size)
        : Buffer.concat([first.subarray(12), await this.readGrainRest(at + first.length, 12 + size - first.length, grain, sector)]);
    } else {
      data = await this.source.read(at, Math.min(limit, this.source.size - at));
    }
    let out: Buffer;
    try {
      out = inflateSync(data, { maxOutputLength: this.grainBytes });
    } catch (e) {
      throw new ImageFormatError(`${this.source.name}: the compressed grain of LBA ${lba} (sector ${sector}) is corrupt: ${(e as Error).message}`, 'CORRUPT_GRAIN');
    }
    const needed = Math.min(this.grainBytes, this.virtualSize - grain * this.grainBytes);
    if (out.length < needed) {
      throw new ImageFormatError(`${this.source.name}: the compressed grain of LBA ${lba} (sector ${sector}) inflates to ${out.length} bytes, not ${needed}`, 'CORRUPT_GRAIN');
    }
    return out;
  }

  private async readGrainRest(at: number, n: number, grain: number, sector: number): Promise<Buffer> {
    const rest = await this.source.read(at, n);
    if (rest.length !== n) throw this.pastEnd(grain, sector);
    return rest;
  }
}
