import * as fs from 'node:fs';
import { HeadObjectCommand } from '@aws-sdk/client-s3';
import * as fc from 'fast-check';
import { S3Source } from '../../lambda/aws/s3-source';
import { inspect } from '../../lambda/disk/inspect';
import { check, cleanup, preflight, start, type ExportState } from '../../lambda/handlers/export';
import { imageProblems, instanceProblems } from '../../lambda/workflow/export-checks';
import { bucketEncryptionProblem, exportRequestOf, payloadOf } from '../../lambda/workflow/export-request';
import { sampleMbrDisk } from '../helpers/fixtures';
import { startLocalEc2, type LocalEc2 } from '../helpers/local-ec2';
import { startLocalEvents } from '../helpers/local-events';
import { startLocalS3, withEnv, type LocalS3 } from '../helpers/local-s3';

const BUCKET = 'export-bucket';
const ROLE = 'vmie-service-role';
const EXPORT_TIME_MS = 20 * 60_000;
const ARN_PREFIX = 'arn:aws:states:us-east-1:123456789012:execution:vmie-export:';

let s3: LocalS3;
let ec2: LocalEc2;
let raw: string;
let executions = 0;

beforeAll(async () => {
  raw = sampleMbrDisk(16);
  s3 = await startLocalS3([BUCKET]);
  ec2 = await startLocalEc2({ s3: s3.client, exportDurationMs: EXPORT_TIME_MS });
});

afterAll(async () => {
  await ec2?.close();
  await s3?.close();
});

let logged: string[] = [];
beforeEach(() => {
  logged = [];
  jest.spyOn(console, 'log').mockImplementation((line: string) => void logged.push(line));
});

afterEach(() => {
  // Every test leaves the Region without active export tasks, so the quota is free for the next.
  ec2.clock.advance(2 * EXPORT_TIME_MS);
});

/** A new execution: its ARN, name and start. */
function execution() {
  const name = `export-${++executions}`;
  return { id: `${ARN_PREFIX}${name}`, name, startTime: new Date().toISOString() };
}

type Handler<T> = (event: any) => Promise<T>;

/** Runs a handler as its Lambda would: the SDK pointed at the local servers by the environment. */
function invoke<T>(handler: Handler<T>, event: unknown, env: Record<string, string | undefined> = {}): Promise<T> {
  const base = {
    VMIE_EXPORT_BUCKET: BUCKET,
    VMIE_ROLE_NAME: ROLE,
    VMIE_MAX_EXPORT_TASKS: undefined,
    VMIE_EXPORT_PREFIX: undefined,
    VMIE_DEFAULT_FORMAT: undefined,
  };
  return withEnv({ ...s3.env, ...ec2.env, ...base, ...env }, () => handler(event));
}

/** The error a handler throws. */
async function failure(handler: Handler<unknown>, event: unknown, env: Record<string, string | undefined> = {}): Promise<Error> {
  const result = await invoke(handler, event, env).then(() => undefined, (e: Error) => e);
  if (!result) throw new Error('the handler did not fail');
  return result;
}

/** The params of the calls of `action` made since `from`. */
function callsOf(action: string, from = 0) {
  return ec2.calls.slice(from).filter((c) => c.action === action).map((c) => c.params);
}

/** The tags of the first TagSpecification of a recorded call, as an object. */
function tagsIn(params: Record<string, string>): Record<string, string> {
  const tags: Record<string, string> = {};
  for (const [k, v] of Object.entries(params)) {
    const m = /^TagSpecification\.1\.Tag\.(\d+)\.Key$/.exec(k);
    if (m) tags[v] = params[`TagSpecification.1.Tag.${m[1]}.Value`];
  }
  return tags;
}

/** What the engine makes of an exported object: its format and virtual size. */
async function judge(key: string) {
  const source = await S3Source.open(s3.client, BUCKET, key);
  try {
    const report = await inspect(source, { name: key });
    return { format: report.format, virtualSize: report.virtualSize };
  } finally {
    await source.close();
  }
}

/** Runs preflight, then start, as the state machine would; the state after both. */
async function preflightAndStart(input: ExportState, exec = execution()) {
  const pre = await invoke(preflight, { state: input, execution: exec });
  const state = { ...input, preflight: pre };
  const started = await invoke(start, { state, execution: exec });
  return { exec, state: { ...state, export: started }, started };
}

/** Advances the simulated time until the task ends, checking as the state machine would; the checks' progress. */
async function waitForEnd(state: ExportState, exec: ReturnType<typeof execution>) {
  const seen: Array<{ status: string; progress: number }> = [];
  for (let i = 0; i < 12; i++) {
    try {
      return { out: await invoke(check, { state, execution: exec }), seen };
    } catch (e) {
      if ((e as Error).name !== 'ExportInProgress') throw e;
      seen.push(JSON.parse((e as Error).message));
      ec2.clock.advance(EXPORT_TIME_MS / 4);
    }
  }
  throw new Error(`the export did not end: ${JSON.stringify(seen)}`);
}

const kmsBucket = {
  ServerSideEncryptionConfiguration: {
    Rules: [{ ApplyServerSideEncryptionByDefault: { SSEAlgorithm: 'aws:kms', KMSMasterKeyID: 'arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab' }, BucketKeyEnabled: true }],
  },
};
const s3Bucket = { ServerSideEncryptionConfiguration: { Rules: [{ ApplyServerSideEncryptionByDefault: { SSEAlgorithm: 'AES256' }, BucketKeyEnabled: false }] } };

describe('preflight', () => {
  test('an AMI that can be exported: kind, format, bucket, prefix, size and volumes', async () => {
    // GIVEN
    const imageId = ec2.addImage({ sizeGiB: 8, rawFile: raw });
    // WHEN
    const out = await invoke(preflight, { state: { imageId, bucket: s3Bucket }, execution: execution() });
    // THEN
    expect(out).toEqual({ kind: 'image', format: 'VMDK', bucket: BUCKET, prefix: 'exports/', sizeGiB: 8, volumes: 1 });
    expect(callsOf('DescribeImages').at(-1)).toMatchObject({ 'ImageId.1': imageId });
  });

  test.each([
    ['encrypted snapshots', { encrypted: true, sizeGiB: 8 }, /encrypted snapshots.*cannot export encrypted snapshots/],
    ['a volume over 1 TiB', { sizeGiB: 1025 }, /volumes over 1 TiB .*1025 GiB/],
    ['AWS Marketplace product codes', { sizeGiB: 8, productCodes: ['a1b2c3d4e5f6g7h8i9j0k1l2m'] }, /Marketplace product codes \(a1b2c3d4e5f6g7h8i9j0k1l2m\)/],
    ['license-included Windows', { sizeGiB: 30, platform: 'windows' as const, usageOperation: 'RunInstances:0002' }, /Windows with license-included billing \(usage operation RunInstances:0002/],
    ['license-included Windows with SQL Server', { sizeGiB: 30, platform: 'windows' as const, usageOperation: 'RunInstances:0006' }, /license-included billing \(usage operation RunInstances:0006/],
  ])('an AMI with %s cannot be exported: ExportNotPossible with the reason and the fix', async (_what, image, reason) => {
    // GIVEN
    const imageId = ec2.addImage({ ...image, rawFile: raw });
    const before = ec2.calls.length;
    // WHEN
    const err = await failure(preflight, { state: { imageId }, execution: execution() });
    // THEN
    expect(err.name).toBe('ExportNotPossible');
    expect(err.message).toContain(imageId);
    expect(err.message).toMatch(reason);
    expect(err.message).toMatch(/\. Fix: \S/);
    // Nothing was started.
    expect(callsOf('ExportImage', before)).toEqual([]);
  });

  test('a Windows AMI imported with its own license (RunInstances:0800) can be exported', async () => {
    // GIVEN
    const imageId = ec2.addImage({ sizeGiB: 30, platform: 'windows', usageOperation: 'RunInstances:0800', rawFile: raw });
    // WHEN
    const out = await invoke(preflight, { state: { imageId, format: 'vhd' }, execution: execution() });
    // THEN
    expect(out).toMatchObject({ kind: 'image', format: 'VHD', sizeGiB: 30 });
  });

  test('an AMI that does not exist fails with ExportNotPossible naming it', async () => {
    // GIVEN / WHEN
    const err = await failure(preflight, { state: { imageId: 'ami-0123456789abcdef0' }, execution: execution() });
    // THEN
    expect(err.name).toBe('ExportNotPossible');
    expect(err.message).toMatch(/the AMI ami-0123456789abcdef0 was not found in us-east-1\. Fix: Check the AMI id/);
  });

  test('an export bucket encrypted with SSE-KMS is refused; SSE-S3 or no configuration is fine', async () => {
    // GIVEN
    const imageId = ec2.addImage({ sizeGiB: 8, rawFile: raw });
    // WHEN
    const kms = await failure(preflight, { state: { imageId, bucket: kmsBucket }, execution: execution() });
    const sse = await invoke(preflight, { state: { imageId, bucket: s3Bucket }, execution: execution() });
    const none = await invoke(preflight, { state: { imageId, bucket: { error: { Error: 'S3.ServerSideEncryptionConfigurationNotFoundErrorException' } } }, execution: execution() });
    // THEN
    expect(kms.name).toBe('ExportNotPossible');
    expect(kms.message).toMatch(new RegExp(`export bucket ${BUCKET} encrypts with aws:kms .*SSE-KMS\\. Fix: Use an export bucket with SSE-S3`));
    expect(sse.kind).toBe('image');
    expect(none.kind).toBe('image');
  });

  test('several problems are reported together', async () => {
    // GIVEN
    const imageId = ec2.addImage({ sizeGiB: 2000, encrypted: true, rawFile: raw });
    // WHEN
    const err = await failure(preflight, { state: { imageId, bucket: kmsBucket }, execution: execution() });
    // THEN
    const [reasons, remedies] = err.message.split('. Fix: ');
    expect(reasons.split('; ')).toHaveLength(3);
    expect(reasons).toMatch(/SSE-KMS/);
    expect(reasons).toMatch(/encrypted snapshots/);
    expect(reasons).toMatch(/over 1 TiB/);
    expect(remedies).toMatch(/SSE-S3/);
  });

  test('an instance with one volume can be exported as an OVA for VMware by default', async () => {
    // GIVEN
    const instanceId = ec2.addInstance({ volumes: [{ sizeGiB: 10, rawFile: raw }] });
    // WHEN
    const out = await invoke(preflight, { state: { instanceId }, execution: execution() });
    const citrix = await invoke(preflight, { state: { instanceId, targetEnvironment: 'citrix' }, execution: execution() });
    // THEN
    expect(out).toEqual({ kind: 'instance', format: 'VMDK', containerFormat: 'ova', targetEnvironment: 'vmware', bucket: BUCKET, prefix: 'exports/', sizeGiB: 10, volumes: 1 });
    expect(citrix).toMatchObject({ format: 'VHD', targetEnvironment: 'citrix' });
    expect(citrix.containerFormat).toBeUndefined();
    expect(callsOf('DescribeVolumes').at(-1)).toBeDefined();
  });

  test('the configured default format (VMIE_DEFAULT_FORMAT) applies when the input names none', async () => {
    // GIVEN
    const instanceId = ec2.addInstance({ volumes: [{ sizeGiB: 10, rawFile: raw }] });
    const imageId = ec2.addImage({ sizeGiB: 8, rawFile: raw });
    // WHEN
    const instanceRaw = await invoke(preflight, { state: { instanceId }, execution: execution() }, { VMIE_DEFAULT_FORMAT: 'RAW' });
    const imageOva = await invoke(preflight, { state: { imageId }, execution: execution() }, { VMIE_DEFAULT_FORMAT: 'OVA' });
    const asked = await invoke(preflight, { state: { imageId, format: 'vhd' }, execution: execution() }, { VMIE_DEFAULT_FORMAT: 'RAW' });
    // THEN
    expect(instanceRaw).toMatchObject({ kind: 'instance', format: 'RAW', targetEnvironment: 'vmware' });
    expect(instanceRaw.containerFormat).toBeUndefined();
    expect(imageOva).toMatchObject({ kind: 'image', format: 'VMDK' });
    expect(imageOva.containerFormat).toBeUndefined();
    expect(asked.format).toBe('VHD');
  });

  test.each([
    ['more than one volume', [{ sizeGiB: 10 }, { sizeGiB: 20 }], /has 2 EBS volumes .*one volume only/],
    ['an encrypted volume', [{ sizeGiB: 10, encrypted: true }], /encrypted volumes .*cannot export encrypted volumes/],
    ['a volume over 1 TiB', [{ sizeGiB: 1100 }], /volumes over 1 TiB .*1100 GiB/],
  ])('an instance with %s cannot be exported', async (_what, volumes, reason) => {
    // GIVEN
    const instanceId = ec2.addInstance({ volumes: volumes.map((v) => ({ ...v, rawFile: raw })) });
    // WHEN
    const err = await failure(preflight, { state: { instanceId }, execution: execution() });
    // THEN
    expect(err.name).toBe('ExportNotPossible');
    expect(err.message).toContain(instanceId);
    expect(err.message).toMatch(reason);
    expect(err.message).toMatch(/\. Fix: \S/);
  });

  test('an instance that does not exist fails with ExportNotPossible', async () => {
    // GIVEN / WHEN
    const err = await failure(preflight, { state: { instanceId: 'i-0123456789abcdef0' }, execution: execution() });
    // THEN
    expect(err.name).toBe('ExportNotPossible');
    expect(err.message).toMatch(/the instance i-0123456789abcdef0 was not found/);
  });

  test.each([
    ['neither id', {}, /exactly one of "imageId".*"instanceId"/],
    ['both ids', { imageId: 'ami-0123456789abcdef0', instanceId: 'i-0123456789abcdef0' }, /exactly one/],
    ['a malformed AMI id', { imageId: 'image-1' }, /"imageId" must be an AMI id/],
    ['OVA for an AMI', { imageId: 'ami-0123456789abcdef0', format: 'OVA' }, /OVA applies to instance exports only/],
    ['an unknown format', { instanceId: 'i-0123456789abcdef0', format: 'QCOW2' }, /"format" must be one of VMDK, VHD, RAW, OVA/],
    ['a target environment for an AMI', { imageId: 'ami-0123456789abcdef0', targetEnvironment: 'vmware' }, /instance exports only/],
    ['an unknown target environment', { instanceId: 'i-0123456789abcdef0', targetEnvironment: 'kvm' }, /"targetEnvironment" must be one of/],
    ['a reserved tag', { imageId: 'ami-0123456789abcdef0', tags: { 'aws:owner': 'x' } }, /"aws:" prefix is reserved/],
    ['a long description', { imageId: 'ami-0123456789abcdef0', description: 'x'.repeat(256) }, /"description"/],
  ])('an input with %s fails with InvalidInput before any call', async (_what, input, message) => {
    // GIVEN
    const before = ec2.calls.length;
    // WHEN
    const err = await failure(preflight, { state: input, execution: execution() });
    // THEN
    expect(err.name).toBe('InvalidInput');
    expect(err.message).toMatch(message);
    expect(ec2.calls.length).toBe(before);
  });
});

describe('start and check', () => {
  test('an AMI export: ExportImage with the role, location, token and tags; progress; the object at the documented key', async () => {
    // GIVEN
    const imageId = ec2.addImage({ sizeGiB: 8, rawFile: raw });
    const before = ec2.calls.length;
    // WHEN
    const { exec, state, started } = await preflightAndStart({ imageId, format: 'RAW', prefix: 'vms/', description: 'web server', tags: { team: 'platform' } });
    const { out, seen } = await waitForEnd(state, exec);
    // THEN: the task was started as asked
    const [params] = callsOf('ExportImage', before);
    expect(params).toMatchObject({
      'ImageId': imageId,
      'DiskImageFormat': 'RAW',
      'RoleName': ROLE,
      'S3ExportLocation.S3Bucket': BUCKET,
      'S3ExportLocation.S3Prefix': 'vms/',
      'Description': 'web server',
      'TagSpecification.1.ResourceType': 'export-image-task',
    });
    expect(params.ClientToken).toMatch(/^[0-9a-f]{64}$/);
    expect(tagsIn(params)).toEqual({ 'team': 'platform', 'vmie:execution': exec.id });
    expect(started).toMatchObject({ kind: 'image', bucket: BUCKET });
    expect(started.exportTaskId).toMatch(/^export-ami-/);
    expect(started.key).toBe(`vms/${started.exportTaskId}.raw`);
    expect(Date.parse(started.startedAt)).not.toBeNaN();
    // THEN: check said how far it was, then named the object, which is there
    expect(seen.length).toBeGreaterThan(0);
    expect(seen[0]).toMatchObject({ status: 'active', progress: expect.any(Number) });
    expect(seen.map((s) => s.progress)).toEqual([...seen.map((s) => s.progress)].sort((a, b) => a - b));
    expect(out).toEqual({ status: 'completed', object: { bucket: BUCKET, key: started.key } });
    const head = await s3.client.send(new HeadObjectCommand({ Bucket: BUCKET, Key: started.key }));
    expect(head.ContentLength).toBe(fs.statSync(raw).size);
    expect(await judge(started.key)).toEqual({ format: 'raw', virtualSize: fs.statSync(raw).size });
    // One structured line per check.
    expect(logged.map((l) => JSON.parse(l).message)).toContain('export in progress');
  });

  test('start again in the same execution returns the same task, never a second one', async () => {
    // GIVEN
    const imageId = ec2.addImage({ sizeGiB: 8, rawFile: raw });
    const { exec, state, started } = await preflightAndStart({ imageId });
    const before = ec2.calls.length;
    // WHEN
    const again = await invoke(start, { state: { ...state, export: undefined }, execution: exec });
    // THEN
    expect(again.exportTaskId).toBe(started.exportTaskId);
    expect(again.key).toBe(started.key);
    expect(callsOf('ExportImage', before)).toEqual([]);
    expect(ec2.exportTasks().filter((t) => t.id === started.exportTaskId)).toHaveLength(1);
  });

  test('an instance export: CreateInstanceExportTask as an OVA for VMware, the object named by the task', async () => {
    // GIVEN
    const instanceId = ec2.addInstance({ volumes: [{ sizeGiB: 10, rawFile: raw }] });
    const before = ec2.calls.length;
    // WHEN
    const { exec, state, started } = await preflightAndStart({ instanceId, format: 'OVA', tags: { app: 'crm' } });
    const { out } = await waitForEnd(state, exec);
    // THEN
    const [params] = callsOf('CreateInstanceExportTask', before);
    expect(params).toMatchObject({
      'InstanceId': instanceId,
      'TargetEnvironment': 'vmware',
      'ExportToS3.ContainerFormat': 'ova',
      'ExportToS3.DiskImageFormat': 'VMDK',
      'ExportToS3.S3Bucket': BUCKET,
      'ExportToS3.S3Prefix': 'exports/',
      'TagSpecification.1.ResourceType': 'export-instance-task',
    });
    expect(params.RoleName).toBeUndefined();
    expect(tagsIn(params)).toEqual({ 'app': 'crm', 'vmie:execution': exec.id });
    expect(started.exportTaskId).toMatch(/^export-i-/);
    expect(started.key).toBe(`exports/${started.exportTaskId}.ova`);
    expect(out).toEqual({ status: 'completed', object: { bucket: BUCKET, key: started.key } });
    expect(await judge(started.key)).toEqual({ format: 'ova', virtualSize: fs.statSync(raw).size });
  });

  test('five active exports fill the quota: the sixth waits with ExportLimitExceeded, then starts once one ends', async () => {
    // GIVEN: five exports of other executions running
    const running = [];
    for (let i = 0; i < 5; i++) running.push(await preflightAndStart({ imageId: ec2.addImage({ sizeGiB: 8, rawFile: raw }) }));
    const imageId = ec2.addImage({ sizeGiB: 8, rawFile: raw });
    const exec = execution();
    const pre = await invoke(preflight, { state: { imageId }, execution: exec });
    const before = ec2.calls.length;
    // WHEN
    const full = await failure(start, { state: { imageId, preflight: pre }, execution: exec });
    // THEN: it did not ask EC2 to start anything
    expect(full.name).toBe('ExportLimitExceeded');
    expect(full.message).toMatch(/5 export tasks are active in us-east-1 \(at most 5 at once/);
    expect(callsOf('ExportImage', before)).toEqual([]);
    // WHEN: the running exports end, the retry starts
    ec2.clock.advance(EXPORT_TIME_MS + 60_000);
    for (const r of running) await waitForEnd(r.state, r.exec);
    const started = await invoke(start, { state: { imageId, preflight: pre }, execution: exec });
    // THEN
    expect(started.exportTaskId).toMatch(/^export-ami-/);
    expect(ec2.exportTasks().filter((t) => t.state === 'active').map((t) => t.id)).toEqual([started.exportTaskId]);
  });

  test('the quota is configurable (VMIE_MAX_EXPORT_TASKS)', async () => {
    // GIVEN: one export running
    await preflightAndStart({ imageId: ec2.addImage({ sizeGiB: 8, rawFile: raw }) });
    const imageId = ec2.addImage({ sizeGiB: 8, rawFile: raw });
    const exec = execution();
    const pre = await invoke(preflight, { state: { imageId }, execution: exec });
    // WHEN
    const full = await failure(start, { state: { imageId, preflight: pre }, execution: exec }, { VMIE_MAX_EXPORT_TASKS: '1' });
    // THEN
    expect(full.name).toBe('ExportLimitExceeded');
    expect(full.message).toMatch(/1 export tasks are active .*at most 1 at once/);
  });

  test('the service\'s own limit answer is ExportLimitExceeded; the role answer is RoleNotReady; throttling is Transient', async () => {
    // GIVEN
    const imageId = ec2.addImage({ sizeGiB: 8, rawFile: raw });
    const exec = execution();
    const pre = await invoke(preflight, { state: { imageId }, execution: exec });
    const event = { state: { imageId, preflight: pre }, execution: exec };
    // WHEN
    ec2.failNext('ExportImage', { code: 'ResourceLimitExceeded', message: 'You have reached the maximum number of concurrent export image tasks.' });
    const limit = await failure(start, event);
    ec2.failNext('ExportImage', { code: 'InvalidParameter', message: `The service role ${ROLE} provided does not exist or does not have sufficient permissions` });
    const role = await failure(start, event);
    ec2.failNext('DescribeExportImageTasks', { code: 'InternalError', message: 'An internal error has occurred' }, 5);
    const transient = await failure(start, event);
    // THEN
    expect(limit.name).toBe('ExportLimitExceeded');
    expect(limit.message).toContain('ResourceLimitExceeded');
    expect(role.name).toBe('RoleNotReady');
    expect(transient.name).toBe('Transient');
    // The next start goes through.
    const started = await invoke(start, event);
    expect(started.exportTaskId).toMatch(/^export-ami-/);
  });

  test('check without a started export fails with InvalidInput', async () => {
    // GIVEN / WHEN
    const err = await failure(check, { state: { imageId: 'ami-0123456789abcdef0' }, execution: execution() });
    // THEN
    expect(err.name).toBe('InvalidInput');
  });
});

describe('cleanup', () => {
  test('in the workflow: cancels the active task, and the check then reports ExportTaskFailed', async () => {
    // GIVEN: an export running, and check's retries exhausted
    const { exec, state, started } = await preflightAndStart({ imageId: ec2.addImage({ sizeGiB: 8, rawFile: raw }) });
    const error = { Error: 'ExportInProgress', Cause: JSON.stringify({ errorType: 'ExportInProgress', errorMessage: '{"status":"active","progress":40}' }) };
    // WHEN
    const out = await invoke(cleanup, { state: { ...state, error }, execution: exec });
    // THEN
    expect(out).toMatchObject({ error: 'ExportInProgress', cancelledTasks: [started.exportTaskId] });
    expect(out.reason).toMatch(/did not end in the time the workflow waits .*"progress":40/);
    expect(out.remedy).toMatch(/cancelled/);
    expect(out.durationSeconds).toEqual(expect.any(Number));
    expect(callsOf('CancelExportTask').at(-1)).toEqual(expect.objectContaining({ ExportTaskId: started.exportTaskId }));
    const { out: ended } = await waitForEnd(state, exec).then((r) => ({ out: r.out }), (e: Error) => ({ out: e }));
    expect((ended as Error).name).toBe('ExportTaskFailed');
    expect((ended as Error).message).toMatch(new RegExp(`export task ${started.exportTaskId} ended (deleted|cancelled).*\\. Fix: `));
  });

  test('from the EventBridge event of a timed-out execution: finds the task by its tag and cancels it', async () => {
    // GIVEN: an instance export running; the state data is lost with the execution
    const { exec, started } = await preflightAndStart({ instanceId: ec2.addInstance({ volumes: [{ sizeGiB: 10, rawFile: raw }] }) });
    const event = {
      'version': '0',
      'id': '315c1398-40ff-a850-213b-158f73e60175',
      'detail-type': 'Step Functions Execution Status Change',
      'source': 'aws.states',
      'account': '123456789012',
      'time': new Date().toISOString(),
      'region': 'us-east-1',
      'resources': [exec.id],
      'detail': {
        executionArn: exec.id,
        stateMachineArn: 'arn:aws:states:us-east-1:123456789012:stateMachine:vmie-export',
        name: exec.name,
        status: 'TIMED_OUT',
        startDate: Date.now() - 3_600_000,
        stopDate: Date.now(),
        input: '{}',
        output: null,
      },
    };
    const bus = await startLocalEvents();
    // WHEN
    const out = await invoke(cleanup, event, bus.env).finally(() => bus.close());
    // THEN
    expect(out).toMatchObject({ error: 'TIMED_OUT', cancelledTasks: [started.exportTaskId], reason: expect.stringMatching(/timed out/) });
    expect(out.durationSeconds).toBeGreaterThanOrEqual(3600);
    expect(bus.entries).toEqual([expect.objectContaining({
      source: 'vmie.export', detailType: 'VM Export Failed', detail: expect.objectContaining({ execution: exec.id, status: 'TIMED_OUT', cancelledTasks: [started.exportTaskId] }),
    })]);
    expect(ec2.exportTasks().find((t) => t.id === started.exportTaskId)?.state).toMatch(/cancel/);
  });

  test('a failure before any task: the reason and remedy of the error, nothing cancelled', async () => {
    // GIVEN
    const exec = execution();
    const err = await failure(preflight, { state: { imageId: 'ami-0123456789abcdef0' }, execution: exec });
    const error = { Error: err.name, Cause: JSON.stringify({ errorType: err.name, errorMessage: err.message, trace: [] }) };
    // WHEN
    const out = await invoke(cleanup, { state: { imageId: 'ami-0123456789abcdef0', error }, execution: exec });
    // THEN
    expect(out).toEqual({
      reason: 'the AMI ami-0123456789abcdef0 was not found in us-east-1',
      remedy: expect.stringMatching(/^Check the AMI id/),
      error: 'ExportNotPossible',
      cancelledTasks: [],
      durationSeconds: expect.any(Number),
    });
  });

  test('a task that already completed is not cancelled', async () => {
    // GIVEN
    const { exec, state } = await preflightAndStart({ imageId: ec2.addImage({ sizeGiB: 8, rawFile: raw }) });
    await waitForEnd(state, exec);
    const before = ec2.calls.length;
    // WHEN
    const out = await invoke(cleanup, { state: { ...state, error: { Error: 'States.Runtime', Cause: 'An error occurred while executing the state' } }, execution: exec });
    // THEN
    expect(out.cancelledTasks).toEqual([]);
    expect(out.reason).toMatch(/^States.Runtime: An error occurred/);
    expect(callsOf('CancelExportTask', before)).toEqual([]);
  });

  test('an input of neither shape fails with InvalidInput', async () => {
    // GIVEN / WHEN
    const err = await failure(cleanup, { detail: {} });
    // THEN
    expect(err.name).toBe('InvalidInput');
  });
});

describe('input parsing (properties)', () => {
  /** Passes when `fn` returns, or throws InvalidInput; any other exception fails the property. */
  function resultOrInvalidInput(fn: () => unknown): boolean {
    try {
      fn();
      return true;
    } catch (e) {
      if ((e as Error).name === 'InvalidInput') return true;
      throw e;
    }
  }

  const inputField = fc.oneof(
    fc.anything(),
    fc.constantFrom('ami-0123456789abcdef0', 'i-0123456789abcdef0', 'VMDK', 'ova', 'vmware', 'exports/'),
  );
  const inputs = fc.record(
    {
      imageId: inputField,
      instanceId: inputField,
      format: inputField,
      targetEnvironment: inputField,
      prefix: inputField,
      description: inputField,
      tags: fc.oneof(fc.anything(), fc.dictionary(fc.string(), fc.anything())),
    },
    { requiredKeys: [] },
  );

  test('any input gives a validated request or InvalidInput, and a request is always complete', () => {
    fc.assert(fc.property(fc.oneof(inputs, fc.anything()), (input) => resultOrInvalidInput(() => {
      // WHEN
      const request = exportRequestOf(input as never, {});
      // THEN
      expect(['image', 'instance']).toContain(request.kind);
      expect(['VMDK', 'VHD', 'RAW']).toContain(request.format);
      expect(typeof request.prefix).toBe('string');
      if (request.containerFormat) expect(request.kind).toBe('instance');
    })), { numRuns: 500 });
  });

  test('any payload gives state and execution, or InvalidInput', () => {
    fc.assert(fc.property(fc.anything(), fc.record({ state: fc.anything(), execution: fc.anything() }, { requiredKeys: [] }), (a, b) =>
      resultOrInvalidInput(() => payloadOf(a)) && resultOrInvalidInput(() => payloadOf(b))), { numRuns: 300 });
  });

  test('any $.bucket slot gives a verdict without throwing; only an aws:kms algorithm is refused', () => {
    const algorithm = fc.oneof(fc.anything(), fc.constantFrom('AES256', 'aws:kms', 'aws:kms:dsse'));
    const rule = fc.record({ ApplyServerSideEncryptionByDefault: fc.oneof(fc.anything(), fc.record({ SSEAlgorithm: algorithm })) });
    const config = fc.oneof(fc.anything(), fc.record({ Rules: fc.oneof(fc.anything(), fc.array(rule)) }));
    const slot = fc.oneof(fc.anything(), fc.record({ ServerSideEncryptionConfiguration: config }));
    fc.assert(fc.property(slot, (value) => {
      // WHEN
      const problem = bucketEncryptionProblem(value, BUCKET);
      // THEN
      if (problem) expect(JSON.stringify(value)).toContain('aws:kms');
      return true;
    }), { numRuns: 500 });
  });

  test('any description of an AMI or instance gives problems and a summary without throwing', () => {
    const tagLike = fc.array(fc.record({ ProductCodeId: fc.option(fc.string(), { nil: undefined }) }), { maxLength: 3 });
    const image = fc.record({
      ImageId: fc.option(fc.string(), { nil: undefined }),
      State: fc.option(fc.constantFrom('available', 'pending', 'failed'), { nil: undefined }),
      Platform: fc.option(fc.constantFrom('windows', 'Windows'), { nil: undefined }),
      UsageOperation: fc.option(fc.constantFrom('RunInstances', 'RunInstances:0002', 'RunInstances:0800', 'RunInstances:0100'), { nil: undefined }),
      ProductCodes: fc.option(tagLike, { nil: undefined }),
      RootDeviceType: fc.option(fc.constantFrom('ebs', 'instance-store'), { nil: undefined }),
      BlockDeviceMappings: fc.option(fc.array(fc.record({
        DeviceName: fc.option(fc.string(), { nil: undefined }),
        Ebs: fc.option(fc.record({ SnapshotId: fc.option(fc.constantFrom('snap-1', 'snap-2'), { nil: undefined }), VolumeSize: fc.option(fc.integer({ min: 0, max: 20_000 }), { nil: undefined }), Encrypted: fc.option(fc.boolean(), { nil: undefined }) }), { nil: undefined }),
      }), { maxLength: 4 }), { nil: undefined }),
    });
    const snapshots = fc.array(fc.record({ SnapshotId: fc.constantFrom('snap-1', 'snap-2'), VolumeSize: fc.integer({ min: 0, max: 20_000 }), Encrypted: fc.boolean() }), { maxLength: 3 });
    fc.assert(fc.property(image, snapshots, (img, snaps) => {
      // WHEN
      const { problems, summary } = imageProblems(img as never, snaps as never);
      // THEN: whatever is encrypted or over 1 TiB is a problem
      const ebs = (img.BlockDeviceMappings ?? []).filter((m) => m.Ebs);
      if (ebs.some((m) => m.Ebs?.Encrypted)) expect(problems.some((p) => /encrypted/.test(p.reason))).toBe(true);
      if (ebs.some((m) => (m.Ebs?.VolumeSize ?? 0) > 1024)) expect(problems.some((p) => /over 1 TiB/.test(p.reason))).toBe(true);
      expect(summary.volumes).toBe(ebs.length);
      for (const p of problems) expect(p.remedy.length).toBeGreaterThan(0);
    }), { numRuns: 300 });
    const instance = fc.record({
      InstanceId: fc.option(fc.string(), { nil: undefined }),
      State: fc.option(fc.record({ Name: fc.constantFrom('running', 'stopped', 'pending', 'terminated') }), { nil: undefined }),
      BlockDeviceMappings: fc.option(fc.array(fc.record({ Ebs: fc.option(fc.record({ VolumeId: fc.constantFrom('vol-1', 'vol-2') }), { nil: undefined }) }), { maxLength: 3 }), { nil: undefined }),
    });
    const volumes = fc.array(fc.record({ VolumeId: fc.constantFrom('vol-1', 'vol-2'), Size: fc.integer({ min: 0, max: 20_000 }), Encrypted: fc.boolean() }), { maxLength: 3 });
    fc.assert(fc.property(instance, volumes, (inst, vols) => {
      // WHEN
      const { problems, summary } = instanceProblems(inst as never, vols as never);
      // THEN
      const ebs = (inst.BlockDeviceMappings ?? []).filter((m) => m.Ebs?.VolumeId);
      expect(summary.volumes).toBe(ebs.length);
      if (ebs.length > 1) expect(problems.some((p) => /one volume only/.test(p.reason))).toBe(true);
    }), { numRuns: 300 });
  });
});
