/**
 * FAT12/16/32: the boot sector (BPB), and a bounded walk of directories to find a file such as
 * the UEFI fallback loader /EFI/BOOT/BOOTX64.EFI. Directory clusters are read through a small
 * block cache and the FAT only when a directory runs past a cluster; every chain is bounded in
 * length and checked for loops, and a walk makes at most {@link MAX_WALK_READS} reads.
 */
import type { DiskImage } from '../image';
import { CachedSource, type ByteSource } from '../source';

/** The geometry of a FAT filesystem, from its boot sector. */
export interface FatBootSector {
  readonly type: 'fat12' | 'fat16' | 'fat32';
  readonly bytesPerSector: number;
  readonly sectorsPerCluster: number;
  readonly reservedSectors: number;
  readonly fatCount: number;
  /** Sectors of one FAT. */
  readonly fatSectors: number;
  /** Entries of the fixed root directory (FAT12/16). */
  readonly rootEntries: number;
  readonly totalSectors: number;
  /** First cluster of the root directory (FAT32). */
  readonly rootCluster: number;
  /** Data clusters: valid cluster numbers are 2 .. clusterCount + 1. */
  readonly clusterCount: number;
  /** First sector of the data region. */
  readonly firstDataSector: number;
  readonly label?: string;
  /** The volume serial number, as `XXXX-XXXX`. */
  readonly serial?: string;
}

/** One entry of a FAT directory. */
export interface FatDirEntry {
  /** The long name when there is one, else the 8.3 name. */
  readonly name: string;
  readonly shortName: string;
  readonly directory: boolean;
  readonly firstCluster: number;
  readonly size: number;
}

/** Directories larger than this are not read further. */
export const MAX_DIR_BYTES = 256 * 1024;
/** Clusters larger than this are not walked. */
export const MAX_CLUSTER_BYTES = 64 * 1024;
/** A walk gives up after this many reads. */
export const MAX_WALK_READS = 32;

const ATTR_LONG_NAME = 0x0f;
const ATTR_VOLUME_ID = 0x08;
const ATTR_DIRECTORY = 0x10;

function isPowerOfTwo(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}

function trimLabel(buf: Buffer, offset: number, length: number): string | undefined {
  const label = buf.toString('latin1', offset, offset + length).replace(/[\s\u0000]+$/, '');
  return label && label !== 'NO NAME' ? label : undefined;
}

/**
 * Parses a FAT boot sector, or gives undefined when `buf` is not one. The FAT type follows the
 * BPB as Linux reads it: a zero 16-bit FAT size means FAT32, otherwise the cluster count decides
 * between FAT12 and FAT16.
 */
export function parseFatBootSector(buf: Buffer): FatBootSector | undefined {
  if (buf.length < 512) return undefined;
  if (!(buf[0] === 0xeb || buf[0] === 0xe9)) return undefined;
  const bytesPerSector = buf.readUInt16LE(11);
  const sectorsPerCluster = buf[13];
  const reservedSectors = buf.readUInt16LE(14);
  const fatCount = buf[16];
  const rootEntries = buf.readUInt16LE(17);
  const media = buf[21];
  const fatSectors16 = buf.readUInt16LE(22);
  const fatSectors32 = buf.readUInt32LE(36);
  const totalSectors = buf.readUInt16LE(19) || buf.readUInt32LE(32);
  if (![512, 1024, 2048, 4096].includes(bytesPerSector)) return undefined;
  if (!isPowerOfTwo(sectorsPerCluster) || sectorsPerCluster > 128) return undefined;
  if (reservedSectors < 1 || fatCount < 1 || fatCount > 4) return undefined;
  if (media !== 0xf0 && media < 0xf8) return undefined;
  const fat32 = fatSectors16 === 0;
  const fatSectors = fat32 ? fatSectors32 : fatSectors16;
  if (fatSectors === 0 || totalSectors === 0) return undefined;
  if (fat32 && rootEntries !== 0) return undefined;
  const rootDirSectors = Math.ceil((rootEntries * 32) / bytesPerSector);
  const firstDataSector = reservedSectors + fatCount * fatSectors + rootDirSectors;
  if (firstDataSector >= totalSectors) return undefined;
  const clusterCount = Math.floor((totalSectors - firstDataSector) / sectorsPerCluster);
  if (clusterCount < 1) return undefined;
  const type = fat32 ? 'fat32' : clusterCount < 4085 ? 'fat12' : 'fat16';
  const ext = fat32 ? 64 : 36; // the extended BPB: drive number, reserved, signature, serial, label
  let label: string | undefined;
  let serial: string | undefined;
  if (buf[ext + 2] === 0x29 || buf[ext + 2] === 0x28) {
    const s = buf.readUInt32LE(ext + 3);
    serial = `${(s >>> 16).toString(16).padStart(4, '0')}-${(s & 0xffff).toString(16).padStart(4, '0')}`.toUpperCase();
    if (buf[ext + 2] === 0x29) label = trimLabel(buf, ext + 7, 11);
  }
  return {
    type,
    bytesPerSector,
    sectorsPerCluster,
    reservedSectors,
    fatCount,
    fatSectors,
    rootEntries,
    totalSectors,
    rootCluster: fat32 ? buf.readUInt32LE(44) : 0,
    clusterCount,
    firstDataSector,
    ...(label ? { label } : {}),
    ...(serial ? { serial } : {}),
  };
}

/** The checksum of an 8.3 name that long-name entries carry. */
function shortNameChecksum(entry: Buffer, offset: number): number {
  let sum = 0;
  for (let i = 0; i < 11; i++) sum = (((sum & 1) << 7) + (sum >> 1) + entry[offset + i]) & 0xff;
  return sum;
}

function shortName(entry: Buffer, o: number): string {
  const raw = Buffer.from(entry.subarray(o, o + 11));
  if (raw[0] === 0x05) raw[0] = 0xe5;
  const base = raw.toString('latin1', 0, 8).replace(/ +$/, '');
  const ext = raw.toString('latin1', 8, 11).replace(/ +$/, '');
  return ext ? `${base}.${ext}` : base;
}

/** Reads the entries of a directory held in `data`, up to the end marker. */
function parseDirectory(data: Buffer, fat32: boolean): { entries: FatDirEntry[] } {
  const entries: FatDirEntry[] = [];
  let lfn: { parts: string[]; checksum: number; expect: number } | undefined;
  for (let o = 0; o + 32 <= data.length; o += 32) {
    const first = data[o];
    if (first === 0x00) break;
    const attr = data[o + 11];
    if (first === 0xe5) {
      lfn = undefined;
      continue;
    }
    if ((attr & 0x3f) === ATTR_LONG_NAME) {
      const seq = first & 0x1f;
      const checksum = data[o + 13];
      if (first & 0x40) {
        lfn = seq >= 1 && seq <= 20 ? { parts: [], checksum, expect: seq } : undefined;
      } else if (!lfn || lfn.checksum !== checksum) {
        lfn = undefined;
      }
      if (lfn) {
        if (seq !== lfn.expect) {
          lfn = undefined;
        } else {
          const chars = Buffer.concat([data.subarray(o + 1, o + 11), data.subarray(o + 14, o + 26), data.subarray(o + 28, o + 32)]);
          lfn.parts.unshift(chars.toString('utf16le'));
          lfn.expect = seq - 1;
        }
      }
      continue;
    }
    const sfn = shortName(data, o);
    let long: string | undefined;
    if (lfn && lfn.expect === 0 && lfn.checksum === shortNameChecksum(data, o)) {
      const joined = lfn.parts.join('');
      const end = joined.indexOf('\u0000');
      long = end >= 0 ? joined.slice(0, end) : joined;
    }
    lfn = undefined;
    if (attr & ATTR_VOLUME_ID) continue;
    const high = fat32 ? data.readUInt16LE(o + 20) : 0;
    entries.push({
      name: long || sfn,
      shortName: sfn,
      directory: (attr & ATTR_DIRECTORY) !== 0,
      firstCluster: high * 65536 + data.readUInt16LE(o + 26),
      size: data.readUInt32LE(o + 28),
    });
  }
  return { entries };
}

/** Whether a directory cluster holds the end-of-directory marker (an entry starting with 0). */
function hasEndMarker(data: Buffer): boolean {
  for (let o = 0; o + 32 <= data.length; o += 32) if (data[o] === 0) return true;
  return false;
}

/** Reads the directories and FAT of one FAT filesystem, through a small cache. */
export class FatVolume {
  private readonly source: CachedSource;
  private readonly clusterBytes: number;
  private reads = 0;

  /**
   * `start` and `size` locate the filesystem on the disk; `head`, when given, holds bytes already
   * read at `start`, which are served without reading again.
   */
  public constructor(
    image: DiskImage,
    start: number,
    size: number,
    private readonly bs: FatBootSector,
    private readonly head: Buffer = Buffer.alloc(0),
  ) {
    const view: ByteSource = {
      name: 'fat',
      size: Math.max(0, Math.min(size, image.virtualSize - start)),
      stats: { bytesRead: 0, requests: 0 },
      read: (offset, length) => {
        this.reads++;
        return image.read(start + offset, length);
      },
      close: async () => {},
    };
    this.source = new CachedSource(view, { blockSize: 64 * 1024, maxBlocks: 8 });
    this.clusterBytes = bs.bytesPerSector * bs.sectorsPerCluster;
  }

  /** The entries of the root directory, or undefined when it cannot be read. */
  public async root(): Promise<FatDirEntry[] | undefined> {
    const bs = this.bs;
    if (bs.type === 'fat32') return this.directory(bs.rootCluster);
    const offset = (bs.reservedSectors + bs.fatCount * bs.fatSectors) * bs.bytesPerSector;
    const data = await this.bytes(offset, Math.min(bs.rootEntries * 32, MAX_DIR_BYTES));
    return data ? parseDirectory(data, false).entries : undefined;
  }

  /** The entries of the directory that starts at `cluster`, or undefined when it cannot be read. */
  public async directory(cluster: number): Promise<FatDirEntry[] | undefined> {
    if (this.clusterBytes > MAX_CLUSTER_BYTES) return undefined;
    // Long names may run across a cluster boundary: gather the clusters, then parse them as one.
    const clusters: Buffer[] = [];
    const seen = new Set<number>();
    let current: number | undefined = cluster;
    while (current !== undefined) {
      if (!this.validCluster(current) || seen.has(current) || seen.size * this.clusterBytes >= MAX_DIR_BYTES) break;
      seen.add(current);
      const data = await this.bytes(this.clusterOffset(current), this.clusterBytes);
      if (!data) break;
      clusters.push(data);
      if (hasEndMarker(data)) break;
      current = await this.nextCluster(current);
    }
    if (!clusters.length) return undefined;
    return parseDirectory(Buffer.concat(clusters), this.bs.type === 'fat32').entries;
  }

  /** Looks up `path` (components, matched without regard to case) from the root directory. */
  public async lookup(path: readonly string[]): Promise<FatDirEntry | undefined> {
    let dir = await this.root();
    let hit: FatDirEntry | undefined;
    for (let i = 0; i < path.length; i++) {
      if (!dir) return undefined;
      const want = path[i].toUpperCase();
      hit = dir.find((e) => e.name.toUpperCase() === want || e.shortName.toUpperCase() === want);
      if (!hit) return undefined;
      if (i < path.length - 1) {
        if (!hit.directory) return undefined;
        dir = await this.directory(hit.firstCluster);
      }
    }
    return hit;
  }

  private validCluster(n: number): boolean {
    return Number.isInteger(n) && n >= 2 && n <= this.bs.clusterCount + 1;
  }

  private clusterOffset(n: number): number {
    const bs = this.bs;
    return (bs.firstDataSector + (n - 2) * bs.sectorsPerCluster) * bs.bytesPerSector;
  }

  /** The next cluster of a chain, or undefined at its end (or where the FAT says nothing sensible). */
  private async nextCluster(n: number): Promise<number | undefined> {
    const bs = this.bs;
    const fatStart = bs.reservedSectors * bs.bytesPerSector;
    const fatBytes = bs.fatSectors * bs.bytesPerSector;
    const at = bs.type === 'fat12' ? Math.floor((n * 3) / 2) : bs.type === 'fat16' ? n * 2 : n * 4;
    const width = bs.type === 'fat32' ? 4 : 2;
    if (at + width > fatBytes) return undefined;
    const buf = await this.bytes(fatStart + at, width);
    if (!buf) return undefined;
    let next: number;
    if (bs.type === 'fat12') {
      const v = buf.readUInt16LE(0);
      next = n & 1 ? v >>> 4 : v & 0xfff;
    } else if (bs.type === 'fat16') {
      next = buf.readUInt16LE(0);
    } else {
      next = buf.readUInt32LE(0) & 0x0fffffff;
    }
    return this.validCluster(next) ? next : undefined;
  }

  private async bytes(offset: number, length: number): Promise<Buffer | undefined> {
    if (length <= 0 || offset + length > this.source.size) return undefined;
    if (offset + length <= this.head.length) return this.head.subarray(offset, offset + length);
    if (this.reads >= MAX_WALK_READS) return undefined;
    const data = await this.source.read(offset, length);
    return data.length === length ? data : undefined;
  }
}

/** The names of the UEFI fallback loaders in /EFI/BOOT, by architecture. */
export const FALLBACK_LOADERS = ['BOOTX64.EFI', 'BOOTAA64.EFI'] as const;

/**
 * Looks for a UEFI fallback loader (/EFI/BOOT/BOOTX64.EFI or BOOTAA64.EFI, any case, 8.3 or long
 * names) on the FAT filesystem at `start` (`head`: bytes already read there). Gives the name found, null when there is none, or
 * undefined when the directories cannot be walked.
 */
export async function findFallbackLoader(
  image: DiskImage,
  start: number,
  size: number,
  bs: FatBootSector,
  head?: Buffer,
): Promise<string | null | undefined> {
  const vol = new FatVolume(image, start, size, bs, head);
  const root = await vol.root();
  if (!root) return undefined;
  const efi = root.find((e) => e.directory && e.name.toUpperCase() === 'EFI');
  if (!efi) return null;
  const efiDir = await vol.directory(efi.firstCluster);
  if (!efiDir) return undefined;
  const boot = efiDir.find((e) => e.directory && e.name.toUpperCase() === 'BOOT');
  if (!boot) return null;
  const bootDir = await vol.directory(boot.firstCluster);
  if (!bootDir) return undefined;
  const loader = bootDir.find((e) => !e.directory && e.size > 0 && (FALLBACK_LOADERS as readonly string[]).includes(e.name.toUpperCase()));
  return loader ? loader.name : null;
}
