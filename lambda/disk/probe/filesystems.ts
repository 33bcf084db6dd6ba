/**
 * Filesystem signatures, read from one window at the start of a partition (or of the disk).
 * Labels and UUIDs are taken where they sit in the same window, formatted as blkid shows them.
 */
import { ImageFormatError } from '../errors';
import type { DiskImage } from '../image';
import { parseFatBootSector, type FatBootSector } from './fat';

/** What a partition (or a whole disk) holds. */
export type FilesystemId =
  | 'ext2'
  | 'ext3'
  | 'ext4'
  | 'xfs'
  | 'btrfs'
  | 'ntfs'
  | 'jfs'
  | 'fat12'
  | 'fat16'
  | 'fat32'
  | 'lvm2'
  | 'swap'
  | 'luks'
  | 'unknown';

/** A recognised filesystem, with its label and UUID where they are cheap to read. */
export interface FilesystemInfo {
  filesystem: FilesystemId;
  label?: string;
  uuid?: string;
}

/** What {@link identifyFilesystem} learns, including a FAT boot sector for walking directories. */
export interface IdentifiedFilesystem extends FilesystemInfo {
  fat?: FatBootSector;
}

/**
 * The window read at the start of a partition: it reaches every signature, the farthest being the
 * Btrfs superblock at 64 KiB (magic at 65600, label up to 66091).
 */
export const FS_WINDOW = 68 * 1024;

/** Filesystems VM Import boots from: ext2/3/4, XFS, Btrfs, JFS for Linux, NTFS for Windows. */
export const ROOT_FILESYSTEMS: ReadonlySet<FilesystemId> = new Set<FilesystemId>(['ext2', 'ext3', 'ext4', 'xfs', 'btrfs', 'jfs', 'ntfs']);

/** Filesystems whose signature occupies sector 0, so that they cannot also hold an MBR there. */
export const SECTOR0_FILESYSTEMS: ReadonlySet<FilesystemId> = new Set<FilesystemId>(['fat12', 'fat16', 'fat32', 'ntfs', 'xfs', 'luks']);

// ext2/3/4 feature flags (superblock at 1024).
const EXT_COMPAT_HAS_JOURNAL = 0x4;
const EXT_INCOMPAT_JOURNAL_DEV = 0x8;
/** Incompatible features an ext3 driver understands: filetype, recover, meta_bg. */
const EXT3_INCOMPAT = 0x2 | 0x4 | 0x10;
/** Read-only compatible features an ext3 driver understands: sparse_super, large_file, btree_dir. */
const EXT3_RO_COMPAT = 0x1 | 0x2 | 0x4;

function magicAt(buf: Buffer, offset: number, magic: string | Buffer): boolean {
  const m = typeof magic === 'string' ? Buffer.from(magic, 'latin1') : magic;
  return buf.length >= offset + m.length && buf.subarray(offset, offset + m.length).equals(m);
}

/** A NUL-terminated string field, or undefined when empty. */
function cString(buf: Buffer, offset: number, length: number, encoding: BufferEncoding = 'utf8'): string | undefined {
  const field = buf.subarray(offset, offset + length);
  const end = field.indexOf(0);
  const s = field.toString(encoding, 0, end >= 0 ? end : field.length).trim();
  return s || undefined;
}

/** A 16-byte UUID stored in byte order, as 8-4-4-4-12 lower-case hex; undefined when all zero. */
function uuidAt(buf: Buffer, offset: number): string | undefined {
  if (buf.length < offset + 16) return undefined;
  const h = buf.toString('hex', offset, offset + 16);
  if (/^0+$/.test(h)) return undefined;
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function result(filesystem: FilesystemId, label?: string, uuid?: string): IdentifiedFilesystem {
  return { filesystem, ...(label ? { label } : {}), ...(uuid ? { uuid } : {}) };
}

function luks(buf: Buffer): IdentifiedFilesystem | undefined {
  if (!magicAt(buf, 0, Buffer.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe])) || buf.length < 208) return undefined;
  const version = buf.readUInt16BE(6);
  if (version !== 1 && version !== 2) return undefined;
  return result('luks', version === 2 ? cString(buf, 24, 48) : undefined, cString(buf, 168, 40, 'latin1'));
}

function xfs(buf: Buffer): IdentifiedFilesystem | undefined {
  if (!magicAt(buf, 0, 'XFSB') || buf.length < 120) return undefined;
  const blockSize = buf.readUInt32BE(4);
  if (blockSize < 512 || blockSize > 65536 || (blockSize & (blockSize - 1)) !== 0) return undefined;
  return result('xfs', cString(buf, 108, 12), uuidAt(buf, 32));
}

function lvm2(buf: Buffer): IdentifiedFilesystem | undefined {
  for (let s = 0; s < 4; s++) {
    const o = s * 512;
    if (!magicAt(buf, o, 'LABELONE') || !magicAt(buf, o + 24, 'LVM2 001')) continue;
    const pvAt = o + buf.readUInt32LE(o + 20);
    let uuid: string | undefined;
    if (pvAt + 32 <= o + 512) {
      const id = buf.toString('latin1', pvAt, pvAt + 32);
      if (/^[A-Za-z0-9!#+.]{32}$/.test(id)) {
        uuid = [id.slice(0, 6), id.slice(6, 10), id.slice(10, 14), id.slice(14, 18), id.slice(18, 22), id.slice(22, 26), id.slice(26)].join('-');
      }
    }
    return result('lvm2', undefined, uuid);
  }
  return undefined;
}

function swap(buf: Buffer): IdentifiedFilesystem | undefined {
  for (const page of [4096, 8192, 16384, 65536]) {
    const at = page - 10;
    if (magicAt(buf, at, 'SWAPSPACE2')) {
      const v1 = buf.length >= 1068 && buf.readUInt32LE(1024) === 1;
      return result('swap', v1 ? cString(buf, 1052, 16) : undefined, v1 ? uuidAt(buf, 1036) : undefined);
    }
    if (magicAt(buf, at, 'SWAP-SPACE')) return result('swap');
  }
  return undefined;
}

function btrfs(buf: Buffer): IdentifiedFilesystem | undefined {
  const sb = 65536;
  if (!magicAt(buf, sb + 64, '_BHRfS_M')) return undefined;
  return result('btrfs', buf.length >= sb + 299 + 256 ? cString(buf, sb + 299, 256) : undefined, uuidAt(buf, sb + 32));
}

function ext(buf: Buffer): IdentifiedFilesystem | undefined {
  const sb = 1024;
  if (buf.length < sb + 136 || buf.readUInt16LE(sb + 56) !== 0xef53) return undefined;
  const logBlockSize = buf.readUInt32LE(sb + 24);
  const blocks = buf.readUInt32LE(sb + 4);
  const inodes = buf.readUInt32LE(sb);
  if (logBlockSize > 6 || blocks === 0 || inodes === 0) return undefined;
  const compat = buf.readUInt32LE(sb + 92);
  const incompat = buf.readUInt32LE(sb + 96);
  const roCompat = buf.readUInt32LE(sb + 100);
  if (incompat & EXT_INCOMPAT_JOURNAL_DEV) return result('unknown'); // an external journal, not a filesystem
  const ext4 = (incompat & ~EXT3_INCOMPAT) !== 0 || (roCompat & ~EXT3_RO_COMPAT) !== 0;
  const id: FilesystemId = ext4 ? 'ext4' : compat & EXT_COMPAT_HAS_JOURNAL ? 'ext3' : 'ext2';
  return result(id, cString(buf, sb + 120, 16), uuidAt(buf, sb + 104));
}

function jfs(buf: Buffer): IdentifiedFilesystem | undefined {
  const sb = 32768;
  if (!magicAt(buf, sb, 'JFS1') || buf.length < sb + 168) return undefined;
  const blockSize = buf.readUInt32LE(sb + 16);
  const log2 = buf.readUInt16LE(sb + 20);
  if (log2 > 16 || blockSize !== 2 ** log2) return undefined;
  return result('jfs', cString(buf, sb + 152, 16), uuidAt(buf, sb + 136));
}

function ntfs(buf: Buffer): IdentifiedFilesystem | undefined {
  if (!magicAt(buf, 3, 'NTFS    ') || buf.length < 512) return undefined;
  const bytesPerSector = buf.readUInt16LE(11);
  const spc = buf[13];
  if (bytesPerSector < 256 || bytesPerSector > 4096 || (bytesPerSector & (bytesPerSector - 1)) !== 0) return undefined;
  const clusterOk = spc > 0 && (spc <= 0x80 ? (spc & (spc - 1)) === 0 : spc >= 0xf4);
  if (!clusterOk) return undefined;
  const serial = buf.readBigUInt64LE(72);
  return result('ntfs', undefined, serial ? serial.toString(16).toUpperCase().padStart(16, '0') : undefined);
}

function fat(buf: Buffer): IdentifiedFilesystem | undefined {
  const bs = parseFatBootSector(buf);
  if (!bs) return undefined;
  return { ...result(bs.type, bs.label, bs.serial), fat: bs };
}

const PROBES = [luks, lvm2, swap, xfs, btrfs, ext, jfs, ntfs, fat];

/** Recognises the filesystem whose first bytes are in `window` (read at the start of the partition). */
export function identifyFilesystem(window: Buffer): IdentifiedFilesystem {
  for (const probe of PROBES) {
    const hit = probe(window);
    if (hit) return hit;
  }
  return { filesystem: 'unknown' };
}

/** Reads the window at the start of a partition: at most {@link FS_WINDOW} bytes, never past the partition or the disk. */
export async function readFilesystemWindow(image: DiskImage, start: number, size: number): Promise<Buffer> {
  if (!Number.isSafeInteger(start) || start < 0 || !Number.isSafeInteger(size) || size < 0) {
    throw new ImageFormatError(`a partition at ${start} of ${size} bytes is impossible`);
  }
  const length = Math.min(FS_WINDOW, size, image.virtualSize - start);
  if (length <= 0) return Buffer.alloc(0);
  return image.read(start, length);
}

/** Recognises the filesystem of the partition at `start` (bytes) of `size` bytes, in one read. */
export async function detectFilesystem(image: DiskImage, start: number, size: number): Promise<FilesystemInfo> {
  const hit = identifyFilesystem(await readFilesystemWindow(image, start, size));
  return result(hit.filesystem, hit.label, hit.uuid);
}
