/**
 * The export tasks of VM Export, as the export workflow sees them: image exports (ExportImage,
 * `export-ami-…`) and instance exports (CreateInstanceExportTask, `export-i-…`) in one shape.
 */
// The SDK is bundled into the Lambda assets by esbuild, hence a dev dependency.
// eslint-disable-next-line import/no-extraneous-dependencies
import {
  CancelExportTaskCommand,
  DescribeExportImageTasksCommand,
  DescribeExportTasksCommand,
  type EC2Client,
  type ExportImageTask,
  type ExportTask,
} from '@aws-sdk/client-ec2';
import { awsErrorInfo, isTransientAwsError, transientOf } from './errors';
import type { ExportKind } from './export-request';
import { log } from './log';

/** What an error of an EC2 call means to the export workflow. */
export type Ec2ErrorKind = 'transient' | 'limit' | 'role' | 'not-found' | 'other';

/**
 * Classifies an error of an EC2 call: throttling, 5xx and dropped connections are transient
 * (`RequestLimitExceeded` is EC2's throttling answer); `ResourceLimitExceeded` or any other answer
 * that speaks of a limit is the export quota; an unknown id is not-found.
 */
export function ec2ErrorKind(err: unknown): Ec2ErrorKind {
  if (isTransientAwsError(err)) return 'transient';
  const { code, message } = awsErrorInfo(err);
  if (/NotFound$|Malformed$/.test(code)) return 'not-found';
  if (code === 'ResourceLimitExceeded' || /limit/i.test(code) || /\blimits?\b/i.test(message)) return 'limit';
  if (/does not exist or does not have sufficient permissions/i.test(message)) return 'role';
  return 'other';
}

/** One export task. */
export interface ExportTaskView {
  readonly kind: ExportKind;
  readonly id: string;
  /** Image tasks: active | completed | deleting | deleted; instance tasks: active | cancelling | cancelled | completed. */
  readonly state: string;
  /** Percent done (image tasks report it; instance tasks do not). */
  readonly progress?: number;
  readonly statusMessage?: string;
  readonly tags: Readonly<Record<string, string>>;
  readonly bucket?: string;
  /** The key of the exported file, when the task names it (instance tasks do). */
  readonly key?: string;
}

/** Pages of DescribeExportImageTasks read at most (500 tasks each); tasks stay listed a week after they end. */
const MAX_PAGES = 20;

/** Whether the task is still running (and counts against the concurrent export quota). */
export function isActive(task: ExportTaskView): boolean {
  return task.state === 'active';
}

/** Whether the task ended without a file (or is on its way there). */
export function isEndedWithoutFile(task: ExportTaskView): boolean {
  return ['deleting', 'deleted', 'cancelling', 'cancelled'].includes(task.state);
}

/** Every export task the account lists in the Region, both kinds. */
export async function listExportTasks(client: EC2Client): Promise<ExportTaskView[]> {
  const tasks: ExportTaskView[] = [];
  let nextToken: string | undefined;
  for (let page = 0; page < MAX_PAGES; page++) {
    const out = await call('DescribeExportImageTasks', () => client.send(new DescribeExportImageTasksCommand({ MaxResults: 500, ...(nextToken ? { NextToken: nextToken } : {}) })));
    tasks.push(...(out.ExportImageTasks ?? []).map(imageTaskView).filter(isDefined));
    nextToken = out.NextToken;
    if (!nextToken) break;
  }
  const instances = await call('DescribeExportTasks', () => client.send(new DescribeExportTasksCommand({})));
  tasks.push(...(instances.ExportTasks ?? []).map(instanceTaskView).filter(isDefined));
  return tasks;
}

/** One export task by id, or undefined when EC2 does not know it. */
export async function describeExportTask(client: EC2Client, kind: ExportKind, id: string): Promise<ExportTaskView | undefined> {
  try {
    if (kind === 'image') {
      const out = await call('DescribeExportImageTasks', () => client.send(new DescribeExportImageTasksCommand({ ExportImageTaskIds: [id] })));
      return (out.ExportImageTasks ?? []).map(imageTaskView).find((t) => t?.id === id);
    }
    const out = await call('DescribeExportTasks', () => client.send(new DescribeExportTasksCommand({ ExportTaskIds: [id] })));
    return (out.ExportTasks ?? []).map(instanceTaskView).find((t) => t?.id === id);
  } catch (err) {
    if (ec2ErrorKind(err) === 'not-found') return undefined;
    throw err;
  }
}

/** The tasks tagged with `tag` = `value`. */
export function taggedWith(tasks: readonly ExportTaskView[], tag: string, value: string): ExportTaskView[] {
  return tasks.filter((t) => t.tags[tag] === value);
}

/**
 * Cancels `task`; true when EC2 took the request. A task that has ended meanwhile is not an error
 * (false); throttling and 5xx answers become Transient.
 */
export async function cancelExportTask(client: EC2Client, task: { id: string }): Promise<boolean> {
  try {
    await client.send(new CancelExportTaskCommand({ ExportTaskId: task.id }));
    return true;
  } catch (err) {
    const transient = transientOf(err, `CancelExportTask ${task.id}`);
    if (transient) throw transient;
    const { code, message } = awsErrorInfo(err);
    log('warn', 'export task not cancelled', { exportTaskId: task.id, error: code, detail: message });
    return false;
  }
}

function imageTaskView(t: ExportImageTask): ExportTaskView | undefined {
  if (!t.ExportImageTaskId) return undefined;
  const progress = t.Progress !== undefined && t.Progress !== '' ? Number(t.Progress) : undefined;
  return {
    kind: 'image',
    id: t.ExportImageTaskId,
    state: t.Status ?? 'unknown',
    ...(progress !== undefined && Number.isFinite(progress) ? { progress } : {}),
    ...(t.StatusMessage ? { statusMessage: t.StatusMessage } : {}),
    tags: tagsOf(t.Tags),
    ...(t.S3ExportLocation?.S3Bucket ? { bucket: t.S3ExportLocation.S3Bucket } : {}),
  };
}

function instanceTaskView(t: ExportTask): ExportTaskView | undefined {
  if (!t.ExportTaskId) return undefined;
  return {
    kind: 'instance',
    id: t.ExportTaskId,
    state: t.State ?? 'unknown',
    ...(t.StatusMessage ? { statusMessage: t.StatusMessage } : {}),
    tags: tagsOf(t.Tags),
    ...(t.ExportToS3Task?.S3Bucket ? { bucket: t.ExportToS3Task.S3Bucket } : {}),
    ...(t.ExportToS3Task?.S3Key ? { key: t.ExportToS3Task.S3Key } : {}),
  };
}

function tagsOf(tags: Array<{ Key?: string; Value?: string }> | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const t of tags ?? []) if (t.Key !== undefined) out[t.Key] = t.Value ?? '';
  return out;
}

/** Runs one EC2 call; throttling, 5xx answers and dropped connections become Transient. */
export async function call<T>(action: string, send: () => Promise<T>): Promise<T> {
  try {
    return await send();
  } catch (err) {
    throw transientOf(err, action) ?? err;
  }
}

function isDefined<T>(value: T | undefined): value is T {
  return value !== undefined;
}
