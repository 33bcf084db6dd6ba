/**
 * A conversion checkpoint kept in S3 as one object: a JSON document given by the caller (where the
 * conversion stands, the upload's state) and a binary tail (the output bytes taken but not yet
 * uploaded, up to a part).
 *
 * Byte layout (integers little-endian):
 *
 * | offset     | size | field                                                     |
 * |------------|------|-----------------------------------------------------------|
 * | 0          | 8    | magic `VMIECKPT`                                          |
 * | 8          | 4    | version, 1                                                |
 * | 12         | 4    | J, length of the JSON text in bytes (at most 16 MiB)      |
 * | 16         | 8    | T, length of the tail in bytes (at most 5 GiB)            |
 * | 24         | J    | the JSON text, UTF-8                                      |
 * | 24 + J     | T    | the tail                                                  |
 * | 24 + J + T | 32   | SHA-256 of every byte before it                           |
 *
 * The object is exactly 56 + J + T bytes. Anything else (missing, shorter or longer, another
 * magic or version, a digest that does not match, JSON that does not parse) is a
 * {@link CheckpointInvalid} error: a damaged checkpoint is never half-used.
 */
import { constants as bufferConstants } from 'node:buffer';
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
// The SDK is bundled into the Lambda assets and the vmie command by esbuild, hence a dev dependency.
// eslint-disable-next-line import/no-extraneous-dependencies
import { DeleteObjectCommand, GetObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';

/** `VMIECKPT`. */
export const CHECKPOINT_MAGIC = Buffer.from('VMIECKPT', 'latin1');
/** The layout version written. */
export const CHECKPOINT_VERSION = 1;
/** The longest JSON text a checkpoint holds. */
export const MAX_CHECKPOINT_JSON = 16 * 1024 * 1024;
/** The longest tail a checkpoint holds: a part of the largest size, within what a buffer can hold. */
export const MAX_CHECKPOINT_TAIL = Math.min(5 * 1024 ** 3, bufferConstants.MAX_LENGTH - MAX_CHECKPOINT_JSON - 1024);

const HEADER = 24;
const DIGEST = 32;

/** Where a checkpoint is kept. */
export interface CheckpointLocation {
  readonly bucket: string;
  readonly key: string;
}

/** The checkpoint is missing, damaged, or does not fit the upload it describes. */
export class CheckpointInvalid extends Error {
  public constructor(message: string) {
    super(message);
    this.name = 'CheckpointInvalid';
  }
}

/** The bytes of a checkpoint of `json` and `tail` (see the layout above). */
export function encodeCheckpoint(json: unknown, tail: Buffer): Buffer {
  const text = JSON.stringify(json);
  if (text === undefined) throw new TypeError('a checkpoint needs a JSON value (not undefined or a function)');
  const body = Buffer.from(text, 'utf8');
  if (body.length > MAX_CHECKPOINT_JSON) {
    throw new RangeError(`the checkpoint's JSON is ${body.length} bytes, more than ${MAX_CHECKPOINT_JSON}`);
  }
  if (tail.length > MAX_CHECKPOINT_TAIL) {
    throw new RangeError(`the checkpoint's tail is ${tail.length} bytes, more than ${MAX_CHECKPOINT_TAIL}`);
  }
  const head = Buffer.alloc(HEADER);
  CHECKPOINT_MAGIC.copy(head, 0);
  head.writeUInt32LE(CHECKPOINT_VERSION, 8);
  head.writeUInt32LE(body.length, 12);
  head.writeBigUInt64LE(BigInt(tail.length), 16);
  const digest = createHash('sha256').update(head).update(body).update(tail).digest();
  return Buffer.concat([head, body, tail, digest]);
}

/**
 * Reads the bytes of a checkpoint; `where` names it in messages. Throws {@link CheckpointInvalid}
 * unless they are exactly a checkpoint of this layout. The tail is a view of `bytes`.
 */
export function decodeCheckpoint<T extends ArrayBufferLike>(bytes: Buffer<T>, where = 'the checkpoint'): { json: unknown; tail: Buffer<T> } {
  const bad = (why: string): never => {
    throw new CheckpointInvalid(`${where} is damaged: ${why}`);
  };
  if (bytes.length < HEADER + DIGEST) return bad(`${bytes.length} bytes are fewer than a checkpoint's ${HEADER + DIGEST}`);
  if (!bytes.subarray(0, 8).equals(CHECKPOINT_MAGIC)) return bad('it does not start with VMIECKPT');
  const version = bytes.readUInt32LE(8);
  if (version !== CHECKPOINT_VERSION) return bad(`layout version ${version} is not ${CHECKPOINT_VERSION}`);
  const jsonLength = bytes.readUInt32LE(12);
  const tailLength = bytes.readBigUInt64LE(16);
  if (jsonLength > MAX_CHECKPOINT_JSON) return bad(`a JSON text of ${jsonLength} bytes is longer than ${MAX_CHECKPOINT_JSON}`);
  if (tailLength > BigInt(MAX_CHECKPOINT_TAIL)) return bad(`a tail of ${tailLength} bytes is longer than ${MAX_CHECKPOINT_TAIL}`);
  const expected = HEADER + jsonLength + Number(tailLength) + DIGEST;
  if (bytes.length !== expected) return bad(`it is ${bytes.length} bytes where its lengths say ${expected}`);
  const end = expected - DIGEST;
  const digest = createHash('sha256').update(bytes.subarray(0, end)).digest();
  if (!digest.equals(bytes.subarray(end))) return bad('its SHA-256 does not match');
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(HEADER, HEADER + jsonLength)));
  } catch (e) {
    return bad(`its JSON does not parse: ${(e as Error).message}`);
  }
  return { json, tail: bytes.subarray(HEADER + jsonLength, end) };
}

/** Stores a checkpoint of `json` (any JSON value) and `tail` as one object (PutObject), replacing any before. */
export async function saveCheckpoint(client: S3Client, where: CheckpointLocation, json: unknown, tail: Buffer): Promise<void> {
  const body = encodeCheckpoint(json, tail);
  await client.send(
    new PutObjectCommand({
      Bucket: where.bucket,
      Key: where.key,
      Body: body,
      ContentLength: body.length,
      ContentType: 'application/octet-stream',
    }),
  );
}

/** Whole GetObject attempts when a response body breaks off. */
const LOAD_ATTEMPTS = 3;

/**
 * Reads the checkpoint at `where` (one GetObject; again, up to 3 times in all, when the body
 * breaks off). A missing or damaged checkpoint is a {@link CheckpointInvalid} error; other
 * failures (access denied, a body that keeps breaking) are plain errors, which a retry may cure.
 */
export async function loadCheckpoint(client: S3Client, where: CheckpointLocation): Promise<{ json: unknown; tail: Buffer<ArrayBuffer> }> {
  const name = `the checkpoint s3://${where.bucket}/${where.key}`;
  let failure = '';
  for (let attempt = 0; attempt < LOAD_ATTEMPTS; attempt++) {
    try {
      return decodeCheckpoint(await fetchOnce(client, where, name), name);
    } catch (e) {
      if (!(e instanceof BodyFailure)) throw e;
      failure = e.message;
    }
  }
  throw new Error(`${name}: reading it failed ${LOAD_ATTEMPTS} times: ${failure}`);
}

/** The body of a response broke off. */
class BodyFailure extends Error {}

/** One GetObject of the whole checkpoint, its size checked before anything is allocated. */
async function fetchOnce(client: S3Client, where: CheckpointLocation, name: string): Promise<Buffer<ArrayBuffer>> {
  let res;
  try {
    res = await client.send(new GetObjectCommand({ Bucket: where.bucket, Key: where.key }));
  } catch (e) {
    const err = e as { name?: string; $metadata?: { httpStatusCode?: number } };
    if (err.name === 'NoSuchKey' || err.name === 'NotFound' || err.$metadata?.httpStatusCode === 404) {
      throw new CheckpointInvalid(`${name} does not exist`);
    }
    throw e;
  }
  const limit = HEADER + MAX_CHECKPOINT_JSON + MAX_CHECKPOINT_TAIL + DIGEST;
  const declared = res.ContentLength;
  const body = res.Body as Readable | undefined;
  if (declared !== undefined && (!Number.isSafeInteger(declared) || declared < 0 || declared > limit)) {
    body?.destroy();
    throw new CheckpointInvalid(`${name} is damaged: ${declared} bytes are more than a checkpoint can hold`);
  }
  // With a declared length the body goes straight into one buffer of that size.
  const into = declared !== undefined ? Buffer.allocUnsafe(declared) : undefined;
  const chunks: Buffer[] = [];
  let got = 0;
  if (body) {
    try {
      for await (const chunk of body as AsyncIterable<Buffer>) {
        if (got + chunk.length > (declared ?? limit)) {
          throw new CheckpointInvalid(`${name} is damaged: its body runs past ${declared ?? limit} bytes`);
        }
        if (into) chunk.copy(into, got);
        else chunks.push(chunk);
        got += chunk.length;
      }
    } catch (e) {
      if (e instanceof CheckpointInvalid) throw e;
      throw new BodyFailure(`the response broke off after ${got} bytes: ${(e as Error).message}`);
    } finally {
      body.destroy();
    }
  }
  if (declared !== undefined && got < declared) {
    throw new BodyFailure(`the response ended after ${got} of ${declared} bytes`);
  }
  return into ?? Buffer.concat(chunks, got);
}

/** Deletes the checkpoint at `where` (DeleteObject); a missing checkpoint is not an error. */
export async function deleteCheckpoint(client: S3Client, where: CheckpointLocation): Promise<void> {
  await client.send(new DeleteObjectCommand({ Bucket: where.bucket, Key: where.key }));
}
