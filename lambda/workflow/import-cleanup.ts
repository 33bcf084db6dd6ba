/**
 * The clean-up of a failed, timed-out or aborted import: cancels every import task the execution
 * started that is still running, and says why the import failed and what to do about it.
 *
 * Two inputs: the task payload of the workflow's Catch path (`$.error` and whatever slots
 * exist), or the Step Functions `Execution Status Change` event (TIMED_OUT, ABORTED) that an
 * EventBridge rule delivers after the execution ended, when no Catch ran. In the second case
 * clean-up also emits the `VM Import Failed` event itself, through the emitter it is given.
 */
// The SDK is bundled into the Lambda assets by esbuild, hence a dev dependency.
// eslint-disable-next-line import/no-extraneous-dependencies
import { CancelImportTaskCommand, DescribeImportImageTasksCommand, DescribeImportSnapshotTasksCommand, type EC2Client, type Filter, type Tag } from '@aws-sdk/client-ec2';
import { InvalidInputError, awsErrorInfo, isTransientAwsError, transientOf } from './errors';
import { importTrigger, isExecutionStatusChangeEvent, type ExecutionStatusChangeEvent } from './events';
import { importPayload, secondsSince } from './import-state';
import { log } from './log';
import {
  EVENT_SOURCE_VARIABLE,
  EXECUTION_TAG,
  IMPORT_EVENT_SOURCE,
  IMPORT_FAILED_DETAIL_TYPE,
  type CaughtError,
  type ImportFailedDetail,
  type ImportFailure,
  type SourceRef,
} from './payload';
import { findRemedy, remedyFor } from './remedies';

/** One event to put on the default event bus. */
export interface WorkflowEvent {
  readonly source: string;
  readonly detailType: string;
  readonly detail: unknown;
  /** ARNs the event is about. */
  readonly resources?: readonly string[];
}

/** Puts an event on the default event bus (EventBridge PutEvents). */
export type EventEmitter = (event: WorkflowEvent) => Promise<void>;

/** What clean-up needs. */
export interface CleanupDeps {
  /** The EC2 client. */
  readonly ec2: () => EC2Client;
  /** Emits the failure event (status-change input only). */
  readonly emit: EventEmitter;
  /** The clock. @default Date.now */
  readonly now?: () => number;
}

/** Task statuses after which there is nothing to cancel. */
const ENDED = new Set(['completed', 'deleted', 'deleting']);
/** At most this many pages of a Describe listing. */
const MAX_PAGES = 20;

/** What each error name means for the user, when its message does not say. */
const REMEDY_BY_ERROR: Readonly<Record<string, string>> = {
  'InvalidInput': 'Start the import with an S3 "Object Created" event or { bucket, key, versionId?, disks?, options? }',
  'InvalidImportOptions': 'Correct the options (the sidecar <key>.vmie.json, the vmie:* object tags, the start input, or the construct defaults) and start the import again',
  'ObjectNotFound': 'Check that the object exists under that key (and version) and start the import again',
  'AccessDenied': 'Let the workflow read the object: the bucket policy, and kms:Decrypt on the bucket key for SSE-KMS',
  'ObjectChanged': 'Do not overwrite the image while it is imported: upload it once, then start the import',
  'ImageReadError': 'The image is truncated or cannot be read: upload it again completely',
  'ImageFormatError': 'The image is damaged: export the VM again and upload the new image',
  'ImportLimitExceeded': 'Too many imports ran for too long: wait for running imports to finish, or ask for a higher VM Import quota',
  'RoleNotReady': 'Check the VM Import service role (name, trust policy with vmie.amazonaws.com, S3 and KMS permissions)',
  'States.Timeout': 'A step took longer than its timeout: start the import again; for very large images, raise the timeouts',
  'States.TaskFailed': 'A step failed unexpectedly: see the execution history and the step\'s logs, then start the import again',
  'States.Runtime': 'The workflow definition failed at run time: see the execution history',
  'Lambda.Unknown': 'A Lambda function crashed or ran out of time or memory: see its logs, then start the import again',
  'TIMED_OUT': 'The import took longer than the workflow allows: raise the workflow timeout (imports of large disks take hours), or import smaller disks',
  'ABORTED': 'The execution was stopped: start the import again when wanted',
};

function remedyByError(error: string): string | undefined {
  return Object.hasOwn(REMEDY_BY_ERROR, error) ? REMEDY_BY_ERROR[error] : undefined;
}

/** The cleanup handler's work. */
export async function cleanupImport(deps: CleanupDeps, event: unknown): Promise<ImportFailure> {
  const now = deps.now ?? Date.now;
  if (isExecutionStatusChangeEvent(event)) return fromStatusChange(deps, event, now);
  const { state, execution } = importPayload(event);
  const { error, reason, remedy } = explain(state.error);
  // The failure path must work whatever the state holds: take only well-formed ids.
  const started = (typeof state.import === 'object' && state.import !== null ? state.import : {}) as { importTaskId?: unknown; snapshotTaskIds?: unknown };
  const snapshotTaskIds: unknown[] = Array.isArray(started.snapshotTaskIds) ? started.snapshotTaskIds : [];
  const ids = [started.importTaskId, ...snapshotTaskIds].filter((x): x is string => typeof x === 'string' && /^import-[a-z]+-[0-9a-z]+$/.test(x));
  const cancelledTasks = await cancelTasks(deps.ec2(), execution.id, ids);
  const source = sourceOfRequest(state.request) ?? sourceOfInput(state);
  const failure: ImportFailure = {
    execution: execution.id,
    status: 'FAILED',
    reason,
    remedy,
    error,
    cancelledTasks,
    durationSeconds: secondsSince(execution.startTime, now()),
    ...(source ? { source } : {}),
  };
  log('error', 'import failed', { ...failure });
  return failure;
}

async function fromStatusChange(deps: CleanupDeps, event: ExecutionStatusChangeEvent, now: () => number): Promise<ImportFailure> {
  const d = event.detail;
  if (typeof d.executionArn !== 'string' || d.executionArn === '') throw new InvalidInputError('the status-change event lacks detail.executionArn');
  const status = d.status;
  if (status !== 'TIMED_OUT' && status !== 'ABORTED' && status !== 'FAILED') {
    throw new InvalidInputError(`clean-up runs for executions that ended TIMED_OUT, ABORTED or FAILED, not ${JSON.stringify(status)}`);
  }
  const cancelledTasks = await cancelTasks(deps.ec2(), d.executionArn, []);
  const name = typeof d.name === 'string' && d.name !== '' ? d.name : d.executionArn;
  const what = status === 'TIMED_OUT' ? 'timed out' : status === 'ABORTED' ? 'was aborted' : 'failed';
  const reason = `The import execution ${name} ${what}`;
  const source = sourceOfInput(parseInput(d.input));
  const end = typeof d.stopDate === 'number' && Number.isFinite(d.stopDate) ? d.stopDate : now();
  const failure: ImportFailure = {
    execution: d.executionArn,
    status,
    reason,
    remedy: remedyByError(status) ?? remedyFor(reason),
    error: status,
    cancelledTasks,
    durationSeconds: typeof d.startDate === 'number' && Number.isFinite(d.startDate) ? Math.max(0, Math.round((end - d.startDate) / 1000)) : 0,
    ...(source ? { source } : {}),
  };
  log('error', 'import ended', { ...failure });
  // A FAILED execution ran its own Catch path, which emitted the event already.
  if (status !== 'FAILED') {
    const detail: ImportFailedDetail = failure;
    const eventSource = process.env[EVENT_SOURCE_VARIABLE] || IMPORT_EVENT_SOURCE;
    await deps.emit({ source: eventSource, detailType: IMPORT_FAILED_DETAIL_TYPE, detail, resources: [d.executionArn] });
  }
  return failure;
}

function parseInput(input: string | null | undefined): unknown {
  if (typeof input !== 'string') return undefined;
  try {
    return JSON.parse(input);
  } catch {
    return undefined;
  }
}

/** `$.request.source`, when it is well-formed. */
function sourceOfRequest(request: unknown): SourceRef | undefined {
  const source = (request as { source?: unknown } | undefined)?.source as Record<string, unknown> | undefined;
  if (typeof source !== 'object' || source === null || typeof source.bucket !== 'string' || typeof source.key !== 'string') return undefined;
  return source as unknown as SourceRef;
}

/** The source object named by an execution input, when it names one. */
function sourceOfInput(input: unknown): SourceRef | undefined {
  try {
    return importTrigger(input).source;
  } catch {
    return undefined;
  }
}

/** The error name, the reason and the remedy from `$.error`. */
export function explain(caught: CaughtError | undefined): { error: string; reason: string; remedy: string } {
  const error = typeof caught?.Error === 'string' && caught.Error !== '' ? caught.Error : 'Unknown';
  let message = typeof caught?.Cause === 'string' ? caught.Cause : '';
  // A Lambda error's Cause is the JSON of { errorType, errorMessage, trace }.
  const parsed = parseInput(message) as { errorMessage?: unknown } | undefined;
  if (parsed && typeof parsed === 'object' && typeof parsed.errorMessage === 'string') message = parsed.errorMessage;
  if (message === '') message = `The import failed with ${error}`;
  const fixes = [...message.matchAll(/ Fix: (.*?)(?= \| |$)/g)].map((m) => m[1].trim()).filter((f) => f !== '');
  const fix = message.indexOf(' Fix: ');
  // One fix: the message is "<reason>. Fix: <remedy>" (ImportTaskFailed, ExportNotPossible, ...).
  if (fixes.length === 1 && fix > 0) return { error, reason: message.slice(0, fix), remedy: fixes[0] };
  // UnsupportedImage carries one "Fix:" per finding, separated by " | ".
  if (fixes.length > 1) return { error, reason: message, remedy: fixes.join(' | ') };
  const remedy = findRemedy(message)?.remedy ?? remedyByError(error) ?? remedyFor(message);
  return { error, reason: message, remedy };
}

/**
 * Cancels the execution's running import tasks: the ids the state knows, and every task tagged
 * with the execution's ARN (which finds a task whose start answer was lost). Tasks that already
 * ended are left alone, and a task that ends between the listing and the cancel is tolerated.
 * Only a transient failure (throttling, 5xx) fails clean-up, as `Transient`, for the state
 * machine to retry; any other refusal is logged and clean-up goes on.
 */
export async function cancelTasks(ec2: EC2Client, executionArn: string, knownIds: readonly string[]): Promise<string[]> {
  const statusById = new Map<string, string | undefined>(knownIds.map((id) => [id, undefined]));
  for (const t of await tasksOf(ec2, executionArn)) statusById.set(t.id, t.status);
  const cancelled: string[] = [];
  for (const [id, status] of statusById) {
    if (status !== undefined && ENDED.has(status)) continue;
    try {
      await ec2.send(new CancelImportTaskCommand({ ImportTaskId: id, CancelReason: `vmie: execution ${executionArn} ended` }));
      cancelled.push(id);
      log('info', 'import task cancelled', { execution: executionArn, importTaskId: id });
    } catch (e) {
      if (isTransientAwsError(e)) throw transientOf(e, `CancelImportTask ${id}`)!;
      const info = awsErrorInfo(e);
      log('warn', 'import task not cancelled', { execution: executionArn, importTaskId: id, code: info.code, reason: info.message });
    }
  }
  return cancelled;
}

/** The import tasks (image and snapshot) tagged with the execution ARN, with their status. */
async function tasksOf(ec2: EC2Client, executionArn: string): Promise<Array<{ id: string; status?: string }>> {
  const byTag: Filter[] = [{ Name: `tag:${EXECUTION_TAG}`, Values: [executionArn] }];
  const tagged = (tags: Tag[] | undefined) => (tags ?? []).some((t) => t.Key === EXECUTION_TAG && t.Value === executionArn);
  const out: Array<{ id: string; status?: string }> = [];
  const images = await listing(
    async (Filters, NextToken) => {
      const r = await ec2.send(new DescribeImportImageTasksCommand({ Filters, ...(NextToken ? { NextToken } : {}) }));
      return { items: (r.ImportImageTasks ?? []).map((t) => ({ id: t.ImportTaskId, status: t.Status, tagged: tagged(t.Tags) })), next: r.NextToken };
    },
    byTag,
  );
  const snapshots = await listing(
    async (Filters, NextToken) => {
      const r = await ec2.send(new DescribeImportSnapshotTasksCommand({ Filters, ...(NextToken ? { NextToken } : {}) }));
      const items = (r.ImportSnapshotTasks ?? []).map((t) => ({ id: t.ImportTaskId, status: t.SnapshotTaskDetail?.Status, tagged: tagged(t.Tags) }));
      return { items, next: r.NextToken };
    },
    byTag,
  );
  for (const t of [...images, ...snapshots]) if (t.id) out.push({ id: t.id, ...(t.status ? { status: t.status } : {}) });
  return out;
}

type Page = { items: Array<{ id?: string; status?: string; tagged: boolean }>; next?: string };

/**
 * Lists by the tag filter. Where EC2 refuses a tag filter for import tasks, lists the active
 * tasks instead and keeps those carrying the tag.
 */
async function listing(page: (filters: Filter[], next?: string) => Promise<Page>, byTag: Filter[]): Promise<Page['items']> {
  const all = async (filters: Filter[]) => {
    const items: Page['items'] = [];
    let next: string | undefined;
    for (let i = 0; i < MAX_PAGES; i++) {
      const p = await page(filters, next);
      items.push(...p.items);
      next = p.next;
      if (!next) break;
    }
    return items;
  };
  try {
    return await all(byTag);
  } catch (e) {
    if (isTransientAwsError(e)) throw transientOf(e, 'DescribeImport*Tasks')!;
    log('warn', 'tag filter refused; listing active tasks', { code: awsErrorInfo(e).code });
    try {
      return (await all([{ Name: 'task-state', Values: ['active'] }])).filter((t) => t.tagged);
    } catch (e2) {
      if (isTransientAwsError(e2)) throw transientOf(e2, 'DescribeImport*Tasks')!;
      // Clean-up goes on with the ids it knows: a refused listing must not hide the failure.
      log('warn', 'import tasks not listed', { code: awsErrorInfo(e2).code, reason: awsErrorInfo(e2).message });
      return [];
    }
  }
}
