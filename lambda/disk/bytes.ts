/** Small helpers for reading binary fields. */
import { ImageFormatError } from './errors';

/** Reads a u64 (little-endian) as a number, or throws when it exceeds 2^53 - 1. */
export function u64le(buf: Buffer, offset: number, what: string): number {
  return toSafe(buf.readBigUInt64LE(offset), what);
}

/** Reads a u64 (big-endian) as a number, or throws when it exceeds 2^53 - 1. */
export function u64be(buf: Buffer, offset: number, what: string): number {
  return toSafe(buf.readBigUInt64BE(offset), what);
}

function toSafe(v: bigint, what: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new ImageFormatError(`${what} is ${v}, beyond any disk this tool can handle`, 'ABSURD_VALUE');
  }
  return Number(v);
}

/** Whether every byte of `buf` is zero. */
export function isZero(buf: Uint8Array): boolean {
  // Compare 8 bytes at a time where aligned; this runs over every grain during conversion.
  const n = buf.length;
  let i = 0;
  if (buf.byteOffset % 8 === 0) {
    const words = new BigUint64Array(buf.buffer, buf.byteOffset, n >>> 3);
    for (let w = 0; w < words.length; w++) if (words[w] !== 0n) return false;
    i = words.length << 3;
  }
  for (; i < n; i++) if (buf[i] !== 0) return false;
  return true;
}

/** Formats a byte count for people: 1.5 GiB, 512 B. */
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(v < 10 && v !== Math.floor(v) ? 2 : 1).replace(/\.0+$/, '')} ${units[u]}`;
}

/** Decodes a GUID stored in the mixed-endian layout used by GPT and VHDX. */
export function guidAt(buf: Buffer, offset: number): string {
  const hex = (b: Buffer) => b.toString('hex');
  const le = (o: number, n: number) => hex(Buffer.from(buf.subarray(offset + o, offset + o + n)).reverse());
  return `${le(0, 4)}-${le(4, 2)}-${le(6, 2)}-${hex(buf.subarray(offset + 8, offset + 10))}-${hex(
    buf.subarray(offset + 10, offset + 16),
  )}`.toUpperCase();
}
