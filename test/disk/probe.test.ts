import * as fs from 'node:fs';
import * as path from 'node:path';
import { probeDisk, type DiskLayout, type PartitionInfo, type ProbeOptions } from '../../lambda/disk/probe';
import { openRaw } from '../../lambda/disk/raw';
import { FileSource } from '../../lambda/disk/source';
import { run, sampleGptDisk, sampleMbrDisk, tempDir } from '../helpers/fixtures';
import {
  bareFilesystem,
  blkid,
  copySparse,
  extendedMbrDisk,
  makeFilesystem,
  mbrExt4Disk,
  patchFile,
  readFileAt,
  scratchCopy,
  sfdiskTable,
  testDisk,
} from '../helpers/probe-disks';

const MiB = 1024 * 1024;
const LINUX = '0FC63DAF-8483-4772-8E79-3D69D8477DE4';
const BIOS_BOOT = '21686148-6449-6E6F-744E-656564454649';

async function probeFile(file: string, options: ProbeOptions = { isBootDisk: true }) {
  const src = await FileSource.open(file);
  try {
    const layout = await probeDisk(await openRaw(src), options);
    return { layout, requests: src.stats.requests, bytesRead: src.stats.bytesRead };
  } finally {
    await src.close();
  }
}

const codes = (layout: DiskLayout) => layout.findings.map((f) => f.code);

/** The fields sfdisk also reports, from the probe's view. */
function tableView(parts: readonly PartitionInfo[]) {
  return parts.map((p) => ({
    index: p.index,
    start: p.start,
    size: p.size,
    type: p.type,
    bootable: p.bootable,
    ...(p.name ? { name: p.name } : {}),
    ...(p.scheme === 'gpt' ? { partUuid: p.partUuid } : {}),
  }));
}

/** The same fields as sfdisk reads them. */
function sfdiskView(file: string) {
  const t = sfdiskTable(file);
  return t.partitions.map((p) => ({
    index: p.number,
    start: p.start,
    size: p.size,
    type: t.label === 'dos' ? `0x${p.type.padStart(2, '0')}` : p.type.toUpperCase(),
    bootable: p.bootable,
    ...(p.name ? { name: p.name } : {}),
    ...(t.label === 'gpt' ? { partUuid: p.uuid!.toLowerCase() } : {}),
  }));
}

/** The byte offsets of the EBRs of the first extended partition, following the chain as written. */
function ebrOffsets(file: string): number[] {
  const ext = sfdiskTable(file).partitions.find((p) => p.number === 2)!;
  const out: number[] = [];
  let rel = 0;
  for (let i = 0; i < 8; i++) {
    const at = ext.start + rel * 512;
    out.push(at);
    const ebr = readFileAt(file, at, 512);
    const link = 446 + 16;
    if (ebr[link + 4] !== 0x05) break;
    rel = ebr.readUInt32LE(link + 8);
  }
  return out;
}

describe('partition tables', () => {
  test('MBR with an active ext4 partition: legacy BIOS, root found, no findings, three reads', async () => {
    // GIVEN
    const file = mbrExt4Disk();
    // WHEN
    const { layout, requests } = await probeFile(file);
    // THEN
    expect(layout.table).toBe('mbr');
    expect(tableView(layout.partitions)).toEqual(sfdiskView(file));
    expect(layout.partitions.map((p) => p.filesystem)).toEqual(['ext4', 'unknown']);
    expect(layout.partitions[0].uuid).toBe(blkid(file, layout.partitions[0].start, layout.partitions[0].size).UUID);
    expect(layout.partitions[0].partUuid).toBe(`${sfdiskTable(file).id!.replace(/^0x/, '')}-01`);
    expect(layout.bootMode).toBe('legacy-bios');
    expect(layout.root).toEqual({ partition: 1, filesystem: 'ext4' });
    expect(layout.findings).toEqual([]);
    expect(requests).toBe(3);
  });

  test('MBR without an active partition: NO_BOOTABLE_PARTITION on the boot disk only', async () => {
    // GIVEN
    const file = testDisk({ sizeMiB: 16, table: 'mbr', partitions: [{ type: '83', fs: 'ext4' }] });
    // WHEN
    const boot = await probeFile(file, { isBootDisk: true, diskIndex: 0 });
    const data = await probeFile(file, { isBootDisk: false, diskIndex: 1 });
    // THEN
    expect(boot.layout.findings.map((f) => [f.code, f.severity, f.disk])).toEqual([['NO_BOOTABLE_PARTITION', 'warning', 0]]);
    expect(boot.layout.root).toEqual({ partition: 1, filesystem: 'ext4' });
    expect(data.layout.findings).toEqual([]);
    expect(data.layout.bootMode).toBeUndefined();
  });

  test('logical partitions are found through the EBR chain and numbered from 5, as sfdisk numbers them', async () => {
    // GIVEN
    const file = extendedMbrDisk();
    // WHEN
    const { layout, requests } = await probeFile(file);
    // THEN
    expect(tableView(layout.partitions)).toEqual(sfdiskView(file));
    expect(layout.partitions.map((p) => [p.index, p.filesystem, !!p.extended])).toEqual([
      [1, 'ext4', false],
      [2, undefined, true],
      [5, 'ext4', false],
      [6, 'swap', false],
      [7, 'ext2', false],
    ]);
    expect(layout.root).toEqual({ partition: 7, filesystem: 'ext2' });
    expect(layout.findings).toEqual([]);
    // the head, three EBRs, four filesystem windows
    expect(requests).toBe(1 + 3 + 4);
  });

  test.each([
    ['the last EBR links back to the first', (ebrs: number[]) => ({ at: ebrs[2], rel: 0 }), [5, 6, 7]],
    ['the first EBR links to itself', (ebrs: number[]) => ({ at: ebrs[0], rel: 0 }), [5]],
  ])('an EBR loop (%s) ends the chain with PARTITION_TABLE_DAMAGED', async (_what, patch, logical) => {
    // GIVEN
    const copy = scratchCopy(extendedMbrDisk());
    const ebrs = ebrOffsets(copy.file);
    const { at, rel } = patch(ebrs);
    const link = Buffer.alloc(16);
    link[4] = 0x05;
    link.writeUInt32LE(rel, 8);
    link.writeUInt32LE(2048, 12);
    patchFile(copy.file, at + 446 + 16, link);
    // WHEN
    const { layout, requests } = await probeFile(copy.file, { isBootDisk: false });
    copy.cleanup();
    // THEN
    expect(ebrs).toHaveLength(3);
    expect(layout.partitions.map((p) => p.index)).toEqual([1, 2, ...logical]);
    expect(codes(layout)).toEqual(['PARTITION_TABLE_DAMAGED']);
    expect(layout.findings[0].message).toMatch(/loops back/);
    expect(requests).toBe(1 + logical.length + 1 + logical.length);
  });

  test('a partition that runs past the end of a truncated disk: PARTITION_TABLE_DAMAGED, even on a data disk', async () => {
    // GIVEN
    const copy = scratchCopy(sampleMbrDisk());
    fs.truncateSync(copy.file, 40 * MiB);
    // WHEN
    const { layout } = await probeFile(copy.file, { isBootDisk: false });
    copy.cleanup();
    // THEN
    expect(codes(layout)).toEqual(['PARTITION_TABLE_DAMAGED']);
    expect(layout.findings[0].message).toMatch(/partition 2 extends past the end/);
  });

  test('GPT with an ESP and ext4: UEFI, five reads (head, backup header, two windows, one ESP directory read)', async () => {
    // GIVEN
    const file = sampleGptDisk();
    // WHEN
    const { layout, requests } = await probeFile(file);
    // THEN
    expect(layout.table).toBe('gpt');
    expect(tableView(layout.partitions)).toEqual(sfdiskView(file));
    expect(layout.diskId).toBe(sfdiskTable(file).id);
    expect(layout.partitions.map((p) => [p.typeName, p.filesystem, !!p.esp])).toEqual([
      ['EFI System', 'fat32', true],
      ['Linux filesystem', 'ext4', false],
    ]);
    expect(layout.bootMode).toBe('uefi');
    expect(layout.esp).toEqual({ partition: 1, hasFallbackLoader: false });
    expect(layout.root).toEqual({ partition: 2, filesystem: 'ext4' });
    expect(codes(layout)).toEqual(['EFI_FALLBACK_LOADER_MISSING']);
    expect(requests).toBe(5);
  });

  test('GPT partition names are read', async () => {
    // GIVEN
    const file = testDisk({
      sizeMiB: 16,
      table: 'gpt',
      partitions: [
        { sizeMiB: 4, type: LINUX, name: 'boot partition', fs: 'ext2' },
        { type: LINUX, name: 'rôot – ünïcode', fs: 'ext4' },
      ],
    });
    // WHEN
    const { layout } = await probeFile(file, { isBootDisk: false });
    // THEN
    expect(tableView(layout.partitions)).toEqual(sfdiskView(file));
    expect(layout.partitions.map((p) => p.name)).toEqual(['boot partition', 'rôot – ünïcode']);
  });

  test('GPT with only a BIOS boot partition: GPT_BOOT_WITHOUT_UEFI, and UEFI_WITHOUT_ESP when the firmware is EFI', async () => {
    // GIVEN
    const file = testDisk({ sizeMiB: 16, table: 'gpt', partitions: [{ sizeMiB: 1, type: BIOS_BOOT }, { type: LINUX, fs: 'ext4' }] });
    // WHEN
    const bios = await probeFile(file);
    const efi = await probeFile(file, { isBootDisk: true, firmware: 'efi' });
    // THEN
    expect(bios.layout.bootMode).toBe('legacy-bios');
    expect(bios.layout.biosBootPartition).toBe(1);
    expect(bios.layout.partitions.map((p) => p.filesystem)).toEqual([undefined, 'ext4']);
    expect(codes(bios.layout)).toEqual(['GPT_BOOT_WITHOUT_UEFI']);
    expect(codes(efi.layout)).toEqual(['GPT_BOOT_WITHOUT_UEFI', 'UEFI_WITHOUT_ESP']);
    // the BIOS boot partition holds no filesystem and is not read
    expect(bios.requests).toBe(3);
  });

  test('GPT with neither an ESP nor a BIOS boot partition: NO_BOOTABLE_PARTITION', async () => {
    // GIVEN
    const file = testDisk({ sizeMiB: 16, table: 'gpt', partitions: [{ type: LINUX, fs: 'ext4' }] });
    // WHEN
    const { layout } = await probeFile(file);
    // THEN
    expect(layout.bootMode).toBeUndefined();
    expect(codes(layout)).toEqual(['NO_BOOTABLE_PARTITION']);
  });

  test('a corrupted primary GPT header: GPT_CHECKSUM_MISMATCH, partitions read from the backup', async () => {
    // GIVEN a byte of the disk GUID flipped in the primary header
    const original = sampleGptDisk();
    const copy = scratchCopy(original);
    patchFile(copy.file, 512 + 56, Buffer.from([readFileAt(original, 512 + 56, 1)[0] ^ 0xff]));
    // WHEN
    const data = await probeFile(copy.file, { isBootDisk: false, diskIndex: 2 });
    const boot = await probeFile(copy.file, { isBootDisk: true });
    copy.cleanup();
    // THEN
    expect(data.layout.findings.map((f) => [f.code, f.severity, f.disk])).toEqual([['GPT_CHECKSUM_MISMATCH', 'error', 2]]);
    expect(data.layout.findings[0].message).toMatch(/CRC32 of the primary GPT header/);
    expect(tableView(data.layout.partitions)).toEqual(sfdiskView(original));
    expect(codes(boot.layout)).toEqual(['GPT_CHECKSUM_MISMATCH', 'EFI_FALLBACK_LOADER_MISSING']);
  });

  test('a protective MBR without a primary GPT header: GPT_CHECKSUM_MISMATCH, partitions read from the backup', async () => {
    // GIVEN sector 1 wiped
    const original = sampleGptDisk();
    const copy = scratchCopy(original);
    patchFile(copy.file, 512, Buffer.alloc(512));
    // WHEN
    const { layout } = await probeFile(copy.file, { isBootDisk: false });
    copy.cleanup();
    // THEN
    expect(codes(layout)).toEqual(['GPT_CHECKSUM_MISMATCH']);
    expect(layout.findings[0].message).toMatch(/no GPT header at sector 1.*read from the backup table/);
    expect(tableView(layout.partitions)).toEqual(sfdiskView(original));
    expect(layout.diskId).toBe(sfdiskTable(original).id);
  });

  test('corrupted primary GPT entries: GPT_CHECKSUM_MISMATCH, partitions read from the backup entries', async () => {
    // GIVEN a byte of the first entry's name flipped
    const original = sampleGptDisk();
    const copy = scratchCopy(original);
    patchFile(copy.file, 1024 + 60, Buffer.from([0x41]));
    // WHEN
    const { layout, requests } = await probeFile(copy.file, { isBootDisk: false });
    copy.cleanup();
    // THEN
    expect(codes(layout)).toEqual(['GPT_CHECKSUM_MISMATCH']);
    expect(layout.findings[0].message).toMatch(/primary partition entries/);
    expect(tableView(layout.partitions)).toEqual(sfdiskView(original));
    // head, backup header, backup entries, two windows
    expect(requests).toBe(5);
  });

  test('corrupted entries and a corrupted backup: both reported, the primary entries listed as they are', async () => {
    // GIVEN
    const original = sampleGptDisk();
    const copy = scratchCopy(original);
    const size = fs.statSync(copy.file).size;
    patchFile(copy.file, 1024 + 56, Buffer.from([0x41]));
    patchFile(copy.file, size - 512 + 56, Buffer.from([readFileAt(original, size - 512 + 56, 1)[0] ^ 0xff]));
    // WHEN
    const { layout } = await probeFile(copy.file, { isBootDisk: false });
    copy.cleanup();
    // THEN
    expect(codes(layout)).toEqual(['GPT_CHECKSUM_MISMATCH', 'GPT_BACKUP_INVALID']);
    expect(layout.partitions.map((p) => [p.index, p.start, p.size])).toEqual(sfdiskView(original).map((p) => [p.index, p.start, p.size]));
    expect(layout.partitions[0].name).toBe('A');
  });

  test('a GPT disk grown by qemu-img resize: GPT_BACKUP_INVALID (the backup header is no longer at the end)', async () => {
    // GIVEN
    const copy = scratchCopy(sampleGptDisk());
    run('qemu-img', ['resize', '-q', '-f', 'raw', copy.file, '+16M']);
    // WHEN
    const { layout } = await probeFile(copy.file, { isBootDisk: false });
    copy.cleanup();
    // THEN
    expect(codes(layout)).toEqual(['GPT_BACKUP_INVALID']);
    expect(layout.findings[0].message).toMatch(/resized/);
    expect(layout.partitions).toHaveLength(2);
  });
});

describe('disks without a partition table', () => {
  test.each([
    ['ext4', 'ext4'],
    ['fat32', 'vfat'],
    ['ntfs', 'ntfs'],
    ['xfs', 'xfs'],
  ] as const)('a bare %s filesystem: NO_PARTITION_TABLE on the boot disk, nothing on a data disk', async (kind, blkidType) => {
    // GIVEN
    const file = bareFilesystem(kind, kind === 'xfs' ? 300 : 40);
    const truth = blkid(file);
    // WHEN
    const boot = await probeFile(file);
    const data = await probeFile(file, { isBootDisk: false });
    // THEN
    expect(truth.TYPE).toBe(blkidType);
    expect(truth.PTTYPE).toBeUndefined();
    expect(boot.layout.table).toBe('none');
    expect(boot.layout.partitions).toEqual([]);
    expect(boot.layout.wholeDiskFilesystem).toBe(kind);
    expect(codes(boot.layout)).toEqual(['NO_PARTITION_TABLE']);
    expect(boot.layout.findings[0].message).toMatch(new RegExp(`bare ${kind} filesystem`));
    expect(boot.requests).toBe(1);
    expect(data.layout.findings).toEqual([]);
  });

  test('a disk of zeros: NO_PARTITION_TABLE', async () => {
    // GIVEN
    const file = testDisk({ sizeMiB: 8, table: 'none' });
    // WHEN
    const { layout } = await probeFile(file);
    // THEN
    expect(layout.table).toBe('none');
    expect(layout.wholeDiskFilesystem).toBeUndefined();
    expect(codes(layout)).toEqual(['NO_PARTITION_TABLE']);
    expect(layout.findings[0].message).toMatch(/neither an MBR nor a GPT/);
  });
});

describe('boot analysis', () => {
  test('a 3 TiB MBR boot disk: MBR_BOOT_TOO_LARGE, for the same three reads as a small disk', async () => {
    // GIVEN a sparse 3 TiB file: sfdisk writes the table, mke2fs a small active partition
    const { dir, cleanup } = tempDir('vmie-probe-3t-');
    const file = path.join(dir, 'huge.raw');
    fs.writeFileSync(file, '');
    fs.truncateSync(file, 3 * 1024 ** 4);
    run('sfdisk', ['--quiet', '--no-reread', '--no-tell-kernel', file], 'label: dos\n\nsize=16MiB, type=83, bootable\ntype=83\n');
    const p1 = sfdiskTable(file).partitions[0];
    const part = path.join(dir, 'p1');
    fs.writeFileSync(part, '');
    fs.truncateSync(part, p1.size);
    makeFilesystem(part, 'ext4');
    copySparse(part, 0, p1.size, file, p1.start);
    // WHEN
    const { layout, requests } = await probeFile(file);
    cleanup();
    // THEN
    expect(layout.partitions.map((p) => p.filesystem)).toEqual(['ext4', 'unknown']);
    expect(layout.bootMode).toBe('legacy-bios');
    expect(codes(layout)).toEqual(['MBR_BOOT_TOO_LARGE']);
    expect(layout.findings[0].message).toMatch(/3 TiB/);
    expect(requests).toBe(3);
  });

  test('LVM beside a small /boot: the root is /boot by filesystem, and LVM_ROOT says the real root is probably on LVM', async () => {
    // GIVEN
    const file = testDisk({
      sizeMiB: 64,
      table: 'mbr',
      partitions: [
        { sizeMiB: 16, type: '83', bootable: true, fs: 'ext4' },
        { type: '8e', fs: 'lvm2' },
      ],
    });
    // WHEN
    const { layout } = await probeFile(file);
    // THEN
    expect(layout.partitions.map((p) => p.filesystem)).toEqual(['ext4', 'lvm2']);
    expect(layout.root).toEqual({ partition: 1, filesystem: 'ext4' });
    expect(layout.findings.map((f) => [f.code, f.severity])).toEqual([['LVM_ROOT', 'info']]);
  });

  test('only LVM: LVM_ROOT (info)', async () => {
    // GIVEN
    const file = testDisk({ sizeMiB: 16, table: 'mbr', partitions: [{ type: '8e', bootable: true, fs: 'lvm2' }] });
    // WHEN
    const { layout } = await probeFile(file);
    // THEN
    expect(layout.root).toBeUndefined();
    expect(codes(layout)).toEqual(['LVM_ROOT']);
  });

  test.each(['luks1', 'luks2'] as const)('%s and nothing readable: ROOT_FS_ENCRYPTED', async (luks) => {
    // GIVEN
    const file = testDisk({ sizeMiB: 16, table: 'mbr', partitions: [{ type: '83', bootable: true, fs: luks }] });
    // WHEN
    const { layout } = await probeFile(file, { isBootDisk: true, diskIndex: 3 });
    // THEN
    expect(layout.partitions[0].filesystem).toBe('luks');
    expect(layout.partitions[0].uuid).toBe(blkid(file, layout.partitions[0].start, layout.partitions[0].size).UUID);
    expect(layout.findings.map((f) => [f.code, f.severity, f.disk])).toEqual([['ROOT_FS_ENCRYPTED', 'error', 3]]);
  });

  test('swap only: ROOT_FS_UNSUPPORTED', async () => {
    // GIVEN
    const file = testDisk({ sizeMiB: 16, table: 'mbr', partitions: [{ type: '82', bootable: true, fs: 'swap' }] });
    // WHEN
    const { layout } = await probeFile(file);
    // THEN
    expect(layout.partitions[0].filesystem).toBe('swap');
    expect(codes(layout)).toEqual(['ROOT_FS_UNSUPPORTED']);
    expect(layout.findings[0].message).toMatch(/found: swap/);
  });

  test('Windows-like: an active NTFS "System Reserved" partition and a larger NTFS system partition', async () => {
    // GIVEN
    const file = testDisk({
      sizeMiB: 64,
      table: 'mbr',
      partitions: [
        { sizeMiB: 16, type: '7', bootable: true, fs: 'ntfs', label: 'System Reserved' },
        { type: '7', fs: 'ntfs' },
      ],
    });
    // WHEN
    const { layout } = await probeFile(file);
    // THEN
    expect(layout.partitions.map((p) => [p.typeName, p.filesystem, p.bootable])).toEqual([
      ['HPFS/NTFS/exFAT', 'ntfs', true],
      ['HPFS/NTFS/exFAT', 'ntfs', false],
    ]);
    expect(layout.bootMode).toBe('legacy-bios');
    expect(layout.root).toEqual({ partition: 2, filesystem: 'ntfs' });
    expect(layout.findings).toEqual([]);
  });

  test('the firmware setting: EFI on an MBR disk without an ESP gives UEFI_WITHOUT_ESP; BIOS keeps an MBR ESP disk on legacy boot', async () => {
    // GIVEN
    const plain = mbrExt4Disk();
    const withEsp = testDisk({
      sizeMiB: 64,
      table: 'mbr',
      partitions: [
        { sizeMiB: 16, type: 'ef', fs: 'fat16' },
        { type: '83', fs: 'ext4' },
      ],
    });
    // WHEN
    const efi = await probeFile(plain, { isBootDisk: true, firmware: 'efi' });
    const bios = await probeFile(withEsp, { isBootDisk: true, firmware: 'bios' });
    const unset = await probeFile(withEsp, { isBootDisk: true });
    // THEN
    expect(codes(efi.layout)).toEqual(['UEFI_WITHOUT_ESP']);
    expect(bios.layout.bootMode).toBe('legacy-bios');
    expect(bios.layout.esp).toEqual({ partition: 1 });
    expect(codes(bios.layout)).toEqual([]);
    expect(unset.layout.bootMode).toBe('uefi');
    expect(codes(unset.layout)).toEqual(['EFI_FALLBACK_LOADER_MISSING']);
  });
});
