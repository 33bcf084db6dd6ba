/**
 * A test-only builder of stream-optimized VMDKs in the layout VMware writes (VMware Virtual Disk
 * Format 1.1): the header at sector 0 says gdOffset = 0xFFFFFFFFFFFFFFFF, the descriptor follows,
 * then grain records (marker + zlib stream) with each grain table after its grains (GT marker +
 * GT), then the grain directory (GD marker + GD), the footer (footer marker + a copy of the
 * header with the real gdOffset) and the end-of-stream marker. qemu-img writes the other layout
 * (GD near the header), so this is how the reader is tested on VMware's.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { deflateSync } from 'node:zlib';
import { cached } from './fixtures';

const SECTOR = 512;
const GTES_PER_GT = 512;
const MARKER_GT = 1;
const MARKER_GD = 2;
const MARKER_FOOTER = 3;

/** Options of {@link buildVmwareStreamVmdk}. */
export interface VmwareStreamOptions {
  /** Grain size in sectors. @default 128 */
  readonly grainSectors?: number;
  /** The file name in the descriptor's extent line. @default 'disk.vmdk' */
  readonly fileName?: string;
  /** ddb.adapterType. @default 'lsilogic' */
  readonly adapterType?: string;
  /** ddb.virtualHWVersion. @default '14' */
  readonly hwVersion?: string;
  /** The disk's capacity in sectors, when larger than `raw` (the rest reads as zeros). @default - the size of raw */
  readonly capacitySectors?: number;
}

/** Where the builder put a grain. */
export interface BuiltGrain {
  /** The grain's first virtual sector. */
  readonly lba: number;
  /** The sector of its marker. */
  readonly sector: number;
  /** Bytes of zlib data after the 12-byte marker header. */
  readonly size: number;
}

/** A built image and where its parts are. */
export interface BuiltStreamVmdk {
  readonly image: Buffer;
  readonly grains: readonly BuiltGrain[];
  /** Sector of the grain directory (after its marker). */
  readonly gdSector: number;
  /** Sector of the footer header. */
  readonly footerSector: number;
}

/** Builds a VMware-layout stream-optimized VMDK holding `raw` (padded to whole sectors). */
export function buildVmwareStreamVmdk(raw: Buffer, options: VmwareStreamOptions = {}): BuiltStreamVmdk {
  const grainSectors = options.grainSectors ?? 128;
  const grainBytes = grainSectors * SECTOR;
  const capacity = Math.max(Math.ceil(raw.length / SECTOR), options.capacitySectors ?? 0);
  const numGrains = Math.ceil(capacity / grainSectors);
  const gdEntries = Math.ceil(numGrains / GTES_PER_GT);

  const descriptor = Buffer.from(
    [
      '# Disk DescriptorFile',
      'version=1',
      'CID=7e5d3c2b',
      'parentCID=ffffffff',
      'createType="streamOptimized"',
      '',
      '# Extent description',
      `RW ${capacity} SPARSE "${options.fileName ?? 'disk.vmdk'}"`,
      '',
      '# The Disk Data Base',
      '#DDB',
      '',
      `ddb.adapterType = "${options.adapterType ?? 'lsilogic'}"`,
      `ddb.geometry.cylinders = "${Math.max(1, Math.floor(capacity / (255 * 63)))}"`,
      'ddb.geometry.heads = "255"',
      'ddb.geometry.sectors = "63"',
      `ddb.virtualHWVersion = "${options.hwVersion ?? '14'}"`,
      '',
    ].join('\n'),
  );
  const descriptorSectors = Math.ceil(descriptor.length / SECTOR);

  const parts: Buffer[] = [];
  let pos = 0; // next free sector
  const push = (buf: Buffer): number => {
    const at = pos;
    const padded = Buffer.alloc(Math.ceil(buf.length / SECTOR) * SECTOR);
    buf.copy(padded);
    parts.push(padded);
    pos += padded.length / SECTOR;
    return at;
  };
  const metadataMarker = (numSectors: number, type: number): Buffer => {
    const m = Buffer.alloc(SECTOR);
    m.writeBigUInt64LE(BigInt(numSectors), 0);
    m.writeUInt32LE(0, 8);
    m.writeUInt32LE(type, 12);
    return m;
  };

  const header = (gdOffset: bigint, overHead: number): Buffer => {
    const h = Buffer.alloc(SECTOR);
    h.write('KDMV', 0, 'latin1');
    h.writeUInt32LE(3, 4); // version
    h.writeUInt32LE(0x30001, 8); // flags: bit 0 newline test, bit 16 compressed grains, bit 17 markers
    h.writeBigUInt64LE(BigInt(capacity), 12);
    h.writeBigUInt64LE(BigInt(grainSectors), 20);
    h.writeBigUInt64LE(1n, 28); // descriptorOffset
    h.writeBigUInt64LE(BigInt(descriptorSectors), 36);
    h.writeUInt32LE(GTES_PER_GT, 44);
    h.writeBigUInt64LE(0n, 48); // rgdOffset: none in a stream
    h.writeBigUInt64LE(gdOffset, 56);
    h.writeBigUInt64LE(BigInt(overHead), 64);
    h[72] = 0; // uncleanShutdown
    h[73] = 0x0a;
    h[74] = 0x20;
    h[75] = 0x0d;
    h[76] = 0x0a;
    h.writeUInt16LE(1, 77); // deflate
    return h;
  };

  const overHead = 1 + descriptorSectors;
  push(header(0xffffffffffffffffn, overHead));
  push(descriptor);

  const grains: BuiltGrain[] = [];
  const gd = Buffer.alloc(gdEntries * 4);
  for (let t = 0; t < gdEntries; t++) {
    const gt = Buffer.alloc(GTES_PER_GT * 4);
    let any = false;
    for (let i = 0; i < GTES_PER_GT; i++) {
      const grain = t * GTES_PER_GT + i;
      if (grain >= numGrains || grain * grainBytes >= raw.length) break;
      const full = Buffer.alloc(grainBytes);
      raw.copy(full, 0, grain * grainBytes, Math.min(raw.length, (grain + 1) * grainBytes));
      if (full.every((b) => b === 0)) continue; // all-zero grains are left out
      const data = deflateSync(full);
      const rec = Buffer.alloc(12 + data.length);
      const lba = grain * grainSectors;
      rec.writeBigUInt64LE(BigInt(lba), 0);
      rec.writeUInt32LE(data.length, 8);
      data.copy(rec, 12);
      const sector = push(rec);
      gt.writeUInt32LE(sector, i * 4);
      grains.push({ lba, sector, size: data.length });
      any = true;
    }
    if (!any) continue; // a grain table with no grains is left out (GD entry 0)
    push(metadataMarker(gt.length / SECTOR, MARKER_GT));
    gd.writeUInt32LE(push(gt), t * 4);
  }
  push(metadataMarker(Math.ceil(gd.length / SECTOR), MARKER_GD));
  const gdSector = gd.length ? push(gd) : pos;
  push(metadataMarker(1, MARKER_FOOTER));
  const footerSector = push(header(BigInt(gdSector), overHead));
  push(metadataMarker(0, 0)); // end of stream
  return { image: Buffer.concat(parts), grains, gdSector, footerSector };
}

/** The VMware-layout stream VMDK of a raw file, cached next to the other fixtures. */
export function vmwareStreamVmdk(rawFile: string, options: VmwareStreamOptions = {}): string {
  const tag = `g${options.grainSectors ?? 128}`;
  const name = `${path.basename(rawFile)}.vmware-stream-${tag}.vmdk`;
  return cached(name, (file) => {
    fs.writeFileSync(file, buildVmwareStreamVmdk(fs.readFileSync(rawFile), { fileName: name, ...options }).image);
  });
}
