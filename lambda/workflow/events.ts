/**
 * The shapes of the inputs the workflow handlers meet besides their task payload: the S3
 * `Object Created` event (EventBridge) that starts an import, the manual start input, and the
 * Step Functions `Execution Status Change` event that triggers clean-up after a timeout or abort.
 */
import { InvalidInputError } from './errors';
import type { ExecutionInfo, SourceRef } from './payload';

/** The manual start input of an import. */
export interface ManualImportInput {
  readonly bucket?: string;
  readonly key?: string;
  readonly versionId?: string;
  /** The disk objects of one VM, boot disk first. @default - the one object `bucket`/`key` */
  readonly disks?: ReadonlyArray<{ readonly bucket: string; readonly key: string; readonly versionId?: string }>;
  /** The highest layer of import options. */
  readonly options?: unknown;
}

/** What starts an import, once read from either input shape. */
export interface ImportTrigger {
  /** The object that started the import. */
  readonly source: SourceRef;
  /** The disk objects, boot disk first. */
  readonly disks: readonly SourceRef[];
  /** Options given with a manual start. */
  readonly options?: unknown;
  /** True when the input was an S3 event (its key may need URL-decoding; see {@link keyCandidates}). */
  readonly fromEvent: boolean;
}

/** The S3 `Object Created` event as EventBridge delivers it (the fields used here). */
export interface S3ObjectCreatedEvent {
  readonly 'source': 'aws.s3';
  readonly 'detail-type': 'Object Created';
  readonly 'detail': {
    readonly bucket: { readonly name: string };
    readonly object: { readonly 'key': string; readonly 'size'?: number; readonly 'etag'?: string; readonly 'version-id'?: string };
  };
}

/** The Step Functions `Execution Status Change` event (the fields used here). */
export interface ExecutionStatusChangeEvent {
  readonly 'source': 'aws.states';
  readonly 'detail-type': 'Step Functions Execution Status Change';
  readonly 'detail': {
    readonly executionArn: string;
    readonly status: string;
    /** Epoch milliseconds. */
    readonly startDate?: number;
    /** Epoch milliseconds. */
    readonly stopDate?: number | null;
    readonly name?: string;
    /** The execution input, as JSON text. */
    readonly input?: string | null;
  };
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function nonEmpty(v: unknown): v is string {
  return typeof v === 'string' && v !== '';
}

/** True when `event` is an S3 `Object Created` event delivered by EventBridge. */
export function isS3ObjectCreatedEvent(event: unknown): event is S3ObjectCreatedEvent {
  return isObject(event) && event.source === 'aws.s3' && event['detail-type'] === 'Object Created' && isObject(event.detail);
}

/** True when `event` is a Step Functions `Execution Status Change` event. */
export function isExecutionStatusChangeEvent(event: unknown): event is ExecutionStatusChangeEvent {
  return isObject(event) && event.source === 'aws.states' && event['detail-type'] === 'Step Functions Execution Status Change' && isObject(event.detail);
}

/**
 * The handler input without the task wrapper: a task payload `{ state, execution }` gives its
 * state; anything else is returned as it is (a direct invocation).
 */
export function unwrap(event: unknown): { state: unknown; execution?: ExecutionInfo } {
  if (isObject(event) && 'state' in event && isObject(event.execution)) {
    return { state: event.state, execution: executionOf(event.execution) };
  }
  return { state: event };
}

/** Checks the `execution` of a task payload. */
export function executionOf(value: unknown): ExecutionInfo {
  if (!isObject(value) || !nonEmpty(value.id) || !nonEmpty(value.name) || !nonEmpty(value.startTime)) {
    throw new InvalidInputError(`the task payload needs "execution": { id, name, startTime } (strings), got ${JSON.stringify(value)}`);
  }
  return { id: value.id, name: value.name, startTime: value.startTime };
}

/**
 * Reads what starts an import from the execution input: an S3 `Object Created` event or a manual
 * `{ bucket, key, versionId?, disks?, options? }`.
 */
export function importTrigger(input: unknown): ImportTrigger {
  if (isS3ObjectCreatedEvent(input)) {
    const d = input.detail as unknown as Record<string, unknown>;
    const bucket = isObject(d.bucket) ? d.bucket.name : undefined;
    const object: Record<string, unknown> = isObject(d.object) ? d.object : {};
    if (!nonEmpty(bucket) || !nonEmpty(object.key)) {
      throw new InvalidInputError(`the S3 "Object Created" event needs detail.bucket.name and detail.object.key, got ${JSON.stringify(d).slice(0, 300)}`);
    }
    const source: SourceRef = {
      bucket,
      key: object.key,
      ...(nonEmpty(object['version-id']) ? { versionId: object['version-id'] } : {}),
      ...(nonEmpty(object.etag) ? { etag: unquote(object.etag) } : {}),
    };
    return { source, disks: [source], fromEvent: true };
  }
  if (!isObject(input)) {
    throw new InvalidInputError(`the import input must be an S3 "Object Created" event or { bucket, key, versionId?, disks?, options? }, got ${JSON.stringify(input)}`);
  }
  const m = input as ManualImportInput;
  let disks: SourceRef[] | undefined;
  if (m.disks !== undefined) {
    if (!Array.isArray(m.disks) || m.disks.length === 0) throw new InvalidInputError('"disks" must be a non-empty list of { bucket, key, versionId? }');
    disks = m.disks.map((d, i) => ref(d, `disks[${i}]`));
  }
  const hasSource = m.bucket !== undefined || m.key !== undefined;
  if (!hasSource && !disks) {
    throw new InvalidInputError(`the import input needs "bucket" and "key" (or "disks"), got ${JSON.stringify(input).slice(0, 300)}`);
  }
  const source = hasSource ? ref(m, 'the import input') : disks![0];
  return { source, disks: disks ?? [source], ...(m.options !== undefined ? { options: m.options } : {}), fromEvent: false };
}

function ref(v: unknown, where: string): SourceRef {
  if (!isObject(v) || !nonEmpty(v.bucket) || !nonEmpty(v.key)) {
    throw new InvalidInputError(`${where} needs "bucket" and "key" (non-empty strings), got ${JSON.stringify(v)}`);
  }
  if (v.versionId !== undefined && !nonEmpty(v.versionId)) throw new InvalidInputError(`${where}: "versionId" must be a non-empty string`);
  return { bucket: v.bucket, key: v.key, ...(v.versionId ? { versionId: v.versionId as string } : {}) };
}

/** An ETag without its quotes. */
export function unquote(etag: string): string {
  return etag.replace(/^"(.*)"$/, '$1');
}

/**
 * The keys to try for a key taken from an S3 event. EventBridge delivers the key as it is, but
 * S3 notifications of other kinds URL-encode it (`red flower.jpg` -> `red+flower.jpg`), so a key
 * that is not found is tried once more decoded.
 */
export function keyCandidates(key: string): string[] {
  const out = [key];
  if (/[%+]/.test(key)) {
    try {
      const decoded = decodeURIComponent(key.replace(/\+/g, ' '));
      if (decoded !== key) out.push(decoded);
    } catch {
      // Not URL-encoded after all.
    }
  }
  return out;
}
