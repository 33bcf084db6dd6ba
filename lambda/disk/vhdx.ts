/* eslint-disable no-bitwise -- bit fields, bitmaps and checksums of a binary format */
/**
 * VHDX (Microsoft Virtual Hard Disk v2, little-endian): fixed, dynamic and differencing disks.
 *
 * The first MiB holds the file identifier (`vhdxfile` and the creator), two headers at 64 and
 * 128 KiB (CRC-32C; the valid one with the higher sequence number is current) and two copies of
 * the region table at 192 and 256 KiB. The region table locates the BAT and the metadata region;
 * the metadata gives the block size, the flags (LeaveBlocksAllocated, HasParent), the virtual
 * size and the logical sector size.
 *
 * BAT entries are u64: the state in bits 0-2 and the file offset in MiB in bits 20-63. After every
 * `chunk ratio` payload entries comes one sector-bitmap entry. Payload blocks that are not present,
 * undefined, zero or unmapped read as zeros. A partially present block (differencing disks) takes
 * its sectors from this file where the chunk's sector bitmap has a 1 (bit 0 of byte 0 is the first
 * sector) and reads as zeros elsewhere, since the parent is not at hand; the DIFFERENCING_DISK
 * finding says the bytes are incomplete.
 *
 * A non-zero log GUID in the current header means the log was not replayed: the reader reports
 * VHDX_LOG_NOT_REPLAYED and still reads the blocks as they are in the file.
 */
import { guidAt } from './bytes';
import { crc32c } from './crc32c';
import { ImageFormatError, ImageReadError } from './errors';
import { finding, type Finding } from './findings';
import { readBlocks, type DiskImage, type Extent } from './image';
import { checkRange, readExact, type ByteSource } from './source';
import { isPowerOfTwoIn, LazyTable, tableExtents, utf16z } from './vhd';

const KiB = 1024;
const MiB = 1024 * KiB;
const TiB = 1024 * 1024 * MiB;
const HEADER_SIZE = 4 * KiB;
const REGION_TABLE_SIZE = 64 * KiB;
const METADATA_TABLE_SIZE = 64 * KiB;
const MAX_ENTRIES = 2047;
const MAX_VIRTUAL_SIZE = 64 * TiB;
const MAX_LOCATOR = 64 * KiB;
const SECTORS_PER_BITMAP_BLOCK = 2 ** 23;

const REGION_BAT = '2DC27766-F623-4200-9D64-115E9BFD4A08';
const REGION_METADATA = '8B7CA206-4790-4B9A-B8FE-575F050F886E';
const META_FILE_PARAMETERS = 'CAA16737-FA36-4D43-B3B6-33F0AA44E76B';
const META_VIRTUAL_DISK_SIZE = '2FA54224-CD1B-4876-B211-5DBED83BF4B8';
const META_LOGICAL_SECTOR_SIZE = '8141BF1D-A96F-4709-BA47-F233A8FAAB5F';
const META_PHYSICAL_SECTOR_SIZE = 'CDA348C7-445D-4471-9CC9-E9885251C556';
const META_VIRTUAL_DISK_ID = 'BECA12AB-B2E6-4523-93EF-C309E000C746';
const META_PARENT_LOCATOR = 'A8D35F2D-B30B-454D-ABF7-D3D84834AB0C';
const KNOWN_METADATA = new Set([
  META_FILE_PARAMETERS, META_VIRTUAL_DISK_SIZE, META_LOGICAL_SECTOR_SIZE,
  META_PHYSICAL_SECTOR_SIZE, META_VIRTUAL_DISK_ID, META_PARENT_LOCATOR,
]);
const ZERO_GUID = '00000000-0000-0000-0000-000000000000';

/** Payload block states. */
const State = {
  NotPresent: 0,
  Undefined: 1,
  Zero: 2,
  Unmapped: 3,
  FullyPresent: 6,
  PartiallyPresent: 7,
} as const;

/** Whether the CRC-32C stored at offset 4 of `buf` matches the CRC of `buf` with that field zeroed. */
function checksumOk(buf: Buffer): boolean {
  const copy = Buffer.from(buf);
  const stored = copy.readUInt32LE(4);
  copy.writeUInt32LE(0, 4);
  return crc32c(copy) === stored;
}

interface Header {
  readonly sequence: bigint;
  readonly logGuid: string;
  readonly version: number;
  readonly logLength: number;
  readonly logOffset: bigint;
}

function parseHeader(buf: Buffer): Header | 'bad-checksum' | undefined {
  if (buf.toString('latin1', 0, 4) !== 'head') return undefined;
  if (!checksumOk(buf)) return 'bad-checksum';
  return {
    sequence: buf.readBigUInt64LE(8),
    logGuid: guidAt(buf, 48),
    version: buf.readUInt16LE(66),
    logLength: buf.readUInt32LE(68),
    logOffset: buf.readBigUInt64LE(72),
  };
}

interface Region {
  readonly offset: number;
  readonly length: number;
}

function parseRegionTable(name: string, size: number, buf: Buffer): Map<string, Region> | 'bad-checksum' | undefined {
  if (buf.toString('latin1', 0, 4) !== 'regi') return undefined;
  if (!checksumOk(buf)) return 'bad-checksum';
  const count = buf.readUInt32LE(8);
  if (count > MAX_ENTRIES) throw new ImageFormatError(`${name}: the VHDX region table claims ${count} entries (at most ${MAX_ENTRIES})`);
  const regions = new Map<string, Region>();
  for (let i = 0; i < count; i++) {
    const at = 16 + i * 32;
    const guid = guidAt(buf, at);
    const offsetBig = buf.readBigUInt64LE(at + 16);
    const length = buf.readUInt32LE(at + 24);
    const required = (buf.readUInt32LE(at + 28) & 1) === 1;
    if (guid !== REGION_BAT && guid !== REGION_METADATA) {
      if (required) throw new ImageFormatError(`${name}: the VHDX requires region ${guid}, which this reader does not know`);
      continue;
    }
    if (regions.has(guid)) throw new ImageFormatError(`${name}: the VHDX region table lists region ${guid} twice`);
    if (offsetBig < BigInt(MiB) || offsetBig % BigInt(MiB) !== 0n || length === 0 || length % MiB !== 0) {
      throw new ImageFormatError(`${name}: VHDX region ${guid} at offset ${offsetBig} with length ${length} is not MiB-aligned past the header section`);
    }
    if (offsetBig + BigInt(length) > BigInt(size)) {
      throw new ImageReadError(
        `${name}: VHDX region ${guid} (${length} bytes at offset ${offsetBig}) runs past the end of the file (${size} bytes); the file is truncated`,
        'TRUNCATED');
    }
    regions.set(guid, { offset: Number(offsetBig), length });
  }
  return regions;
}

interface MetadataItem {
  readonly offset: number;
  readonly length: number;
}

/** Decodes the key/value pairs of a parent locator item. */
function parseParentLocator(buf: Buffer): Record<string, string> {
  const out: Record<string, string> = {};
  if (buf.length < 20) return out;
  const count = buf.readUInt16LE(18);
  for (let i = 0; i < count && 20 + (i + 1) * 12 <= buf.length; i++) {
    const at = 20 + i * 12;
    const keyOffset = buf.readUInt32LE(at);
    const valueOffset = buf.readUInt32LE(at + 4);
    const keyLength = buf.readUInt16LE(at + 8);
    const valueLength = buf.readUInt16LE(at + 10);
    if (keyOffset + keyLength > buf.length || valueOffset + valueLength > buf.length) continue;
    const key = utf16z(buf.subarray(keyOffset, keyOffset + keyLength), false);
    out[key] = utf16z(buf.subarray(valueOffset, valueOffset + valueLength), false);
  }
  return out;
}

/** Opens `source` as a VHDX. */
export async function openVhdx(source: ByteSource): Promise<DiskImage> {
  const name = source.name;
  const size = source.size;
  // One read for the identifier, both headers and the first region table.
  const first = await source.read(0, 256 * KiB);
  if (first.toString('latin1', 0, 8) !== 'vhdxfile') {
    throw new ImageFormatError(`${name}: no VHDX file identifier ('vhdxfile') at offset 0`);
  }
  if (first.length < 256 * KiB) {
    throw new ImageReadError(
      `${name}: the VHDX header section needs at least ${256 * KiB} bytes but the file has ${size}; the file is truncated`, 'TRUNCATED');
  }
  const creator = utf16z(first.subarray(8, 520), false);

  // The current header: the valid one with the higher sequence number.
  const h1 = parseHeader(first.subarray(64 * KiB, 64 * KiB + HEADER_SIZE));
  const h2 = parseHeader(first.subarray(128 * KiB, 128 * KiB + HEADER_SIZE));
  const valid = [h1, h2].map((h, i) => ({ h, i: i + 1 })).filter((x) => typeof x.h === 'object') as Array<{ h: Header; i: number }>;
  if (valid.length === 0) {
    if (h1 === 'bad-checksum' || h2 === 'bad-checksum') {
      throw new ImageFormatError(`${name}: both VHDX headers fail their CRC-32C check; the image is damaged`, 'CHECKSUM_MISMATCH');
    }
    throw new ImageFormatError(`${name}: no VHDX header ('head') at 64 KiB or 128 KiB`);
  }
  const current = valid.length === 2 && valid[1].h.sequence > valid[0].h.sequence ? valid[1] : valid[0];
  const header = current.h;
  if (header.version !== 1) {
    throw new ImageFormatError(`${name}: VHDX version ${header.version} is not supported (only 1)`);
  }

  // The region table: the first copy, or the second when the first is damaged.
  let regions = parseRegionTable(name, size, first.subarray(192 * KiB, 192 * KiB + REGION_TABLE_SIZE));
  if (typeof regions !== 'object') {
    const firstState = regions;
    regions = parseRegionTable(name, size, await readExact(source, 256 * KiB, REGION_TABLE_SIZE, 'VHDX region table'));
    if (typeof regions !== 'object') {
      if (firstState === 'bad-checksum' || regions === 'bad-checksum') {
        throw new ImageFormatError(`${name}: both VHDX region tables fail their CRC-32C check; the image is damaged`, 'CHECKSUM_MISMATCH');
      }
      throw new ImageFormatError(`${name}: no VHDX region table ('regi') at 192 KiB or 256 KiB`);
    }
  }
  const batRegion = regions.get(REGION_BAT);
  const metaRegion = regions.get(REGION_METADATA);
  if (!batRegion || !metaRegion) throw new ImageFormatError(`${name}: the VHDX region table lacks the ${batRegion ? 'metadata' : 'BAT'} region`);
  if (batRegion.offset < metaRegion.offset + metaRegion.length && metaRegion.offset < batRegion.offset + batRegion.length) {
    throw new ImageFormatError(`${name}: the VHDX BAT and metadata regions overlap`);
  }

  // The metadata table, then the items it points at (usually one more read).
  const table = await readExact(source, metaRegion.offset, METADATA_TABLE_SIZE, 'VHDX metadata table');
  if (table.toString('latin1', 0, 8) !== 'metadata') {
    throw new ImageFormatError(`${name}: no VHDX metadata table ('metadata') at offset ${metaRegion.offset}`);
  }
  const itemCount = table.readUInt16LE(10);
  if (itemCount > MAX_ENTRIES) throw new ImageFormatError(`${name}: the VHDX metadata table claims ${itemCount} entries (at most ${MAX_ENTRIES})`);
  const items = new Map<string, MetadataItem>();
  for (let i = 0; i < itemCount; i++) {
    const at = 32 + i * 32;
    const id = guidAt(table, at);
    const offset = table.readUInt32LE(at + 16);
    const length = table.readUInt32LE(at + 20);
    const flags = table.readUInt32LE(at + 24);
    const isUser = (flags & 1) === 1;
    const isRequired = (flags & 4) === 4;
    if (isUser || !KNOWN_METADATA.has(id)) {
      if (isRequired) throw new ImageFormatError(`${name}: the VHDX requires metadata item ${id}, which this reader does not know`);
      continue;
    }
    if (items.has(id)) throw new ImageFormatError(`${name}: the VHDX metadata table lists item ${id} twice`);
    if (length > 0 && (offset < METADATA_TABLE_SIZE || offset + length > metaRegion.length)) {
      throw new ImageFormatError(`${name}: VHDX metadata item ${id} (${length} bytes at ${offset}) lies outside its region`);
    }
    items.set(id, { offset, length });
  }
  const need = (id: string, what: string, min: number): MetadataItem => {
    const item = items.get(id);
    if (!item) throw new ImageFormatError(`${name}: the VHDX metadata lacks the ${what} item`);
    if (item.length < min) throw new ImageFormatError(`${name}: the VHDX ${what} item has ${item.length} bytes (needs ${min})`);
    return item;
  };
  const params = need(META_FILE_PARAMETERS, 'file parameters', 8);
  const sizeItem = need(META_VIRTUAL_DISK_SIZE, 'virtual disk size', 8);
  const lssItem = need(META_LOGICAL_SECTOR_SIZE, 'logical sector size', 4);
  const wanted: Array<[string, MetadataItem, number]> = [
    [META_FILE_PARAMETERS, params, 8],
    [META_VIRTUAL_DISK_SIZE, sizeItem, 8],
    [META_LOGICAL_SECTOR_SIZE, lssItem, 4],
  ];
  for (const [id, n] of [[META_PHYSICAL_SECTOR_SIZE, 4], [META_VIRTUAL_DISK_ID, 16]] as Array<[string, number]>) {
    const item = items.get(id);
    if (item && item.length >= n) wanted.push([id, item, n]);
  }
  const locatorItem = items.get(META_PARENT_LOCATOR);
  if (locatorItem && locatorItem.length >= 20 && locatorItem.length <= MAX_LOCATOR) {
    wanted.push([META_PARENT_LOCATOR, locatorItem, locatorItem.length]);
  }
  const values = await readItems(source, metaRegion.offset, wanted);

  const paramBuf = values.get(META_FILE_PARAMETERS)!;
  const blockSize = paramBuf.readUInt32LE(0);
  const flags = paramBuf.readUInt32LE(4);
  const leaveBlocksAllocated = (flags & 1) === 1;
  const hasParent = (flags & 2) === 2;
  const virtualSizeBig = values.get(META_VIRTUAL_DISK_SIZE)!.readBigUInt64LE(0);
  const logicalSectorSize = values.get(META_LOGICAL_SECTOR_SIZE)!.readUInt32LE(0);
  if (!isPowerOfTwoIn(blockSize, MiB, 256 * MiB)) {
    throw new ImageFormatError(`${name}: VHDX block size ${blockSize} is not a power of two between 1 MiB and 256 MiB`);
  }
  if (logicalSectorSize !== 512 && logicalSectorSize !== 4096) {
    throw new ImageFormatError(`${name}: VHDX logical sector size ${logicalSectorSize} is neither 512 nor 4096`);
  }
  if (virtualSizeBig > BigInt(MAX_VIRTUAL_SIZE) || virtualSizeBig % BigInt(logicalSectorSize) !== 0n) {
    throw new ImageFormatError(
      `${name}: VHDX virtual size ${virtualSizeBig} is above 64 TiB or not a multiple of the ${logicalSectorSize}-byte sector`);
  }
  const virtualSize = Number(virtualSizeBig);

  // The BAT: payload entries interleaved with one sector-bitmap entry per chunk.
  const chunkRatio = (SECTORS_PER_BITMAP_BLOCK * logicalSectorSize) / blockSize;
  const payloadBlocks = Math.ceil(virtualSize / blockSize);
  const bitmapBlocks = Math.ceil(payloadBlocks / chunkRatio);
  const batEntries = hasParent
    ? bitmapBlocks * (chunkRatio + 1)
    : payloadBlocks + Math.max(0, Math.floor((payloadBlocks - 1) / chunkRatio));
  if (batEntries * 8 > batRegion.length) {
    throw new ImageFormatError(
      `${name}: the VHDX BAT region (${batRegion.length} bytes) cannot hold the ${batEntries} entries a disk of ${virtualSize} bytes needs`);
  }
  const bat = new LazyTable(source, batRegion.offset, Math.floor(batRegion.length / 8), 8, 'VHDX BAT');
  const reserved: Array<[number, number]> = [
    [0, MiB],
    [batRegion.offset, batRegion.offset + batRegion.length],
    [metaRegion.offset, metaRegion.offset + metaRegion.length],
  ];

  const findings: Finding[] = [];
  const details: Record<string, string | number | boolean> = {
    creator,
    blockSize,
    logicalSectorSize,
    leaveBlocksAllocated,
    hasParent,
    chunkRatio,
    activeHeader: current.i,
    headerSequence: header.sequence.toString(),
  };
  const pss = values.get(META_PHYSICAL_SECTOR_SIZE);
  if (pss) details.physicalSectorSize = pss.readUInt32LE(0);
  const diskId = values.get(META_VIRTUAL_DISK_ID);
  if (diskId) details.virtualDiskId = guidAt(diskId, 0);
  if (header.logGuid !== ZERO_GUID) {
    details.logGuid = header.logGuid;
    findings.push(finding('VHDX_LOG_NOT_REPLAYED',
      `The VHDX log ${header.logGuid} (${header.logLength} bytes at offset ${header.logOffset}) has not been replayed, so the blocks may not hold the latest writes.`));
  }
  if (hasParent) {
    const locator = values.has(META_PARENT_LOCATOR) ? parseParentLocator(values.get(META_PARENT_LOCATOR)!) : {};
    const parent = locator.relative_path || locator.absolute_win32_path || locator.volume_path || '';
    if (parent) details.parentPath = parent;
    findings.push(finding('DIFFERENCING_DISK', parent
      ? `The VHDX is a differencing disk (HasParent) whose parent is "${parent}".`
      : 'The VHDX is a differencing disk (HasParent); its parent locator names no path.'));
  }
  const subformat = hasParent ? 'differencing' : leaveBlocksAllocated ? 'fixed' : 'dynamic';

  /**
   * The state and file offset of BAT entry `index`; for present blocks of `span` bytes, the offset
   * is checked to lie past the structures and to start inside the file.
   */
  async function batEntry(index: number, what: string, span: number): Promise<{ state: number; offset: number }> {
    const v = (await bat.entry(index)).readBigUInt64LE(0);
    const state = Number(v & 7n);
    if (state !== State.FullyPresent && state !== State.PartiallyPresent) return { state, offset: 0 };
    const offsetBig = (v >> 20n) * BigInt(MiB);
    if (offsetBig >= BigInt(size)) {
      throw new ImageReadError(
        `${name}: VHDX ${what} at offset ${offsetBig} lies past the end of the file (${size} bytes); the file is truncated`, 'TRUNCATED');
    }
    const offset = Number(offsetBig);
    for (const [s, e] of reserved) {
      if (offset < e && s < offset + span) {
        throw new ImageFormatError(`${name}: VHDX ${what} at offset ${offset} overlaps the headers, the BAT or the metadata`);
      }
    }
    return { state, offset };
  }

  async function readPartial(block: number, blockOffset: number, within: number, n: number): Promise<Buffer> {
    const chunk = Math.floor(block / chunkRatio);
    const sb = await batEntry(chunk * (chunkRatio + 1) + chunkRatio, `sector bitmap of chunk ${chunk}`, MiB);
    if (sb.state !== 6) {
      throw new ImageFormatError(`${name}: VHDX block ${block} is partially present but its chunk has no sector bitmap`);
    }
    const data = Buffer.from(await readExact(source, blockOffset + within, n, `VHDX block ${block}`));
    const base = (block % chunkRatio) * (blockSize / logicalSectorSize);
    const s0 = base + Math.floor(within / logicalSectorSize);
    const s1 = base + Math.ceil((within + n) / logicalSectorSize);
    const byte0 = s0 >> 3;
    const bits = await readExact(source, sb.offset + byte0, ((s1 - 1) >> 3) - byte0 + 1, `VHDX sector bitmap of chunk ${chunk}`);
    for (let s = s0; s < s1; s++) {
      if (((bits[(s >> 3) - byte0] >> (s & 7)) & 1) === 0) {
        const from = Math.max(within, (s - base) * logicalSectorSize) - within;
        const to = Math.min(within + n, (s - base + 1) * logicalSectorSize) - within;
        data.fill(0, from, to);
      }
    }
    return data;
  }

  return {
    format: 'vhdx',
    subformat,
    virtualSize,
    findings,
    details,
    async read(offset: number, length: number): Promise<Buffer> {
      checkRange(offset, length);
      return readBlocks(virtualSize, blockSize, offset, length, async (block, within, n) => {
        const e = await batEntry(block + Math.floor(block / chunkRatio), `block ${block}`, blockSize);
        switch (e.state) {
          case State.NotPresent:
          case State.Undefined:
          case State.Zero:
          case State.Unmapped:
            return undefined;
          case State.FullyPresent:
            return readExact(source, e.offset + within, n, `VHDX block ${block}`);
          case State.PartiallyPresent:
            return readPartial(block, e.offset, within, n);
          default:
            throw new ImageFormatError(`${name}: VHDX block ${block} has the invalid BAT state ${e.state}`);
        }
      });
    },
    extents(): AsyncIterable<Extent> {
      return tableExtents(bat, batEntries, (i, data, at) => {
        if (i % (chunkRatio + 1) === chunkRatio) return undefined; // a sector-bitmap entry
        const state = data[at] & 7;
        return state === State.FullyPresent || state === State.PartiallyPresent ? i - Math.floor(i / (chunkRatio + 1)) : undefined;
      }, blockSize, virtualSize);
    },
  };
}

/**
 * Reads the metadata items in `wanted` (id, item, bytes needed), in one request when they lie
 * close together (they usually share the first 64 KiB after the table).
 */
async function readItems(
  source: ByteSource,
  regionOffset: number,
  wanted: ReadonlyArray<[string, MetadataItem, number]>,
): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  const lo = Math.min(...wanted.map(([, it]) => it.offset));
  const hi = Math.max(...wanted.map(([, it, n]) => it.offset + n));
  if (hi - lo <= 256 * KiB) {
    const span = await readExact(source, regionOffset + lo, hi - lo, 'VHDX metadata');
    for (const [id, it, n] of wanted) out.set(id, span.subarray(it.offset - lo, it.offset - lo + n));
  } else {
    for (const [id, it, n] of wanted) out.set(id, await readExact(source, regionOffset + it.offset, n, 'VHDX metadata'));
  }
  return out;
}
