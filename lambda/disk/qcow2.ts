/* eslint-disable no-bitwise -- bit fields, bitmaps and checksums of a binary format */
/**
 * qcow2 (QEMU copy-on-write, versions 2 and 3), big-endian.
 *
 * A header in the first cluster (with optional header extensions and the backing file name), a
 * one-level L1 table of L2 table offsets, and L2 tables (one cluster each) of cluster descriptors:
 * a standard cluster (host offset, or "reads as zeros" in v3), or a compressed cluster (host
 * offset and sector count packed in one entry; raw deflate or zstd). With extended L2 entries each
 * descriptor carries a bitmap of 32 subclusters (allocated / reads as zeros).
 *
 * Opening reads the header (the first 64 KiB; more only for header extensions that run past it).
 * L1 and L2 entries are read lazily, a page at a time, through a small bounded cache.
 */
import { constants as zlibConstants, inflateRawSync } from 'node:zlib';
// The zstd decoder is bundled into the Lambda assets and the vmie command by esbuild; it is not a
// runtime dependency of the construct library.
// eslint-disable-next-line import/no-extraneous-dependencies
import { decompress as zstdDecompress } from 'fzstd';
import { u64be } from './bytes';
import { ImageFormatError, ImageReadError, UnsupportedImageError } from './errors';
import { finding, type Finding } from './findings';
import { readBlocks, type DiskImage, type Extent } from './image';
import { remember } from './lru';
import { readExact, type ByteSource } from './source';

const MAGIC = 0x514649fb; // 'QFI\xfb'
/** Bytes read at open. */
const HEAD_BYTES = 64 * 1024;
const V2_HEADER_LENGTH = 72;
const V3_HEADER_LENGTH = 104;
/** qemu's limit on the L1 table: 32 MiB of entries. */
const MAX_L1_ENTRIES = (32 * 1024 * 1024) / 8;
/** qemu's limit on the number of snapshots. */
const MAX_SNAPSHOTS = 65536;
/** qemu's limit on the backing file name. */
const MAX_BACKING_NAME = 1023;
/** Table pages: entries are fetched this many bytes at a time. */
const PAGE = 4096;
/** Table scans (extents) read this many bytes at a time. */
const SCAN_CHUNK = 64 * 1024;
/** At most this many table pages are cached (1 MiB). */
const MAX_PAGES = 256;
/** At most this many decompressed clusters are cached. */
const MAX_CLUSTERS = 4;
const SUBCLUSTERS = 32;

const INCOMPAT_DIRTY = 1n << 0n;
const INCOMPAT_CORRUPT = 1n << 1n;
const INCOMPAT_DATA_FILE = 1n << 2n;
const INCOMPAT_COMPRESSION = 1n << 3n;
const INCOMPAT_EXTL2 = 1n << 4n;
const INCOMPAT_KNOWN = 0x1fn;

const EXT_END = 0x00000000;
const EXT_BACKING_FORMAT = 0xe2792aca;

const OFFSET_MASK = 0x00fffffffffffe00n;
const COMPRESSED_BIT = 1n << 62n;

/** What a cluster of the virtual disk is. */
type Cluster =
  | { readonly kind: 'unallocated' }
  | { readonly kind: 'zero' }
  | { readonly kind: 'data'; readonly host: number }
  | { readonly kind: 'compressed'; readonly host: number; readonly size: number }
  | { readonly kind: 'sub'; readonly host: number; readonly alloc: number; readonly zero: number };

/** The header fields a reader needs. */
interface Qcow2Header {
  readonly version: 2 | 3;
  readonly clusterBits: number;
  readonly size: number;
  readonly l1Size: number;
  readonly l1Offset: number;
  readonly extendedL2: boolean;
  readonly compressionType: 0 | 1;
}

/**
 * Opens a qcow2 image. Encrypted images and images with an external data file throw
 * {@link UnsupportedImageError}; every qcow2 image carries the FORMAT_NEEDS_CONVERSION finding.
 */
export async function openQcow2(source: ByteSource): Promise<DiskImage> {
  const name = source.name;
  let head = await source.read(0, Math.min(source.size, HEAD_BYTES));
  if (head.length < V2_HEADER_LENGTH) {
    throw new ImageReadError(`${name}: the qcow2 header needs ${V2_HEADER_LENGTH} bytes but the file has ${source.size}; the file is truncated`, 'TRUNCATED');
  }
  if (head.readUInt32BE(0) !== MAGIC) {
    throw new ImageFormatError(`${name} is not a qcow2 image (no QFI\\xfb magic)`, 'NOT_QCOW2');
  }
  const version = head.readUInt32BE(4);
  if (version !== 2 && version !== 3) {
    throw new ImageFormatError(`${name}: qcow2 version ${version} is not known (2 and 3 are)`, 'UNSUPPORTED_VERSION');
  }
  const subformat = version === 2 ? 'v2' : 'v3';
  const clusterBits = head.readUInt32BE(20);
  if (clusterBits < 9 || clusterBits > 21) {
    throw new ImageFormatError(`${name}: cluster_bits is ${clusterBits}; qcow2 allows 9 to 21`);
  }
  const clusterSize = 2 ** clusterBits;
  const size = u64be(head, 24, `${name}: the virtual size`);
  const info = { format: 'qcow2', subformat, virtualSize: size };

  let headerLength = V2_HEADER_LENGTH;
  let incompatible = 0n;
  let refcountOrder = 4;
  let compressionByte = 0;
  if (version === 3) {
    if (head.length < V3_HEADER_LENGTH) {
      throw new ImageReadError(`${name}: the qcow2 v3 header needs ${V3_HEADER_LENGTH} bytes but the file has ${source.size}; the file is truncated`, 'TRUNCATED');
    }
    incompatible = head.readBigUInt64BE(72);
    refcountOrder = head.readUInt32BE(96);
    headerLength = head.readUInt32BE(100);
    if (headerLength < V3_HEADER_LENGTH || headerLength > clusterSize) {
      throw new ImageFormatError(`${name}: the qcow2 header length ${headerLength} is outside ${V3_HEADER_LENGTH}..${clusterSize}`);
    }
    if (refcountOrder > 6) {
      throw new ImageFormatError(`${name}: refcount_order ${refcountOrder} is larger than 6`);
    }
    if (headerLength > V3_HEADER_LENGTH) {
      if (headerLength > head.length) head = await readExact(source, 0, headerLength, 'qcow2 header');
      compressionByte = head[V3_HEADER_LENGTH];
    }
  }

  const cryptMethod = head.readUInt32BE(32);
  if (cryptMethod !== 0) {
    const how = cryptMethod === 1 ? 'AES' : cryptMethod === 2 ? 'LUKS' : `method ${cryptMethod}`;
    throw new UnsupportedImageError(`${name} is an encrypted qcow2 image (${how})`, 'QCOW2_ENCRYPTED', info);
  }
  if (incompatible & INCOMPAT_DATA_FILE) {
    throw new UnsupportedImageError(`${name} keeps its data in an external data file`, 'QCOW2_EXTERNAL_DATA', info);
  }
  const unknown = incompatible & ~INCOMPAT_KNOWN;
  if (unknown) {
    throw new UnsupportedImageError(`${name} uses incompatible qcow2 features this reader does not know (bits 0x${unknown.toString(16)})`, 'QCOW2_UNSUPPORTED_FEATURE', info);
  }
  if (compressionByte > 1) {
    throw new UnsupportedImageError(`${name} uses qcow2 compression type ${compressionByte}; zlib (0) and zstd (1) are known`, 'QCOW2_UNSUPPORTED_FEATURE', info);
  }
  if (compressionByte !== 0 && !(incompatible & INCOMPAT_COMPRESSION)) {
    throw new ImageFormatError(`${name}: compression type ${compressionByte} is set without the compression-type feature bit`);
  }
  const compressionType = compressionByte as 0 | 1;
  const extendedL2 = (incompatible & INCOMPAT_EXTL2) !== 0n;

  // Backing file name and header extensions: both lie in the first cluster.
  const backingOffset = u64be(head, 8, `${name}: backing_file_offset`);
  const backingSize = head.readUInt32BE(16);
  const limit = Math.min(clusterSize, source.size);
  const bytes = async (end: number): Promise<Buffer> => {
    if (end > head.length) head = await readExact(source, 0, Math.min(limit, Math.max(end, head.length * 2)), 'qcow2 header extensions');
    return head;
  };
  let backingFile: string | undefined;
  if (backingOffset !== 0) {
    if (backingSize === 0 || backingSize > MAX_BACKING_NAME || backingOffset + backingSize > clusterSize || backingOffset < headerLength) {
      throw new ImageFormatError(`${name}: the backing file name (${backingSize} bytes at ${backingOffset}) is not inside the first cluster`);
    }
    if (backingOffset + backingSize > source.size) {
      throw new ImageReadError(`${name}: the backing file name runs past the end of the file; the file is truncated`, 'TRUNCATED');
    }
    backingFile = (await bytes(backingOffset + backingSize)).toString('utf8', backingOffset, backingOffset + backingSize);
  }
  let backingFormat: string | undefined;
  const extEnd = Math.min(backingOffset !== 0 ? backingOffset : clusterSize, source.size);
  for (let off = headerLength; off + 8 <= extEnd;) {
    const buf = await bytes(off + 8);
    const type = buf.readUInt32BE(off);
    const len = buf.readUInt32BE(off + 4);
    if (type === EXT_END) break;
    if (off + 8 + len > extEnd) {
      if (extEnd === source.size && off + 8 + len <= Math.min(backingOffset !== 0 ? backingOffset : clusterSize, clusterSize)) {
        throw new ImageReadError(
          `${name}: qcow2 header extension 0x${type.toString(16)} (${len} bytes at ${off}) runs past the end of the file (${source.size} bytes); the file is truncated`,
          'TRUNCATED',
        );
      }
      throw new ImageFormatError(`${name}: qcow2 header extension 0x${type.toString(16)} (${len} bytes) runs past the first cluster`);
    }
    if (type === EXT_BACKING_FORMAT) {
      backingFormat = (await bytes(off + 8 + len)).toString('utf8', off + 8, off + 8 + len);
    }
    off += 8 + Math.ceil(len / 8) * 8;
  }

  const l1Size = head.readUInt32BE(36);
  const l1Offset = u64be(head, 40, `${name}: l1_table_offset`);
  const nbSnapshots = head.readUInt32BE(60);
  if (nbSnapshots > MAX_SNAPSHOTS) {
    throw new ImageFormatError(`${name}: the image claims ${nbSnapshots} snapshots; qcow2 allows ${MAX_SNAPSHOTS}`);
  }
  const header: Qcow2Header = { version, clusterBits, size, l1Size, l1Offset, extendedL2, compressionType };
  const tables = new Qcow2Tables(source, header);

  const findings: Finding[] = [
    finding('FORMAT_NEEDS_CONVERSION', `The image is qcow2 (version ${version}), which VM Import does not accept.`),
  ];
  if (backingFile !== undefined) {
    const fmt = backingFormat ? ` (format ${backingFormat})` : '';
    findings.push(finding('DIFFERENCING_DISK', `The qcow2 image has the backing file "${backingFile}"${fmt}: it holds only the changes against it.`));
  }
  if (incompatible & (INCOMPAT_DIRTY | INCOMPAT_CORRUPT)) {
    const bits = [incompatible & INCOMPAT_DIRTY ? 'dirty' : '', incompatible & INCOMPAT_CORRUPT ? 'corrupt' : ''].filter(Boolean).join(' and ');
    findings.push(finding('QCOW2_DIRTY', `The qcow2 image is marked ${bits}.`));
  }

  const details: Record<string, string | number | boolean> = {
    version,
    clusterSize,
    compressionType: compressionType === 1 ? 'zstd' : 'zlib',
    refcountOrder,
    snapshots: nbSnapshots,
    extendedL2,
  };
  if (backingFile !== undefined) details.backingFile = backingFile;
  if (backingFormat !== undefined) details.backingFormat = backingFormat;

  return {
    format: 'qcow2',
    subformat,
    virtualSize: size,
    findings,
    details,
    read: (offset, length) => readBlocks(size, clusterSize, offset, length, (c, within, n) => tables.readInCluster(c, within, n)),
    extents: () => tables.extents(),
  };
}

/** The L1 and L2 tables of one image, read lazily. */
class Qcow2Tables {
  private readonly clusterSize: number;
  private readonly entrySize: number;
  private readonly l2Entries: number;
  private readonly l1Needed: number;
  private readonly pages = new Map<string, Promise<Buffer>>();
  private readonly clusters = new Map<number, Promise<Buffer>>();

  public constructor(private readonly source: ByteSource, private readonly h: Qcow2Header) {
    const name = source.name;
    this.clusterSize = 2 ** h.clusterBits;
    this.entrySize = h.extendedL2 ? 16 : 8;
    this.l2Entries = this.clusterSize / this.entrySize;
    this.l1Needed = Math.ceil(h.size / (this.l2Entries * this.clusterSize));
    if (h.l1Size < this.l1Needed) {
      throw new ImageFormatError(`${name}: the L1 table has ${h.l1Size} entries but a ${h.size}-byte disk needs ${this.l1Needed}`);
    }
    if (h.l1Size > MAX_L1_ENTRIES) {
      throw new ImageFormatError(`${name}: the L1 table has ${h.l1Size} entries, more than qcow2 allows (${MAX_L1_ENTRIES})`);
    }
    if (this.l1Needed > 0) {
      if (h.l1Offset === 0 || h.l1Offset % this.clusterSize !== 0) {
        throw new ImageFormatError(`${name}: the L1 table offset ${h.l1Offset} is not a cluster boundary after the header`);
      }
      if (h.l1Offset + this.l1Needed * 8 > source.size) {
        throw new ImageFormatError(`${name}: the L1 table (${this.l1Needed} entries at ${h.l1Offset}) lies past the end of the file (${source.size} bytes)`);
      }
    }
  }

  /** Reads `n` bytes at `within` of cluster `c`, or undefined when the cluster reads as zeros. */
  public async readInCluster(c: number, within: number, n: number): Promise<Buffer | undefined> {
    const d = await this.cluster(c);
    switch (d.kind) {
      case 'unallocated':
      case 'zero':
        return undefined;
      case 'data':
        return readExact(this.source, d.host + within, n, `cluster ${c}`);
      case 'compressed':
        return (await this.decompressed(c, d.host, d.size)).subarray(within, within + n);
      case 'sub':
        return this.readSubclusters(c, d, within, n);
    }
  }

  /** The allocated clusters (or subclusters), merged into runs. */
  public async *extents(): AsyncIterable<Extent> {
    const cs = this.clusterSize;
    let runStart = -1;
    let runEnd = -1;
    const add = function* (start: number, end: number): Generator<Extent> {
      if (start === runEnd) {
        runEnd = end;
        return;
      }
      if (runStart >= 0) yield { offset: runStart, length: runEnd - runStart };
      runStart = start;
      runEnd = end;
    };
    const l1PerChunk = SCAN_CHUNK / 8;
    const l2PerChunk = SCAN_CHUNK / this.entrySize;
    // Each L2 table belongs to one L1 entry; one used twice is damage, and refusing it keeps the
    // scan within the size of the file.
    const seen = new Set<number>();
    for (let i0 = 0; i0 < this.l1Needed; i0 += l1PerChunk) {
      const count = Math.min(l1PerChunk, this.l1Needed - i0);
      const l1 = await readExact(this.source, this.h.l1Offset + i0 * 8, count * 8, 'L1 table');
      for (let i = 0; i < count; i++) {
        const l2 = this.l2Offset(l1.readBigUInt64BE(i * 8));
        if (l2 === 0) continue;
        if (seen.has(l2)) {
          throw new ImageFormatError(`${this.source.name}: the L2 table at ${l2} is listed twice in the L1 table`);
        }
        seen.add(l2);
        const base = (i0 + i) * this.l2Entries;
        for (let j0 = 0; j0 < this.l2Entries; j0 += l2PerChunk) {
          if ((base + j0) * cs >= this.h.size) break;
          const m = Math.min(l2PerChunk, this.l2Entries - j0);
          const chunk = await readExact(this.source, l2 + j0 * this.entrySize, m * this.entrySize, 'L2 table');
          for (let j = 0; j < m; j++) {
            const start = (base + j0 + j) * cs;
            if (start >= this.h.size) break;
            const entry = chunk.readBigUInt64BE(j * this.entrySize);
            const bitmap = this.h.extendedL2 ? chunk.readBigUInt64BE(j * this.entrySize + 8) : 0n;
            for (const [s, e] of this.allocatedRanges(entry, bitmap)) {
              if (start + s >= this.h.size) break;
              yield* add(start + s, Math.min(this.h.size, start + e));
            }
          }
        }
      }
    }
    if (runStart >= 0) yield { offset: runStart, length: runEnd - runStart };
  }

  /** Ranges within a cluster that hold data, from its L2 entry (no validation of host offsets). */
  private allocatedRanges(entry: bigint, bitmap: bigint): Array<[number, number]> {
    const cs = this.clusterSize;
    if (entry & COMPRESSED_BIT) return [[0, cs]];
    if (!this.h.extendedL2) {
      const zero = this.h.version === 3 && (entry & 1n) !== 0n;
      return !zero && (entry & OFFSET_MASK) !== 0n ? [[0, cs]] : [];
    }
    const alloc = Number(bitmap & 0xffffffffn);
    const sub = cs / SUBCLUSTERS;
    const out: Array<[number, number]> = [];
    for (let s = 0; s < SUBCLUSTERS; s++) {
      if (!(alloc & (1 << s))) continue;
      const last = out[out.length - 1];
      if (last && last[1] === s * sub) last[1] = (s + 1) * sub;
      else out.push([s * sub, (s + 1) * sub]);
    }
    return out;
  }

  /** The L2 offset of an L1 entry, validated; 0 when the L2 table is not allocated. */
  private l2Offset(l1Entry: bigint): number {
    const l2 = Number(l1Entry & OFFSET_MASK);
    if (l2 === 0) return 0;
    if (l2 % this.clusterSize !== 0) {
      throw new ImageFormatError(`${this.source.name}: an L2 table offset (${l2}) is not cluster-aligned`);
    }
    if (l2 + this.clusterSize > this.source.size) {
      throw new ImageFormatError(
        `${this.source.name}: an L2 table at ${l2} lies past the end of the file (${this.source.size} bytes): the file is truncated or its L1 table is damaged`,
      );
    }
    return l2;
  }

  /** Looks up and decodes the descriptor of cluster `c`. */
  private async cluster(c: number): Promise<Cluster> {
    const name = this.source.name;
    const l1Index = Math.floor(c / this.l2Entries);
    const l1Entry = await this.entry(this.h.l1Offset, l1Index * 8, this.l1Needed * 8, 'L1 table');
    const l2 = this.l2Offset(l1Entry);
    if (l2 === 0) return { kind: 'unallocated' };
    const j = c - l1Index * this.l2Entries;
    const entry = await this.entry(l2, j * this.entrySize, this.clusterSize, 'L2 table');
    const bitmap = this.h.extendedL2 ? await this.entry(l2, j * this.entrySize + 8, this.clusterSize, 'L2 table') : 0n;
    const size = BigInt(this.source.size);

    if (entry & COMPRESSED_BIT) {
      const x = BigInt(62 - (this.h.clusterBits - 8));
      const host = entry & ((1n << x) - 1n);
      const sectors = Number((entry >> x) & ((1n << BigInt(this.h.clusterBits - 8)) - 1n)) + 1;
      if (host >= size) {
        throw new ImageFormatError(
          `${name}: the compressed cluster at virtual offset ${c * this.clusterSize} points at ${host}, past the end of the file (${this.source.size} bytes): the file is truncated or its L2 table is damaged`,
        );
      }
      return { kind: 'compressed', host: Number(host), size: sectors * 512 - Number(host % 512n) };
    }
    const host = Number(entry & OFFSET_MASK);
    const checkHost = (): void => {
      if (host % this.clusterSize !== 0) {
        throw new ImageFormatError(`${name}: cluster at virtual offset ${c * this.clusterSize} has an unaligned host offset ${host}`);
      }
      if (host >= this.source.size) {
        throw new ImageFormatError(
          `${name}: the cluster at virtual offset ${c * this.clusterSize} points at ${host}, past the end of the file (${this.source.size} bytes): the file is truncated or its L2 table is damaged`,
        );
      }
    };
    if (!this.h.extendedL2) {
      if (this.h.version === 3 && entry & 1n) return { kind: 'zero' };
      if (host === 0) return { kind: 'unallocated' };
      checkHost();
      return { kind: 'data', host };
    }
    const alloc = Number(bitmap & 0xffffffffn);
    const zero = Number(bitmap >> 32n);
    if (alloc & zero) {
      throw new ImageFormatError(`${name}: a subcluster of the cluster at virtual offset ${c * this.clusterSize} is both allocated and zero`);
    }
    if (alloc === 0) return zero === 0xffffffff ? { kind: 'zero' } : { kind: 'unallocated' };
    if (host === 0) {
      throw new ImageFormatError(`${name}: the cluster at virtual offset ${c * this.clusterSize} has allocated subclusters but no host offset`);
    }
    checkHost();
    return alloc === 0xffffffff ? { kind: 'data', host } : { kind: 'sub', host, alloc, zero };
  }

  /** A big-endian u64 at `index` bytes into the table at `table` (of `tableBytes`), via the page cache. */
  private async entry(table: number, index: number, tableBytes: number, what: string): Promise<bigint> {
    const pageStart = Math.floor(index / PAGE) * PAGE;
    const len = Math.min(PAGE, tableBytes - pageStart);
    const at = table + pageStart;
    const page = await remember(this.pages, `${at}+${len}`, MAX_PAGES, () => readExact(this.source, at, len, what));
    return page.readBigUInt64BE(index - pageStart);
  }

  private async readSubclusters(c: number, d: { host: number; alloc: number }, within: number, n: number): Promise<Buffer> {
    const sub = this.clusterSize / SUBCLUSTERS;
    const out = Buffer.alloc(n);
    const end = within + n;
    let s = Math.floor(within / sub);
    while (s * sub < end) {
      if (!(d.alloc & (1 << s))) {
        s++;
        continue;
      }
      let t = s;
      while (t + 1 < SUBCLUSTERS && (t + 1) * sub < end && d.alloc & (1 << (t + 1))) t++;
      const from = Math.max(within, s * sub);
      const to = Math.min(end, (t + 1) * sub);
      const data = await readExact(this.source, d.host + from, to - from, `cluster ${c}`);
      data.copy(out, from - within);
      s = t + 1;
    }
    return out;
  }

  private decompressed(c: number, host: number, size: number): Promise<Buffer> {
    return remember(this.clusters, c, MAX_CLUSTERS, async () => {
      const data = await this.source.read(host, Math.min(size, this.source.size - host));
      const where = `the compressed cluster at virtual offset ${c * this.clusterSize} (host offset ${host})`;
      // The last cluster of a file may end before its last sector does; a file cut short ends
      // inside the compressed data, which then does not decompress.
      const cut = (): ImageReadError => new ImageReadError(
        `${this.source.name}: ${where} runs past the end of the file (${this.source.size} bytes) and does not decompress; the file is truncated`,
        'TRUNCATED',
      );
      let out: Buffer;
      try {
        out = this.h.compressionType === 1 ? zstdCluster(data, this.clusterSize) : inflateCluster(data, this.clusterSize);
      } catch (e) {
        if (data.length < size) throw cut();
        throw new ImageFormatError(`${this.source.name}: ${where} is corrupt: ${(e as Error).message}`, 'CORRUPT_CLUSTER');
      }
      const needed = Math.min(this.clusterSize, this.h.size - c * this.clusterSize);
      if (out.length < needed) {
        if (data.length < size) throw cut();
        throw new ImageFormatError(`${this.source.name}: ${where} decompresses to ${out.length} bytes, not ${needed}`, 'CORRUPT_CLUSTER');
      }
      return out;
    });
  }
}

/** Raw deflate, as qemu writes it; output beyond a cluster is an error. */
function inflateCluster(data: Buffer, clusterSize: number): Buffer {
  // Like qemu, accept a stream that fills the cluster without a final block.
  return inflateRawSync(data, { maxOutputLength: clusterSize, finishFlush: zlibConstants.Z_SYNC_FLUSH });
}

/** One zstd frame (the bytes after it belong to the next cluster), decompressed into one cluster. */
function zstdCluster(data: Buffer, clusterSize: number): Buffer {
  const frame = zstdFrame(data);
  if (frame.contentSize !== undefined && frame.contentSize > clusterSize) {
    throw new Error(`the zstd frame holds ${frame.contentSize} bytes, more than a cluster`);
  }
  const out = Buffer.alloc(clusterSize);
  zstdDecompress(data.subarray(0, frame.length), out);
  return frame.contentSize !== undefined ? out.subarray(0, frame.contentSize) : out;
}

/** Walks a zstd frame's header and block headers to find where it ends (RFC 8878, section 3.1.1). */
function zstdFrame(b: Buffer): { length: number; contentSize?: number } {
  if (b.length < 6 || b.readUInt32LE(0) !== 0xfd2fb528) throw new Error('no zstd frame magic');
  const fhd = b[4];
  if (fhd & 0x08) throw new Error('reserved bit set in the zstd frame header');
  const fcsFlag = fhd >> 6;
  const single = (fhd >> 5) & 1;
  const checksum = (fhd >> 2) & 1;
  const dictBytes = [0, 1, 2, 4][fhd & 3];
  const fcsBytes = [single ? 1 : 0, 2, 4, 8][fcsFlag];
  let pos = 5 + (single ? 0 : 1);
  if (dictBytes && b.readUIntLE(pos, dictBytes) !== 0) throw new Error('the zstd frame needs a dictionary');
  pos += dictBytes;
  if (pos + fcsBytes > b.length) throw new Error('the zstd frame header is cut short');
  let contentSize: number | undefined;
  if (fcsBytes === 1) contentSize = b[pos];
  else if (fcsBytes === 2) contentSize = b.readUInt16LE(pos) + 256;
  else if (fcsBytes === 4) contentSize = b.readUInt32LE(pos);
  else if (fcsBytes === 8) contentSize = Number(b.readBigUInt64LE(pos));
  pos += fcsBytes;
  for (;;) {
    if (pos + 3 > b.length) throw new Error('the zstd frame is cut short');
    const bh = b.readUIntLE(pos, 3);
    const last = bh & 1;
    const type = (bh >> 1) & 3;
    const size = bh >>> 3;
    if (type === 3) throw new Error('reserved zstd block type');
    pos += 3 + (type === 1 ? 1 : size);
    if (pos > b.length) throw new Error('the zstd frame is cut short');
    if (last) break;
  }
  if (checksum) pos += 4;
  if (pos > b.length) throw new Error('the zstd frame is cut short');
  return { length: pos, ...(contentSize !== undefined ? { contentSize } : {}) };
}
