import * as fs from 'node:fs';
import * as path from 'node:path';
import { ImageFormatError, ImageReadError } from '../../lambda/disk/errors';
import { BufferSource, FileSource } from '../../lambda/disk/source';
import { listTar, parsePaxRecords, tarChecksumOk } from '../../lambda/disk/tar';
import { pseudoRandom, run, tempDir } from '../helpers/fixtures';
import { paxRecord, tarBuffer, tarHeader, writeTar, type TarEntry } from '../helpers/ova-builder';

const GiB = 1024 * 1024 * 1024;

/** Files for the real tar command: a short name, a name over 100 bytes, an empty file and a directory. */
function sampleTree(dir: string): { files: Record<string, Buffer>; longName: string } {
  const longName = `sub/${'n'.repeat(60)}/${'m'.repeat(70)}.vmdk`;
  const files: Record<string, Buffer> = {
    'vm.ovf': Buffer.from('<Envelope/>\n'),
    'disk-1.vmdk': pseudoRandom(70_000, 3),
    'empty.mf': Buffer.alloc(0),
    [longName]: pseudoRandom(1_500, 4),
  };
  for (const [name, data] of Object.entries(files)) {
    fs.mkdirSync(path.join(dir, path.dirname(name)), { recursive: true });
    fs.writeFileSync(path.join(dir, name), data);
  }
  return { files, longName };
}

async function listFile(file: string): Promise<Awaited<ReturnType<typeof listTar>> & { requests: number; bytesRead: number }> {
  const src = await FileSource.open(file);
  try {
    const out = await listTar(src);
    return { ...out, requests: src.stats.requests, bytesRead: src.stats.bytesRead };
  } finally {
    await src.close();
  }
}

describe('listTar on archives made by GNU tar', () => {
  test.each(['ustar', 'pax', 'gnu', 'v7'])('--format=%s: names, sizes and data offsets', async (format) => {
    // GIVEN
    const { dir, cleanup } = tempDir();
    try {
      const tree = path.join(dir, 'tree');
      const { files, longName } = sampleTree(tree);
      const names = Object.keys(files).filter((n) => format !== 'v7' || n !== longName);
      const archive = path.join(dir, `a-${format}.tar`);
      run('tar', [`--format=${format}`, '-cf', archive, '-C', tree, ...names]);
      // WHEN
      const { members, findings } = await listFile(archive);
      // THEN
      expect(findings).toEqual([]);
      expect(members.map((m) => m.name)).toEqual(names);
      const bytes = fs.readFileSync(archive);
      for (const m of members) {
        expect(m.type).toBe('file');
        expect(m.size).toBe(files[m.name].length);
        expect(bytes.subarray(m.offset, m.offset + m.size).equals(files[m.name])).toBe(true);
        expect(m.headerOffset).toBeLessThan(m.offset);
      }
    } finally {
      cleanup();
    }
  });

  test('a directory member is listed as a directory', async () => {
    // GIVEN
    const { dir, cleanup } = tempDir();
    try {
      const tree = path.join(dir, 'tree');
      sampleTree(tree);
      const archive = path.join(dir, 'dir.tar');
      run('tar', ['--format=ustar', '-cf', archive, '-C', tree, 'sub', 'vm.ovf']);
      // WHEN
      const { members } = await listFile(archive);
      // THEN
      expect(members[0]).toMatchObject({ name: 'sub/', type: 'directory', size: 0 });
      expect(members.filter((m) => m.type === 'file').map((m) => m.name)).toContain('vm.ovf');
    } finally {
      cleanup();
    }
  });

  test('costs one read per header and one per pax payload, never reading member data', async () => {
    // GIVEN: a pax archive whose long name needs an extended header
    const { dir, cleanup } = tempDir();
    try {
      const tree = path.join(dir, 'tree');
      const { files, longName } = sampleTree(tree);
      const archive = path.join(dir, 'count.tar');
      run('tar', ['--format=pax', '-cf', archive, '-C', tree, ...Object.keys(files)]);
      const bytes = fs.readFileSync(archive);
      const paxHeaders = (() => {
        let n = 0;
        for (let off = 0; off + 512 <= bytes.length; off += 512) {
          if (tarChecksumOk(bytes.subarray(off, off + 512)) && bytes[off + 156] === 0x78) n++;
        }
        return n;
      })();
      // WHEN
      const { members, requests, bytesRead } = await listFile(archive);
      // THEN: headers + pax payloads + the second end-of-archive block
      expect(members.find((m) => m.name === longName)).toBeDefined();
      expect(paxHeaders).toBeGreaterThan(0);
      expect(requests).toBe(members.length + 2 * paxHeaders + 1 + 1);
      expect(bytesRead).toBeLessThan(members.length * 512 * 4 + 4096);
    } finally {
      cleanup();
    }
  });
});

describe('listTar on hand-built headers', () => {
  test('a member over 8 GiB with a base-256 size field, and one with a pax size record', async () => {
    // GIVEN: an archive of two 9 GiB members left as holes, so nothing is written for them
    const { dir, cleanup } = tempDir();
    try {
      const archive = path.join(dir, 'big.tar');
      const size = 9 * GiB + 12_345;
      writeTar(archive, [
        { name: 'small.ovf', data: Buffer.from('<Envelope/>') },
        { name: 'big-base256.vmdk', sparseSize: size, sizeEncoding: 'base256' },
        { name: 'big-pax.vmdk', sparseSize: size, sizeEncoding: 'pax' },
        { name: 'after.txt', data: Buffer.from('still found') },
      ]);
      // WHEN
      const { members, bytesRead } = await listFile(archive);
      // THEN
      expect(members.map((m) => [m.name, m.size])).toEqual([
        ['small.ovf', 11],
        ['big-base256.vmdk', size],
        ['big-pax.vmdk', size],
        ['after.txt', 11],
      ]);
      // the pax header, its payload and the member header lie between the two
      expect(members[2].offset).toBe(members[1].offset + Math.ceil(size / 512) * 512 + 3 * 512);
      const after = members[3];
      const src = await FileSource.open(archive);
      expect((await src.read(after.offset, after.size)).toString()).toBe('still found');
      await src.close();
      expect(bytesRead).toBeLessThan(16 * 1024);
    } finally {
      cleanup();
    }
  });

  test('a GNU long name and a pax path replace the header name', async () => {
    // GIVEN
    const gnuName = `gnu/${'g'.repeat(150)}.vmdk`;
    const paxName = `pax/${'p'.repeat(150)}.vmdk`;
    const archive = tarBuffer([
      { name: gnuName, data: Buffer.from('one'), nameEncoding: 'gnu' },
      { name: paxName, data: Buffer.from('two'), nameEncoding: 'pax' },
      { name: `ustar/${'u'.repeat(90)}/${'v'.repeat(90)}`, data: Buffer.from('three') },
    ]);
    // WHEN
    const { members } = await listTar(new BufferSource('names.tar', archive));
    // THEN
    expect(members.map((m) => m.name)).toEqual([gnuName, paxName, `ustar/${'u'.repeat(90)}/${'v'.repeat(90)}`]);
    expect(members.map((m) => archive.subarray(m.offset, m.offset + m.size).toString())).toEqual(['one', 'two', 'three']);
  });

  test('a pax global header applies to the members after it, and an extended header to the next member only', async () => {
    // GIVEN
    const global = Buffer.from(paxRecord('comment', 'made by hand'));
    const local = Buffer.from(paxRecord('path', 'renamed.vmdk'));
    const archive = tarBuffer([
      { name: 'pax_global_header', data: global, typeflag: 'g' },
      { name: 'PaxHeaders/x', data: local, typeflag: 'x' },
      { name: 'original.vmdk', data: Buffer.from('a') },
      { name: 'next.vmdk', data: Buffer.from('b') },
    ]);
    // WHEN
    const { members } = await listTar(new BufferSource('pax.tar', archive));
    // THEN
    expect(members.map((m) => m.name)).toEqual(['renamed.vmdk', 'next.vmdk']);
  });

  test('members named with .. or an absolute path are reported, not hidden', async () => {
    // GIVEN
    const archive = tarBuffer([
      { name: 'ok.ovf', data: Buffer.from('x') },
      { name: '../escape.vmdk', data: Buffer.from('y') },
      { name: '/etc/absolute', data: Buffer.from('z') },
      { name: 'dots..are-fine.vmdk', data: Buffer.from('w') },
    ]);
    // WHEN
    const { members, findings } = await listTar(new BufferSource('unsafe.tar', archive));
    // THEN
    expect(members).toHaveLength(4);
    expect(findings.map((f) => f.code)).toEqual(['OVA_UNSAFE_PATH', 'OVA_UNSAFE_PATH']);
    expect(findings[0].message).toContain('../escape.vmdk');
    expect(findings[1].message).toContain('/etc/absolute');
  });

  test('a header with a wrong checksum is refused', async () => {
    // GIVEN
    const archive = tarBuffer([
      { name: 'a.ovf', data: Buffer.from('x') },
      { name: 'b.vmdk', data: Buffer.from('y'), badChecksum: true },
    ]);
    // WHEN
    const err = await listTar(new BufferSource('bad.tar', archive)).catch((e: unknown) => e);
    // THEN
    expect(err).toBeInstanceOf(ImageFormatError);
    expect((err as ImageFormatError).code).toBe('CHECKSUM_MISMATCH');
  });

  test('a member whose data runs past the end of the archive is TRUNCATED', async () => {
    // GIVEN: the archive cut in the middle of the second member
    const archive = tarBuffer([
      { name: 'a.ovf', data: Buffer.from('x') },
      { name: 'b.vmdk', data: pseudoRandom(10_000, 1) },
    ]);
    const cut = archive.subarray(0, 1024 + 512 + 5_000);
    // WHEN
    const err = await listTar(new BufferSource('cut.tar', cut)).catch((e: unknown) => e);
    // THEN
    expect(err).toBeInstanceOf(ImageReadError);
    expect((err as ImageReadError).code).toBe('TRUNCATED');
  });

  test('a header cut short is TRUNCATED', async () => {
    // GIVEN
    const archive = tarBuffer([{ name: 'a.ovf', data: Buffer.from('x') }, { name: 'b.vmdk', data: Buffer.from('y') }]);
    // WHEN
    const err = await listTar(new BufferSource('cut.tar', archive.subarray(0, 1024 + 300))).catch((e: unknown) => e);
    // THEN
    expect(err).toBeInstanceOf(ImageReadError);
    expect((err as ImageReadError).code).toBe('TRUNCATED');
  });

  test('an archive without end-of-archive blocks ends at the end of the file', async () => {
    // GIVEN
    const archive = tarBuffer([{ name: 'a.ovf', data: Buffer.from('x') }], { endBlocks: 0 });
    // WHEN
    const { members, findings } = await listTar(new BufferSource('noend.tar', archive));
    // THEN
    expect(members.map((m) => m.name)).toEqual(['a.ovf']);
    expect(findings).toEqual([]);
  });

  test('a lone zero block followed by more headers is reported', async () => {
    // GIVEN
    const first = tarBuffer([{ name: 'a.ovf', data: Buffer.from('x') }], { endBlocks: 1 });
    const archive = Buffer.concat([first, tarBuffer([{ name: 'hidden.vmdk', data: Buffer.from('y') }])]);
    // WHEN
    const { members, findings } = await listTar(new BufferSource('lone.tar', archive));
    // THEN
    expect(members.map((m) => m.name)).toEqual(['a.ovf']);
    expect(findings.map((f) => f.code)).toEqual(['OVA_MALFORMED']);
  });

  test('the member count is bounded', async () => {
    // GIVEN
    const entries: TarEntry[] = Array.from({ length: 30 }, (_, i) => ({ name: `f${i}`, data: Buffer.from('x') }));
    const archive = tarBuffer(entries);
    // WHEN
    const err = await listTar(new BufferSource('many.tar', archive), { maxMembers: 20 }).catch((e: unknown) => e);
    const ok = await listTar(new BufferSource('many.tar', archive), { maxMembers: 30 });
    // THEN
    expect(err).toBeInstanceOf(ImageFormatError);
    expect(ok.members).toHaveLength(30);
  });

  test('an extended header larger than the bound is refused without reading it', async () => {
    // GIVEN: a pax header that claims 512 MiB
    const header = tarHeader({ name: 'PaxHeaders/huge', size: 512 * 1024 * 1024, typeflag: 'x' });
    const src = new BufferSource('huge.tar', Buffer.concat([header, Buffer.alloc(4096)]));
    // WHEN
    const err = await listTar(src).catch((e: unknown) => e);
    // THEN
    expect(err).toBeInstanceOf(ImageFormatError);
    expect(src.stats.bytesRead).toBe(512);
  });

  test('a negative or absurd base-256 size is refused', async () => {
    // GIVEN
    const negative = tarHeader({ name: 'neg', size: 0 });
    negative[124] = 0xff;
    fixChecksum(negative);
    const absurd = tarHeader({ name: 'absurd', size: 0 });
    absurd[124] = 0x80;
    absurd.fill(0xff, 125, 136);
    fixChecksum(absurd);
    // WHEN
    const errs = await Promise.all(
      [negative, absurd].map((h) => listTar(new BufferSource('n.tar', Buffer.concat([h, Buffer.alloc(1024)]))).catch((e: unknown) => e)),
    );
    // THEN
    for (const err of errs) expect(err).toBeInstanceOf(ImageFormatError);
  });

  test('pax records are parsed by their length, values may hold spaces, = and newlines', () => {
    // GIVEN
    const payload = Buffer.from(paxRecord('path', 'a b=c\nd') + paxRecord('size', '42'));
    // WHEN
    const records = parsePaxRecords(payload, 'test');
    // THEN
    expect(records).toEqual([['path', 'a b=c\nd'], ['size', '42']]);
    expect(() => parsePaxRecords(Buffer.from('99 path=x\n'), 'test')).toThrow(ImageFormatError);
  });
});

function fixChecksum(h: Buffer): void {
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'latin1');
}
