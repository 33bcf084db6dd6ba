import { detectFilesystem, FS_WINDOW, probeDisk, type FilesystemId } from '../../lambda/disk/probe';
import { openRaw } from '../../lambda/disk/raw';
import { FileSource } from '../../lambda/disk/source';
import { blkid, sfdiskTable, testDisk, type TestFs, type TestPartition } from '../helpers/probe-disks';

const LINUX = '0FC63DAF-8483-4772-8E79-3D69D8477DE4';

/** One partition per filesystem: made by mke2fs, mkfs.xfs, mkfs.btrfs, mkfs.ntfs, mkfs.vfat, mkswap; LVM2, LUKS and JFS by hand. */
const ZOO: ReadonlyArray<{ fs: TestFs; sizeMiB: number; label?: string }> = [
  { fs: 'ext2', sizeMiB: 8, label: 'boot2' },
  { fs: 'ext3', sizeMiB: 8, label: 'data3' },
  { fs: 'ext4', sizeMiB: 16, label: 'rootfs' },
  { fs: 'xfs', sizeMiB: 300, label: 'xfsroot' },
  { fs: 'btrfs', sizeMiB: 120, label: 'butter' },
  { fs: 'ntfs', sizeMiB: 16, label: 'Windows' },
  { fs: 'fat12', sizeMiB: 4, label: 'SMALL' },
  { fs: 'fat16', sizeMiB: 32, label: 'MIDDLE' },
  { fs: 'fat32', sizeMiB: 40, label: 'LARGE' },
  { fs: 'swap', sizeMiB: 8, label: 'swappy' },
  { fs: 'lvm2', sizeMiB: 8 },
  { fs: 'luks1', sizeMiB: 8 },
  { fs: 'luks2', sizeMiB: 8, label: 'vault' },
  { fs: 'jfs', sizeMiB: 16, label: 'jfsvol' },
];

function zooDisk(): string {
  return testDisk({
    sizeMiB: 600,
    table: 'gpt',
    partitions: ZOO.map((z): TestPartition => ({ sizeMiB: z.sizeMiB, type: LINUX, fs: z.fs, label: z.label })),
  });
}

/** How blkid names what the probe calls `id`. */
function blkidType(id: FilesystemId): { TYPE: string; VERSION?: string } {
  switch (id) {
    case 'fat12':
    case 'fat16':
    case 'fat32':
      return { TYPE: 'vfat', VERSION: id.toUpperCase() };
    case 'lvm2':
      return { TYPE: 'LVM2_member' };
    case 'luks':
      return { TYPE: 'crypto_LUKS' };
    default:
      return { TYPE: id };
  }
}

describe('filesystem probes', () => {
  test('every partition of a disk is recognised as blkid recognises it, with the same label and UUID', async () => {
    // GIVEN
    const file = zooDisk();
    const table = sfdiskTable(file).partitions;
    const src = await FileSource.open(file);
    const image = await openRaw(src);
    // WHEN
    const layout = await probeDisk(image, { isBootDisk: false });
    await src.close();
    // THEN
    expect(layout.partitions).toHaveLength(ZOO.length);
    for (const p of layout.partitions) {
      const sf = table.find((t) => t.number === p.index)!;
      const truth = blkid(file, sf.start, sf.size);
      const ours = blkidType(p.filesystem!);
      expect({ index: p.index, TYPE: ours.TYPE }).toEqual({ index: p.index, TYPE: truth.TYPE });
      if (ours.VERSION) expect(truth.VERSION).toBe(ours.VERSION);
      expect(p.uuid).toBe(truth.UUID);
      // NTFS keeps its label in the $Volume file, which the probe does not read.
      if (p.filesystem !== 'ntfs') expect(p.label).toBe(truth.LABEL);
    }
    // one read at the start, one for the backup GPT header, one window per partition
    expect(src.stats.requests).toBe(2 + ZOO.length);
  });

  test('the hand-written LVM2, LUKS and JFS signatures are ones blkid recognises', () => {
    // GIVEN
    const file = zooDisk();
    const table = sfdiskTable(file).partitions;
    // WHEN
    const types = ['lvm2', 'luks1', 'luks2', 'jfs'].map((fs) => {
      const sf = table[ZOO.findIndex((z) => z.fs === fs)];
      return blkid(file, sf.start, sf.size).TYPE;
    });
    // THEN
    expect(types).toEqual(['LVM2_member', 'crypto_LUKS', 'crypto_LUKS', 'jfs']);
  });

  test('ext2, ext3 and ext4 are told apart by their features as mke2fs sets them', async () => {
    // GIVEN
    const file = zooDisk();
    const table = sfdiskTable(file).partitions;
    const src = await FileSource.open(file);
    const image = await openRaw(src);
    // WHEN
    const found = [];
    for (const fs of ['ext2', 'ext3', 'ext4']) {
      const sf = table[ZOO.findIndex((z) => z.fs === fs)];
      found.push((await detectFilesystem(image, sf.start, sf.size)).filesystem);
    }
    await src.close();
    // THEN
    expect(found).toEqual(['ext2', 'ext3', 'ext4']);
  });

  test('detectFilesystem reads one window at the partition start', async () => {
    // GIVEN
    const file = zooDisk();
    const sf = sfdiskTable(file).partitions[ZOO.findIndex((z) => z.fs === 'btrfs')];
    const src = await FileSource.open(file);
    const image = await openRaw(src);
    // WHEN
    const info = await detectFilesystem(image, sf.start, sf.size);
    await src.close();
    // THEN
    expect(info.filesystem).toBe('btrfs');
    expect(src.stats.requests).toBe(1);
    expect(src.stats.bytesRead).toBe(FS_WINDOW);
  });

  test('a partition smaller than the window is read only up to its end', async () => {
    // GIVEN a 48 KiB partition holding a JFS superblock at 32 KiB
    const file = zooDisk();
    const sf = sfdiskTable(file).partitions[ZOO.findIndex((z) => z.fs === 'jfs')];
    const src = await FileSource.open(file);
    const image = await openRaw(src);
    // WHEN
    const small = await detectFilesystem(image, sf.start, 48 * 1024);
    const tooSmall = await detectFilesystem(image, sf.start, 32 * 1024);
    await src.close();
    // THEN
    expect(small.filesystem).toBe('jfs');
    expect(tooSmall.filesystem).toBe('unknown');
    expect(src.stats.bytesRead).toBe(80 * 1024);
  });

  test('zeros and random data are not a filesystem', async () => {
    // GIVEN
    const file = testDisk({ sizeMiB: 16, table: 'mbr', partitions: [{ sizeMiB: 4, type: '83' }, { type: '83', fs: 'random' }] });
    const table = sfdiskTable(file).partitions;
    const src = await FileSource.open(file);
    const image = await openRaw(src);
    // WHEN
    const found = [];
    for (const p of table) found.push(await detectFilesystem(image, p.start, p.size));
    await src.close();
    // THEN
    expect(found).toEqual([{ filesystem: 'unknown' }, { filesystem: 'unknown' }]);
    expect(table.map((p) => blkid(file, p.start, p.size).TYPE)).toEqual([undefined, undefined]);
  });
});
