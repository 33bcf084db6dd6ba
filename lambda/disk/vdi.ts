/* eslint-disable no-bitwise -- bit fields, bitmaps and checksums of a binary format */
/**
 * VDI (VirtualBox Disk Image, little-endian), header version 1.x: dynamic, fixed, undo and
 * differencing images.
 *
 * A text banner fills the first 64 bytes, then the signature 0xBEDA107F, the version and the
 * header. The block map (one u32 per block) gives, for each virtual block, the index of its data
 * in the data area, 0xFFFFFFFF (not allocated) or 0xFFFFFFFE (a block of zeros). Block `i` of the
 * data area starts at `dataOffset + i * (extra + blockSize) + extra`.
 *
 * Undo and differencing images keep only what changed against a parent: what they do not hold
 * reads as zeros here, and the DIFFERENCING_DISK finding says so.
 */
import { guidAt } from './bytes';
import { ImageFormatError, ImageReadError } from './errors';
import { finding, type Finding } from './findings';
import { readBlocks, type DiskImage, type Extent } from './image';
import { checkRange, readExact, type ByteSource } from './source';
import { isPowerOfTwoIn, LazyTable, tableExtents } from './vhd';

const SIGNATURE = 0xbeda107f;
const PRE_HEADER = 72; // banner (64), signature (4), version (4)
const HEADER_V1_SIZE = 384; // the header of version 1.1 up to and including the four UUIDs
const NOT_ALLOCATED = 0xffffffff;
const ZERO_BLOCK = 0xfffffffe;
const MiB = 1024 * 1024;
const MIN_BLOCK = 4096;
const MAX_BLOCK = 256 * MiB;
const MAX_BLOCK_EXTRA = 1 * MiB;

const IMAGE_TYPES: Record<number, 'dynamic' | 'fixed' | 'undo' | 'differencing'> = {
  1: 'dynamic',
  2: 'fixed',
  3: 'undo',
  4: 'differencing',
};

/** Opens `source` as a VDI image. */
export async function openVdi(source: ByteSource): Promise<DiskImage> {
  const name = source.name;
  const size = source.size;
  const h = await source.read(0, 512);
  if (h.length >= 68 && h.readUInt32LE(64) !== SIGNATURE) {
    throw new ImageFormatError(`${name}: no VDI signature at offset 64 (found 0x${h.readUInt32LE(64).toString(16)})`);
  }
  if (h.length < PRE_HEADER + HEADER_V1_SIZE) {
    throw new ImageReadError(
      `${name}: the VDI header needs ${PRE_HEADER + HEADER_V1_SIZE} bytes but the file has ${size}; the file is truncated`, 'TRUNCATED');
  }
  const version = h.readUInt32LE(68);
  if (version >>> 16 !== 1) {
    throw new ImageFormatError(`${name}: VDI header version ${version >>> 16}.${version & 0xffff} is not supported (only 1.x)`);
  }
  const headerSize = h.readUInt32LE(72);
  const type = h.readUInt32LE(76);
  const subformat = IMAGE_TYPES[type];
  if (!subformat) {
    throw new ImageFormatError(`${name}: VDI image type ${type} is not one of dynamic (1), fixed (2), undo (3), differencing (4)`);
  }
  const description = h.toString('latin1', 84, 340).replace(/\0.*$/s, '').trim();
  const mapOffset = h.readUInt32LE(340);
  const dataOffset = h.readUInt32LE(344);
  const diskSizeBig = h.readBigUInt64LE(368);
  const blockSize = h.readUInt32LE(376);
  const blockExtra = h.readUInt32LE(380);
  const blocksInImage = h.readUInt32LE(384);
  const blocksAllocated = h.readUInt32LE(388);

  if (headerSize < HEADER_V1_SIZE || PRE_HEADER + headerSize > Math.min(mapOffset, dataOffset)) {
    throw new ImageFormatError(
      `${name}: VDI header size ${headerSize} is too small or overlaps the block map (${mapOffset}) or data (${dataOffset})`);
  }
  if (!isPowerOfTwoIn(blockSize, MIN_BLOCK, MAX_BLOCK)) {
    throw new ImageFormatError(`${name}: VDI block size ${blockSize} is not a power of two between ${MIN_BLOCK} and ${MAX_BLOCK}`);
  }
  if (blockExtra > MAX_BLOCK_EXTRA) {
    throw new ImageFormatError(`${name}: VDI block extra data of ${blockExtra} bytes is absurd`);
  }
  const mapEnd = mapOffset + blocksInImage * 4;
  if (mapEnd > size) {
    throw new ImageReadError(
      `${name}: the VDI block map (${blocksInImage} entries at offset ${mapOffset}) runs past the end of the file (${size} bytes); the file is truncated`,
      'TRUNCATED');
  }
  if (dataOffset < mapEnd) {
    throw new ImageFormatError(`${name}: the VDI data area (offset ${dataOffset}) overlaps the block map (ending at ${mapEnd})`);
  }
  if (diskSizeBig > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new ImageFormatError(`${name}: VDI disk size ${diskSizeBig} is beyond any disk`, 'ABSURD_VALUE');
  }
  if (diskSizeBig > BigInt(blocksInImage) * BigInt(blockSize)) {
    throw new ImageFormatError(
      `${name}: the VDI disk of ${diskSizeBig} bytes does not fit in its ${blocksInImage} blocks of ${blockSize} bytes`);
  }
  const virtualSize = Number(diskSizeBig);
  const blocks = Math.ceil(virtualSize / blockSize);
  const stride = blockExtra + blockSize;

  const findings: Finding[] = [];
  const parentUuid = guidAt(h, 424);
  if (subformat === 'differencing' || subformat === 'undo') {
    findings.push(finding('DIFFERENCING_DISK',
      `The VDI is ${subformat === 'undo' ? 'an undo' : 'a differencing'} image of the parent with UUID ${parentUuid}.`));
  }
  const details: Record<string, string | number | boolean> = {
    version: `${version >>> 16}.${version & 0xffff}`,
    imageType: subformat,
    blockSize,
    blocksInImage,
    blocksAllocated,
    uuid: guidAt(h, 392),
  };
  if (blockExtra) details.blockExtraData = blockExtra;
  if (description) details.description = description;
  if (subformat === 'differencing' || subformat === 'undo') details.parentUuid = parentUuid;

  const map = new LazyTable(source, mapOffset, blocks, 4, 'VDI block map');

  /** The file offset of block `block`'s data, or undefined when it reads as zeros. */
  async function blockData(block: number): Promise<number | undefined> {
    const v = (await map.entry(block)).readUInt32LE(0);
    if (v === NOT_ALLOCATED || v === ZERO_BLOCK) return undefined;
    if (v >= blocksInImage) {
      throw new ImageFormatError(`${name}: VDI block ${block} points at data block ${v}, beyond the ${blocksInImage} blocks of the image`);
    }
    return dataOffset + v * stride + blockExtra;
  }

  return {
    format: 'vdi',
    subformat,
    virtualSize,
    findings,
    details,
    async read(offset: number, length: number): Promise<Buffer> {
      checkRange(offset, length);
      return readBlocks(virtualSize, blockSize, offset, length, async (block, within, n) => {
        const at = await blockData(block);
        if (at === undefined) return undefined;
        if (at + within + n > size && size >= dataOffset + blocksAllocated * stride) {
          // The file holds every block its header counts: the map entry is wrong, not the file short.
          const index = (at - blockExtra - dataOffset) / stride;
          throw new ImageFormatError(
            `${name}: the VDI block map points block ${block} at data block ${index}, past the end of the file (${size} bytes)`);
        }
        return readExact(source, at + within, n, `VDI block ${block}`);
      });
    },
    extents(): AsyncIterable<Extent> {
      return tableExtents(map, blocks, (i, data, at) => {
        const v = data.readUInt32LE(at);
        return v === NOT_ALLOCATED || v === ZERO_BLOCK ? undefined : i;
      }, blockSize, virtualSize);
    },
  };
}
