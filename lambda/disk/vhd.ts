/* eslint-disable no-bitwise -- bit fields, bitmaps and checksums of a binary format */
/**
 * VHD (Microsoft Virtual Hard Disk, big-endian): fixed, dynamic and differencing disks.
 *
 * A fixed disk is its virtual bytes followed by a 512-byte footer. A dynamic or differencing disk
 * starts with a copy of the footer, then a 1024-byte dynamic header that points at the block
 * allocation table (BAT, one u32 sector offset per block, 0xFFFFFFFF = absent). Each present
 * block is a sector bitmap (one bit per sector, rounded up to a whole sector) followed by the
 * block's data; the footer itself closes the file.
 *
 * Reads: in a dynamic disk the data of a present block is read whole, whatever its bitmap says (the
 * bitmap only records which sectors were written; the others hold zeros). In a differencing
 * disk a clear bit means "this sector is in the parent": as the parent is not at hand, those
 * sectors read as zeros, and so do absent blocks; the DIFFERENCING_DISK finding says the bytes
 * are incomplete.
 *
 * This module also holds what the VHDX and VDI readers share with it: {@link LazyTable} (table
 * entries read lazily through a small page cache) and {@link tableExtents}.
 */
import { ImageFormatError, ImageReadError } from './errors';
import { finding, type Finding } from './findings';
import { readBlocks, type DiskImage, type Extent } from './image';
import { checkRange, readExact, type ByteSource } from './source';

const SECTOR = 512;
const MiB = 1024 * 1024;
const FOOTER_SIZE = 512;
const DYNAMIC_HEADER_SIZE = 1024;
const ABSENT = 0xffffffff;
const MIN_BLOCK = SECTOR;
const MAX_BLOCK = 256 * MiB;

/** Disk types of the footer. */
const DISK_TYPES: Record<number, 'fixed' | 'dynamic' | 'differencing'> = { 2: 'fixed', 3: 'dynamic', 4: 'differencing' };

// ---------------------------------------------------------------------------------------------
// Helpers shared by the VHD-family readers (VHD, VHDX, VDI)
// ---------------------------------------------------------------------------------------------

/** Options of a {@link LazyTable}. */
export interface LazyTableOptions {
  /** Entries are read a page of this many bytes at a time. @default 4096 */
  readonly pageSize?: number;
  /** At most this many pages are kept (least recently used go first). @default 32 */
  readonly maxPages?: number;
}

/**
 * A table of fixed-size entries in the image (a BAT, a block map) read lazily: only the pages
 * that hold the entries asked for, with a small bounded cache of recent pages. The table must
 * already have been checked to lie inside the source.
 */
export class LazyTable {
  private readonly pageSize: number;
  private readonly maxPages: number;
  private readonly perPage: number;
  private readonly pages = new Map<number, Buffer>();

  /**
   * @param source where the table is
   * @param offset byte offset of entry 0
   * @param count number of entries
   * @param entrySize bytes per entry (divides the page size)
   * @param what the table's name, for messages
   */
  public constructor(
    private readonly source: ByteSource,
    private readonly offset: number,
    public readonly count: number,
    public readonly entrySize: number,
    private readonly what: string,
    options: LazyTableOptions = {},
  ) {
    this.pageSize = options.pageSize ?? 4096;
    this.maxPages = Math.max(1, options.maxPages ?? 32);
    this.perPage = Math.max(1, Math.floor(this.pageSize / entrySize));
  }

  /** The bytes of entry `index` (a view: do not modify). */
  public async entry(index: number): Promise<Buffer> {
    if (!Number.isSafeInteger(index) || index < 0 || index >= this.count) {
      throw new ImageFormatError(`${this.source.name}: ${this.what} entry ${index} is outside the table of ${this.count} entries`);
    }
    const page = Math.floor(index / this.perPage);
    let data = this.pages.get(page);
    if (data) {
      this.pages.delete(page);
      this.pages.set(page, data);
    } else {
      const first = page * this.perPage;
      const n = Math.min(this.perPage, this.count - first);
      data = await readExact(this.source, this.offset + first * this.entrySize, n * this.entrySize, this.what);
      this.pages.set(page, data);
      while (this.pages.size > this.maxPages) this.pages.delete(this.pages.keys().next().value as number);
    }
    const at = (index - page * this.perPage) * this.entrySize;
    return data.subarray(at, at + this.entrySize);
  }

  /**
   * Entries `[first, end)` in order, as chunks of about `chunkBytes` read straight from the source
   * (for scans, which would only wash the page cache out). `data` holds the entries from `first`.
   */
  public async *chunks(first: number, end: number, chunkBytes = 512 * 1024): AsyncIterable<{ first: number; data: Buffer }> {
    const stop = Math.min(end, this.count);
    const per = Math.max(1, Math.floor(chunkBytes / this.entrySize));
    for (let from = Math.max(0, first); from < stop; from += per) {
      const n = Math.min(per, stop - from);
      yield { first: from, data: await readExact(this.source, this.offset + from * this.entrySize, n * this.entrySize, this.what) };
    }
  }
}

/**
 * The extents of a disk whose blocks a table maps: scans entries `[0, entries)` of `table` and asks
 * `blockOf(index, data, at)` which block the entry at `data[at]` makes present (undefined when it
 * reads as zeros or is not a block entry). Blocks come in increasing order; runs of adjacent blocks
 * are merged and the last one is clipped to the virtual size.
 */
export async function* tableExtents(
  table: LazyTable,
  entries: number,
  blockOf: (index: number, data: Buffer, at: number) => number | undefined,
  blockSize: number,
  virtualSize: number,
): AsyncIterable<Extent> {
  let start = -1;
  let end = -1;
  for await (const { first, data } of table.chunks(0, entries)) {
    const pending: Extent[] = [];
    for (let k = 0, at = 0; at < data.length; k++, at += table.entrySize) {
      const b = blockOf(first + k, data, at);
      if (b === undefined) continue;
      const s = b * blockSize;
      if (s >= virtualSize) continue;
      const e = Math.min(virtualSize, s + blockSize);
      if (start >= 0 && s === end) {
        end = e;
        continue;
      }
      if (start >= 0) pending.push({ offset: start, length: end - start });
      start = s;
      end = e;
    }
    yield* pending;
  }
  if (start >= 0) yield { offset: start, length: end - start };
}

/** Whether `n` is a power of two within `[min, max]`. */
export function isPowerOfTwoIn(n: number, min: number, max: number): boolean {
  return Number.isSafeInteger(n) && n >= min && n <= max && (n & (n - 1)) === 0;
}

/** Reads a NUL-terminated UTF-16 string (little- or big-endian) from `buf`. */
export function utf16z(buf: Buffer, bigEndian: boolean): string {
  const even = Buffer.from(buf.subarray(0, buf.length & ~1));
  if (bigEndian) even.swap16();
  const s = even.toString('utf16le');
  const nul = s.indexOf('\0');
  return nul >= 0 ? s.slice(0, nul) : s;
}

// ---------------------------------------------------------------------------------------------
// VHD
// ---------------------------------------------------------------------------------------------

/** One's complement of the byte sum of `buf`, with the 4 checksum bytes at `at` taken as zero. */
function vhdChecksum(buf: Buffer, at: number): number {
  let sum = 0;
  for (let i = 0; i < buf.length; i++) if (i < at || i >= at + 4) sum += buf[i];
  return ~sum >>> 0;
}

function isFooter(buf: Buffer): boolean {
  return buf.length >= FOOTER_SIZE && buf.toString('latin1', 0, 8) === 'conectix';
}

function text(buf: Buffer, start: number, end: number): string {
  return buf.toString('latin1', start, end).replace(/\0+$/, '').trim();
}

interface Footer {
  readonly diskType: 'fixed' | 'dynamic' | 'differencing';
  readonly dataOffset: bigint;
  readonly currentSize: number;
  readonly originalSize: number;
  readonly cylinders: number;
  readonly heads: number;
  readonly sectorsPerTrack: number;
  readonly creatorApp: string;
  readonly creatorVersion: string;
  readonly creatorHostOs: string;
  readonly storedChecksum: number;
  readonly computedChecksum: number;
}

function parseFooter(name: string, buf: Buffer): Footer {
  const type = buf.readUInt32BE(60);
  const diskType = DISK_TYPES[type];
  if (!diskType) {
    throw new ImageFormatError(`${name}: VHD disk type ${type} is neither fixed (2), dynamic (3) nor differencing (4)`);
  }
  const currentSize = buf.readBigUInt64BE(48);
  const originalSize = buf.readBigUInt64BE(40);
  if (currentSize > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new ImageFormatError(`${name}: VHD current size ${currentSize} is beyond any disk`, 'ABSURD_VALUE');
  }
  return {
    diskType,
    dataOffset: buf.readBigUInt64BE(16),
    currentSize: Number(currentSize),
    originalSize: originalSize > BigInt(Number.MAX_SAFE_INTEGER) ? -1 : Number(originalSize),
    cylinders: buf.readUInt16BE(56),
    heads: buf[58],
    sectorsPerTrack: buf[59],
    creatorApp: text(buf, 28, 32),
    creatorVersion: `${buf.readUInt16BE(32)}.${buf.readUInt16BE(34)}`,
    creatorHostOs: text(buf, 36, 40),
    storedChecksum: buf.readUInt32BE(64),
    computedChecksum: vhdChecksum(buf.subarray(0, FOOTER_SIZE), 64),
  };
}

/** Opens `source` as a VHD: fixed, dynamic or differencing. */
export async function openVhd(source: ByteSource): Promise<DiskImage> {
  const name = source.name;
  const size = source.size;
  if (size < FOOTER_SIZE) {
    throw new ImageReadError(`${name}: a VHD needs at least its 512-byte footer but the file has ${size} bytes; the file is truncated`, 'TRUNCATED');
  }
  // One read at each end: the footer (and its copy, the dynamic header and usually the BAT's
  // first entries at the start).
  const tail = await readExact(source, size - FOOTER_SIZE, FOOTER_SIZE, 'VHD footer');
  const head = await source.read(0, Math.min(size, FOOTER_SIZE + DYNAMIC_HEADER_SIZE + 2048));
  const tailIsFooter = isFooter(tail);
  const headIsFooter = isFooter(head);
  if (!tailIsFooter && !headIsFooter) {
    throw new ImageFormatError(`${name}: no VHD footer ('conectix') at the end or the start of the file`);
  }
  const footerBytes = tailIsFooter ? tail : head.subarray(0, FOOTER_SIZE);
  const footer = parseFooter(name, footerBytes);
  const findings: Finding[] = [];
  if (footer.storedChecksum !== footer.computedChecksum) {
    findings.push(finding('CHECKSUM_MISMATCH',
      `The VHD footer checksum is 0x${footer.storedChecksum.toString(16)} but the footer sums to 0x${footer.computedChecksum.toString(16)}.`));
  }
  const details: Record<string, string | number | boolean> = {
    creatorApp: footer.creatorApp,
    creatorVersion: footer.creatorVersion,
    creatorHostOs: footer.creatorHostOs,
    diskType: footer.diskType,
    currentSize: footer.currentSize,
    originalSize: footer.originalSize,
    sizeAlignedTo1MiB: footer.currentSize % MiB === 0,
    geometry: `${footer.cylinders}/${footer.heads}/${footer.sectorsPerTrack}`,
    geometrySize: footer.cylinders * footer.heads * footer.sectorsPerTrack * SECTOR,
  };

  if (footer.diskType === 'fixed') {
    if (!tailIsFooter) {
      throw new ImageFormatError(`${name}: the footer of a fixed VHD belongs at the end of the file, but only the start holds one`);
    }
    return openFixed(source, footer.currentSize, findings, details);
  }

  if (!headIsFooter) {
    findings.push(finding('VHD_FOOTER_MISMATCH', 'The dynamic VHD has no copy of its footer at offset 0.'));
  } else if (!tailIsFooter) {
    findings.push(finding('TRUNCATED', 'The dynamic VHD has no footer in its last 512 bytes: the file was probably cut short.'));
  } else if (!head.subarray(0, FOOTER_SIZE).equals(tail)) {
    findings.push(finding('VHD_FOOTER_MISMATCH', 'The copy of the VHD footer at offset 0 differs from the footer at the end.'));
  }
  return openDynamic(source, footer, head, tailIsFooter, findings, details);
}

async function openFixed(
  source: ByteSource,
  virtualSize: number,
  findings: Finding[],
  details: Record<string, string | number | boolean>,
): Promise<DiskImage> {
  const dataSize = source.size - FOOTER_SIZE;
  if (virtualSize > dataSize) {
    throw new ImageFormatError(
      `${source.name}: the fixed VHD says its disk holds ${virtualSize} bytes but only ${dataSize} precede the footer`);
  }
  return {
    format: 'vhd',
    subformat: 'fixed',
    virtualSize,
    findings,
    details,
    async read(offset: number, length: number): Promise<Buffer> {
      checkRange(offset, length);
      const end = Math.min(virtualSize, offset + length);
      if (offset >= end) return Buffer.alloc(0);
      return readExact(source, offset, end - offset, 'VHD data');
    },
    async *extents(): AsyncIterable<Extent> {
      if (virtualSize > 0) yield { offset: 0, length: virtualSize };
    },
  };
}

async function openDynamic(
  source: ByteSource,
  footer: Footer,
  head: Buffer,
  tailIsFooter: boolean,
  findings: Finding[],
  details: Record<string, string | number | boolean>,
): Promise<DiskImage> {
  const name = source.name;
  const size = source.size;
  const virtualSize = footer.currentSize;

  // The dynamic header.
  if (footer.dataOffset < BigInt(FOOTER_SIZE)) {
    throw new ImageFormatError(`${name}: the VHD dynamic header offset ${footer.dataOffset} lies inside the footer copy`);
  }
  if (footer.dataOffset + BigInt(DYNAMIC_HEADER_SIZE) > BigInt(size)) {
    throw new ImageReadError(
      `${name}: the VHD dynamic header at offset ${footer.dataOffset} lies past the end of the file (${size} bytes); the file is truncated`,
      'TRUNCATED');
  }
  const headerOffset = Number(footer.dataOffset);
  const header = headerOffset + DYNAMIC_HEADER_SIZE <= head.length
    ? head.subarray(headerOffset, headerOffset + DYNAMIC_HEADER_SIZE)
    : await readExact(source, headerOffset, DYNAMIC_HEADER_SIZE, 'VHD dynamic header');
  if (header.toString('latin1', 0, 8) !== 'cxsparse') {
    throw new ImageFormatError(`${name}: no VHD dynamic header ('cxsparse') at offset ${headerOffset}`);
  }
  const storedSum = header.readUInt32BE(36);
  const computedSum = vhdChecksum(header, 36);
  if (storedSum !== computedSum) {
    findings.push(finding('CHECKSUM_MISMATCH',
      `The VHD dynamic header checksum is 0x${storedSum.toString(16)} but the header sums to 0x${computedSum.toString(16)}.`));
  }
  const tableOffsetBig = header.readBigUInt64BE(16);
  const maxEntries = header.readUInt32BE(28);
  const blockSize = header.readUInt32BE(32);
  if (!isPowerOfTwoIn(blockSize, MIN_BLOCK, MAX_BLOCK)) {
    throw new ImageFormatError(`${name}: VHD block size ${blockSize} is not a power of two between ${MIN_BLOCK} and ${MAX_BLOCK}`);
  }
  const blocks = Math.ceil(virtualSize / blockSize);
  if (blocks > maxEntries) {
    throw new ImageFormatError(
      `${name}: the VHD disk of ${virtualSize} bytes needs ${blocks} blocks of ${blockSize} bytes but the BAT has only ${maxEntries} entries`);
  }
  const tableBytes = maxEntries * 4;
  if (tableOffsetBig < BigInt(FOOTER_SIZE)) {
    throw new ImageFormatError(`${name}: the VHD BAT offset ${tableOffsetBig} lies inside the footer copy`);
  }
  if (tableOffsetBig + BigInt(tableBytes) > BigInt(size)) {
    throw new ImageReadError(
      `${name}: the VHD BAT (${maxEntries} entries at offset ${tableOffsetBig}) runs past the end of the file (${size} bytes); the file is truncated`,
      'TRUNCATED');
  }
  const tableOffset = Number(tableOffsetBig);
  if (tableOffset < headerOffset + DYNAMIC_HEADER_SIZE && headerOffset < tableOffset + tableBytes) {
    throw new ImageFormatError(`${name}: the VHD BAT overlaps the dynamic header`);
  }
  // Structures a block must not overlap.
  const reserved: Array<[number, number]> = [
    [0, FOOTER_SIZE],
    [headerOffset, headerOffset + DYNAMIC_HEADER_SIZE],
    [tableOffset, tableOffset + tableBytes],
  ];
  const dataLimit = tailIsFooter ? size - FOOTER_SIZE : size;
  // One bit per sector, rounded up to a whole sector.
  const bitmapSize = Math.ceil(blockSize / SECTOR / 8 / SECTOR) * SECTOR;
  const differencing = footer.diskType === 'differencing';

  details.blockSize = blockSize;
  details.maxTableEntries = maxEntries;
  if (differencing) {
    const parentName = utf16z(header.subarray(64, 576), true);
    if (parentName) details.parentName = parentName;
    findings.push(finding('DIFFERENCING_DISK', parentName
      ? `The VHD is a differencing disk whose parent is "${parentName}".`
      : 'The VHD is a differencing disk; its header does not name the parent.'));
  }

  const bat = new LazyTable(source, tableOffset, blocks, 4, 'VHD BAT');
  const bitmaps = new Map<number, Buffer>();

  /** The file offset of block `block`'s bitmap, or undefined when the block is absent. */
  async function blockStart(block: number): Promise<number | undefined> {
    const sector = (await bat.entry(block)).readUInt32BE(0);
    if (sector === ABSENT) return undefined;
    const start = sector * SECTOR;
    const end = start + bitmapSize + blockSize;
    for (const [s, e] of reserved) {
      if (start < e && s < end) {
        throw new ImageFormatError(`${name}: VHD block ${block} at offset ${start} overlaps the headers or the BAT`);
      }
    }
    return start;
  }

  async function bitmapOf(block: number, start: number): Promise<Buffer> {
    let bm = bitmaps.get(block);
    if (!bm) {
      bm = Buffer.from(await readExact(source, start, bitmapSize, 'VHD block bitmap'));
      bitmaps.set(block, bm);
      while (bitmaps.size > 8) bitmaps.delete(bitmaps.keys().next().value as number);
    }
    return bm;
  }

  return {
    format: 'vhd',
    subformat: footer.diskType,
    virtualSize,
    findings,
    details,
    async read(offset: number, length: number): Promise<Buffer> {
      checkRange(offset, length);
      return readBlocks(virtualSize, blockSize, offset, length, async (block, within, n) => {
        const start = await blockStart(block);
        if (start === undefined) return undefined;
        const at = start + bitmapSize + within;
        if (at + n > size && tailIsFooter) {
          // The file ends with its footer, so it is whole: the BAT entry is wrong, not the file short.
          throw new ImageFormatError(`${name}: the VHD BAT points block ${block} at offset ${start}, past the end of the file (${size} bytes)`);
        }
        if (at + n > dataLimit && at + n <= size) {
          throw new ImageFormatError(`${name}: VHD block ${block} runs into the footer at the end of the file`);
        }
        const data = await readExact(source, at, n, `VHD block ${block}`);
        if (!differencing) return data;
        // Sectors whose bit is clear belong to the parent, which is not at hand: zeros.
        const bitmap = await bitmapOf(block, start);
        const out = Buffer.from(data);
        for (let s = Math.floor(within / SECTOR); s * SECTOR < within + n; s++) {
          if ((bitmap[s >> 3] & (0x80 >> (s & 7))) === 0) {
            const from = Math.max(within, s * SECTOR) - within;
            const to = Math.min(within + n, (s + 1) * SECTOR) - within;
            out.fill(0, from, to);
          }
        }
        return out;
      });
    },
    extents(): AsyncIterable<Extent> {
      return tableExtents(bat, blocks, (i, data, at) => (data.readUInt32BE(at) === ABSENT ? undefined : i), blockSize, virtualSize);
    },
  };
}
