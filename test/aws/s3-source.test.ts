import * as fs from 'node:fs';
import { S3Client } from '@aws-sdk/client-s3';
import * as fc from 'fast-check';
import { createS3Client } from '../../lambda/aws/s3';
import { parseS3Url, S3ObjectError, S3Source } from '../../lambda/aws/s3-source';
import { ImageReadError } from '../../lambda/disk/errors';
import { sampleMbrDisk } from '../helpers/fixtures';
import { startFaultProxy, startLocalS3, withEnv, type Fault, type LocalS3 } from '../helpers/local-s3';

const BUCKET = 'images';
let s3: LocalS3;
let file: string;
let bytes: Buffer;

beforeAll(async () => {
  s3 = await startLocalS3([BUCKET]);
  file = sampleMbrDisk();
  bytes = fs.readFileSync(file);
  await s3.upload(BUCKET, 'disks/sample.raw', file);
});

afterAll(async () => {
  await s3.close();
});

/** A client of the real SDK aimed at `endpoint` (the server itself or a proxy in front of it). */
function clientFor(endpoint: string, maxAttempts = 1): S3Client {
  return new S3Client({
    endpoint,
    region: 'us-east-1',
    forcePathStyle: true,
    maxAttempts,
    credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
  });
}

describe('S3Source', () => {
  test('ranged reads return the object bytes and are counted, one request each', async () => {
    // GIVEN
    const proxy = await startFaultProxy(s3.endpoint, () => ({ kind: 'pass' }));
    const client = clientFor(proxy.endpoint);
    // WHEN
    const src = await S3Source.open(client, BUCKET, 'disks/sample.raw');
    const a = await src.read(0, 512);
    const b = await src.read(1_000_000, 70_000);
    const c = await src.read(bytes.length - 512, 512);
    // THEN
    expect(src.size).toBe(bytes.length);
    expect(src.name).toBe('sample.raw');
    expect(src.etag).toMatch(/^"[0-9a-f]+"$/);
    expect(a.equals(bytes.subarray(0, 512))).toBe(true);
    expect(b.equals(bytes.subarray(1_000_000, 1_070_000))).toBe(true);
    expect(c.equals(bytes.subarray(bytes.length - 512))).toBe(true);
    expect(src.stats).toEqual({ requests: 4, bytesRead: 512 + 70_000 + 512 });
    const ranges = proxy.seen.filter((r) => r.method === 'GET').map((r) => r.range);
    expect(ranges).toEqual([
      'bytes=0-511',
      'bytes=1000000-1069999',
      `bytes=${bytes.length - 512}-${bytes.length - 1}`,
    ]);
    // Every GET carries the ETag from HeadObject, so a replaced object cannot be mixed in.
    expect(proxy.seen.filter((r) => r.method === 'GET').every((r) => r.ifMatch === src.etag)).toBe(true);
    client.destroy();
    await proxy.close();
  });

  test('a read past the end is cut at the end; a read at the end costs no request', async () => {
    // GIVEN
    const src = await S3Source.open(s3.client, BUCKET, 'disks/sample.raw');
    // WHEN
    const tail = await src.read(bytes.length - 100, 4096);
    const none = await src.read(bytes.length, 10);
    // THEN
    expect(tail.equals(bytes.subarray(bytes.length - 100))).toBe(true);
    expect(none.length).toBe(0);
    expect(src.stats.requests).toBe(2);
  });

  test('a missing key or bucket is an ObjectNotFound error naming the bucket and the key', async () => {
    // GIVEN / WHEN
    const missingKey = await S3Source.open(s3.client, BUCKET, 'nope/disk.vmdk').catch((e) => e);
    const missingBucket = await S3Source.open(s3.client, 'no-such-bucket', 'disk.vmdk').catch((e) => e);
    // THEN
    expect(missingKey).toBeInstanceOf(S3ObjectError);
    expect(missingKey).toMatchObject({ name: 'ObjectNotFound', message: 's3://images/nope/disk.vmdk does not exist', bucket: 'images', key: 'nope/disk.vmdk' });
    expect(missingBucket).toBeInstanceOf(S3ObjectError);
    expect(missingBucket).toMatchObject({ name: 'ObjectNotFound', message: expect.stringContaining('s3://no-such-bucket/disk.vmdk') });
  });

  test('a request the server refuses (403) is an AccessDenied error that says what permission is needed', async () => {
    // GIVEN: S3 refuses the HeadObject, as it does without s3:GetObject
    const proxy = await startFaultProxy(s3.endpoint, () => ({ kind: 'error', status: 403, code: 'AccessDenied' }));
    const client = clientFor(proxy.endpoint);
    // WHEN
    const opening = S3Source.open(client, BUCKET, 'disks/sample.raw');
    // THEN
    await expect(opening).rejects.toThrow(S3ObjectError);
    await expect(opening).rejects.toMatchObject({
      name: 'AccessDenied',
      message: expect.stringMatching(/s3:\/\/images\/disks\/sample\.raw.*s3:GetObject.*kms:Decrypt/),
    });
    client.destroy();
    await proxy.close();
  });

  test('a body cut short is fetched again from where it stopped', async () => {
    // GIVEN: the first ranged GET loses its connection after 10,000 bytes
    const proxy = await startFaultProxy(s3.endpoint, (req) =>
      req.method === 'GET' && req.range === 'bytes=4096-266239' ? { kind: 'cut', afterBytes: 10_000 } : { kind: 'pass' },
    );
    const client = clientFor(proxy.endpoint);
    const src = await S3Source.open(client, BUCKET, 'disks/sample.raw');
    // WHEN
    const got = await src.read(4096, 262_144);
    // THEN
    expect(got.equals(bytes.subarray(4096, 4096 + 262_144))).toBe(true);
    const ranges = proxy.seen.filter((r) => r.method === 'GET').map((r) => r.range);
    expect(ranges[0]).toBe('bytes=4096-266239');
    expect(ranges).toHaveLength(2);
    // The retry asks only for what is missing (at most what the cut left over).
    const retryStart = Number(/^bytes=(\d+)-266239$/.exec(ranges[1]!)![1]);
    expect(retryStart).toBeGreaterThan(4096);
    expect(retryStart).toBeLessThanOrEqual(4096 + 10_000);
    client.destroy();
    await proxy.close();
  });

  test('a body that keeps breaking fails with a read error after the bounded attempts', async () => {
    // GIVEN
    const proxy = await startFaultProxy(s3.endpoint, (req) => (req.method === 'GET' ? { kind: 'cut', afterBytes: 100 } : { kind: 'pass' }));
    const client = clientFor(proxy.endpoint);
    const src = await S3Source.open(client, BUCKET, 'disks/sample.raw', { bodyAttempts: 3 });
    // WHEN
    const reading = src.read(0, 100_000);
    // THEN
    await expect(reading).rejects.toThrow(ImageReadError);
    await expect(reading).rejects.toThrow(/s3:\/\/images\/disks\/sample\.raw: reading bytes 0-99999 failed after 3 attempts/);
    // Each attempt is one GET, counted in the stats besides the HEAD.
    expect(proxy.seen.filter((r) => r.method === 'GET')).toHaveLength(3);
    expect(src.stats.requests).toBe(1 + 3);
    client.destroy();
    await proxy.close();
  });

  test('throttling and 5xx answers are retried by the client that createS3Client builds', async () => {
    // GIVEN: the first two GETs answer 503 SlowDown, then 500
    let failures = 0;
    const proxy = await startFaultProxy(s3.endpoint, (req): Fault => {
      if (req.method !== 'GET' || failures >= 2) return { kind: 'pass' };
      failures++;
      return failures === 1 ? { kind: 'error', status: 503, code: 'SlowDown' } : { kind: 'error', status: 500, code: 'InternalError' };
    });
    // WHEN
    const got = await withEnv({ ...s3.env, AWS_ENDPOINT_URL_S3: proxy.endpoint }, async () => {
      const client = createS3Client({ maxAttempts: 4 });
      const src = await S3Source.open(client, BUCKET, 'disks/sample.raw');
      const buf = await src.read(512, 1024);
      client.destroy();
      return buf;
    });
    // THEN
    expect(got.equals(bytes.subarray(512, 1536))).toBe(true);
    expect(proxy.seen.filter((r) => r.method === 'GET')).toHaveLength(3);
    await proxy.close();
  });

  test('an object replaced between HeadObject and GetObject (412) is an ObjectChanged error', async () => {
    // GIVEN: the server answers the conditional GET with 412, as S3 does when If-Match fails
    const proxy = await startFaultProxy(s3.endpoint, (req) =>
      req.method === 'GET' ? { kind: 'error', status: 412, code: 'PreconditionFailed' } : { kind: 'pass' },
    );
    const client = clientFor(proxy.endpoint);
    const src = await S3Source.open(client, BUCKET, 'disks/sample.raw');
    // WHEN
    const reading = src.read(0, 512);
    // THEN
    await expect(reading).rejects.toMatchObject({ name: 'ObjectChanged', message: expect.stringContaining('s3://images/disks/sample.raw') });
    client.destroy();
    await proxy.close();
  });

  test('no more requests are in flight than the concurrency allows', async () => {
    // GIVEN: every GET is held back, so that parallel reads overlap
    const proxy = await startFaultProxy(s3.endpoint, () => ({ kind: 'pass', delayMs: 60 }));
    const client = clientFor(proxy.endpoint);
    const src = await S3Source.open(client, BUCKET, 'disks/sample.raw', { concurrency: 2 });
    // WHEN
    const reads = await Promise.all(Array.from({ length: 8 }, (_, i) => src.read(i * 65536, 4096)));
    // THEN
    reads.forEach((r, i) => expect(r.equals(bytes.subarray(i * 65536, i * 65536 + 4096))).toBe(true));
    expect(proxy.maxInFlight).toBe(2);
    expect(src.stats.requests).toBe(9);
    client.destroy();
    await proxy.close();
  });
});

describe('parseS3Url', () => {
  test.each([
    ['s3://my-bucket/disk.vmdk', { bucket: 'my-bucket', key: 'disk.vmdk' }],
    ['s3://my.bucket.example/a/b/c d.ova', { bucket: 'my.bucket.example', key: 'a/b/c d.ova' }],
  ])('%s is parsed', (url, expected) => {
    // GIVEN / WHEN / THEN
    expect(parseS3Url(url)).toEqual(expected);
  });

  test.each(['s3://bucket-only', 's3://bucket/', 'https://bucket/key', '/tmp/disk.vmdk', 's3://UPPER/key', 's3:///key'])(
    '%s is not an S3 URL of an object',
    (url) => {
      // GIVEN / WHEN / THEN
      expect(parseS3Url(url)).toBeUndefined();
    },
  );

  test('any string gives a bucket and a non-empty key, or nothing', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string({ maxLength: 40 }), fc.string({ maxLength: 30 }).map((t) => `s3://${t}`)), (url) => {
        // GIVEN / WHEN
        const got = parseS3Url(url);
        // THEN
        if (got) {
          expect(url).toBe(`s3://${got.bucket}/${got.key}`);
          expect(got.key.length).toBeGreaterThan(0);
          expect(got.bucket).not.toContain('/');
        }
      }),
      { numRuns: 500 },
    );
  });
});
