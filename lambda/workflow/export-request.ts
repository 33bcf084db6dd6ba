/**
 * The export workflow's state data: the execution input, the slots each step writes, and the
 * checks and derivations that do not need AWS (input validation, the export bucket's encryption,
 * the client token, the key of the exported object).
 *
 * The state data of an export execution is the execution input (`imageId` or `instanceId`, and the
 * options) plus one slot per step: `$.bucket` (GetBucketEncryption of the export bucket, by an SDK
 * task), `$.preflight`, `$.export`, `$.status`, and on failure `$.error` and `$.failure`.
 */
import { createHash } from 'node:crypto';
import { InvalidInputError } from './errors';
import { EXECUTION_TAG, type CaughtError, type ExecutionInfo, type TaskPayload } from './payload';

export { EXECUTION_TAG } from './payload';

/** The disk image format of an export task (DiskImageFormat). */
export type ExportFormat = 'VMDK' | 'VHD' | 'RAW';
/** The formats the input may ask for (`OVA` = an OVA container holding a VMDK, instance exports only). */
export type RequestedFormat = ExportFormat | 'OVA';
/** What is exported: an AMI (ExportImage) or an instance (CreateInstanceExportTask). */
export type ExportKind = 'image' | 'instance';
/** The virtualization environment an instance is exported for. */
export type TargetEnvironment = 'vmware' | 'citrix' | 'microsoft';

/** The execution input of the export workflow. */
export interface ExportInput {
  /** The AMI to export (exclusive with `instanceId`). */
  readonly imageId?: string;
  /** The instance to export (exclusive with `imageId`). */
  readonly instanceId?: string;
  /**
   * The format of the exported file.
   * @default env VMIE_DEFAULT_FORMAT (VMDK for an AMI when it says OVA), else VMDK for an AMI and,
   * for an instance, OVA when exported for vmware, VHD otherwise
   */
  readonly format?: string;
  /** The environment an instance is exported for (instance exports only). @default vmware */
  readonly targetEnvironment?: string;
  /** The key prefix of the exported object. @default env VMIE_EXPORT_PREFIX, else `exports/` */
  readonly prefix?: string;
  /** The description of the export task (at most 255 characters). */
  readonly description?: string;
  /** Tags of the export task. */
  readonly tags?: Record<string, string>;
}

/** `$.preflight`: what the export will be, once every checkable constraint passed. */
export interface ExportPreflight {
  readonly kind: ExportKind;
  /** The DiskImageFormat of the task (VMDK inside an OVA when `containerFormat` is `ova`). */
  readonly format: ExportFormat;
  /** `ova` when the instance is exported as an OVA. */
  readonly containerFormat?: 'ova';
  /** The environment an instance is exported for. */
  readonly targetEnvironment?: TargetEnvironment;
  /** The export bucket. */
  readonly bucket: string;
  /** The key prefix of the exported object. */
  readonly prefix: string;
  /** The size of the exported volumes, in GiB. */
  readonly sizeGiB: number;
  /** How many volumes the image or instance has. */
  readonly volumes: number;
}

/** `$.export`: the started export task. */
export interface ExportStarted {
  readonly kind: ExportKind;
  /** `export-ami-…` or `export-i-…`. */
  readonly exportTaskId: string;
  /** The export bucket. */
  readonly bucket: string;
  /** The key the exported file is written to (`<prefix><task id>.<format>`). */
  readonly key: string;
  /** When the task was started (ISO 8601). */
  readonly startedAt: string;
}

/** `$.status`: the export task completed. */
export interface ExportCompleted {
  readonly status: 'completed';
  /** The exported file. */
  readonly object: { readonly bucket: string; readonly key: string };
  /** The size of the exported file, when known. */
  readonly sizeBytes?: number;
}

/** `$.failure`: what the clean-up found and did. */
export interface ExportFailure {
  /** Why the export failed. */
  readonly reason: string;
  /** What helps. */
  readonly remedy: string;
  /** The error name (`ExportNotPossible`, `States.Timeout`, `TIMED_OUT`, …). */
  readonly error: string;
  /** The export tasks that were cancelled. */
  readonly cancelledTasks: string[];
  /** Seconds from the start of the execution, when known. */
  readonly durationSeconds?: number;
}

/** The state data every export task sees (the input plus the slots written so far). */
export interface ExportState extends ExportInput {
  readonly bucket?: unknown;
  readonly preflight?: ExportPreflight;
  readonly export?: ExportStarted;
  readonly status?: ExportCompleted;
  readonly error?: CaughtError;
}

/** The payload of every export Lambda task. */
export type ExportTaskPayload = TaskPayload<ExportState>;

/** The export asked for, validated and with its defaults filled in. */
export interface ExportRequest {
  readonly kind: ExportKind;
  /** The AMI or instance id. */
  readonly sourceId: string;
  readonly format: ExportFormat;
  readonly containerFormat?: 'ova';
  readonly targetEnvironment?: TargetEnvironment;
  readonly prefix: string;
  readonly description?: string;
  readonly tags: Readonly<Record<string, string>>;
}

const IMAGE_ID = /^ami-[0-9a-f]{8,17}$/;
const INSTANCE_ID = /^i-[0-9a-f]{8,17}$/;
const IMAGE_FORMATS: readonly RequestedFormat[] = ['VMDK', 'VHD', 'RAW'];
const INSTANCE_FORMATS: readonly RequestedFormat[] = ['VMDK', 'VHD', 'RAW', 'OVA'];
const ENVIRONMENTS: readonly TargetEnvironment[] = ['vmware', 'citrix', 'microsoft'];
/** EC2 allows 50 tags per resource; one is the execution tag. */
const MAX_USER_TAGS = 49;
const MAX_PREFIX = 512;
const MAX_DESCRIPTION = 255;

/** The default key prefix of exported objects. */
export const DEFAULT_PREFIX = 'exports/';

/** Checks the payload's shape and returns its state and execution. */
export function payloadOf(event: unknown): ExportTaskPayload {
  if (!isObject(event) || !isObject(event.state)) {
    throw new InvalidInputError('the payload needs "state" (the state data) and "execution" ({ id, name, startTime })');
  }
  return { state: event.state as ExportState, execution: executionOf(event.execution) };
}

/** Checks the execution reference of a payload. */
export function executionOf(value: unknown): ExecutionInfo {
  if (!isObject(value) || typeof value.id !== 'string' || value.id === '' || typeof value.name !== 'string' || value.name === '') {
    throw new InvalidInputError(`"execution" needs "id" and "name" (strings), got ${short(value)}`);
  }
  if (value.startTime !== undefined && typeof value.startTime !== 'string') {
    throw new InvalidInputError('"execution.startTime" must be an ISO 8601 string');
  }
  return { id: value.id, name: value.name, startTime: typeof value.startTime === 'string' ? value.startTime : '' };
}

/** Validates the execution input and fills in the defaults. */
export function exportRequestOf(input: ExportInput, env: NodeJS.ProcessEnv = process.env): ExportRequest {
  if (!isObject(input)) throw new InvalidInputError('the input must be an object with "imageId" or "instanceId"');
  const { imageId, instanceId } = input;
  if ((imageId === undefined) === (instanceId === undefined)) {
    throw new InvalidInputError('the input needs exactly one of "imageId" (an AMI) or "instanceId" (an instance)');
  }
  const kind: ExportKind = imageId !== undefined ? 'image' : 'instance';
  const sourceId = kind === 'image' ? imageId : instanceId;
  if (typeof sourceId !== 'string' || !(kind === 'image' ? IMAGE_ID : INSTANCE_ID).test(sourceId)) {
    throw new InvalidInputError(kind === 'image'
      ? `"imageId" must be an AMI id (ami-…), got ${short(imageId)}`
      : `"instanceId" must be an instance id (i-…), got ${short(instanceId)}`);
  }

  let targetEnvironment: TargetEnvironment | undefined;
  if (input.targetEnvironment !== undefined) {
    if (kind === 'image') throw new InvalidInputError('"targetEnvironment" applies to instance exports only');
    const env_ = typeof input.targetEnvironment === 'string' ? input.targetEnvironment.toLowerCase() : '';
    if (!ENVIRONMENTS.includes(env_ as TargetEnvironment)) {
      throw new InvalidInputError(`"targetEnvironment" must be one of ${ENVIRONMENTS.join(', ')}, got ${short(input.targetEnvironment)}`);
    }
    targetEnvironment = env_ as TargetEnvironment;
  } else if (kind === 'instance') {
    targetEnvironment = 'vmware';
  }

  let format: RequestedFormat;
  if (input.format === undefined) {
    format = defaultFormat(kind, targetEnvironment, env);
  } else {
    const f = typeof input.format === 'string' ? input.format.toUpperCase() : '';
    const allowed = kind === 'image' ? IMAGE_FORMATS : INSTANCE_FORMATS;
    if (!allowed.includes(f as RequestedFormat)) {
      throw new InvalidInputError(kind === 'image' && f === 'OVA'
        ? '"format" OVA applies to instance exports only: an AMI is exported as VMDK, VHD or RAW'
        : `"format" must be one of ${allowed.join(', ')} for ${kind === 'image' ? 'an AMI' : 'an instance'}, got ${short(input.format)}`);
    }
    format = f as RequestedFormat;
  }

  const prefix = input.prefix ?? env.VMIE_EXPORT_PREFIX ?? DEFAULT_PREFIX;
  if (typeof prefix !== 'string' || prefix.length > MAX_PREFIX || prefix.startsWith('/') || /[\u0000-\u001f\u007f]/.test(prefix)) {
    throw new InvalidInputError(`"prefix" must be a key prefix of at most ${MAX_PREFIX} characters, without a leading "/" or control characters, got ${short(prefix)}`);
  }

  if (input.description !== undefined && (typeof input.description !== 'string' || input.description.length > MAX_DESCRIPTION)) {
    throw new InvalidInputError(`"description" must be a string of at most ${MAX_DESCRIPTION} characters`);
  }

  return {
    kind,
    sourceId,
    format: format === 'OVA' ? 'VMDK' : format,
    ...(format === 'OVA' ? { containerFormat: 'ova' as const } : {}),
    ...(targetEnvironment ? { targetEnvironment } : {}),
    prefix,
    ...(input.description !== undefined ? { description: input.description } : {}),
    tags: tagsOf(input.tags),
  };
}

/** The format when the input names none: the configured default, else the usual one of each kind. */
function defaultFormat(kind: ExportKind, targetEnvironment: TargetEnvironment | undefined, env: NodeJS.ProcessEnv): RequestedFormat {
  const configured = env.VMIE_DEFAULT_FORMAT?.toUpperCase();
  if (configured) {
    if (!INSTANCE_FORMATS.includes(configured as RequestedFormat)) {
      throw new Error(`VMIE_DEFAULT_FORMAT must be one of ${INSTANCE_FORMATS.join(', ')}, got "${env.VMIE_DEFAULT_FORMAT}"`);
    }
    // An AMI is exported as a disk image: an OVA default means its disk format, VMDK.
    return kind === 'image' && configured === 'OVA' ? 'VMDK' : configured as RequestedFormat;
  }
  return kind === 'image' ? 'VMDK' : targetEnvironment === 'vmware' ? 'OVA' : 'VHD';
}

function tagsOf(tags: unknown): Record<string, string> {
  if (tags === undefined) return {};
  if (!isObject(tags) || Array.isArray(tags)) throw new InvalidInputError('"tags" must be an object of string keys and values');
  const entries = Object.entries(tags);
  if (entries.length > MAX_USER_TAGS) throw new InvalidInputError(`"tags" has ${entries.length} tags; at most ${MAX_USER_TAGS} are allowed`);
  for (const [key, value] of entries) {
    if (key.length < 1 || key.length > 128) throw new InvalidInputError(`tag key ${short(key)} must be 1 to 128 characters`);
    if (/^aws:/i.test(key)) throw new InvalidInputError(`tag key ${short(key)}: the "aws:" prefix is reserved`);
    if (key === EXECUTION_TAG) throw new InvalidInputError(`tag key "${EXECUTION_TAG}" is set by the workflow`);
    if (typeof value !== 'string' || value.length > 256) throw new InvalidInputError(`tag ${short(key)} needs a string value of at most 256 characters`);
  }
  return { ...(tags as Record<string, string>) };
}

/** The export bucket, from the environment. */
export function exportBucketOf(env: NodeJS.ProcessEnv = process.env): string {
  const bucket = env.VMIE_EXPORT_BUCKET;
  if (!bucket) throw new Error('VMIE_EXPORT_BUCKET is not set: the export handlers need the name of the export bucket');
  return bucket;
}

/** The most export tasks that may be active at once, from the environment. @default 5 */
export function maxExportTasksOf(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env.VMIE_MAX_EXPORT_TASKS;
  if (raw === undefined || raw === '') return 5;
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n < 1 || n > 1000) throw new Error(`VMIE_MAX_EXPORT_TASKS must be a whole number from 1 to 1000, got "${raw}"`);
  return n;
}

/**
 * The reason the export bucket cannot take exports, from `$.bucket` (the GetBucketEncryption
 * answer, or `{ error }` when the bucket has no encryption configuration), or undefined when it
 * can. VM Export rejects SSE-KMS buckets (DSSE-KMS included); SSE-S3 and no encryption are fine.
 * Field names are matched without regard to case (the SDK task answers in PascalCase).
 */
export function bucketEncryptionProblem(bucketSlot: unknown, bucket: string): { reason: string; remedy: string } | undefined {
  if (!isObject(bucketSlot) || field(bucketSlot, 'error') !== undefined) return undefined;
  const config = field(bucketSlot, 'ServerSideEncryptionConfiguration');
  const rules = isObject(config) ? field(config, 'Rules') : undefined;
  if (!Array.isArray(rules)) return undefined;
  for (const rule of rules) {
    const byDefault = isObject(rule) ? field(rule, 'ApplyServerSideEncryptionByDefault') : undefined;
    const algorithm = isObject(byDefault) ? field(byDefault, 'SSEAlgorithm') : undefined;
    if (typeof algorithm === 'string' && algorithm.toLowerCase().startsWith('aws:kms')) {
      return {
        reason: `the export bucket ${bucket} encrypts with ${algorithm} by default, and VM Export rejects buckets encrypted with SSE-KMS`,
        remedy: 'Use an export bucket with SSE-S3 (AES256) default encryption, such as the one this library creates.',
      };
    }
  }
  return undefined;
}

/** The ClientToken of an ExportImage call: the same execution always asks for the same task. */
export function exportClientToken(execution: ExecutionInfo, request: ExportRequest): string {
  return createHash('sha256').update(`vmie-export|${execution.name}|${request.sourceId}|${request.format}|${request.prefix}`).digest('hex');
}

/** The file extension of an export: the container's when there is one, else the disk format's. */
export function exportExtension(format: ExportFormat, containerFormat?: 'ova'): string {
  return containerFormat ?? format.toLowerCase();
}

/** The documented key of the exported object: `<prefix><task id>.<format>`. */
export function exportObjectKey(prefix: string, exportTaskId: string, format: ExportFormat, containerFormat?: 'ova'): string {
  return `${prefix}${exportTaskId}.${exportExtension(format, containerFormat)}`;
}

/** Seconds since the execution started, when its start is known. */
export function durationSince(startTime: string | undefined, now = Date.now()): number | undefined {
  if (!startTime) return undefined;
  const start = Date.parse(startTime);
  return Number.isFinite(start) ? Math.max(0, Math.round((now - start) / 1000)) : undefined;
}

export function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null;
}

/** A field of `obj` by name, in any case. */
function field(obj: Record<string, unknown>, name: string): unknown {
  if (name in obj) return obj[name];
  const lower = name.toLowerCase();
  const key = Object.keys(obj).find((k) => k.toLowerCase() === lower);
  return key === undefined ? undefined : obj[key];
}

/** A value for a message, cut short. */
export function short(value: unknown): string {
  const text = value === undefined ? 'nothing' : JSON.stringify(value) ?? String(value);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}
