import { GetObjectCommand, HeadObjectCommand, S3Client } from '@aws-sdk/client-s3';
import * as fc from 'fast-check';
import {
  CHECKPOINT_MAGIC,
  CheckpointInvalid,
  decodeCheckpoint,
  deleteCheckpoint,
  encodeCheckpoint,
  loadCheckpoint,
  saveCheckpoint,
} from '../../lambda/aws/checkpoint-store';
import { pseudoRandom } from '../helpers/fixtures';
import { startFaultProxy, startLocalS3, type LocalS3 } from '../helpers/local-s3';

const BUCKET = 'state';
const MiB = 1024 * 1024;
let s3: LocalS3;

beforeAll(async () => {
  s3 = await startLocalS3([BUCKET]);
});

afterAll(async () => {
  await s3.close();
});

/** Closed after each test, passed or failed. */
const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

const doc = {
  version: 1,
  unit: 3,
  sink: { bucket: 'out', key: 'a/disk.vmdk', uploadId: 'x', partSize: 16 * MiB, parts: [{ PartNumber: 1, ETag: '"e"' }], position: 17 * MiB },
  note: 'ünïcödé ✓',
};

async function objectBytes(key: string): Promise<Buffer> {
  const res = await s3.client.send(new GetObjectCommand({ Bucket: BUCKET, Key: key }));
  return Buffer.from(await res.Body!.transformToByteArray());
}

describe('the checkpoint store in S3', () => {
  test('a saved checkpoint loads back as the same JSON and tail, in one object of the documented size', async () => {
    // GIVEN
    const where = { bucket: BUCKET, key: 'jobs/1/checkpoint' };
    const tail = pseudoRandom(3 * MiB + 5, 1);
    // WHEN
    await saveCheckpoint(s3.client, where, doc, tail);
    const loaded = await loadCheckpoint(s3.client, where);
    // THEN
    expect(loaded.json).toEqual(doc);
    expect(loaded.tail.equals(tail)).toBe(true);
    const head = await s3.client.send(new HeadObjectCommand({ Bucket: BUCKET, Key: where.key }));
    expect(head.ContentLength).toBe(24 + Buffer.byteLength(JSON.stringify(doc)) + tail.length + 32);
    const bytes = await objectBytes(where.key);
    expect(bytes.subarray(0, 8).toString('latin1')).toBe('VMIECKPT');
    expect(bytes.readUInt32LE(8)).toBe(1);
    expect(bytes.readUInt32LE(12)).toBe(Buffer.byteLength(JSON.stringify(doc)));
    expect(Number(bytes.readBigUInt64LE(16))).toBe(tail.length);
  });

  test('saving again replaces the checkpoint; an empty tail is kept as empty', async () => {
    // GIVEN
    const where = { bucket: BUCKET, key: 'jobs/2/checkpoint' };
    await saveCheckpoint(s3.client, where, { unit: 1 }, pseudoRandom(1000, 2));
    // WHEN
    await saveCheckpoint(s3.client, where, { unit: 2 }, Buffer.alloc(0));
    const loaded = await loadCheckpoint(s3.client, where);
    // THEN
    expect(loaded.json).toEqual({ unit: 2 });
    expect(loaded.tail.length).toBe(0);
  });

  test('a missing checkpoint is CheckpointInvalid naming it; delete removes it and may be repeated', async () => {
    // GIVEN
    const where = { bucket: BUCKET, key: 'jobs/3/checkpoint' };
    await saveCheckpoint(s3.client, where, doc, Buffer.from('tail'));
    // WHEN
    await deleteCheckpoint(s3.client, where);
    await deleteCheckpoint(s3.client, where);
    const loading = loadCheckpoint(s3.client, where);
    // THEN
    await expect(loading).rejects.toThrow(CheckpointInvalid);
    await expect(loading).rejects.toMatchObject({ name: 'CheckpointInvalid', message: 'the checkpoint s3://state/jobs/3/checkpoint does not exist' });
  });

  test.each([
    ['one byte of the tail flipped', (b: Buffer) => Buffer.from(b).fill(b[b.length - 40] ^ 1, b.length - 40, b.length - 39), /SHA-256 does not match/],
    ['the last byte cut off', (b: Buffer) => b.subarray(0, b.length - 1), /lengths say/],
    ['a byte appended', (b: Buffer) => Buffer.concat([b, Buffer.alloc(1)]), /lengths say/],
    ['another magic', (b: Buffer) => Buffer.concat([Buffer.from('VMIECKPX'), b.subarray(8)]), /does not start with VMIECKPT/],
    ['a later version', (b: Buffer) => { const c = Buffer.from(b); c.writeUInt32LE(2, 8); return c; }, /layout version 2/],
    ['a JSON length of 4 GiB - 1', (b: Buffer) => { const c = Buffer.from(b); c.writeUInt32LE(0xffffffff, 12); return c; }, /longer than/],
    ['an empty object', () => Buffer.alloc(0), /0 bytes are fewer/],
  ])('a checkpoint object with %s is CheckpointInvalid', async (_, damage, why) => {
    // GIVEN
    const key = `damaged/${_.replace(/\W+/g, '-')}`;
    await s3.put(BUCKET, key, damage(encodeCheckpoint(doc, pseudoRandom(5000, 3))));
    // WHEN
    const loading = loadCheckpoint(s3.client, { bucket: BUCKET, key });
    // THEN
    await expect(loading).rejects.toThrow(CheckpointInvalid);
    await expect(loading).rejects.toThrow(new RegExp(`the checkpoint s3://state/${key} is damaged: .*${why.source}`));
  });

  test.each([
    ['once is read again', 1, true],
    ['every time is a read failure naming the checkpoint, not a damaged checkpoint', Infinity, false],
  ])('a body cut short %s', async (_, cuts, loads) => {
    // GIVEN: GETs whose connection drops after 100,000 bytes
    const where = { bucket: BUCKET, key: `jobs/cut-${cuts}/checkpoint` };
    const tail = pseudoRandom(2 * MiB, 4);
    await saveCheckpoint(s3.client, where, doc, tail);
    let cut = 0;
    const proxy = await startFaultProxy(s3.endpoint, (req) =>
      req.method === 'GET' && cut++ < cuts ? { kind: 'cut', afterBytes: 100_000 } : { kind: 'pass' },
    );
    cleanups.push(() => proxy.close());
    const client = new S3Client({
      endpoint: proxy.endpoint,
      region: 'us-east-1',
      forcePathStyle: true,
      maxAttempts: 1,
      credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
    });
    cleanups.push(() => client.destroy());
    // WHEN
    const loading = loadCheckpoint(client, where);
    // THEN
    if (loads) {
      const got = await loading;
      expect(got.json).toEqual(doc);
      expect(got.tail.equals(tail)).toBe(true);
      expect(proxy.seen.filter((r) => r.method === 'GET')).toHaveLength(2);
    } else {
      const failure = await loading.then(() => undefined, (e: unknown) => e);
      expect(failure).not.toBeInstanceOf(CheckpointInvalid);
      expect(failure).toMatchObject({ message: expect.stringMatching(/^the checkpoint s3:\/\/state\/jobs\/cut-Infinity\/checkpoint: reading it failed 3 times: the response (broke off|ended) after/) });
      expect(proxy.seen.filter((r) => r.method === 'GET')).toHaveLength(3);
    }
  });
});

describe('the checkpoint layout', () => {
  const tails = fc.uint8Array({ maxLength: 4096 }).map((a) => Buffer.from(a));

  test('any JSON value and tail survive encoding and decoding', () => {
    fc.assert(
      fc.property(fc.jsonValue(), tails, (json, tail) => {
        // GIVEN / WHEN
        const got = decodeCheckpoint(encodeCheckpoint(json, tail));
        // THEN
        expect(got.json).toEqual(JSON.parse(JSON.stringify(json)));
        expect(got.tail.equals(tail)).toBe(true);
      }),
      { numRuns: 500 },
    );
  });

  test('random bytes, with or without the magic, are CheckpointInvalid and nothing else', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 512 }), fc.boolean(), (bytes, magic) => {
        // GIVEN
        const b = magic ? Buffer.concat([CHECKPOINT_MAGIC, Buffer.from([1, 0, 0, 0]), Buffer.from(bytes)]) : Buffer.from(bytes);
        // WHEN / THEN
        expect(() => decodeCheckpoint(b)).toThrow(CheckpointInvalid);
      }),
      { numRuns: 2000 },
    );
  });

  test('any change to a real checkpoint (a byte replaced, bytes cut or added) is CheckpointInvalid', () => {
    fc.assert(
      fc.property(
        fc.jsonValue({ maxDepth: 2 }),
        tails,
        fc.oneof(
          fc.record({ kind: fc.constant('set' as const), at: fc.nat(), value: fc.integer({ min: 1, max: 255 }) }),
          fc.record({ kind: fc.constant('cut' as const), at: fc.nat() }),
          fc.record({ kind: fc.constant('add' as const), extra: fc.uint8Array({ minLength: 1, maxLength: 64 }) }),
        ),
        (json, tail, change) => {
          // GIVEN
          const good = encodeCheckpoint(json, tail);
          let bad: Buffer;
          if (change.kind === 'set') {
            bad = Buffer.from(good);
            const at = change.at % good.length;
            bad[at] ^= change.value;
          } else if (change.kind === 'cut') {
            bad = good.subarray(0, change.at % good.length);
          } else {
            bad = Buffer.concat([good, Buffer.from(change.extra)]);
          }
          // WHEN / THEN
          expect(() => decodeCheckpoint(bad)).toThrow(CheckpointInvalid);
        },
      ),
      { numRuns: 1000 },
    );
  });

  test('a value JSON cannot hold is refused when saving', () => {
    // GIVEN / WHEN / THEN
    expect(() => encodeCheckpoint(undefined, Buffer.alloc(0))).toThrow(TypeError);
    expect(() => encodeCheckpoint({ n: 1n }, Buffer.alloc(0))).toThrow(TypeError);
  });
});
