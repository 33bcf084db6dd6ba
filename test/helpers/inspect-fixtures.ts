/**
 * Inputs for the inspection tests, made by real tools and cached like the other fixtures: disks
 * with a bootable layout (sfdisk, mke2fs), their conversions (qemu-img), compressed copies (gzip,
 * xz, zstd, bzip2), OVA packages (the `tar` command over a written OVF descriptor), and files that
 * are not disks (zip).
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { cached, rawDisk, run, tempDir, tool } from './fixtures';

const MiB = 1024 * 1024;

/** A 48 MiB MBR disk that boots with BIOS: an active ext4 root and a swap-typed partition. */
export function bootMbrDisk(): string {
  return rawDisk({
    sizeMiB: 48,
    table: 'mbr',
    partitions: [
      { sizeMiB: 40, type: '83', bootable: true, fs: 'ext4' },
      { type: '82' },
    ],
  });
}

/**
 * A 64 MiB MBR disk whose second partition is 44 MiB of pseudo-random bytes, so that its
 * conversions and compressed copies stay larger than the prefix inspection decompresses.
 */
export function bulkyMbrDisk(): string {
  return rawDisk({
    sizeMiB: 64,
    table: 'mbr',
    partitions: [
      { sizeMiB: 16, type: '83', bootable: true, fs: 'ext4' },
      { type: '83', randomSeed: 5 },
    ],
  });
}

/** A 64 MiB GPT disk: an ESP (FAT32) and an ext4 root, with no filler data. */
export function bootGptDisk(): string {
  return rawDisk({
    sizeMiB: 64,
    table: 'gpt',
    partitions: [
      { sizeMiB: 20, type: 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B', fs: 'vfat' },
      { type: '0FC63DAF-8483-4772-8E79-3D69D8477DE4', fs: 'ext4' },
    ],
  });
}

/** The compressors and their file extensions. */
export const COMPRESSORS = {
  gzip: { ext: 'gz', args: ['-c', '-n', '-1'] },
  xz: { ext: 'xz', args: ['-c', '-0', '-T1'] },
  zstd: { ext: 'zst', args: ['-c', '-q', '-1'] },
  bzip2: { ext: 'bz2', args: ['-c', '-1'] },
} as const;

/** `input` compressed with `kind` (the real command), cached as `<input name>.<ext>`. */
export function compressed(input: string, kind: keyof typeof COMPRESSORS): string {
  const { ext, args } = COMPRESSORS[kind];
  return cached(`inspect-${path.basename(input)}.${ext}`, (file) => {
    const fd = fs.openSync(file, 'w');
    try {
      execFileSync(tool(kind), [...args, input], { stdio: ['ignore', fd, 'pipe'] });
    } finally {
      fs.closeSync(fd);
    }
  });
}

/** A copy of `input` under another name (for extension checks), cached. */
export function renamed(input: string, name: string): string {
  return cached(`inspect-${name}`, (file) => fs.copyFileSync(input, file));
}

/** The first `bytes` of `input`, as a file cut short would be. */
export function truncatedCopy(input: string, bytes: number, name: string): string {
  return cached(`inspect-${name}`, (file) => {
    const fd = fs.openSync(input, 'r');
    const buf = Buffer.alloc(bytes);
    fs.readSync(fd, buf, 0, bytes, 0);
    fs.closeSync(fd);
    fs.writeFileSync(file, buf);
  });
}

/** A copy of `input` with `patch` written at `offset`. */
export function patchedCopy(input: string, offset: number, patch: Buffer, name: string): string {
  return cached(`inspect-${name}`, (file) => {
    fs.copyFileSync(input, file);
    const fd = fs.openSync(file, 'r+');
    fs.writeSync(fd, patch, 0, patch.length, offset);
    fs.closeSync(fd);
  });
}

/** A disk of an OVA made by {@link ova}. */
export interface OvaDiskFile {
  /** The member name. */
  readonly name: string;
  /** The image file to put in. */
  readonly file: string;
  /** Its virtual size in bytes (for ovf:capacity). */
  readonly capacity: number;
}

/** An OVF descriptor for `disks`, VMware style. */
export function ovfText(disks: readonly OvaDiskFile[], options: { firmware?: 'efi' | 'bios'; osType?: string } = {}): string {
  const files = disks.map((d, i) => `    <File ovf:href="${d.name}" ovf:id="file${i + 1}" ovf:size="${fs.statSync(d.file).size}"/>`);
  const diskLines = disks.map(
    (d, i) =>
      `    <Disk ovf:capacity="${d.capacity}" ovf:diskId="vmdisk${i + 1}" ovf:fileRef="file${i + 1}" ` +
      'ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>',
  );
  const items = disks.map(
    (_d, i) => `      <Item>
        <rasd:AddressOnParent>${i}</rasd:AddressOnParent>
        <rasd:ElementName>Hard disk ${i + 1}</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk${i + 1}</rasd:HostResource>
        <rasd:InstanceID>${10 + i}</rasd:InstanceID>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>`,
  );
  const firmware = options.firmware ? `\n      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="${options.firmware}"/>` : '';
  return `<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData">
  <References>
${files.join('\n')}
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
${diskLines.join('\n')}
  </DiskSection>
  <VirtualSystem ovf:id="vm">
    <Info>A virtual machine</Info>
    <OperatingSystemSection ovf:id="94" vmw:osType="${options.osType ?? 'ubuntu64Guest'}">
      <Info>The kind of installed guest operating system</Info>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <Item>
        <rasd:ElementName>Network adapter 1</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
${items.join('\n')}${firmware}
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
`;
}

/** An OVA made by the `tar` command: the descriptor first, then the disks. Cached as `name`. */
export function ova(name: string, disks: readonly OvaDiskFile[], options: { firmware?: 'efi' | 'bios' } = {}): string {
  return cached(`inspect-${name}`, (file) => {
    const { dir, cleanup } = tempDir('vmie-ova-');
    try {
      const base = name.replace(/\.ova$/, '');
      fs.writeFileSync(path.join(dir, `${base}.ovf`), ovfText(disks, options));
      for (const d of disks) fs.symlinkSync(path.resolve(d.file), path.join(dir, d.name));
      run('tar', ['--format=ustar', '--dereference', '-cf', path.resolve(file), '-C', dir, `${base}.ovf`, ...disks.map((d) => d.name)]);
    } finally {
      cleanup();
    }
  });
}

/** A zip archive (the `zip` command) holding `input`. */
export function zipOf(input: string): string {
  return cached(`inspect-${path.basename(input)}.zip`, (file) => {
    run('zip', ['-q', '-j', `${file}.zip`, input]);
    fs.renameSync(`${file}.zip`, file);
  });
}

/**
 * One file of a multi-file VMDK that `qemu-img create` writes (`subformat` monolithicFlat or
 * twoGbMaxExtentSparse): `part` is `descriptor` or the suffix of an extent (`-flat`, `-s001`).
 * The disk is made in a temporary directory and only that file is kept.
 */
export function vmdkPart(subformat: string, part: string): string {
  return cached(`inspect-${subformat}${part === 'descriptor' ? '' : part}.vmdk`, (file) => {
    const { dir, cleanup } = tempDir('vmie-vmdk-');
    try {
      run('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', `subformat=${subformat}`, path.join(dir, 'disk.vmdk'), '64M']);
      fs.copyFileSync(path.join(dir, part === 'descriptor' ? 'disk.vmdk' : `disk${part}.vmdk`), file);
    } finally {
      cleanup();
    }
  });
}

/** An empty file. */
export function emptyFile(): string {
  return cached('inspect-empty.img', (file) => fs.writeFileSync(file, ''));
}

export { MiB };
