/**
 * Probes that look inside a virtual disk: the partition table, what each partition holds, and
 * whether the disk can boot on EC2 the way VM Import needs.
 *
 * Cost: one read of {@link HEAD_WINDOW} bytes at the start of the disk (MBR, GPT header and
 * entries, and any filesystem written over the whole disk); one read of the backup GPT header at
 * the last sector; one read per extended boot record; one window of {@link FS_WINDOW} bytes per
 * partition; and, on a boot disk with a FAT EFI System Partition, a few reads to walk
 * /EFI/BOOT. None of it grows with the size of the disk.
 */
import { formatBytes } from '../bytes';
import { finding, type Finding, type FindingCode } from '../findings';
import type { DiskImage } from '../image';
import { findFallbackLoader, type FatBootSector } from './fat';
import {
  identifyFilesystem,
  readFilesystemWindow,
  ROOT_FILESYSTEMS,
  SECTOR0_FILESYSTEMS,
  type FilesystemId,
} from './filesystems';
import { GPT_TYPES, HEAD_WINDOW, looksLikeGpt, looksLikeMbr, readGpt, readMbr, type PartitionInfo, type PartitionTable } from './partitions';

export { detectFilesystem, FS_WINDOW, identifyFilesystem, ROOT_FILESYSTEMS } from './filesystems';
export type { FilesystemId, FilesystemInfo } from './filesystems';
export { crc32, gptTypeName, HEAD_WINDOW, mbrTypeName, readGpt, readMbr } from './partitions';
export type { PartitionInfo, PartitionTable } from './partitions';
export { FatVolume, findFallbackLoader, parseFatBootSector } from './fat';
export type { FatBootSector, FatDirEntry } from './fat';

/** What a disk holds and how it boots. */
export interface DiskLayout {
  table: 'mbr' | 'gpt' | 'none';
  partitions: PartitionInfo[];
  /** A filesystem written over the whole disk, without a partition table. */
  wholeDiskFilesystem?: FilesystemId;
  /** How the disk boots (boot disk only). */
  bootMode?: 'legacy-bios' | 'uefi';
  /** The EFI System Partition (boot disk only). */
  esp?: { partition: number; hasFallbackLoader?: boolean; fallbackLoader?: string };
  /** The GPT BIOS boot partition (boot disk only). */
  biosBootPartition?: number;
  /** The partition most likely to hold the root filesystem (boot disk only). */
  root?: { partition: number; filesystem: FilesystemId };
  /** The GPT disk GUID, or the MBR disk signature. */
  diskId?: string;
  findings: Finding[];
}

/** How to probe a disk. */
export interface ProbeOptions {
  /** The firmware the source VM declares, where known (from an OVF, for example). */
  firmware?: 'bios' | 'efi';
  /** Whether this is the disk the VM boots from: only then are boot findings made. */
  isBootDisk: boolean;
  /** The index of this disk among several (0-based), carried by every finding. */
  diskIndex?: number;
}

/** A FAT EFI System Partition: its boot sector and the window already read at its start. */
interface FatPartition {
  readonly bs: FatBootSector;
  readonly window: Buffer;
}

/** Partitions whose filesystem is probed; past this many, the rest are listed only. */
export const MAX_PROBED_PARTITIONS = 128;
/** Windows read at the same time. */
const PARALLEL_READS = 4;
/** The largest disk an MBR boot volume may be. */
const MBR_BOOT_LIMIT = 2 * 1024 ** 4;

const MBR_LVM = '0x8e';

function isEsp(p: PartitionInfo): boolean {
  return !!p.esp;
}

/** Partitions that hold no filesystem to probe. */
function skipProbe(p: PartitionInfo): boolean {
  return !!p.extended || p.size === 0 || p.type === GPT_TYPES.BIOS_BOOT || p.type === GPT_TYPES.MS_RESERVED;
}

function isLvm(p: PartitionInfo): boolean {
  return p.filesystem === 'lvm2' || ((p.filesystem === undefined || p.filesystem === 'unknown') && (p.type === MBR_LVM || p.type === GPT_TYPES.LINUX_LVM));
}

/** Reads the partition table and the filesystems of a disk, and judges whether it can boot. */
export async function probeDisk(image: DiskImage, options: ProbeOptions): Promise<DiskLayout> {
  const disk = options.diskIndex;
  const head = await image.read(0, Math.min(HEAD_WINDOW, image.virtualSize));

  let table: PartitionTable | undefined;
  let wholeDisk: FilesystemId | undefined;
  if (looksLikeGpt(head)) {
    table = await readGpt(image, head, disk);
  } else {
    const fs0 = identifyFilesystem(head).filesystem;
    if (SECTOR0_FILESYSTEMS.has(fs0)) wholeDisk = fs0;
    else if (looksLikeMbr(head)) table = await readMbr(image, head, disk);
    else if (fs0 !== 'unknown') wholeDisk = fs0;
  }

  const partitions = table?.partitions ?? [];
  const fat = await probePartitions(image, partitions);
  const layout: DiskLayout = {
    table: table?.table ?? 'none',
    partitions,
    ...(wholeDisk ? { wholeDiskFilesystem: wholeDisk } : {}),
    ...(table?.diskId ? { diskId: table.diskId } : {}),
    findings: [...(table?.findings ?? [])],
  };
  if (options.isBootDisk) await analyseBoot(image, layout, fat, options);
  return layout;
}

/** Fills in the filesystem of each partition, reading one window per partition. */
async function probePartitions(image: DiskImage, partitions: PartitionInfo[]): Promise<Map<number, FatPartition>> {
  const fat = new Map<number, FatPartition>();
  const todo = partitions.filter((p) => !skipProbe(p) && p.start < image.virtualSize).slice(0, MAX_PROBED_PARTITIONS);
  for (let i = 0; i < todo.length; i += PARALLEL_READS) {
    await Promise.all(
      todo.slice(i, i + PARALLEL_READS).map(async (p) => {
        const window = await readFilesystemWindow(image, p.start, p.size);
        const hit = identifyFilesystem(window);
        p.filesystem = hit.filesystem;
        if (hit.label) p.label = hit.label;
        if (hit.uuid) p.uuid = hit.uuid;
        if (hit.fat && isEsp(p)) fat.set(p.index, { bs: hit.fat, window });
      }),
    );
  }
  return fat;
}

/** The boot findings of a boot disk, added to `layout`. */
async function analyseBoot(image: DiskImage, layout: DiskLayout, fat: Map<number, FatPartition>, options: ProbeOptions): Promise<void> {
  const disk = options.diskIndex;
  const add = (code: FindingCode, detail: string) => layout.findings.push(finding(code, detail, disk));

  if (layout.table === 'none') {
    add(
      'NO_PARTITION_TABLE',
      layout.wholeDiskFilesystem
        ? `The boot disk is a bare ${layout.wholeDiskFilesystem} filesystem without a partition table.`
        : 'The boot disk has neither an MBR nor a GPT partition table.',
    );
    return;
  }

  const parts = layout.partitions;
  const esp = parts.find(isEsp);
  const biosBoot = layout.table === 'gpt' ? parts.find((p) => p.type === GPT_TYPES.BIOS_BOOT) : undefined;
  if (biosBoot) layout.biosBootPartition = biosBoot.index;

  if (layout.table === 'mbr') {
    layout.bootMode = esp && options.firmware !== 'bios' ? 'uefi' : 'legacy-bios';
    if (!esp && !parts.some((p) => p.bootable)) {
      add('NO_BOOTABLE_PARTITION', 'The MBR boot disk has no partition marked active and no EFI System Partition (type 0xef).');
    }
    if (layout.bootMode === 'legacy-bios' && image.virtualSize > MBR_BOOT_LIMIT) {
      add('MBR_BOOT_TOO_LARGE', `The MBR boot disk is ${formatBytes(image.virtualSize)}, more than the 2 TiB an MBR boot volume may have.`);
    }
  } else if (esp) {
    layout.bootMode = 'uefi';
  } else if (biosBoot) {
    layout.bootMode = 'legacy-bios';
    add('GPT_BOOT_WITHOUT_UEFI', `The GPT boot disk has a BIOS boot partition (${biosBoot.index}) but no EFI System Partition, so it boots only with legacy BIOS.`);
  } else if (options.firmware !== 'efi') {
    add('NO_BOOTABLE_PARTITION', 'The GPT boot disk has neither an EFI System Partition nor a BIOS boot partition.');
  }
  if (options.firmware === 'efi' && !esp) {
    add('UEFI_WITHOUT_ESP', `The VM boots with UEFI firmware but its ${layout.table.toUpperCase()} boot disk has no EFI System Partition.`);
  }

  // The root filesystem: the largest partition with a filesystem VM Import can boot from.
  const supported = parts.filter((p) => p.filesystem && ROOT_FILESYSTEMS.has(p.filesystem)).sort((a, b) => b.size - a.size || a.index - b.index);
  const root = supported[0];
  const lvm = parts.filter(isLvm).sort((a, b) => b.size - a.size)[0];
  if (root) {
    layout.root = { partition: root.index, filesystem: root.filesystem! };
    if (lvm && lvm.size > root.size) {
      add('LVM_ROOT', `Partition ${lvm.index} is an LVM physical volume larger than the largest plain filesystem (partition ${root.index}, ${root.filesystem}): the root is probably on LVM.`);
    }
  } else if (lvm) {
    add('LVM_ROOT', `No partition holds a plain root filesystem, but partition ${lvm.index} is an LVM physical volume: the root is probably on LVM.`);
  } else if (parts.some((p) => p.filesystem === 'luks')) {
    const luks = parts.filter((p) => p.filesystem === 'luks').map((p) => p.index);
    add('ROOT_FS_ENCRYPTED', `No partition holds a readable root filesystem; partition${luks.length > 1 ? 's' : ''} ${luks.join(', ')} ${luks.length > 1 ? 'are' : 'is'} LUKS-encrypted.`);
  } else {
    const seen = [...new Set(parts.map((p) => p.filesystem).filter((f) => f && f !== 'unknown'))];
    add('ROOT_FS_UNSUPPORTED', `No partition holds a root filesystem VM Import supports${seen.length ? ` (found: ${seen.join(', ')})` : ''}.`);
  }

  // The UEFI fallback loader on a FAT ESP.
  if (esp) {
    layout.esp = { partition: esp.index };
    const espFat = fat.get(esp.index);
    if (espFat && layout.bootMode === 'uefi') {
      const loader = await findFallbackLoader(image, esp.start, esp.size, espFat.bs, espFat.window);
      if (loader !== undefined) layout.esp.hasFallbackLoader = loader !== null;
      if (loader) layout.esp.fallbackLoader = loader;
      const linux = (root && root.filesystem !== 'ntfs') || (!root && !!lvm);
      if (loader === null && linux) {
        add('EFI_FALLBACK_LOADER_MISSING', `The EFI System Partition (partition ${esp.index}) has no /EFI/BOOT/BOOTX64.EFI, which Linux UEFI imports need.`);
      }
    }
  }
}
