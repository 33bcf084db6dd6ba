import * as fs from 'node:fs';
import * as path from 'node:path';
import { CancelExportTaskCommand, ExportImageCommand } from '@aws-sdk/client-ec2';
import { GetObjectCommand, HeadObjectCommand } from '@aws-sdk/client-s3';
import { App, Duration, Stack } from 'aws-cdk-lib';
import { S3Source } from '../../lambda/aws/s3-source';
import { inspect } from '../../lambda/disk/inspect';
import { EXECUTION_TAG } from '../../lambda/workflow/payload';
import { VmExportBucket, VmExportWorkflow, VmieServiceRole } from '../../src';
import { run, sampleMbrDisk, tempDir } from '../helpers/fixtures';
import { executionStatusChangeEvent, SSE_S3, startLocalAws, type LocalAws } from '../helpers/local-aws';
import { CANCELED_MESSAGE } from '../helpers/local-ec2';
import { retryDelayMs, type LocalExecution, type LocalExecutionEvent, type LocalWorkflow } from '../helpers/local-sfn';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const aslValidator: (definition: any) => { isValid: boolean; errorsText: (sep?: string) => string } = require('asl-validator');

const ENV = { account: '123456789012', region: 'us-east-1' };
const EXPORT_BUCKET = 'vmie-export-local';
const SLOW_BUCKET = 'vmie-export-slow';
const SHORT_BUCKET = 'vmie-export-short';
/** The simulator's default duration of an export task (LocalEc2Options.exportDurationMs). */
const DEFAULT_EXPORT_MS = 20 * 60_000;
/** Export tasks of the slow simulator take this long: longer than the short workflow's timeout, and several poll cycles. */
const SLOW_EXPORT_MS = 12 * 3600_000;
const SHORT_TIMEOUT = Duration.hours(1);
const HOUR = 3600_000;
const MiB = 1024 * 1024;

/** The stacks: the export workflow as a user deploys it (default timeout), and one with a short timeout. */
function buildStacks() {
  const app = new App();
  const build = (id: string, timeout?: Duration) => {
    const stack = new Stack(app, id, { env: ENV });
    const bucket = new VmExportBucket(stack, 'Exports');
    const role = new VmieServiceRole(stack, 'ServiceRole');
    const workflow = new VmExportWorkflow(stack, 'Export', { exportBucket: bucket.bucket, serviceRole: role, timeout });
    return { stack, bucket, workflow };
  };
  return { main: build('ExportWorkflowLocal'), short: build('ExportWorkflowShort', SHORT_TIMEOUT) };
}

let stacks: ReturnType<typeof buildStacks>;
/** Default export durations: the main workflow. */
let aws: LocalAws;
/** Exports that take SLOW_EXPORT_MS: the short-timeout workflow, and the main one for the cost of waiting. */
let slow: LocalAws;
let slowMain: LocalWorkflow;
let raw: string;
let scratch: ReturnType<typeof tempDir>;
let logged: string[] = [];

beforeAll(async () => {
  raw = sampleMbrDisk(16);
  scratch = tempDir('vmie-export-workflow-');
  stacks = buildStacks();
  aws = await startLocalAws({ stack: stacks.main.stack, buckets: { [EXPORT_BUCKET]: stacks.main.bucket.bucket } });
  slow = await startLocalAws({
    stack: stacks.short.stack,
    buckets: { [SHORT_BUCKET]: stacks.short.bucket.bucket, [SLOW_BUCKET]: stacks.main.bucket.bucket },
    ec2: { exportDurationMs: SLOW_EXPORT_MS },
  });
  slowMain = await slow.loadWorkflow({ stack: stacks.main.stack });
});

afterAll(async () => {
  await aws?.close();
  await slow?.close();
  scratch?.cleanup();
});

beforeEach(() => {
  logged = [];
  // The handlers log one JSON line per step; keep them for assertions, out of the test output.
  jest.spyOn(console, 'log').mockImplementation((line: string) => void logged.push(String(line)));
});

afterEach(async () => {
  jest.restoreAllMocks();
  // Every test leaves the Region without active export tasks: the quota is free for the next.
  for (const local of [aws, slow]) {
    local.clock.advance(2 * SLOW_EXPORT_MS);
    await local.ec2.settle();
  }
});

/** Runs an execution to its end. */
async function execute(workflow: LocalWorkflow, input: any, during?: (exec: LocalExecution) => void) {
  const exec = workflow.start(input);
  during?.(exec);
  const result = await exec.result;
  return { exec, result };
}

/** Asserts how an execution ended; on a mismatch the message shows its path and the errors it met. */
function expectStatus(exec: LocalExecution, status: string): void {
  const outcome = exec.outcome();
  if (outcome?.status === status) return;
  const failures = exec.events.filter((e) => e.type === 'StateFailed' || e.type === 'ExecutionFailed')
    .map((e) => `${e.state?.name ?? 'execution'}: ${e.Error} ${String(e.Cause ?? '').slice(0, 400)}`);
  throw new Error(`expected ${status}, got ${JSON.stringify(outcome)}\nstates: ${exec.statesEntered().join(' > ')}\n${failures.join('\n')}`);
}

/** Calls `act` once, when the execution's clock first advances after it entered `state` (a Wait state): between two steps, deterministically. */
function atWait(local: LocalAws, state: string, act: (exec: LocalExecution) => void) {
  return (exec: LocalExecution) => {
    const stop = local.clock.onAdvance(() => {
      if (!exec.statesEntered().includes(state)) return;
      stop();
      act(exec);
    });
    void exec.result.finally(stop);
  };
}

/** The params of the simulator's calls of `action` from `from` on. */
function callsOf(local: LocalAws, action: string, from = 0) {
  return local.ec2.calls.slice(from).filter((c) => c.action === action).map((c) => c.params);
}

/** The tags of the first TagSpecification of a recorded call. */
function tagsIn(params: Record<string, string>): Record<string, string> {
  const tags: Record<string, string> = {};
  for (const [k, v] of Object.entries(params)) {
    const m = /^TagSpecification\.1\.Tag\.(\d+)\.Key$/.exec(k);
    if (m) tags[v] = params[`TagSpecification.1.Tag.${m[1]}.Value`];
  }
  return tags;
}

/** Events of a type and state. */
function eventsOf(exec: LocalExecution, type: string, state: string): LocalExecutionEvent[] {
  return exec.events.filter((e) => e.type === type && e.state?.name === state);
}

/** Lambda invocations of an execution: every entry into, and retry of, a Task state that runs a function. */
function lambdaInvocations(workflow: LocalWorkflow, events: readonly LocalExecutionEvent[]): LocalExecutionEvent[] {
  return events.filter((e) => (e.type === 'StateEntered' || e.type === 'StateRetried') && e.state
    && ['function', 'lambda:invoke'].includes(workflow.taskTarget(e.state.name)?.kind ?? ''));
}

/** What the engine makes of an exported object, read from the local S3. */
async function inspectObject(local: LocalAws, bucket: string, key: string) {
  const source = await S3Source.open(local.s3.client, bucket, key);
  try {
    return await inspect(source, { name: key });
  } finally {
    await source.close();
  }
}

/** Downloads an object to the scratch directory. */
async function download(local: LocalAws, bucket: string, key: string): Promise<string> {
  const out = await local.s3.client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
  const file = path.join(scratch.dir, path.basename(key));
  fs.writeFileSync(file, Buffer.from(await out.Body!.transformToByteArray()));
  return file;
}

/** The object of a completed export of `raw`: it exists, the engine reads it as `format` and importable, and it holds the same disk. */
async function expectExportOfRaw(local: LocalAws, bucket: string, key: string, format: 'vmdk' | 'vhd' | 'raw' | 'ova') {
  const head = await local.s3.client.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
  expect(head.ContentLength).toBeGreaterThan(0);
  const report = await inspectObject(local, bucket, key);
  expect(report.format).toBe(format);
  // The VHD writer rounds the disk up to a whole MiB (the added tail reads as zeros).
  const size = fs.statSync(raw).size;
  expect(report.virtualSize).toBe(format === 'vhd' ? Math.ceil(size / MiB) * MiB : size);
  expect(report.findings.filter((f) => f.severity === 'error')).toEqual([]);
  expect(report.importable).toBe(true);
  expect(report.importFormat).toBe(format.toUpperCase());
  if (format !== 'ova') {
    // qemu-img judges the bytes: the exported disk is the AMI's disk.
    const file = await download(local, bucket, key);
    const qemuFormat = format === 'vhd' ? 'vpc' : format;
    expect(() => run('qemu-img', ['compare', '-f', qemuFormat, '-F', 'raw', file, raw])).not.toThrow();
  }
  return report;
}

const kmsEncryption = {
  Rules: [{ ApplyServerSideEncryptionByDefault: { SSEAlgorithm: 'aws:kms', KMSMasterKeyID: `arn:aws:kms:${ENV.region}:${ENV.account}:key/1234abcd-12ab-34cd-56ef-1234567890ab` }, BucketKeyEnabled: true }],
};

describe('the synthesized export definition', () => {
  test('asl-validator accepts the resolved definition, which names the local bucket and the bundled functions', () => {
    // GIVEN the workflow loaded from the synthesized stack
    // WHEN its resolved definition is validated
    const definition = aws.workflow.definition;
    const { isValid, errorsText } = aslValidator(definition);

    // THEN it is valid ASL with no CloudFormation left in it
    expect(errorsText('\n')).toBe('');
    expect(isValid).toBe(true);
    expect(JSON.stringify(definition)).not.toMatch(/Fn::|"Ref"|\$\{Token/);
    // AND the bucket encryption is read from the local export bucket, and every Lambda step runs a staged bundle
    expect(definition.States['Read bucket encryption'].Parameters).toEqual({ Bucket: EXPORT_BUCKET });
    for (const state of ['Check constraints', 'Start export', 'Check export', 'Cancel export']) {
      const target = aws.workflow.taskTarget(state);
      expect(target?.kind).toBe('function');
      const fn = aws.workflow.functions[(target as { functionArn: string }).functionArn];
      expect(fn.problem).toBeUndefined();
      expect(fs.existsSync(path.join(fn.assetDir, 'index.js'))).toBe(true);
      expect(fn.environment.VMIE_EXPORT_BUCKET).toBe(EXPORT_BUCKET);
    }
    // AND the short workflow's timeout is the one its stack set
    expect(slow.workflow.timeoutSeconds).toBe(SHORT_TIMEOUT.toSeconds());
    expect(aslValidator(slow.workflow.definition).isValid).toBe(true);
  });
});

describe('exports that succeed', () => {
  test.each(['VMDK', 'VHD', 'RAW'] as const)('an AMI exported as %s: the file at the documented key is that format and importable', async (format) => {
    // GIVEN an AMI backed by a bootable disk
    const imageId = aws.ec2.addImage({ sizeGiB: 8, rawFile: raw });
    const calls = aws.ec2.calls.length;
    const events = aws.workflow.events.length;
    const roleName = Object.values(aws.workflow.functions).find((f) => f.handler === 'index.start')!.environment.VMIE_ROLE_NAME;

    // WHEN the export runs
    const { exec, result } = await execute(aws.workflow, { imageId, format, tags: { team: 'platform' } });

    // THEN it succeeds, naming the object the service wrote at <prefix><task id>.<format>
    expectStatus(exec, 'SUCCEEDED');
    const [request] = callsOf(aws, 'ExportImage', calls);
    expect(callsOf(aws, 'ExportImage', calls)).toHaveLength(1);
    const task = aws.ec2.exportTasks().find((t) => t.kind === 'image' && t.key === result.output?.object?.key)!;
    expect(task).toMatchObject({ state: 'completed', bucket: EXPORT_BUCKET });
    const key = `exports/${task.id}.${format.toLowerCase()}`;
    expect(task.key).toBe(key);
    expect(result.output).toEqual({ status: 'completed', object: { bucket: EXPORT_BUCKET, key } });
    // AND the task was asked as documented: the AMI, the format, the bucket and prefix, the service role, the tags
    expect(request).toMatchObject({
      'ImageId': imageId,
      'DiskImageFormat': format,
      'S3ExportLocation.S3Bucket': EXPORT_BUCKET,
      'S3ExportLocation.S3Prefix': 'exports/',
      'RoleName': roleName,
    });
    expect(roleName).toMatch(/^[\w+=,.@-]{1,64}$/);
    expect(tagsIn(request)).toEqual({ team: 'platform', [EXECUTION_TAG]: exec.executionArn });
    // AND the engine reads the file as the asked format, importable, holding the AMI's disk
    await expectExportOfRaw(aws, EXPORT_BUCKET, key, format.toLowerCase() as 'vmdk' | 'vhd' | 'raw');
    // AND the success event names the object and the task
    const sent = aws.workflow.events.slice(events);
    expect(sent).toHaveLength(1);
    expect(sent[0]).toMatchObject({ source: VmExportWorkflow.EVENT_SOURCE, detailType: 'VM Export Succeeded' });
    expect(sent[0].detail).toMatchObject({ object: { bucket: EXPORT_BUCKET, key }, execution: exec.executionArn, export: { kind: 'image', exportTaskId: task.id, key } });
    // AND the path went through the checks, the start and the polling, and never the failure path
    const entered = exec.statesEntered();
    expect(entered.slice(0, 5)).toEqual(['Read bucket encryption', 'Check constraints', 'Start export', 'Wait for export', 'Check export']);
    expect(entered.slice(-2)).toEqual(['Notify success', 'Exported']);
    expect(entered).not.toContain('No bucket encryption');
    expect(entered).not.toContain('Cancel export');
    expect(exec.simulatedMs()).toBeGreaterThanOrEqual(DEFAULT_EXPORT_MS);
  });

  test.each([
    ['OVA', { format: 'OVA' }, 'ova', { 'ExportToS3.ContainerFormat': 'ova', 'ExportToS3.DiskImageFormat': 'VMDK', 'TargetEnvironment': 'vmware' }],
    ['VMDK for vmware', { format: 'VMDK', targetEnvironment: 'vmware' }, 'vmdk', { 'ExportToS3.DiskImageFormat': 'VMDK', 'TargetEnvironment': 'vmware' }],
  ] as const)('an instance exported as %s: the object is written and importable', async (_name, options, extension, asked) => {
    // GIVEN an instance with one volume
    const instanceId = aws.ec2.addInstance({ volumes: [{ sizeGiB: 8, rawFile: raw }] });
    const calls = aws.ec2.calls.length;
    const events = aws.workflow.events.length;

    // WHEN it is exported
    const { exec, result } = await execute(aws.workflow, { instanceId, ...options });

    // THEN CreateInstanceExportTask was asked for the format, and the execution ends with the object
    expectStatus(exec, 'SUCCEEDED');
    const requests = callsOf(aws, 'CreateInstanceExportTask', calls);
    expect(requests).toHaveLength(1);
    expect(requests[0]).toMatchObject({ 'InstanceId': instanceId, 'ExportToS3.S3Bucket': EXPORT_BUCKET, 'ExportToS3.S3Prefix': 'exports/', ...asked });
    if (extension === 'vmdk') expect(requests[0]['ExportToS3.ContainerFormat']).toBeUndefined();
    const task = aws.ec2.exportTasks().find((t) => t.kind === 'instance' && t.key === result.output.object.key)!;
    expect(task).toMatchObject({ state: 'completed', bucket: EXPORT_BUCKET, key: `exports/${task.id}.${extension}` });
    expect(result.output).toEqual({ status: 'completed', object: { bucket: EXPORT_BUCKET, key: task.key } });
    // AND the object is there, and the engine reads it as such
    await expectExportOfRaw(aws, EXPORT_BUCKET, task.key, extension);
    // AND the success event names it
    expect(aws.workflow.events.slice(events)).toEqual([expect.objectContaining({
      detailType: 'VM Export Succeeded',
      detail: expect.objectContaining({ object: { bucket: EXPORT_BUCKET, key: task.key }, execution: exec.executionArn }),
    })]);
  });
});

describe('constraints fail fast with ExportNotPossible, the reason and the remedy', () => {
  type Case = [string, (local: LocalAws) => Record<string, unknown>, RegExp, RegExp];
  const cases: Case[] = [
    ['an encrypted snapshot', (l) => ({ imageId: l.ec2.addImage({ sizeGiB: 8, rawFile: raw, encrypted: true }) }), /encrypted snapshots/, /without encryption|unencrypted/],
    ['a volume over 1 TiB', (l) => ({ imageId: l.ec2.addImage({ sizeGiB: 2048, rawFile: raw }) }), /over 1 TiB.*2048 GiB/, /below 1 TiB/],
    ['a Marketplace product code', (l) => ({ imageId: l.ec2.addImage({ sizeGiB: 8, rawFile: raw, productCodes: ['8fvwc5srg1ajcu6kqkb1i6kqc'] }) }), /Marketplace product codes \(8fvwc5srg1ajcu6kqkb1i6kqc\)/, /not one from AWS Marketplace/],
    ['license-included Windows', (l) => ({ imageId: l.ec2.addImage({ sizeGiB: 30, rawFile: raw, platform: 'windows' }) }), /Windows with license-included billing \(usage operation RunInstances:0002/, /BYOL/],
    ['an instance with two volumes', (l) => ({
      instanceId: l.ec2.addInstance({ volumes: [{ sizeGiB: 8, rawFile: raw }, { sizeGiB: 4, rawFile: raw }] }),
      format: 'OVA',
    }), /has 2 EBS volumes.*one volume only/, /Detach the data volumes/],
  ];

  test.each(cases)('%s', async (_name, given, reason, remedy) => {
    // GIVEN what cannot be exported
    const input = given(aws);
    const calls = aws.ec2.calls.length;
    const tasks = aws.ec2.exportTasks().length;
    const events = aws.workflow.events.length;

    // WHEN its export runs
    const { exec, result } = await execute(aws.workflow, input);

    // THEN it fails at the checks, naming the reason
    expectStatus(exec, 'FAILED');
    expect(result.error).toBe('ExportNotPossible');
    expect(result.cause).toMatch(reason);
    expect(exec.statesEntered()).toEqual(['Read bucket encryption', 'Check constraints', 'Cancel export', 'Notify failure', 'Export failed']);
    expect(exec.simulatedMs()).toBe(0);
    // AND the failure event carries the reason and the remedy, and no task was cancelled
    const sent = aws.workflow.events.slice(events);
    expect(sent).toHaveLength(1);
    expect(sent[0]).toMatchObject({ source: VmExportWorkflow.EVENT_SOURCE, detailType: 'VM Export Failed' });
    expect(sent[0].detail).toMatchObject({ error: 'ExportNotPossible', cancelledTasks: [] });
    expect(sent[0].detail.reason).toMatch(reason);
    expect(sent[0].detail.remedy).toMatch(remedy);
    // AND no export task was started
    expect(callsOf(aws, 'ExportImage', calls)).toEqual([]);
    expect(callsOf(aws, 'CreateInstanceExportTask', calls)).toEqual([]);
    expect(aws.ec2.exportTasks()).toHaveLength(tasks);
  });

  test('an SSE-KMS export bucket', async () => {
    // GIVEN an exportable AMI, and an export bucket whose default encryption is SSE-KMS
    const imageId = aws.ec2.addImage({ sizeGiB: 8, rawFile: raw });
    aws.setBucketEncryption(EXPORT_BUCKET, kmsEncryption);
    const calls = aws.ec2.calls.length;
    const events = aws.workflow.events.length;
    try {
      // WHEN its export runs
      const { exec, result } = await execute(aws.workflow, { imageId });

      // THEN it fails at the checks, with the bucket named, and no task started
      expect(result).toMatchObject({ status: 'FAILED', error: 'ExportNotPossible' });
      expect(result.cause).toMatch(new RegExp(`export bucket ${EXPORT_BUCKET} encrypts with aws:kms`));
      expect(exec.statesEntered()).toEqual(['Read bucket encryption', 'Check constraints', 'Cancel export', 'Notify failure', 'Export failed']);
      const [sent] = aws.workflow.events.slice(events);
      expect(sent.detail).toMatchObject({ error: 'ExportNotPossible', cancelledTasks: [] });
      expect(sent.detail.reason).toMatch(/rejects buckets encrypted with SSE-KMS/);
      expect(sent.detail.remedy).toMatch(/SSE-S3/);
      expect(callsOf(aws, 'ExportImage', calls)).toEqual([]);

      // AND a bucket without default encryption is fine: the workflow takes the "no encryption" branch and exports
      aws.setBucketEncryption(EXPORT_BUCKET, undefined);
      const plain = await execute(aws.workflow, { imageId, format: 'RAW' });
      expectStatus(plain.exec, 'SUCCEEDED');
      expect(plain.exec.statesEntered().slice(0, 3)).toEqual(['Read bucket encryption', 'No bucket encryption', 'Check constraints']);
    } finally {
      aws.setBucketEncryption(EXPORT_BUCKET, SSE_S3);
    }
  });
});

describe('waiting, failures in the middle, abort and timeout', () => {
  test('five active export tasks: the execution waits for room on the clock, then succeeds', async () => {
    // GIVEN five exports of others running, started through the simulator, filling the Region's quota
    const roleName = Object.values(aws.workflow.functions).find((f) => f.handler === 'index.start')!.environment.VMIE_ROLE_NAME;
    const fillers: string[] = [];
    for (let i = 0; i < 5; i++) {
      const out = await aws.ec2.client.send(new ExportImageCommand({
        ImageId: aws.ec2.addImage({ sizeGiB: 8, rawFile: raw }),
        DiskImageFormat: 'RAW',
        S3ExportLocation: { S3Bucket: EXPORT_BUCKET, S3Prefix: 'others/' },
        RoleName: roleName,
      }));
      fillers.push(out.ExportImageTaskId!);
    }
    expect(aws.ec2.exportTasks().filter((t) => t.state === 'active').map((t) => t.id).sort()).toEqual([...fillers].sort());
    const imageId = aws.ec2.addImage({ sizeGiB: 8, rawFile: raw });
    const calls = aws.ec2.calls.length;
    const start = aws.clock.now();

    // WHEN the export runs
    const { exec, result } = await execute(aws.workflow, { imageId, format: 'VMDK' });

    // THEN it did not fail: it waited, retrying ExportLimitExceeded, and then exported
    expectStatus(exec, 'SUCCEEDED');
    const retries = eventsOf(exec, 'StateRetried', 'Start export');
    expect(retries.length).toBeGreaterThan(0);
    expect(exec.events.filter((e) => e.type === 'StateFailed' && e.state?.name === 'Start export').map((e) => e.Error))
      .toEqual(retries.map(() => 'ExportLimitExceeded'));
    // AND the waits are the retrier's back-offs, and it started on the first attempt after the others ended
    const retrier = aws.workflow.stateDefinition('Start export').Retry.find((r: any) => r.ErrorEquals.includes('ExportLimitExceeded'));
    const backoffs = retries.map((_, i) => retryDelayMs(retrier, i + 1));
    const waited = backoffs.reduce((a, b) => a + b, 0);
    const attempts = [0, ...backoffs.map((_, i) => backoffs.slice(0, i + 1).reduce((a, b) => a + b, 0))];
    expect(attempts.slice(0, -1).every((t) => t < DEFAULT_EXPORT_MS)).toBe(true);
    expect(attempts[attempts.length - 1]).toBeGreaterThanOrEqual(DEFAULT_EXPORT_MS);
    expect(eventsOf(exec, 'StateExited', 'Start export')[0].simulatedTime - start).toBe(waited);
    expect(retries.length).toBeLessThan(retrier.MaxAttempts);
    // AND only the last attempt asked EC2 for a task
    expect(callsOf(aws, 'ExportImage', calls)).toHaveLength(1);
    expect(logged.filter((l) => l.includes('"export waits for room"'))).toHaveLength(retries.length);
    expect(result.output.object.key).toMatch(/^exports\/export-ami-[0-9a-f]+\.vmdk$/);
  });

  test('a 5xx on DescribeExportImageTasks: absorbed by the SDK, or retried by the state machine as Transient', async () => {
    // GIVEN an AMI, and EC2 answering 500 to the next checks: twice (the SDK retries), then five times (more than its attempts)
    for (const failures of [2, 5]) {
      const imageId = aws.ec2.addImage({ sizeGiB: 8, rawFile: raw });
      const calls = aws.ec2.calls.length;

      // WHEN the export runs, and the failures begin once the task is started
      const { exec } = await execute(aws.workflow, { imageId, format: 'RAW' }, atWait(aws, 'Wait for export', () => {
        aws.ec2.failNext('DescribeExportImageTasks', { code: 'InternalError', message: 'An internal error has occurred' }, failures);
      }));

      // THEN the export succeeds
      expectStatus(exec, 'SUCCEEDED');
      // AND the failed calls reached the simulator
      expect(callsOf(aws, 'DescribeExportImageTasks', calls).length).toBeGreaterThan(failures);
      const failedChecks = exec.events.filter((e) => e.type === 'StateFailed' && e.state?.name === 'Check export').map((e) => e.Error);
      if (failures === 2) {
        expect(failedChecks).not.toContain('Transient');
      } else {
        // The SDK made its five attempts, all answered 500; the state machine's retry then got an answer.
        expect(failedChecks.filter((e) => e === 'Transient')).toHaveLength(1);
        const checkEvents = exec.events.filter((e) => e.state?.name === 'Check export' && e.type !== 'StateEntered');
        const failedAt = checkEvents.findIndex((e) => e.type === 'StateFailed' && e.Error === 'Transient');
        expect(checkEvents[failedAt + 1].type).toBe('StateRetried');
        expect(checkEvents[failedAt + 1].retry?.retrier.ErrorEquals).toEqual(['Transient']);
      }
      expect(exec.statesEntered()).not.toContain('Cancel export');
    }
  });

  test.each([
    ['cancelled by someone else', 'cancel'],
    ['failed to write the file', 'unreadable'],
  ] as const)('a task that ends deleted (%s): ExportTaskFailed, and the failure event has the remedy', async (_name, how) => {
    // GIVEN an AMI (for the failed write, backed by a disk the service will not be able to read)
    let rawFile = raw;
    if (how === 'unreadable') {
      rawFile = path.join(scratch.dir, 'vanishing.raw');
      fs.copyFileSync(raw, rawFile);
    }
    const imageId = aws.ec2.addImage({ sizeGiB: 8, rawFile });
    const events = aws.workflow.events.length;
    let taskId = '';

    // WHEN the export runs, and once it started the task is cancelled outside the workflow (or its disk goes away)
    const { exec, result } = await execute(aws.workflow, { imageId, format: 'VHD' }, atWait(aws, 'Wait for export', () => {
      taskId = aws.ec2.exportTasks().find((t) => t.state === 'active')!.id;
      if (how === 'cancel') void aws.ec2.client.send(new CancelExportTaskCommand({ ExportTaskId: taskId }));
      else fs.rmSync(rawFile);
    }));

    // THEN the execution fails with ExportTaskFailed, naming the task's end and status message
    expectStatus(exec, 'FAILED');
    expect(result.error).toBe('ExportTaskFailed');
    expect(result.cause).toContain(`the export task ${taskId} ended deleted`);
    const [sent] = aws.workflow.events.slice(events);
    expect(sent.detailType).toBe('VM Export Failed');
    expect(sent.detail).toMatchObject({ error: 'ExportTaskFailed', cancelledTasks: [] });
    if (how === 'cancel') {
      expect(sent.detail.reason).toContain(CANCELED_MESSAGE);
      expect(sent.detail.remedy).toMatch(/cancelled; start the export again/);
    } else {
      expect(sent.detail.reason).toMatch(/ClientError: .*ENOENT/);
      expect(sent.detail.remedy).toMatch(/export requirements/);
    }
    expect(aws.ec2.exportTasks().find((t) => t.id === taskId)!.state).toBe('deleted');
    expect(exec.statesEntered().slice(-3)).toEqual(['Cancel export', 'Notify failure', 'Export failed']);
  });

  test('abort: the EventBridge event of the ABORTED execution makes the cleanup function cancel the export task', async () => {
    // GIVEN an export whose task is running
    const imageId = aws.ec2.addImage({ sizeGiB: 8, rawFile: raw });
    const events = aws.workflow.events.length;
    const busEvents = aws.events.entries.length;
    const calls = aws.ec2.calls.length;

    // WHEN the execution is aborted while it waits for the task
    const { exec } = await execute(aws.workflow, { imageId }, atWait(aws, 'Wait for export', (e) => e.abort()));
    expectStatus(exec, 'ABORTED');
    expect(tagsIn(callsOf(aws, 'ExportImage', calls)[0])[EXECUTION_TAG]).toBe(exec.executionArn);
    const active = aws.ec2.exportTasks().filter((t) => t.state === 'active');
    expect(active).toHaveLength(1);
    const [task] = active;
    expect(aws.workflow.events.slice(events)).toEqual([]);
    // AND the status change of another state machine is not for the rule
    const event = executionStatusChangeEvent(aws.workflow, exec);
    const other = { ...event, detail: { ...event.detail, stateMachineArn: `${event.detail.stateMachineArn}-other` } };
    expect(await aws.deliverEvent(other)).toEqual([]);
    // AND Step Functions' event of this one is delivered as the rule delivers it
    const delivered = await aws.deliverEvent(event);

    // THEN the rule's target, the cleanup function, cancelled the task and said why
    expect(delivered).toHaveLength(1);
    const cleanupFn = aws.workflow.functions[delivered[0].target];
    expect(cleanupFn.handler).toBe('index.cleanup');
    expect(delivered[0].error).toBeUndefined();
    expect(delivered[0].output).toMatchObject({ error: 'ABORTED', cancelledTasks: [task.id] });
    expect(delivered[0].output.reason).toMatch(/stopped/);
    expect(delivered[0].output.remedy).toMatch(/cancelled/);
    expect(callsOf(aws, 'CancelExportTask', calls)).toEqual([{ ExportTaskId: task.id }]);
    expect(aws.ec2.exportTasks().find((t) => t.id === task.id)!.state).toBe('deleting');
    aws.clock.advance(5 * 60_000);
    expect(aws.ec2.exportTasks().find((t) => t.id === task.id)!.state).toBe('deleted');
    // AND it told the bus, as the failure path does for the failures it catches
    expect(aws.events.entries.slice(busEvents)).toEqual([expect.objectContaining({
      source: VmExportWorkflow.EVENT_SOURCE,
      detailType: 'VM Export Failed',
      detail: expect.objectContaining({ error: 'ABORTED', status: 'ABORTED', execution: exec.executionArn, cancelledTasks: [task.id], remedy: delivered[0].output.remedy }),
    })]);
    // AND delivered again (EventBridge delivers at least once), it cancels nothing more
    const again = await aws.deliverEvent(event);
    expect(again[0].output).toMatchObject({ error: 'ABORTED', cancelledTasks: [] });
  });

  test('timeout: the state machine times out on the clock, and the TIMED_OUT event cancels the export task', async () => {
    // GIVEN the workflow with a short timeout, and an export that takes longer
    expect(SLOW_EXPORT_MS).toBeGreaterThan(SHORT_TIMEOUT.toMilliseconds());
    const imageId = slow.ec2.addImage({ sizeGiB: 8, rawFile: raw });
    const calls = slow.ec2.calls.length;
    const events = slow.workflow.events.length;
    const busEvents = slow.events.entries.length;

    // WHEN it runs
    const { exec } = await execute(slow.workflow, { imageId, format: 'VMDK' });

    // THEN it timed out exactly at its timeout, while polling the task
    expectStatus(exec, 'TIMED_OUT');
    expect(exec.simulatedMs()).toBe(SHORT_TIMEOUT.toMilliseconds());
    expect(slow.workflow.events.slice(events)).toEqual([]);
    const [request] = callsOf(slow, 'ExportImage', calls);
    expect(request['S3ExportLocation.S3Bucket']).toBe(SHORT_BUCKET);
    const task = slow.ec2.exportTasks().find((t) => t.state === 'active' && t.bucket === SHORT_BUCKET)!;
    expect(task).toBeDefined();

    // WHEN the TIMED_OUT event reaches the rule
    const delivered = await slow.deliverEvent(executionStatusChangeEvent(slow.workflow, exec), stacks.short.stack);

    // THEN the cleanup function cancelled the task and said why
    expect(delivered).toHaveLength(1);
    expect(delivered[0].output).toMatchObject({ error: 'TIMED_OUT', cancelledTasks: [task.id] });
    expect(delivered[0].output.reason).toMatch(/timed out/);
    expect(delivered[0].output.remedy).toMatch(/raise the workflow's timeout/);
    expect(slow.ec2.exportTasks().find((t) => t.id === task.id)!.state).toBe('deleting');
    expect(slow.events.entries.slice(busEvents)).toEqual([expect.objectContaining({
      detailType: 'VM Export Failed',
      detail: expect.objectContaining({ error: 'TIMED_OUT', status: 'TIMED_OUT', execution: exec.executionArn, cancelledTasks: [task.id] }),
    })]);
    // AND the rule of the other stack's workflow does not take this event
    expect(await slow.deliverEvent(executionStatusChangeEvent(slow.workflow, exec), stacks.main.stack)).toEqual([]);
  });
});

describe('cost', () => {
  test('state transitions and Lambda invocations of one export, and per hour of waiting', async () => {
    // GIVEN an export that takes the simulator's default time, and one that takes SLOW_EXPORT_MS
    const quick = await execute(aws.workflow, { imageId: aws.ec2.addImage({ sizeGiB: 8, rawFile: raw }), format: 'RAW' });
    const long = await execute(slowMain, { imageId: slow.ec2.addImage({ sizeGiB: 8, rawFile: raw }), format: 'RAW' });
    expectStatus(quick.exec, 'SUCCEEDED');
    expectStatus(long.exec, 'SUCCEEDED');

    // WHEN their transitions and Lambda invocations are counted; for the long one, over whole poll
    // cycles (from one entry into "Keep waiting" to the last), the steady state of a long wait
    const quickLambda = lambdaInvocations(aws.workflow, quick.exec.events).length;
    const longLambda = lambdaInvocations(slowMain, long.exec.events).length;
    const keepWaiting = eventsOf(long.exec, 'StateEntered', 'Keep waiting').map((e) => e.simulatedTime);
    expect(keepWaiting.length).toBeGreaterThanOrEqual(3);
    const [from, to] = [keepWaiting[0], keepWaiting[keepWaiting.length - 1]];
    const isKeepWaiting = (e: LocalExecutionEvent) => e.type === 'StateEntered' && e.state?.name === 'Keep waiting';
    const all = long.exec.events;
    const window = all.slice(all.findIndex(isKeepWaiting), all.length - 1 - [...all].reverse().findIndex(isKeepWaiting));
    const hours = (to - from) / HOUR;
    const transitionsPerHour = window.filter((e) => e.type === 'StateEntered' || e.type === 'StateRetried').length / hours;
    const lambdaPerHour = lambdaInvocations(slowMain, window).length / hours;

    // THEN the quick export fits in a few dozen transitions, on the path of an SSE-S3 bucket
    expect(quick.exec.statesEntered()).not.toContain('No bucket encryption');
    expect(quick.exec.simulatedMs()).toBeGreaterThanOrEqual(DEFAULT_EXPORT_MS);
    expect(quick.exec.transitions()).toBeLessThan(40);
    // AND a poll cycle is what the definition says: the ExportInProgress retries with their back-offs, then "Keep waiting"
    const poll = slowMain.stateDefinition('Check export').Retry.find((r: any) => r.ErrorEquals.includes('ExportInProgress'));
    const cycleMs = Array.from({ length: poll.MaxAttempts }, (_, i) => retryDelayMs(poll, i + 1)).reduce((a, b) => a + b, 0)
      + slowMain.stateDefinition('Keep waiting').Seconds * 1000;
    expect(keepWaiting.slice(1).map((t, i) => t - keepWaiting[i])).toEqual(keepWaiting.slice(1).map(() => cycleMs));
    // AND each cycle costs one invocation per attempt, and one transition more (Keep waiting)
    expect(lambdaPerHour).toBeCloseTo(((poll.MaxAttempts + 1) * HOUR) / cycleMs, 6);
    expect(transitionsPerHour).toBeCloseTo(((poll.MaxAttempts + 2) * HOUR) / cycleMs, 6);
    jest.restoreAllMocks();
    console.log([
      `export of ${DEFAULT_EXPORT_MS / 60_000} min (the simulator's default): ${quick.exec.transitions()} state transitions, ${quickLambda} Lambda invocations, ${quick.exec.simulatedMs() / 1000} s simulated`,
      `export of ${SLOW_EXPORT_MS / HOUR} h: ${long.exec.transitions()} state transitions, ${longLambda} Lambda invocations, ${long.exec.simulatedMs() / 1000} s simulated`,
      `per hour of waiting (whole poll cycles of ${cycleMs / 1000} s): ${transitionsPerHour.toFixed(2)} state transitions, ${lambdaPerHour.toFixed(2)} Lambda invocations`,
    ].join('\n'));
  });
});
