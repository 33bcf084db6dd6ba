/**
 * The first step of the import workflow ("Read options"): reads what started the import (an S3
 * `Object Created` event or a manual input), the sidecar `<key>.vmie.json` and the `vmie:*` tags
 * of the object, merges them with the construct's defaults, checks the result against the
 * documented rules, and computes the client token and the AMI name. Its result is `$.request`.
 *
 * Cost: one GetObjectTagging and one GetObject (the sidecar) per import, plus one HeadObject per
 * disk object whose version or ETag the input did not give.
 */
// The SDK is bundled into the Lambda assets by esbuild, hence a dev dependency.
// eslint-disable-next-line import/no-extraneous-dependencies
import { GetObjectCommand, GetObjectTaggingCommand, HeadObjectCommand, type S3Client, type Tag } from '@aws-sdk/client-s3';
import { ClientCache } from './client-cache';
import { InvalidImportOptionsError, NotAnImageError, awsErrorInfo, transientOf } from './errors';
import { importTrigger, keyCandidates, unquote, unwrap } from './events';
import {
  defaultAmiName,
  importClientToken,
  mergeOptions,
  optionsFromTags,
  parseOptions,
  parseOptionsJson,
  validateOptions,
  type ImportOptions,
} from './import-options';
import { log } from './log';
import type { ImportRequest, SourceRef } from './payload';
import { createS3Client } from '../aws/s3';
import { S3ObjectError } from '../aws/s3-source';

/** The suffix of the sidecar object that carries options for the object it is named after. */
export const SIDECAR_SUFFIX = '.vmie.json';
/** The environment variable holding the construct's default options (JSON of ImportOptions). */
export const DEFAULTS_VARIABLE = 'VMIE_IMPORT_DEFAULTS';
/** The environment variable holding the key prefix under which the workflow stages its own files. */
export const STAGING_PREFIX_VARIABLE = 'VMIE_STAGING_PREFIX';
/** The largest sidecar read (options are a few hundred bytes). */
export const MAX_SIDECAR_BYTES = 64 * 1024;

const s3Clients = /* @__PURE__ */ new ClientCache<S3Client>(
  (region) => createS3Client(region ? { region } : {}),
  ['AWS_ENDPOINT_URL_S3', 'AWS_ENDPOINT_URL'],
);

/**
 * The prepare handler. Input: the task payload `{ state: <execution input>, execution }` (or the
 * execution input itself). Output: the {@link ImportRequest}.
 */
export async function prepare(event: unknown): Promise<ImportRequest> {
  return prepareWith(s3Clients.get(), event);
}

/** {@link prepare} with a given S3 client. */
export async function prepareWith(client: S3Client, event: unknown): Promise<ImportRequest> {
  const { state, execution } = unwrap(event);
  const trigger = importTrigger(state);
  if (trigger.source.key.endsWith(SIDECAR_SUFFIX)) {
    throw new NotAnImageError(
      `s3://${trigger.source.bucket}/${trigger.source.key} is an options sidecar, not an image: upload the image itself (the sidecar is read from <image key>${SIDECAR_SUFFIX})`,
    );
  }
  const staging = process.env[STAGING_PREFIX_VARIABLE];
  const staged = trigger.disks.find((d) => staging && d.key.startsWith(staging));
  if (staged) {
    throw new NotAnImageError(`s3://${staged.bucket}/${staged.key} lies under ${staging}, where the workflow stages its own files: it is not an upload to import`);
  }
  // The tags of the source object; reading them also finds the object (and its key, when an
  // event delivered it URL-encoded).
  const { source, tags } = await readTags(client, trigger.source, trigger.fromEvent);
  // Every disk pinned by its version or ETag (one HeadObject for those the input did not pin),
  // so that the client token changes when an object does.
  const pinned = (ref: SourceRef) => (ref.versionId || ref.etag ? Promise.resolve(ref) : pin(client, ref));
  const disks = await Promise.all(trigger.disks.map((d) => pinned(sameObject(d, trigger.source) ? { ...d, key: source.key } : d)));
  const pinnedSource = disks.find((d) => sameObject(d, source)) ?? (await pinned(source));

  const where = `s3://${source.bucket}/${source.key}`;
  const defaults = readDefaults();
  const sidecar = await readSidecar(client, source.bucket, `${source.key}${SIDECAR_SUFFIX}`);
  const fromTags = optionsFromTags(tags, `the tags of ${where}`);
  const manual = parseOptions(trigger.options, 'the input "options"');
  const region = process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION;
  const options = validateOptions(mergeOptions(defaults, sidecar, fromTags, manual), { region });

  const clientToken = importClientToken(disks);
  const name = options.amiName ?? defaultAmiName(source.key, clientToken);
  const request: ImportRequest = { source: pinnedSource, disks, options, clientToken, name };
  log('info', 'import prepared', {
    execution: execution?.id,
    source: `s3://${source.bucket}/${source.key}`,
    disks: disks.length,
    mode: options.mode ?? 'image',
    name,
    clientToken,
    layers: {
      defaults: Object.keys(defaults),
      sidecar: sidecar ? Object.keys(sidecar) : null,
      tags: Object.keys(fromTags),
      input: Object.keys(manual),
    },
  });
  return request;
}

function sameObject(a: SourceRef, b: SourceRef): boolean {
  return a.bucket === b.bucket && a.key === b.key;
}

/** The construct's defaults from the environment. */
function readDefaults(): ImportOptions {
  const text = process.env[DEFAULTS_VARIABLE];
  if (text === undefined || text.trim() === '') return {};
  return parseOptionsJson(text, `the construct defaults (${DEFAULTS_VARIABLE})`);
}

/** Reads the object's tags, trying the decoded key when an event's key is not found. */
async function readTags(client: S3Client, ref: SourceRef, fromEvent: boolean): Promise<{ source: SourceRef; tags: Tag[] }> {
  const keys = fromEvent ? keyCandidates(ref.key) : [ref.key];
  for (let i = 0; ; i++) {
    const key = keys[i];
    try {
      const version = ref.versionId ? { VersionId: ref.versionId } : {};
      const out = await client.send(new GetObjectTaggingCommand({ Bucket: ref.bucket, Key: key, ...version }));
      return { source: { ...ref, key }, tags: out.TagSet ?? [] };
    } catch (e) {
      if (isNotFound(e) && i + 1 < keys.length) continue;
      throw s3Error(e, ref.bucket, key, ref.versionId, 's3:GetObjectTagging');
    }
  }
}

/** Completes a disk reference with its version id and ETag (one HeadObject), so the client token pins its content. */
async function pin(client: S3Client, ref: SourceRef): Promise<SourceRef> {
  try {
    const version = ref.versionId ? { VersionId: ref.versionId } : {};
    const head = await client.send(new HeadObjectCommand({ Bucket: ref.bucket, Key: ref.key, ...version }));
    const versionId = ref.versionId ?? (head.VersionId && head.VersionId !== 'null' ? head.VersionId : undefined);
    const etag = head.ETag ? unquote(head.ETag) : ref.etag;
    return { bucket: ref.bucket, key: ref.key, ...(versionId ? { versionId } : {}), ...(etag ? { etag } : {}) };
  } catch (e) {
    throw s3Error(e, ref.bucket, ref.key, ref.versionId, 's3:GetObject');
  }
}

/**
 * Reads the sidecar options; undefined when there is none. The object is read only when its
 * length is at most {@link MAX_SIDECAR_BYTES}, and the read stops there whatever the body holds.
 */
async function readSidecar(client: S3Client, bucket: string, key: string): Promise<ImportOptions | undefined> {
  const where = `s3://${bucket}/${key}`;
  const tooLarge = () => new InvalidImportOptionsError(`${where} is larger than ${MAX_SIDECAR_BYTES} bytes: a sidecar holds a JSON object of import options`);
  let text: string;
  try {
    const out = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
    const body = out.Body as (AsyncIterable<Uint8Array> & { destroy?: () => void }) | undefined;
    if (out.ContentLength === undefined || out.ContentLength > MAX_SIDECAR_BYTES) {
      body?.destroy?.();
      throw tooLarge();
    }
    const chunks: Buffer[] = [];
    let length = 0;
    for await (const chunk of body ?? []) {
      length += chunk.length;
      if (length > MAX_SIDECAR_BYTES) {
        body?.destroy?.();
        throw tooLarge();
      }
      chunks.push(Buffer.from(chunk));
    }
    text = Buffer.concat(chunks).toString('utf-8');
  } catch (e) {
    if (e instanceof InvalidImportOptionsError) throw e;
    if (isNotFound(e)) return undefined;
    throw s3Error(e, bucket, key, undefined, 's3:GetObject');
  }
  return parseOptionsJson(text, `the sidecar ${where}`);
}

function isNotFound(e: unknown): boolean {
  const info = awsErrorInfo(e);
  return info.code === 'NoSuchKey' || info.code === 'NotFound' || info.status === 404;
}

/** Names the object in S3 errors, as the validate step does. */
function s3Error(e: unknown, bucket: string, key: string, versionId: string | undefined, action: string): Error {
  const info = awsErrorInfo(e);
  const what = `s3://${bucket}/${key}${versionId ? ` (version ${versionId})` : ''}`;
  if (info.code === 'NoSuchBucket') return new S3ObjectError('ObjectNotFound', `bucket ${bucket} does not exist (reading ${what})`, bucket, key);
  if (isNotFound(e) || info.code === 'NoSuchVersion') return new S3ObjectError('ObjectNotFound', `${what} does not exist`, bucket, key);
  if (info.code === 'AccessDenied' || info.code === 'Forbidden' || info.status === 403) {
    return new S3ObjectError('AccessDenied', `access to ${what} was denied (403): the caller needs ${action} on it`, bucket, key);
  }
  return transientOf(e, `${action} ${what}`) ?? (e instanceof Error ? e : new Error(String(e)));
}
