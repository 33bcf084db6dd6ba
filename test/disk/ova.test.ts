import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { gzipSync } from 'node:zlib';
import { decompress, detectCompression } from '../../lambda/disk/compressed';
import { ImageFormatError } from '../../lambda/disk/errors';
import { isTar, openOva, type OvaPackage } from '../../lambda/disk/ova';
import { parseOvf } from '../../lambda/disk/ovf';
import { BufferSource, CachedSource, FileSource, type ByteSource } from '../../lambda/disk/source';
import { pseudoRandom, qemuConvert, qemuInfo, run, sampleGptDisk, sampleMbrDisk, tempDir } from '../helpers/fixtures';
import {
  cachedTar,
  manifestText,
  ovaEntries,
  ovfDescriptor,
  STREAM_VMDK_URI,
  streamVmdk,
  tarBuffer,
  writeTar,
  type OvaRecipe,
  type TarEntry,
} from '../helpers/ova-builder';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/** A small stream-optimized VMDK (of a 16 MiB MBR disk) for the packaging variants. */
function smallVmdk(): string {
  return qemuConvert(sampleMbrDisk(16), 'vmdk', ['subformat=streamOptimized']);
}

/** A stream-optimized VMDK of the UEFI GPT sample disk. */
function gptVmdk(): string {
  return qemuConvert(sampleGptDisk(), 'vmdk', ['subformat=streamOptimized']);
}

function virtualSize(file: string): number {
  return qemuInfo(file)['virtual-size'];
}

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

async function bytesOf(src: ByteSource): Promise<Buffer> {
  return src.read(0, src.size);
}

/** Opens `file` as an OVA, and closes it afterwards. */
type Opened = OvaPackage & { requests: number; bytesRead: number; root: FileSource };

async function open(file: string, wrap: (s: ByteSource) => ByteSource = (s) => s): Promise<Opened> {
  const root = await FileSource.open(file);
  const pkg = await openOva(wrap(root));
  return { ...pkg, requests: root.stats.requests, bytesRead: root.stats.bytesRead, root };
}

/** Builds the OVA `entries` in a temporary directory, runs `fn` on it, and removes it. */
async function withOva<T>(entries: readonly TarEntry[], fn: (file: string) => Promise<T>): Promise<T> {
  const { dir, cleanup } = tempDir();
  try {
    const file = path.join(dir, 'test.ova');
    writeTar(file, entries);
    return await fn(file);
  } finally {
    cleanup();
  }
}

function recipe(overrides: Partial<OvaRecipe> = {}): OvaRecipe {
  return { base: 'vm', disks: [{ name: 'vm-disk1.vmdk', file: smallVmdk() }], manifest: 'SHA256', ...overrides };
}

describe('openOva on packages built from qemu-img disks', () => {
  test('a single-disk VMware-style OVA with UEFI firmware', async () => {
    // GIVEN
    const vmdk = streamVmdk();
    const file = cachedTar('ova-single-efi-v1.ova', () =>
      ovaEntries(
        {
          base: 'linux-efi',
          disks: [{ name: 'linux-efi-disk1.vmdk', file: vmdk, spec: { capacity: virtualSize(vmdk) / MiB, units: 'byte * 2^20' } }],
          vm: { firmware: 'efi', osType: 'ubuntu64Guest', osId: 94, nics: 2, cpus: 4, memoryMiB: 4096 },
          manifest: 'SHA256',
        },
        virtualSize,
      ),
    );
    // WHEN
    const pkg = await open(file);
    // THEN
    expect(pkg.findings).toEqual([]);
    expect(pkg.members.map((m) => m.name)).toEqual(['linux-efi.ovf', 'linux-efi.mf', 'linux-efi-disk1.vmdk']);
    expect(pkg.ovfName).toBe('linux-efi.ovf');
    expect(pkg.ovf).toMatchObject({ firmware: 'efi', osType: 'ubuntu64Guest', osId: 94, networkAdapters: 2, cpus: 4, memoryMiB: 4096, virtualSystems: 1 });
    expect(Object.keys(pkg.manifest ?? {})).toEqual(['linux-efi.ovf', 'linux-efi-disk1.vmdk']);
    expect(pkg.manifest?.['linux-efi-disk1.vmdk']).toEqual({ algorithm: 'SHA256', digest: sha256(fs.readFileSync(vmdk)) });
    expect(pkg.disks).toHaveLength(1);
    const disk = pkg.disks[0];
    expect(disk).toMatchObject({
      index: 0,
      fileName: 'linux-efi-disk1.vmdk',
      diskId: 'vmdisk1',
      chunked: false,
      capacityBytes: virtualSize(vmdk),
      formatUri: STREAM_VMDK_URI,
    });
    expect(disk.source?.size).toBe(fs.statSync(vmdk).size);
    // The disk's source is the VMDK, byte for byte (read here only to check; openOva did not).
    const before = pkg.bytesRead;
    expect(sha256(await bytesOf(disk.source!))).toBe(sha256(fs.readFileSync(vmdk)));
    expect(before).toBeLessThan(64 * 1024);
    await pkg.root.close();
  });

  test('three disks map to their members in order, at a cost of one request per member', async () => {
    // GIVEN: three different qemu-img disks, capacities in three unit forms
    const disks = [
      { name: 'multi-disk1.vmdk', file: streamVmdk(), spec: { capacity: virtualSize(streamVmdk()) / MiB, units: 'byte * 2^20' } },
      { name: 'multi-disk2.vmdk', file: gptVmdk(), spec: { capacity: virtualSize(gptVmdk()) / MiB, units: 'byte * 1024 * 1024' } },
      { name: 'multi-disk3.vmdk', file: smallVmdk(), spec: { capacity: virtualSize(smallVmdk()) } },
    ];
    const file = cachedTar('ova-three-disks-v1.ova', () => ovaEntries({ base: 'multi', disks, manifest: 'SHA1' }, virtualSize));
    // WHEN
    const pkg = await open(file, (s) => new CachedSource(s));
    // THEN
    expect(pkg.findings).toEqual([]);
    expect(pkg.disks.map((d) => d.fileName)).toEqual(disks.map((d) => d.name));
    expect(pkg.disks.map((d) => d.capacityBytes)).toEqual(disks.map((d) => virtualSize(d.file)));
    expect(pkg.requests).toBeLessThanOrEqual(pkg.members.length + 2);
    for (const [i, d] of pkg.disks.entries()) {
      expect(d.index).toBe(i);
      expect(sha256(await bytesOf(d.source!))).toBe(sha256(fs.readFileSync(disks[i].file)));
    }
    await pkg.root.close();
  });

  test('a package made by the real tar command, in ustar and pax formats', async () => {
    // GIVEN: the same files, archived by GNU tar
    const entries = ovaEntries(recipe(), virtualSize);
    for (const format of ['ustar', 'pax']) {
      const { dir, cleanup } = tempDir();
      try {
        for (const e of entries) fs.writeFileSync(path.join(dir, e.name), e.data ?? fs.readFileSync(e.file!));
        const file = path.join(dir, `tar-${format}.ova`);
        run('tar', [`--format=${format}`, '-cf', file, '-C', dir, ...entries.map((e) => e.name)]);
        // WHEN
        const pkg = await open(file);
        // THEN
        expect(pkg.findings).toEqual([]);
        expect(pkg.ovfName).toBe('vm.ovf');
        expect(pkg.disks).toHaveLength(1);
        expect(sha256(await bytesOf(pkg.disks[0].source!))).toBe(sha256(fs.readFileSync(smallVmdk())));
        await pkg.root.close();
      } finally {
        cleanup();
      }
    }
  });

  test('a chunked disk is reported and gets no source', async () => {
    // GIVEN: the disk split into 4 MiB members name.000000000, name.000000001, ...
    const vmdk = fs.readFileSync(smallVmdk());
    const chunkSize = 4 * MiB;
    const chunks: TarEntry[] = [];
    for (let i = 0; i * chunkSize < vmdk.length; i++) {
      chunks.push({ name: `vm-disk1.vmdk.${String(i).padStart(9, '0')}`, data: vmdk.subarray(i * chunkSize, (i + 1) * chunkSize) });
    }
    const ovf = Buffer.from(ovfDescriptor({ disks: [{ href: 'vm-disk1.vmdk', capacity: 16, units: 'byte * 2^20', size: vmdk.length, chunkSize }] }));
    // WHEN
    const pkg = await withOva([{ name: 'vm.ovf', data: ovf }, ...chunks], (f) => open(f));
    // THEN
    expect(chunks.length).toBeGreaterThan(1);
    expect(pkg.findings.map((f) => f.code)).toEqual(['OVA_CHUNKED']);
    expect(pkg.findings[0].disk).toBe(0);
    expect(pkg.disks[0]).toMatchObject({ chunked: true, fileName: 'vm-disk1.vmdk' });
    expect(pkg.disks[0].source).toBeUndefined();
    await pkg.root.close();
  });

  test('disk members over 8 GiB, sized by a pax record and by a base-256 field', async () => {
    // GIVEN: two 9 GiB disk members left as holes in the archive file
    const size = 9 * GiB + 4096;
    const ovf = Buffer.from(
      ovfDescriptor({
        disks: [
          { href: 'big-pax.vmdk', capacity: 10, units: 'byte * 2^30', size },
          { href: 'big-b256.vmdk', capacity: 10, units: 'byte * 2^30', size },
        ],
      }),
    );
    const entries: TarEntry[] = [
      { name: 'vm.ovf', data: ovf },
      { name: 'big-pax.vmdk', sparseSize: size, sizeEncoding: 'pax' },
      { name: 'big-b256.vmdk', sparseSize: size, sizeEncoding: 'base256' },
    ];
    // WHEN
    const pkg = await withOva(entries, async (f) => {
      const p = await open(f);
      const tail = await p.disks[1].source!.read(size - 16, 64);
      await p.root.close();
      return { ...p, tail };
    });
    // THEN
    expect(pkg.findings).toEqual([]);
    expect(pkg.disks.map((d) => [d.fileName, d.source?.size, d.capacityBytes])).toEqual([
      ['big-pax.vmdk', size, 10 * GiB],
      ['big-b256.vmdk', size, 10 * GiB],
    ]);
    expect(pkg.tail.equals(Buffer.alloc(16))).toBe(true);
    expect(pkg.requests).toBeLessThanOrEqual(pkg.members.length + 4 + 2);
  });

  test('a disk with a GNU long name', async () => {
    // GIVEN
    const longName = `${'very-long-disk-name-'.repeat(6)}disk1.vmdk`;
    const data = fs.readFileSync(smallVmdk());
    const ovf = Buffer.from(ovfDescriptor({ disks: [{ href: longName, capacity: 16 * MiB, size: data.length }] }));
    // WHEN
    const pkg = await withOva([{ name: 'vm.ovf', data: ovf }, { name: longName, data, nameEncoding: 'gnu' }], async (f) => {
      const p = await open(f);
      const head = await p.disks[0].source!.read(0, 4);
      await p.root.close();
      return { ...p, head };
    });
    // THEN
    expect(longName.length).toBeGreaterThan(100);
    expect(pkg.findings).toEqual([]);
    expect(pkg.disks[0].fileName).toBe(longName);
    expect(pkg.head.toString('latin1')).toBe('KDMV');
  });

  test('a member named ../ is reported as unsafe', async () => {
    // GIVEN
    const entries = [...ovaEntries(recipe({ manifest: undefined }), virtualSize), { name: '../../etc/cron.d/evil', data: Buffer.from('x') }];
    // WHEN
    const pkg = await withOva(entries, (f) => open(f));
    // THEN
    expect(pkg.findings.map((f) => f.code)).toEqual(['OVA_UNSAFE_PATH']);
    expect(pkg.findings[0].message).toContain('../../etc/cron.d/evil');
    await pkg.root.close();
  });

  test('a manifest with SHA256 digests that leaves one file out', async () => {
    // GIVEN
    const entries = ovaEntries(recipe({ manifestOmits: ['vm-disk1.vmdk'] }), virtualSize);
    // WHEN
    const pkg = await withOva(entries, (f) => open(f));
    // THEN
    expect(pkg.findings.map((f) => [f.code, f.severity])).toEqual([['OVA_MANIFEST_MISSING_ENTRY', 'warning']]);
    expect(pkg.findings[0].message).toContain('vm-disk1.vmdk');
    expect(pkg.manifest?.['vm.ovf']?.algorithm).toBe('SHA256');
    expect(pkg.disks[0].source).toBeDefined();
    await pkg.root.close();
  });

  test('a descriptor edited after the manifest was written', async () => {
    // GIVEN: the manifest holds the digest of another descriptor text
    const entries = ovaEntries(recipe(), virtualSize);
    const edited = Buffer.from(entries[0].data!.toString().replace('Virtual disk information', 'Edited disk information'));
    expect(edited.equals(entries[0].data!)).toBe(false);
    entries[0] = { ...entries[0], data: edited };
    // WHEN
    const pkg = await withOva(entries, (f) => open(f));
    // THEN
    expect(pkg.findings.map((f) => f.code)).toEqual(['OVA_MANIFEST_MISMATCH']);
    await pkg.root.close();
  });

  test('a descriptor that is not the first member', async () => {
    // GIVEN
    const [ovf, mf, disk] = ovaEntries(recipe(), virtualSize);
    // WHEN
    const pkg = await withOva([disk, ovf, mf], (f) => open(f));
    // THEN
    expect(pkg.findings.map((f) => f.code)).toEqual(['OVA_MALFORMED']);
    expect(pkg.findings[0].message).toContain('not the first');
    expect(pkg.disks[0].source).toBeDefined();
    await pkg.root.close();
  });

  test('a referenced file that is missing', async () => {
    // GIVEN: a two-disk descriptor, and only the first disk in the archive
    const data = fs.readFileSync(smallVmdk());
    const ovf = Buffer.from(
      ovfDescriptor({
        disks: [
          { href: 'vm-disk1.vmdk', capacity: 16 * MiB, size: data.length },
          { href: 'vm-disk2.vmdk', capacity: 16 * MiB, size: data.length },
        ],
      }),
    );
    // WHEN
    const pkg = await withOva([{ name: 'vm.ovf', data: ovf }, { name: 'vm-disk1.vmdk', data }], (f) => open(f));
    // THEN
    expect(pkg.findings.map((f) => [f.code, f.disk])).toEqual([['OVA_MALFORMED', 1]]);
    expect(pkg.findings[0].message).toContain('vm-disk2.vmdk');
    expect(pkg.disks.map((d) => d.source !== undefined)).toEqual([true, false]);
    await pkg.root.close();
  });

  test('a gzip-compressed disk is reported, and its source decompresses to the disk', async () => {
    // GIVEN
    const data = fs.readFileSync(smallVmdk());
    const gz = gzipSync(data);
    const ovf = Buffer.from(ovfDescriptor({ disks: [{ href: 'vm-disk1.vmdk', capacity: 16 * MiB, size: gz.length, compression: 'gzip' }] }));
    // WHEN
    const out = await withOva([{ name: 'vm.ovf', data: ovf }, { name: 'vm-disk1.vmdk', data: gz }], async (f) => {
      const pkg = await open(f);
      const src = pkg.disks[0].source!;
      const head = await src.read(0, 16);
      const chunks: Buffer[] = [];
      for await (const c of decompress(src, 'gzip')) chunks.push(c);
      await pkg.root.close();
      return { pkg, head, unpacked: Buffer.concat(chunks) };
    });
    // THEN
    expect(out.pkg.findings.map((f) => [f.code, f.disk])).toEqual([['OVA_COMPRESSED_DISK', 0]]);
    expect(out.pkg.disks[0].compression).toBe('gzip');
    expect(detectCompression(out.head)).toBe('gzip');
    expect(out.unpacked.equals(data)).toBe(true);
  });

  test('a package without a descriptor lists its disk-like members', async () => {
    // GIVEN
    const data = fs.readFileSync(smallVmdk());
    // WHEN
    const pkg = await withOva([{ name: 'notes.txt', data: Buffer.from('hi') }, { name: 'disk.vmdk', data }], (f) => open(f));
    // THEN
    expect(pkg.findings.map((f) => f.code)).toEqual(['OVA_MALFORMED']);
    expect(pkg.ovf).toBeUndefined();
    expect(pkg.disks.map((d) => d.fileName)).toEqual(['disk.vmdk']);
    await pkg.root.close();
  });

  test('a hostile descriptor becomes a finding, never an expansion', async () => {
    // GIVEN
    const data = fs.readFileSync(smallVmdk());
    const ovf = Buffer.from(BILLION_LAUGHS);
    // WHEN
    const pkg = await withOva([{ name: 'vm.ovf', data: ovf }, { name: 'vm-disk1.vmdk', data }], (f) => open(f));
    // THEN
    expect(pkg.findings.map((f) => f.code)).toEqual(['OVA_MALFORMED']);
    expect(pkg.ovf).toBeUndefined();
    await pkg.root.close();
  });
});

describe('isTar', () => {
  test('recognises OVAs by the ustar magic and old archives by their checksum', () => {
    // GIVEN
    const { dir, cleanup } = tempDir();
    try {
      fs.writeFileSync(path.join(dir, 'a.ovf'), '<Envelope/>');
      const v7 = path.join(dir, 'v7.tar');
      run('tar', ['--format=v7', '-cf', v7, '-C', dir, 'a.ovf']);
      const ustar = path.join(dir, 'u.tar');
      run('tar', ['--format=ustar', '-cf', ustar, '-C', dir, 'a.ovf']);
      const head = (f: string) => fs.readFileSync(f).subarray(0, 1024);
      // WHEN / THEN
      expect(isTar(head(ustar))).toBe(true);
      expect(head(v7).subarray(257, 262).toString('latin1')).not.toBe('ustar');
      expect(isTar(head(v7))).toBe(true);
      expect(isTar(head(sampleMbrDisk()))).toBe(false);
      expect(isTar(head(streamVmdk()))).toBe(false);
      expect(isTar(pseudoRandom(1024, 1))).toBe(false);
      expect(isTar(Buffer.alloc(1024))).toBe(false);
      expect(isTar(head(ustar).subarray(0, 300))).toBe(false);
    } finally {
      cleanup();
    }
  });
});

const BILLION_LAUGHS = `<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References><File ovf:href="&lol9;" ovf:id="file1"/></References>
  <VirtualSystem ovf:id="vm"><Info>&lol9;</Info></VirtualSystem>
</Envelope>
`;

describe('parseOvf', () => {
  test('refuses the billion laughs without expanding anything', () => {
    // GIVEN
    const started = Date.now();
    // WHEN
    const err = (() => {
      try {
        parseOvf(BILLION_LAUGHS);
        return undefined;
      } catch (e) {
        return e;
      }
    })();
    // THEN
    expect(err).toBeInstanceOf(ImageFormatError);
    expect(Date.now() - started).toBeLessThan(1000);
  });

  test('refuses an external entity and never reads the file it names', () => {
    // GIVEN
    const xml = `<?xml version="1.0"?>
<!DOCTYPE Envelope [ <!ENTITY xxe SYSTEM "file:///etc/passwd"> ]>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"><VirtualSystem><Info>&xxe;</Info></VirtualSystem></Envelope>`;
    // WHEN / THEN
    expect(() => parseOvf(xml)).toThrow(ImageFormatError);
    expect(() => parseOvf(xml)).not.toThrow(/root:/);
  });

  test('refuses text that is not well-formed, not an OVF envelope, or too large', () => {
    // GIVEN
    const broken = ovfDescriptor({ disks: [] }).replace('</DiskSection>', '');
    const notOvf = '<?xml version="1.0"?><html><body/></html>';
    const huge = `<Envelope>${' '.repeat(5 * MiB)}</Envelope>`;
    // WHEN / THEN
    for (const xml of [broken, notOvf, huge, '', 'not xml at all']) {
      expect(() => parseOvf(xml)).toThrow(ImageFormatError);
    }
  });

  test.each([
    ['byte * 2^30', '10', 10 * GiB],
    ['byte * 1024 * 1024', '2048', 2 * GiB],
    ['byte', '1073741824', GiB],
    [undefined, '5368709120', 5 * GiB],
    ['byte * 10^3', '7', 7000],
    ['MegaBytes', '20', 20 * MiB],
    ['byte * 2^60', '1000000', undefined],
    ['furlongs', '10', undefined],
  ])('capacity with units %s', (units, capacity, expected) => {
    // GIVEN
    const xml = ovfDescriptor({ disks: [{ href: 'd.vmdk', capacity, units }] });
    // WHEN
    const ovf = parseOvf(xml);
    // THEN
    expect(ovf.disks[0].capacityBytes).toBe(expected);
  });

  test('a capacity given by a property reference is left unknown', () => {
    // GIVEN
    const xml = ovfDescriptor({ disks: [{ href: 'd.vmdk', capacity: '${disk.size}', units: 'byte * 2^30' }] });
    // WHEN
    const ovf = parseOvf(xml);
    // THEN
    expect(ovf.disks[0]).toMatchObject({ diskId: 'vmdisk1', fileRef: 'file1', format: STREAM_VMDK_URI });
    expect(ovf.disks[0].capacityBytes).toBeUndefined();
  });

  test.each([['efi' as const], ['bios' as const], [undefined]])('firmware %s', (firmware) => {
    // GIVEN
    const xml = ovfDescriptor({ disks: [], firmware });
    // WHEN
    const ovf = parseOvf(xml);
    // THEN
    expect(ovf.firmware).toBe(firmware);
  });

  test('guest OS, CPUs, memory, network adapters and disks of the virtual system', () => {
    // GIVEN
    const xml = ovfDescriptor({
      disks: [
        { href: 'a.vmdk', capacity: 1, units: 'byte * 2^30', size: 100, populatedSize: 5000 },
        { href: 'b.vmdk', capacity: 2, units: 'byte * 2^30' },
      ],
      osId: 103,
      osType: 'windows2019srv_64Guest',
      osDescription: 'Microsoft Windows Server 2019 (64-bit)',
      nics: 3,
      cpus: 8,
      memoryMiB: 16384,
    });
    // WHEN
    const ovf = parseOvf(xml);
    // THEN
    expect(ovf).toMatchObject({
      osId: 103,
      osType: 'windows2019srv_64Guest',
      osDescription: 'Microsoft Windows Server 2019 (64-bit)',
      networkAdapters: 3,
      diskDrives: 2,
      cpus: 8,
      memoryMiB: 16384,
      virtualSystems: 1,
    });
    expect(ovf.files).toEqual([
      { id: 'file1', href: 'a.vmdk', size: 100 },
      { id: 'file2', href: 'b.vmdk' },
    ]);
    expect(ovf.disks.map((d) => [d.diskId, d.fileRef, d.capacityBytes, d.populatedSize])).toEqual([
      ['vmdisk1', 'file1', GiB, 5000],
      ['vmdisk2', 'file2', 2 * GiB, undefined],
    ]);
  });

  test('namespace prefixes are matched by local name, whatever they are', () => {
    // GIVEN: the same descriptor with other prefixes, and one with the envelope prefixed too
    const xml = ovfDescriptor({ disks: [{ href: 'a.vmdk', capacity: 3, units: 'byte * 2^30', compression: 'gzip', chunkSize: 1000 }], firmware: 'efi', nics: 2 });
    const renamed = xml
      .replace(/xmlns:ovf=/g, 'xmlns:o=')
      .replace(/ovf:/g, 'o:')
      .replace(/xmlns:rasd=/g, 'xmlns:r=')
      .replace(/rasd:/g, 'r:')
      .replace(/xmlns:vmw=/g, 'xmlns:vm=')
      .replace(/vmw:/g, 'vm:')
      .replace(/xmlns:vssd=/g, 'xmlns:s=')
      .replace(/vssd:/g, 's:');
    const prefixed = xml.replace(/<(\/?)(Envelope|References|File|DiskSection|Disk|VirtualSystem|VirtualHardwareSection|Item|OperatingSystemSection)\b/g, '<$1ovf:$2');
    // WHEN
    const results = [xml, renamed, prefixed].map(parseOvf);
    // THEN
    expect(renamed).not.toContain('ovf:');
    for (const ovf of results) {
      expect(ovf).toMatchObject({ firmware: 'efi', networkAdapters: 2, osType: 'ubuntu64Guest' });
      expect(ovf.files).toEqual([{ id: 'file1', href: 'a.vmdk', compression: 'gzip', chunkSize: 1000 }]);
      expect(ovf.disks[0].capacityBytes).toBe(3 * GiB);
    }
  });

  test('an OVF 2 collection of virtual systems with port and storage items', () => {
    // GIVEN
    const xml = fs.readFileSync(path.join(__dirname, '..', 'fixtures', 'ova', 'collection-ovf2.ovf'), 'utf8');
    // WHEN
    const ovf = parseOvf(xml);
    // THEN
    expect(ovf).toMatchObject({ virtualSystems: 2, networkAdapters: 1, diskDrives: 1, cpus: 1, memoryMiB: 512, osId: 101 });
    expect(ovf.disks.map((d) => d.capacityBytes)).toEqual([20 * GiB]);
  });

  test('entities of XML itself are decoded, and a byte order mark or UTF-16 text is accepted', async () => {
    // GIVEN
    const xml = ovfDescriptor({ disks: [{ href: 'a&b.vmdk', capacity: 1 }], osDescription: 'Linux <64-bit> & more' });
    const utf16 = Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(xml, 'utf16le')]);
    const bom = Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(xml)]);
    // WHEN
    const direct = parseOvf(xml);
    const viaOva = await Promise.all(
      [utf16, bom].map(async (data) => {
        const archive = tarBuffer([{ name: 'vm.ovf', data }]);
        return openOva(new BufferSource('x.ova', archive));
      }),
    );
    // THEN
    expect(direct.files[0].href).toBe('a&b.vmdk');
    expect(direct.osDescription).toBe('Linux <64-bit> & more');
    for (const pkg of viaOva) expect(pkg.ovf?.osDescription).toBe('Linux <64-bit> & more');
  });
});

describe('manifestText (test helper) and openOva agree on the manifest format', () => {
  test('SHA1 lines are read back', async () => {
    // GIVEN
    const entries = [{ name: 'a.ovf', data: Buffer.from(ovfDescriptor({ disks: [] })) }];
    const mf = manifestText(entries, 'SHA1');
    // WHEN
    const pkg = await withOva([...entries, { name: 'a.mf', data: Buffer.from(mf) }], (f) => open(f));
    // THEN
    expect(pkg.manifest?.['a.ovf']).toEqual({ algorithm: 'SHA1', digest: createHash('sha1').update(entries[0].data).digest('hex') });
    expect(pkg.findings).toEqual([]);
    await pkg.root.close();
  });
});
