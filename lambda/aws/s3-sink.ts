/**
 * An S3 multipart upload as a {@link Sink}: the output is buffered into parts of a fixed size,
 * each part uploaded as soon as it is full, and the parts joined into one object on close.
 *
 * A conversion that outlives one Lambda invocation checkpoints the sink: {@link
 * S3MultipartSink.checkpoint} gives a JSON state (the upload id, the parts uploaded with their
 * ETags, the position) and the tail, the bytes taken but not yet uploaded (less than one part).
 * {@link S3MultipartSink.resume} continues from them in another process. Parts are numbered from
 * the position, so resuming from an older checkpoint after more parts went up simply uploads those
 * parts again (S3 keeps the last upload of a part number, and completion lists only the parts
 * the state knows).
 *
 * Permissions: s3:PutObject (CreateMultipartUpload, UploadPart, CompleteMultipartUpload, and
 * PutObjectTagging when tags are given), s3:AbortMultipartUpload, s3:ListMultipartUploadParts
 * (resume), s3:ListBucketMultipartUploads ({@link abortUploads}); kms:GenerateDataKey and
 * kms:Decrypt on the bucket's key under SSE-KMS.
 */
import { constants as bufferConstants } from 'node:buffer';
// The SDK is bundled into the Lambda assets and the vmie command by esbuild, hence a dev dependency.
// eslint-disable-next-line import/no-extraneous-dependencies
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  ListMultipartUploadsCommand,
  ListPartsCommand,
  UploadPartCommand,
  type S3Client,
} from '@aws-sdk/client-s3';
import { CheckpointInvalid } from './checkpoint-store';
import type { Sink } from '../disk/convert/sink';

const MiB = 1024 * 1024;
const SECTOR = 512;

/** The smallest part S3 accepts, except for the last part of an upload. */
export const MIN_PART_SIZE = 5 * MiB;
/** The most parts one upload can have. */
export const MAX_PARTS = 10_000;
/** The largest part S3 accepts. */
export const MAX_PART_SIZE = 5 * 1024 ** 3;

/** The part size {@link choosePartSize} starts from. */
const DEFAULT_MIN_PART_SIZE = 16 * MiB;
/** Parts {@link choosePartSize} plans for at most, leaving a tenth of the 10,000 as a margin. */
const PLANNED_PARTS = 9_000;

/** Room allowed for a stream-optimized VMDK's header and descriptor (a descriptor is under 1 KiB plus the file name). */
const VMDK_HEAD_ALLOWANCE = MiB;
const VMDK_GRAIN = 64 * 1024;
const VMDK_GRAIN_SECTORS = VMDK_GRAIN / SECTOR;
const VMDK_GT_ENTRIES = 512;
/**
 * zlib's bound on the deflate (zlib format) of one 64 KiB grain at the default window and memory
 * level: n + n/4096 + n/16384 + n/2^25 + 13 bytes, that is 65,569 (stored blocks, level 0, need
 * fewer). A grain on disk is a 12-byte marker and that stream, padded to a sector.
 */
const VMDK_GRAIN_BOUND =
  Math.ceil((12 + VMDK_GRAIN + (VMDK_GRAIN >> 12) + (VMDK_GRAIN >> 14) + (VMDK_GRAIN >> 25) + 13) / SECTOR) * SECTOR;
const VHD_BLOCK = 2 * MiB;

/**
 * The largest output a conversion of a disk of `virtualSize` bytes can produce, per target:
 * - `raw`: the virtual size;
 * - `vhd-fixed`: the size rounded up to a MiB, and the 512-byte footer;
 * - `vhd` (dynamic): footer copy, dynamic header, the block table, every 2 MiB block present with
 *   its 512-byte bitmap, and the footer;
 * - `vmdk` (stream-optimized): header and descriptor, every 64 KiB grain present with its marker
 *   and deflate's worst case (a few bytes per grain, stored data never grows by more), padded to a
 *   sector, every grain table with its marker, the grain directory, footer and end-of-stream
 *   markers.
 * Formats with a size limit (VHD: 2040 GiB; VMDK: 2 TiB of grain addresses) are refused by the
 * writers, not here.
 */
export function maxOutputSize(virtualSize: number, target: string): number {
  if (!Number.isSafeInteger(virtualSize) || virtualSize < 0) throw new RangeError(`invalid virtual size ${virtualSize}`);
  let size: number;
  switch (target) {
    case 'raw':
      size = virtualSize;
      break;
    case 'vhd-fixed':
      size = Math.ceil(virtualSize / MiB) * MiB + SECTOR;
      break;
    case 'vhd': {
      const blocks = Math.ceil(Math.ceil(virtualSize / MiB) * MiB / VHD_BLOCK);
      const bat = Math.ceil((blocks * 4) / SECTOR) * SECTOR;
      size = SECTOR + 1024 + bat + blocks * (SECTOR + VHD_BLOCK) + SECTOR;
      break;
    }
    case 'vmdk': {
      const grains = Math.ceil(Math.ceil(virtualSize / SECTOR) / VMDK_GRAIN_SECTORS);
      const tables = Math.ceil(grains / VMDK_GT_ENTRIES);
      const directory = Math.max(SECTOR, Math.ceil((tables * 4) / SECTOR) * SECTOR);
      const table = SECTOR + VMDK_GT_ENTRIES * 4;
      // head, grains, tables with markers, directory with marker, footer marker and header, end marker
      size = VMDK_HEAD_ALLOWANCE + grains * VMDK_GRAIN_BOUND + tables * table + SECTOR + directory + 2 * SECTOR + SECTOR;
      break;
    }
    default:
      throw new RangeError(`unknown conversion target ${String(target)}`);
  }
  if (!Number.isSafeInteger(size)) throw new RangeError(`a ${virtualSize}-byte disk gives an output too large to count`);
  return size;
}

/**
 * The part size for an output of at most `maxBytes`: a whole number of MiB, at least `minimum`
 * (16 MiB unless given, rounded up to a MiB, never under {@link MIN_PART_SIZE}), and large enough
 * that `maxBytes` fits in 9,000 parts, a tenth of the 10,000 kept as a margin. Any output under
 * about 43 TiB fits, so any disk under 16 TiB does in every target. Throws a RangeError when the
 * part would exceed {@link MAX_PART_SIZE}.
 */
export function choosePartSize(maxBytes: number, minimum: number = DEFAULT_MIN_PART_SIZE): number {
  if (!Number.isSafeInteger(maxBytes) || maxBytes < 0) throw new RangeError(`invalid output size ${maxBytes}`);
  if (!Number.isSafeInteger(minimum) || minimum < MIN_PART_SIZE || minimum > MAX_PART_SIZE) {
    throw new RangeError(`the minimum part size must be between ${MIN_PART_SIZE} and ${MAX_PART_SIZE} bytes, not ${minimum}`);
  }
  const floor = Math.ceil(minimum / MiB) * MiB;
  const needed = Math.ceil(Math.ceil(maxBytes / PLANNED_PARTS) / MiB) * MiB;
  const part = Math.max(floor, needed);
  if (part > MAX_PART_SIZE) {
    throw new RangeError(
      `an output of up to ${maxBytes} bytes needs parts of ${part} bytes to fit in ${PLANNED_PARTS} parts, ` +
        `more than the ${MAX_PART_SIZE} bytes S3 accepts in one part`,
    );
  }
  return part;
}

/** Where an upload stands: what a checkpoint stores (a plain JSON value). */
export interface S3SinkState {
  readonly bucket: string;
  readonly key: string;
  readonly uploadId: string;
  /** Size of every part but the last. */
  readonly partSize: number;
  /** The parts uploaded, numbered 1, 2, … in order. */
  readonly parts: ReadonlyArray<{ readonly PartNumber: number; readonly ETag: string }>;
  /** Bytes taken, the tail included: `parts.length * partSize + tail.length`. */
  readonly position: number;
}

/** Options of {@link S3MultipartSink.create}. */
export interface S3MultipartSinkOptions {
  readonly bucket: string;
  readonly key: string;
  /**
   * Size of every part but the last, in bytes: at least {@link MIN_PART_SIZE}, at most {@link
   * MAX_PART_SIZE} (see {@link choosePartSize}). One part is held in memory.
   */
  readonly partSize: number;
  /** The object's Content-Type. @default - S3's default (binary/octet-stream) */
  readonly contentType?: string;
  /** The object's user metadata (`x-amz-meta-*`). @default - none */
  readonly metadata?: Record<string, string>;
  /** The object's tags, URL-encoded (`a=1&b=2`). @default - none */
  readonly tagging?: string;
}

/** Why an upload failed. The `name` lets a state machine catch it. */
export type S3UploadErrorName = 'UploadAccessDenied' | 'UploadNotFound' | 'UploadFailed';

/** A request of the upload failed (after the client's own retries). */
export class S3UploadError extends Error {
  public constructor(
    public readonly name: S3UploadErrorName,
    message: string,
    public readonly bucket: string,
    public readonly key: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

type SinkStatus = 'open' | 'failed' | 'closed' | 'aborted';

/**
 * Output to one S3 object by multipart upload. Holds at most one part in memory (besides the
 * chunk being written); parts go up one at a time, each with its Content-Length, retried by the
 * client's retry policy (throttling, 5xx, dropped connections).
 *
 * A failed request leaves the sink failed: writes and checkpoints are refused, {@link close}
 * aborts the upload and throws, {@link abort} aborts it. Until then the parts already uploaded
 * stay, so that a conversion can resume from an earlier checkpoint.
 */
export class S3MultipartSink implements Sink {
  /** Starts a multipart upload of `s3://bucket/key` (CreateMultipartUpload). */
  public static async create(client: S3Client, options: S3MultipartSinkOptions): Promise<S3MultipartSink> {
    checkPartSize(options.partSize);
    const { bucket, key } = options;
    let res;
    try {
      res = await client.send(
        new CreateMultipartUploadCommand({
          Bucket: bucket,
          Key: key,
          ContentType: options.contentType,
          Metadata: options.metadata,
          Tagging: options.tagging,
        }),
      );
    } catch (e) {
      throw explain(e, bucket, key, 'starting the upload (CreateMultipartUpload)');
    }
    if (!res.UploadId) {
      throw new S3UploadError('UploadFailed', `s3://${bucket}/${key}: CreateMultipartUpload gave no upload id`, bucket, key);
    }
    return new S3MultipartSink(client, { bucket, key, uploadId: res.UploadId, partSize: options.partSize, parts: [], position: 0 }, Buffer.alloc(0));
  }

  /**
   * Continues an upload from a checkpoint: the state and the bytes taken but not yet uploaded
   * (less than a part). The state is checked against itself and the tail, and against the upload
   * (ListParts): every part it names must be there with its ETag and the part size. A state that
   * does not hold together, or an upload that is gone (aborted, completed, expired), is a
   * {@link CheckpointInvalid} error.
   */
  public static async resume(client: S3Client, state: S3SinkState, tail: Buffer): Promise<S3MultipartSink> {
    const s = checkSinkState(state, tail);
    const listed = new Map<number, { etag: string; size: number }>();
    let marker: string | undefined;
    // At most MAX_PARTS / 1000 pages; the bound also stops a server that keeps answering "truncated".
    for (let page = 0; page <= MAX_PARTS / 1000; page++) {
      let res;
      try {
        res = await client.send(
          new ListPartsCommand({ Bucket: s.bucket, Key: s.key, UploadId: s.uploadId, PartNumberMarker: marker }),
        );
      } catch (e) {
        const err = explain(e, s.bucket, s.key, `checking the upload ${s.uploadId} (ListParts)`);
        if (err instanceof S3UploadError && err.name === 'UploadNotFound') {
          throw new CheckpointInvalid(`${url(s)}: the upload ${s.uploadId} of the checkpoint no longer exists (aborted, completed or expired)`);
        }
        throw err;
      }
      for (const p of res.Parts ?? []) {
        if (p.PartNumber !== undefined) listed.set(p.PartNumber, { etag: unquote(p.ETag ?? ''), size: p.Size ?? -1 });
      }
      if (!res.IsTruncated || !res.NextPartNumberMarker || res.NextPartNumberMarker === marker) break;
      marker = res.NextPartNumberMarker;
    }
    for (const p of s.parts) {
      const got = listed.get(p.PartNumber);
      if (!got || got.etag !== unquote(p.ETag) || got.size !== s.partSize) {
        throw new CheckpointInvalid(
          `${url(s)}: part ${p.PartNumber} of the upload ${s.uploadId} is ${got ? `${got.size} bytes with ETag ${got.etag}` : 'missing'}` +
            `, not the ${s.partSize} bytes with ETag ${unquote(p.ETag)} that the checkpoint says`,
        );
      }
    }
    return new S3MultipartSink(client, s, tail);
  }

  public readonly bucket: string;
  public readonly key: string;
  public readonly uploadId: string;
  public readonly partSize: number;
  private status: SinkStatus = 'open';
  private failure: Error | undefined;
  private busy = false;
  private pos: number;
  private readonly parts: Array<{ PartNumber: number; ETag: string }>;
  /** The part being filled: allocated on first use, reused for every part. */
  private buffer: Buffer | undefined;
  private filled = 0;

  private constructor(
    private readonly client: S3Client,
    state: S3SinkState,
    tail: Buffer,
  ) {
    this.bucket = state.bucket;
    this.key = state.key;
    this.uploadId = state.uploadId;
    this.partSize = state.partSize;
    this.parts = state.parts.map((p) => ({ PartNumber: p.PartNumber, ETag: p.ETag }));
    this.pos = state.position;
    if (tail.length > 0) {
      this.buffer = Buffer.allocUnsafe(this.partSize);
      tail.copy(this.buffer, 0);
      this.filled = tail.length;
    }
  }


  /** Bytes taken so far, uploaded or buffered. */
  public get position(): number {
    return this.pos;
  }

  /** `s3://bucket/key`, for messages. */
  public get url(): string {
    return url(this);
  }

  /** The most bytes the upload can take: {@link MAX_PARTS} parts. */
  public get capacity(): number {
    return MAX_PARTS * this.partSize;
  }

  /** Takes `chunk`; every time a whole part is buffered, uploads it before returning. */
  public async write(chunk: Buffer): Promise<void> {
    await this.exclusive('write', async () => {
      if (this.pos + chunk.length > this.capacity) {
        throw new RangeError(
          `${this.url}: the output grows past ${this.capacity} bytes, the most ${MAX_PARTS} parts of ${this.partSize} bytes hold`,
        );
      }
      let at = 0;
      while (at < chunk.length) {
        if (this.filled === 0 && chunk.length - at >= this.partSize) {
          // A whole part inside the chunk goes up without a copy.
          await this.uploadPart(chunk.subarray(at, at + this.partSize));
          at += this.partSize;
          this.pos += this.partSize;
          continue;
        }
        this.buffer ??= Buffer.allocUnsafe(this.partSize);
        const n = Math.min(chunk.length - at, this.partSize - this.filled);
        chunk.copy(this.buffer, this.filled, at, at + n);
        this.filled += n;
        at += n;
        this.pos += n;
        if (this.filled === this.partSize) {
          await this.uploadPart(this.buffer);
          this.filled = 0;
        }
      }
    });
  }

  /**
   * The state and the tail (less than a part) to store with a checkpoint. Whole parts never stay
   * buffered (each goes up as soon as it is full), so this makes no request.
   */
  public async checkpoint(): Promise<{ state: S3SinkState; tail: Buffer<ArrayBuffer> }> {
    return this.exclusive('checkpoint', async () => ({
      state: {
        bucket: this.bucket,
        key: this.key,
        uploadId: this.uploadId,
        partSize: this.partSize,
        parts: this.parts.map((p) => ({ PartNumber: p.PartNumber, ETag: p.ETag })),
        position: this.pos,
      },
      tail: Buffer.from(this.buffer?.subarray(0, this.filled) ?? []),
    }));
  }

  /**
   * Uploads the last part and completes the upload (CompleteMultipartUpload, the parts in order).
   * An empty output becomes a zero-byte object (one empty part, as S3 needs at least one). On any
   * failure, and on a sink that failed before, aborts the upload and throws.
   */
  public async close(): Promise<void> {
    if (this.status === 'failed') {
      await this.abort();
      throw new S3UploadError(
        'UploadFailed',
        `${this.url}: the upload failed earlier and was aborted: ${this.failure?.message ?? 'unknown error'}`,
        this.bucket,
        this.key,
        { cause: this.failure },
      );
    }
    try {
      await this.exclusive('close', async () => {
        if (this.filled > 0 || this.parts.length === 0) {
          await this.uploadPart(this.buffer?.subarray(0, this.filled) ?? Buffer.alloc(0));
          this.filled = 0;
        }
        try {
          await this.client.send(
            new CompleteMultipartUploadCommand({
              Bucket: this.bucket,
              Key: this.key,
              UploadId: this.uploadId,
              MultipartUpload: { Parts: this.parts.map((p) => ({ PartNumber: p.PartNumber, ETag: p.ETag })) },
            }),
          );
        } catch (e) {
          throw explain(e, this.bucket, this.key, `completing the upload ${this.uploadId} (CompleteMultipartUpload)`);
        }
        this.status = 'closed';
        this.buffer = undefined;
      });
    } catch (e) {
      if (this.status !== 'closed') await this.abort().catch(() => undefined);
      throw e;
    }
  }

  /**
   * Abandons the output: AbortMultipartUpload, the buffer dropped. Idempotent; an upload already
   * gone counts as aborted; after {@link close} succeeded it does nothing (the object is complete).
   */
  public async abort(): Promise<void> {
    if (this.status === 'closed' || this.status === 'aborted') return;
    this.status = 'aborted';
    this.buffer = undefined;
    this.filled = 0;
    await abortUpload(this.client, this.bucket, this.key, this.uploadId);
  }

  /** Runs one operation at a time on an open sink; a failure leaves the sink failed. */
  private async exclusive<T>(what: string, op: () => Promise<T>): Promise<T> {
    if (this.status !== 'open') {
      throw new Error(`${this.url}: cannot ${what}, the sink is ${this.status}${this.failure ? ` (${this.failure.message})` : ''}`);
    }
    if (this.busy) throw new Error(`${this.url}: cannot ${what} while another operation of the sink is under way`);
    this.busy = true;
    try {
      return await op();
    } catch (e) {
      if (this.status === 'open') {
        this.status = 'failed';
        this.failure = e instanceof Error ? e : new Error(String(e));
      }
      throw e;
    } finally {
      this.busy = false;
    }
  }

  /** Uploads `body` as the next part. */
  private async uploadPart(body: Buffer): Promise<void> {
    const partNumber = this.parts.length + 1;
    let res;
    try {
      res = await this.client.send(
        new UploadPartCommand({
          Bucket: this.bucket,
          Key: this.key,
          UploadId: this.uploadId,
          PartNumber: partNumber,
          Body: body,
          ContentLength: body.length,
        }),
      );
    } catch (e) {
      throw explain(e, this.bucket, this.key, `uploading part ${partNumber} of the upload ${this.uploadId} (UploadPart)`);
    }
    if (!res.ETag) {
      throw new S3UploadError('UploadFailed', `${this.url}: UploadPart ${partNumber} gave no ETag`, this.bucket, this.key);
    }
    this.parts.push({ PartNumber: partNumber, ETag: res.ETag });
  }
}

/**
 * Aborts every multipart upload under `prefix` in `bucket` (ListMultipartUploads, page by page,
 * then AbortMultipartUpload for each). Returns the key of each upload aborted, in listing order
 * (a key appears once per upload). Uploads that vanish meanwhile are skipped. An empty prefix
 * means the whole bucket.
 */
export async function abortUploads(client: S3Client, bucket: string, prefix: string, options: { pageSize?: number } = {}): Promise<string[]> {
  const aborted: string[] = [];
  let keyMarker: string | undefined;
  let uploadIdMarker: string | undefined;
  for (;;) {
    let res;
    try {
      res = await client.send(
        new ListMultipartUploadsCommand({
          Bucket: bucket,
          Prefix: prefix,
          KeyMarker: keyMarker,
          UploadIdMarker: uploadIdMarker,
          MaxUploads: options.pageSize,
        }),
      );
    } catch (e) {
      throw explain(e, bucket, prefix, `listing the uploads under ${prefix || '/'} (ListMultipartUploads)`);
    }
    for (const u of res.Uploads ?? []) {
      if (!u.Key || !u.UploadId) continue;
      if (await abortUpload(client, bucket, u.Key, u.UploadId)) aborted.push(u.Key);
    }
    if (!res.IsTruncated) return aborted;
    const nextKey = res.NextKeyMarker;
    const nextId = res.NextUploadIdMarker;
    if (!nextKey || (nextKey === keyMarker && nextId === uploadIdMarker)) {
      throw new S3UploadError('UploadFailed', `s3://${bucket}/${prefix}: ListMultipartUploads is truncated but gives no next marker`, bucket, prefix);
    }
    keyMarker = nextKey;
    uploadIdMarker = nextId;
  }
}

/** A value of a stored state for a message; never throws (a stored object may have any shape). */
function shown(value: unknown): string {
  try {
    return JSON.stringify(value) ?? typeof value;
  } catch {
    return typeof value;
  }
}

/**
 * Checks a state read from a checkpoint against itself and its tail; returns it when it holds
 * together, else throws {@link CheckpointInvalid}. Never makes a request.
 */
export function checkSinkState(state: unknown, tail: Buffer): S3SinkState {
  const bad = (why: string): never => {
    throw new CheckpointInvalid(`the upload state of the checkpoint is invalid: ${why}`);
  };
  if (typeof state !== 'object' || state === null || Array.isArray(state)) return bad('not an object');
  const s = state as Record<string, unknown>;
  const text = (name: string): string => {
    const v = s[name];
    if (typeof v !== 'string' || v.length === 0 || v.length > 1024) bad(`${name} is not a non-empty string`);
    return v as string;
  };
  const bucket = text('bucket');
  const key = text('key');
  const uploadId = text('uploadId');
  const partSize = s.partSize;
  if (typeof partSize !== 'number' || !isPartSize(partSize)) return bad(`partSize ${shown(partSize)} is not a part size S3 accepts`);
  if (!Array.isArray(s.parts) || s.parts.length > MAX_PARTS) return bad(`parts is not a list of at most ${MAX_PARTS} parts`);
  const parts = s.parts.map((p: unknown, i: number) => {
    const part = (typeof p === 'object' && p !== null ? p : {}) as Record<string, unknown>;
    if (part.PartNumber !== i + 1) bad(`part ${i + 1} has the number ${shown(part.PartNumber)}`);
    if (typeof part.ETag !== 'string' || part.ETag.length === 0 || part.ETag.length > 1024) bad(`part ${i + 1} has no ETag`);
    return { PartNumber: i + 1, ETag: part.ETag as string };
  });
  const position = s.position;
  if (typeof position !== 'number' || !Number.isSafeInteger(position)) return bad(`position ${shown(position)} is not a whole number`);
  if (!Buffer.isBuffer(tail) || tail.length >= partSize) return bad(`a tail of ${tail?.length} bytes is not less than a part (${partSize} bytes)`);
  if (position !== parts.length * partSize + tail.length) {
    return bad(`position ${position} is not ${parts.length} parts of ${partSize} bytes and a tail of ${tail.length} bytes`);
  }
  if (position > MAX_PARTS * partSize) return bad(`position ${position} is past what ${MAX_PARTS} parts of ${partSize} bytes hold`);
  return { bucket, key, uploadId, partSize, parts, position };
}

/** AbortMultipartUpload; true when aborted, false when the upload was already gone. */
async function abortUpload(client: S3Client, bucket: string, key: string, uploadId: string): Promise<boolean> {
  try {
    await client.send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: key, UploadId: uploadId }));
    return true;
  } catch (e) {
    const err = explain(e, bucket, key, `aborting the upload ${uploadId} (AbortMultipartUpload)`);
    if (err instanceof S3UploadError && err.name === 'UploadNotFound') return false;
    throw err;
  }
}

function isPartSize(n: number): boolean {
  return Number.isSafeInteger(n) && n >= MIN_PART_SIZE && n <= MAX_PART_SIZE && n <= bufferConstants.MAX_LENGTH;
}

function checkPartSize(n: number): void {
  if (!isPartSize(n)) {
    throw new RangeError(
      `the part size must be a whole number of bytes between ${MIN_PART_SIZE} and ${Math.min(MAX_PART_SIZE, bufferConstants.MAX_LENGTH)}, not ${n}`,
    );
  }
}

function url(s: { bucket: string; key: string }): string {
  return `s3://${s.bucket}/${s.key}`;
}

function unquote(etag: string): string {
  return etag.replace(/"/g, '');
}

/** Turns the SDK's errors into {@link S3UploadError}s that name the object and the request. */
function explain(e: unknown, bucket: string, key: string, doing: string): Error {
  const err = e as { name?: string; Code?: string; $metadata?: { httpStatusCode?: number }; message?: string };
  const status = err.$metadata?.httpStatusCode;
  const code = err.name ?? err.Code;
  const what = `s3://${bucket}/${key}`;
  if (code === 'NoSuchUpload') {
    return new S3UploadError('UploadNotFound', `${what}: ${doing}: the upload no longer exists (aborted, completed or expired)`, bucket, key, { cause: e });
  }
  if (code === 'AccessDenied' || code === 'Forbidden' || status === 403) {
    return new S3UploadError(
      'UploadAccessDenied',
      `${what}: ${doing}: access denied (403): the caller needs s3:PutObject and s3:AbortMultipartUpload on it ` +
        '(s3:ListMultipartUploadParts to resume, s3:ListBucketMultipartUploads to list), and kms:GenerateDataKey and kms:Decrypt ' +
        'on its key when the bucket uses SSE-KMS',
      bucket,
      key,
      { cause: e },
    );
  }
  if (code === 'NoSuchBucket') {
    return new S3UploadError('UploadFailed', `${what}: ${doing}: the bucket ${bucket} does not exist`, bucket, key, { cause: e });
  }
  const message = err.message ?? String(e);
  return new S3UploadError('UploadFailed', `${what}: ${doing} failed: ${code ? `${code}: ` : ''}${message}`, bucket, key, { cause: e });
}
