/** Raw disks: the virtual bytes are the file. */
import type { DiskImage, Extent } from './image';
import type { ByteSource } from './source';

/** Opens `source` as a raw disk. */
export async function openRaw(source: ByteSource): Promise<DiskImage> {
  return {
    format: 'raw',
    subformat: 'raw',
    virtualSize: source.size,
    findings: [],
    details: {},
    async read(offset: number, length: number): Promise<Buffer> {
      const buf = await source.read(offset, length);
      return buf;
    },
    async *extents(): AsyncIterable<Extent> {
      if (source.size > 0) yield { offset: 0, length: source.size };
    },
  };
}
