/**
 * Raw disks: the virtual bytes, nothing else. Gaps between chunks are zeros: on a sink that can
 * skip (a local file) they become holes, so the output is as sparse as the input; elsewhere they
 * are written as zero buffers of at most 1 MiB at a time.
 */
import { checkedChunks, writeZeros, type Sink, type WriteResult, type WriterInput } from './sink';

const MiB = 1024 * 1024;

/** Writes the virtual disk of `input` to `sink` as raw bytes. Does not close the sink. */
export async function writeRaw(input: WriterInput, sink: Sink): Promise<WriteResult> {
  if (!Number.isSafeInteger(input.virtualSize) || input.virtualSize < 0) {
    throw new RangeError(`invalid virtual size ${input.virtualSize}`);
  }
  const start = sink.position;
  let pos = 0;
  let units = 0;
  let lastUnit = -1;
  for await (const c of checkedChunks(input)) {
    await writeZeros(sink, c.offset - pos);
    await sink.write(c.data);
    pos = c.offset + c.data.length;
    const first = Math.max(lastUnit + 1, Math.floor(c.offset / MiB));
    const last = Math.floor((pos - 1) / MiB);
    if (last >= first) units += last - first + 1;
    lastUnit = Math.max(lastUnit, last);
  }
  await writeZeros(sink, input.virtualSize - pos);
  return { bytesWritten: sink.position - start, grainsWritten: units, zeroGrainsSkipped: Math.ceil(input.virtualSize / MiB) - units };
}
