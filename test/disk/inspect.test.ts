import * as fs from 'node:fs';
import * as zlib from 'node:zlib';
import * as fc from 'fast-check';
import { inspect, inspectDisks, MAX_DISKS, PREFIX_BYTES, type InspectionReport } from '../../lambda/disk/inspect';
import { renderReport } from '../../lambda/disk/report';
import { BufferSource, FileSource, checkRange, type ByteSource, type ReadStats } from '../../lambda/disk/source';
import { cached, partitionsOf, qemuConvert, qemuCreate, qemuInfo, rawDisk, run } from '../helpers/fixtures';
import {
  bootGptDisk,
  bootMbrDisk,
  bulkyMbrDisk,
  compressed,
  emptyFile,
  ova,
  patchedCopy,
  renamed,
  truncatedCopy,
  vmdkPart,
  zipOf,
} from '../helpers/inspect-fixtures';

const MiB = 1024 * 1024;

async function inspectFile(file: string, name?: string): Promise<InspectionReport> {
  const src = await FileSource.open(file);
  try {
    return await inspect(src, name ? { name } : {});
  } finally {
    await src.close();
  }
}

const codes = (r: { findings: readonly { code: string }[] }) => r.findings.map((f) => f.code).sort();
const stream = (raw: string) => qemuConvert(raw, 'vmdk', ['subformat=streamOptimized']);
/** The virtual size qemu-img gives; a fixed VHD has no magic at 0, so its format is named. */
const virtualSize = (file: string, fmt?: string): number =>
  fmt ? JSON.parse(run('qemu-img', ['info', '-f', fmt, '--output=json', file]))['virtual-size'] : qemuInfo(file)['virtual-size'];

/** The partitions sfdisk reads, in the report's terms. */
function expectedPartitions(raw: string) {
  return partitionsOf(raw).map((p, i) => expect.objectContaining({ index: i + 1, start: p.start, size: p.size }));
}

/** Checks what every report of the boot MBR disk says, whatever its container. */
function expectBootMbr(r: InspectionReport) {
  const raw = bootMbrDisk();
  expect(r.partitions).toEqual(expectedPartitions(raw));
  expect(r.partitions[0]).toMatchObject({ bootable: true, filesystem: 'ext4', type: '0x83' });
  expect(r.bootMode).toBe('legacy-bios');
  expect(r.disks[0].partitionTable).toBe('mbr');
}

describe('inspect: disk images made by qemu-img', () => {
  test.each<[string, () => string, { format: string; subformat: string; importFormat: string; codes: string[]; qemuFormat?: string }]>([
    ['raw', () => bootMbrDisk(), { format: 'raw', subformat: 'raw', importFormat: 'RAW', codes: [] }],
    ['stream-optimized VMDK', () => stream(bootMbrDisk()), { format: 'vmdk', subformat: 'streamOptimized', importFormat: 'VMDK', codes: [] }],
    ['dynamic VHD', () => qemuConvert(bootMbrDisk(), 'vpc', ['subformat=dynamic', 'force_size=on'], 'vhd'), { format: 'vhd', subformat: 'dynamic', importFormat: 'VHD', codes: [] }],
    ['fixed VHD', () => qemuConvert(bootMbrDisk(), 'vpc', ['subformat=fixed', 'force_size=on'], 'vhd'), { format: 'vhd', subformat: 'fixed', importFormat: 'VHD', codes: [], qemuFormat: 'vpc' }],
    ['VHDX', () => qemuConvert(bootMbrDisk(), 'vhdx'), { format: 'vhdx', subformat: 'dynamic', importFormat: 'VHDX', codes: [] }],
  ])('%s is importable as it is', async (_what, make, expected) => {
    // GIVEN
    const file = make();
    // WHEN
    const r = await inspectFile(file);
    // THEN
    expect(r).toMatchObject({
      format: expected.format,
      subformat: expected.subformat,
      virtualSize: virtualSize(file, expected.qemuFormat),
      importable: true,
      needsConversion: false,
      importFormat: expected.importFormat,
    });
    expect(codes(r)).toEqual(expected.codes);
    expect(r.disks).toHaveLength(1);
    expect(r.disks[0]).toMatchObject({ index: 0, format: expected.format, root: { partition: 1, filesystem: 'ext4' } });
    expectBootMbr(r);
    // Headers only: a handful of requests, a few MiB at most.
    expect(r.requests).toBeLessThanOrEqual(24);
    expect(r.bytesRead).toBeLessThanOrEqual(4 * MiB);
  });

  test.each<[string, () => string, { format: string; subformat: string; codes: string[] }]>([
    ['monolithicSparse VMDK', () => qemuConvert(bootMbrDisk(), 'vmdk', ['subformat=monolithicSparse']), { format: 'vmdk', subformat: 'monolithicSparse', codes: ['VMDK_NOT_STREAM_OPTIMIZED'] }],
    ['qcow2 v3', () => qemuConvert(bootMbrDisk(), 'qcow2'), { format: 'qcow2', subformat: 'v3', codes: ['FORMAT_NEEDS_CONVERSION'] }],
    ['qcow2 v2', () => qemuConvert(bootMbrDisk(), 'qcow2', ['compat=0.10']), { format: 'qcow2', subformat: 'v2', codes: ['FORMAT_NEEDS_CONVERSION'] }],
    ['VDI', () => qemuConvert(bootMbrDisk(), 'vdi'), { format: 'vdi', subformat: 'dynamic', codes: ['FORMAT_NEEDS_CONVERSION'] }],
  ])('%s needs conversion', async (_what, make, expected) => {
    // GIVEN
    const file = make();
    // WHEN
    const r = await inspectFile(file);
    // THEN
    expect(r).toMatchObject({
      format: expected.format,
      subformat: expected.subformat,
      virtualSize: virtualSize(file),
      importable: false,
      needsConversion: true,
      importFormat: 'VMDK',
    });
    expect(codes(r)).toEqual(expected.codes);
    expect(r.findings[0].severity).toBe('convertible');
    expectBootMbr(r);
    expect(r.requests).toBeLessThanOrEqual(24);
    expect(r.bytesRead).toBeLessThanOrEqual(4 * MiB);
  });

  test('a GPT disk with an ESP boots with UEFI; the missing fallback loader is a warning', async () => {
    // GIVEN
    const raw = bootGptDisk();
    const file = qemuConvert(raw, 'vhdx');
    // WHEN
    const r = await inspectFile(file);
    // THEN
    expect(r).toMatchObject({ format: 'vhdx', virtualSize: virtualSize(file), importable: true, importFormat: 'VHDX', bootMode: 'uefi' });
    expect(r.disks[0]).toMatchObject({ partitionTable: 'gpt', esp: { partition: 1, hasFallbackLoader: false }, root: { partition: 2, filesystem: 'ext4' } });
    expect(r.partitions).toEqual(expectedPartitions(raw));
    expect(codes(r)).toEqual(['EFI_FALLBACK_LOADER_MISSING']);
    expect(r.findings[0].severity).toBe('warning');
  });

  test('a qcow2 named .vmdk gets EXTENSION_MISMATCH; the format comes from the content', async () => {
    // GIVEN
    const file = renamed(qemuConvert(bootMbrDisk(), 'qcow2'), 'uploaded-as.vmdk');
    // WHEN
    const r = await inspectFile(file);
    // THEN
    expect(r).toMatchObject({ name: 'inspect-uploaded-as.vmdk', format: 'qcow2', needsConversion: true });
    expect(codes(r)).toEqual(['EXTENSION_MISMATCH', 'FORMAT_NEEDS_CONVERSION']);
    expect(r.findings.find((f) => f.code === 'EXTENSION_MISMATCH')!.message).toMatch(/VMDK.*qcow2/);
  });

  test('the name given in the options is the one checked', async () => {
    // GIVEN
    const file = qemuConvert(bootMbrDisk(), 'vpc', ['subformat=dynamic', 'force_size=on'], 'vhd');
    // WHEN
    const asVhdx = await inspectFile(file, 'images/disk.vhdx');
    const asVhd = await inspectFile(file, 'images/disk.vhd');
    // THEN
    expect(asVhdx.name).toBe('images/disk.vhdx');
    expect(codes(asVhdx)).toEqual(['EXTENSION_MISMATCH']);
    expect(asVhdx.importable).toBe(true); // a warning only
    expect(codes(asVhd)).toEqual([]);
  });
});

describe('inspect: images VM Import rejects', () => {
  test('a VMDK descriptor without its extent', async () => {
    // GIVEN: qemu-img writes a descriptor and a separate -flat extent
    const file = vmdkPart('monolithicFlat', 'descriptor');
    // WHEN
    const r = await inspectFile(file);
    // THEN
    expect(r).toMatchObject({ format: 'vmdk', subformat: 'monolithicFlat', virtualSize: 64 * MiB, importable: false, needsConversion: false });
    expect(r.importFormat).toBeUndefined();
    expect(codes(r)).toEqual(['VMDK_DESCRIPTOR_ONLY']);
  });

  test('one extent of a split sparse VMDK', async () => {
    // GIVEN: the first extent file of a twoGbMaxExtentSparse disk
    const extent = vmdkPart('twoGbMaxExtentSparse', '-s001');
    // WHEN
    const r = await inspectFile(extent);
    // THEN
    expect(r).toMatchObject({ format: 'vmdk', importable: false, needsConversion: false });
    expect(codes(r)).toEqual(['VMDK_SPLIT_EXTENTS']);
  });

  test('a qcow2 with a backing file is a differencing disk: an error, whatever conversion could do', async () => {
    // GIVEN
    const base = qemuConvert(bootMbrDisk(), 'qcow2');
    const child = cached('inspect-child-of-base.qcow2', (file) => run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', file]));
    // WHEN
    const r = await inspectFile(child);
    // THEN
    expect(r).toMatchObject({ format: 'qcow2', virtualSize: virtualSize(child), importable: false, needsConversion: false });
    expect(r.importFormat).toBeUndefined();
    expect(codes(r)).toEqual(expect.arrayContaining(['DIFFERENCING_DISK', 'FORMAT_NEEDS_CONVERSION']));
    expect(r.findings[0]).toMatchObject({ code: 'DIFFERENCING_DISK', severity: 'error' });
  });

  test('a stream-optimized VMDK cut in half is TRUNCATED', async () => {
    // GIVEN
    const full = stream(bootMbrDisk());
    const file = truncatedCopy(full, Math.floor(fs.statSync(full).size / 2 / 512) * 512, 'half-stream.vmdk');
    // WHEN
    const r = await inspectFile(file);
    // THEN
    expect(r).toMatchObject({ format: 'vmdk', importable: false, needsConversion: false });
    expect(codes(r)).toEqual(['TRUNCATED']);
    expect(r.findings[0].awsError).toBeDefined();
  });

  test('a qcow2 whose L1 table lies outside the file is MALFORMED_IMAGE', async () => {
    // GIVEN: l1_table_offset (u64 big-endian at 40) moved far past the end
    const patch = Buffer.alloc(8);
    patch.writeBigUInt64BE(0x10_0000_0000n);
    const file = patchedCopy(qemuConvert(bootMbrDisk(), 'qcow2'), 40, patch, 'l1-outside.qcow2');
    // WHEN
    const r = await inspectFile(file);
    // THEN
    expect(r).toMatchObject({ format: 'qcow2', importable: false, needsConversion: false });
    expect(codes(r)).toContain('MALFORMED_IMAGE');
    expect(r.findings[0].severity).toBe('error');
  });

  test('a fixed VHD whose footer checksum is wrong is CHECKSUM_MISMATCH', async () => {
    // GIVEN
    const good = qemuConvert(bootMbrDisk(), 'vpc', ['subformat=fixed', 'force_size=on'], 'vhd');
    const file = patchedCopy(good, fs.statSync(good).size - 512 + 64, Buffer.from([0xde, 0xad, 0xbe, 0xef]), 'bad-checksum.vhd');
    // WHEN
    const r = await inspectFile(file);
    // THEN
    expect(r).toMatchObject({ format: 'vhd', subformat: 'fixed', importable: false });
    expect(codes(r)).toEqual(['CHECKSUM_MISMATCH']);
  });

  test('a zip archive is NOT_A_DISK, an empty file EMPTY_IMAGE', async () => {
    // GIVEN
    const zip = zipOf(bootMbrDisk());
    const empty = emptyFile();
    // WHEN
    const z = await inspectFile(zip);
    const e = await inspectFile(empty);
    // THEN
    expect(z).toMatchObject({ format: 'not-a-disk', importable: false, needsConversion: false, disks: [] });
    expect(codes(z)).toEqual(['NOT_A_DISK']);
    expect(z.findings[0].message).toContain('zip archive');
    expect(e).toMatchObject({ format: 'not-a-disk', importable: false, requests: 0 });
    expect(codes(e)).toEqual(['EMPTY_IMAGE']);
  });

  test('8 TiB and more needs a manifest; 16 TiB and more is too large; neither costs more reads', async () => {
    // GIVEN: empty qcow2 images (no partition table either)
    const big = qemuCreate('qcow2', '9T');
    const huge = qemuCreate('vhdx', '16T');
    // WHEN
    const b = await inspectFile(big);
    const h = await inspectFile(huge);
    // THEN
    expect(b.virtualSize).toBe(virtualSize(big));
    expect(codes(b)).toEqual(['DISK_NEEDS_MANIFEST', 'FORMAT_NEEDS_CONVERSION', 'NO_PARTITION_TABLE']);
    expect(h.virtualSize).toBe(virtualSize(huge));
    expect(codes(h)).toEqual(['DISK_TOO_LARGE', 'NO_PARTITION_TABLE']);
    expect(h.findings.map((f) => f.severity)).toEqual(['error', 'error']);
    for (const r of [b, h]) {
      expect(r.requests).toBeLessThanOrEqual(24);
      expect(r.bytesRead).toBeLessThanOrEqual(4 * MiB);
    }
  });
});

describe('inspect: compressed images', () => {
  test('a compressed image that fits the prefix is inspected in full', async () => {
    // GIVEN: the stream VMDK of the boot disk, bzip2-compressed (small enough to decompress whole)
    const inner = stream(bootMbrDisk());
    const file = compressed(inner, 'bzip2');
    // WHEN
    const r = await inspectFile(file);
    // THEN
    expect(fs.statSync(inner).size).toBeLessThan(PREFIX_BYTES);
    expect(r).toMatchObject({ format: 'bzip2', subformat: 'vmdk', virtualSize: virtualSize(inner), importable: false, needsConversion: true, importFormat: 'VMDK' });
    expect(r.disks[0]).toMatchObject({ format: 'vmdk', subformat: 'streamOptimized', compression: 'bzip2' });
    expect(codes(r)).toEqual(['COMPRESSED_WRAPPER']);
    expectBootMbr(r);
  });

  test('a raw MBR disk larger than the prefix: the table is read, the size and the rest are not checked', async () => {
    // GIVEN
    const raw = bootMbrDisk();
    const file = compressed(raw, 'xz');
    // WHEN
    const r = await inspectFile(file);
    // THEN
    expect(fs.statSync(raw).size).toBeGreaterThan(PREFIX_BYTES);
    expect(r).toMatchObject({ format: 'xz', subformat: 'raw', needsConversion: true, importFormat: 'VMDK', bootMode: 'legacy-bios' });
    expect(r.virtualSize).toBeUndefined();
    expect(codes(r)).toEqual(['COMPRESSED_NOT_INSPECTABLE', 'COMPRESSED_WRAPPER']);
    expect(r.findings.find((f) => f.code === 'COMPRESSED_NOT_INSPECTABLE')!.message).toMatch(/virtual size/);
    expect(r.partitions).toEqual(expectedPartitions(raw));
    // Partition 1 starts inside the prefix; partition 2 (at 41 MiB) does not, so nothing is claimed of it.
    expect(r.partitions[0].filesystem).toBe('ext4');
    expect(r.partitions[1].filesystem).toBeUndefined();
  });

  test('a raw GPT disk larger than the prefix: the size comes from the GPT header', async () => {
    // GIVEN
    const raw = bootGptDisk();
    const file = compressed(raw, 'gzip');
    // WHEN
    const r = await inspectFile(file);
    // THEN
    expect(r).toMatchObject({ format: 'gzip', subformat: 'raw', virtualSize: fs.statSync(raw).size, needsConversion: true, bootMode: 'uefi' });
    expect(r.partitions).toEqual(expectedPartitions(raw));
    expect(codes(r)).toEqual(['COMPRESSED_NOT_INSPECTABLE', 'COMPRESSED_WRAPPER']);
  });

  test('a stream-optimized VMDK larger than the prefix is read from its grain records', async () => {
    // GIVEN: 44 MiB of random data keep the VMDK larger than the prefix
    const raw = bulkyMbrDisk();
    const vmdk = stream(raw);
    const file = compressed(vmdk, 'zstd');
    // WHEN
    const r = await inspectFile(file);
    // THEN
    expect(fs.statSync(vmdk).size).toBeGreaterThan(PREFIX_BYTES);
    expect(r).toMatchObject({ format: 'zstd', subformat: 'vmdk', virtualSize: virtualSize(vmdk), needsConversion: true });
    expect(r.disks[0]).toMatchObject({ format: 'vmdk', subformat: 'streamOptimized', partitionTable: 'mbr', compression: 'zstd' });
    expect(r.partitions).toEqual(expectedPartitions(raw));
    expect(r.partitions[0].filesystem).toBe('ext4');
    expect(codes(r)).toEqual(['COMPRESSED_NOT_INSPECTABLE', 'COMPRESSED_WRAPPER']);
    // Decompression stops once the prefix is out: much of the file is never read.
    expect(r.bytesRead).toBeLessThan(fs.statSync(file).size * 0.7);
  });

  test('a qcow2 larger than the prefix is read by its own reader as far as the prefix goes', async () => {
    // GIVEN
    const raw = bulkyMbrDisk();
    const qcow2 = qemuConvert(raw, 'qcow2');
    const file = compressed(qcow2, 'gzip');
    // WHEN
    const r = await inspectFile(file);
    // THEN
    expect(fs.statSync(qcow2).size).toBeGreaterThan(PREFIX_BYTES);
    expect(r).toMatchObject({ format: 'gzip', subformat: 'qcow2', virtualSize: virtualSize(qcow2), needsConversion: true });
    expect(r.partitions).toEqual(expectedPartitions(raw));
    expect(codes(r)).toEqual(['COMPRESSED_NOT_INSPECTABLE', 'COMPRESSED_WRAPPER', 'FORMAT_NEEDS_CONVERSION']);
  });

  test('a compressed stream cut short is TRUNCATED', async () => {
    // GIVEN
    const full = compressed(stream(bootMbrDisk()), 'gzip');
    const file = truncatedCopy(full, Math.floor(fs.statSync(full).size / 2), 'cut.vmdk.gz');
    // WHEN
    const r = await inspectFile(file);
    // THEN
    expect(r).toMatchObject({ format: 'gzip', importable: false, needsConversion: false });
    expect(codes(r)).toEqual(['COMPRESSED_WRAPPER', 'TRUNCATED']);
  });
});

describe('inspect: OVA packages', () => {
  const disk1 = () => ({ name: 'disk1.vmdk', file: stream(bootMbrDisk()), capacity: virtualSize(bootMbrDisk()) });
  const disk2 = () => ({ name: 'disk2.vmdk', file: stream(bootGptDisk()), capacity: virtualSize(bootGptDisk()) });

  test('a one-disk OVA made by tar is importable as OVA', async () => {
    // GIVEN
    const file = ova('one-disk.ova', [disk1()], { firmware: 'bios' });
    // WHEN
    const r = await inspectFile(file);
    // THEN
    expect(r).toMatchObject({
      format: 'ova',
      subformat: 'vmdk',
      virtualSize: virtualSize(bootMbrDisk()),
      importable: true,
      importFormat: 'OVA',
      ovf: { firmware: 'bios', osType: 'ubuntu64Guest', networkAdapters: 1 },
    });
    expect(r.disks).toHaveLength(1);
    expect(r.disks[0]).toMatchObject({ name: 'disk1.vmdk', format: 'vmdk', subformat: 'streamOptimized' });
    expect(codes(r)).toEqual([]);
    expectBootMbr(r);
  });

  test('the OVF firmware reaches the probes: an EFI VM with an MBR disk and no ESP is rejected', async () => {
    // GIVEN
    const file = ova('efi-mbr.ova', [disk1()], { firmware: 'efi' });
    // WHEN
    const r = await inspectFile(file);
    // THEN
    expect(r).toMatchObject({ format: 'ova', importable: false, needsConversion: false, ovf: { firmware: 'efi' } });
    expect(codes(r)).toEqual(['UEFI_WITHOUT_ESP']);
  });

  test('a two-disk OVA: the first disk is the boot disk, findings name their disk', async () => {
    // GIVEN: a boot disk and a GPT data disk in a monolithicSparse VMDK (needs conversion)
    const data = { name: 'disk2.vmdk', file: qemuConvert(bootGptDisk(), 'vmdk', ['subformat=monolithicSparse']), capacity: virtualSize(bootGptDisk()) };
    const file = ova('two-disks.ova', [disk1(), data]);
    // WHEN
    const r = await inspectFile(file);
    // THEN
    expect(r).toMatchObject({ format: 'ova', needsConversion: true, importFormat: 'VMDK', virtualSize: virtualSize(bootMbrDisk()) });
    expect(r.disks.map((d) => [d.index, d.name, d.subformat, d.virtualSize])).toEqual([
      [0, 'disk1.vmdk', 'streamOptimized', virtualSize(bootMbrDisk())],
      [1, 'disk2.vmdk', 'monolithicSparse', virtualSize(bootGptDisk())],
    ]);
    expect(r.disks[1]).toMatchObject({ partitionTable: 'gpt', importFormat: 'VMDK' });
    expect(r.disks[1].bootMode).toBeUndefined(); // boot analysis is for the boot disk only
    expect(r.disks[1].partitions).toEqual(expectedPartitions(bootGptDisk()));
    expect(r.findings).toEqual([expect.objectContaining({ code: 'VMDK_NOT_STREAM_OPTIMIZED', disk: 1 })]);
    expect(r.disks[0].findings).toEqual([]);
  });

  test('a package costs a few requests beyond its member headers', async () => {
    // GIVEN
    const file = ova('cost.ova', [disk1(), disk2()]);
    // WHEN
    const r = await inspectFile(file);
    // THEN
    expect(r.importable).toBe(true);
    expect(r.requests).toBeLessThanOrEqual(24 + 3);
  });
});

describe('inspectDisks: the disk objects of one VM', () => {
  test('each object is inspected; findings carry the disk index', async () => {
    // GIVEN
    const boot = await FileSource.open(qemuConvert(bootMbrDisk(), 'vpc', ['subformat=dynamic', 'force_size=on'], 'vhd'));
    const data = await FileSource.open(qemuConvert(bootGptDisk(), 'qcow2'));
    // WHEN
    const r = await inspectDisks([boot, data]);
    await boot.close();
    await data.close();
    // THEN
    expect(r).toMatchObject({ format: 'vhd', needsConversion: true, importFormat: 'VMDK', bootMode: 'legacy-bios' });
    expect(r.disks.map((d) => [d.index, d.format, d.importFormat])).toEqual([
      [0, 'vhd', 'VHD'],
      [1, 'qcow2', 'VMDK'],
    ]);
    expect(r.findings).toEqual([expect.objectContaining({ code: 'FORMAT_NEEDS_CONVERSION', disk: 1 })]);
    expect(r.size).toBe(boot.size + data.size);
  });

  test(`more than ${MAX_DISKS} disks is TOO_MANY_DISKS`, async () => {
    // GIVEN
    const file = rawDisk({ sizeMiB: 4, table: 'gpt', partitions: [{ type: '0FC63DAF-8483-4772-8E79-3D69D8477DE4' }] });
    const sources = await Promise.all(Array.from({ length: MAX_DISKS + 1 }, () => FileSource.open(file)));
    // WHEN
    const r = await inspectDisks(sources);
    await Promise.all(sources.map((s) => s.close()));
    // THEN
    expect(r.disks).toHaveLength(MAX_DISKS + 1);
    expect(codes(r)).toContain('TOO_MANY_DISKS');
    expect(r.importable).toBe(false);
  });

  test('an OVA among several disk objects is OVA_IN_DISK_LIST', async () => {
    // GIVEN
    const boot = await FileSource.open(bootMbrDisk());
    const pkg = await FileSource.open(ova('one-disk.ova', [{ name: 'disk1.vmdk', file: stream(bootMbrDisk()), capacity: virtualSize(bootMbrDisk()) }], { firmware: 'bios' }));
    // WHEN
    const r = await inspectDisks([boot, pkg]);
    await boot.close();
    await pkg.close();
    // THEN
    expect(codes(r)).toEqual(['OVA_IN_DISK_LIST']);
    expect(r.findings[0].disk).toBe(1);
    expect(r.importable).toBe(false);
  });
});

describe('renderReport', () => {
  test('shows the verdict, the partitions, the findings with their remedies and the cost', async () => {
    // GIVEN
    const r = await inspectFile(renamed(qemuConvert(bootMbrDisk(), 'qcow2'), 'render.vmdk'));
    // WHEN
    const text = renderReport(r);
    // THEN
    expect(text).toContain('QCOW2 (v3)');
    expect(text).toMatch(/Verdict: importable after conversion/);
    expect(text).toMatch(/^ {2}1 +1 MiB +40 MiB +Linux \(0x83\) +\* +ext4/m);
    expect(text).toMatch(/Fixed by conversion:\n {2}- \[FORMAT_NEEDS_CONVERSION\]/);
    expect(text).toMatch(/Warnings.*:\n {2}- \[EXTENSION_MISMATCH\].*\n {4}Fix: Rename the object/);
    expect(text).toContain(`in ${r.requests} request`);
  });
});

/** A file whose first bytes are replaced by `head`: real structure with damaged headers. */
class PatchedFile implements ByteSource {
  public readonly stats: ReadStats = { bytesRead: 0, requests: 0 };
  public constructor(public readonly name: string, private readonly fd: number, public readonly size: number, private readonly head: Buffer) {}
  public async read(offset: number, length: number): Promise<Buffer> {
    checkRange(offset, length);
    const n = Math.max(0, Math.min(length, this.size - offset));
    const buf = Buffer.alloc(n);
    if (n === 0) return buf;
    this.stats.requests++;
    this.stats.bytesRead += n;
    fs.readSync(this.fd, buf, 0, n, offset);
    if (offset < this.head.length) this.head.copy(buf, 0, offset, Math.min(this.head.length, offset + n));
    return buf;
  }
  public async close(): Promise<void> {}
}

describe('inspect: arbitrary inputs', () => {
  test('random bytes give a report, never an exception', async () => {
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ minLength: 0, maxLength: 256 * 1024 }), async (bytes) => {
        // GIVEN
        const src = new BufferSource('random.bin', bytes);
        // WHEN
        const r = await inspect(src);
        // THEN
        expect(r.importable && r.needsConversion).toBe(false);
        expect(src.stats.bytesRead).toBeLessThanOrEqual(2 * 256 * 1024);
      }),
      { numRuns: 60 },
    );
  });

  test('real images with damaged headers give a report with bounded reads', async () => {
    // GIVEN: every format, its first 64 KiB mutated
    const files = [
      stream(bootMbrDisk()),
      qemuConvert(bootMbrDisk(), 'vmdk', ['subformat=monolithicSparse']),
      qemuConvert(bootMbrDisk(), 'vpc', ['subformat=dynamic', 'force_size=on'], 'vhd'),
      qemuConvert(bootMbrDisk(), 'vhdx'),
      qemuConvert(bootMbrDisk(), 'qcow2'),
      qemuConvert(bootMbrDisk(), 'vdi'),
      ova('one-disk.ova', [{ name: 'disk1.vmdk', file: stream(bootMbrDisk()), capacity: virtualSize(bootMbrDisk()) }], { firmware: 'bios' }),
    ];
    const opened = files.map((f) => {
      const fd = fs.openSync(f, 'r');
      const head = Buffer.alloc(64 * 1024);
      fs.readSync(fd, head, 0, head.length, 0);
      return { name: f, fd, size: fs.statSync(f).size, head };
    });
    try {
      await fc.assert(
        fc.asyncProperty(
          fc.nat(files.length - 1),
          fc.array(fc.tuple(fc.nat(4095), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 12 }),
          async (which, edits) => {
            const f = opened[which];
            const head = Buffer.from(f.head);
            for (const [at, v] of edits) head[at] = v;
            const src = new PatchedFile(f.name, f.fd, f.size, head);
            // WHEN
            const r = await inspect(src);
            // THEN
            expect(typeof r.importable).toBe('boolean');
            expect(src.stats.requests).toBeLessThanOrEqual(200);
            expect(src.stats.bytesRead).toBeLessThanOrEqual(32 * MiB);
          },
        ),
        { numRuns: 150 },
      );
    } finally {
      for (const f of opened) fs.closeSync(f.fd);
    }
  });

  test('a damaged stream-optimized VMDK or raw GPT disk inside a compressed stream gives a report', async () => {
    // GIVEN: the first MiB of a stream VMDK or of a raw GPT disk, mutated, followed by zeros past
    // the prefix (so that only the prefix is looked at), gzipped
    const heads = [fs.readFileSync(stream(bulkyMbrDisk())).subarray(0, MiB), fs.readFileSync(bootGptDisk()).subarray(0, MiB)];
    await fc.assert(
      fc.asyncProperty(
        fc.nat(heads.length - 1),
        fc.array(fc.tuple(fc.nat(MiB - 1), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 24 }),
        fc.boolean(),
        async (which, edits, hitHeader) => {
          const bytes = Buffer.concat([heads[which], Buffer.alloc(PREFIX_BYTES)]);
          for (const [at, v] of edits) bytes[hitHeader ? at % 1536 : at] = v;
          const src = new BufferSource('damaged.img.gz', zlib.gzipSync(bytes, { level: 1 }));
          // WHEN
          const r = await inspect(src);
          // THEN
          expect(r.format).toBe('gzip');
          expect(r.findings.map((f) => f.code)).toContain('COMPRESSED_WRAPPER');
          if (r.virtualSize !== undefined) expect(Number.isSafeInteger(r.virtualSize)).toBe(true);
        },
      ),
      { numRuns: 30 },
    );
  });
});
