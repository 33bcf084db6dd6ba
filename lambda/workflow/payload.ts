/**
 * The shared types of the import workflow: the payload every Lambda task receives, the slots of
 * the state data each step writes, and the events the workflow emits.
 *
 * Every Lambda task of the state machines takes
 * `{ "state.$": "$", "execution": { "id.$": "$$.Execution.Id", "name.$": "$$.Execution.Name", "startTime.$": "$$.Execution.StartTime" } }`
 * and writes its result into one slot of the state data with a ResultPath. This module holds
 * types and constants only, so that the constructs can import it without pulling in any SDK.
 */
import type { ImportOptions } from './import-options';
import type { ImportFormat } from '../disk/inspect';
import type { ObjectRead, ValidateResult } from '../handlers/validate';

export type { ImportFormat } from '../disk/inspect';
export type { ImportOptions } from './import-options';

/** The execution a task runs in (from the context object). */
export interface ExecutionInfo {
  /** The execution ARN (`$$.Execution.Id`). */
  readonly id: string;
  /** The execution name (`$$.Execution.Name`). */
  readonly name: string;
  /** When the execution started, ISO 8601 (`$$.Execution.StartTime`). */
  readonly startTime: string;
}

/** What every Lambda task of a workflow receives. */
export interface TaskPayload<S> {
  /** The whole state data. */
  readonly state: S;
  /** The execution. */
  readonly execution: ExecutionInfo;
}

/** One S3 object. */
export interface ObjectRef {
  readonly bucket: string;
  readonly key: string;
  readonly versionId?: string;
}

/** One S3 object, with the ETag that pins its content when the bucket is not versioned. */
export interface SourceRef extends ObjectRef {
  /** The ETag, without quotes. */
  readonly etag?: string;
}

/** A disk object VM Import reads, with its Format. */
export interface ImportDisk {
  readonly bucket: string;
  readonly key: string;
  readonly format: ImportFormat;
}

/** `$.request`, written by prepare. */
export interface ImportRequest {
  /** The object that started the import (the uploaded image, or the first disk). */
  readonly source: SourceRef;
  /** The disk objects of the VM, boot disk first. */
  readonly disks: readonly SourceRef[];
  /** The merged, validated options. */
  readonly options: ImportOptions;
  /** 64 hex digits: the SHA-256 of every disk's `bucket/key@versionId|etag`; the ClientToken of the import. */
  readonly clientToken: string;
  /** The AMI name (valid for EC2). */
  readonly name: string;
}

/** `$.validation`, written by validate: its result, plus the disks to import when importable as is. */
export type ValidationSlot = ValidateResult & {
  /** The disks for ImportImage/ImportSnapshot, when the image needs no conversion. */
  readonly importDisks?: readonly ImportDisk[];
};

/** `$.conversion`, written by the conversion loop. */
export interface ConversionSlot {
  readonly done: boolean;
  readonly disks: readonly ObjectRead[];
  readonly target: 'vmdk';
  readonly outputBucket: string;
  /** `.vmie/converted/<execution name>/`. */
  readonly outputPrefix: string;
  readonly checkpoint?: { readonly bucket: string; readonly key: string };
  readonly outputs?: readonly ImportDisk[];
  /** Where the conversion is: the disk (unit) being converted, of how many, and its bytes. */
  readonly progress?: { readonly unit?: number; readonly units?: number; readonly bytesDone: number; readonly total: number };
}

/** `$.import`, written by start. */
export interface ImportStarted {
  /** `image`: one ImportImage task; `snapshot`: one ImportSnapshot task per disk. */
  readonly mode: 'image' | 'snapshot';
  /** The ImportImage task (image mode). */
  readonly importTaskId?: string;
  /** The ImportSnapshot tasks, in disk order (snapshot mode). */
  readonly snapshotTaskIds?: readonly string[];
  /** When start ran, ISO 8601. */
  readonly startedAt: string;
}

/** `$.status`, written by check once every task completed. */
export interface ImportStatus {
  readonly status: 'completed';
  readonly progress: 100;
  readonly statusMessage?: string;
  /** The AMI (image mode). */
  readonly imageId?: string;
  /** The snapshots, in disk order. */
  readonly snapshotIds: readonly string[];
  /** The platform VM Import detected (image mode), `Windows` or `Linux`. */
  readonly platform?: string;
}

/** `$.registered`, written by register (snapshot mode). */
export interface Registered {
  readonly imageId: string;
}

/** Who an AMI was shared with. */
export interface SharedWith {
  readonly accounts: readonly string[];
  readonly organizationArns: readonly string[];
  readonly organizationalUnitArns: readonly string[];
}

/** `$.result`, written by finalize; also the detail of the `VM Import Succeeded` event. */
export interface ImportResult {
  /** The execution ARN. */
  readonly execution: string;
  /** The object imported. */
  readonly source: SourceRef;
  readonly imageId: string;
  readonly name: string;
  readonly snapshotIds: readonly string[];
  /** The copies started in other Regions (not waited for). */
  readonly copies: ReadonlyArray<{ readonly region: string; readonly imageId: string }>;
  readonly sharedWith: SharedWith;
  /** The Image Builder image, when `options.imageBuilder` was set. */
  readonly imageBuilderImageArn?: string;
  /** The codes of the validate step's findings (warnings and what the conversion fixed), worst first. */
  readonly findings: readonly string[];
  /** From the start of the execution to the end of finalize. */
  readonly durationSeconds: number;
}

/** `$.error`, written by a Catch. */
export interface CaughtError {
  readonly Error: string;
  readonly Cause?: string;
}

/** `$.failure`, written by cleanup; also the detail of the `VM Import Failed` event. */
export interface ImportFailure {
  /** The execution ARN. */
  readonly execution: string;
  /** `FAILED` for a failure the workflow caught; `TIMED_OUT` or `ABORTED` from the status-change event. */
  readonly status: 'FAILED' | 'TIMED_OUT' | 'ABORTED';
  /** What went wrong, in a sentence. */
  readonly reason: string;
  /** What to do about it. */
  readonly remedy: string;
  /** The error name (`ImportTaskFailed`, `UnsupportedImage`, `TIMED_OUT`, …). */
  readonly error: string;
  /** The import tasks cancelled by cleanup. */
  readonly cancelledTasks: readonly string[];
  /** From the start of the execution to cleanup. */
  readonly durationSeconds: number;
  /** The object being imported, when known. */
  readonly source?: SourceRef;
}

/** The state data of the import workflow: every slot is there once its step ran. */
export interface ImportState {
  readonly request?: ImportRequest;
  readonly validation?: ValidationSlot;
  readonly conversion?: ConversionSlot;
  readonly disks?: readonly ImportDisk[];
  readonly import?: ImportStarted;
  readonly status?: ImportStatus;
  readonly registered?: Registered;
  readonly result?: ImportResult;
  readonly error?: CaughtError;
  readonly failure?: ImportFailure;
}

/** The payload of every import task but prepare. */
export type ImportTaskPayload = TaskPayload<ImportState>;

/** The `source` of the events the import workflow emits. */
export const IMPORT_EVENT_SOURCE = 'vmie.import';
/** The `detail-type` of the event emitted when an import ends with an AMI. */
export const IMPORT_SUCCEEDED_DETAIL_TYPE = 'VM Import Succeeded';
/** The `detail-type` of the event emitted when an import fails, times out or is aborted. */
export const IMPORT_FAILED_DETAIL_TYPE = 'VM Import Failed';
/** The tag on every import task (and the AMI) naming the execution ARN that started it. */
export const EXECUTION_TAG = 'vmie:execution';
/** The tag on the AMI and its snapshots naming the imported object (`s3://bucket/key`). */
export const SOURCE_TAG = 'vmie:source';

/**
 * The detail of the `VM Import Succeeded` event: `$.result` as it is (it names the execution and
 * the source), so the state machine sends `detail.$: $.result`.
 */
export type ImportSucceededDetail = ImportResult;

/**
 * The detail of the `VM Import Failed` event: `$.failure` as it is, whether the workflow's Catch
 * path sends it (`detail.$: $.failure`, status `FAILED`) or clean-up emits it after a timeout or
 * an abort (status `TIMED_OUT` / `ABORTED`): one shape for every failure.
 */
export type ImportFailedDetail = ImportFailure;

/** The environment variable that may override {@link IMPORT_EVENT_SOURCE} for the events clean-up emits. */
export const EVENT_SOURCE_VARIABLE = 'VMIE_EVENT_SOURCE';
