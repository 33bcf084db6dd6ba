/**
 * The start step: ImportImage (image mode) or one ImportSnapshot per disk (snapshot mode), with
 * every option of the request. The request's client token makes the call idempotent: a retried
 * or duplicated start returns the task already started, never a second one.
 */
// The SDK is bundled into the Lambda assets by esbuild, hence a dev dependency.
// eslint-disable-next-line import/no-extraneous-dependencies
import {
  DescribeImportImageTasksCommand,
  ImportImageCommand,
  ImportSnapshotCommand,
  type EC2Client,
  type ImportImageRequest,
  type ImportImageTask,
  type ImportSnapshotRequest,
} from '@aws-sdk/client-ec2';
import { DuplicateImportError, ImportLimitExceededError, InvalidImportOptionsError, RoleNotReadyError, awsErrorInfo, transientOf } from './errors';
import { derivedToken } from './import-options';
import { disksOf, ec2Tags, importPayload, requestOf } from './import-state';
import { log } from './log';
import { EXECUTION_TAG, type ImportRequest, type ImportStarted } from './payload';

/** The environment variable naming the VM Import service role. */
export const ROLE_NAME_VARIABLE = 'VMIE_ROLE_NAME';

/** The start handler's work, with a given EC2 client. */
export async function startImport(ec2: EC2Client, event: unknown, env: NodeJS.ProcessEnv = process.env): Promise<ImportStarted> {
  const { state, execution } = importPayload(event);
  const request = requestOf(state);
  const disks = disksOf(state);
  const options = request.options;
  const mode = options.mode ?? 'image';
  const bootMode = options.bootMode ?? state.validation?.bootMode;
  checkDetected(request, bootMode);
  const roleName = env[ROLE_NAME_VARIABLE] || undefined;
  const description = options.description ?? `Imported by vmie from s3://${request.source.bucket}/${request.source.key}`;
  const tags = ec2Tags({ ...options.tags, [EXECUTION_TAG]: execution.id, [CLIENT_TOKEN_TAG]: request.clientToken });
  const startedAt = new Date().toISOString();

  if (mode === 'image') {
    const input: ImportImageRequest = {
      ClientToken: request.clientToken,
      Description: description,
      DiskContainers: disks.map((d, i) => ({ Description: `disk ${i}: s3://${d.bucket}/${d.key}`, Format: d.format, UserBucket: { S3Bucket: d.bucket, S3Key: d.key } })),
      ...(options.licenseType ? { LicenseType: options.licenseType } : {}),
      ...(options.usageOperation ? { UsageOperation: options.usageOperation } : {}),
      ...(bootMode ? { BootMode: bootMode } : {}),
      ...(options.platform ? { Platform: options.platform } : {}),
      ...(options.architecture ? { Architecture: options.architecture } : {}),
      ...(options.encrypted !== undefined ? { Encrypted: options.encrypted } : {}),
      ...(options.kmsKeyId ? { KmsKeyId: options.kmsKeyId } : {}),
      ...(options.licenseConfigurationArns?.length
        ? { LicenseSpecifications: options.licenseConfigurationArns.map((arn) => ({ LicenseConfigurationArn: arn })) }
        : {}),
      TagSpecifications: [{ ResourceType: 'import-image-task', Tags: tags }],
      ...(roleName ? { RoleName: roleName } : {}),
    };
    let out;
    try {
      out = await call('ImportImage', () => ec2.send(new ImportImageCommand(input)));
    } catch (e) {
      if (!(e instanceof DuplicateImportError)) throw e;
      // The token was used before. If that import is running or done, this execution is a
      // duplicate; if every import with it failed, the upload is imported anew under a token
      // derived from the failed tasks (the same for every execution that sees them, so a
      // duplicate of the new attempt is still caught).
      const earlier = await tasksWithToken(ec2, request.clientToken);
      const live = earlier.find((t) => t.Status !== 'deleted' && t.Status !== 'deleting');
      if (live || earlier.length === 0) throw e;
      const retryToken = derivedToken(request.clientToken, `after:${earlier.map((t) => t.ImportTaskId).sort().join(',')}`);
      log('info', 'earlier import of the same objects failed: starting anew', { execution: execution.id, failedTasks: earlier.map((t) => t.ImportTaskId) });
      out = await call('ImportImage', () => ec2.send(new ImportImageCommand({ ...input, ClientToken: retryToken })));
    }
    if (!out.ImportTaskId) throw new Error('ImportImage answered without an ImportTaskId');
    log('info', 'import started', { execution: execution.id, mode, importTaskId: out.ImportTaskId, status: out.Status, disks: disks.length, clientToken: request.clientToken });
    return { mode, importTaskId: out.ImportTaskId, startedAt };
  }

  const ova = disks.find((d) => d.format === 'OVA');
  if (ova) {
    throw new InvalidImportOptionsError(`snapshot mode imports disk images, not an OVA (s3://${ova.bucket}/${ova.key}): use image mode, or upload the OVA's disks`);
  }
  const snapshotTaskIds: string[] = [];
  // One at a time, in disk order: a retry after a partial start finds the started ones by their tokens.
  for (const [i, d] of disks.entries()) {
    const input: ImportSnapshotRequest = {
      ClientToken: derivedToken(request.clientToken, `snapshot:${i}`),
      Description: `${description} (disk ${i})`,
      DiskContainer: { Description: `disk ${i}: s3://${d.bucket}/${d.key}`, Format: d.format, UserBucket: { S3Bucket: d.bucket, S3Key: d.key } },
      ...(options.encrypted !== undefined ? { Encrypted: options.encrypted } : {}),
      ...(options.kmsKeyId ? { KmsKeyId: options.kmsKeyId } : {}),
      TagSpecifications: [{ ResourceType: 'import-snapshot-task', Tags: tags }],
      ...(roleName ? { RoleName: roleName } : {}),
    };
    const out = await call('ImportSnapshot', () => ec2.send(new ImportSnapshotCommand(input)));
    if (!out.ImportTaskId) throw new Error('ImportSnapshot answered without an ImportTaskId');
    snapshotTaskIds.push(out.ImportTaskId);
  }
  log('info', 'import started', { execution: execution.id, mode, snapshotTaskIds, disks: disks.length, clientToken: request.clientToken });
  return { mode, snapshotTaskIds, startedAt };
}

/** The documented rules that depend on the boot mode the validation detected. */
function checkDetected(request: ImportRequest, bootMode: string | undefined): void {
  const o = request.options;
  if (bootMode === 'uefi' && (o.encrypted || o.licenseConfigurationArns?.length) && (o.mode ?? 'image') === 'image') {
    throw new InvalidImportOptionsError(
      'the image boots with UEFI, and a UEFI import cannot also be encrypted or carry license configurations: ' +
        'drop encrypted/kmsKeyId and licenseConfigurationArns, or use mode "snapshot" and encrypt the snapshots',
    );
  }
}

/** The tag that carries the request's client token on its import tasks. */
export const CLIENT_TOKEN_TAG = 'vmie:client-token';

/** The import image tasks started with `token` (found by their tag), every state. */
async function tasksWithToken(ec2: EC2Client, token: string): Promise<ImportImageTask[]> {
  const tasks: ImportImageTask[] = [];
  let next: string | undefined;
  do {
    const page = await call('DescribeImportImageTasks', () =>
      ec2.send(new DescribeImportImageTasksCommand({ Filters: [{ Name: `tag:${CLIENT_TOKEN_TAG}`, Values: [token] }], NextToken: next })));
    tasks.push(...(page.ImportImageTasks ?? []));
    next = page.NextToken;
  } while (next);
  return tasks;
}

/** Runs one EC2 call and names its failure for the state machine. */
async function call<T>(action: string, send: () => Promise<T>): Promise<T> {
  try {
    return await send();
  } catch (e) {
    throw startError(e, action);
  }
}

/**
 * Maps EC2's answers to the workflow's errors: a limit answer means "wait", the role answer
 * means "IAM has not propagated yet", throttling and 5xx are transient, and any other refusal
 * names the options EC2 rejected.
 */
export function startError(e: unknown, action: string): Error {
  const info = awsErrorInfo(e);
  const transient = transientOf(e, action);
  if (transient) return transient;
  if (info.code === 'ResourceLimitExceeded' || /limit/i.test(info.code) || /limit(s)? (has been |was )?(exceeded|reached)|exceeded .*limit|maximum number of/i.test(info.message)) {
    return new ImportLimitExceededError(`${action}: ${info.code}: ${info.message}`, { cause: e });
  }
  if (info.code === 'IdempotentParameterMismatch') {
    return new DuplicateImportError(
      `${action}: an import of the same objects (the same client token) was started already, by another execution for ` +
        'the same upload (a duplicate trigger) or with other options; that import carries on. To import the image anew, ' +
        `upload it again (${info.message})`,
      { cause: e },
    );
  }
  if (/does not exist or does not have sufficient permissions/i.test(info.message)) {
    return new RoleNotReadyError(`${action}: ${info.code}: ${info.message}`, { cause: e });
  }
  if (info.status !== undefined && info.status >= 400 && info.status < 500) {
    return new InvalidImportOptionsError(`${action} was refused: ${info.code}: ${info.message}`, { cause: e });
  }
  return e instanceof Error ? e : new Error(String(e));
}

