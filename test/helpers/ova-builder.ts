/**
 * A test-only builder of tar archives and OVA packages: ustar headers written field by field (with
 * the size in octal, in base-256, or in a pax `size=` record; long names with a ustar prefix, a GNU
 * `L` header or a pax `path=` record), OVF descriptors in the VMware style of DSP0243, and
 * manifests. Members can be left as holes in the archive file, so that a member of many GiB costs
 * no disk space.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { cached, qemuConvert, sampleMbrDisk } from './fixtures';

const BLOCK = 512;

/** One member of an archive to build. */
export interface TarEntry {
  readonly name: string;
  /** The member's bytes. */
  readonly data?: Buffer;
  /** Take the member's bytes from this file. */
  readonly file?: string;
  /** The member is this many zero bytes, left as a hole in the archive file (file output only). */
  readonly sparseSize?: number;
  /** The typeflag. @default '0' */
  readonly typeflag?: string;
  /** How the size is written. @default 'octal' */
  readonly sizeEncoding?: 'octal' | 'base256' | 'pax';
  /** How a name longer than 100 bytes is written. @default 'ustar' (prefix field) */
  readonly nameEncoding?: 'ustar' | 'gnu' | 'pax';
  /** Write a wrong checksum into the member's header. */
  readonly badChecksum?: boolean;
}

/** Options of {@link writeTar} and {@link tarBuffer}. */
export interface TarOptions {
  /** How many zero blocks end the archive. @default 2 */
  readonly endBlocks?: number;
}

/** The size of an entry's data. */
function entrySize(e: TarEntry): number {
  if (e.data) return e.data.length;
  if (e.file) return fs.statSync(e.file).size;
  return e.sparseSize ?? 0;
}

function octal(value: number, width: number): string {
  const digits = value.toString(8);
  if (digits.length > width - 1) throw new Error(`${value} does not fit ${width - 1} octal digits`);
  return digits.padStart(width - 1, '0') + '\0';
}

/** Writes a ustar header block with the given fields and a correct (or deliberately wrong) checksum. */
export function tarHeader(fields: {
  name: string;
  size: number;
  typeflag?: string;
  prefix?: string;
  sizeEncoding?: 'octal' | 'base256';
  badChecksum?: boolean;
}): Buffer {
  const h = Buffer.alloc(BLOCK);
  const name = Buffer.from(fields.name, 'utf8');
  if (name.length > 100) throw new Error(`name ${fields.name} is longer than 100 bytes`);
  name.copy(h, 0);
  h.write(octal(0o644, 8), 100, 'latin1');
  h.write(octal(0, 8), 108, 'latin1');
  h.write(octal(0, 8), 116, 'latin1');
  if (fields.sizeEncoding === 'base256') {
    h[124] = 0x80;
    let v = BigInt(fields.size);
    for (let i = 135; i > 124; i--) {
      h[i] = Number(v % 256n);
      v /= 256n;
    }
  } else {
    h.write(octal(fields.size, 12), 124, 'latin1');
  }
  h.write(octal(1_700_000_000, 12), 136, 'latin1');
  h.write(fields.typeflag ?? '0', 156, 'latin1');
  h.write('ustar\0', 257, 'latin1');
  h.write('00', 263, 'latin1');
  h.write('root', 265, 'latin1');
  h.write('root', 297, 'latin1');
  if (fields.prefix) h.write(fields.prefix, 345, 'utf8');
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  if (fields.badChecksum) sum += 1;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'latin1');
  return h;
}

/** A pax record `"<len> key=value\n"`, the length counting itself. */
export function paxRecord(key: string, value: string): string {
  const body = ` ${key}=${value}\n`;
  let len = Buffer.byteLength(body) + 1;
  while (String(len).length + Buffer.byteLength(body) !== len) len = String(len).length + Buffer.byteLength(body);
  return `${len}${body}`;
}

function pad(n: number): number {
  return Math.ceil(n / BLOCK) * BLOCK;
}

/** The header blocks (extended headers included) of one entry, and the size of its data. */
function headerBlocks(e: TarEntry): { blocks: Buffer[]; size: number } {
  const size = entrySize(e);
  const blocks: Buffer[] = [];
  const pax: string[] = [];
  let name = e.name;
  let prefix: string | undefined;
  if (Buffer.byteLength(name) > 100) {
    const enc = e.nameEncoding ?? 'ustar';
    if (enc === 'gnu') {
      const payload = Buffer.from(name + '\0', 'utf8');
      blocks.push(tarHeader({ name: '././@LongLink', size: payload.length, typeflag: 'L' }));
      blocks.push(Buffer.concat([payload, Buffer.alloc(pad(payload.length) - payload.length)]));
      name = name.slice(0, 100);
    } else if (enc === 'pax') {
      pax.push(paxRecord('path', name));
      name = name.slice(0, 100);
    } else {
      const cut = name.lastIndexOf('/', 155);
      if (cut < 0 || Buffer.byteLength(name.slice(cut + 1)) > 100) throw new Error(`cannot split ${name} into prefix and name`);
      prefix = name.slice(0, cut);
      name = name.slice(cut + 1);
    }
  }
  let headerSize = size;
  if (e.sizeEncoding === 'pax') {
    pax.push(paxRecord('size', String(size)));
    headerSize = size < 8 ** 11 ? size : 0;
  }
  if (pax.length) {
    const payload = Buffer.from(pax.join(''), 'utf8');
    blocks.push(tarHeader({ name: `PaxHeaders/${path.basename(e.name).slice(0, 80)}`, size: payload.length, typeflag: 'x' }));
    blocks.push(Buffer.concat([payload, Buffer.alloc(pad(payload.length) - payload.length)]));
  }
  blocks.push(
    tarHeader({
      name,
      prefix,
      size: headerSize,
      typeflag: e.typeflag,
      sizeEncoding: e.sizeEncoding === 'base256' ? 'base256' : 'octal',
      badChecksum: e.badChecksum,
    }),
  );
  return { blocks, size };
}

/** An archive in memory (no sparse members). */
export function tarBuffer(entries: readonly TarEntry[], options: TarOptions = {}): Buffer {
  const parts: Buffer[] = [];
  for (const e of entries) {
    const { blocks, size } = headerBlocks(e);
    parts.push(...blocks);
    const data = e.data ?? (e.file ? fs.readFileSync(e.file) : Buffer.alloc(size));
    parts.push(data, Buffer.alloc(pad(size) - size));
  }
  parts.push(Buffer.alloc(BLOCK * (options.endBlocks ?? 2)));
  return Buffer.concat(parts);
}

/** Writes an archive to `file`; members with `sparseSize` are left as holes. */
export function writeTar(file: string, entries: readonly TarEntry[], options: TarOptions = {}): void {
  const fd = fs.openSync(file, 'w');
  try {
    let pos = 0;
    for (const e of entries) {
      const { blocks, size } = headerBlocks(e);
      for (const b of blocks) {
        fs.writeSync(fd, b, 0, b.length, pos);
        pos += b.length;
      }
      if (e.data) {
        fs.writeSync(fd, e.data, 0, e.data.length, pos);
      } else if (e.file) {
        const data = fs.readFileSync(e.file);
        fs.writeSync(fd, data, 0, data.length, pos);
      }
      pos += pad(size);
    }
    const end = Buffer.alloc(BLOCK * (options.endBlocks ?? 2));
    if (end.length) fs.writeSync(fd, end, 0, end.length, pos);
    pos += end.length;
    fs.ftruncateSync(fd, pos);
  } finally {
    fs.closeSync(fd);
  }
}

/** A disk of an OVF descriptor to write. */
export interface OvfDiskSpec {
  /** The file name in the package. */
  readonly href: string;
  /** `ovf:capacity`, in `units`. */
  readonly capacity: number | string;
  /** `ovf:capacityAllocationUnits`; omitted when undefined (plain bytes). */
  readonly units?: string;
  /** `ovf:size` of the file. */
  readonly size?: number;
  readonly populatedSize?: number;
  readonly compression?: string;
  readonly chunkSize?: number;
  /** @default the VMware stream-optimized VMDK URI */
  readonly format?: string;
}

/** A virtual machine to describe. */
export interface OvfSpec {
  readonly name?: string;
  readonly disks: readonly OvfDiskSpec[];
  readonly firmware?: 'efi' | 'bios';
  readonly osId?: number;
  readonly osType?: string;
  readonly osDescription?: string;
  readonly nics?: number;
  readonly cpus?: number;
  readonly memoryMiB?: number;
  /** Extra XML put inside the Envelope before References (for hostile-input tests). */
  readonly prolog?: string;
}

export const STREAM_VMDK_URI = 'http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized';

function xmlEscape(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/"/g, '&quot;');
}

/** An OVF 1.x descriptor in the style VMware tools write. */
export function ovfDescriptor(spec: OvfSpec): string {
  const files = spec.disks
    .map((d, i) => {
      const attrs = [`ovf:href="${xmlEscape(d.href)}"`, `ovf:id="file${i + 1}"`];
      if (d.size !== undefined) attrs.push(`ovf:size="${d.size}"`);
      if (d.compression) attrs.push(`ovf:compression="${d.compression}"`);
      if (d.chunkSize !== undefined) attrs.push(`ovf:chunkSize="${d.chunkSize}"`);
      return `    <File ${attrs.join(' ')}/>`;
    })
    .join('\n');
  const disks = spec.disks
    .map((d, i) => {
      const attrs = [`ovf:capacity="${d.capacity}"`];
      if (d.units !== undefined) attrs.push(`ovf:capacityAllocationUnits="${d.units}"`);
      attrs.push(`ovf:diskId="vmdisk${i + 1}"`, `ovf:fileRef="file${i + 1}"`, `ovf:format="${d.format ?? STREAM_VMDK_URI}"`);
      if (d.populatedSize !== undefined) attrs.push(`ovf:populatedSize="${d.populatedSize}"`);
      return `    <Disk ${attrs.join(' ')}/>`;
    })
    .join('\n');
  let instance = 1;
  const item = (body: string): string => `      <Item>\n${body}\n        <rasd:InstanceID>${instance++}</rasd:InstanceID>\n      </Item>`;
  const items: string[] = [];
  items.push(item(`        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of Virtual CPUs</rasd:Description>
        <rasd:ElementName>${spec.cpus ?? 2} virtual CPU(s)</rasd:ElementName>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>${spec.cpus ?? 2}</rasd:VirtualQuantity>`));
  items.push(item(`        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>${spec.memoryMiB ?? 2048}MB of memory</rasd:ElementName>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>${spec.memoryMiB ?? 2048}</rasd:VirtualQuantity>`));
  const controller = instance;
  items.push(item(`        <rasd:Address>0</rasd:Address>
        <rasd:Description>SCSI Controller</rasd:Description>
        <rasd:ElementName>SCSI Controller 0</rasd:ElementName>
        <rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>`));
  spec.disks.forEach((_d, i) => {
    items.push(item(`        <rasd:AddressOnParent>${i}</rasd:AddressOnParent>
        <rasd:ElementName>Hard Disk ${i + 1}</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk${i + 1}</rasd:HostResource>
        <rasd:Parent>${controller}</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>`));
  });
  for (let n = 0; n < (spec.nics ?? 1); n++) {
    items.push(item(`        <rasd:AddressOnParent>${7 + n}</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>VM Network</rasd:Connection>
        <rasd:ElementName>Network adapter ${n + 1}</rasd:ElementName>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>`));
  }
  const firmware = spec.firmware ? `\n      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="${spec.firmware}"/>` : '';
  return `<?xml version="1.0" encoding="UTF-8"?>
<!--Generated for tests-->
<Envelope vmw:buildId="build-123" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">${spec.prolog ?? ''}
  <References>
${files}
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
${disks}
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="VM Network">
      <Description>The VM Network network</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="${xmlEscape(spec.name ?? 'test-vm')}">
    <Info>A virtual machine</Info>
    <Name>${xmlEscape(spec.name ?? 'test-vm')}</Name>
    <OperatingSystemSection ovf:id="${spec.osId ?? 94}" vmw:osType="${spec.osType ?? 'ubuntu64Guest'}">
      <Info>The kind of installed guest operating system</Info>
      <Description>${xmlEscape(spec.osDescription ?? 'Ubuntu Linux (64-bit)')}</Description>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>${xmlEscape(spec.name ?? 'test-vm')}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-19</vssd:VirtualSystemType>
      </System>
${items.join('\n')}${firmware}
      <vmw:Config ovf:required="false" vmw:key="tools.syncTimeWithHost" vmw:value="false"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
`;
}

/** Manifest lines for the given members (`SHA256(name)= hex`), leaving out the names in `omit`. */
export function manifestText(
  entries: ReadonlyArray<{ name: string; data?: Buffer; file?: string }>,
  algorithm: 'SHA1' | 'SHA256' = 'SHA256',
  omit: readonly string[] = [],
): string {
  return entries
    .filter((e) => !omit.includes(e.name))
    .map((e) => {
      const hash = createHash(algorithm === 'SHA1' ? 'sha1' : 'sha256');
      hash.update(e.data ?? fs.readFileSync(e.file!));
      return `${algorithm}(${e.name})= ${hash.digest('hex')}\n`;
    })
    .join('');
}

/** The stream-optimized VMDK of {@link sampleMbrDisk}, made by qemu-img. */
export function streamVmdk(): string {
  return qemuConvert(sampleMbrDisk(), 'vmdk', ['subformat=streamOptimized']);
}

/** Everything needed to put a disk file into a package. */
export interface PackageDisk {
  /** The member name. */
  readonly name: string;
  /** Its bytes, from a file. */
  readonly file: string;
  /** Extra descriptor attributes of the disk. */
  readonly spec?: Partial<OvfDiskSpec>;
}

/** Options of {@link ovaEntries}. */
export interface OvaRecipe {
  readonly base: string;
  readonly disks: readonly PackageDisk[];
  readonly vm?: Omit<OvfSpec, 'disks'>;
  /** Manifest algorithm; no manifest when undefined. */
  readonly manifest?: 'SHA1' | 'SHA256';
  /** Member names the manifest leaves out. */
  readonly manifestOmits?: readonly string[];
}

/**
 * The members of a well-formed package: descriptor, manifest, disks. Capacities are the virtual
 * sizes qemu-img reports, in GiB when they are whole GiB and in bytes otherwise.
 */
export function ovaEntries(recipe: OvaRecipe, capacityOf: (file: string) => number): TarEntry[] {
  const descriptor = Buffer.from(
    ovfDescriptor({
      name: recipe.base,
      ...recipe.vm,
      disks: recipe.disks.map((d) => ({
        href: d.name,
        capacity: capacityOf(d.file),
        size: fs.statSync(d.file).size,
        ...d.spec,
      })),
    }),
  );
  const entries: TarEntry[] = [{ name: `${recipe.base}.ovf`, data: descriptor }];
  const diskEntries = recipe.disks.map((d) => ({ name: d.name, file: d.file }));
  if (recipe.manifest) {
    const mf = manifestText([{ name: `${recipe.base}.ovf`, data: descriptor }, ...diskEntries], recipe.manifest, recipe.manifestOmits);
    entries.push({ name: `${recipe.base}.mf`, data: Buffer.from(mf) });
  }
  entries.push(...diskEntries);
  return entries;
}

/** An archive built once into the fixture cache. */
export function cachedTar(name: string, entries: () => readonly TarEntry[], options: TarOptions = {}): string {
  return cached(name, (file) => writeTar(file, entries(), options));
}
