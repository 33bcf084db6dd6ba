/**
 * The Lambda handlers of the export workflow (one bundle, one function each):
 *
 * - `preflight` checks every documented constraint EC2 can tell before anything starts (the AMI or
 *   instance exists; no encrypted snapshots or volumes; volumes of at most 1 TiB; no AWS
 *   Marketplace product codes; no license-included Windows or SQL Server; one volume for an
 *   instance; an export bucket without SSE-KMS) and fails with `ExportNotPossible` and the fix;
 * - `start` waits for room under the concurrent export quota (`ExportLimitExceeded`, retried by
 *   the state machine) and starts ExportImage or CreateInstanceExportTask, once per execution;
 * - `check` answers `ExportInProgress` while the task runs, `ExportTaskFailed` when it ended
 *   without a file, and the exported object when it completed;
 * - `cleanup` cancels the execution's active export task, from the failure path of the workflow
 *   or from the EventBridge event of an execution that timed out or was aborted.
 *
 * Every task receives `{ state, execution }` (see `lambda/workflow/export-request.ts`).
 */
// The SDK is bundled into the Lambda assets by esbuild, hence a dev dependency.
// eslint-disable-next-line import/no-extraneous-dependencies
import {
  CreateInstanceExportTaskCommand,
  DescribeImagesCommand,
  DescribeInstancesCommand,
  DescribeSnapshotsCommand,
  DescribeVolumesCommand,
  ExportImageCommand,
  type EC2Client,
  type Image,
  type Instance,
  type Snapshot,
  type TagSpecification,
  type Volume,
} from '@aws-sdk/client-ec2';
import { currentRegion, ec2Clients } from '../aws/ec2';
import { putEvent } from '../aws/events';
import {
  ExportInProgressError,
  ExportLimitExceededError,
  ExportNotPossibleError,
  ExportTaskFailedError,
  InvalidInputError,
  RoleNotReadyError,
  TransientError,
  awsErrorInfo,
  transientOf,
} from '../workflow/errors';
import {
  combineProblems,
  exportTaskRemedy,
  imageProblems,
  instanceProblems,
  splitRemedy,
  type ExportProblem,
  type VolumeSummary,
} from '../workflow/export-checks';
import {
  EXECUTION_TAG,
  bucketEncryptionProblem,
  durationSince,
  executionOf,
  exportBucketOf,
  exportClientToken,
  exportObjectKey,
  exportRequestOf,
  isObject,
  maxExportTasksOf,
  payloadOf,
  type ExportCompleted,
  type ExportFailure,
  type ExportPreflight,
  type ExportRequest,
  type ExportStarted,
  type ExportState,
  type ExportTaskPayload,
} from '../workflow/export-request';
import {
  call,
  cancelExportTask,
  describeExportTask,
  ec2ErrorKind,
  isActive,
  isEndedWithoutFile,
  listExportTasks,
  taggedWith,
  type ExportTaskView,
} from '../workflow/export-tasks';
import { log as logLine } from '../workflow/log';

export type {
  ExportCompleted,
  ExportFailure,
  ExportInput,
  ExportPreflight,
  ExportStarted,
  ExportState,
  ExportTaskPayload,
} from '../workflow/export-request';

/** Longest reason or remedy the clean-up returns. */
const MAX_TEXT = 2000;

/** The EC2 client of this container (remade when the endpoint or Region in the environment changes). */
function ec2(): EC2Client {
  return ec2Clients.get();
}

function log(message: string, fields: Record<string, unknown>): void {
  logLine('info', message, fields);
}

// ---------------------------------------------------------------------------------------------
// preflight

/** Checks the documented export constraints; writes `$.preflight`. */
export async function preflight(event: ExportTaskPayload): Promise<ExportPreflight> {
  const { state, execution } = payloadOf(event);
  const request = exportRequestOf(state);
  const bucket = exportBucketOf();
  const client = ec2();
  const problems: ExportProblem[] = [];
  const bucketProblem = bucketEncryptionProblem(state.bucket, bucket);
  if (bucketProblem) problems.push(bucketProblem);

  const found = request.kind === 'image' ? await checkImage(client, request.sourceId) : await checkInstance(client, request.sourceId);
  problems.push(...found.problems);
  if (problems.length > 0) {
    const { reason, remedy } = combineProblems(problems);
    log('export not possible', { execution: execution.id, kind: request.kind, id: request.sourceId, reasons: problems.map((p) => p.reason) });
    throw new ExportNotPossibleError(`${reason}. Fix: ${remedy}`);
  }
  const summary = found.summary!;
  const out: ExportPreflight = {
    kind: request.kind,
    format: request.format,
    ...(request.containerFormat ? { containerFormat: request.containerFormat } : {}),
    ...(request.targetEnvironment ? { targetEnvironment: request.targetEnvironment } : {}),
    bucket,
    prefix: request.prefix,
    sizeGiB: summary.sizeGiB,
    volumes: summary.volumes,
  };
  log('export possible', { execution: execution.id, id: request.sourceId, ...out });
  return out;
}

interface Found {
  readonly problems: ExportProblem[];
  readonly summary?: VolumeSummary;
}

async function checkImage(client: EC2Client, imageId: string): Promise<Found> {
  const image = await describeOne<Image>('DescribeImages', async () => {
    const out = await client.send(new DescribeImagesCommand({ ImageIds: [imageId] }));
    return (out.Images ?? []).find((i) => i.ImageId === imageId);
  });
  if (!image) {
    return { problems: [{ reason: `the AMI ${imageId} was not found in ${region()}`, remedy: 'Check the AMI id and that the workflow runs in the AMI\'s Region and account (copy a shared AMI into this account first).' }] };
  }
  const snapshotIds = (image.BlockDeviceMappings ?? []).map((m) => m.Ebs?.SnapshotId).filter((id): id is string => Boolean(id));
  let snapshots: Snapshot[] = [];
  if (snapshotIds.length > 0) {
    try {
      const out = await call('DescribeSnapshots', () => client.send(new DescribeSnapshotsCommand({ SnapshotIds: snapshotIds })));
      snapshots = out.Snapshots ?? [];
    } catch (err) {
      if (err instanceof TransientError) throw err;
      // Snapshots of an AMI shared by another account may not be visible: judge by the image's mappings.
      log('snapshots not described', { imageId, snapshotIds, error: awsErrorInfo(err).code });
    }
  }
  return imageProblems(image, snapshots);
}

async function checkInstance(client: EC2Client, instanceId: string): Promise<Found> {
  const instance = await describeOne<Instance>('DescribeInstances', async () => {
    const out = await client.send(new DescribeInstancesCommand({ InstanceIds: [instanceId] }));
    return (out.Reservations ?? []).flatMap((r) => r.Instances ?? []).find((i) => i.InstanceId === instanceId);
  });
  if (!instance) {
    return { problems: [{ reason: `the instance ${instanceId} was not found in ${region()}`, remedy: 'Check the instance id and that the workflow runs in the instance\'s Region and account.' }] };
  }
  const volumeIds = (instance.BlockDeviceMappings ?? []).map((m) => m.Ebs?.VolumeId).filter((id): id is string => Boolean(id));
  let volumes: Volume[] = [];
  if (volumeIds.length > 0) {
    const out = await call('DescribeVolumes', () => client.send(new DescribeVolumesCommand({ VolumeIds: volumeIds })));
    volumes = out.Volumes ?? [];
  }
  return instanceProblems(instance, volumes);
}

/** Runs a Describe call for one resource: undefined when EC2 does not know the id. */
async function describeOne<T>(action: string, send: () => Promise<T | undefined>): Promise<T | undefined> {
  try {
    return await call(action, send);
  } catch (err) {
    if (ec2ErrorKind(err) === 'not-found') return undefined;
    throw err;
  }
}

function region(): string {
  return currentRegion() ?? 'this Region';
}

// ---------------------------------------------------------------------------------------------
// start

/**
 * Starts the export task of this execution; writes `$.export`. Started again (a retry), it returns
 * the task it started before. While as many export tasks are active as the quota allows
 * (env `VMIE_MAX_EXPORT_TASKS`, default 5), it throws `ExportLimitExceeded`.
 */
export async function start(event: ExportTaskPayload): Promise<ExportStarted> {
  const { state, execution } = payloadOf(event);
  const request = exportRequestOf(state);
  const pre = preflightOf(state, request);
  const client = ec2();

  const tasks = await listExportTasks(client);
  const mine = taggedWith(tasks, EXECUTION_TAG, execution.id).filter((t) => t.kind === request.kind && !isEndedWithoutFile(t));
  if (mine.length > 0) {
    const started = startedOf(mine[0], pre);
    log('export task already started', { execution: execution.id, ...started });
    return started;
  }
  const active = tasks.filter(isActive);
  const max = maxExportTasksOf();
  if (active.length >= max) {
    log('export waits for room', { execution: execution.id, active: active.length, max });
    throw new ExportLimitExceededError(`${active.length} export tasks are active in ${region()} (at most ${max} at once: ${active.map((t) => t.id).join(', ')}); waiting for one to end`);
  }

  const tags: TagSpecification[] = [{
    ResourceType: request.kind === 'image' ? 'export-image-task' : 'export-instance-task',
    Tags: [...Object.entries(request.tags).map(([Key, Value]) => ({ Key, Value })), { Key: EXECUTION_TAG, Value: execution.id }],
  }];
  const startedAt = new Date().toISOString();
  try {
    if (request.kind === 'image') {
      const roleName = process.env.VMIE_ROLE_NAME;
      const out = await client.send(new ExportImageCommand({
        ImageId: request.sourceId,
        DiskImageFormat: pre.format,
        S3ExportLocation: { S3Bucket: pre.bucket, S3Prefix: pre.prefix },
        ...(roleName ? { RoleName: roleName } : {}),
        ClientToken: exportClientToken(execution, request),
        ...(request.description !== undefined ? { Description: request.description } : {}),
        TagSpecifications: tags,
      }));
      if (!out.ExportImageTaskId) throw new Error(`ExportImage answered without an ExportImageTaskId for ${request.sourceId}`);
      const started: ExportStarted = {
        kind: 'image',
        exportTaskId: out.ExportImageTaskId,
        bucket: pre.bucket,
        key: exportObjectKey(pre.prefix, out.ExportImageTaskId, pre.format),
        startedAt,
      };
      log('export started', { execution: execution.id, imageId: request.sourceId, format: pre.format, ...started });
      return started;
    }
    const out = await client.send(new CreateInstanceExportTaskCommand({
      InstanceId: request.sourceId,
      TargetEnvironment: pre.targetEnvironment ?? 'vmware',
      ExportToS3Task: {
        DiskImageFormat: pre.format,
        ...(pre.containerFormat ? { ContainerFormat: pre.containerFormat } : {}),
        S3Bucket: pre.bucket,
        S3Prefix: pre.prefix,
      },
      ...(request.description !== undefined ? { Description: request.description } : {}),
      TagSpecifications: tags,
    }));
    const id = out.ExportTask?.ExportTaskId;
    if (!id) throw new Error(`CreateInstanceExportTask answered without an ExportTaskId for ${request.sourceId}`);
    const started: ExportStarted = {
      kind: 'instance',
      exportTaskId: id,
      bucket: pre.bucket,
      key: out.ExportTask?.ExportToS3Task?.S3Key ?? exportObjectKey(pre.prefix, id, pre.format, pre.containerFormat),
      startedAt,
    };
    log('export started', { execution: execution.id, instanceId: request.sourceId, format: pre.format, containerFormat: pre.containerFormat, ...started });
    return started;
  } catch (err) {
    throw startError(err, request.kind === 'image' ? 'ExportImage' : 'CreateInstanceExportTask');
  }
}

function preflightOf(state: ExportState, request: ExportRequest): ExportPreflight {
  const pre = state.preflight;
  if (!isObject(pre) || typeof pre.bucket !== 'string' || typeof pre.prefix !== 'string' || typeof pre.format !== 'string') {
    throw new InvalidInputError('"preflight" (the result of the preflight step: kind, format, bucket, prefix) is missing from the state');
  }
  if (pre.kind !== request.kind) throw new InvalidInputError(`"preflight.kind" is ${pre.kind}, but the input exports an ${request.kind}`);
  return pre;
}

function startedOf(task: ExportTaskView, pre: ExportPreflight): ExportStarted {
  return {
    kind: task.kind,
    exportTaskId: task.id,
    bucket: task.bucket ?? pre.bucket,
    key: task.key ?? exportObjectKey(pre.prefix, task.id, pre.format, task.kind === 'instance' ? pre.containerFormat : undefined),
    startedAt: new Date().toISOString(),
  };
}

/** The workflow's error for an error of ExportImage or CreateInstanceExportTask. */
function startError(err: unknown, action: string): Error {
  const transient = transientOf(err, action);
  if (transient) return transient;
  const { code, message } = awsErrorInfo(err);
  switch (ec2ErrorKind(err)) {
    case 'limit':
      return new ExportLimitExceededError(`${action} answered ${code}: ${message}`, { cause: err });
    case 'role':
      return new RoleNotReadyError(`${action} answered ${code}: ${message}`, { cause: err });
    default:
      if (err instanceof Error && !('$metadata' in err)) return err;
      return new ExportNotPossibleError(`${action} was refused: ${code}: ${message.replace(/\.$/, '')}. Fix: ${exportTaskRemedy(message)}`);
  }
}

// ---------------------------------------------------------------------------------------------
// check

/** Checks the export task; writes `$.status` once it completed. */
export async function check(event: ExportTaskPayload): Promise<ExportCompleted> {
  const { state, execution } = payloadOf(event);
  const started = state.export;
  if (!isObject(started) || typeof started.exportTaskId !== 'string' || (started.kind !== 'image' && started.kind !== 'instance')) {
    throw new InvalidInputError('"export" (the result of the start step: kind, exportTaskId, bucket, key) is missing from the state');
  }
  const task = await describeExportTask(ec2(), started.kind, started.exportTaskId);
  if (!task) {
    throw new ExportTaskFailedError(`the export task ${started.exportTaskId} is not known to EC2 (tasks are listed for about a week after they end). Fix: Start the export again.`);
  }
  if (task.state === 'completed') {
    const out: ExportCompleted = { status: 'completed', object: { bucket: task.bucket ?? started.bucket, key: task.key ?? started.key } };
    log('export completed', { execution: execution.id, exportTaskId: task.id, ...out.object });
    return out;
  }
  if (task.state === 'deleted' || task.state === 'cancelled') {
    const why = task.statusMessage?.replace(/\.$/, '') || 'no reason given';
    log('export failed', { execution: execution.id, exportTaskId: task.id, status: task.state, statusMessage: task.statusMessage });
    throw new ExportTaskFailedError(`the export task ${task.id} ended ${task.state}: ${why}. Fix: ${exportTaskRemedy(task.state === 'cancelled' ? `cancelled ${why}` : why)}`);
  }
  // active, or on its way to deleted/cancelled (the final message comes with the final state).
  const progress = { status: task.state, progress: task.progress ?? 0, ...(task.statusMessage ? { statusMessage: task.statusMessage } : {}) };
  log('export in progress', { execution: execution.id, exportTaskId: task.id, ...progress });
  throw new ExportInProgressError(progress);
}

// ---------------------------------------------------------------------------------------------
// cleanup

/** The EventBridge event of an execution that ended without the workflow's own failure path. */
interface StatusChangeEvent {
  readonly 'detail-type'?: string;
  readonly 'source'?: string;
  readonly 'detail': {
    readonly executionArn: string;
    readonly status: string;
    readonly startDate?: number;
    readonly name?: string;
  };
}

function isStatusChangeEvent(event: unknown): event is StatusChangeEvent {
  return isObject(event) && isObject(event.detail) && typeof event.detail.executionArn === 'string'
    && (event['detail-type'] === 'Step Functions Execution Status Change' || event.source === 'aws.states');
}

/**
 * Cancels the execution's active export task (the one in `$.export`, and any tagged with the
 * execution) and says why the export failed; writes `$.failure`. Takes the workflow's payload (with
 * `$.error`) or the `Step Functions Execution Status Change` event of a timed-out or aborted execution.
 */
export async function cleanup(event: ExportTaskPayload | StatusChangeEvent): Promise<ExportFailure> {
  let executionArn: string;
  let known: ExportStarted | undefined;
  let error: string;
  let explained: { reason: string; remedy: string };
  let durationSeconds: number | undefined;
  if (isStatusChangeEvent(event)) {
    executionArn = event.detail.executionArn;
    error = event.detail.status;
    explained = explainStatus(event.detail.status);
    durationSeconds = typeof event.detail.startDate === 'number' ? Math.max(0, Math.round((Date.now() - event.detail.startDate) / 1000)) : undefined;
  } else {
    if (!isObject(event) || !isObject(event.state)) {
      throw new InvalidInputError('cleanup takes the workflow payload { state, execution } or a "Step Functions Execution Status Change" event');
    }
    const execution = executionOf(event.execution);
    executionArn = execution.id;
    const state = event.state as ExportState;
    known = isObject(state.export) && typeof state.export.exportTaskId === 'string' && (state.export.kind === 'image' || state.export.kind === 'instance') ? state.export : undefined;
    const caught = isObject(state.error) ? state.error : undefined;
    error = typeof caught?.Error === 'string' ? caught.Error : 'Unknown';
    explained = explainError(error, typeof caught?.Cause === 'string' ? caught.Cause : undefined);
    durationSeconds = durationSince(execution.startTime);
  }

  const client = ec2();
  const candidates = new Map<string, ExportTaskView>();
  try {
    for (const t of taggedWith(await listExportTasks(client), EXECUTION_TAG, executionArn)) candidates.set(t.id, t);
  } catch (err) {
    if (err instanceof TransientError) throw err;
    log('export tasks not listed', { execution: executionArn, error: awsErrorInfo(err).code, detail: awsErrorInfo(err).message });
  }
  if (known && !candidates.has(known.exportTaskId)) {
    const task = await describeExportTask(client, known.kind, known.exportTaskId);
    if (task) candidates.set(task.id, task);
  }
  const cancelledTasks: string[] = [];
  for (const task of candidates.values()) {
    if (!isActive(task)) continue;
    if (await cancelExportTask(client, task)) cancelledTasks.push(task.id);
  }
  const failure: ExportFailure = {
    reason: cap(explained.reason),
    remedy: cap(explained.remedy),
    error,
    cancelledTasks,
    ...(durationSeconds !== undefined ? { durationSeconds } : {}),
  };
  log('export failed', { execution: executionArn, ...failure });
  if (isStatusChangeEvent(event)) {
    // The execution ended without running a state: this function tells the bus, as the state
    // machine's failure path does for failures it catches.
    await putEvent({
      source: process.env.VMIE_EVENT_SOURCE ?? 'vmie.export',
      detailType: 'VM Export Failed',
      detail: { ...failure, execution: executionArn, status: event.detail.status },
      resources: [executionArn],
    });
  }
  return failure;
}

/** Reason and remedy for an execution that timed out or was aborted. */
function explainStatus(status: string): { reason: string; remedy: string } {
  if (status === 'TIMED_OUT') {
    return {
      reason: 'the export workflow timed out before the export task ended',
      remedy: 'The export task was cancelled. Start the export again; for large volumes raise the workflow\'s timeout.',
    };
  }
  if (status === 'ABORTED') {
    return { reason: 'the export workflow was stopped', remedy: 'The export task was cancelled. Start the export again when it is wanted.' };
  }
  return { reason: `the export workflow ended ${status}`, remedy: 'Look at the execution\'s history, fix the cause, and start the export again.' };
}

/** Reason and remedy for the error the workflow caught. */
function explainError(error: string, cause: string | undefined): { reason: string; remedy: string } {
  const message = causeMessage(cause);
  switch (error) {
    case 'ExportNotPossible':
    case 'ExportTaskFailed': {
      const { reason, remedy } = splitRemedy(message);
      return { reason, remedy: remedy ?? exportTaskRemedy(reason) };
    }
    case 'ExportInProgress':
      return {
        reason: `the export task did not end in the time the workflow waits (last seen: ${message || 'unknown'})`,
        remedy: 'The export task was cancelled. Start the export again; for large volumes raise the workflow\'s timeout or its checks.',
      };
    case 'ExportLimitExceeded':
      return {
        reason: `the export could not start: the Region's concurrent export tasks stayed at the limit (${message})`,
        remedy: 'Wait for the running exports to end, or ask for a higher quota of concurrent export tasks, then start the export again.',
      };
    case 'RoleNotReady':
      return { reason: message, remedy: 'Check that the service role exists, trusts vmie.amazonaws.com, and may write to the export bucket.' };
    case 'InvalidInput':
      return { reason: `the input is not valid: ${message}`, remedy: 'Start the export with { imageId } or { instanceId }, and optionally format, targetEnvironment, prefix, description and tags.' };
    case 'States.Timeout':
      return explainStatus('TIMED_OUT');
    default:
      return {
        reason: message ? `${error}: ${message}` : error,
        remedy: 'Look at the execution\'s history for the step that failed, fix the cause, and start the export again.',
      };
  }
}

/** The message of a Catch's Cause: a Lambda error's `errorMessage`, or the text itself. */
function causeMessage(cause: string | undefined): string {
  if (!cause) return '';
  try {
    const parsed: unknown = JSON.parse(cause);
    if (isObject(parsed) && typeof parsed.errorMessage === 'string') return parsed.errorMessage;
  } catch {
    // Not JSON: the cause is the message.
  }
  return cause;
}

function cap(text: string): string {
  return text.length > MAX_TEXT ? `${text.slice(0, MAX_TEXT - 3)}...` : text;
}
