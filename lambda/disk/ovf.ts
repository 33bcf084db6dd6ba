/**
 * OVF descriptors (DMTF DSP0243): the files, disks, firmware, guest OS and hardware of a package.
 *
 * The XML is parsed with document type declarations refused outright, so neither entity expansion
 * (billion laughs) nor external entities can happen, and with a bounded input size and nesting
 * depth. Elements and attributes are matched by local name, because the prefixes (`ovf:`, `rasd:`,
 * `vssd:`, `vmw:`, …) vary between writers.
 */
// Bundled into the Lambda assets and the vmie command by esbuild; not a runtime dependency of the
// construct library.
// eslint-disable-next-line import/no-extraneous-dependencies
import { XMLParser, XMLValidator } from 'fast-xml-parser';
import { ImageFormatError } from './errors';

/** The largest descriptor parsed, in characters. */
export const MAX_OVF_SIZE = 4 * 1024 * 1024;

/** A file of the package (`References/File`). */
export interface OvfFile {
  /** `ovf:id`, which disks refer to. */
  id: string;
  /** `ovf:href`: the file name inside the package (or a URL). */
  href: string;
  /** `ovf:size` in bytes (of the stored, possibly compressed, file). */
  size?: number;
  /** `ovf:compression` (`gzip`; `identity` means none). */
  compression?: string;
  /** `ovf:chunkSize`: the file is split into members `href.000000000`, `href.000000001`, … */
  chunkSize?: number;
}

/** A virtual disk (`DiskSection/Disk`). */
export interface OvfDisk {
  /** `ovf:diskId`. */
  diskId: string;
  /** `ovf:fileRef`: the id of the file holding the disk; absent for a blank disk. */
  fileRef?: string;
  /** `ovf:capacity` times `ovf:capacityAllocationUnits`, in bytes, when it is a number. */
  capacityBytes?: number;
  /** `ovf:populatedSize` in bytes. */
  populatedSize?: number;
  /** `ovf:format`: a URI naming the disk format, e.g. `…/vmdk.html#streamOptimized`. */
  format?: string;
}

/** What a descriptor says about the package and the virtual machine. */
export interface OvfDescriptor {
  files: OvfFile[];
  disks: OvfDisk[];
  /** From `vmw:Config ovf:key="firmware"` (`efi` or `bios`). */
  firmware?: 'bios' | 'efi';
  /** `OperatingSystemSection/@ovf:id`: the CIM operating system code. */
  osId?: number;
  /** `OperatingSystemSection/@vmw:osType`, e.g. `ubuntu64Guest`. */
  osType?: string;
  /** `OperatingSystemSection/Description`. */
  osDescription?: string;
  /** Hardware items of resource type 10 (Ethernet adapter) in the first virtual system. */
  networkAdapters: number;
  /** Hardware items of resource type 17 (disk drive) in the first virtual system. */
  diskDrives: number;
  /** `VirtualSystem` elements, including those inside collections. */
  virtualSystems: number;
  /** Virtual CPUs (resource type 3). */
  cpus?: number;
  /** Memory (resource type 4), in MiB. */
  memoryMiB?: number;
}

type XmlNode = Record<string, unknown>;

const RESOURCE_CPU = 3;
const RESOURCE_MEMORY = 4;
const RESOURCE_ETHERNET = 10;
const RESOURCE_DISK = 17;

/**
 * Parses an OVF descriptor. Throws {@link ImageFormatError} when the text is too large, declares a
 * document type or entities, is not well-formed XML, or is not an OVF `Envelope`.
 */
export function parseOvf(xml: string): OvfDescriptor {
  if (xml.length > MAX_OVF_SIZE) {
    throw new ImageFormatError(`the OVF descriptor has ${xml.length} characters, more than the ${MAX_OVF_SIZE} allowed`, 'OVA_MALFORMED');
  }
  if (/<!DOCTYPE/i.test(xml) || /<!ENTITY/i.test(xml)) {
    throw new ImageFormatError('the OVF descriptor declares a document type or entities, which are refused (entity expansion and external entities)', 'OVA_MALFORMED');
  }
  const valid = XMLValidator.validate(xml);
  if (valid !== true) {
    throw new ImageFormatError(`the OVF descriptor is not well-formed XML: ${valid.err.msg} (line ${valid.err.line})`, 'OVA_MALFORMED');
  }
  let doc: XmlNode;
  try {
    const parser = new XMLParser({
      ignoreAttributes: false,
      attributeNamePrefix: '',
      attributesGroupName: '@',
      removeNSPrefix: true,
      parseTagValue: false,
      parseAttributeValue: false,
      trimValues: true,
      ignoreDeclaration: true,
      ignorePiTags: true,
      processEntities: true,
      htmlEntities: false,
      maxNestedTags: 64,
      isArray: (_name: string, _path: unknown, _leaf: boolean, isAttribute: boolean) => !isAttribute,
    });
    doc = parser.parse(xml) as XmlNode;
  } catch (e) {
    throw new ImageFormatError(`the OVF descriptor cannot be parsed: ${(e as Error).message}`, 'OVA_MALFORMED');
  }
  const envelope = children(doc, 'Envelope')[0];
  if (!envelope) {
    throw new ImageFormatError('the descriptor is not an OVF Envelope', 'OVA_MALFORMED');
  }

  const files: OvfFile[] = [];
  for (const ref of children(envelope, 'References')) {
    for (const f of children(ref, 'File')) {
      const id = attr(f, 'id');
      const href = attr(f, 'href');
      if (id === undefined || href === undefined) continue;
      const file: OvfFile = { id, href };
      const size = parseCount(attr(f, 'size'));
      if (size !== undefined) file.size = size;
      const compression = attr(f, 'compression');
      if (compression) file.compression = compression;
      const chunkSize = parseCount(attr(f, 'chunkSize'));
      if (chunkSize !== undefined) file.chunkSize = chunkSize;
      files.push(file);
    }
  }

  const disks: OvfDisk[] = [];
  for (const section of sections(envelope, 'DiskSection')) {
    for (const d of children(section, 'Disk')) {
      const disk: OvfDisk = { diskId: attr(d, 'diskId') ?? '' };
      const fileRef = attr(d, 'fileRef');
      if (fileRef) disk.fileRef = fileRef;
      const capacity = parseCount(attr(d, 'capacity'));
      const units = parseAllocationUnits(attr(d, 'capacityAllocationUnits') ?? 'byte');
      if (capacity !== undefined && units !== undefined && Number.isSafeInteger(capacity * units)) {
        disk.capacityBytes = capacity * units;
      }
      const populated = parseCount(attr(d, 'populatedSize'));
      if (populated !== undefined) disk.populatedSize = populated;
      const format = attr(d, 'format');
      if (format) disk.format = format;
      disks.push(disk);
    }
  }

  const systems = virtualSystemsOf(envelope);
  const out: OvfDescriptor = { files, disks, networkAdapters: 0, diskDrives: 0, virtualSystems: systems.length };
  const vs = systems[0];
  if (vs) {
    const os = children(vs, 'OperatingSystemSection')[0];
    if (os) {
      const osId = parseCount(attr(os, 'id'));
      if (osId !== undefined) out.osId = osId;
      const osType = attr(os, 'osType');
      if (osType) out.osType = osType;
      const description = text(children(os, 'Description')[0]);
      if (description) out.osDescription = description;
    }
    const hw = children(vs, 'VirtualHardwareSection')[0];
    if (hw) describeHardware(hw, out);
  }
  return out;
}

/**
 * Parses a programmatic unit of bytes (DSP0004), such as `byte`, `byte * 2^30`, `byte * 1024 * 1024`,
 * or the older names `KiloBytes`, `MegaBytes`, `GigaBytes`. Returns the multiplier, or undefined.
 */
export function parseAllocationUnits(units: string): number | undefined {
  const s = units.trim().toLowerCase();
  const named: Record<string, number> = {
    bytes: 1,
    kilobytes: 2 ** 10,
    megabytes: 2 ** 20,
    gigabytes: 2 ** 30,
    terabytes: 2 ** 40,
    kb: 2 ** 10,
    mb: 2 ** 20,
    gb: 2 ** 30,
    tb: 2 ** 40,
  };
  if (Object.prototype.hasOwnProperty.call(named, s)) return named[s];
  const terms = s.split('*').map((t) => t.trim());
  if (terms[0] !== 'byte' && terms[0] !== 'bytes') return undefined;
  let v = 1;
  for (const term of terms.slice(1)) {
    const m = /^(\d{1,10})(?:\s*\^\s*(\d{1,3}))?$/.exec(term);
    if (!m) return undefined;
    v *= Number(m[1]) ** (m[2] === undefined ? 1 : Number(m[2]));
    if (!Number.isSafeInteger(v) || v === 0) return undefined;
  }
  return v;
}

function describeHardware(hw: XmlNode, out: OvfDescriptor): void {
  const items = [...children(hw, 'Item'), ...children(hw, 'EthernetPortItem'), ...children(hw, 'StorageItem')];
  for (const item of items) {
    const type = parseCount(text(children(item, 'ResourceType')[0]));
    if (type === RESOURCE_ETHERNET) {
      out.networkAdapters++;
    } else if (type === RESOURCE_DISK) {
      out.diskDrives++;
    } else if (type === RESOURCE_CPU && out.cpus === undefined) {
      const n = parseCount(text(children(item, 'VirtualQuantity')[0]));
      if (n !== undefined) out.cpus = n;
    } else if (type === RESOURCE_MEMORY && out.memoryMiB === undefined) {
      const n = parseCount(text(children(item, 'VirtualQuantity')[0]));
      const unitText = text(children(item, 'AllocationUnits')[0]);
      const units = unitText === undefined ? 2 ** 20 : parseAllocationUnits(unitText);
      if (n !== undefined && units !== undefined && Number.isSafeInteger(n * units)) {
        out.memoryMiB = Math.round((n * units) / 2 ** 20);
      }
    }
  }
  for (const config of [...children(hw, 'Config'), ...children(hw, 'ExtraConfig')]) {
    if (attr(config, 'key')?.toLowerCase() !== 'firmware') continue;
    const value = attr(config, 'value')?.toLowerCase();
    if (value === 'efi' || value === 'bios') out.firmware = value;
  }
}

/** Every VirtualSystem, also inside (nested) VirtualSystemCollections, in document order. */
function virtualSystemsOf(node: XmlNode, depth = 0): XmlNode[] {
  const out = [...children(node, 'VirtualSystem')];
  if (depth < 16) {
    for (const collection of children(node, 'VirtualSystemCollection')) out.push(...virtualSystemsOf(collection, depth + 1));
  }
  return out;
}

/** The sections named `name` directly under the envelope (also as `Section xsi:type="…name…"`). */
function sections(envelope: XmlNode, name: string): XmlNode[] {
  const typed = children(envelope, 'Section').filter((s) => (attr(s, 'type') ?? '').replace(/^.*:/, '').replace(/_Type$/, '') === name);
  return [...children(envelope, name), ...typed];
}

function children(node: unknown, name: string): XmlNode[] {
  if (!isNode(node) || !Object.prototype.hasOwnProperty.call(node, name)) return [];
  const value = node[name];
  if (!Array.isArray(value)) return [];
  const out: XmlNode[] = [];
  for (const v of value) {
    // An element with only text and no attributes comes out as its text.
    if (isNode(v)) out.push(v);
    else if (typeof v === 'string') out.push({ '#text': v });
  }
  return out;
}

function attr(node: XmlNode, name: string): string | undefined {
  const attrs = node['@'];
  if (!isNode(attrs) || !Object.prototype.hasOwnProperty.call(attrs, name)) return undefined;
  const v = attrs[name];
  return typeof v === 'string' ? v : undefined;
}

function text(node: XmlNode | undefined): string | undefined {
  if (!node) return undefined;
  const v = node['#text'];
  return typeof v === 'string' ? v.trim() : undefined;
}

function isNode(v: unknown): v is XmlNode {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A non-negative decimal integer that is safe, or undefined. */
function parseCount(s: string | undefined): number | undefined {
  if (s === undefined) return undefined;
  const t = s.trim();
  if (!/^\d{1,16}$/.test(t)) return undefined;
  const n = Number(t);
  return Number.isSafeInteger(n) ? n : undefined;
}
