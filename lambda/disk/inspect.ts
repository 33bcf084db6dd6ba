/**
 * Inspection: what an input is, whether VM Import/Export will take it as it is, would take it
 * after conversion, or cannot take it at all, and why, from the headers alone.
 *
 * The orchestrator detects the input, opens each disk with its reader, probes what is inside
 * (partition table, filesystems, boot layout), applies the import rules of the finding catalogue,
 * and turns the typed errors of the readers into findings. Everything goes through a block cache,
 * so that detection, the readers' headers and the probes share requests; what the whole inspection
 * cost is in the report (`bytesRead`, `requests`, `durationMs`).
 */
import * as zlib from 'node:zlib';
import { formatBytes, u64le } from './bytes';
import { decompressedPrefix, type Compression } from './compressed';
import { detect, expectedFormatFromName, MIN_DISK_SIZE, stripCompressionExtension, type Detected } from './detect';
import { ImageFormatError, ImageReadError, UnsupportedImageError } from './errors';
import { finding, RULES, SEVERITY_ORDER, type Finding, type FindingCode } from './findings';
import { readBlocks, type DiskImage, type Extent, type FormatId } from './image';
import { openOva, type OvaDisk } from './ova';
import type { OvfDescriptor } from './ovf';
import { FS_WINDOW, probeDisk, type DiskLayout, type PartitionInfo } from './probe';
import { openQcow2 } from './qcow2';
import { openRaw } from './raw';
import { CachedSource, checkRange, type ByteSource, type ReadStats } from './source';
import { openVdi } from './vdi';
import { openVhd } from './vhd';
import { openVhdx } from './vhdx';
import { openVmdk, parseVmdkDescriptor } from './vmdk';

/** The `Format` of an ImportImage disk container. */
export type ImportFormat = 'OVA' | 'VMDK' | 'VHD' | 'VHDX' | 'RAW';

/** What inspection found about one disk. */
export interface DiskReport {
  /** Position of the disk (0-based); disk 0 is the boot disk. */
  readonly index: number;
  /** The file name of the disk (for a compressed disk, without the compression extension). */
  readonly name: string;
  /** The container format of the disk, or `unknown` when it could not be told. */
  readonly format: FormatId | 'unknown';
  /** The variant (`streamOptimized`, `fixed`, `dynamic`, `v3`, `raw`, …), when known. */
  readonly subformat?: string;
  /** The compression the disk is wrapped in, when it is. */
  readonly compression?: Compression | string;
  /** Size of the virtual disk in bytes, when known. */
  readonly virtualSize?: number;
  /** The Format to import this disk with: as it is when importable, `VMDK` after conversion. */
  readonly importFormat?: ImportFormat;
  /** The partition table, when the disk could be probed. */
  readonly partitionTable?: 'mbr' | 'gpt' | 'none';
  /** How the disk boots (boot disk only). */
  readonly bootMode?: 'legacy-bios' | 'uefi';
  /** A filesystem written over the whole disk, without a partition table. */
  readonly wholeDiskFilesystem?: string;
  /** The partition that most likely holds the root filesystem (boot disk only). */
  readonly root?: { readonly partition: number; readonly filesystem: string };
  /** The EFI System Partition (boot disk only). */
  readonly esp?: { readonly partition: number; readonly hasFallbackLoader?: boolean };
  readonly partitions: readonly PartitionInfo[];
  /** Format-specific facts from the reader (cluster size, creator, …). */
  readonly details: Readonly<Record<string, string | number | boolean>>;
  /** What was found about this disk, worst first. */
  readonly findings: readonly Finding[];
}

/** What the OVF descriptor of an OVA says about the virtual machine. */
export interface OvfSummary {
  readonly firmware?: 'bios' | 'efi';
  readonly osId?: number;
  readonly osType?: string;
  readonly osDescription?: string;
  readonly cpus?: number;
  readonly memoryMiB?: number;
  readonly networkAdapters: number;
}

/** The result of an inspection; also the JSON output of `vmie inspect --json`. */
export interface InspectionReport {
  /** The name inspected (file name or S3 key). */
  readonly name: string;
  /** Size of the input in bytes (for several disk objects, their sum). */
  readonly size: number;
  /**
   * What the input is: a disk format (`vmdk`, `vhd`, `vhdx`, `raw`, `qcow2`, `vdi`), `ova`, a
   * compression (`gzip`, `xz`, `zstd`, `bzip2`), `not-a-disk` or `unknown`.
   */
  readonly format: string;
  /** For a disk, its variant; for an OVA or a compressed input, the format of the (boot) disk inside. */
  readonly subformat?: string;
  /** Size of the boot disk in bytes, when known. */
  readonly virtualSize?: number;
  /** VM Import takes the input as it is: no finding is an error, none needs conversion. */
  readonly importable: boolean;
  /** No finding is an error, and at least one is fixed by conversion. */
  readonly needsConversion: boolean;
  /**
   * The Format to send to ImportImage: the input's own when importable; `VMDK` when it needs
   * conversion (the conversion writes stream-optimized VMDK); absent when it cannot be imported.
   */
  readonly importFormat?: ImportFormat;
  /** How the boot disk boots, when it could be told. */
  readonly bootMode?: 'legacy-bios' | 'uefi';
  /** The OVF descriptor's view of the VM (OVA only). */
  readonly ovf?: OvfSummary;
  /** The disks, boot disk first. */
  readonly disks: readonly DiskReport[];
  /** The boot disk's partitions. */
  readonly partitions: readonly PartitionInfo[];
  /** Every finding, worst first, without duplicates. */
  readonly findings: readonly Finding[];
  /** Bytes read from the input. */
  readonly bytesRead: number;
  /** Requests made to the input (ranged GETs, file reads). */
  readonly requests: number;
  /** Wall-clock time of the inspection in milliseconds. */
  readonly durationMs: number;
}

/** Options of {@link inspect}. */
export interface InspectOptions {
  /** The name to check the extension of and to show. @default - the source's name */
  readonly name?: string;
}

/** ImportImage takes at most this many volumes. */
export const MAX_DISKS = 21;
/** Disks of this size and more cannot be imported. */
export const DISK_SIZE_LIMIT = 16 * 1024 ** 4;
/** Disks of this size and more need a volume manifest. */
export const MANIFEST_SIZE_LIMIT = 8 * 1024 ** 4;
/** The block cache over the input: 256 KiB blocks hold a format's headers in one request. */
export const CACHE_BLOCK = 256 * 1024;
const CACHE_BLOCKS = 48;
/** How much of a compressed input is decompressed to look inside. */
export const PREFIX_BYTES = 16 * 1024 * 1024;

const OPENERS: Record<FormatId, (source: ByteSource) => Promise<DiskImage>> = {
  raw: openRaw,
  vhd: openVhd,
  vhdx: openVhdx,
  vmdk: openVmdk,
  qcow2: openQcow2,
  vdi: openVdi,
};

/**
 * Opens a single disk image of any format the engine reads, recognised by its content, for
 * reading its virtual bytes (conversion). OVA packages, compressed images and non-disks are
 * refused with an {@link UnsupportedImageError} that says what to do instead.
 */
export async function openDiskImage(source: ByteSource): Promise<DiskImage> {
  const found = await detect(source);
  switch (found.kind) {
    case 'disk':
      return OPENERS[found.format](source);
    case 'vmdk-descriptor':
      return openVmdk(source); // throws the precise reason (descriptor only, split extents, ...)
    case 'ova':
      throw new UnsupportedImageError(
        `${source.name} is an OVA package, not a single disk: VM Import takes OVA as it is; to convert its disks, extract them (tar -xf) and convert each.`,
        'UNSUPPORTED_IMAGE',
      );
    case 'compressed':
      throw new UnsupportedImageError(
        `${source.name} is ${found.compression}-compressed: decompress it first, then convert the image inside.`,
        'COMPRESSED_WRAPPER',
      );
    default:
      throw new UnsupportedImageError(`${source.name} is not a disk image (${found.what}).`, 'NOT_A_DISK');
  }
}

const IMPORT_FORMATS: Partial<Record<string, ImportFormat>> = {
  vmdk: 'VMDK',
  vhd: 'VHD',
  vhdx: 'VHDX',
  raw: 'RAW',
  ova: 'OVA',
};

/**
 * Inspects one input: a disk image, an OVA, or a compressed image. Reads only headers, tables
 * and the few sectors the probes need, through a block cache over `source`. The caller keeps
 * ownership of `source` (it is not closed).
 *
 * Findings come from the readers, the probes and the rules here; typed errors of the readers
 * (truncation, damaged structures, unsupported variants) become findings too. Any other
 * exception is a bug, or a failure to read the input at all (I/O, access), and propagates.
 */
export async function inspect(source: ByteSource, options: InspectOptions = {}): Promise<InspectionReport> {
  const clock = startClock([source]);
  const name = options.name ?? source.name;
  const cached = new CachedSource(source, { blockSize: CACHE_BLOCK, maxBlocks: CACHE_BLOCKS });
  const detected = await detect(cached);
  const found = await inspectInput(cached, name, detected, { index: 0, multi: false });
  return finish(name, source.size, found, clock);
}

/**
 * Inspects the disk objects of one VM, boot disk first (the disk containers of one ImportImage
 * call). Each is inspected as {@link inspect} does; an OVA among several objects is an error, as
 * an OVA must be imported alone.
 */
export async function inspectDisks(sources: readonly ByteSource[], options: InspectOptions = {}): Promise<InspectionReport> {
  if (sources.length === 1) return inspect(sources[0], options);
  const clock = startClock(sources);
  const multi = sources.length > 1;
  const disks: DiskReport[] = [];
  const findings: Finding[] = [];
  for (const [index, source] of sources.entries()) {
    const cached = new CachedSource(source, { blockSize: CACHE_BLOCK, maxBlocks: CACHE_BLOCKS });
    const detected = await detect(cached);
    if (detected.kind === 'ova') {
      const f = finding('OVA_IN_DISK_LIST', `Disk object ${index + 1} (${source.name}) is an OVA package, listed among ${sources.length} disk objects.`, index);
      findings.push(f);
      disks.push(emptyDisk(index, source.name, 'unknown', [f]));
      continue;
    }
    const found = await inspectInput(cached, source.name, detected, { index, multi });
    disks.push(found.disks[0] ?? emptyDisk(index, source.name, 'unknown', found.findings));
    findings.push(...found.findings);
  }
  const boot = disks[0];
  const name = options.name ?? sources[0]?.name ?? '';
  const size = sources.reduce((n, s) => n + s.size, 0);
  return finish(name, size, { format: boot?.format ?? 'unknown', subformat: boot?.subformat, disks, findings }, clock);
}

/** What inspecting one input gives, before the report is assembled. */
interface Found {
  readonly format: string;
  readonly subformat?: string;
  readonly disks: DiskReport[];
  /** Every finding, including those of the disks. */
  readonly findings: Finding[];
  readonly ovf?: OvfDescriptor;
}

/** Where a disk sits among the disks of the input. */
interface Slot {
  /** Index of the disk (0-based); disk 0 is the boot disk. */
  readonly index: number;
  /** Whether the input has several disks (findings then carry the disk index). */
  readonly multi: boolean;
  /** The firmware the VM declares (OVF). */
  readonly firmware?: 'bios' | 'efi';
}

async function inspectInput(source: ByteSource, name: string, detected: Detected, slot: Slot): Promise<Found> {
  const d = slot.multi ? slot.index : undefined;
  switch (detected.kind) {
    case 'disk':
    case 'vmdk-descriptor': {
      const format: FormatId = detected.kind === 'disk' ? detected.format : 'vmdk';
      const disk = await inspectDisk(source, name, format, slot);
      const ext = extensionFinding(name, format, d);
      const findings = sortFindings([...(ext ? [ext] : []), ...disk.findings]);
      return { format, subformat: disk.subformat, disks: [{ ...disk, findings }], findings };
    }
    case 'compressed': {
      const outer = extensionFinding(name, detected.compression, d);
      const disk = await inspectCompressed(source, name, detected.compression, slot, true);
      const findings = sortFindings([...(outer ? [outer] : []), ...disk.findings]);
      return {
        format: detected.compression,
        subformat: disk.format === 'unknown' ? undefined : disk.format,
        disks: [{ ...disk, findings }],
        findings,
      };
    }
    case 'ova':
      return inspectOva(source, name, slot);
    case 'not-a-disk': {
      const f =
        source.size < MIN_DISK_SIZE
          ? finding('EMPTY_IMAGE', source.size === 0 ? `${name} is empty (0 bytes).` : `${name} is only ${source.size} bytes, too small to hold a disk.`, d)
          : finding('NOT_A_DISK', `${name} is ${detected.what}, not a disk image.`, d);
      return { format: 'not-a-disk', disks: [], findings: [f] };
    }
  }
}

/** Opens one disk with the reader of `format`, probes it, and applies the per-disk rules. */
async function inspectDisk(source: ByteSource, name: string, format: FormatId, slot: Slot): Promise<DiskReport> {
  const d = slot.multi ? slot.index : undefined;
  let image: DiskImage;
  try {
    image = await OPENERS[format](source);
  } catch (e) {
    const f = findingFromError(e, d);
    if (!f) throw e;
    const info = e instanceof UnsupportedImageError ? e.info : {};
    return withConversionRules(
      {
        ...emptyDisk(slot.index, name, format, [f]),
        ...(info.subformat !== undefined ? { subformat: info.subformat } : {}),
        ...(info.virtualSize !== undefined ? { virtualSize: info.virtualSize } : {}),
      },
      d,
    );
  }
  return probeImage(image, name, slot, {});
}

/** What is not known about an image read from a decompressed prefix. */
interface PartialView {
  /** Whether the virtual size is known. */
  readonly sizeKnown?: boolean;
  /** How many reads so far went past the prefix (what they returned is not the image). */
  readonly beyondReads?: () => number;
}

/** Probes an open image and assembles its report. */
async function probeImage(image: DiskImage, name: string, slot: Slot, partial: PartialView): Promise<DiskReport> {
  const d = slot.multi ? slot.index : undefined;
  const findings: Finding[] = image.findings.map((f) => (d === undefined ? f : { ...f, disk: d }));
  const tracked = partial.beyondReads ? new TrackedImage(image, partial.beyondReads) : undefined;
  let layout: DiskLayout | undefined;
  try {
    const options = { firmware: slot.firmware, isBootDisk: slot.index === 0, ...(d !== undefined ? { diskIndex: d } : {}) };
    layout = await probeDisk(tracked?.image ?? image, options);
  } catch (e) {
    const f = findingFromError(e, d);
    if (!f) throw e;
    if (!tracked?.unknown.length) findings.push(f);
  }
  if (layout && tracked?.unknown.length) layout = tracked.forget(layout);
  if (layout) findings.push(...keepKnown(layout.findings, partial));
  const sizeKnown = partial.sizeKnown !== false;
  if (sizeKnown) findings.push(...sizeFindings(image.virtualSize, d));
  const disk: DiskReport = {
    index: slot.index,
    name,
    format: image.format,
    subformat: image.subformat,
    ...(sizeKnown ? { virtualSize: image.virtualSize } : {}),
    ...(layout ? layoutFields(layout) : { partitions: [] }),
    details: image.details,
    findings,
  };
  return withConversionRules(disk, d);
}

function layoutFields(layout: DiskLayout) {
  const esp = layout.esp;
  return {
    partitionTable: layout.table,
    ...(layout.bootMode ? { bootMode: layout.bootMode } : {}),
    ...(layout.wholeDiskFilesystem ? { wholeDiskFilesystem: layout.wholeDiskFilesystem } : {}),
    ...(layout.root ? { root: { ...layout.root } } : {}),
    ...(esp
      ? { esp: { partition: esp.partition, ...(esp.hasFallbackLoader !== undefined ? { hasFallbackLoader: esp.hasFallbackLoader } : {}) } }
      : {}),
    partitions: layout.partitions,
  };
}

/**
 * An image over a partial view whose reads are made one at a time, so that each read that went
 * past the prefix is known by its virtual range; what the probes concluded from such ranges is
 * then forgotten.
 */
class TrackedImage {
  /** Virtual ranges whose bytes were not in the prefix. */
  public readonly unknown: Extent[] = [];
  public readonly image: DiskImage;
  private queue: Promise<unknown> = Promise.resolve();

  public constructor(inner: DiskImage, beyondReads: () => number) {
    const read = (offset: number, length: number): Promise<Buffer> => {
      const run = this.queue.then(async () => {
        const before = beyondReads();
        const buf = await inner.read(offset, length);
        if (beyondReads() > before) this.unknown.push({ offset, length });
        return buf;
      });
      this.queue = run.catch(() => undefined);
      return run;
    };
    this.image = {
      format: inner.format,
      subformat: inner.subformat,
      virtualSize: inner.virtualSize,
      findings: inner.findings,
      details: inner.details,
      read,
      extents: () => inner.extents(),
    };
  }

  /** `layout` without the filesystems, root and loader facts that rest on unknown bytes. */
  public forget(layout: DiskLayout): DiskLayout {
    const overlaps = (start: number, length: number) => this.unknown.some((u) => u.offset < start + length && start < u.offset + u.length);
    const partitions = layout.partitions.map((p) => {
      if (!overlaps(p.start, Math.min(p.size, FS_WINDOW))) return p;
      const { filesystem: _f, label: _l, uuid: _u, ...rest } = p;
      return rest;
    });
    const { root: _root, ...rest } = layout;
    const esp = layout.esp ? { partition: layout.esp.partition } : undefined;
    return { ...rest, partitions, ...(esp ? { esp } : {}) };
  }
}

/** Findings that hold whatever the size of the disk and the bytes after the prefix. */
const HEAD_ONLY: ReadonlySet<string> = new Set(['NO_PARTITION_TABLE', 'NO_BOOTABLE_PARTITION', 'GPT_BOOT_WITHOUT_UEFI', 'UEFI_WITHOUT_ESP', 'GPT_CHECKSUM_MISMATCH']);
/** Findings that depend on the size of the disk. */
const SIZE_DEPENDENT: ReadonlySet<string> = new Set(['MBR_BOOT_TOO_LARGE', 'PARTITION_TABLE_DAMAGED', 'GPT_BACKUP_INVALID']);

/** Drops the probe findings a partial view cannot support. */
function keepKnown(findings: readonly Finding[], partial: PartialView): Finding[] {
  if ((partial.beyondReads?.() ?? 0) > 0) return findings.filter((f) => HEAD_ONLY.has(f.code));
  if (partial.sizeKnown === false) return findings.filter((f) => !SIZE_DEPENDENT.has(f.code));
  return [...findings];
}

/** DISK_TOO_LARGE and DISK_NEEDS_MANIFEST. */
function sizeFindings(virtualSize: number, d?: number): Finding[] {
  const tib = (n: number) => `${(n / 1024 ** 4).toFixed(2).replace(/\.?0+$/, '')} TiB`;
  if (virtualSize >= DISK_SIZE_LIMIT) {
    return [finding('DISK_TOO_LARGE', `The disk is ${tib(virtualSize)}; disk images must be smaller than 16 TiB.`, d)];
  }
  if (virtualSize >= MANIFEST_SIZE_LIMIT) {
    return [finding('DISK_NEEDS_MANIFEST', `The disk is ${tib(virtualSize)}, 8 TiB or more.`, d)];
  }
  return [];
}

/**
 * FORMAT_NEEDS_CONVERSION for qcow2, VDI and VMDK that is not stream-optimized, and
 * DIFFERENCING_DISK for a differencing VHD/VHDX/VDI, where the reader did not say so itself.
 */
function withConversionRules(disk: DiskReport, d?: number): DiskReport {
  const findings = [...disk.findings];
  const has = (...codes: string[]) => findings.some((f) => codes.includes(f.code));
  const unreadable = has('UNSUPPORTED_IMAGE', 'VMDK_DESCRIPTOR_ONLY', 'VMDK_SPLIT_EXTENTS', 'VMDK_SESPARSE', 'VMDK_COWD', 'NOT_A_DISK', 'EMPTY_IMAGE');
  if (!unreadable && !has('FORMAT_NEEDS_CONVERSION')) {
    if (disk.format === 'qcow2' || disk.format === 'vdi') {
      findings.push(finding('FORMAT_NEEDS_CONVERSION', `The disk is ${disk.format === 'vdi' ? 'a VirtualBox VDI' : 'a qcow2'} image, which VM Import does not accept.`, d));
    } else if (disk.format === 'vmdk' && disk.subformat !== undefined && disk.subformat !== 'streamOptimized' && !has('VMDK_NOT_STREAM_OPTIMIZED')) {
      findings.push(finding('FORMAT_NEEDS_CONVERSION', `The VMDK is ${disk.subformat}, not streamOptimized.`, d));
    }
  }
  if (disk.subformat === 'differencing' && !has('DIFFERENCING_DISK')) {
    findings.push(finding('DIFFERENCING_DISK', `The ${disk.format.toUpperCase()} is a differencing disk.`, d));
  }
  const sorted = sortFindings(findings);
  const importFormat = importFormatOf(disk.format, sorted);
  return { ...disk, findings: sorted, ...(importFormat ? { importFormat } : {}) };
}

function importFormatOf(format: string, findings: readonly Finding[]): ImportFormat | undefined {
  if (findings.some((f) => f.severity === 'error')) return undefined;
  if (findings.some((f) => f.severity === 'convertible')) return 'VMDK';
  return IMPORT_FORMATS[format];
}

// ---------------------------------------------------------------------------------------------
// OVA

async function inspectOva(source: ByteSource, name: string, slot: Slot): Promise<Found> {
  const d = slot.multi ? slot.index : undefined;
  const ext = extensionFinding(name, 'ova', d);
  const findings: Finding[] = ext ? [ext] : [];
  let pkg;
  try {
    pkg = await openOva(source);
  } catch (e) {
    const f = findingFromError(e, d, 'OVA_MALFORMED');
    if (!f) throw e;
    findings.push(f);
    return { format: 'ova', disks: [], findings };
  }
  const multi = pkg.disks.length > 1;
  findings.push(...pkg.findings.map((f) => (multi ? f : withoutDisk(f))));
  if (pkg.disks.length === 0 && !findings.some((f) => f.severity === 'error')) {
    findings.push(finding('OVA_MALFORMED', 'The OVA declares no disk with data to import.', d));
  }
  const firmware = pkg.ovf?.firmware;
  const disks: DiskReport[] = [];
  for (const od of pkg.disks) {
    const diskSlot: Slot = { index: od.index, multi, firmware };
    const own = multi ? pkg.findings.filter((f) => f.disk === od.index) : pkg.findings.filter((f) => f.disk !== undefined);
    const disk = await inspectOvaDisk(od, diskSlot);
    disks.push({ ...disk, findings: sortFindings([...own.map((f) => (multi ? f : withoutDisk(f))), ...disk.findings]) });
    findings.push(...disk.findings);
  }
  if (disks.length > MAX_DISKS) {
    findings.push(finding('TOO_MANY_DISKS', `The OVA has ${disks.length} disks; ImportImage takes at most ${MAX_DISKS}.`));
  }
  return { format: 'ova', subformat: disks[0]?.format === 'unknown' ? undefined : disks[0]?.format, disks, findings, ...(pkg.ovf ? { ovf: pkg.ovf } : {}) };
}

async function inspectOvaDisk(od: OvaDisk, slot: Slot): Promise<DiskReport> {
  const d = slot.multi ? slot.index : undefined;
  const formatFromUri = /vmdk/i.test(od.formatUri ?? '') ? 'vmdk' : 'unknown';
  const declared = {
    ...emptyDisk(slot.index, od.fileName, formatFromUri, []),
    ...(formatFromUri === 'vmdk' && /#(\w+)$/.test(od.formatUri ?? '') ? { subformat: /#(\w+)$/.exec(od.formatUri!)![1] } : {}),
    ...(od.capacityBytes !== undefined ? { virtualSize: od.capacityBytes } : {}),
  };
  if (!od.source) return declared; // chunked or missing: the package findings say why
  const source = od.source;
  if (od.compression) {
    const kind = od.compression === 'gzip' ? 'gzip' : undefined;
    if (!kind) return declared;
    return inspectCompressed(source, od.fileName, kind, slot, false);
  }
  const detected = await detect(source);
  if (detected.kind === 'disk' || detected.kind === 'vmdk-descriptor') {
    const format: FormatId = detected.kind === 'disk' ? detected.format : 'vmdk';
    const disk = await inspectDisk(source, od.fileName, format, slot);
    const ext = extensionFinding(od.fileName, format, d);
    return ext ? { ...disk, findings: sortFindings([ext, ...disk.findings]) } : disk;
  }
  if (detected.kind === 'compressed') {
    // Compressed without saying so in the descriptor.
    const f = finding('OVA_COMPRESSED_DISK', `Disk ${JSON.stringify(od.fileName)} is ${detected.compression}-compressed, though the descriptor does not say so.`, d);
    const disk = await inspectCompressed(source, od.fileName, detected.compression, slot, false);
    return { ...disk, findings: sortFindings([f, ...disk.findings]) };
  }
  const what = detected.kind === 'ova' ? 'a tar archive' : detected.what;
  const f = finding('NOT_A_DISK', `Disk ${JSON.stringify(od.fileName)} in the OVA is ${what}, not a disk image.`, d);
  return { ...declared, findings: [f] };
}

// ---------------------------------------------------------------------------------------------
// Compressed inputs

/**
 * Decompresses the first {@link PREFIX_BYTES} of a compressed disk and inspects what is inside as
 * far as the prefix allows. When the whole stream fits, the disk is inspected in full; otherwise
 * the formats whose headers are at the start (raw, stream-optimized VMDK, qcow2, …) are probed on
 * the prefix, and COMPRESSED_NOT_INSPECTABLE says what could not be checked.
 */
async function inspectCompressed(source: ByteSource, name: string, kind: Compression, slot: Slot, wrapper: boolean): Promise<DiskReport> {
  const d = slot.multi ? slot.index : undefined;
  const innerName = stripCompressionExtension(name) ?? name;
  const wrap = (disk: DiskReport): DiskReport => {
    const extra: Finding[] = [];
    if (wrapper) {
      extra.push(finding('COMPRESSED_WRAPPER', `${name} is ${kind}-compressed${disk.format !== 'unknown' ? ` ${disk.format}` : ''}.`, d));
    }
    return { ...disk, compression: kind, findings: sortFindings([...extra, ...disk.findings]) };
  };
  let prefix;
  try {
    prefix = await decompressedPrefix(source, kind, PREFIX_BYTES);
  } catch (e) {
    const f = findingFromError(e, d);
    if (!f) throw e;
    return wrap(emptyDisk(slot.index, innerName, 'unknown', [f]));
  }
  if (prefix.complete) {
    // The whole image fits: inspect it like any other (but never a compressed stream inside a
    // compressed stream, which could nest without end).
    const inner = prefix.source;
    const detected = await detect(inner);
    if (detected.kind === 'disk' || detected.kind === 'vmdk-descriptor' || detected.kind === 'not-a-disk') {
      const found = await inspectInput(inner, innerName, detected, slot);
      const disk = found.disks[0] ?? emptyDisk(slot.index, innerName, 'unknown', []);
      return wrap({ ...disk, findings: found.findings });
    }
    const what = detected.kind === 'ova' ? 'an OVA package' : `a ${detected.compression} stream inside the ${kind} stream`;
    const f = finding('COMPRESSED_NOT_INSPECTABLE', `${name} holds ${what}, which was not inspected further.`, d);
    return wrap(emptyDisk(slot.index, innerName, 'unknown', [f]));
  }

  const padded = new PaddedSource(prefix.source, PADDED_SIZE);
  const detected = await detect(padded, { tailIsEnd: false });
  if (detected.kind === 'not-a-disk') {
    const f = finding('NOT_A_DISK', `${name} holds ${detected.what}, not a disk image.`, d);
    return wrap(emptyDisk(slot.index, innerName, 'unknown', [f]));
  }
  if (detected.kind !== 'disk' && detected.kind !== 'vmdk-descriptor') {
    const what = detected.kind === 'ova' ? 'an OVA package' : `a ${detected.compression} stream inside the ${kind} stream`;
    const f = finding('COMPRESSED_NOT_INSPECTABLE', `${name} holds ${what}, which cannot be inspected without decompressing it.`, d);
    return wrap(emptyDisk(slot.index, innerName, 'unknown', [f]));
  }
  const format: FormatId = detected.kind === 'disk' ? detected.format : 'vmdk';
  const ext = extensionFinding(innerName, format, d);
  const unchecked = (what: string[]) =>
    finding(
      'COMPRESSED_NOT_INSPECTABLE',
      `Only the first ${formatBytes(PREFIX_BYTES)} of ${name} were decompressed to look inside; ${[...what, 'the integrity of the rest of the stream'].join(', ')} could not be checked.`,
      d,
    );

  const opened = await openPrefix(format, prefix.source, padded);
  let disk: DiskReport;
  if ('error' in opened) {
    const f = opened.beyond ? undefined : findingFromError(opened.error, d);
    if (!f && !opened.beyond) throw opened.error;
    const info = opened.error instanceof UnsupportedImageError ? opened.error.info : {};
    disk = {
      ...emptyDisk(slot.index, innerName, format, f ? [f] : []),
      ...(info.subformat !== undefined ? { subformat: info.subformat } : {}),
      ...(info.virtualSize !== undefined ? { virtualSize: info.virtualSize } : {}),
    };
    if (opened.beyond) disk = { ...disk, findings: [unchecked([`the ${format} structures past that point, and so the disk layout`])] };
  } else if (opened.beyondReads() > 0) {
    // The reader needed structures past the prefix (a footer, far tables): what it made of the
    // zeros there says nothing about the image.
    disk = { ...emptyDisk(slot.index, innerName, format, []), subformat: opened.image.subformat };
    disk = { ...disk, findings: [unchecked([`the ${format} structures past that point, and so the disk layout`])] };
  } else {
    disk = await probeImage(opened.image, innerName, slot, opened);
    const what = [
      ...(opened.sizeKnown ? [] : ['the virtual size']),
      ...(opened.beyondReads() > 0 ? ['the partitions and filesystems past that point'] : []),
      ...(format === 'raw' ? ['the end of the disk (where a fixed VHD would keep its footer)'] : []),
    ];
    disk = { ...disk, findings: [...disk.findings, unchecked(what)] };
  }
  disk = withConversionRules(disk, d);
  return wrap(ext ? { ...disk, findings: [ext, ...disk.findings] } : disk);
}

/** A disk image over a decompressed prefix, with what is not known of it. */
interface PrefixImage {
  readonly image: DiskImage;
  readonly sizeKnown: boolean;
  /** How many reads so far went past the prefix. */
  readonly beyondReads: () => number;
}

/**
 * Opens the image whose first bytes are `prefix`: raw and stream-optimized VMDK by the means
 * here, the other formats with their own readers over the padded prefix.
 */
async function openPrefix(format: FormatId, prefix: ByteSource, padded: PaddedSource): Promise<PrefixImage | { error: unknown; beyond: boolean }> {
  try {
    if (format === 'raw') return await rawPrefixImage(prefix, padded);
    if (format === 'vmdk') {
      const stream = await StreamVmdkPrefix.open(prefix);
      if (stream) return { image: stream.image(), sizeKnown: true, beyondReads: () => stream.beyondReads };
    }
    const image = await OPENERS[format](padded);
    return { image, sizeKnown: true, beyondReads: () => padded.beyondReads };
  } catch (e) {
    return { error: e, beyond: padded.beyondReads > 0 };
  }
}

/** The size a decompressed prefix pretends to have, so that readers find their tables inside it. */
const PADDED_SIZE = 2 ** 50;

/**
 * A decompressed prefix seen as the start of a much longer image: reads past the prefix give
 * zeros and are noted, so that what was concluded from them can be set aside.
 */
class PaddedSource implements ByteSource {
  public readonly name: string;
  /** How many reads went past the prefix. */
  public beyondReads = 0;

  public constructor(private readonly prefix: ByteSource, public readonly size: number) {
    this.name = prefix.name;
  }

  public get stats(): ReadStats {
    return this.prefix.stats;
  }

  public async read(offset: number, length: number): Promise<Buffer> {
    checkRange(offset, length);
    const end = Math.min(this.size, offset + length);
    if (offset >= end) return Buffer.alloc(0);
    if (end > this.prefix.size) this.beyondReads++;
    const out = Buffer.alloc(end - offset);
    if (offset < this.prefix.size) (await this.prefix.read(offset, Math.min(end, this.prefix.size) - offset)).copy(out);
    return out;
  }

  public async close(): Promise<void> {}
}

/**
 * A raw disk whose first bytes are `prefix`. Its size is known when a GPT header gives the sector
 * of its backup (the last sector of the disk). Otherwise it is taken as the end of the furthest
 * MBR partition or of the prefix, whichever is further, and is not reported.
 */
async function rawPrefixImage(prefix: ByteSource, padded: PaddedSource): Promise<PrefixImage> {
  const head = await prefix.read(0, 1024);
  let size = prefix.size;
  let sizeKnown = false;
  if (head.length >= 1024 && head.toString('latin1', 512, 520) === 'EFI PART' && head.readBigUInt64LE(512 + 24) === 1n) {
    const backup = head.readBigUInt64LE(512 + 32);
    if (backup > 1n && backup < BigInt(Math.floor(Number.MAX_SAFE_INTEGER / 512))) {
      size = (Number(backup) + 1) * 512;
      sizeKnown = true;
    }
  } else if (head.length >= 512 && head[510] === 0x55 && head[511] === 0xaa) {
    for (let i = 0; i < 4; i++) {
      const e = 446 + 16 * i;
      const end = (head.readUInt32LE(e + 8) + head.readUInt32LE(e + 12)) * 512;
      if (head[e + 4] !== 0) size = Math.max(size, end);
    }
  }
  const image: DiskImage = {
    format: 'raw',
    subformat: 'raw',
    virtualSize: size,
    findings: [],
    details: {},
    read: (offset, length) => padded.read(offset, Math.max(0, Math.min(length, size - offset))),
    async *extents(): AsyncIterable<Extent> {
      if (size > 0) yield { offset: 0, length: size };
    },
  };
  return { image, sizeKnown, beyondReads: () => padded.beyondReads };
}

const SECTOR = 512;
const VMDK_FLAG_MARKERS = 1 << 17;
/** The largest grain a stream-optimized VMDK may have, in sectors (1 MiB). */
const VMDK_MAX_GRAIN = 2048;
/** Inflated grains kept at once. */
const VMDK_GRAIN_CACHE = 8;

/**
 * The start of a stream-optimized VMDK, read without its footer: the header and descriptor give
 * the capacity and the createType, and the grain records in the prefix are found by walking the
 * stream from the first record. A grain not met in the walk reads as zeros; when the walk did not
 * reach the end of the stream and the grain lies after the last one met, that read is noted as
 * going past the prefix.
 */
class StreamVmdkPrefix {
  /** The stream VMDK at the start of `prefix`, or undefined when it is not one with markers. */
  public static async open(prefix: ByteSource): Promise<StreamVmdkPrefix | undefined> {
    const buf = await prefix.read(0, prefix.size);
    if (buf.length < SECTOR || buf.toString('latin1', 0, 4) !== 'KDMV') return undefined;
    const flags = buf.readUInt32LE(8);
    const compressAlgorithm = buf.readUInt16LE(77);
    if (!(flags & VMDK_FLAG_MARKERS) || compressAlgorithm !== 1) return undefined;
    const name = prefix.name;
    const capacity = u64le(buf, 12, 'VMDK capacity');
    const grainSize = u64le(buf, 20, 'VMDK grain size');
    const descriptorOffset = u64le(buf, 28, 'VMDK descriptor offset');
    const descriptorSize = u64le(buf, 36, 'VMDK descriptor size');
    const overHead = u64le(buf, 64, 'VMDK overhead');
    if (grainSize < 1 || grainSize > VMDK_MAX_GRAIN || (grainSize & (grainSize - 1)) !== 0) {
      throw new ImageFormatError(`${name}: the VMDK grain size of ${grainSize} sectors is not a power of two up to ${VMDK_MAX_GRAIN}`);
    }
    if (capacity > Math.floor(Number.MAX_SAFE_INTEGER / SECTOR)) {
      throw new ImageFormatError(`${name}: the VMDK capacity of ${capacity} sectors is beyond any disk`);
    }
    let createType = 'streamOptimized';
    let hasParent = false;
    if (descriptorOffset > 0 && descriptorSize > 0) {
      const at = descriptorOffset * SECTOR;
      const end = at + descriptorSize * SECTOR;
      if (descriptorSize > 2048 || end > buf.length) {
        throw new ImageFormatError(`${name}: the embedded VMDK descriptor (sector ${descriptorOffset}, ${descriptorSize} sectors) lies outside the first bytes`);
      }
      const text = buf.subarray(at, end);
      const nul = text.indexOf(0);
      const parsed = parseVmdkDescriptor(text.toString('utf8', 0, nul >= 0 ? nul : text.length));
      createType = parsed.createType;
      hasParent = parsed.hasParent;
    }
    if (overHead < 1 || overHead * SECTOR > buf.length) {
      throw new ImageFormatError(`${name}: the VMDK overhead of ${overHead} sectors is outside the first bytes`);
    }
    const found = new StreamVmdkPrefix(name, buf, capacity * SECTOR, grainSize, createType, hasParent);
    found.walk(overHead * SECTOR);
    return found;
  }

  /** How many grain reads needed a grain the walk could not rule out. */
  public beyondReads = 0;
  private readonly grainBytes: number;
  private readonly records = new Map<number, { offset: number; size: number }>();
  private lastGrain = -1;
  private ordered = true;
  private ended = false;
  private readonly inflated = new Map<number, Buffer>();

  private constructor(
    private readonly name: string,
    private readonly buf: Buffer,
    private readonly virtualSize: number,
    private readonly grainSize: number,
    private readonly createType: string,
    private readonly hasParent: boolean,
  ) {
    this.grainBytes = grainSize * SECTOR;
  }

  /** The image as far as the prefix shows it. */
  public image(): DiskImage {
    const findings = this.hasParent ? [finding('DIFFERENCING_DISK', 'The VMDK is a delta disk on a parent disk.')] : [];
    return {
      format: 'vmdk',
      subformat: this.createType,
      virtualSize: this.virtualSize,
      findings,
      details: { grainSize: this.grainBytes, compression: 'deflate' },
      read: (offset, length) =>
        readBlocks(this.virtualSize, this.grainBytes, offset, length, async (g, within, n) => this.grain(g)?.subarray(within, within + n)),
      extents: () => this.extents(),
    };
  }

  private async *extents(): AsyncIterable<Extent> {
    // Coarse but never finer than the truth: the grains met, then everything the walk did not see.
    const grains = [...this.records.keys()].sort((a, b) => a - b);
    for (const g of grains) yield { offset: g * this.grainBytes, length: Math.min(this.grainBytes, this.virtualSize - g * this.grainBytes) };
    if (!this.ended) {
      const from = (this.lastGrain + 1) * this.grainBytes;
      if (from < this.virtualSize) yield { offset: from, length: this.virtualSize - from };
    }
  }

  /** Walks the grain and marker records from `pos` to the end of the stream or of the prefix. */
  private walk(pos: number): void {
    const buf = this.buf;
    const limit = Math.ceil(this.virtualSize / this.grainBytes);
    while (pos + 16 <= buf.length) {
      const lba = u64le(buf, pos, 'VMDK grain LBA');
      const size = buf.readUInt32LE(pos + 8);
      if (size > 0) {
        if (size > this.grainBytes + 4096 || lba % this.grainSize !== 0 || lba / this.grainSize >= limit) {
          throw new ImageFormatError(`${this.name}: the grain record at offset ${pos} (LBA ${lba}, ${size} bytes) is not valid`, 'CORRUPT_GRAIN');
        }
        if (pos + 12 + size > buf.length) return;
        const g = lba / this.grainSize;
        if (g <= this.lastGrain) this.ordered = false;
        this.lastGrain = Math.max(this.lastGrain, g);
        this.records.set(g, { offset: pos + 12, size });
        pos += Math.ceil((12 + size) / SECTOR) * SECTOR;
        continue;
      }
      const type = buf.readUInt32LE(pos + 12);
      if (type === 0) {
        this.ended = true;
        return;
      }
      if (type > 3 || lba > 2 ** 32) {
        throw new ImageFormatError(`${this.name}: the marker at offset ${pos} (type ${type}, ${lba} sectors) is not valid`, 'CORRUPT_GRAIN');
      }
      pos += SECTOR + lba * SECTOR;
    }
  }

  private grain(g: number): Buffer | undefined {
    const hit = this.inflated.get(g);
    if (hit) return hit;
    const rec = this.records.get(g);
    if (!rec) {
      if (!this.ended && (!this.ordered || g > this.lastGrain)) this.beyondReads++;
      return undefined;
    }
    let data: Buffer;
    try {
      data = zlib.inflateSync(this.buf.subarray(rec.offset, rec.offset + rec.size), { maxOutputLength: this.grainBytes });
    } catch (e) {
      throw new ImageFormatError(`${this.name}: grain ${g} does not inflate: ${(e as Error).message}`, 'CORRUPT_GRAIN');
    }
    const out = Buffer.alloc(this.grainBytes);
    data.copy(out);
    this.inflated.set(g, out);
    if (this.inflated.size > VMDK_GRAIN_CACHE) this.inflated.delete(this.inflated.keys().next().value as number);
    return out;
  }
}

// ---------------------------------------------------------------------------------------------
// Findings

function isCode(code: string): code is FindingCode {
  return Object.prototype.hasOwnProperty.call(RULES, code);
}

/**
 * The finding for a typed error of a reader or probe, or undefined when the error is not about
 * the image (I/O and access failures, bugs), which the caller lets propagate.
 */
function findingFromError(e: unknown, disk?: number, malformed: FindingCode = 'MALFORMED_IMAGE'): Finding | undefined {
  const detail = (err: Error) => (/[.!?]$/.test(err.message) ? err.message : `${err.message}.`);
  if (e instanceof UnsupportedImageError) {
    return finding(isCode(e.code) ? e.code : 'UNSUPPORTED_IMAGE', detail(e), disk);
  }
  if (e instanceof ImageFormatError) {
    let code: FindingCode = malformed;
    if (isCode(e.code)) code = e.code;
    else if (/CHECKSUM/i.test(e.code)) code = 'CHECKSUM_MISMATCH';
    else if (/UNSUPPORTED/i.test(e.code)) code = 'UNSUPPORTED_IMAGE';
    return finding(code, detail(e), disk);
  }
  if (e instanceof ImageReadError && isCode(e.code)) {
    return finding(e.code, detail(e), disk);
  }
  return undefined;
}

/** EXTENSION_MISMATCH when the name promises another format than the content. */
function extensionFinding(name: string, actual: string, disk?: number): Finding | undefined {
  const expected = expectedFormatFromName(name);
  if (!expected || expected === actual) return undefined;
  return finding('EXTENSION_MISMATCH', `${name} is named like ${article(expected)} file but holds ${article(actual)} image.`, disk);
}

function article(format: string): string {
  const label = format === 'ova' || format === 'ovf' || format === 'raw' ? format.toUpperCase() : format === 'qcow2' ? 'qcow2' : format.toUpperCase();
  return `${/^[AEFHILMNORSX]/.test(label) && label !== 'qcow2' ? 'an' : 'a'} ${label}`;
}

function withoutDisk(f: Finding): Finding {
  if (f.disk === undefined) return f;
  const { disk: _disk, ...rest } = f;
  return rest;
}

/** Worst first; among equals, by disk, then in the order found. */
function sortFindings(findings: readonly Finding[]): Finding[] {
  const rank = (f: Finding) => SEVERITY_ORDER.indexOf(f.severity);
  return findings
    .map((f, i) => ({ f, i }))
    .sort((a, b) => rank(a.f) - rank(b.f) || (a.f.disk ?? -1) - (b.f.disk ?? -1) || a.i - b.i)
    .map(({ f }) => f);
}

function dedupe(findings: readonly Finding[]): Finding[] {
  const seen = new Set<string>();
  return findings.filter((f) => {
    const key = `${f.code}\u0000${f.disk ?? ''}\u0000${f.message}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

function emptyDisk(index: number, name: string, format: FormatId | 'unknown', findings: Finding[]): DiskReport {
  return { index, name, format, partitions: [], details: {}, findings };
}

// ---------------------------------------------------------------------------------------------
// The report

interface Clock {
  readonly started: number;
  readonly sources: ReadonlyArray<{ stats: ReadStats; before: ReadStats }>;
}

function startClock(sources: readonly ByteSource[]): Clock {
  const unique = [...new Set(sources.map((s) => s.stats))];
  return { started: performance.now(), sources: unique.map((stats) => ({ stats, before: { ...stats } })) };
}

function finish(name: string, size: number, found: Found, clock: Clock): InspectionReport {
  const multi = found.disks.length > 1;
  let findings = found.findings;
  if (!multi) findings = findings.map(withoutDisk);
  if (found.format !== 'ova' && found.disks.length > MAX_DISKS) {
    findings = [...findings, finding('TOO_MANY_DISKS', `There are ${found.disks.length} disks; ImportImage takes at most ${MAX_DISKS}.`)];
  }
  findings = dedupe(sortFindings(findings));
  const disks = found.disks.map((disk) => (multi ? disk : { ...disk, findings: dedupe(disk.findings.map(withoutDisk)) }));
  const error = findings.some((f) => f.severity === 'error');
  const convertible = findings.some((f) => f.severity === 'convertible');
  const importable = !error && !convertible;
  const needsConversion = !error && convertible;
  const boot = disks[0];
  let importFormat: ImportFormat | undefined;
  if (needsConversion) importFormat = 'VMDK';
  else if (importable) importFormat = found.format === 'ova' ? 'OVA' : boot?.importFormat;
  const ovf = found.ovf;
  let bytesRead = 0;
  let requests = 0;
  for (const s of clock.sources) {
    bytesRead += s.stats.bytesRead - s.before.bytesRead;
    requests += s.stats.requests - s.before.requests;
  }
  return {
    name,
    size,
    format: found.format,
    ...(found.subformat !== undefined ? { subformat: found.subformat } : {}),
    ...(boot?.virtualSize !== undefined ? { virtualSize: boot.virtualSize } : {}),
    importable,
    needsConversion,
    ...(importFormat ? { importFormat } : {}),
    ...(boot?.bootMode ? { bootMode: boot.bootMode } : {}),
    ...(ovf
      ? {
        ovf: {
          ...(ovf.firmware ? { firmware: ovf.firmware } : {}),
          ...(ovf.osId !== undefined ? { osId: ovf.osId } : {}),
          ...(ovf.osType ? { osType: ovf.osType } : {}),
          ...(ovf.osDescription ? { osDescription: ovf.osDescription } : {}),
          ...(ovf.cpus !== undefined ? { cpus: ovf.cpus } : {}),
          ...(ovf.memoryMiB !== undefined ? { memoryMiB: ovf.memoryMiB } : {}),
          networkAdapters: ovf.networkAdapters,
        },
      }
      : {}),
    disks,
    partitions: boot?.partitions ?? [],
    findings,
    bytesRead,
    requests,
    durationMs: Math.round(performance.now() - clock.started),
  };
}

