/* eslint-disable no-bitwise -- bit fields, bitmaps and checksums of a binary format */
/**
 * CRC-32C (Castagnoli), the checksum of VHDX headers and region tables. Node's `zlib.crc32` is the
 * other polynomial (IEEE 802.3), so this one is computed here, a byte at a time from a table.
 */

/** The reflected Castagnoli polynomial. */
const POLY = 0x82f63b78;

const TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/**
 * The CRC-32C of `data`. Pass the result of a previous call as `previous` to continue over data
 * that comes in pieces.
 */
export function crc32c(data: Uint8Array, previous = 0): number {
  let c = ~previous >>> 0;
  for (let i = 0; i < data.length; i++) c = TABLE[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}
