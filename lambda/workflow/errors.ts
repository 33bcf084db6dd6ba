/**
 * The named errors of the import and export workflows.
 *
 * A Lambda handler that throws reports the error's `name` as the error type, and the state
 * machine retries or catches by that name (see the workflow contract): `ImportInProgress` is
 * retried with backoff, `ImportLimitExceeded` waits for room, `InvalidImportOptions` fails the
 * execution, and so on. Every class here sets `name` to the Step Functions error name.
 */

/** Every error name a workflow handler throws on purpose. */
export type WorkflowErrorName =
  | 'InvalidInput'
  | 'InvalidImportOptions'
  | 'DuplicateImport'
  | 'NotAnImage'
  | 'ImportLimitExceeded'
  | 'RoleNotReady'
  | 'ImportInProgress'
  | 'ImportTaskFailed'
  | 'Transient'
  | 'ExportLimitExceeded'
  | 'ExportNotPossible'
  | 'ExportInProgress'
  | 'ExportTaskFailed';

/** The base of the named errors: `name` is what the state machine matches on. */
export class WorkflowError extends Error {
  public constructor(
    public readonly name: WorkflowErrorName,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** The input of a handler is not of the expected shape; the message names what is missing. */
export class InvalidInputError extends WorkflowError {
  public constructor(message: string) {
    super('InvalidInput', message);
  }
}

/** The import options (defaults, sidecar, object tags, input) are invalid, or EC2 rejected them. */
export class InvalidImportOptionsError extends WorkflowError {
  public constructor(message: string, options?: { cause?: unknown }) {
    super('InvalidImportOptions', message, options);
  }
}

/**
 * The object that started the execution is not an upload to import (a file the workflow staged
 * itself): the state machine ends quietly.
 */
export class NotAnImageError extends WorkflowError {
  public constructor(message: string) {
    super('NotAnImage', message);
  }
}

/**
 * Another execution already started the import of the same objects (the same client token): a
 * duplicate trigger. The state machine ends this execution quietly; the first one carries on.
 */
export class DuplicateImportError extends WorkflowError {
  public constructor(message: string, options?: { cause?: unknown }) {
    super('DuplicateImport', message, options);
  }
}

/** EC2 answered that too many import tasks are running: the state machine waits and retries. */
export class ImportLimitExceededError extends WorkflowError {
  public constructor(message: string, options?: { cause?: unknown }) {
    super('ImportLimitExceeded', message, options);
  }
}

/** The VM Import service role is missing or not yet usable (IAM propagation): retried for a while. */
export class RoleNotReadyError extends WorkflowError {
  public constructor(message: string, options?: { cause?: unknown }) {
    super('RoleNotReady', message, options);
  }
}

/** How far a running task is; the message of {@link ImportInProgressError} and {@link ExportInProgressError}. */
export interface TaskProgress {
  /** The task's Status (`active`, `converting`, …). */
  readonly status: string;
  /** Percent done, 0-100. */
  readonly progress: number;
  /** The task's StatusMessage, when it has one. */
  readonly statusMessage?: string;
}

/** The import task is still running; the message is the JSON of {@link TaskProgress}. */
export class ImportInProgressError extends WorkflowError {
  public constructor(public readonly progress: TaskProgress) {
    super('ImportInProgress', JSON.stringify(progress));
  }
}

/** The import task ended `deleted`; the message is `<StatusMessage>. Fix: <remedy>`. */
export class ImportTaskFailedError extends WorkflowError {
  public constructor(message: string) {
    super('ImportTaskFailed', message);
  }
}

/** Throttling, a 5xx answer or a dropped connection that the SDK's own retries did not absorb. */
export class TransientError extends WorkflowError {
  public constructor(message: string, options?: { cause?: unknown }) {
    super('Transient', message, options);
  }
}

/** Too many export tasks are running (counted, or the service's limit answer): retried later. */
export class ExportLimitExceededError extends WorkflowError {
  public constructor(message: string, options?: { cause?: unknown }) {
    super('ExportLimitExceeded', message, options);
  }
}

/** A documented constraint forbids the export; the message is `<reason>. Fix: <remedy>`. */
export class ExportNotPossibleError extends WorkflowError {
  public constructor(message: string) {
    super('ExportNotPossible', message);
  }
}

/** The export task is still running; the message is the JSON of {@link TaskProgress}. */
export class ExportInProgressError extends WorkflowError {
  public constructor(public readonly progress: TaskProgress) {
    super('ExportInProgress', JSON.stringify(progress));
  }
}

/** The export task ended `deleted` or cancelled; the message says why. */
export class ExportTaskFailedError extends WorkflowError {
  public constructor(message: string) {
    super('ExportTaskFailed', message);
  }
}

/** What an AWS SDK error says about itself. */
export interface AwsErrorInfo {
  /** The service's error code (`ResourceLimitExceeded`, `InvalidParameter`, …), or the error's name. */
  readonly code: string;
  /** The service's message. */
  readonly message: string;
  /** The HTTP status, when a response arrived. */
  readonly status?: number;
  /** `client` or `server`, as the SDK classified the answer. */
  readonly fault?: string;
}

/** Reads the code, message and HTTP status of an AWS SDK error (or of anything thrown). */
export function awsErrorInfo(e: unknown): AwsErrorInfo {
  const err = (e ?? {}) as {
    name?: unknown;
    Code?: unknown;
    code?: unknown;
    message?: unknown;
    $metadata?: { httpStatusCode?: unknown };
    $fault?: unknown;
  };
  const code = [err.Code, err.name, err.code].find((c): c is string => typeof c === 'string' && c !== '' && c !== 'Error') ?? 'Error';
  const status = typeof err.$metadata?.httpStatusCode === 'number' ? err.$metadata.httpStatusCode : undefined;
  return {
    code,
    message: typeof err.message === 'string' ? err.message : String(e),
    ...(status !== undefined ? { status } : {}),
    ...(typeof err.$fault === 'string' ? { fault: err.$fault } : {}),
  };
}

/** Error codes that mean "slow down" or "try again", whatever the HTTP status. */
const TRANSIENT_CODES = new Set([
  'Throttling',
  'ThrottlingException',
  'ThrottledException',
  'RequestLimitExceeded',
  'RequestThrottled',
  'RequestThrottledException',
  'TooManyRequestsException',
  'SlowDown',
  'RequestTimeout',
  'RequestTimeoutException',
  'TimeoutError',
  'ServiceUnavailable',
  'Unavailable',
  'InternalError',
  'InternalFailure',
  'InternalServerError',
  'InternalServerException',
  'ServiceException',
  'EC2ThrottledException',
  'ECONNRESET',
  'ECONNREFUSED',
  'ETIMEDOUT',
  'EPIPE',
  'EAI_AGAIN',
  'ENOTFOUND',
  'NetworkingError',
]);

/**
 * True for throttling, 5xx answers and failed connections: the failures worth retrying later.
 * (`RequestLimitExceeded` is EC2's throttling answer, not a quota.)
 */
export function isTransientAwsError(e: unknown): boolean {
  const info = awsErrorInfo(e);
  if (TRANSIENT_CODES.has(info.code)) return true;
  if (info.status !== undefined) return info.status >= 500 || info.status === 429;
  if (info.fault === 'server') return true;
  // No HTTP answer at all: a connection that failed or timed out.
  const err = e as { $metadata?: unknown; $response?: unknown };
  return e instanceof Error && err.$metadata === undefined && !(e instanceof WorkflowError) && /socket|connect|timed? ?out|network|EAI_AGAIN|ECONN/i.test(`${info.code} ${info.message}`);
}

/** `e` as a {@link TransientError} naming `what`, when it is transient; undefined otherwise. */
export function transientOf(e: unknown, what: string): TransientError | undefined {
  if (!isTransientAwsError(e)) return undefined;
  const info = awsErrorInfo(e);
  return new TransientError(`${what}: ${info.code}: ${info.message}`, { cause: e });
}
