/**
 * The import workflow end to end when things go wrong: each failure VM Import reports (the error
 * table of the VM Import/Export facts, section 5) ends the execution through the clean-up path with
 * the matching remedy; quota and IAM propagation answers are retried until they pass; a timeout and
 * an abort cancel the running import task through the EventBridge rule on the execution's status.
 */
import * as fs from 'node:fs';
import { GetObjectTaggingCommand, PutObjectTaggingCommand } from '@aws-sdk/client-s3';
import { Duration } from 'aws-cdk-lib';
import { RULES, type FindingCode } from '../../lambda/disk/findings';
import { REMEDIES } from '../../lambda/workflow/remedies';
import { BUCKET, ImportHarness, type Run } from '../helpers/import-workflow-harness';
import { bootMbrDisk, zipOf } from '../helpers/inspect-fixtures';
import { executionStatusChangeEvent } from '../helpers/local-aws';
import { ACCESS_DENIED_MESSAGE, CANCELED_MESSAGE, startLocalEc2, type LocalEc2 } from '../helpers/local-ec2';
import type { LocalExecution } from '../helpers/local-sfn';

const HOUR = 3_600_000;
const KEY = 'vms/web/web-01.img';
/** The workflow's timeout in these tests. */
const TIMEOUT_HOURS = 2;
/** The states of the clean-up path, in order. */
const CLEANUP_PATH = ['Cancel import', 'Remove staged files', 'Notify failure', 'Import failed'];

let h: ImportHarness;
let slow: LocalEc2;

/** A fresh object version of the image (a new ETag, hence a new client token), under `key`. */
let round = 0;
async function freshUpload(key: string = KEY): Promise<void> {
  round++;
  const image = fs.readFileSync(bootMbrDisk());
  // One byte past the partitions differs each round: the same disk, another object.
  const copy = Buffer.from(image);
  copy.writeUInt32LE(round, copy.length - 4);
  await h.aws.s3.put(BUCKET, key, copy);
  // S3 gives an overwritten object no tags; s3rver keeps the old object's, so drop them here.
  await h.aws.s3.client.send(new PutObjectTaggingCommand({ Bucket: BUCKET, Key: key, Tagging: { TagSet: [] } }));
}

/** The `VM Import Failed` event the state machine sent for `exec`. */
function failureEventOf(exec: LocalExecution): any {
  const events = h.workflow.events.filter((e) => e.detailType === 'VM Import Failed' && e.detail.execution === exec.executionArn);
  expect(events).toHaveLength(1);
  return events[0].detail;
}

function expectCleanupPath(run: Run): void {
  expect(run.result.status).toBe('FAILED');
  const entered = run.exec.statesEntered();
  expect(entered.slice(-CLEANUP_PATH.length)).toEqual(CLEANUP_PATH);
}

/** The retries of `state`, with the error names their retrier matches and when each happened. */
function retriesOf(exec: LocalExecution, state: string): Array<{ errors: string[]; at: number }> {
  return exec.events
    .filter((e) => e.type === 'StateRetried' && e.state?.name === state)
    .map((e) => ({ errors: e.retry!.retrier.ErrorEquals, at: e.simulatedTime }));
}

beforeAll(async () => {
  h = await ImportHarness.start({ timeout: Duration.hours(TIMEOUT_HOURS) });
  slow = await startLocalEc2({ s3: h.aws.s3.client, clock: h.aws.clock, importDurationMs: 6 * HOUR });
});

afterAll(async () => {
  await slow?.close();
  await h?.close();
});

afterEach(() => {
  h.intercept = (call) => call.run();
});

describe('failures VM Import reports end through the clean-up path with the remedy', () => {
  /**
   * The error table: a StatusMessage as the service words it, the row of the library's table it
   * must match, and a word of the reference's "what helps" that the remedy must carry.
   */
  const table: Array<[string, string, RegExp]> = [
    ['ClientError: The service role vmimport does not exist or does not have sufficient permissions for the service to continue', 'ROLE', /role/i],
    ['ClientError: The given S3 bucket is not local to the region', 'BUCKET_REGION', /Region/],
    ['ClientError: Footers not identical', 'VHD_FOOTERS', /fixed or dynamic VHD/],
    ['ERROR: File uses unsupported compression algorithm 0', 'VMDK_NOT_STREAM_OPTIMIZED', /stream-optimized/],
    ['ClientError: Disk validation failed [Unsupported VMDK File Format]', 'VMDK_NOT_STREAM_OPTIMIZED', /stream-optimized/],
    ['ClientError: Uncompressed data has invalid length.', 'VMDK_DAMAGED', /again/],
    ['ClientError: Unsupported OVA format', 'OVA_PACKAGING', /OVA/],
    ['ClientError: OVA with chunked disk files is not supported', 'OVA_PACKAGING', /OVA/],
    [ACCESS_DENIED_MESSAGE, 'S3_ACCESS', /bucket policy/],
    ['ClientError: The specified KMS key is not accessible', 'KMS_KEY', /key/],
    ['ClientError: No bootable partition found', 'NO_BOOT_PARTITION', /partition table/],
    ['ClientError: No valid partition. Not a valid volume.', 'NO_BOOT_PARTITION', /partition table/],
    ['ClientError: Unknown OS / Missing OS files.', 'UNKNOWN_OS', /snapshot/],
    ['ClientError: Unsupported kernel version 5.14.0-70.el9.x86_64', 'KERNEL', /snapshot|kernel/],
    ['FirstBootFailure: This import request failed because the Windows instance failed to boot and establish network connectivity.', 'FIRST_BOOT', /DHCP/],
  ];

  test.each(table)('%s', async (statusMessage, row, helps) => {
    // GIVEN an import whose task the service fails with this message
    await freshUpload();
    h.aws.ec2.failTask(statusMessage);

    // WHEN the workflow runs
    const run = await h.run({ bucket: BUCKET, key: KEY });

    // THEN the execution fails through the clean-up path, named ImportTaskFailed
    expectCleanupPath(run);
    expect(run.result.error).toBe('ImportTaskFailed');
    expect(run.result.cause).toContain(statusMessage.replace(/\.$/, ''));
    // AND the failure event carries the service's message and the remedy of its row
    const detail = failureEventOf(run.exec);
    const expected = REMEDIES.find((r) => r.id === row)!;
    expect(detail).toMatchObject({ execution: run.exec.executionArn, status: 'FAILED', error: 'ImportTaskFailed', source: { bucket: BUCKET, key: KEY } });
    expect(detail.reason).toContain(statusMessage.replace(/\.$/, ''));
    expect(detail.remedy).toBe(expected.remedy);
    expect(detail.remedy).toMatch(helps);
    // AND the task had ended already: nothing was left to cancel
    expect(detail.cancelledTasks).toEqual([]);
  });
});

describe('failures found before any import task', () => {
  test('an image that cannot be imported fails at validation, with the remedy of each finding', async () => {
    // GIVEN a zip archive uploaded as an image
    const key = 'vms/backup/web-01.img';
    await h.aws.s3.upload(BUCKET, key, zipOf(bootMbrDisk()));
    const from = h.aws.ec2.calls.length;

    // WHEN the workflow runs
    const run = await h.run({ bucket: BUCKET, key });

    // THEN it fails at validation, through the clean-up path, and never calls ImportImage
    expectCleanupPath(run);
    expect(run.exec.statesEntered()).not.toContain('Start import');
    expect(h.aws.ec2.calls.slice(from).filter((c) => c.action === 'ImportImage')).toEqual([]);
    expect(run.result.error).toBe('UnsupportedImage');
    // AND the failure event names the object, the findings and their fixes
    const detail = failureEventOf(run.exec);
    expect(detail).toMatchObject({ error: 'UnsupportedImage', status: 'FAILED', source: { bucket: BUCKET, key } });
    expect(detail.reason).toContain(`s3://${BUCKET}/${key} cannot be imported`);
    const codes = [...detail.reason.matchAll(/\[([A-Z_]+)\]/g)].map((m: RegExpMatchArray) => m[1]);
    expect(codes.length).toBeGreaterThan(0);
    expect(detail.remedy.split(' | ')).toEqual(codes.map((code) => RULES[code as FindingCode].remedy));
    expect(detail.reason).toMatch(/zip/);
  });
});

describe('running an import again', () => {
  test('an import started again after its task failed does not end quietly as a duplicate', async () => {
    // GIVEN an import that failed (its task ended deleted)
    await freshUpload();
    h.aws.ec2.failTask('ClientError: Unknown OS / Missing OS files.');
    const first = await h.run({ bucket: BUCKET, key: KEY });
    expect(first.result.status).toBe('FAILED');

    // WHEN the same object is imported again (a retry by hand, or a redelivered event)
    const again = await h.run({ bucket: BUCKET, key: KEY });

    // THEN the execution does not end as "Already importing" while nothing imports: it reports the
    // failure again, or imports anew
    expect(again.exec.statesEntered().at(-1)).not.toBe('Already importing');
  });

  test('a duplicate trigger does not mark the source processed before the import it defers to has ended', async () => {
    // GIVEN an upload delivered twice, whose import task will fail
    await freshUpload();
    const before = await h.aws.s3.client.send(new GetObjectTaggingCommand({ Bucket: BUCKET, Key: KEY }));
    expect(before.TagSet ?? []).toEqual([]);
    h.aws.ec2.failTask('ClientError: No bootable partition found');
    const event = { 'source': 'aws.s3', 'detail-type': 'Object Created', 'detail': { bucket: { name: BUCKET }, object: { key: KEY } } };

    // WHEN both executions run
    const runs = [h.workflow.start(event), h.workflow.start(event)];
    const results = await Promise.all(runs.map((r) => r.result));

    // THEN one import failed and the other deferred to it
    expect(results.map((r) => r.status).sort()).toEqual(['FAILED', 'SUCCEEDED']);
    expect(runs.map((r) => r.statesEntered().at(-1)).sort()).toEqual(['Already importing', 'Import failed']);
    // AND the image is not marked processed (a lifecycle rule may delete processed images)
    const tags = await h.aws.s3.client.send(new GetObjectTaggingCommand({ Bucket: BUCKET, Key: KEY }));
    expect((tags.TagSet ?? []).find((t) => t.Key === 'vmie:processed')).toBeUndefined();
  });
});

describe('answers that are retried', () => {
  test('the import quota: ImportImage answering ResourceLimitExceeded is retried with back-off until it passes', async () => {
    // GIVEN EC2 answers the next three ImportImage calls with the quota error
    await freshUpload();
    h.aws.ec2.failNext('ImportImage', { code: 'ResourceLimitExceeded', message: 'You have reached the maximum number of concurrent import tasks (20) for this Region.' }, 3);

    // WHEN the workflow runs
    const run = await h.run({ bucket: BUCKET, key: KEY });

    // THEN Start import was retried three times as ImportLimitExceeded, each wait longer, and the import went on
    expect(run.result.status).toBe('SUCCEEDED');
    const retries = retriesOf(run.exec, 'Start import');
    expect(retries.map((r) => r.errors)).toEqual([['ImportLimitExceeded'], ['ImportLimitExceeded'], ['ImportLimitExceeded']]);
    const entered = run.exec.events.find((e) => e.type === 'StateEntered' && e.state?.name === 'Start import')!.simulatedTime;
    const gaps = retries.map((r, i) => r.at - (i === 0 ? entered : retries[i - 1].at));
    expect(gaps[0]).toBeGreaterThanOrEqual(60_000);
    expect(gaps[1]).toBeGreaterThan(gaps[0]);
    expect(gaps[2]).toBeGreaterThan(gaps[1]);
    expect(h.workflow.events.some((e) => e.detailType === 'VM Import Succeeded' && e.detail.execution === run.exec.executionArn)).toBe(true);
  });

  test('IAM propagation: "does not exist or does not have sufficient permissions" is retried as RoleNotReady', async () => {
    // GIVEN the service role is not usable yet for the next two ImportImage calls
    await freshUpload();
    h.aws.ec2.failNext('ImportImage', { code: 'InvalidParameter', message: 'The service role vmimport does not exist or does not have sufficient permissions for the service to continue' }, 2);

    // WHEN the workflow runs
    const run = await h.run({ bucket: BUCKET, key: KEY });

    // THEN the start was retried twice as RoleNotReady, then the import completed
    expect(run.result.status).toBe('SUCCEEDED');
    expect(retriesOf(run.exec, 'Start import').map((r) => r.errors)).toEqual([['RoleNotReady'], ['RoleNotReady']]);
  });

  test('a role that never becomes usable fails the import after the retries, with the role remedy', async () => {
    // GIVEN the service role is not usable for as many calls as the start is tried
    await freshUpload();
    const retrier = h.workflow.stateDefinition('Start import').Retry.find((r: any) => r.ErrorEquals.includes('RoleNotReady'));
    h.aws.ec2.failNext('ImportImage', { code: 'InvalidParameter', message: 'The service role vmimport does not exist or does not have sufficient permissions for the service to continue' }, retrier.MaxAttempts + 1);

    // WHEN the workflow runs
    const run = await h.run({ bucket: BUCKET, key: KEY });

    // THEN it gave up after its retries, through the clean-up path, with the remedy for the role
    expectCleanupPath(run);
    expect(retriesOf(run.exec, 'Start import')).toHaveLength(retrier.MaxAttempts);
    const detail = failureEventOf(run.exec);
    expect(detail.error).toBe('RoleNotReady');
    expect(detail.remedy).toBe(REMEDIES.find((r) => r.id === 'ROLE')!.remedy);
  });
});

describe('timeout and abort', () => {
  /** Routes the import steps to the simulator whose imports take 6 hours. */
  function useSlowImports(onCheck?: (n: number) => void): void {
    let checks = 0;
    h.intercept = async (call) => {
      try {
        return call.bundle === 'import' ? await call.run(undefined, undefined, { AWS_ENDPOINT_URL_EC2: slow.endpoint }) : await call.run();
      } finally {
        // A check answers ImportInProgress (an error) until the task ends.
        if (call.step === 'import.check') onCheck?.(++checks);
      }
    };
  }

  /** The simulator's task tagged with the execution. */
  function taskOf(exec: LocalExecution) {
    const tasks = slow.importImageTasks().filter((t) => (t.Tags ?? []).some((tag) => tag.Key === 'vmie:execution' && tag.Value === exec.executionArn));
    expect(tasks).toHaveLength(1);
    return tasks[0];
  }

  test('a timed-out import: the rule on the status change cancels the import task and tells the bus', async () => {
    // GIVEN an import that takes longer than the workflow's timeout
    await freshUpload();
    useSlowImports();

    // WHEN the workflow runs out of time
    const run = await h.run({ bucket: BUCKET, key: KEY });
    expect(run.result.status).toBe('TIMED_OUT');
    expect(run.exec.simulatedMs()).toBe(TIMEOUT_HOURS * HOUR);
    expect(taskOf(run.exec).Status).toBe('active');
    // AND EventBridge delivers the status change to the rule's targets
    const delivered = await h.aws.deliverEvent(executionStatusChangeEvent(h.workflow, run.exec));

    // THEN the clean-up and tidy functions ran (no state of the execution could)
    expect(delivered.map((d) => d.error)).toEqual([undefined, undefined]);
    expect(delivered.map((d) => h.workflow.functions[d.target].handler).sort()).toEqual(['index.cleanup', 'index.tidy']);
    // AND the import task was cancelled
    const task = taskOf(run.exec);
    expect(task.Status).toBe('deleting');
    h.aws.clock.advance(5 * 60_000);
    expect(taskOf(run.exec)).toMatchObject({ Status: 'deleted', StatusMessage: CANCELED_MESSAGE });
    // AND the failure event went to the bus, saying why and what to do
    const entry = h.aws.events.entries.find((e) => e.detailType === 'VM Import Failed' && e.detail.execution === run.exec.executionArn);
    expect(entry).toBeDefined();
    expect(entry!.source).toBe('vmie.import');
    expect(entry!.detail).toMatchObject({ status: 'TIMED_OUT', error: 'TIMED_OUT', cancelledTasks: [task.ImportTaskId], source: { bucket: BUCKET, key: KEY } });
    expect(entry!.detail.remedy).toMatch(/timeout/i);
    expect(entry!.detail.durationSeconds).toBe(TIMEOUT_HOURS * 3600);
  });

  test('an aborted import: the rule on the status change cancels the import task', async () => {
    // GIVEN an import that is stopped while the workflow waits for its task
    await freshUpload();
    let exec: LocalExecution | undefined;
    useSlowImports((n) => {
      if (n === 3) exec!.abort();
    });
    exec = h.workflow.start({ bucket: BUCKET, key: KEY });
    const result = await exec.result;
    expect(result.status).toBe('ABORTED');
    expect(taskOf(exec).Status).toBe('active');

    // WHEN EventBridge delivers the status change to the rule's targets
    const delivered = await h.aws.deliverEvent(executionStatusChangeEvent(h.workflow, exec));

    // THEN the task was cancelled and the bus told
    expect(delivered.map((d) => d.error)).toEqual([undefined, undefined]);
    expect(taskOf(exec).Status).toBe('deleting');
    const entry = h.aws.events.entries.find((e) => e.detailType === 'VM Import Failed' && e.detail.execution === exec!.executionArn);
    expect(entry?.detail).toMatchObject({ status: 'ABORTED', error: 'ABORTED', cancelledTasks: [taskOf(exec).ImportTaskId] });
    // AND no clean-up state ran in the execution itself
    expect(exec.statesEntered()).not.toContain('Cancel import');
  });
});
