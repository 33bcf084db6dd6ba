import { FatVolume, parseFatBootSector, probeDisk } from '../../lambda/disk/probe';
import { openRaw } from '../../lambda/disk/raw';
import { FileSource } from '../../lambda/disk/source';
import { run } from '../helpers/fixtures';
import { fat32WithLoader, readFileAt, sfdiskTable, testDisk, vvfatImage, vvfatPartition } from '../helpers/probe-disks';

const ESP = 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B';
const LINUX = '0FC63DAF-8483-4772-8E79-3D69D8477DE4';
const MS_DATA = 'EBD0A0A2-B9E5-4433-87C0-68B6B72699C7';

/** A GPT disk whose ESP is the FAT partition of a vvfat disk, and whose second partition is `root`. */
function gptWithVvfatEsp(files: Record<string, string>, root: 'ext4' | 'ntfs' = 'ext4'): string {
  const vv = vvfatImage(files, '16');
  const part = vvfatPartition(vv);
  return testDisk({
    sizeMiB: 560,
    table: 'gpt',
    partitions: [
      { sizeSectors: part.size / 512, type: ESP, content: { file: vv, from: part.start, length: part.size } },
      { type: root === 'ext4' ? LINUX : MS_DATA, fs: root },
    ],
  });
}

/** A GPT disk whose ESP is a FAT32 made by mkfs.vfat with the loader written in by hand. */
function gptWithFat32Esp(loader: string | undefined, longNames: boolean): { disk: string; esp: string } {
  const esp = fat32WithLoader(40, loader, longNames);
  const disk = testDisk({
    sizeMiB: 64,
    table: 'gpt',
    partitions: [
      { sizeMiB: 40, type: ESP, content: { file: esp, from: 0, length: 40 * 1024 * 1024 } },
      { type: LINUX, fs: 'ext4' },
    ],
  });
  return { disk, esp };
}

async function probeFile(file: string, options = { isBootDisk: true }) {
  const src = await FileSource.open(file);
  try {
    const layout = await probeDisk(await openRaw(src), options);
    return { layout, requests: src.stats.requests, bytesRead: src.stats.bytesRead };
  } finally {
    await src.close();
  }
}

/** The files fsck.fat finds on a FAT filesystem (it walks every directory). */
function fsckFiles(file: string): string[] {
  const out = run('fsck.fat', ['-n', '-l', file]);
  return out
    .split('\n')
    .filter((l) => l.startsWith('Checking file /'))
    .map((l) => l.slice('Checking file '.length).replace(/ \(.*\)$/, ''));
}

describe('UEFI fallback loader on the ESP', () => {
  test('found on a FAT16 ESP made by qemu vvfat, in one read beyond the table and the partition windows', async () => {
    // GIVEN
    const disk = gptWithVvfatEsp({ 'EFI/BOOT/BOOTX64.EFI': 'MZ loader', 'EFI/debian/grubx64.efi': 'MZ grub' });
    // WHEN
    const { layout, requests } = await probeFile(disk);
    // THEN
    expect(layout.partitions.map((p) => p.filesystem)).toEqual(['fat16', 'ext4']);
    expect(layout.bootMode).toBe('uefi');
    expect(layout.esp).toEqual({ partition: 1, hasFallbackLoader: true, fallbackLoader: 'BOOTX64.EFI' });
    expect(layout.root).toEqual({ partition: 2, filesystem: 'ext4' });
    expect(layout.findings).toEqual([]);
    // head, backup GPT header, two windows; then the root directory and the two directories below
    // it, which lie within one block of the cache
    expect(requests).toBe(4 + 1);
  });

  test('found under lower-case long names', async () => {
    // GIVEN
    const disk = gptWithVvfatEsp({ 'efi/boot/bootx64.efi': 'MZ loader' });
    // WHEN
    const { layout } = await probeFile(disk);
    // THEN
    expect(layout.esp).toEqual({ partition: 1, hasFallbackLoader: true, fallbackLoader: 'bootx64.efi' });
    expect(layout.findings).toEqual([]);
  });

  test('missing on a Linux UEFI disk: a warning', async () => {
    // GIVEN
    const disk = gptWithVvfatEsp({ 'EFI/debian/grubx64.efi': 'MZ grub', 'EFI/debian/shimx64.efi': 'MZ shim' });
    // WHEN
    const { layout } = await probeFile(disk);
    // THEN
    expect(layout.esp).toEqual({ partition: 1, hasFallbackLoader: false });
    expect(layout.findings.map((f) => [f.code, f.severity])).toEqual([['EFI_FALLBACK_LOADER_MISSING', 'warning']]);
  });

  test('missing on a Windows UEFI disk: no warning (Windows boots through its own loader)', async () => {
    // GIVEN
    const disk = gptWithVvfatEsp({ 'EFI/Microsoft/Boot/bootmgfw.efi': 'MZ bootmgr' }, 'ntfs');
    // WHEN
    const { layout } = await probeFile(disk);
    // THEN
    expect(layout.root).toEqual({ partition: 2, filesystem: 'ntfs' });
    expect(layout.esp).toEqual({ partition: 1, hasFallbackLoader: false });
    expect(layout.findings).toEqual([]);
  });

  test('found on a FAT12 ESP (a vvfat floppy) in an MBR partition of type 0xef', async () => {
    // GIVEN
    const floppy = vvfatImage({ 'EFI/BOOT/BOOTX64.EFI': 'MZ loader' }, 'floppy');
    const disk = testDisk({
      sizeMiB: 32,
      table: 'mbr',
      partitions: [
        { sizeMiB: 2, type: 'ef', content: { file: floppy, from: 0, length: 1474560 } },
        { type: '83', fs: 'ext4' },
      ],
    });
    // WHEN
    const { layout, requests } = await probeFile(disk);
    // THEN the whole floppy directory tree lies within the window already read at the ESP's start
    expect(requests).toBe(3);
    expect(layout.partitions.map((p) => [p.filesystem, !!p.esp])).toEqual([
      ['fat12', true],
      ['ext4', false],
    ]);
    expect(layout.bootMode).toBe('uefi');
    expect(layout.esp).toEqual({ partition: 1, hasFallbackLoader: true, fallbackLoader: 'BOOTX64.EFI' });
    expect(layout.findings).toEqual([]);
  });

  test.each([
    ['8.3 names', false],
    ['long names', true],
  ])('found on a FAT32 ESP with %s, as fsck.fat finds it', async (_what, longNames) => {
    // GIVEN
    const { disk, esp } = gptWithFat32Esp('BOOTX64.EFI', longNames);
    const listed = fsckFiles(esp).map((f) => f.toUpperCase());
    // WHEN
    const { layout } = await probeFile(disk);
    // THEN
    expect(listed).toContain('/EFI/BOOT/BOOTX64.EFI');
    expect(layout.partitions.map((p) => p.filesystem)).toEqual(['fat32', 'ext4']);
    expect(layout.esp).toEqual({ partition: 1, hasFallbackLoader: true, fallbackLoader: longNames ? 'bootx64.efi' : 'BOOTX64.EFI' });
    expect(layout.findings).toEqual([]);
  });

  test('missing on a FAT32 ESP that has /EFI/BOOT but no loader', async () => {
    // GIVEN
    const { disk, esp } = gptWithFat32Esp(undefined, true);
    // WHEN
    const { layout } = await probeFile(disk);
    // THEN
    const listed = fsckFiles(esp).map((f) => f.toUpperCase());
    expect(listed).toEqual(expect.arrayContaining(['/EFI', '/EFI/BOOT']));
    expect(listed.filter((f) => f.startsWith('/EFI/BOOT/'))).toEqual([]);
    expect(layout.esp).toEqual({ partition: 1, hasFallbackLoader: false });
    expect(layout.findings.map((f) => f.code)).toEqual(['EFI_FALLBACK_LOADER_MISSING']);
  });

  test('a directory of several clusters is followed through the FAT', async () => {
    // GIVEN 300 files with long names in /EFI/BOOT: more entries than one 8 KiB cluster holds
    const names = Array.from({ length: 300 }, (_, i) => `module-${String(i).padStart(3, '0')}.efi`);
    const files: Record<string, string> = {};
    for (const n of names) files[`EFI/BOOT/${n}`] = n;
    const vv = vvfatImage(files, '16');
    const part = vvfatPartition(vv);
    const bs = parseFatBootSector(readFileAt(vv, part.start, 512))!;
    const src = await FileSource.open(vv);
    const image = await openRaw(src);
    const vol = new FatVolume(image, part.start, part.size, bs);
    // WHEN
    const boot = await vol.lookup(['EFI', 'BOOT']);
    const listing = await vol.directory(boot!.firstCluster);
    await src.close();
    // THEN
    expect(bs.type).toBe('fat16');
    expect(bs.bytesPerSector * bs.sectorsPerCluster).toBeLessThan(300 * 2 * 32); // a long-name entry and an 8.3 entry each
    expect(listing!.filter((e) => !e.directory).map((e) => e.name).sort()).toEqual(names);
  });

  test('the ESP is not walked on a disk that is not the boot disk', async () => {
    // GIVEN
    const disk = gptWithVvfatEsp({ 'EFI/debian/grubx64.efi': 'MZ grub' });
    // WHEN
    const { layout, requests } = await probeFile(disk, { isBootDisk: false });
    // THEN
    expect(layout.esp).toBeUndefined();
    expect(layout.findings).toEqual([]);
    expect(requests).toBe(2 + sfdiskTable(disk).partitions.length);
  });
});
