/**
 * The convert step of the import workflow, and its tidy-up.
 *
 * `handler` converts the disks of an image that VM Import would not take as it is into
 * stream-optimized VMDK objects under the execution's staging prefix, through S3 multipart uploads.
 * It works until its time budget is nearly spent, then checkpoints (which disk, the converter's
 * state, the upload's id, parts and ETags, and the bytes not yet uploaded) to one S3 object and
 * returns `done: false`; the state machine invokes it again with what it returned, and it resumes
 * where it stopped. Any size works: each invocation does as much as fits in its time.
 *
 * The units of work are the disks: each object given, or each disk inside an OVA. Disks that are
 * already in a format VM Import takes (raw, fixed or dynamic VHD, VHDX, stream-optimized VMDK, not
 * compressed) are passed on as they are when they are objects of their own; disks inside an OVA
 * are always converted (an import names objects, not members of a package).
 *
 * `tidy` aborts the execution's staged uploads and deletes its staged objects and checkpoint; on
 * success it also tags the source objects `vmie:processed=true` (so a lifecycle rule can expire
 * them). It takes the workflow's payload, or the EventBridge event of an execution that timed out
 * or was aborted.
 */
// The SDK is bundled into the Lambda assets by esbuild, hence a dev dependency.
// eslint-disable-next-line import/no-extraneous-dependencies
import { DeleteObjectsCommand, GetObjectTaggingCommand, ListObjectsV2Command, PutObjectTaggingCommand, type S3Client } from '@aws-sdk/client-s3';
import type { Context } from 'aws-lambda';
import type { ObjectRead } from './validate';
import { loadCheckpoint, saveCheckpoint, deleteCheckpoint } from '../aws/checkpoint-store';
import { createS3Client } from '../aws/s3';
import { abortUploads, choosePartSize, maxOutputSize, S3MultipartSink, S3UploadError, type S3SinkState } from '../aws/s3-sink';
import { S3ObjectError, S3Source } from '../aws/s3-source';
import { convertResumable, type ConvertCheckpoint, type Sink } from '../disk/convert';
import { openForConversion, type ConversionInput } from '../disk/convert-source';
import type { DiskImage } from '../disk/image';
import { isTar, openOva } from '../disk/ova';
import type { ByteSource } from '../disk/source';
import { InvalidInputError } from '../workflow/errors';
import type { ConversionSlot, ImportDisk } from '../workflow/payload';

/** One S3 object as the validate step read it. */
export type DiskObject = Pick<ObjectRead, 'bucket' | 'key' | 'versionId' | 'etag'> & { readonly size?: number };

/** The `$.conversion` slot of the state: the input of each invocation, and its output. */
export type ConversionState = Omit<ConversionSlot, 'disks'> & { readonly disks: readonly DiskObject[] };

/** What a checkpoint object holds (with the upload's unsent bytes as its tail). */
interface CheckpointDoc {
  readonly version: 1;
  /** The unit (disk) being converted. */
  readonly unit: number;
  readonly outputs: ImportDisk[];
  /** The converter's state, when a unit was paused in the middle. */
  readonly convert?: ConvertCheckpoint;
  readonly sink?: S3SinkState;
}


/** Time kept in reserve at the end of an invocation: drain the compressors, upload a part, checkpoint. */
const RESERVE_MS = 90_000;

let cached: { key: string; client: S3Client } | undefined;
function s3(): S3Client {
  const key = `${process.env.AWS_ENDPOINT_URL_S3 ?? process.env.AWS_ENDPOINT_URL ?? ''}|${process.env.AWS_REGION ?? ''}`;
  if (cached?.key !== key) {
    cached?.client.destroy();
    cached = { key, client: createS3Client() };
  }
  return cached.client;
}

interface Payload<S> {
  readonly state?: S;
  readonly execution?: { readonly id?: string; readonly name?: string; readonly startTime?: string };
}

/** Converts (part of) the image; returns the next `$.conversion`. */
export async function handler(event: Payload<{ conversion?: ConversionState }>, context?: Pick<Context, 'getRemainingTimeInMillis'>): Promise<ConversionState> {
  const conv = checkConversion(event?.state?.conversion);
  const client = s3();
  const budget = context ? () => context.getRemainingTimeInMillis() : deadlineFromEnv();
  const checkpointRef = { bucket: conv.outputBucket, key: `${conv.outputPrefix}checkpoint` };

  let doc: CheckpointDoc = { version: 1, unit: 0, outputs: [] };
  let tail = Buffer.alloc(0);
  if (conv.checkpoint) {
    const loaded = await loadCheckpoint(client, conv.checkpoint);
    doc = loaded.json as CheckpointDoc;
    tail = loaded.tail;
    if (doc?.version !== 1 || !Number.isSafeInteger(doc.unit) || !Array.isArray(doc.outputs)) {
      throw Object.assign(new Error(`the checkpoint s3://${conv.checkpoint.bucket}/${conv.checkpoint.key} is not one this step wrote`), { name: 'CheckpointInvalid' });
    }
  }

  try {
    return await convertUnits(client, conv, doc, tail, budget, checkpointRef);
  } catch (e) {
    throw transient(e);
  }
}

/** Converts the units from the checkpoint's on; returns the next `$.conversion`. */
async function convertUnits(
  client: S3Client,
  conv: ConversionState,
  doc: CheckpointDoc,
  tail: Buffer,
  budget: () => number,
  checkpointRef: { bucket: string; key: string },
): Promise<ConversionState> {
  const units = await listUnits(client, conv.disks);
  const outputs = [...doc.outputs];
  for (let u = doc.unit; u < units.length; u++) {
    const unit = units[u];
    const resuming = u === doc.unit ? doc : undefined;
    if (!resuming?.convert && budget() < RESERVE_MS) {
      return pause(client, conv, checkpointRef, { version: 1, unit: u, outputs }, Buffer.alloc(0), u, units.length, 0, 0);
    }
    const input = await unit.open();
    try {
      if (unit.passThrough && isImportable(input)) {
        outputs.push({ bucket: unit.object.bucket, key: unit.object.key, format: importFormat(input.image) });
        continue;
      }
      const key = `${conv.outputPrefix}disk-${u + 1}.vmdk`;
      const sink = resuming?.sink
        ? await S3MultipartSink.resume(client, resuming.sink, tail)
        : await S3MultipartSink.create(client, {
          bucket: conv.outputBucket,
          key,
          partSize: choosePartSize(maxOutputSize(input.image.virtualSize, 'vmdk')),
          contentType: 'application/octet-stream',
        });
      const started = Date.now();
      // The upload outlives a failed invocation, so that a retry resumes from the last checkpoint;
      // the failure path's tidy-up aborts every upload of the execution.
      const kept: Sink = {
        get position() {
          return sink.position;
        },
        write: (c) => sink.write(c),
        close: () => sink.close(),
        abort: async () => undefined,
      };
      const result = await convertResumable(input.image, 'vmdk', kept, {
        ...(resuming?.convert ? { resume: resuming.convert } : {}),
        shouldPause: () => budget() < RESERVE_MS,
        vmdk: { fileName: key.slice(key.lastIndexOf('/') + 1) },
      });
      if (!result.done) {
        const { state, tail: rest } = await sink.checkpoint();
        log({ message: 'conversion paused', unit: u, bytesDone: result.bytesDone, total: input.image.virtualSize, ms: Date.now() - started });
        const paused: CheckpointDoc = { version: 1, unit: u, outputs, convert: result.checkpoint, sink: state };
        return await pause(client, conv, checkpointRef, paused, rest, u, units.length, result.bytesDone, input.image.virtualSize);
      }
      log({ message: 'disk converted', unit: u, output: `s3://${conv.outputBucket}/${key}`, bytesWritten: result.result.bytesWritten, ms: Date.now() - started });
      outputs.push({ bucket: conv.outputBucket, key, format: 'VMDK' });
      tail = Buffer.alloc(0);
    } finally {
      await input.close();
    }
  }
  if (conv.checkpoint) await deleteCheckpoint(client, conv.checkpoint);
  const { checkpoint: _dropped, ...rest } = conv;
  return { ...rest, done: true, outputs, progress: { unit: units.length, units: units.length, bytesDone: 0, total: 0 } };
}

/**
 * A failed upload request (5xx or a dropped connection after the client's own retries) is
 * `Transient`: the state machine retries the step, which resumes from the last checkpoint.
 */
function transient(e: unknown): unknown {
  if (e instanceof S3UploadError && e.name === 'UploadFailed') {
    return Object.assign(new Error(`${e.message} (the step is retried from its last checkpoint)`, { cause: e }), { name: 'Transient' });
  }
  return e;
}

async function pause(
  client: S3Client,
  conv: ConversionState,
  ref: { bucket: string; key: string },
  doc: CheckpointDoc,
  tail: Buffer,
  unit: number,
  units: number,
  bytesDone: number,
  total: number,
): Promise<ConversionState> {
  await saveCheckpoint(client, ref, doc, tail);
  return { ...conv, done: false, checkpoint: ref, progress: { unit, units, bytesDone, total } };
}

/** A disk to convert or pass on. */
interface Unit {
  readonly object: DiskObject;
  /** Whether the unit is an object of its own (it can be imported as it is when its format allows). */
  readonly passThrough: boolean;
  open(): Promise<ConversionInput>;
}

/** The disks of the objects, in order: an OVA contributes each of its disks. */
async function listUnits(client: S3Client, disks: readonly DiskObject[]): Promise<Unit[]> {
  const units: Unit[] = [];
  for (const object of disks) {
    const source = await openObject(client, object);
    const head = await source.read(0, 512);
    if (isTar(head)) {
      const ova = await openOva(source);
      for (const disk of ova.disks) {
        if (!disk.source || disk.chunked) {
          throw Object.assign(new Error(`s3://${object.bucket}/${object.key}: the disk ${disk.fileName} of the OVA is ${disk.chunked ? 'chunked' : 'missing'}; repackage the OVA with whole disk files.`), { name: 'UnsupportedImage' });
        }
        const member: ByteSource = disk.source;
        units.push({ object, passThrough: false, open: () => openForConversion(member) });
      }
    } else {
      units.push({ object, passThrough: true, open: async () => openForConversion(await openObject(client, object)) });
    }
  }
  return units;
}

async function openObject(client: S3Client, object: DiskObject): Promise<S3Source> {
  const source = await S3Source.open(client, object.bucket, object.key, object.versionId ? { versionId: object.versionId } : {});
  if (object.etag && source.etag && object.etag !== source.etag) {
    throw new S3ObjectError('ObjectChanged', `s3://${object.bucket}/${object.key} changed since it was validated (ETag ${source.etag}, was ${object.etag}); start the import again.`, object.bucket, object.key);
  }
  return source;
}

function isImportable(input: ConversionInput): boolean {
  if (input.compression) return false;
  const { format, subformat } = input.image;
  return format === 'raw'
    || (format === 'vhd' && (subformat === 'fixed' || subformat === 'dynamic'))
    || (format === 'vhdx' && (subformat === 'fixed' || subformat === 'dynamic'))
    || (format === 'vmdk' && subformat === 'streamOptimized');
}

function importFormat(image: DiskImage): ImportDisk['format'] {
  switch (image.format) {
    case 'vhd': return 'VHD';
    case 'vhdx': return 'VHDX';
    case 'vmdk': return 'VMDK';
    default: return 'RAW';
  }
}

function checkConversion(c: ConversionState | undefined): ConversionState {
  if (!c || typeof c !== 'object') throw new InvalidInputError('the input needs state.conversion (the plan of the conversion)');
  if (!Array.isArray(c.disks) || c.disks.length === 0) throw new InvalidInputError('state.conversion.disks must be a non-empty list of { bucket, key }');
  for (const [i, d] of c.disks.entries()) {
    if (typeof d?.bucket !== 'string' || typeof d?.key !== 'string') throw new InvalidInputError(`state.conversion.disks[${i}] needs a bucket and a key`);
  }
  if (c.target !== 'vmdk') throw new InvalidInputError(`state.conversion.target must be 'vmdk', got ${JSON.stringify(c.target)}`);
  if (typeof c.outputBucket !== 'string' || typeof c.outputPrefix !== 'string' || !c.outputPrefix.endsWith('/')) {
    throw new InvalidInputError('state.conversion needs outputBucket and an outputPrefix ending with /');
  }
  return c;
}

/** Without a Lambda context (a local run), the budget comes from VMIE_TIME_BUDGET_MS, else it is unbounded. */
function deadlineFromEnv(): () => number {
  const ms = Number(process.env.VMIE_TIME_BUDGET_MS ?? '');
  const end = Number.isFinite(ms) && ms > 0 ? Date.now() + ms : Number.POSITIVE_INFINITY;
  return () => end - Date.now();
}

function log(entry: Record<string, unknown>): void {
  console.log(JSON.stringify(entry));
}

/** The input of `tidy`: the workflow's payload, or the status-change event of a timed out or aborted execution. */
export interface TidyEvent extends Payload<{
  request?: { disks?: readonly DiskObject[] };
  result?: unknown;
  conversion?: ConversionState;
  error?: unknown;
  failure?: unknown;
}> {
  readonly detail?: { readonly executionArn?: string; readonly name?: string; readonly status?: string };
}

/** What `tidy` did. */
export interface TidyResult {
  readonly abortedUploads: string[];
  readonly deletedObjects: number;
  readonly taggedProcessed: string[];
}

/** Removes the execution's staged files; on success marks the source objects processed. */
export async function tidy(event: TidyEvent): Promise<TidyResult> {
  const bucket = process.env.VMIE_IMPORT_BUCKET;
  const staging = process.env.VMIE_STAGING_PREFIX ?? '.vmie/';
  if (!bucket) throw new InvalidInputError('VMIE_IMPORT_BUCKET is not set');
  const name = event?.execution?.name ?? event?.detail?.name ?? event?.detail?.executionArn?.split(':').pop();
  if (!name) throw new InvalidInputError('the input names no execution (execution.name, or detail.executionArn of a status-change event)');
  const client = s3();
  const prefix = `${staging}converted/${name}/`;
  const abortedUploads = await abortUploads(client, bucket, prefix);
  let deletedObjects = 0;
  let token: string | undefined;
  do {
    const page = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }));
    const keys = (page.Contents ?? []).map((o) => ({ Key: o.Key! }));
    if (keys.length > 0) {
      await client.send(new DeleteObjectsCommand({ Bucket: bucket, Delete: { Objects: keys, Quiet: true } }));
      deletedObjects += keys.length;
    }
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
  const taggedProcessed: string[] = [];
  const state = event?.state;
  // Only an import that made its AMI marks its images processed (a lifecycle rule may expire
  // them); a failure, a duplicate that deferred to another execution, or a timeout does not.
  const succeeded = state !== undefined && state.result !== undefined
    && state.error === undefined && state.failure === undefined && event.detail === undefined;
  if (succeeded) {
    for (const d of state.request?.disks ?? []) {
      if (d.bucket !== bucket) continue;
      const tags = await client.send(new GetObjectTaggingCommand({ Bucket: d.bucket, Key: d.key, VersionId: d.versionId }));
      const others = (tags.TagSet ?? []).filter((t) => t.Key !== 'vmie:processed');
      if (others.length >= 10) {
        log({ message: 'not tagged processed: the object already has 10 tags', object: `s3://${d.bucket}/${d.key}` });
        continue;
      }
      await client.send(new PutObjectTaggingCommand({
        Bucket: d.bucket,
        Key: d.key,
        VersionId: d.versionId,
        Tagging: { TagSet: [...others, { Key: 'vmie:processed', Value: 'true' }] },
      }));
      taggedProcessed.push(`s3://${d.bucket}/${d.key}`);
    }
  }
  log({ message: 'tidied', execution: name, abortedUploads, deletedObjects, taggedProcessed });
  return { abortedUploads, deletedObjects, taggedProcessed };
}
