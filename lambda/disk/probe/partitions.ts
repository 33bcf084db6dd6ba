/**
 * Partition tables: MBR (with logical partitions in the chain of extended boot records) and GPT
 * (header and entries checked against their CRC32, the backup header at the last LBA
 * cross-checked). Everything is bounded: the EBR chain by a count and a set of visited sectors,
 * the GPT entry array by a size cap, and no buffer is sized from an unchecked field.
 */
import { formatBytes, guidAt } from '../bytes';
import { finding, type Finding } from '../findings';
import type { DiskImage } from '../image';
import type { FilesystemId } from './filesystems';

/** One partition, as Linux would number and see it. */
export interface PartitionInfo {
  /** 1-based, as Linux numbers them: MBR primaries 1-4 by slot, logical partitions from 5; GPT by entry slot. */
  index: number;
  scheme: 'mbr' | 'gpt';
  /** Offset of the first byte, in bytes. */
  start: number;
  /** Size in bytes. */
  size: number;
  /** `0x83` for MBR, the type GUID (upper case) for GPT. */
  type: string;
  /** A readable name of the type (`Linux`, `EFI System`, …). */
  typeName: string;
  /** MBR active flag (0x80), or the GPT "legacy BIOS bootable" attribute (bit 2). */
  bootable: boolean;
  /** The GPT partition name. */
  name?: string;
  /** What the partition holds; absent where it is not probed (extended containers, BIOS boot, reserved). */
  filesystem?: FilesystemId;
  /** The filesystem label. */
  label?: string;
  /** The filesystem UUID, formatted as blkid shows it. */
  uuid?: string;
  /** The partition's own id, as Linux shows PARTUUID: the GPT unique GUID, or `<disk signature>-<nn>` on MBR. */
  partUuid?: string;
  /** An MBR extended partition (a container of logical partitions, never probed). */
  extended?: boolean;
  /** An EFI System Partition by its type (MBR 0xef, or the ESP type GUID). */
  esp?: boolean;
}

/** A partition table read from a disk, with what was found wrong with it. */
export interface PartitionTable {
  table: 'mbr' | 'gpt';
  sectorSize: number;
  partitions: PartitionInfo[];
  /** GPT_CHECKSUM_MISMATCH, GPT_BACKUP_INVALID, PARTITION_TABLE_DAMAGED. */
  findings: Finding[];
  /** The GPT disk GUID, or the MBR disk signature in hex. */
  diskId?: string;
}

/** Bytes read at the start of the disk: MBR, GPT header and 128 entries, and every filesystem signature. */
export const HEAD_WINDOW = 68 * 1024;
/** At most this many EBRs are followed. */
export const MAX_EBRS = 128;
/** At most this many bytes of GPT entries are read. */
export const MAX_GPT_ENTRY_BYTES = 1024 * 1024;

const MBR_SECTOR = 512;
const EXTENDED_TYPES = new Set([0x05, 0x0f, 0x85]);
const GPT_SIGNATURE = 'EFI PART';

/** GPT type GUIDs the probes act on. */
export const GPT_TYPES = {
  ESP: 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B',
  BIOS_BOOT: '21686148-6449-6E6F-744E-656564454649',
  LINUX_LVM: 'E6D6D379-F507-44C2-A23C-238F2A3DF928',
  MS_RESERVED: 'E3C9E316-0B5C-4DB8-817D-F92DF00215AE',
} as const;

const GPT_TYPE_NAMES: Record<string, string> = {
  [GPT_TYPES.ESP]: 'EFI System',
  [GPT_TYPES.BIOS_BOOT]: 'BIOS boot',
  [GPT_TYPES.LINUX_LVM]: 'Linux LVM',
  [GPT_TYPES.MS_RESERVED]: 'Microsoft reserved',
  '0FC63DAF-8483-4772-8E79-3D69D8477DE4': 'Linux filesystem',
  '4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709': 'Linux root (x86-64)',
  '44479540-F297-41B2-9AF7-D131D5F0458A': 'Linux root (x86)',
  'B921B045-1DF0-41C3-AF44-4C6F280D3FAE': 'Linux root (ARM-64)',
  '0657FD6D-A4AB-43C4-84E5-0933C84B4F4F': 'Linux swap',
  'A19D880F-05FC-4D3B-A006-743F0F84911E': 'Linux RAID',
  '933AC7E1-2EB4-4F13-B844-0E14E2AEF915': 'Linux home',
  'BC13C2FF-59E6-4262-A352-B275FD6F7172': 'Linux extended boot',
  'CA7D7CCB-63ED-4C53-861C-1742536059CC': 'Linux LUKS',
  '7FFEC5C9-2D00-49B7-8941-3EA10A5586B7': 'Linux dm-crypt',
  'EBD0A0A2-B9E5-4433-87C0-68B6B72699C7': 'Microsoft basic data',
  'DE94BBA4-06D1-4D40-A16A-BFD50179D6AC': 'Windows recovery',
  '5808C8AA-7E8F-42E0-85D2-E1E90434CFB3': 'Windows LDM metadata',
  'AF9B60A0-1431-4F62-BC68-3311714A69AD': 'Windows LDM data',
  '48465300-0000-11AA-AA11-00306543ECAC': 'Apple HFS+',
  '516E7CB4-6ECF-11D6-8FF8-00022D09712B': 'FreeBSD data',
};

const MBR_TYPE_NAMES: Record<number, string> = {
  0x01: 'FAT12',
  0x04: 'FAT16 <32M',
  0x05: 'Extended',
  0x06: 'FAT16',
  0x07: 'HPFS/NTFS/exFAT',
  0x0b: 'W95 FAT32',
  0x0c: 'W95 FAT32 (LBA)',
  0x0e: 'W95 FAT16 (LBA)',
  0x0f: 'W95 Ext\'d (LBA)',
  0x11: 'Hidden FAT12',
  0x14: 'Hidden FAT16 <32M',
  0x16: 'Hidden FAT16',
  0x17: 'Hidden HPFS/NTFS',
  0x1b: 'Hidden W95 FAT32',
  0x1c: 'Hidden W95 FAT32 (LBA)',
  0x1e: 'Hidden W95 FAT16 (LBA)',
  0x27: 'Hidden NTFS WinRE',
  0x42: 'SFS / Windows dynamic disk',
  0x82: 'Linux swap',
  0x83: 'Linux',
  0x85: 'Linux extended',
  0x8e: 'Linux LVM',
  0xa5: 'FreeBSD',
  0xa6: 'OpenBSD',
  0xa9: 'NetBSD',
  0xaf: 'HFS / HFS+',
  0xde: 'Dell Utility',
  0xee: 'GPT',
  0xef: 'EFI (FAT-12/16/32)',
  0xfd: 'Linux raid autodetect',
};

/** The readable name of an MBR type byte. */
export function mbrTypeName(type: number): string {
  return MBR_TYPE_NAMES[type] ?? 'Unknown';
}

/** The readable name of a GPT type GUID. */
export function gptTypeName(guid: string): string {
  return GPT_TYPE_NAMES[guid.toUpperCase()] ?? 'Unknown';
}

// --- CRC32 (IEEE 802.3, reflected, as GPT uses it) ---

let crcTable: Uint32Array | undefined;

/** CRC32 of `data` as the GPT header and entries carry it. */
export function crc32(data: Uint8Array): number {
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let crc = 0xffffffff;
  for (let i = 0; i < data.length; i++) crc = crcTable[(crc ^ data[i]) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

// --- MBR ---

interface MbrEntry {
  readonly status: number;
  readonly type: number;
  readonly firstLba: number;
  readonly sectors: number;
}

function mbrEntries(sector: Buffer): MbrEntry[] {
  const out: MbrEntry[] = [];
  for (let i = 0; i < 4; i++) {
    const o = 446 + 16 * i;
    out.push({
      status: sector[o],
      type: sector[o + 4],
      firstLba: sector.readUInt32LE(o + 8),
      sectors: sector.readUInt32LE(o + 12),
    });
  }
  return out;
}

function isEmpty(e: MbrEntry): boolean {
  return e.type === 0 || e.sectors === 0;
}

function hasBootSignature(sector: Buffer): boolean {
  return sector.length >= 512 && sector[510] === 0x55 && sector[511] === 0xaa;
}

/**
 * Whether sector 0 holds an MBR partition table: the 55 AA signature, every status byte 0x00 or
 * 0x80, and at least one partition that does not start at sector 0.
 */
export function looksLikeMbr(head: Buffer): boolean {
  if (!hasBootSignature(head)) return false;
  const entries = mbrEntries(head);
  if (entries.some((e) => e.status !== 0 && e.status !== 0x80)) return false;
  const used = entries.filter((e) => !isEmpty(e));
  return used.length > 0 && used.every((e) => e.firstLba > 0);
}

/** Whether the MBR is a GPT protective (or hybrid) MBR, or there is no MBR but a GPT header. */
export function looksLikeGpt(head: Buffer): boolean {
  if (looksLikeMbr(head)) return mbrEntries(head).some((e) => !isEmpty(e) && e.type === 0xee);
  if (hasBootSignature(head)) return false;
  return gptSectorSize(head) !== undefined;
}

function gptSectorSize(head: Buffer): number | undefined {
  for (const ss of [512, 4096]) {
    if (head.length >= ss + 8 && head.toString('latin1', ss, ss + 8) === GPT_SIGNATURE) return ss;
  }
  return undefined;
}

function hex(n: number, width: number): string {
  return n.toString(16).padStart(width, '0');
}

/** Reads `length` bytes at `offset` from `head` when it holds them, else from the image. */
async function readAt(image: DiskImage, head: Buffer, offset: number, length: number): Promise<Buffer> {
  if (offset + length <= head.length) return head.subarray(offset, offset + length);
  return image.read(offset, length);
}

/** Reads the MBR in `head` and follows the EBR chain of each extended partition. */
export async function readMbr(image: DiskImage, head: Buffer, disk?: number): Promise<PartitionTable> {
  const entries = mbrEntries(head);
  const signature = head.readUInt32LE(440);
  const partUuid = (index: number) => (signature ? `${hex(signature, 8)}-${hex(index, 2)}` : undefined);
  const partitions: PartitionInfo[] = [];
  const problems: string[] = [];
  const make = (index: number, start: number, e: MbrEntry, extended: boolean): PartitionInfo => ({
    index,
    scheme: 'mbr',
    start,
    size: e.sectors * MBR_SECTOR,
    type: `0x${hex(e.type, 2)}`,
    typeName: mbrTypeName(e.type),
    bootable: e.status === 0x80,
    ...(partUuid(index) ? { partUuid: partUuid(index) } : {}),
    ...(extended ? { extended: true } : {}),
    ...(e.type === 0xef ? { esp: true } : {}),
  });

  const containers: MbrEntry[] = [];
  entries.forEach((e, i) => {
    if (isEmpty(e)) return;
    const extended = EXTENDED_TYPES.has(e.type);
    partitions.push(make(i + 1, e.firstLba * MBR_SECTOR, e, extended));
    if (extended) containers.push(e);
  });

  // Logical partitions: each EBR holds one partition (relative to the EBR) and a link to the next
  // EBR (relative to the start of the extended partition).
  const visited = new Set<number>();
  let next = 5;
  let ebrs = 0;
  for (const ext of containers) {
    let rel = 0;
    for (;;) {
      if (ebrs >= MAX_EBRS) {
        problems.push(`the chain of logical partitions is longer than ${MAX_EBRS} links`);
        break;
      }
      const lba = ext.firstLba + rel;
      if (visited.has(lba)) {
        problems.push(`the chain of logical partitions loops back to sector ${lba}`);
        break;
      }
      visited.add(lba);
      if (rel > 0 && rel >= ext.sectors) {
        problems.push(`an extended boot record at sector ${lba} lies outside its extended partition`);
        break;
      }
      if ((lba + 1) * MBR_SECTOR > image.virtualSize) {
        problems.push(`an extended boot record at sector ${lba} lies beyond the end of the disk`);
        break;
      }
      const ebr = await readAt(image, head, lba * MBR_SECTOR, MBR_SECTOR);
      ebrs++;
      if (!hasBootSignature(ebr)) {
        problems.push(`the extended boot record at sector ${lba} has no 55 AA signature`);
        break;
      }
      const [data, link] = mbrEntries(ebr);
      if (!isEmpty(data) && !EXTENDED_TYPES.has(data.type)) {
        partitions.push(make(next, (lba + data.firstLba) * MBR_SECTOR, data, false));
        next++;
      }
      if (isEmpty(link) || !EXTENDED_TYPES.has(link.type)) break;
      rel = link.firstLba;
    }
  }

  const findings: Finding[] = [];
  problems.push(...layoutProblems(partitions, image.virtualSize));
  if (problems.length) findings.push(damaged(problems, disk));
  return {
    table: 'mbr',
    sectorSize: MBR_SECTOR,
    partitions,
    findings,
    ...(signature ? { diskId: hex(signature, 8) } : {}),
  };
}

// --- GPT ---

interface GptHeader {
  readonly lba: number;
  readonly alternateLba: number;
  readonly firstUsable: number;
  readonly lastUsable: number;
  readonly diskGuid: string;
  readonly entriesLba: number;
  readonly entryCount: number;
  readonly entrySize: number;
  readonly entriesCrc: number;
}

type HeaderCheck =
  | { readonly status: 'absent' }
  | { readonly status: 'crc' | 'bad'; readonly reason: string; readonly header?: GptHeader }
  | { readonly status: 'ok'; readonly header: GptHeader };

function safeU64(buf: Buffer, offset: number): number | undefined {
  const v = buf.readBigUInt64LE(offset);
  return v > BigInt(Number.MAX_SAFE_INTEGER) ? undefined : Number(v);
}

/** Checks the GPT header in `sector`, expected to sit at `expectedLba` of a disk of `totalSectors`. */
function checkHeader(sector: Buffer, ss: number, expectedLba: number, totalSectors: number): HeaderCheck {
  if (sector.length < 92 || sector.toString('latin1', 0, 8) !== GPT_SIGNATURE) return { status: 'absent' };
  const headerSize = sector.readUInt32LE(12);
  if (headerSize < 92 || headerSize > Math.min(ss, sector.length)) {
    return { status: 'bad', reason: `its header size ${headerSize} is impossible` };
  }
  const copy = Buffer.from(sector.subarray(0, headerSize));
  copy.writeUInt32LE(0, 16);
  const crcOk = crc32(copy) === sector.readUInt32LE(16);

  const lba = safeU64(sector, 24);
  const alternateLba = safeU64(sector, 32);
  const firstUsable = safeU64(sector, 40);
  const lastUsable = safeU64(sector, 48);
  const entriesLba = safeU64(sector, 72);
  const entryCount = sector.readUInt32LE(80);
  const entrySize = sector.readUInt32LE(84);
  let reason: string | undefined;
  if (lba === undefined || alternateLba === undefined || firstUsable === undefined || lastUsable === undefined || entriesLba === undefined) {
    reason = 'it holds sector numbers beyond any disk';
  } else if (lba !== expectedLba) {
    reason = `it says it lies at sector ${lba}, not ${expectedLba}`;
  } else if (entrySize < 128 || entrySize % 8 !== 0 || entrySize > 4096) {
    reason = `its entry size ${entrySize} is impossible`;
  } else if (entryCount * entrySize > MAX_GPT_ENTRY_BYTES) {
    reason = `its ${entryCount} entries exceed ${formatBytes(MAX_GPT_ENTRY_BYTES)}`;
  } else if (entriesLba < 1 || entriesLba === lba || entriesLba * ss + entryCount * entrySize > totalSectors * ss) {
    reason = `its entries at sector ${entriesLba} lie outside the disk`;
  } else if (firstUsable > lastUsable || lastUsable >= totalSectors) {
    reason = `its usable range ${firstUsable}-${lastUsable} does not fit a disk of ${totalSectors} sectors`;
  }
  const header: GptHeader | undefined =
    lba === undefined || alternateLba === undefined || firstUsable === undefined || lastUsable === undefined || entriesLba === undefined
      ? undefined
      : {
        lba,
        alternateLba,
        firstUsable,
        lastUsable,
        diskGuid: guidAt(sector, 56),
        entriesLba,
        entryCount,
        entrySize,
        entriesCrc: sector.readUInt32LE(88),
      };
  if (!crcOk) return { status: 'crc', reason: 'its header CRC32 does not match', ...(reason ? {} : { header }) };
  if (reason || !header) return { status: 'bad', reason: reason ?? 'it is unreadable' };
  return { status: 'ok', header };
}

function parseEntries(entries: Buffer, h: GptHeader, ss: number, problems: string[]): PartitionInfo[] {
  const out: PartitionInfo[] = [];
  for (let i = 0; i < h.entryCount; i++) {
    const o = i * h.entrySize;
    if (o + 128 > entries.length) break;
    const type = guidAt(entries, o);
    if (type === '00000000-0000-0000-0000-000000000000') continue;
    const first = safeU64(entries, o + 32);
    const last = safeU64(entries, o + 40);
    if (first === undefined || last === undefined || last < first || (last + 1) * ss > Number.MAX_SAFE_INTEGER) {
      problems.push(`GPT entry ${i + 1} has an impossible range`);
      continue;
    }
    const attributes = entries.readBigUInt64LE(o + 48);
    const nameBytes = entries.subarray(o + 56, o + Math.min(h.entrySize, 128));
    let name = nameBytes.toString('utf16le');
    const nul = name.indexOf('\u0000');
    if (nul >= 0) name = name.slice(0, nul);
    out.push({
      index: i + 1,
      scheme: 'gpt',
      start: first * ss,
      size: (last - first + 1) * ss,
      type,
      typeName: gptTypeName(type),
      bootable: (attributes & 4n) !== 0n,
      ...(name ? { name } : {}),
      partUuid: guidAt(entries, o + 16).toLowerCase(),
      ...(type === GPT_TYPES.ESP ? { esp: true } : {}),
    });
  }
  return out;
}

/**
 * Reads the GPT: the primary header at LBA 1 and its entries (both CRC32-checked), and the backup
 * header at the last LBA, which must agree. When the primary table is damaged, the partitions come
 * from the backup if it is sound.
 */
export async function readGpt(image: DiskImage, head: Buffer, disk?: number): Promise<PartitionTable> {
  const ss = gptSectorSize(head) ?? 512;
  const totalSectors = Math.floor(image.virtualSize / ss);
  const findings: Finding[] = [];
  const problems: string[] = [];
  const lastLba = totalSectors - 1;

  const primary = checkHeader(head.subarray(ss, 2 * ss), ss, 1, totalSectors);
  const backup =
    lastLba > 1 ? checkHeader(await readAt(image, head, lastLba * ss, ss), ss, lastLba, totalSectors) : ({ status: 'absent' } as const);

  const readEntries = async (h: GptHeader) => readAt(image, head, h.entriesLba * ss, h.entryCount * h.entrySize);

  let partitions: PartitionInfo[] | undefined;
  let diskId: string | undefined;
  const checksumProblems: string[] = [];

  let primaryEntries: Buffer | undefined;
  if (primary.status === 'ok') {
    diskId = primary.header.diskGuid;
    const entries = await readEntries(primary.header);
    primaryEntries = entries;
    if (crc32(entries) === primary.header.entriesCrc) {
      partitions = parseEntries(entries, primary.header, ss, problems);
    } else {
      checksumProblems.push('the CRC32 of the primary partition entries does not match');
    }
    // The backup header must be at the last LBA and describe the same table.
    const h = primary.header;
    if (backup.status !== 'ok') {
      const why = backup.status === 'absent' ? 'is missing' : `is invalid (${backup.reason})`;
      findings.push(
        finding(
          'GPT_BACKUP_INVALID',
          `The backup GPT header at the last sector (${lastLba}) ${why}${h.alternateLba !== lastLba ? `; the primary header expects it at sector ${h.alternateLba}, so the disk was probably resized after partitioning` : ''}.`,
          disk,
        ),
      );
    } else {
      const b = backup.header;
      const differences = [
        h.alternateLba !== lastLba ? `the primary header points to sector ${h.alternateLba} for its backup` : '',
        b.alternateLba !== 1 ? `the backup header points to sector ${b.alternateLba} for the primary` : '',
        b.diskGuid !== h.diskGuid ? 'the disk GUIDs differ' : '',
        b.entriesCrc !== h.entriesCrc || b.entryCount !== h.entryCount || b.entrySize !== h.entrySize ? 'the partition entries differ' : '',
        b.firstUsable !== h.firstUsable || b.lastUsable !== h.lastUsable ? 'the usable ranges differ' : '',
      ].filter((d) => d);
      if (differences.length) {
        findings.push(finding('GPT_BACKUP_INVALID', `The backup GPT header does not match the primary: ${differences.join('; ')}.`, disk));
      }
    }
  } else if (primary.status === 'crc') {
    checksumProblems.push('the CRC32 of the primary GPT header does not match');
  } else if (primary.status === 'bad') {
    checksumProblems.push(`the primary GPT header is invalid: ${primary.reason}`);
  } else {
    checksumProblems.push('the protective MBR announces a GPT but there is no GPT header at sector 1');
  }

  if (!partitions && backup.status === 'ok') {
    const entries = await readEntries(backup.header);
    if (crc32(entries) === backup.header.entriesCrc) {
      partitions = parseEntries(entries, backup.header, ss, problems);
      diskId = backup.header.diskGuid;
      checksumProblems.push('the partitions were read from the backup table');
    } else {
      checksumProblems.push('the CRC32 of the backup partition entries does not match');
    }
  }
  if (!partitions && primary.status !== 'absent' && primary.status !== 'ok' && primary.header) {
    // Neither copy is sound, but the primary header is structurally sane: list what it describes.
    const entries = await readEntries(primary.header);
    partitions = parseEntries(entries, primary.header, ss, problems);
    diskId = primary.header.diskGuid;
  } else if (!partitions && primary.status === 'ok' && primaryEntries) {
    // Only the primary entries fail their checksum and there is no sound backup: list them anyway.
    partitions = parseEntries(primaryEntries, primary.header, ss, problems);
  }

  if (checksumProblems.length) {
    findings.unshift(finding('GPT_CHECKSUM_MISMATCH', `The GPT fails its checks: ${checksumProblems.join('; ')}.`, disk));
  }
  const list = partitions ?? [];
  problems.push(...layoutProblems(list, image.virtualSize));
  if (problems.length) findings.push(damaged(problems, disk));
  return { table: 'gpt', sectorSize: ss, partitions: list, findings, ...(diskId ? { diskId } : {}) };
}

// --- shared checks ---

/** Partitions that run past the end of the disk or overlap one another. */
function layoutProblems(partitions: readonly PartitionInfo[], diskSize: number): string[] {
  const problems: string[] = [];
  const beyond = partitions.filter((p) => p.start + p.size > diskSize);
  if (beyond.length) {
    problems.push(
      `${beyond.map((p) => `partition ${p.index}`).join(', ')} ${beyond.length > 1 ? 'extend' : 'extends'} past the end of the disk (${formatBytes(diskSize)}): the image may be truncated`,
    );
  }
  const data = partitions.filter((p) => !p.extended && p.size > 0).sort((a, b) => a.start - b.start || a.index - b.index);
  for (let i = 1; i < data.length; i++) {
    const prev = data[i - 1];
    if (data[i].start < prev.start + prev.size) {
      problems.push(`partitions ${prev.index} and ${data[i].index} overlap`);
      break;
    }
  }
  return problems;
}

function damaged(problems: readonly string[], disk?: number): Finding {
  return finding('PARTITION_TABLE_DAMAGED', `The partition table is inconsistent: ${problems.join('; ')}.`, disk);
}
