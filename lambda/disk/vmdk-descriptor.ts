/**
 * The VMDK text descriptor: the `# Disk DescriptorFile` text that names the disk's createType, its
 * extents (the files or regions holding its sectors) and the disk database (`ddb.*`: adapter,
 * geometry, virtual hardware version). It is either a file of its own (flat, split and ESX disks)
 * or embedded in a hosted sparse extent (monolithicSparse, streamOptimized).
 */
import { ImageFormatError } from './errors';

/** How an extent may be accessed. */
export type VmdkAccess = 'RW' | 'RDONLY' | 'NOACCESS';

/** One extent line: `RW 20480 SPARSE "disk.vmdk"` or `RW 20480 FLAT "disk-flat.vmdk" 0`. */
export interface VmdkExtentLine {
  readonly access: VmdkAccess;
  /** Size of the extent in 512-byte sectors. */
  readonly sectors: number;
  /** The extent type as written, upper-case: SPARSE, FLAT, ZERO, VMFS, VMFSSPARSE, SESPARSE, … */
  readonly type: string;
  /** The extent file, when the type has one (ZERO has none). */
  readonly file?: string;
  /** Where the extent starts inside its file, in sectors (FLAT and VMFS extents). */
  readonly offset?: number;
}

/** A parsed descriptor. */
export interface VmdkDescriptor {
  /** `version=` (1, 2 or 3), when present. */
  readonly version?: number;
  /** `createType=`: streamOptimized, monolithicSparse, monolithicFlat, twoGbMaxExtentSparse, … */
  readonly createType: string;
  /** `CID=`: the content id, as written (8 hex digits). */
  readonly cid?: string;
  /** `parentCID=`: `ffffffff` when the disk has no parent. */
  readonly parentCid?: string;
  /** `parentFileNameHint=`: the parent disk of a delta (snapshot) disk. */
  readonly parentFileNameHint?: string;
  /** Whether the disk is a delta on a parent (parentCID other than ffffffff). */
  readonly hasParent: boolean;
  /** The extents, in order. */
  readonly extents: readonly VmdkExtentLine[];
  /** Sum of the extents' sectors, times 512. */
  readonly virtualSize: number;
  /** The disk database, keyed without the `ddb.` prefix (`adapterType`, `geometry.heads`, …). */
  readonly ddb: Readonly<Record<string, string>>;
  /** `ddb.adapterType` (ide, buslogic, lsilogic, legacyESX, pvscsi, …). */
  readonly adapterType?: string;
  /** `ddb.virtualHWVersion`. */
  readonly hwVersion?: string;
  /** `ddb.geometry.*`, when all three are present and numeric. */
  readonly geometry?: { readonly cylinders: number; readonly heads: number; readonly sectors: number };
  /** Every other `key=value` line of the header section, as written (quotes removed). */
  readonly fields: Readonly<Record<string, string>>;
}

/** The first line of a descriptor file. */
export const DESCRIPTOR_SIGNATURE = '# Disk DescriptorFile';

/** At most this many extent lines: far more than any real disk (a 2 TiB split disk has ~1000). */
const MAX_EXTENTS = 100_000;

const EXTENT_LINE = /^(RW|RDONLY|NOACCESS)\s+(\d+)\s+([A-Za-z]+)(?:\s+"([^"]*)"(?:\s+(\d+))?)?\s*$/;
const FIELD_LINE = /^([A-Za-z][\w.]*)\s*=\s*(.*)$/;

/**
 * Parses descriptor text. The text ends at the first NUL (embedded descriptors are padded with
 * zeros). Throws {@link ImageFormatError} when the text has no createType, or when an extent line
 * or a number in it is impossible.
 */
export function parseVmdkDescriptor(text: string): VmdkDescriptor {
  const nul = text.indexOf('\0');
  const body = nul >= 0 ? text.slice(0, nul) : text;
  const fields: Record<string, string> = Object.create(null);
  const ddb: Record<string, string> = Object.create(null);
  const extents: VmdkExtentLine[] = [];
  let totalSectors = 0;

  for (const raw of body.split(/\r?\n|\r/)) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const ext = EXTENT_LINE.exec(line);
    if (ext) {
      if (extents.length >= MAX_EXTENTS) {
        throw new ImageFormatError(`VMDK descriptor lists more than ${MAX_EXTENTS} extents`);
      }
      const sectors = safeNumber(ext[2], `extent size "${ext[2]}"`);
      totalSectors += sectors;
      if (!Number.isSafeInteger(totalSectors * 512)) {
        throw new ImageFormatError(`VMDK descriptor extents add up to ${totalSectors} sectors, beyond any disk`);
      }
      extents.push({
        access: ext[1] as VmdkAccess,
        sectors,
        type: ext[3].toUpperCase(),
        ...(ext[4] !== undefined ? { file: ext[4] } : {}),
        ...(ext[5] !== undefined ? { offset: safeNumber(ext[5], `extent offset "${ext[5]}"`) } : {}),
      });
      continue;
    }
    const field = FIELD_LINE.exec(line);
    if (!field) continue; // VMware tools ignore lines they do not understand; so do we
    const key = field[1];
    const value = unquote(field[2].trim());
    if (key.startsWith('ddb.')) {
      ddb[key.slice(4)] = value;
    } else {
      fields[key] = value;
    }
  }

  const createType = fields.createType;
  if (createType === undefined || createType === '') {
    throw new ImageFormatError('VMDK descriptor has no createType');
  }
  const versionText = fields.version;
  const version = versionText !== undefined && /^\d{1,6}$/.test(versionText) ? Number(versionText) : undefined;
  const parentCid = fields.parentCID;
  const geometry = parseGeometry(ddb);
  return {
    ...(version !== undefined ? { version } : {}),
    createType,
    ...(fields.CID !== undefined ? { cid: fields.CID } : {}),
    ...(parentCid !== undefined ? { parentCid } : {}),
    ...(fields.parentFileNameHint !== undefined ? { parentFileNameHint: fields.parentFileNameHint } : {}),
    hasParent: parentCid !== undefined && parentCid.toLowerCase() !== 'ffffffff',
    extents,
    virtualSize: totalSectors * 512,
    ddb,
    ...(ddb.adapterType !== undefined ? { adapterType: ddb.adapterType } : {}),
    ...(ddb.virtualHWVersion !== undefined ? { hwVersion: ddb.virtualHWVersion } : {}),
    ...(geometry ? { geometry } : {}),
    fields,
  };
}

/** Whether `head` (the first bytes of a file) starts like a descriptor file. */
export function looksLikeDescriptor(head: Buffer): boolean {
  let start = 0;
  if (head.length >= 3 && head[0] === 0xef && head[1] === 0xbb && head[2] === 0xbf) start = 3; // UTF-8 BOM
  return head.subarray(start, start + DESCRIPTOR_SIGNATURE.length).toString('latin1') === DESCRIPTOR_SIGNATURE;
}

function unquote(v: string): string {
  return v.length >= 2 && v.startsWith('"') && v.endsWith('"') ? v.slice(1, -1) : v;
}

function safeNumber(digits: string, what: string): number {
  const n = Number(digits);
  if (!Number.isSafeInteger(n)) {
    throw new ImageFormatError(`VMDK descriptor: ${what} is beyond any disk`);
  }
  return n;
}

function parseGeometry(ddb: Record<string, string>): VmdkDescriptor['geometry'] {
  const c = ddb['geometry.cylinders'];
  const h = ddb['geometry.heads'];
  const s = ddb['geometry.sectors'];
  if (![c, h, s].every((v) => v !== undefined && /^\d{1,15}$/.test(v))) return undefined;
  return { cylinders: Number(c), heads: Number(h), sectors: Number(s) };
}
