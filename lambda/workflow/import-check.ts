/**
 * The check step: asks EC2 how the import task(s) are doing. Still running: throws
 * `ImportInProgress` (the state machine waits and asks again); failed (`deleted`): throws
 * `ImportTaskFailed` with the service's message and the remedy; completed: returns `$.status`.
 */
// The SDK is bundled into the Lambda assets by esbuild, hence a dev dependency.
// eslint-disable-next-line import/no-extraneous-dependencies
import { DescribeImportImageTasksCommand, DescribeImportSnapshotTasksCommand, type EC2Client } from '@aws-sdk/client-ec2';
import { ImportInProgressError, ImportTaskFailedError, awsErrorInfo, transientOf, type TaskProgress } from './errors';
import { importPayload, startedOf } from './import-state';
import { log } from './log';
import type { ExecutionInfo, ImportStatus } from './payload';
import { withRemedy } from './remedies';

/** How long a task that is not (yet) listed counts as starting, rather than lost. */
export const NOT_LISTED_GRACE_MS = 15 * 60 * 1000;

/** Statuses that end a task without a result. */
const FAILED = new Set(['deleted', 'deleting']);

/** The check handler's work, with a given EC2 client. */
export async function checkImport(ec2: EC2Client, event: unknown, now: () => number = Date.now): Promise<ImportStatus> {
  const { state, execution } = importPayload(event);
  const started = startedOf(state);
  if (started.mode === 'image') {
    const id = started.importTaskId!;
    const out = await describe('DescribeImportImageTasks', () => ec2.send(new DescribeImportImageTasksCommand({ ImportTaskIds: [id] })));
    const task = out?.ImportImageTasks?.find((t) => t.ImportTaskId === id);
    if (!task) return notListed([id], started.startedAt, execution, now);
    const status = task.Status ?? 'unknown';
    if (FAILED.has(status)) {
      throw failed(`The import task ${id} failed: ${task.StatusMessage || status}`, task.StatusMessage ?? '', execution, [id]);
    }
    if (status !== 'completed') {
      const statusMessage = task.StatusMessage ? { statusMessage: task.StatusMessage } : {};
      throw inProgress({ status, progress: percent(task.Progress), ...statusMessage }, execution, [id]);
    }
    const snapshotIds = (task.SnapshotDetails ?? []).map((s) => s.SnapshotId).filter((s): s is string => !!s);
    const result: ImportStatus = {
      status: 'completed',
      progress: 100,
      ...(task.StatusMessage ? { statusMessage: task.StatusMessage } : {}),
      ...(task.ImageId ? { imageId: task.ImageId } : {}),
      snapshotIds,
      ...(task.Platform ? { platform: task.Platform } : {}),
    };
    log('info', 'import completed', { execution: execution.id, importTaskId: id, imageId: task.ImageId, snapshotIds });
    return result;
  }

  const ids = started.snapshotTaskIds!;
  const out = await describe('DescribeImportSnapshotTasks', () => ec2.send(new DescribeImportSnapshotTasksCommand({ ImportTaskIds: [...ids] })));
  const byId = new Map((out?.ImportSnapshotTasks ?? []).map((t) => [t.ImportTaskId, t]));
  const missing = ids.filter((id) => !byId.has(id));
  if (missing.length > 0) return notListed(missing, started.startedAt, execution, now);
  const details = ids.map((id) => ({ id, d: byId.get(id)!.SnapshotTaskDetail ?? {} }));
  const failedDisk = details.findIndex(({ d }) => FAILED.has(d.Status ?? ''));
  if (failedDisk >= 0) {
    const { id, d } = details[failedDisk];
    throw failed(`The snapshot import task ${id} (disk ${failedDisk}) failed: ${d.StatusMessage || d.Status}`, d.StatusMessage ?? '', execution, ids);
  }
  if (details.every(({ d }) => d.Status === 'completed' && d.SnapshotId)) {
    const snapshotIds = details.map(({ d }) => d.SnapshotId!);
    log('info', 'import completed', { execution: execution.id, snapshotTaskIds: ids, snapshotIds });
    return { status: 'completed', progress: 100, snapshotIds };
  }
  // Progress of the whole: a completed disk counts as 100.
  const progress = Math.floor(details.reduce((sum, { d }) => sum + (d.Status === 'completed' ? 100 : percent(d.Progress)), 0) / details.length);
  const running = details.find(({ d }) => d.Status !== 'completed')!;
  const statusMessage = details
    .map(({ d }, i) => `disk ${i}: ${d.Status ?? 'unknown'}${d.StatusMessage ? ` (${d.StatusMessage})` : ''}`)
    .join('; ');
  throw inProgress({ status: running.d.Status ?? 'active', progress, statusMessage }, execution, ids);
}

/** Progress as EC2 reports it ("42"), as a number 0-100. */
function percent(p: string | undefined): number {
  const n = Number(p);
  return Number.isFinite(n) ? Math.min(100, Math.max(0, Math.floor(n))) : 0;
}

function inProgress(progress: TaskProgress, execution: ExecutionInfo, taskIds: readonly string[]): ImportInProgressError {
  log('info', 'import in progress', { execution: execution.id, taskIds, ...progress });
  return new ImportInProgressError(progress);
}

function failed(message: string, statusMessage: string, execution: ExecutionInfo, taskIds: readonly string[]): ImportTaskFailedError {
  const error = new ImportTaskFailedError(withRemedy(message));
  log('error', 'import failed', { execution: execution.id, taskIds, statusMessage, error: error.message });
  return error;
}

/** A task EC2 does not list: just started (listing lags), or gone. */
function notListed(ids: readonly string[], startedAt: string, execution: ExecutionInfo, now: () => number): never {
  const since = now() - Date.parse(startedAt);
  if (Number.isFinite(since) && since < NOT_LISTED_GRACE_MS) {
    throw inProgress({ status: 'pending', progress: 0, statusMessage: `task ${ids.join(', ')} not listed yet` }, execution, ids);
  }
  throw failed(`The import task ${ids.join(', ')} is no longer listed by EC2 (tasks are listed for 7 days after they end)`, '', execution, ids);
}

/** Runs one Describe call; undefined when EC2 answers that the task id is unknown. */
async function describe<T>(action: string, send: () => Promise<T>): Promise<T | undefined> {
  try {
    return await send();
  } catch (e) {
    const info = awsErrorInfo(e);
    if (/NotFound|InvalidConversionTaskId|InvalidImportTaskId/i.test(info.code)) return undefined;
    throw transientOf(e, action) ?? new Error(`${action}: ${info.code}: ${info.message}`, { cause: e });
  }
}
