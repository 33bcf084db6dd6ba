import * as fs from 'node:fs';
import { openRaw } from '../../lambda/disk/raw';
import { CachedSource, FileSource } from '../../lambda/disk/source';
import { qemuRaw, sampleMbrDisk } from '../helpers/fixtures';

describe('raw reader', () => {
  test('virtual bytes equal qemu-img convert -O raw', async () => {
    // GIVEN
    const file = sampleMbrDisk();
    const expected = fs.readFileSync(qemuRaw(file, 'raw'));
    // WHEN
    const src = await FileSource.open(file);
    const img = await openRaw(src);
    const got = await img.read(0, img.virtualSize);
    await src.close();
    // THEN
    expect(img.virtualSize).toBe(expected.length);
    expect(got.equals(expected)).toBe(true);
  });

  test('the block cache merges missing blocks into one request and serves repeats from memory', async () => {
    // GIVEN
    const src = new CachedSource(await FileSource.open(sampleMbrDisk()), { blockSize: 4096, maxBlocks: 8 });
    // WHEN
    const a = await src.read(100, 10_000); // blocks 0..2: one request
    const b = await src.read(5000, 100); // cached
    // THEN
    expect(src.stats.requests).toBe(1);
    expect(src.stats.bytesRead).toBe(3 * 4096);
    expect(b.equals(a.subarray(4900, 5000))).toBe(true);
    await src.read(1 << 20, 10); // a new block: a second request
    expect(src.stats.requests).toBe(2);
    await src.close();
  });
});
