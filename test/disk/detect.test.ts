import * as fs from 'node:fs';
import * as fc from 'fast-check';
import { classify, detect, expectedFormatFromName, HEAD_BYTES, stripCompressionExtension, type Detected } from '../../lambda/disk/detect';
import { BufferSource, FileSource, type ByteSource, type ReadStats } from '../../lambda/disk/source';
import { cached, qemuConvert, sampleGptDisk, sampleMbrDisk } from '../helpers/fixtures';
import { bootMbrDisk, compressed, emptyFile, ova, renamed, vmdkPart, zipOf } from '../helpers/inspect-fixtures';

/** A source that remembers every read, to check what detection asks for. */
class RecordingSource implements ByteSource {
  public readonly reads: Array<{ offset: number; length: number }> = [];
  public constructor(private readonly inner: ByteSource) {}
  public get name() {
    return this.inner.name;
  }
  public get size() {
    return this.inner.size;
  }
  public get stats(): ReadStats {
    return this.inner.stats;
  }
  public async read(offset: number, length: number) {
    this.reads.push({ offset, length });
    return this.inner.read(offset, length);
  }
  public async close() {
    await this.inner.close();
  }
}

async function detectFile(file: string): Promise<{ detected: Detected; reads: Array<{ offset: number; length: number }>; size: number }> {
  const src = new RecordingSource(await FileSource.open(file));
  try {
    const detected = await detect(src);
    return { detected, reads: src.reads, size: src.size };
  } finally {
    await src.close();
  }
}

/** A raw file with an ISO 9660 primary volume descriptor at sector 16 (2 KiB sectors). */
function isoLike(): string {
  return cached('inspect-iso-like.iso', (file) => {
    const buf = Buffer.alloc(40 * 2048);
    buf[16 * 2048] = 1; // primary volume descriptor
    buf.write('CD001', 16 * 2048 + 1, 'latin1');
    buf[16 * 2048 + 6] = 1;
    buf[17 * 2048] = 255; // terminator
    buf.write('CD001', 17 * 2048 + 1, 'latin1');
    fs.writeFileSync(file, buf);
  });
}

describe('detect', () => {
  const mbr = () => sampleMbrDisk();

  test.each<[string, () => string, Detected]>([
    ['raw (MBR inside)', () => mbr(), { kind: 'disk', format: 'raw' }],
    ['raw (GPT inside)', () => sampleGptDisk(), { kind: 'disk', format: 'raw' }],
    ['stream-optimized VMDK', () => qemuConvert(mbr(), 'vmdk', ['subformat=streamOptimized']), { kind: 'disk', format: 'vmdk' }],
    ['monolithicSparse VMDK', () => qemuConvert(mbr(), 'vmdk', ['subformat=monolithicSparse']), { kind: 'disk', format: 'vmdk' }],
    ['VMDK descriptor of a flat disk', () => vmdkPart('monolithicFlat', 'descriptor'), { kind: 'vmdk-descriptor' }],
    ['dynamic VHD (footer copy at 0)', () => qemuConvert(mbr(), 'vpc', ['subformat=dynamic'], 'vhd'), { kind: 'disk', format: 'vhd' }],
    ['fixed VHD (footer at the end only)', () => qemuConvert(mbr(), 'vpc', ['subformat=fixed', 'force_size=on'], 'vhd'), { kind: 'disk', format: 'vhd' }],
    ['VHDX', () => qemuConvert(mbr(), 'vhdx'), { kind: 'disk', format: 'vhdx' }],
    ['qcow2', () => qemuConvert(mbr(), 'qcow2'), { kind: 'disk', format: 'qcow2' }],
    ['qcow2 (compat 0.10, version 2)', () => qemuConvert(mbr(), 'qcow2', ['compat=0.10']), { kind: 'disk', format: 'qcow2' }],
    ['VDI', () => qemuConvert(mbr(), 'vdi'), { kind: 'disk', format: 'vdi' }],
    ['OVA (tar)', () => ova('detect.ova', [{ name: 'disk1.vmdk', file: qemuConvert(mbr(), 'vmdk', ['subformat=streamOptimized']), capacity: 64 << 20 }]), { kind: 'ova' }],
    ['gzip', () => compressed(bootMbrDisk(), 'gzip'), { kind: 'compressed', compression: 'gzip' }],
    ['xz', () => compressed(bootMbrDisk(), 'xz'), { kind: 'compressed', compression: 'xz' }],
    ['zstd', () => compressed(bootMbrDisk(), 'zstd'), { kind: 'compressed', compression: 'zstd' }],
    ['bzip2', () => compressed(bootMbrDisk(), 'bzip2'), { kind: 'compressed', compression: 'bzip2' }],
    ['zip', () => zipOf(mbr()), { kind: 'not-a-disk', what: 'a zip archive' }],
    ['ISO 9660', () => isoLike(), { kind: 'not-a-disk', what: 'an ISO 9660 (CD/DVD) image' }],
    ['empty file', () => emptyFile(), { kind: 'not-a-disk', what: 'an empty object (0 bytes)' }],
  ])('%s is recognised by its content', async (_what, make, expected) => {
    // GIVEN
    const file = make();
    // WHEN
    const { detected } = await detectFile(file);
    // THEN
    expect(detected).toEqual(expected);
  });

  test('detection reads the head once and the last 512 bytes in a ranged read of its own', async () => {
    // GIVEN: a fixed VHD, recognisable only by its tail
    const file = qemuConvert(sampleMbrDisk(), 'vpc', ['subformat=fixed', 'force_size=on'], 'vhd');
    // WHEN
    const { detected, reads, size } = await detectFile(file);
    // THEN
    expect(detected).toEqual({ kind: 'disk', format: 'vhd' });
    expect(reads).toEqual([
      { offset: 0, length: HEAD_BYTES },
      { offset: size - 512, length: 512 },
    ]);
  });

  test('a small input is read once, head and tail together', async () => {
    // GIVEN
    const src = new RecordingSource(new BufferSource('small.img', Buffer.alloc(4096)));
    // WHEN
    const detected = await detect(src);
    // THEN
    expect(detected).toEqual({ kind: 'disk', format: 'raw' });
    expect(src.reads).toEqual([{ offset: 0, length: 4096 }]);
  });

  test('the name plays no part: a qcow2 named .vmdk is qcow2', async () => {
    // GIVEN
    const file = renamed(qemuConvert(sampleMbrDisk(), 'qcow2'), 'really-qcow2.vmdk');
    // WHEN
    const { detected } = await detectFile(file);
    // THEN
    expect(detected).toEqual({ kind: 'disk', format: 'qcow2' });
  });

  test('without the tail (a decompressed prefix), a fixed VHD reads as raw', async () => {
    // GIVEN
    const file = qemuConvert(sampleMbrDisk(), 'vpc', ['subformat=fixed', 'force_size=on'], 'vhd');
    const src = await FileSource.open(file);
    // WHEN
    const detected = await detect(src, { tailIsEnd: false });
    await src.close();
    // THEN
    expect(detected).toEqual({ kind: 'disk', format: 'raw' });
  });

  test('tiny files, XML documents and text that is not a descriptor are told apart', () => {
    // GIVEN
    const tiny = Buffer.from('hello');
    const xml = Buffer.from('<?xml version="1.0"?>\n<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"/>');
    const descriptor = Buffer.from('# Disk DescriptorFile\nversion=1\nCID=fffffffe\ncreateType="vmfs"\n\nRW 2048 VMFS "disk-flat.vmdk"\n');
    const bare = Buffer.from('version=1\ncreateType="monolithicFlat"\nRW 2048 FLAT "disk-flat.vmdk" 0\n');
    // WHEN / THEN
    expect(classify(tiny, Buffer.alloc(0), tiny.length)).toMatchObject({ kind: 'not-a-disk', what: expect.stringContaining('too small') });
    expect(classify(xml, Buffer.alloc(0), 1 << 20)).toMatchObject({ kind: 'not-a-disk', what: expect.stringContaining('XML') });
    expect(classify(descriptor, Buffer.alloc(0), descriptor.length)).toEqual({ kind: 'vmdk-descriptor' });
    expect(classify(bare, Buffer.alloc(0), bare.length)).toEqual({ kind: 'vmdk-descriptor' });
  });

  test('random bytes always give a verdict, in at most two reads of bounded size', async () => {
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ minLength: 0, maxLength: 3 * 65536 }), async (bytes) => {
        // GIVEN
        const src = new RecordingSource(new BufferSource('random.bin', bytes));
        // WHEN
        const detected = await detect(src);
        // THEN
        expect(['disk', 'ova', 'compressed', 'vmdk-descriptor', 'not-a-disk']).toContain(detected.kind);
        expect(src.reads.length).toBeLessThanOrEqual(2);
        expect(src.stats.bytesRead).toBeLessThanOrEqual(HEAD_BYTES + 512);
      }),
      { numRuns: 200 },
    );
  });

  test('real headers with a few bytes changed still give a verdict', async () => {
    // GIVEN: the first 64 KiB and last 512 bytes of real images
    const files = [
      qemuConvert(sampleMbrDisk(), 'vmdk', ['subformat=streamOptimized']),
      qemuConvert(sampleMbrDisk(), 'vpc', ['subformat=dynamic'], 'vhd'),
      qemuConvert(sampleMbrDisk(), 'vhdx'),
      qemuConvert(sampleMbrDisk(), 'qcow2'),
      qemuConvert(sampleMbrDisk(), 'vdi'),
    ];
    const heads = files.map((f) => {
      const all = fs.readFileSync(f);
      return { head: all.subarray(0, HEAD_BYTES), tail: all.subarray(all.length - 512), size: all.length };
    });
    await fc.assert(
      fc.property(
        fc.nat(heads.length - 1),
        fc.array(fc.tuple(fc.nat(HEAD_BYTES - 1), fc.integer({ min: 0, max: 255 })), { maxLength: 16 }),
        (which, edits) => {
          const head = Buffer.from(heads[which].head);
          for (const [at, v] of edits) head[at] = v;
          // WHEN
          const detected = classify(head, heads[which].tail, heads[which].size);
          // THEN
          expect(['disk', 'ova', 'compressed', 'vmdk-descriptor', 'not-a-disk']).toContain(detected.kind);
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe('expectedFormatFromName', () => {
  test.each([
    ['disk.vmdk', 'vmdk'],
    ['DISK.VHD', 'vhd'],
    ['a/b/disk.vhdx', 'vhdx'],
    ['disk.img', 'raw'],
    ['disk.raw', 'raw'],
    ['disk.qcow2', 'qcow2'],
    ['disk.vdi', 'vdi'],
    ['vm.ova', 'ova'],
    ['vm.ovf', 'ovf'],
    ['disk.raw.gz', 'gzip'],
    ['disk.vmdk.xz', 'xz'],
    ['disk.img.zst', 'zstd'],
    ['disk.qcow2.bz2', 'bzip2'],
  ])('%s promises %s', (name, expected) => {
    // GIVEN / WHEN / THEN
    expect(expectedFormatFromName(name)).toBe(expected);
  });

  test.each(['disk', 'disk.', '.vmdk', 'archive.tar', 'dir.vmdk/disk'])('%s promises nothing', (name) => {
    // GIVEN / WHEN / THEN
    expect(expectedFormatFromName(name)).toBeUndefined();
  });

  test('the compression extension comes off to give the inner name', () => {
    // GIVEN / WHEN / THEN
    expect(stripCompressionExtension('images/disk.raw.gz')).toBe('images/disk.raw');
    expect(stripCompressionExtension('disk.vmdk')).toBeUndefined();
    expect(expectedFormatFromName(stripCompressionExtension('disk.vhd.zst')!)).toBe('vhd');
  });
});
