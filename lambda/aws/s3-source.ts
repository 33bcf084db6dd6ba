/**
 * An S3 object as a byte source: the size from HeadObject, the bytes from ranged GetObject
 * requests (`bytes=start-end`, never suffix ranges), every request counted.
 *
 * This module knows nothing of disk formats; it implements the engine's ByteSource interface.
 */
import type { Readable } from 'node:stream';
// The SDK is bundled into the Lambda assets and the vmie command by esbuild, hence a dev dependency.
// eslint-disable-next-line import/no-extraneous-dependencies
import { GetObjectCommand, HeadObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { ImageReadError } from '../disk/errors';
import { checkRange, type ByteSource, type ReadStats } from '../disk/source';

/** Options of {@link S3Source.open}. */
export interface S3SourceOptions {
  /** Read this version of the object. @default - the current version */
  readonly versionId?: string;
  /** At most this many GetObject requests in flight at once. @default 4 */
  readonly concurrency?: number;
  /**
   * Attempts per range when a response body ends before the range does or the connection drops
   * while it streams. (Throttling and 5xx answers are retried by the client's own retry policy.)
   * @default 3
   */
  readonly bodyAttempts?: number;
}

/** Why an object could not be read. The `name` lets a state machine catch it. */
export type S3ObjectErrorName = 'ObjectNotFound' | 'AccessDenied' | 'ObjectChanged';

/** The object is missing, not readable by the caller, or changed while it was being read. */
export class S3ObjectError extends Error {
  public constructor(
    public readonly name: S3ObjectErrorName,
    message: string,
    public readonly bucket: string,
    public readonly key: string,
  ) {
    super(message);
  }
}

/** Parses `s3://bucket/key`; undefined when `url` is not of that form. */
export function parseS3Url(url: string): { bucket: string; key: string } | undefined {
  const m = /^s3:\/\/([^/]+)\/(.+)$/.exec(url);
  if (!m) return undefined;
  const [, bucket, key] = m;
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) return undefined;
  return { bucket, key };
}

/** A ranged-GET view of one S3 object. */
export class S3Source implements ByteSource {
  /**
   * Opens `s3://bucket/key` with one HeadObject request. The ETag it returns is sent with every
   * GetObject as `If-Match`, so an object replaced during the reads fails instead of mixing
   * versions.
   */
  public static async open(client: S3Client, bucket: string, key: string, options: S3SourceOptions = {}): Promise<S3Source> {
    const stats: ReadStats = { bytesRead: 0, requests: 1 };
    let head;
    try {
      head = await client.send(new HeadObjectCommand({ Bucket: bucket, Key: key, VersionId: options.versionId }));
    } catch (e) {
      throw explain(e, bucket, key, options.versionId);
    }
    const size = head.ContentLength;
    if (size === undefined || !Number.isSafeInteger(size) || size < 0) {
      throw new ImageReadError(`s3://${bucket}/${key}: HeadObject gave no usable size (${size})`);
    }
    return new S3Source(client, bucket, key, size, head.ETag, head.VersionId ?? options.versionId, options, stats);
  }

  public readonly name: string;
  private readonly slots: Semaphore;
  private readonly bodyAttempts: number;

  private constructor(
    private readonly client: S3Client,
    public readonly bucket: string,
    public readonly key: string,
    public readonly size: number,
    /** The object's ETag, as HeadObject gave it (with its quotes). */
    public readonly etag: string | undefined,
    /** The version read, when the bucket is versioned or a version was asked for. */
    public readonly versionId: string | undefined,
    options: S3SourceOptions,
    /** HeadObject and every GetObject (retries included); bytes of response bodies. */
    public readonly stats: ReadStats,
  ) {
    this.name = key.slice(key.lastIndexOf('/') + 1) || key;
    this.slots = new Semaphore(Math.max(1, options.concurrency ?? 4));
    this.bodyAttempts = Math.max(1, options.bodyAttempts ?? 3);
  }

  /** `s3://bucket/key`, for messages. */
  public get url(): string {
    return `s3://${this.bucket}/${this.key}`;
  }

  public async read(offset: number, length: number): Promise<Buffer> {
    checkRange(offset, length);
    const n = Math.max(0, Math.min(length, this.size - offset));
    if (n === 0) return Buffer.alloc(0);
    const out = Buffer.alloc(n);
    let got = 0;
    let failure = '';
    for (let attempt = 0; attempt < this.bodyAttempts && got < n; attempt++) {
      const before = got;
      try {
        got += await this.slots.run(() => this.fetchInto(out, offset, got));
      } catch (e) {
        if (!isBodyFailure(e)) throw e;
        failure = (e as Error).message;
      }
      if (got < n && got === before && !failure) failure = 'the response body was empty';
    }
    if (got < n) {
      throw new ImageReadError(
        `${this.url}: reading bytes ${offset}-${offset + n - 1} failed after ${this.bodyAttempts} attempts: ` +
          `${failure || `the body ended after ${got} bytes`}`,
        'READ_FAILED',
      );
    }
    return out;
  }

  /** Nothing is held open between requests; the client belongs to the caller. */
  public async close(): Promise<void> {}

  /**
   * One GetObject for the bytes of `out` from `done` on (`out` starts at `offset`). Returns how
   * many bytes it added; streaming errors after some bytes arrived are reported as a short count.
   */
  private async fetchInto(out: Buffer, offset: number, done: number): Promise<number> {
    const first = offset + done;
    const last = offset + out.length - 1;
    this.stats.requests++;
    let res;
    try {
      res = await this.client.send(
        new GetObjectCommand({
          Bucket: this.bucket,
          Key: this.key,
          VersionId: this.versionId,
          IfMatch: this.etag,
          Range: `bytes=${first}-${last}`,
        }),
      );
    } catch (e) {
      throw explain(e, this.bucket, this.key, this.versionId);
    }
    const range = res.ContentRange ? /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(res.ContentRange) : null;
    if (range && Number(range[1]) !== first) {
      destroy(res.Body);
      throw new ImageReadError(`${this.url}: asked for bytes from ${first}, S3 answered ${res.ContentRange}`, 'READ_FAILED');
    }
    // Without a Content-Range the whole object came back: skip to the requested offset.
    let skip = range ? 0 : first;
    let pos = done;
    const body = res.Body as Readable | undefined;
    if (!body) return 0;
    try {
      for await (const chunk of body as AsyncIterable<Buffer>) {
        let c: Buffer = chunk;
        if (skip > 0) {
          const s = Math.min(skip, c.length);
          skip -= s;
          c = c.subarray(s);
        }
        const take = Math.min(c.length, out.length - pos);
        c.copy(out, pos, 0, take);
        pos += take;
        this.stats.bytesRead += chunk.length;
        if (pos >= out.length) break;
      }
    } catch (e) {
      if (pos === done) throw new BodyFailure((e as Error).message);
    } finally {
      destroy(body);
    }
    return pos - done;
  }
}

class BodyFailure extends Error {}

function isBodyFailure(e: unknown): boolean {
  return e instanceof BodyFailure;
}

function destroy(body: unknown): void {
  const d = (body as { destroy?: () => void } | undefined)?.destroy;
  if (typeof d === 'function') d.call(body);
}

/** Turns the SDK's errors for a missing or unreadable object into messages that name it. */
function explain(e: unknown, bucket: string, key: string, versionId?: string): Error {
  const err = e as { name?: string; Code?: string; $metadata?: { httpStatusCode?: number }; message?: string };
  const status = err.$metadata?.httpStatusCode;
  const code = err.name ?? err.Code;
  const what = `s3://${bucket}/${key}${versionId ? ` (version ${versionId})` : ''}`;
  if (code === 'NoSuchKey' || code === 'NotFound' || code === 'NoSuchVersion' || code === 'NoSuchBucket' || status === 404) {
    if (code === 'NoSuchBucket') return new S3ObjectError('ObjectNotFound', `bucket ${bucket} does not exist (reading ${what})`, bucket, key);
    return new S3ObjectError('ObjectNotFound', `${what} does not exist`, bucket, key);
  }
  if (code === 'AccessDenied' || code === 'Forbidden' || status === 403) {
    return new S3ObjectError(
      'AccessDenied',
      `access to ${what} was denied (403): the caller needs s3:GetObject${versionId ? ' and s3:GetObjectVersion' : ''} on it, ` +
        'and kms:Decrypt on its key when the bucket uses SSE-KMS',
      bucket,
      key,
    );
  }
  if (code === 'PreconditionFailed' || status === 412) {
    return new S3ObjectError('ObjectChanged', `${what} changed while it was being read; inspect it again`, bucket, key);
  }
  return e instanceof Error ? e : new Error(String(e));
}

/** Limits how many tasks run at once. */
class Semaphore {
  private active = 0;
  private readonly waiting: Array<() => void> = [];

  public constructor(private readonly limit: number) {}

  public async run<T>(task: () => Promise<T>): Promise<T> {
    if (this.active >= this.limit) await new Promise<void>((resolve) => this.waiting.push(resolve));
    else this.active++;
    try {
      return await task();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.active--;
    }
  }
}
