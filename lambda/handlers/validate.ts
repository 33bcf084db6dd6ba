/**
 * The validate step of the import workflow: inspects the uploaded image in S3 (headers only) and
 * says whether VM Import takes it as it is, needs it converted, or cannot take it at all.
 *
 * Input: `{ bucket, key, versionId? }` for one object (a disk image or an OVA), or
 * `{ disks: [{ bucket, key, versionId? }, ...] }` for the disk objects of one VM, boot disk first,
 * or the workflow's task payload `{ state: { request: { disks } }, execution }`.
 * Output: the verdict, the disks to import when importable as is, and the whole inspection report. An image that cannot be imported even
 * after conversion fails the step with an error named `UnsupportedImage`, whose message carries
 * the worst findings and their remedies; a missing or unreadable object fails with
 * `ObjectNotFound` or `AccessDenied`.
 */
// The SDK is bundled into the Lambda assets by esbuild, hence a dev dependency.
// eslint-disable-next-line import/no-extraneous-dependencies
import type { S3Client } from '@aws-sdk/client-s3';
import { createS3Client } from '../aws/s3';
import { S3Source } from '../aws/s3-source';
import { UnsupportedImageError } from '../disk/errors';
import type { Finding } from '../disk/findings';
import { inspect, inspectDisks, type ImportFormat, type InspectionReport } from '../disk/inspect';
import { InvalidInputError } from '../workflow/errors';
import type { ImportDisk } from '../workflow/payload';

export { InvalidInputError } from '../workflow/errors';
/** The prepare step of the import workflow, bundled with validate (both read S3). */
export { prepare } from '../workflow/prepare';

/** One S3 object. */
export interface ObjectRef {
  readonly bucket: string;
  readonly key: string;
  readonly versionId?: string;
}

/** The input of the validate step. */
export type ValidateEvent =
  | ObjectRef
  | { readonly disks: readonly ObjectRef[] }
  | { readonly state: { readonly request: { readonly disks: readonly ObjectRef[] } }; readonly execution: unknown };

/** An object as it was read: its version and ETag pin what later steps must use. */
export interface ObjectRead extends ObjectRef {
  readonly size: number;
  readonly etag?: string;
}

/** The output of the validate step. */
export interface ValidateResult {
  /** VM Import takes the image as it is. */
  readonly importable: boolean;
  /** The image must be converted first (the conversion writes stream-optimized VMDK). */
  readonly needsConversion: boolean;
  /** The Format for ImportImage (after conversion, when it needs one). */
  readonly importFormat?: ImportFormat;
  /** What the input is (`vmdk`, `ova`, `gzip`, …). */
  readonly format: string;
  /** Size of the boot disk in bytes, when known. */
  readonly virtualSize?: number;
  /** How the boot disk boots, when it could be told (the BootMode for ImportImage). */
  readonly bootMode?: 'legacy-bios' | 'uefi';
  /** The objects read, in order (one, or the disk objects of the VM). */
  readonly objects: readonly ObjectRead[];
  /** The disks to import, in order, with their Format: present when the image is importable as it is. */
  readonly importDisks?: readonly ImportDisk[];
  /** The codes of every finding, worst first. */
  readonly findingCodes: readonly string[];
  /** The whole inspection report. */
  readonly report: InspectionReport;
}

/** The longest message an UnsupportedImage error carries (Step Functions keeps the cause short). */
const MAX_MESSAGE = 4000;

let cachedClient: { key: string; client: S3Client } | undefined;

/** One client per container, remade only when the endpoint or Region in the environment changes. */
function s3Client(): S3Client {
  const key = `${process.env.AWS_ENDPOINT_URL_S3 ?? process.env.AWS_ENDPOINT_URL ?? ''}|${process.env.AWS_REGION ?? ''}`;
  if (cachedClient?.key !== key) {
    cachedClient?.client.destroy();
    cachedClient = { key, client: createS3Client() };
  }
  return cachedClient.client;
}

/** Inspects the object(s) of `event`. */
export async function handler(event: ValidateEvent): Promise<ValidateResult> {
  const refs = objectsOf(event);
  const client = s3Client();
  const sources: S3Source[] = [];
  try {
    for (const ref of refs) {
      sources.push(await S3Source.open(client, ref.bucket, ref.key, ref.versionId ? { versionId: ref.versionId } : {}));
    }
    const report = sources.length === 1 ? await inspect(sources[0], { name: refs[0].key }) : await inspectDisks(sources);
    const objects = sources.map((s) => ({
      bucket: s.bucket,
      key: s.key,
      size: s.size,
      ...(s.versionId ? { versionId: s.versionId } : {}),
      ...(s.etag ? { etag: s.etag } : {}),
    }));
    console.log(JSON.stringify({
      message: 'image inspected',
      objects: objects.map((o) => `s3://${o.bucket}/${o.key}`),
      format: report.format,
      importable: report.importable,
      needsConversion: report.needsConversion,
      findings: report.findings.map((f) => f.code),
      bytesRead: report.bytesRead,
      requests: report.requests,
      durationMs: report.durationMs,
    }));
    if (!report.importable && !report.needsConversion) {
      throw unsupported(objects, report);
    }
    return {
      importable: report.importable,
      needsConversion: report.needsConversion,
      ...(report.importFormat ? { importFormat: report.importFormat } : {}),
      format: report.format,
      ...(report.virtualSize !== undefined ? { virtualSize: report.virtualSize } : {}),
      ...(report.bootMode ? { bootMode: report.bootMode } : {}),
      objects,
      ...(report.importable ? { importDisks: importDisksOf(objects, report) } : {}),
      findingCodes: report.findings.map((f) => f.code),
      report,
    };
  } finally {
    await Promise.all(sources.map((s) => s.close()));
  }
}

function objectsOf(event: ValidateEvent): ObjectRef[] {
  if (event && typeof event === 'object' && 'state' in event) {
    const disks = (event.state as { request?: { disks?: unknown } } | undefined)?.request?.disks;
    if (!Array.isArray(disks) || disks.length === 0) {
      throw new InvalidInputError('the task payload needs "state.request.disks" (written by the prepare step)');
    }
    return disks.map((d, i) => checkRef(d as ObjectRef, `state.request.disks[${i}]`));
  }
  if (event && typeof event === 'object' && 'disks' in event) {
    if (!Array.isArray(event.disks) || event.disks.length === 0) {
      throw new InvalidInputError('"disks" must be a non-empty list of { bucket, key } objects');
    }
    return event.disks.map((d, i) => checkRef(d, `disks[${i}]`));
  }
  return [checkRef(event as ObjectRef, 'the input')];
}

function checkRef(ref: ObjectRef, where: string): ObjectRef {
  if (!ref || typeof ref.bucket !== 'string' || ref.bucket === '' || typeof ref.key !== 'string' || ref.key === '') {
    throw new InvalidInputError(`${where} needs a "bucket" and a "key" (strings), got ${JSON.stringify(ref)}`);
  }
  if (ref.versionId !== undefined && typeof ref.versionId !== 'string') {
    throw new InvalidInputError(`${where}: "versionId" must be a string`);
  }
  return { bucket: ref.bucket, key: ref.key, ...(ref.versionId ? { versionId: ref.versionId } : {}) };
}

/** The disk containers of an importable image: the OVA itself, or each disk object with its own Format. */
function importDisksOf(objects: readonly ObjectRead[], report: InspectionReport): ImportDisk[] {
  if (objects.length === 1) {
    const format = report.importFormat;
    return format ? [{ bucket: objects[0].bucket, key: objects[0].key, format }] : [];
  }
  return objects.map((o, i) => {
    const format = report.disks[i]?.importFormat ?? report.importFormat;
    if (!format) throw new Error(`disk ${i} (s3://${o.bucket}/${o.key}) is importable but has no Format`);
    return { bucket: o.bucket, key: o.key, format };
  });
}

/** The error that stops the workflow: the worst findings, each with its remedy. */
function unsupported(objects: readonly ObjectRead[], report: InspectionReport): UnsupportedImageError {
  const what = objects.map((o) => `s3://${o.bucket}/${o.key}`).join(', ');
  const errors = report.findings.filter((f) => f.severity === 'error');
  const lines = errors.slice(0, 5).map((f: Finding) => `[${f.code}]${f.disk !== undefined ? ` (disk ${f.disk})` : ''} ${f.message} Fix: ${f.remedy}`);
  if (errors.length > 5) lines.push(`... and ${errors.length - 5} more`);
  let message = `${what} cannot be imported: ${lines.join(' | ')}`;
  if (message.length > MAX_MESSAGE) message = `${message.slice(0, MAX_MESSAGE - 3)}...`;
  return new UnsupportedImageError(message, errors[0]?.code ?? 'UNSUPPORTED_IMAGE', {
    format: report.format,
    ...(report.subformat ? { subformat: report.subformat } : {}),
    ...(report.virtualSize !== undefined ? { virtualSize: report.virtualSize } : {}),
  });
}
