/**
 * OVA packages: a tar archive holding an OVF descriptor (first), an optional manifest and
 * certificate, and the disk files. Opening a package lists its members, reads the descriptor and
 * the manifest, and maps each disk of the descriptor to the member that holds it; disk data is
 * never read here (each disk's source goes to the reader of its own format).
 */
import { createHash } from 'node:crypto';
import { ImageFormatError } from './errors';
import { finding, type Finding } from './findings';
import { MAX_OVF_SIZE, parseOvf, type OvfDescriptor, type OvfFile } from './ovf';
import { SliceSource, readExact, type ByteSource } from './source';
import { listTar, tarChecksumOk, TAR_BLOCK, type TarMember } from './tar';

/** A disk of an OVA package. */
export interface OvaDisk {
  /** Position among the package's disks (0-based), as the findings' `disk` field counts. */
  index: number;
  /** The file name the descriptor gives (`ovf:href`). */
  fileName: string;
  /** `ovf:diskId` in the descriptor's DiskSection (absent without a descriptor). */
  diskId?: string;
  /** The member's bytes; absent when the file is missing, chunked, or outside the package. */
  source?: ByteSource;
  /** `ovf:compression` of the file (`gzip`), when it is compressed. */
  compression?: string;
  /** Whether the file is split into chunks (`ovf:chunkSize`). */
  chunked: boolean;
  /** The capacity the descriptor declares, in bytes. */
  capacityBytes?: number;
  /** `ovf:format` of the disk, e.g. `http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized`. */
  formatUri?: string;
}

/** What an OVA package holds. */
export interface OvaPackage {
  members: TarMember[];
  /** The parsed descriptor; absent when there is none or it cannot be parsed (see findings). */
  ovf?: OvfDescriptor;
  /** The member name of the descriptor. */
  ovfName?: string;
  /** The manifest: file name to digest. */
  manifest?: Record<string, { algorithm: string; digest: string }>;
  disks: OvaDisk[];
  findings: Finding[];
}

/** The largest manifest read, in bytes. */
export const MAX_MANIFEST_SIZE = 1024 * 1024;

const DISK_EXTENSIONS = /\.(vmdk|vhd|vhdx|img|raw|qcow2|vdi)$/i;
const DIGESTS: Record<string, string> = { SHA1: 'sha1', SHA256: 'sha256', SHA512: 'sha512' };

/**
 * Whether `head` (the first 512 bytes or more) starts a tar archive: the ustar magic at 257, or an
 * old-style header whose checksum holds.
 */
export function isTar(head: Buffer): boolean {
  if (head.length < TAR_BLOCK) return false;
  const magic = head.subarray(257, 262).toString('latin1');
  if (magic === 'ustar') return true;
  return tarChecksumOk(head);
}

/**
 * Opens the OVA package in `source`. Costs one read per member header, one for the descriptor and
 * one for the manifest (fewer through a {@link CachedSource}), whatever the size of the disks.
 *
 * What is wrong with the package is reported as findings (`OVA_MALFORMED`, `OVA_CHUNKED`,
 * `OVA_COMPRESSED_DISK`, `OVA_UNSAFE_PATH`, `OVA_MANIFEST_MISSING_ENTRY`, `OVA_MANIFEST_MISMATCH`).
 * Throws {@link ImageFormatError} when the archive itself is damaged, and ImageReadError
 * (`TRUNCATED`) when it ends early.
 */
export async function openOva(source: ByteSource): Promise<OvaPackage> {
  const listing = await listTar(source);
  const members = listing.members;
  const findings = [...listing.findings];
  const files = members.filter((m) => m.type === 'file');

  // Members by normalised name; the first of duplicates wins, as the descriptor cannot tell them apart.
  const byName = new Map<string, TarMember>();
  for (const m of files) {
    const key = normalise(m.name);
    if (byName.has(key)) {
      findings.push(finding('OVA_MALFORMED', `The OVA holds ${JSON.stringify(m.name)} more than once.`));
    } else {
      byName.set(key, m);
    }
  }

  const pkg: OvaPackage = { members, disks: [], findings };
  const ovfMember = files.find((m) => /\.ovf$/i.test(m.name));
  if (!ovfMember) {
    findings.push(finding('OVA_MALFORMED', 'The OVA has no OVF descriptor (.ovf).'));
    pkg.disks = guessDisks(files, source);
    return pkg;
  }
  pkg.ovfName = ovfMember.name;
  if (files[0] !== ovfMember) {
    findings.push(finding('OVA_MALFORMED', `The OVF descriptor ${JSON.stringify(ovfMember.name)} is not the first file of the OVA (${JSON.stringify(files[0].name)} is).`));
  }

  let ovfBytes: Buffer | undefined;
  if (ovfMember.size > MAX_OVF_SIZE) {
    findings.push(finding('OVA_MALFORMED', `The OVF descriptor is ${ovfMember.size} bytes, larger than the ${MAX_OVF_SIZE} bytes a descriptor can reasonably be.`));
  } else {
    ovfBytes = await readExact(source, ovfMember.offset, ovfMember.size, 'the OVF descriptor');
    try {
      pkg.ovf = parseOvf(decodeText(ovfBytes));
    } catch (e) {
      if (!(e instanceof ImageFormatError)) throw e;
      findings.push(finding('OVA_MALFORMED', `The OVF descriptor cannot be used: ${e.message}.`));
    }
  }

  // The manifest: the one named after the descriptor, or else any.
  const mfName = normalise(ovfMember.name).replace(/\.ovf$/i, '.mf');
  const mfMember = byName.get(mfName) ?? files.find((m) => /\.mf$/i.test(m.name));
  if (mfMember) {
    if (mfMember.size > MAX_MANIFEST_SIZE) {
      findings.push(finding('OVA_MALFORMED', `The manifest ${JSON.stringify(mfMember.name)} is ${mfMember.size} bytes, larger than a manifest can reasonably be.`));
    } else {
      const text = (await readExact(source, mfMember.offset, mfMember.size, 'the manifest')).toString('utf8');
      pkg.manifest = parseManifest(text);
      checkManifest(pkg.manifest, files, mfMember, ovfMember, ovfBytes, findings);
    }
  }

  if (!pkg.ovf) {
    pkg.disks = guessDisks(files, source);
    return pkg;
  }
  pkg.disks = mapDisks(pkg.ovf, byName, source, findings);
  return pkg;
}

/**
 * Parses manifest lines such as `SHA256(disk1.vmdk)= 3a7b…`. Lines that do not have that shape
 * are skipped.
 */
export function parseManifest(text: string): Record<string, { algorithm: string; digest: string }> {
  const out: Record<string, { algorithm: string; digest: string }> = Object.create(null);
  for (const line of text.split(/\r?\n/)) {
    const m = /^\s*([A-Za-z0-9-]+)\s*\((.*)\)\s*=\s*([0-9A-Fa-f]+)\s*$/.exec(line);
    if (!m) continue;
    out[normalise(m[2])] = { algorithm: m[1].toUpperCase(), digest: m[3].toLowerCase() };
  }
  return out;
}

function checkManifest(
  manifest: Record<string, { algorithm: string; digest: string }>,
  files: TarMember[],
  mfMember: TarMember,
  ovfMember: TarMember,
  ovfBytes: Buffer | undefined,
  findings: Finding[],
): void {
  const unlisted = files
    .filter((m) => m !== mfMember && !/\.cert$/i.test(m.name))
    .map((m) => normalise(m.name))
    .filter((name) => !Object.prototype.hasOwnProperty.call(manifest, name));
  if (unlisted.length > 0) {
    const shown = unlisted.slice(0, 10).map((n) => JSON.stringify(n)).join(', ');
    findings.push(finding('OVA_MANIFEST_MISSING_ENTRY', `The manifest ${JSON.stringify(mfMember.name)} has no digest for ${shown}${unlisted.length > 10 ? ` and ${unlisted.length - 10} more` : ''}.`));
  }
  // The descriptor has been read anyway: check it against its digest.
  const entry = manifest[normalise(ovfMember.name)];
  const algorithm = entry ? DIGESTS[entry.algorithm] : undefined;
  if (entry && algorithm && ovfBytes) {
    const actual = createHash(algorithm).update(ovfBytes).digest('hex');
    if (actual !== entry.digest) {
      findings.push(finding('OVA_MANIFEST_MISMATCH', `The ${entry.algorithm} digest of ${JSON.stringify(ovfMember.name)} is ${actual}, but the manifest says ${entry.digest}.`));
    }
  }
}

function mapDisks(ovf: OvfDescriptor, byName: Map<string, TarMember>, source: ByteSource, findings: Finding[]): OvaDisk[] {
  const filesById = new Map<string, OvfFile>();
  for (const f of ovf.files) if (!filesById.has(f.id)) filesById.set(f.id, f);

  // Every referenced file must be in the package.
  const missing = new Set<string>();
  for (const f of ovf.files) {
    const problem = fileProblem(f, byName);
    if (problem) {
      missing.add(f.id);
      const diskIndex = ovf.disks.filter((d) => d.fileRef).findIndex((d) => d.fileRef === f.id);
      findings.push(finding('OVA_MALFORMED', problem, diskIndex >= 0 ? diskIndex : undefined));
    }
  }

  const disks: OvaDisk[] = [];
  for (const d of ovf.disks) {
    if (!d.fileRef) continue; // a blank disk, created empty on import: no data to inspect
    const index = disks.length;
    const disk: OvaDisk = { index, fileName: d.fileRef, diskId: d.diskId, chunked: false };
    if (d.capacityBytes !== undefined) disk.capacityBytes = d.capacityBytes;
    if (d.format !== undefined) disk.formatUri = d.format;
    disks.push(disk);
    const file = filesById.get(d.fileRef);
    if (!file) {
      findings.push(finding('OVA_MALFORMED', `Disk ${JSON.stringify(d.diskId)} refers to file ${JSON.stringify(d.fileRef)}, which the descriptor's References do not declare.`, index));
      continue;
    }
    disk.fileName = file.href;
    if (file.compression && file.compression.toLowerCase() !== 'identity') {
      disk.compression = file.compression.toLowerCase();
      findings.push(finding('OVA_COMPRESSED_DISK', `Disk ${JSON.stringify(file.href)} is stored ${file.compression}-compressed.`, index));
    }
    if (file.chunkSize !== undefined) {
      disk.chunked = true;
      findings.push(finding('OVA_CHUNKED', `Disk ${JSON.stringify(file.href)} is split into chunks of ${file.chunkSize} bytes.`, index));
      continue;
    }
    if (missing.has(file.id)) continue;
    const member = byName.get(normalise(file.href))!;
    disk.source = new SliceSource(source, member.offset, member.size, baseName(file.href));
  }
  return disks;
}

/** What is wrong with a referenced file's presence in the package, if anything. */
function fileProblem(f: OvfFile, byName: Map<string, TarMember>): string | undefined {
  if (/^[A-Za-z][A-Za-z0-9+.-]*:/.test(f.href)) {
    return `The descriptor refers to ${JSON.stringify(f.href)}, a file outside the package.`;
  }
  if (f.chunkSize !== undefined) {
    if (!byName.has(normalise(`${f.href}.000000000`))) {
      return `The descriptor refers to the chunked file ${JSON.stringify(f.href)}, but the OVA has no ${JSON.stringify(`${f.href}.000000000`)}.`;
    }
    return undefined;
  }
  if (!byName.has(normalise(f.href))) {
    return `The descriptor refers to ${JSON.stringify(f.href)}, which is not in the OVA.`;
  }
  return undefined;
}

/** Without a usable descriptor, the members that look like disks, in archive order. */
function guessDisks(files: TarMember[], source: ByteSource): OvaDisk[] {
  return files
    .filter((m) => DISK_EXTENSIONS.test(m.name))
    .map((m, index) => ({ index, fileName: m.name, chunked: false, source: new SliceSource(source, m.offset, m.size, baseName(m.name)) }));
}

/** Member names compared without a leading `./`. */
function normalise(name: string): string {
  let n = name;
  while (n.startsWith('./')) n = n.slice(2);
  return n;
}

function baseName(name: string): string {
  const parts = name.split('/');
  return parts[parts.length - 1] || name;
}

/** Decodes descriptor text: UTF-8, or UTF-16 when it starts with a byte order mark. */
function decodeText(bytes: Buffer): string {
  if (bytes.length >= 2 && bytes[0] === 0xff && bytes[1] === 0xfe) return bytes.subarray(2).toString('utf16le');
  if (bytes.length >= 2 && bytes[0] === 0xfe && bytes[1] === 0xff) {
    const swapped = Buffer.from(bytes.subarray(2, 2 + (bytes.length - 2) - ((bytes.length - 2) % 2)));
    swapped.swap16();
    return swapped.toString('utf16le');
  }
  const text = bytes.toString('utf8');
  return text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
}
