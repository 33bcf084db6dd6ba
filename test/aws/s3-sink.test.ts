import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  GetObjectCommand,
  GetObjectTaggingCommand,
  HeadObjectCommand,
  ListPartsCommand,
  S3Client,
  UploadPartCommand,
} from '@aws-sdk/client-s3';
import * as fc from 'fast-check';
import { CheckpointInvalid, loadCheckpoint, saveCheckpoint } from '../../lambda/aws/checkpoint-store';
import {
  abortUploads,
  checkSinkState,
  choosePartSize,
  MAX_PART_SIZE,
  MAX_PARTS,
  maxOutputSize,
  MIN_PART_SIZE,
  S3MultipartSink,
  S3UploadError,
  type S3SinkState,
} from '../../lambda/aws/s3-sink';
import { BufferSink, convert, type ConvertTarget } from '../../lambda/disk/convert';
import { openRaw } from '../../lambda/disk/raw';
import { BufferSource, FileSource } from '../../lambda/disk/source';
import { pseudoRandom, run, sampleMbrDisk, tempDir } from '../helpers/fixtures';
import { startFaultProxy, startLocalS3, type Fault, type FaultProxy, type LocalS3 } from '../helpers/local-s3';

const BUCKET = 'outputs';
const MiB = 1024 * 1024;
const PART = MIN_PART_SIZE;
const TiB = 1024 ** 4;
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

/** A fault proxy in front of the local S3, closed after the test. */
async function proxyFor(decide: Parameters<typeof startFaultProxy>[1]): Promise<FaultProxy> {
  const proxy = await startFaultProxy(s3.endpoint, decide);
  cleanups.push(() => proxy.close());
  return proxy;
}

/** A client of the real SDK aimed at `endpoint` (the local S3 or a proxy in front of it). */
function clientFor(endpoint: string, maxAttempts = 3): S3Client {
  const client = new S3Client({
    endpoint,
    region: 'us-east-1',
    forcePathStyle: true,
    maxAttempts,
    credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
  cleanups.push(() => client.destroy());
  return client;
}

async function getObject(key: string): Promise<Buffer> {
  const res = await s3.client.send(new GetObjectCommand({ Bucket: BUCKET, Key: key }));
  return Buffer.from(await res.Body!.transformToByteArray());
}

async function exists(key: string): Promise<boolean> {
  return s3.client.send(new HeadObjectCommand({ Bucket: BUCKET, Key: key })).then(
    () => true,
    (e) => {
      if (e?.$metadata?.httpStatusCode === 404) return false;
      throw e;
    },
  );
}

async function uploadsOf(key: string): Promise<string[]> {
  return (await s3.listUploads(BUCKET)).filter((u) => u.key === key).map((u) => u.uploadId);
}

/** Writes `data` to `sink` in chunks of the given sizes (cycled), starting at `from`. */
async function writeIn(sink: S3MultipartSink, data: Buffer, sizes: number[], from = 0, to = data.length): Promise<void> {
  let at = from;
  for (let i = 0; at < to; i++) {
    const n = Math.min(sizes[i % sizes.length], to - at);
    await sink.write(data.subarray(at, at + n));
    at += n;
  }
}

/** The UploadPart requests a proxy saw, as part numbers. */
function partsSeen(seen: Array<{ method: string; url: string }>): number[] {
  return seen.filter((r) => r.method === 'PUT' && /[?&]partNumber=/.test(r.url)).map((r) => Number(/partNumber=(\d+)/.exec(r.url)![1]));
}

describe('S3MultipartSink', () => {
  test('a 12 MiB output in uneven chunks becomes the same object, in parts of 5, 5 and 2 MiB, with its type, metadata and tags', async () => {
    // GIVEN
    const proxy = await proxyFor(() => ({ kind: 'pass' }));
    const client = clientFor(proxy.endpoint);
    const data = pseudoRandom(12 * MiB + 4321, 1);
    const sink = await S3MultipartSink.create(client, {
      bucket: BUCKET,
      key: 'whole/disk.vmdk',
      partSize: PART,
      contentType: 'application/octet-stream',
      metadata: { source: 'disk.qcow2' },
      tagging: 'vmie=output&step=convert',
    });
    // WHEN: chunks of odd sizes, one larger than a part
    await writeIn(sink, data, [1, 700_001, 6 * MiB + 3, 65536, 3 * MiB]);
    const position = sink.position;
    await sink.close();
    // THEN
    expect(position).toBe(data.length);
    expect((await getObject('whole/disk.vmdk')).equals(data)).toBe(true);
    expect(partsSeen(proxy.seen)).toEqual([1, 2, 3]);
    const head = await s3.client.send(new HeadObjectCommand({ Bucket: BUCKET, Key: 'whole/disk.vmdk' }));
    expect(head).toMatchObject({ ContentLength: data.length, ContentType: 'application/octet-stream', Metadata: { source: 'disk.qcow2' } });
    const tags = await s3.client.send(new GetObjectTaggingCommand({ Bucket: BUCKET, Key: 'whole/disk.vmdk' }));
    expect(tags.TagSet).toEqual([
      { Key: 'vmie', Value: 'output' },
      { Key: 'step', Value: 'convert' },
    ]);
    expect(await uploadsOf('whole/disk.vmdk')).toEqual([]);
  });

  test('an empty output is a zero-byte object', async () => {
    // GIVEN
    const sink = await S3MultipartSink.create(s3.client, { bucket: BUCKET, key: 'empty/disk.raw', partSize: PART });
    // WHEN
    await sink.close();
    // THEN
    expect(sink.position).toBe(0);
    expect((await getObject('empty/disk.raw')).length).toBe(0);
    expect(await uploadsOf('empty/disk.raw')).toEqual([]);
  });

  test.each([
    ['in the middle of a part', 7 * MiB + 12345, 1, 2 * MiB + 12345],
    ['exactly at a part boundary', 2 * PART, 2, 0],
  ])('a checkpoint taken %s resumes in a new sink from the stored state and tail', async (_, cut, parts, tailLength) => {
    // GIVEN: a sink that has taken `cut` bytes, checkpointed into S3, then is dropped
    const key = `resume/${cut}.vhd`;
    const data = pseudoRandom(12 * MiB + 999, 2);
    const first = await S3MultipartSink.create(s3.client, { bucket: BUCKET, key, partSize: PART });
    await writeIn(first, data, [MiB + 17], 0, cut);
    const { state, tail } = await first.checkpoint();
    await saveCheckpoint(s3.client, { bucket: BUCKET, key: `${key}.checkpoint` }, { sink: state }, tail);
    // WHEN: another process loads the checkpoint and continues
    const loaded = await loadCheckpoint(s3.client, { bucket: BUCKET, key: `${key}.checkpoint` });
    const client = clientFor(s3.endpoint);
    const second = await S3MultipartSink.resume(client, (loaded.json as { sink: S3SinkState }).sink, loaded.tail);
    const resumedAt = second.position;
    await writeIn(second, data, [3 * MiB + 1], cut);
    await second.close();
    // THEN
    expect(state).toMatchObject({ bucket: BUCKET, key, partSize: PART, position: cut });
    expect(state.parts.map((p) => p.PartNumber)).toEqual(Array.from({ length: parts }, (__, i) => i + 1));
    expect(tail.length).toBe(tailLength);
    expect(tail.equals(data.subarray(cut - tailLength, cut))).toBe(true);
    expect(resumedAt).toBe(cut);
    expect((await getObject(key)).equals(data)).toBe(true);
    expect(await uploadsOf(key)).toEqual([]);
  });

  test('resuming from an older checkpoint after more parts went up uploads them again; completion uses only its own parts', async () => {
    // GIVEN: checkpoint A after 6 MiB, then a run that wrote 16 MiB of other bytes (parts 2-4) and died
    const key = 'resume/older.vmdk';
    const data = pseudoRandom(12 * MiB, 3);
    const first = await S3MultipartSink.create(s3.client, { bucket: BUCKET, key, partSize: PART });
    await first.write(data.subarray(0, 6 * MiB));
    const a = await first.checkpoint();
    await first.write(pseudoRandom(16 * MiB, 4));
    const listed = await s3.client.send(new ListPartsCommand({ Bucket: BUCKET, Key: key, UploadId: a.state.uploadId }));
    // WHEN: the conversion resumes from A and writes the real rest
    const second = await S3MultipartSink.resume(s3.client, a.state, a.tail);
    await second.write(data.subarray(6 * MiB));
    await second.close();
    // THEN
    expect(listed.Parts?.map((p) => p.PartNumber)).toEqual([1, 2, 3, 4]);
    expect((await getObject(key)).equals(data)).toBe(true);
    expect(await uploadsOf(key)).toEqual([]);
  });

  test('resume refuses a checkpoint whose upload is gone, whose parts differ, or that does not hold together', async () => {
    // GIVEN
    const key = 'resume/refused.raw';
    const sink = await S3MultipartSink.create(s3.client, { bucket: BUCKET, key, partSize: PART });
    await sink.write(pseudoRandom(PART + 100, 5));
    const { state, tail } = await sink.checkpoint();
    // WHEN
    const failure = (p: Promise<unknown>) => p.then(() => undefined, (e: unknown) => e);
    const wrongEtag = await failure(S3MultipartSink.resume(s3.client, { ...state, parts: [{ PartNumber: 1, ETag: '"0123"' }] }, tail));
    const wrongTail = await failure(S3MultipartSink.resume(s3.client, state, tail.subarray(1)));
    const wrongSize = await failure(S3MultipartSink.resume(s3.client, { ...state, partSize: PART + MiB, position: PART + MiB + 100 }, tail));
    await sink.abort();
    const gone = await failure(S3MultipartSink.resume(s3.client, state, tail));
    // THEN
    for (const e of [wrongEtag, wrongTail, wrongSize, gone]) expect(e).toBeInstanceOf(CheckpointInvalid);
    expect(wrongEtag).toMatchObject({ message: expect.stringMatching(/part 1 of the upload .* not the 5242880 bytes with ETag 0123/) });
    expect(wrongTail).toMatchObject({ message: expect.stringMatching(/position 5242980 is not 1 parts of 5242880 bytes and a tail of 99 bytes/) });
    expect(wrongSize).toMatchObject({ message: expect.stringMatching(/part 1 of the upload .* is 5242880 bytes/) });
    expect(gone).toMatchObject({ name: 'CheckpointInvalid', message: expect.stringMatching(/s3:\/\/outputs\/resume\/refused\.raw: the upload .* no longer exists/) });
  });

  test('abort leaves neither an upload nor an object, can be repeated, and ends the sink', async () => {
    // GIVEN: one part uploaded, some bytes buffered
    const key = 'aborted/disk.vmdk';
    const sink = await S3MultipartSink.create(s3.client, { bucket: BUCKET, key, partSize: PART });
    await sink.write(pseudoRandom(PART + MiB, 6));
    const before = await uploadsOf(key);
    // WHEN
    await sink.abort();
    await sink.abort();
    // THEN
    expect(before).toEqual([sink.uploadId]);
    expect(await uploadsOf(key)).toEqual([]);
    expect(await exists(key)).toBe(false);
    await expect(sink.write(Buffer.alloc(1))).rejects.toThrow(/cannot write, the sink is aborted/);
    await expect(sink.close()).rejects.toThrow(/cannot close, the sink is aborted/);
    expect(await exists(key)).toBe(false);
  });

  test('abort after close keeps the complete object', async () => {
    // GIVEN
    const data = pseudoRandom(MiB, 7);
    const sink = await S3MultipartSink.create(s3.client, { bucket: BUCKET, key: 'kept/disk.raw', partSize: PART });
    await sink.write(data);
    await sink.close();
    // WHEN
    await sink.abort();
    // THEN
    expect((await getObject('kept/disk.raw')).equals(data)).toBe(true);
  });

  test('an UploadPart answered with 503 once is retried by the client, and the object is whole', async () => {
    // GIVEN: the first upload of part 2 is throttled
    let throttled = 0;
    const proxy = await proxyFor((req): Fault => {
      if (req.method === 'PUT' && /partNumber=2(&|$)/.test(req.url) && throttled++ === 0) return { kind: 'error', status: 503, code: 'SlowDown' };
      return { kind: 'pass' };
    });
    const client = clientFor(proxy.endpoint, 3);
    const data = pseudoRandom(11 * MiB, 8);
    const sink = await S3MultipartSink.create(client, { bucket: BUCKET, key: 'retried/disk.vhd', partSize: PART });
    // WHEN
    await writeIn(sink, data, [MiB]);
    await sink.close();
    // THEN
    expect(partsSeen(proxy.seen)).toEqual([1, 2, 2, 3]);
    expect((await getObject('retried/disk.vhd')).equals(data)).toBe(true);
  });

  test('an UploadPart that keeps failing fails the write; close then aborts the upload and throws', async () => {
    // GIVEN: every upload of part 2 fails
    const proxy = await proxyFor((req): Fault =>
      req.method === 'PUT' && /partNumber=2(&|$)/.test(req.url) ? { kind: 'error', status: 500, code: 'InternalError' } : { kind: 'pass' },
    );
    const client = clientFor(proxy.endpoint, 2);
    const key = 'failed/disk.vmdk';
    const sink = await S3MultipartSink.create(client, { bucket: BUCKET, key, partSize: PART });
    // WHEN
    const writing = writeIn(sink, pseudoRandom(12 * MiB, 9), [MiB]);
    await expect(writing).rejects.toThrow(S3UploadError);
    const afterWrite = await uploadsOf(key);
    const closing = sink.close();
    // THEN
    await expect(writing).rejects.toMatchObject({ name: 'UploadFailed', message: expect.stringMatching(/s3:\/\/outputs\/failed\/disk\.vmdk: uploading part 2 .*InternalError/) });
    // The failed sink kept the upload (an earlier checkpoint can resume it) until close aborted it.
    expect(afterWrite).toEqual([sink.uploadId]);
    await expect(closing).rejects.toThrow(/the upload failed earlier and was aborted/);
    expect(partsSeen(proxy.seen)).toEqual([1, 2, 2]);
    expect(await uploadsOf(key)).toEqual([]);
    expect(await exists(key)).toBe(false);
    await expect(sink.checkpoint()).rejects.toThrow(/the sink is aborted/);
  });

  test('a CompleteMultipartUpload that fails aborts the upload and throws', async () => {
    // GIVEN
    const proxy = await proxyFor((req): Fault =>
      req.method === 'POST' && /uploadId=/.test(req.url) ? { kind: 'error', status: 500, code: 'InternalError' } : { kind: 'pass' },
    );
    const client = clientFor(proxy.endpoint, 1);
    const key = 'failed/complete.raw';
    const sink = await S3MultipartSink.create(client, { bucket: BUCKET, key, partSize: PART });
    await sink.write(pseudoRandom(6 * MiB, 10));
    // WHEN
    const closing = sink.close();
    // THEN
    await expect(closing).rejects.toMatchObject({ name: 'UploadFailed', message: expect.stringContaining('completing the upload') });
    expect(await uploadsOf(key)).toEqual([]);
    expect(await exists(key)).toBe(false);
  });

  test('a refused CreateMultipartUpload is an UploadAccessDenied error that names the permissions', async () => {
    // GIVEN
    const proxy = await proxyFor(() => ({ kind: 'error', status: 403, code: 'AccessDenied' }));
    const client = clientFor(proxy.endpoint, 1);
    // WHEN
    const creating = S3MultipartSink.create(client, { bucket: BUCKET, key: 'denied/disk.vmdk', partSize: PART });
    // THEN
    await expect(creating).rejects.toMatchObject({
      name: 'UploadAccessDenied',
      message: expect.stringMatching(/s3:\/\/outputs\/denied\/disk\.vmdk: starting the upload .*s3:PutObject.*kms:GenerateDataKey/),
    });
  });

  test.each([MIN_PART_SIZE - 1, 0, -PART, 1.5 * PART + 0.5, NaN])('a part size of %d is refused before any request', async (partSize) => {
    // GIVEN
    const proxy = await proxyFor(() => ({ kind: 'pass' }));
    const client = clientFor(proxy.endpoint);
    // WHEN
    const creating = S3MultipartSink.create(client, { bucket: BUCKET, key: 'never/disk.raw', partSize });
    // THEN
    await expect(creating).rejects.toThrow(RangeError);
    expect(proxy.seen).toEqual([]);
  });

  test('a converted disk streamed through the sink is the image qemu-img reads back', async () => {
    // GIVEN: the sample disk made by sfdisk and mke2fs, as a dynamic VHD (the block table goes first)
    const file = sampleMbrDisk();
    const source = await FileSource.open(file);
    const sink = await S3MultipartSink.create(s3.client, { bucket: BUCKET, key: 'converted/disk.vhd', partSize: PART });
    // WHEN
    const result = await convert(await openRaw(source), 'vhd', sink).finally(() => source.close());
    // THEN
    const { dir, cleanup } = tempDir();
    try {
      const out = path.join(dir, 'disk.vhd');
      fs.writeFileSync(out, await getObject('converted/disk.vhd'));
      expect(fs.statSync(out).size).toBe(result.bytesWritten);
      expect(result.bytesWritten).toBeGreaterThan(2 * PART);
      // qemu takes the size of a VHD from another creator from its CHS geometry unless told otherwise.
      const vhd = `driver=vpc,force_size_calc=current_size,file.filename=${out}`;
      expect(run('qemu-img', ['compare', '-q', '--image-opts', vhd, `driver=raw,file.filename=${file}`])).toBe('');
    } finally {
      cleanup();
    }
    expect(await uploadsOf('converted/disk.vhd')).toEqual([]);
  });
});

describe('checkSinkState', () => {
  const valid: S3SinkState = {
    bucket: BUCKET,
    key: 'k',
    uploadId: 'u',
    partSize: PART,
    parts: [
      { PartNumber: 1, ETag: '"a"' },
      { PartNumber: 2, ETag: '"b"' },
    ],
    position: 2 * PART + 3,
  };

  test('a state that holds together is accepted as it is', () => {
    // GIVEN / WHEN
    const got = checkSinkState(JSON.parse(JSON.stringify(valid)), Buffer.alloc(3));
    // THEN
    expect(got).toEqual(valid);
  });

  test('any JSON value, or a valid state with one field replaced, is a state or a CheckpointInvalid error', () => {
    const fields = ['bucket', 'key', 'uploadId', 'partSize', 'parts', 'position'];
    fc.assert(
      fc.property(
        fc.oneof(
          fc.jsonValue(),
          fc.tuple(fc.constantFrom(...fields), fc.jsonValue()).map(([f, v]) => ({ ...valid, [f]: v })),
          fc.tuple(fc.nat(1), fc.jsonValue()).map(([i, v]) => ({ ...valid, parts: valid.parts.map((p, j) => (i === j ? v : p)) })),
        ),
        fc.nat(PART + 10),
        (state, tailLength) => {
          // GIVEN / WHEN
          let got: S3SinkState | undefined;
          try {
            got = checkSinkState(state, Buffer.alloc(Math.min(tailLength, 16)));
          } catch (e) {
            // THEN
            expect(e).toBeInstanceOf(CheckpointInvalid);
            return;
          }
          expect(got.position).toBe(got.parts.length * got.partSize + Math.min(tailLength, 16));
          expect(got.partSize).toBeGreaterThanOrEqual(MIN_PART_SIZE);
        },
      ),
      { numRuns: 2000 },
    );
  });
});

describe('abortUploads', () => {
  test('aborts every upload under the prefix, page by page, and nothing else', async () => {
    // GIVEN: three uploads under out/ (two of one key), one under keep/
    const bucketUploads = async (key: string) =>
      (await s3.client.send(new CreateMultipartUploadCommand({ Bucket: BUCKET, Key: key }))).UploadId!;
    await bucketUploads('sweep/out/b.vmdk');
    await bucketUploads('sweep/out/a.vmdk');
    await bucketUploads('sweep/out/a.vmdk');
    const kept = await bucketUploads('sweep/keep/c.vmdk');
    const proxy = await proxyFor(() => ({ kind: 'pass' }));
    const client = clientFor(proxy.endpoint);
    // WHEN
    const aborted = await abortUploads(client, BUCKET, 'sweep/out/', { pageSize: 2 });
    const again = await abortUploads(client, BUCKET, 'sweep/out/');
    // THEN
    expect(aborted).toEqual(['sweep/out/a.vmdk', 'sweep/out/a.vmdk', 'sweep/out/b.vmdk']);
    expect(again).toEqual([]);
    const left = (await s3.listUploads(BUCKET)).filter((u) => u.key.startsWith('sweep/'));
    expect(left).toEqual([{ key: 'sweep/keep/c.vmdk', uploadId: kept }]);
    // Two pages of two then one for the first call, one page for the second.
    expect(proxy.seen.filter((r) => r.method === 'GET' && /[?&]uploads/.test(r.url))).toHaveLength(3);
  });
});

describe('the local S3 refuses multipart requests as S3 does', () => {
  test('small parts, unknown ETags, parts out of order and unknown uploads are refused; ListParts pages', async () => {
    // GIVEN: an upload with a 1 MiB part 1 and a 1 MiB part 2
    const key = 'strict/disk.raw';
    const { UploadId } = await s3.client.send(new CreateMultipartUploadCommand({ Bucket: BUCKET, Key: key }));
    const put = async (n: number, body: Buffer, uploadId = UploadId) => {
      const part = new UploadPartCommand({ Bucket: BUCKET, Key: key, UploadId: uploadId, PartNumber: n, Body: body, ContentLength: body.length });
      return (await s3.client.send(part)).ETag!;
    };
    const e1 = await put(1, pseudoRandom(MiB, 11));
    const e2 = await put(2, pseudoRandom(MiB, 12));
    const complete = (parts: Array<{ PartNumber: number; ETag: string }>) =>
      s3.client.send(new CompleteMultipartUploadCommand({ Bucket: BUCKET, Key: key, UploadId, MultipartUpload: { Parts: parts } }));
    // WHEN / THEN
    await expect(complete([{ PartNumber: 1, ETag: e1 }, { PartNumber: 2, ETag: e2 }])).rejects.toMatchObject({ name: 'EntityTooSmall' });
    await expect(complete([{ PartNumber: 1, ETag: e2 }])).rejects.toMatchObject({ name: 'InvalidPart' });
    await expect(complete([{ PartNumber: 2, ETag: e2 }, { PartNumber: 1, ETag: e1 }])).rejects.toMatchObject({ name: 'InvalidPartOrder' });
    await expect(put(1, Buffer.alloc(10), 'no-such-upload')).rejects.toMatchObject({ name: 'NoSuchUpload' });
    const page1 = await s3.client.send(new ListPartsCommand({ Bucket: BUCKET, Key: key, UploadId, MaxParts: 1 }));
    const page2 = await s3.client.send(new ListPartsCommand({ Bucket: BUCKET, Key: key, UploadId, PartNumberMarker: page1.NextPartNumberMarker }));
    expect(page1).toMatchObject({ IsTruncated: true, Parts: [{ PartNumber: 1, ETag: e1, Size: MiB }] });
    expect(page2).toMatchObject({ IsTruncated: false, Parts: [{ PartNumber: 2, ETag: e2, Size: MiB }] });
    // The last part alone may be small.
    await complete([{ PartNumber: 1, ETag: e1 }]);
    expect((await getObject(key)).equals(pseudoRandom(MiB, 11))).toBe(true);
    expect(await uploadsOf(key)).toEqual([]);
  });
});

describe('choosePartSize and maxOutputSize', () => {
  const targets: ConvertTarget[] = ['vmdk', 'vhd', 'vhd-fixed', 'raw'];
  const diskSize = fc.oneof(fc.integer({ min: 0, max: 16 * TiB - 1 }), fc.constantFrom(0, 1, 512, 16 * TiB - 1, 2 * TiB, 2040 * 1024 * MiB));

  test('any disk under 16 TiB fits in at most 10,000 parts of a whole number of MiB, at least 16 MiB, in every target', () => {
    fc.assert(
      fc.property(diskSize, fc.constantFrom(...targets), (size, target) => {
        // GIVEN / WHEN
        const max = maxOutputSize(size, target);
        const part = choosePartSize(max);
        // THEN
        expect(max).toBeGreaterThanOrEqual(size);
        expect(part % MiB).toBe(0);
        expect(part).toBeGreaterThanOrEqual(16 * MiB);
        expect(part).toBeLessThanOrEqual(MAX_PART_SIZE);
        expect(Math.ceil(max / part)).toBeLessThanOrEqual(MAX_PARTS);
      }),
      { numRuns: 2000 },
    );
  });

  test('both grow with their input', () => {
    fc.assert(
      fc.property(diskSize, diskSize, fc.constantFrom(...targets), (x, y, target) => {
        // GIVEN
        const [a, b] = x <= y ? [x, y] : [y, x];
        // WHEN
        const [ma, mb] = [maxOutputSize(a, target), maxOutputSize(b, target)];
        // THEN
        expect(ma).toBeLessThanOrEqual(mb);
        expect(choosePartSize(ma)).toBeLessThanOrEqual(choosePartSize(mb));
      }),
      { numRuns: 2000 },
    );
  });

  test('a given minimum is kept, rounded up to a MiB; sizes beyond what 10,000 parts of 5 GiB hold are refused', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 40 * TiB }), fc.integer({ min: MIN_PART_SIZE, max: 64 * MiB }), (max, minimum) => {
        // GIVEN / WHEN
        const part = choosePartSize(max, minimum);
        // THEN
        expect(part % MiB).toBe(0);
        expect(part).toBeGreaterThanOrEqual(minimum);
        expect(part).toBeLessThan(Math.max(minimum + MiB, max / 9000 + MiB));
        expect(Math.ceil(max / part)).toBeLessThanOrEqual(MAX_PARTS);
      }),
      { numRuns: 2000 },
    );
    expect(() => choosePartSize(MAX_PARTS * MAX_PART_SIZE)).toThrow(RangeError);
    expect(() => choosePartSize(-1)).toThrow(RangeError);
    expect(() => choosePartSize(GiB(1), MIN_PART_SIZE - 1)).toThrow(RangeError);
    expect(() => maxOutputSize(GiB(1), 'qcow2')).toThrow(RangeError);
  });

  test.each(targets)('a real %s conversion of random bytes stays within maxOutputSize', async (target) => {
    for (const size of [3 * MiB + 7, 5 * MiB, 64 * 1024 * 33 + 512]) {
      // GIVEN: incompressible data, so deflate meets its worst case
      const image = await openRaw(new BufferSource('random.raw', pseudoRandom(size, size)));
      const sink = new BufferSink();
      // WHEN
      const result = await convert(image, target, sink, target === 'vmdk' ? { vmdk: { level: size % 2 === 0 ? 0 : 9 } } : {});
      // THEN
      expect(result.bytesWritten).toBe(sink.contents().length);
      expect(result.bytesWritten).toBeLessThanOrEqual(maxOutputSize(size, target));
      if (target === 'raw' || target === 'vhd-fixed') expect(result.bytesWritten).toBe(maxOutputSize(size, target));
    }
  });
});

function GiB(n: number): number {
  return n * 1024 ** 3;
}
