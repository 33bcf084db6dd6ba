/**
 * Tells what an input is by its content, never by its name: a disk image of one of the formats
 * the engine reads, an OVA package, a compressed stream, a VMDK descriptor without its data, or
 * something that is not a disk at all.
 *
 * Detection costs at most two requests: the first {@link HEAD_BYTES} bytes, and the last 512 bytes
 * (a fixed VHD has its only footer there). The tail is read with an ordinary ranged read, never a
 * suffix range. Callers that go on to open a reader should pass a {@link CachedSource}, so that
 * the reader's header reads are served from what detection fetched.
 */
import { detectCompression, type Compression } from './compressed';
import type { FormatId } from './image';
import { isTar } from './ova';
import type { ByteSource } from './source';

/** What an input is. */
export type Detected =
  | { readonly kind: 'disk'; readonly format: FormatId }
  | { readonly kind: 'ova' }
  | { readonly kind: 'compressed'; readonly compression: Compression }
  | { readonly kind: 'vmdk-descriptor' }
  | { readonly kind: 'not-a-disk'; readonly what: string };

/** How many bytes detection reads at the start (covers the ISO 9660 volume descriptor at 32769). */
export const HEAD_BYTES = 64 * 1024;

/** Inputs smaller than this cannot hold a disk: not even a partition table fits. */
export const MIN_DISK_SIZE = 512;

/** Options of {@link detect}. */
export interface DetectOptions {
  /**
   * Whether the last 512 bytes of the source are the end of the input. False for a decompressed
   * prefix, whose end is not the end of the image: the fixed-VHD footer check is skipped.
   * @default true
   */
  readonly tailIsEnd?: boolean;
}

const VHD_COOKIE = Buffer.from('conectix');
const VDI_SIGNATURE = 0xbeda107f;

/** Detects what `source` holds from its first bytes and its last 512 bytes. */
export async function detect(source: ByteSource, options: DetectOptions = {}): Promise<Detected> {
  const size = source.size;
  if (size === 0) return { kind: 'not-a-disk', what: 'an empty object (0 bytes)' };
  const head = await source.read(0, Math.min(size, HEAD_BYTES));
  let tail: Buffer = Buffer.alloc(0);
  if (options.tailIsEnd !== false && size >= 512) {
    tail = size <= head.length ? head.subarray(size - 512) : await source.read(size - 512, 512);
  }
  return classify(head, tail, size);
}

/** Classifies from bytes already read: `head` from offset 0, `tail` the last 512 bytes (or empty). */
export function classify(head: Buffer, tail: Buffer, size: number): Detected {
  const at = (offset: number, magic: string | Buffer): boolean => {
    const m = typeof magic === 'string' ? Buffer.from(magic, 'latin1') : magic;
    return head.length >= offset + m.length && head.subarray(offset, offset + m.length).equals(m);
  };

  // VMware: sparse extents (hosted and ESX COWD) and text descriptors.
  if (at(0, 'KDMV') || at(0, 'COWD')) return { kind: 'disk', format: 'vmdk' };
  if (isVmdkDescriptor(head)) return { kind: 'vmdk-descriptor' };
  // VHD: the footer copy at 0 (dynamic, differencing) or the only footer at the end (fixed). Old
  // Virtual PC images have a 511-byte footer, so the cookie may sit one byte later in the tail.
  if (at(0, VHD_COOKIE)) return { kind: 'disk', format: 'vhd' };
  if (tail.length === 512 && (tail.subarray(0, 8).equals(VHD_COOKIE) || tail.subarray(1, 9).equals(VHD_COOKIE))) {
    return { kind: 'disk', format: 'vhd' };
  }
  if (at(0, 'vhdxfile')) return { kind: 'disk', format: 'vhdx' };
  if (at(0, Buffer.from([0x51, 0x46, 0x49, 0xfb]))) return { kind: 'disk', format: 'qcow2' };
  if (head.length >= 68 && head.readUInt32LE(64) === VDI_SIGNATURE) return { kind: 'disk', format: 'vdi' };
  if (head.length >= 512 && isTar(head)) return { kind: 'ova' };
  const compression = detectCompression(head);
  if (compression) return { kind: 'compressed', compression };

  // Things that are certainly not disks.
  if (at(0, Buffer.from([0x50, 0x4b, 0x03, 0x04])) || at(0, Buffer.from([0x50, 0x4b, 0x05, 0x06]))) {
    return { kind: 'not-a-disk', what: 'a zip archive' };
  }
  if (at(0, Buffer.from([0x37, 0x7a, 0xbc, 0xaf, 0x27, 0x1c]))) return { kind: 'not-a-disk', what: 'a 7-Zip archive' };
  if (at(0, 'Rar!\x1a\x07')) return { kind: 'not-a-disk', what: 'a RAR archive' };
  if (at(32769, 'CD001')) return { kind: 'not-a-disk', what: 'an ISO 9660 (CD/DVD) image' };
  if (at(32769, 'BEA01')) return { kind: 'not-a-disk', what: 'a UDF (DVD) image' };
  if (tail.length === 512 && tail.subarray(0, 4).toString('latin1') === 'koly') {
    return { kind: 'not-a-disk', what: 'an Apple disk image (DMG)' };
  }
  if (at(0, '%PDF-')) return { kind: 'not-a-disk', what: 'a PDF document' };
  if (at(0, '\x7fELF')) return { kind: 'not-a-disk', what: 'an ELF executable' };
  if (looksLikeXml(head)) {
    return { kind: 'not-a-disk', what: 'an XML document (an OVF descriptor alone? upload the OVA, or the disk files)' };
  }
  if (size < MIN_DISK_SIZE) return { kind: 'not-a-disk', what: `a file of ${size} bytes, too small to hold a disk` };
  return { kind: 'disk', format: 'raw' };
}

/** Whether `head` is the text of a VMDK descriptor (a descriptor file without its extents). */
export function isVmdkDescriptor(head: Buffer): boolean {
  const sample = head.subarray(0, Math.min(head.length, 4096));
  let start = 0;
  if (sample.length >= 3 && sample[0] === 0xef && sample[1] === 0xbb && sample[2] === 0xbf) start = 3;
  // A descriptor is text: no NUL bytes before the first few lines end.
  const firstNul = sample.indexOf(0, start);
  const text = sample.subarray(start, firstNul < 0 ? sample.length : firstNul).toString('latin1');
  if (text.length < 16) return false;
  if (/^\s*#\s*Disk DescriptorFile/i.test(text)) return true;
  return /^\s*createType\s*=/im.test(text) && /^\s*(RW|RDONLY|NOACCESS)\s+\d+\s+[A-Z]+/m.test(text);
}

function looksLikeXml(head: Buffer): boolean {
  let start = 0;
  if (head.length >= 3 && head[0] === 0xef && head[1] === 0xbb && head[2] === 0xbf) start = 3;
  const text = head.subarray(start, start + 256).toString('latin1').trimStart();
  return text.startsWith('<?xml') || /^<([A-Za-z_][\w.-]*:)?Envelope[\s>]/.test(text);
}

const EXTENSIONS: Record<string, string> = {
  vmdk: 'vmdk',
  vhd: 'vhd',
  vhdx: 'vhdx',
  img: 'raw',
  raw: 'raw',
  qcow2: 'qcow2',
  qcow: 'qcow2',
  vdi: 'vdi',
  ova: 'ova',
  ovf: 'ovf',
  gz: 'gzip',
  xz: 'xz',
  zst: 'zstd',
  bz2: 'bzip2',
};

/** The compression extensions, which may wrap another extension (`disk.raw.gz`). */
const COMPRESSION_EXTENSIONS = new Set(['gz', 'xz', 'zst', 'bz2']);

/**
 * The format an object's name promises, from its extension: `vmdk`, `vhd`, `vhdx`, `raw` (`.img`,
 * `.raw`), `qcow2`, `vdi`, `ova`, `ovf`, or the compression (`gzip`, `xz`, `zstd`, `bzip2`) for a
 * compressed name such as `disk.raw.gz`. Undefined when the name has no extension the engine knows.
 * Directories in S3 keys and paths are ignored; the comparison is case-insensitive.
 */
export function expectedFormatFromName(name: string): string | undefined {
  const ext = extensionOf(name);
  return ext ? EXTENSIONS[ext] : undefined;
}

/**
 * The name without its compression extension (`disk.raw.gz` gives `disk.raw`), or undefined when
 * the name has no compression extension.
 */
export function stripCompressionExtension(name: string): string | undefined {
  const ext = extensionOf(name);
  if (!ext || !COMPRESSION_EXTENSIONS.has(ext)) return undefined;
  return name.slice(0, name.length - ext.length - 1);
}

function extensionOf(name: string): string | undefined {
  const base = name.slice(Math.max(name.lastIndexOf('/'), name.lastIndexOf('\\')) + 1);
  const dot = base.lastIndexOf('.');
  if (dot <= 0 || dot === base.length - 1) return undefined;
  return base.slice(dot + 1).toLowerCase();
}
