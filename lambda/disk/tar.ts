/**
 * Tar archives (the container of an OVA), read header by header without touching member data.
 *
 * Understands POSIX ustar (name prefix), pax extended headers (`x` per member, `g` global; the
 * `path` and `size` records), GNU long names (`L`) and long link names (`K`), and sizes written in
 * octal text or in base-256 (high bit of the first byte set). Each header is verified against its
 * checksum. Every header costs one read; a pax or long-name payload costs one more.
 */
import { ImageFormatError, ImageReadError } from './errors';
import { finding, type Finding } from './findings';
import type { ByteSource } from './source';

/** One entry of a tar archive. */
export interface TarMember {
  /** The member's path as stored (after pax `path` and GNU long names). */
  name: string;
  /** Where the member's data starts in the archive. */
  offset: number;
  /** The length of the member's data in the archive (0 for directories, links and devices). */
  size: number;
  type: 'file' | 'directory' | 'other';
  /** Where the member's own header starts (after any pax or long-name headers that precede it). */
  headerOffset: number;
}

/** Options of {@link listTar}. */
export interface ListTarOptions {
  /** Refuse archives with more members than this. @default 10000 */
  maxMembers?: number;
}

/** The size of a tar block. */
export const TAR_BLOCK = 512;

/** The largest pax extended header or GNU long name payload read. */
export const MAX_EXTENDED_HEADER = 1024 * 1024;

/** How many extended headers (pax `x`/`g`, GNU `L`/`K`) may precede one member. */
const MAX_EXTENDED_CHAIN = 8;

const DEFAULT_MAX_MEMBERS = 10_000;

/** Typeflags whose members carry no data blocks, whatever their size field says. */
const HEADER_ONLY_TYPES = new Set(['1', '2', '3', '4', '5', '6']);

/** The fields of one 512-byte header that listing needs. */
export interface TarHeader {
  /** The name field, joined with the ustar prefix when there is one. */
  readonly name: string;
  /** The size field, decoded from octal or base-256. */
  readonly size: number;
  /** The typeflag character (`'\0'` is given as `'0'`). */
  readonly typeflag: string;
}

/**
 * Whether `block` (at least 512 bytes) carries a valid header checksum. The sum of all header
 * bytes, with the checksum field counted as spaces, is compared with the octal number in the field;
 * the signed sum some old writers used is accepted too.
 */
export function tarChecksumOk(block: Buffer): boolean {
  if (block.length < TAR_BLOCK) return false;
  const stored = parseOctal(block.subarray(148, 156));
  if (stored === undefined) return false;
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < TAR_BLOCK; i++) {
    const b = i >= 148 && i < 156 ? 0x20 : block[i];
    unsigned += b;
    signed += b >= 0x80 ? b - 0x100 : b;
  }
  return stored === unsigned || stored === signed;
}

/**
 * Decodes one header block. Throws {@link ImageFormatError} when the checksum fails or the size
 * field is not a number.
 */
export function parseTarHeader(block: Buffer, where: string): TarHeader {
  if (!tarChecksumOk(block)) {
    throw new ImageFormatError(`${where}: the tar header checksum does not match; the archive is damaged or not a tar archive`, 'CHECKSUM_MISMATCH');
  }
  const typeByte = block[156];
  const typeflag = typeByte === 0 ? '0' : String.fromCharCode(typeByte);
  const size = parseSizeField(block.subarray(124, 136), where);
  let name = cString(block.subarray(0, 100));
  // Only POSIX ustar ("ustar\0") has a name prefix; the old GNU layout ("ustar  \0") keeps other
  // fields there.
  if (block.subarray(257, 263).toString('latin1') === 'ustar\0') {
    const prefix = cString(block.subarray(345, 500));
    if (prefix) name = `${prefix}/${name}`;
  }
  return { name, size, typeflag };
}

/**
 * Lists the members of the tar archive in `source`. Reads one block per header (plus one read per
 * pax or long-name payload) and never reads member data.
 *
 * Throws {@link ImageFormatError} for a damaged header (checksum, size field, extended header),
 * {@link ImageReadError} with code `TRUNCATED` when a header or a member's data runs past the end of
 * the source. Members with an absolute path or a `..` component are listed with an `OVA_UNSAFE_PATH`
 * finding; their names are never used to reach anything outside the archive.
 */
export async function listTar(
  source: ByteSource,
  options: ListTarOptions = {},
): Promise<{ members: TarMember[]; findings: Finding[] }> {
  const maxMembers = options.maxMembers ?? DEFAULT_MAX_MEMBERS;
  const members: TarMember[] = [];
  const findings: Finding[] = [];
  const globals = new Map<string, string>();
  let local = new Map<string, string>();
  let longName: string | undefined;
  let chain = 0;
  let pos = 0;

  for (;;) {
    const where = `${source.name}: tar header at offset ${pos}`;
    const block = await source.read(pos, TAR_BLOCK);
    if (block.length === 0) break; // the archive ends without end-of-archive blocks
    if (isAllZero(block)) {
      if (block.length < TAR_BLOCK) break;
      const next = await source.read(pos + TAR_BLOCK, TAR_BLOCK);
      if (next.length > 0 && !isAllZero(next)) {
        findings.push(finding('OVA_MALFORMED', `${source.name} has a lone zero block at offset ${pos}, followed by more data that tar readers ignore.`));
      }
      break;
    }
    if (block.length < TAR_BLOCK) {
      throw new ImageReadError(`${where} needs ${TAR_BLOCK} bytes but the archive ends at ${source.size}; the file is truncated`, 'TRUNCATED');
    }
    const header = parseTarHeader(block, where);
    const dataOffset = pos + TAR_BLOCK;
    const { typeflag } = header;

    if (typeflag === 'x' || typeflag === 'g' || typeflag === 'L' || typeflag === 'K') {
      if (++chain > MAX_EXTENDED_CHAIN) {
        throw new ImageFormatError(`${where}: more than ${MAX_EXTENDED_CHAIN} extended headers in a row`, 'OVA_MALFORMED');
      }
      const payload = await readPayload(source, dataOffset, header.size, where, typeflag);
      if (typeflag === 'x') {
        for (const [k, v] of parsePaxRecords(payload, where)) local.set(k, v);
      } else if (typeflag === 'g') {
        for (const [k, v] of parsePaxRecords(payload, where)) {
          if (v === '') globals.delete(k);
          else globals.set(k, v);
        }
      } else if (typeflag === 'L') {
        longName = cString(payload);
      }
      pos = dataOffset + padded(header.size);
      continue;
    }

    if (members.length >= maxMembers) {
      throw new ImageFormatError(`${source.name}: the archive has more than ${maxMembers} members`, 'OVA_MALFORMED');
    }
    const pax = (key: string): string | undefined => local.get(key) ?? globals.get(key);
    let name = header.name;
    if (longName !== undefined) name = longName;
    const paxPath = pax('path');
    if (paxPath !== undefined) name = paxPath;
    let size = header.size;
    const paxSize = pax('size');
    if (paxSize !== undefined) size = parsePaxSize(paxSize, where);
    if (HEADER_ONLY_TYPES.has(typeflag)) size = 0;

    let type: TarMember['type'];
    if (typeflag === '5' || ((typeflag === '0') && name.endsWith('/') && size === 0)) type = 'directory';
    else if (typeflag === '0' || typeflag === '7') type = 'file';
    else type = 'other';

    if (dataOffset + size > source.size) {
      throw new ImageReadError(
        `${source.name}: member ${JSON.stringify(name)} declares ${size} bytes at offset ${dataOffset} but the archive ends at ${source.size}; the file is truncated`,
        'TRUNCATED',
      );
    }
    if (isUnsafePath(name)) {
      findings.push(finding('OVA_UNSAFE_PATH', `${source.name} has a member named ${JSON.stringify(name)}.`));
    }
    members.push({ name, offset: dataOffset, size, type, headerOffset: pos });

    local = new Map();
    longName = undefined;
    chain = 0;
    pos = dataOffset + padded(size);
  }

  if (chain > 0) {
    findings.push(finding('OVA_MALFORMED', `${source.name} ends with an extended header that describes no member.`));
  }
  return { members, findings };
}

/** Whether a member name is absolute or climbs out of the archive with `..`. */
export function isUnsafePath(name: string): boolean {
  if (name.startsWith('/') || name.startsWith('\\') || /^[A-Za-z]:/.test(name)) return true;
  return name.split(/[\\/]/).some((part) => part === '..');
}

async function readPayload(source: ByteSource, offset: number, size: number, where: string, typeflag: string): Promise<Buffer> {
  if (size > MAX_EXTENDED_HEADER) {
    throw new ImageFormatError(`${where}: a ${typeflag} extended header of ${size} bytes is larger than the ${MAX_EXTENDED_HEADER} bytes allowed`, 'OVA_MALFORMED');
  }
  if (size === 0) return Buffer.alloc(0);
  const buf = await source.read(offset, size);
  if (buf.length !== size) {
    throw new ImageReadError(`${where}: the extended header needs ${size} bytes at offset ${offset} but the archive ends at ${source.size}; the file is truncated`, 'TRUNCATED');
  }
  return buf;
}

/** Parses pax records, `"<length> <key>=<value>\n"`, in order. */
export function parsePaxRecords(payload: Buffer, where: string): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  let pos = 0;
  while (pos < payload.length) {
    if (payload[pos] === 0) break; // some writers pad the payload with NULs
    let p = pos;
    let len = 0;
    while (p < payload.length && payload[p] >= 0x30 && payload[p] <= 0x39 && p - pos < 8) {
      len = len * 10 + (payload[p] - 0x30);
      p++;
    }
    if (p === pos || payload[p] !== 0x20 || len < p - pos + 4 || pos + len > payload.length || payload[pos + len - 1] !== 0x0a) {
      throw new ImageFormatError(`${where}: a pax extended header record at byte ${pos} is malformed`, 'OVA_MALFORMED');
    }
    const record = payload.subarray(p + 1, pos + len - 1).toString('utf8');
    const eq = record.indexOf('=');
    if (eq <= 0) {
      throw new ImageFormatError(`${where}: a pax extended header record at byte ${pos} has no key`, 'OVA_MALFORMED');
    }
    out.push([record.slice(0, eq), record.slice(eq + 1)]);
    pos += len;
  }
  return out;
}

function parsePaxSize(value: string, where: string): number {
  if (!/^[0-9]{1,16}$/.test(value) || !Number.isSafeInteger(Number(value))) {
    throw new ImageFormatError(`${where}: the pax size record ${JSON.stringify(value.slice(0, 40))} is not a size`, 'OVA_MALFORMED');
  }
  return Number(value);
}

/** Decodes a numeric field: octal text, or base-256 when the high bit of the first byte is set. */
function parseSizeField(field: Buffer, where: string): number {
  if (field[0] >= 0x80) {
    if (field[0] === 0xff) {
      throw new ImageFormatError(`${where}: the size field is negative`, 'OVA_MALFORMED');
    }
    let v = BigInt(field[0] - 0x80);
    for (let i = 1; i < field.length; i++) v = v * 256n + BigInt(field[i]);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new ImageFormatError(`${where}: the size field says ${v} bytes, beyond any disk this tool can handle`, 'OVA_MALFORMED');
    }
    return Number(v);
  }
  const v = parseOctal(field);
  if (v === undefined) {
    throw new ImageFormatError(`${where}: the size field ${JSON.stringify(field.toString('latin1'))} is not an octal number`, 'OVA_MALFORMED');
  }
  return v;
}

/**
 * Parses an octal text field: optional leading spaces, digits, then NULs or spaces to the end.
 * An empty field is 0. Returns undefined when anything else is found.
 */
function parseOctal(field: Buffer): number | undefined {
  let i = 0;
  while (i < field.length && field[i] === 0x20) i++;
  let v = 0;
  let digits = 0;
  while (i < field.length && field[i] >= 0x30 && field[i] <= 0x37) {
    v = v * 8 + (field[i] - 0x30);
    digits++;
    i++;
  }
  for (; i < field.length; i++) {
    if (field[i] !== 0 && field[i] !== 0x20) return undefined;
  }
  if (digits === 0) {
    // A field of only NULs or spaces: some writers leave unused numbers empty.
    return 0;
  }
  return v;
}

/** The text of a NUL-terminated field. */
function cString(buf: Buffer): string {
  const nul = buf.indexOf(0);
  return buf.subarray(0, nul < 0 ? buf.length : nul).toString('utf8');
}

function isAllZero(buf: Buffer): boolean {
  for (let i = 0; i < buf.length; i++) if (buf[i] !== 0) return false;
  return true;
}

function padded(size: number): number {
  return Math.ceil(size / TAR_BLOCK) * TAR_BLOCK;
}
