import { randomBytes } from 'node:crypto';
import type { EC2Client } from '@aws-sdk/client-ec2';
import * as fc from 'fast-check';
import { check, cleanup, createCleanupHandler, finalize, register, start, type WorkflowEvent } from '../../lambda/handlers/import';
import { WorkflowError, isTransientAwsError } from '../../lambda/workflow/errors';
import { checkImport } from '../../lambda/workflow/import-check';
import { cleanupImport } from '../../lambda/workflow/import-cleanup';
import { finalizeImport, registerImage } from '../../lambda/workflow/import-finalize';
import { derivedToken } from '../../lambda/workflow/import-options';
import { startImport } from '../../lambda/workflow/import-start';
import type { ImportDisk, ImportOptions, ImportRequest, ImportState } from '../../lambda/workflow/payload';
import { GENERAL_REMEDY, REMEDIES } from '../../lambda/workflow/remedies';
import { qemuConvert } from '../helpers/fixtures';
import { bootGptDisk, bootMbrDisk } from '../helpers/inspect-fixtures';
import { engineInspect, startLocalEc2, type LocalEc2 } from '../helpers/local-ec2';
import { startLocalEvents } from '../helpers/local-events';
import { startLocalS3, withEnv, type LocalS3 } from '../helpers/local-s3';

const BUCKET = 'import-bucket';
const REGION = 'us-east-1';
const MINUTE = 60_000;
const BOOT_KEY = 'vms/web/web-01.vmdk';
const DATA_KEY = 'vms/web/web-01-data.vmdk';
const ROLE = 'vmie-service-role';
const LICENSE_ARN = 'arn:aws:license-manager:us-east-1:123456789012:license-configuration:lic-0123456789abcdef0123456789abcdef';
const ORG_ARN = 'arn:aws:organizations::123456789012:organization/o-abcdefghij';
const OU_ARN = 'arn:aws:organizations::123456789012:ou/o-abcdefghij/ou-ab12-cdefgh34';

let s3: LocalS3;
let ec2: LocalEc2;
let logged: string[] = [];

beforeAll(async () => {
  s3 = await startLocalS3([BUCKET]);
  await s3.upload(BUCKET, BOOT_KEY, qemuConvert(bootMbrDisk(), 'vmdk', ['subformat=streamOptimized']));
  await s3.upload(BUCKET, DATA_KEY, qemuConvert(bootGptDisk(), 'vmdk', ['subformat=streamOptimized']));
  ec2 = await startLocalEc2({ s3: s3.client, maxActiveImportTasks: 200, inspect: engineInspect(s3.client) });
});

afterAll(async () => {
  await ec2.close();
  await s3.close();
});

beforeEach(() => {
  logged = [];
  const keep = (line: string) => void logged.push(line);
  jest.spyOn(console, 'log').mockImplementation(keep);
  jest.spyOn(console, 'warn').mockImplementation(keep);
  jest.spyOn(console, 'error').mockImplementation(keep);
});

/** A new execution (its ARN tags the tasks it starts). */
function execution(startedSecondsAgo = 60) {
  const name = `run-${randomBytes(4).toString('hex')}`;
  return { id: `arn:aws:states:${REGION}:123456789012:execution:ImportWorkflow:${name}`, name, startTime: new Date(Date.now() - startedSecondsAgo * 1000).toISOString() };
}

/** A request as prepare writes it, for a new upload (its own client token). */
function request(options: ImportOptions = {}, keys: string[] = [BOOT_KEY]): ImportRequest {
  const clientToken = randomBytes(32).toString('hex');
  const disks = keys.map((key) => ({ bucket: BUCKET, key, etag: randomBytes(16).toString('hex') }));
  return { source: disks[0], disks, options, clientToken, name: `web-01-${clientToken.slice(0, 8)}` };
}

function importDisks(keys: string[] = [BOOT_KEY]): ImportDisk[] {
  return keys.map((key) => ({ bucket: BUCKET, key, format: 'VMDK' }));
}

/** Runs a handler as Lambda would: the SDK pointed at the local servers by the environment. */
function invoke<T>(handler: (event: unknown) => Promise<T>, event: unknown, env: Record<string, string | undefined> = {}): Promise<T> {
  return withEnv({ ...s3.env, ...ec2.env, VMIE_ROLE_NAME: ROLE, ...env }, () => handler(event));
}

/** The params of the calls of `action` made since `from`. */
function callsOf(action: string, from = 0) {
  return ec2.calls.slice(from).filter((c) => c.action === action).map((c) => c.params);
}

/** Tags as a record, from the query params `prefix.N.Key` / `prefix.N.Value`. */
function tagParams(params: Record<string, string>, prefix: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(params)) {
    const m = new RegExp(`^${prefix.replace(/\./g, '\\.')}\\.(\\d+)\\.Key$`).exec(k);
    if (m) out[v] = params[`${prefix}.${m[1]}.Value`] ?? '';
  }
  return out;
}

/** Starts an import and runs the clock to its end; returns the state with `import` and `status`. */
async function importedState(req: ImportRequest, exec: ReturnType<typeof execution>, keys = [BOOT_KEY]): Promise<ImportState> {
  let state: ImportState = { request: req, disks: importDisks(keys), validation: { bootMode: 'legacy-bios' } as ImportState['validation'] };
  const started = await invoke(start, { state, execution: exec });
  state = { ...state, import: started };
  ec2.clock.advance(24 * 60 * MINUTE);
  const status = await invoke(check, { state, execution: exec });
  return { ...state, status };
}

describe('start', () => {
  test('every option reaches ImportImage', async () => {
    // GIVEN
    const exec = execution();
    const req = request({
      description: 'web server',
      licenseType: 'BYOL',
      bootMode: 'legacy-bios',
      platform: 'Linux',
      architecture: 'x86_64',
      encrypted: true,
      kmsKeyId: 'alias/imports',
      licenseConfigurationArns: [LICENSE_ARN],
      tags: { Team: 'web', Env: 'prod' },
    });
    const from = ec2.calls.length;
    // WHEN
    const started = await invoke(start, { state: { request: req, disks: importDisks() }, execution: exec });
    // THEN
    expect(started).toEqual({ mode: 'image', importTaskId: expect.stringMatching(/^import-ami-/), startedAt: expect.any(String) });
    const [params] = callsOf('ImportImage', from);
    expect(params).toMatchObject({
      'ClientToken': req.clientToken,
      'Description': 'web server',
      'LicenseType': 'BYOL',
      'BootMode': 'legacy-bios',
      'Platform': 'Linux',
      'Architecture': 'x86_64',
      'Encrypted': 'true',
      'KmsKeyId': 'alias/imports',
      'RoleName': ROLE,
      'DiskContainer.1.Format': 'VMDK',
      'DiskContainer.1.UserBucket.S3Bucket': BUCKET,
      'DiskContainer.1.UserBucket.S3Key': BOOT_KEY,
      'TagSpecification.1.ResourceType': 'import-image-task',
    });
    expect(Object.entries(params).find(([k]) => /^LicenseSpecification\w*\.1\.LicenseConfigurationArn$/.test(k))?.[1]).toBe(LICENSE_ARN);
    expect(params.UsageOperation).toBeUndefined();
    expect(tagParams(params, 'TagSpecification.1.Tag')).toEqual({ 'Team': 'web', 'Env': 'prod', 'vmie:execution': exec.id, 'vmie:client-token': params.ClientToken });
    // The simulator holds the task as the service would.
    const task = ec2.importImageTasks().find((t) => t.ImportTaskId === started.importTaskId)!;
    expect(task.Tags).toEqual(expect.arrayContaining([{ Key: 'vmie:execution', Value: exec.id }]));
  });

  test('the usage operation, the detected boot mode, several disks, and the default role', async () => {
    // GIVEN: no bootMode in the options, UEFI detected by validation; no role name configured
    const exec = execution();
    const req = request({ usageOperation: 'RunInstances:0800', platform: 'Windows' }, [BOOT_KEY, DATA_KEY]);
    const state = { request: req, disks: importDisks([BOOT_KEY, DATA_KEY]), validation: { bootMode: 'uefi' } };
    const from = ec2.calls.length;
    // WHEN
    await invoke(start, { state, execution: exec }, { VMIE_ROLE_NAME: undefined });
    // THEN
    const [params] = callsOf('ImportImage', from);
    expect(params).toMatchObject({ 'UsageOperation': 'RunInstances:0800', 'BootMode': 'uefi', 'DiskContainer.2.UserBucket.S3Key': DATA_KEY });
    expect(params.LicenseType).toBeUndefined();
    expect(params.RoleName).toBeUndefined();
    expect(params.Description).toBe(`Imported by vmie from s3://${BUCKET}/${BOOT_KEY}`);
  });

  test('the client token makes start idempotent: two starts, one task', async () => {
    // GIVEN
    const exec = execution();
    const event = { state: { request: request(), disks: importDisks() }, execution: exec };
    const before = ec2.importImageTasks().length;
    // WHEN
    const first = await invoke(start, event);
    const second = await invoke(start, event);
    // THEN
    expect(second.importTaskId).toBe(first.importTaskId);
    expect(ec2.importImageTasks().length).toBe(before + 1);
  });

  test('another execution for the same objects is refused with DuplicateImport, leaving the first task alone', async () => {
    // GIVEN: the same request (same token) from two executions (a duplicated S3 event)
    const req = request();
    const first = await invoke(start, { state: { request: req, disks: importDisks() }, execution: execution() });
    // WHEN
    const failure = await invoke(start, { state: { request: req, disks: importDisks() }, execution: execution() }).catch((e) => e);
    // THEN
    expect(failure.name).toBe('DuplicateImport');
    expect(failure.message).toContain('started already');
    expect(ec2.importImageTasks().find((t) => t.ImportTaskId === first.importTaskId)?.Status).toBe('active');
  });

  test('snapshot mode: one ImportSnapshot per disk, each with a token derived from the request', async () => {
    // GIVEN
    const exec = execution();
    const req = request({ mode: 'snapshot', encrypted: true, tags: { Team: 'web' } }, [BOOT_KEY, DATA_KEY]);
    const from = ec2.calls.length;
    // WHEN
    const started = await invoke(start, { state: { request: req, disks: importDisks([BOOT_KEY, DATA_KEY]) }, execution: exec });
    // THEN
    expect(started.mode).toBe('snapshot');
    expect(started.snapshotTaskIds).toHaveLength(2);
    const calls = callsOf('ImportSnapshot', from);
    expect(calls.map((p) => p['DiskContainer.UserBucket.S3Key'])).toEqual([BOOT_KEY, DATA_KEY]);
    expect(calls.map((p) => p.ClientToken)).toEqual([derivedToken(req.clientToken, 'snapshot:0'), derivedToken(req.clientToken, 'snapshot:1')]);
    expect(new Set(calls.map((p) => p.ClientToken)).size).toBe(2);
    for (const p of calls) {
      expect(p.ClientToken).toMatch(/^[0-9a-f]{64}$/);
      expect(p).toMatchObject({ 'Encrypted': 'true', 'RoleName': ROLE, 'DiskContainer.Format': 'VMDK', 'TagSpecification.1.ResourceType': 'import-snapshot-task' });
      expect(tagParams(p, 'TagSpecification.1.Tag')).toEqual({ 'Team': 'web', 'vmie:execution': exec.id, 'vmie:client-token': req.clientToken });
    }
  });

  test('snapshot mode refuses an OVA', async () => {
    // GIVEN
    const state = { request: request({ mode: 'snapshot' }), disks: [{ bucket: BUCKET, key: 'vms/x.ova', format: 'OVA' }] };
    // WHEN
    const failure = await invoke(start, { state, execution: execution() }).catch((e) => e);
    // THEN
    expect(failure.name).toBe('InvalidImportOptions');
    expect(failure.message).toContain('not an OVA');
  });

  test('a UEFI image detected by validation cannot be imported encrypted: InvalidImportOptions before any call', async () => {
    // GIVEN
    const state = { request: request({ encrypted: true }), disks: importDisks(), validation: { bootMode: 'uefi' } };
    const from = ec2.calls.length;
    // WHEN
    const failure = await invoke(start, { state, execution: execution() }).catch((e) => e);
    // THEN
    expect(failure.name).toBe('InvalidImportOptions');
    expect(failure.message).toContain('UEFI');
    expect(callsOf('ImportImage', from)).toHaveLength(0);
  });

  test.each([
    ['ResourceLimitExceeded', { code: 'ResourceLimitExceeded', message: 'Too many import tasks in progress.' }, 1, 'ImportLimitExceeded'],
    ['a limit in the message', { code: 'InvalidParameter', message: 'You have reached the maximum number of concurrent import tasks' }, 1, 'ImportLimitExceeded'],
    ['the role answer', { code: 'InvalidParameter', message: 'The service role vmimport provided does not exist or does not have sufficient permissions' }, 1, 'RoleNotReady'],
    ['another refusal', { code: 'InvalidParameterValue', message: 'Invalid value for KmsKeyId' }, 1, 'InvalidImportOptions'],
    ['a 5xx the SDK could not absorb', { code: 'InternalError', message: 'An internal error has occurred', status: 500 }, 5, 'Transient'],
  ])('%s maps to the named error', async (_what, error, times, name) => {
    // GIVEN: EC2 answers with the error (a 5xx as often as the SDK tries: 5 attempts)
    ec2.failNext('ImportImage', error, times);
    // WHEN
    const failure = await invoke(start, { state: { request: request(), disks: importDisks() }, execution: execution() }).catch((e) => e);
    // THEN
    expect(failure.name).toBe(name);
    expect(failure.message).toContain(error.message);
    // The scripted answers are used up (none left for the next test).
    await invoke(start, { state: { request: request(), disks: importDisks() }, execution: execution() });
  });

  test('a throttling answer the SDK absorbs does not fail start; RequestLimitExceeded counts as transient', async () => {
    // GIVEN
    ec2.failNext('ImportImage', { code: 'InternalError', message: 'try again', status: 500 }, 1);
    // WHEN
    const started = await invoke(start, { state: { request: request(), disks: importDisks() }, execution: execution() });
    // THEN
    expect(started.importTaskId).toMatch(/^import-ami-/);
    expect(isTransientAwsError(Object.assign(new Error('Request limit exceeded.'), { name: 'RequestLimitExceeded', $metadata: { httpStatusCode: 503 } }))).toBe(true);
  });

  test.each([
    ['no request', { disks: importDisks() }, '"request"'],
    ['no disks', { request: request() }, '"disks"'],
    ['a disk without a format', { request: request(), disks: [{ bucket: BUCKET, key: BOOT_KEY }] }, 'disks[0]'],
  ])('a state with %s fails with InvalidInput', async (_what, state, message) => {
    // GIVEN / WHEN
    const failure = await invoke(start, { state, execution: execution() }).catch((e) => e);
    // THEN
    expect(failure.name).toBe('InvalidInput');
    expect(failure.message).toContain(message);
  });

  test('a payload without the execution fails with InvalidInput', async () => {
    // GIVEN / WHEN
    const failure = await invoke(start, { state: { request: request(), disks: importDisks() } }).catch((e) => e);
    // THEN
    expect(failure.name).toBe('InvalidInput');
    expect(failure.message).toContain('execution');
  });
});

describe('check', () => {
  test('an active task throws ImportInProgress with its status and rising progress, then completes', async () => {
    // GIVEN
    const exec = execution();
    const state: ImportState = { request: request(), disks: importDisks() };
    const started = await invoke(start, { state, execution: exec });
    const event = { state: { ...state, import: started }, execution: exec };
    // WHEN: a quarter and then most of the simulated import time passes
    ec2.clock.advance(10 * MINUTE);
    const early = await invoke(check, event).catch((e) => e);
    ec2.clock.advance(25 * MINUTE);
    const late = await invoke(check, event).catch((e) => e);
    ec2.clock.advance(24 * 60 * MINUTE);
    const done = await invoke(check, event);
    // THEN
    expect(early.name).toBe('ImportInProgress');
    const a = JSON.parse(early.message);
    const b = JSON.parse(late.message);
    expect(a).toEqual({ status: 'active', progress: expect.any(Number), statusMessage: expect.any(String) });
    expect(b.progress).toBeGreaterThan(a.progress);
    expect(b.statusMessage).not.toBe(a.statusMessage);
    // One structured log line per check in progress.
    const lines = logged.map((l) => JSON.parse(l)).filter((l) => l.message === 'import in progress');
    expect(lines).toEqual([
      expect.objectContaining({ execution: exec.id, taskIds: [started.importTaskId], ...a }),
      expect.objectContaining({ execution: exec.id, taskIds: [started.importTaskId], ...b }),
    ]);
    // Completed: the AMI and snapshots the import made.
    const task = ec2.importImageTasks().find((t) => t.ImportTaskId === started.importTaskId)!;
    expect(done).toEqual({
      status: 'completed',
      progress: 100,
      imageId: task.ImageId,
      snapshotIds: task.SnapshotDetails!.map((s) => s.SnapshotId),
      platform: 'Linux',
    });
    expect(ec2.images().map((i) => i.ImageId)).toContain(done.imageId);
    expect(done.snapshotIds).toHaveLength(1);
  });

  test('snapshot mode: progress of all disks, then the snapshots in disk order', async () => {
    // GIVEN
    const exec = execution();
    const state: ImportState = { request: request({ mode: 'snapshot' }), disks: importDisks([BOOT_KEY, DATA_KEY]) };
    const started = await invoke(start, { state, execution: exec });
    const event = { state: { ...state, import: started }, execution: exec };
    // WHEN
    ec2.clock.advance(20 * MINUTE);
    const running = await invoke(check, event).catch((e) => e);
    ec2.clock.advance(24 * 60 * MINUTE);
    const done = await invoke(check, event);
    // THEN
    expect(running.name).toBe('ImportInProgress');
    expect(JSON.parse(running.message).statusMessage).toMatch(/^disk 0: active.*; disk 1: active/);
    const byId = new Map(ec2.importSnapshotTasks().map((t) => [t.ImportTaskId, t.SnapshotTaskDetail!.SnapshotId]));
    expect(done.snapshotIds).toEqual(started.snapshotTaskIds!.map((id) => byId.get(id)));
  });

  const samples: Record<string, string> = {
    ROLE: 'ClientError: The service role vmimport does not exist or does not have sufficient permissions for the service to continue',
    BUCKET_REGION: 'ClientError: The given S3 bucket is not local to the Region',
    VHD_FOOTERS: 'ClientError: Footers not identical',
    VMDK_NOT_STREAM_OPTIMIZED: 'ClientError: Disk validation failed [Unsupported VMDK File Format]',
    VMDK_DAMAGED: 'ClientError: Uncompressed data has invalid length',
    OVA_PACKAGING: 'ClientError: Unsupported OVA format',
    S3_ACCESS: 'ClientError: Disk validation failed [We do not have access to the given resource. Reason 403 Forbidden]',
    KMS_KEY: 'ClientError: The specified KMS key is not accessible',
    NO_BOOT_PARTITION: 'ClientError: No bootable partition found',
    UNKNOWN_OS: 'ClientError: Unknown OS / Missing OS files.',
    KERNEL: 'ClientError: Unsupported kernel version 2.6.18',
    FIRST_BOOT: 'FirstBootFailure: This import request failed because the Windows instance failed to boot and establish network connectivity.',
    LIMIT: 'ClientError: Resource limit exceeded',
    CANCELLED: 'Task was cancelled by an administrator',
  };

  test('every row of the error table has a sample here', () => {
    // GIVEN / WHEN / THEN
    expect(Object.keys(samples).sort()).toEqual(REMEDIES.map((r) => r.id).sort());
  });

  test.each(REMEDIES.map((r) => [r.id, r] as const))('a task that ends deleted with the %s message fails with ImportTaskFailed and its remedy', async (id, row) => {
    // GIVEN: the simulator ends the next task importing this key with the service's message
    const exec = execution();
    const state: ImportState = { request: request(), disks: importDisks() };
    ec2.failTask(samples[id], { key: BOOT_KEY, afterMs: 5 * MINUTE });
    const started = await invoke(start, { state, execution: exec });
    ec2.clock.advance(6 * MINUTE);
    // WHEN
    const failure = await invoke(check, { state: { ...state, import: started }, execution: exec }).catch((e) => e);
    // THEN
    expect(failure.name).toBe('ImportTaskFailed');
    expect(failure.message).toContain(samples[id].replace(/\.$/, ''));
    expect(failure.message).toMatch(new RegExp(`\\. Fix: ${escape(row.remedy)}$`));
  });

  test('a message the table does not know gets the general remedy', async () => {
    // GIVEN
    const exec = execution();
    const state: ImportState = { request: request(), disks: importDisks() };
    ec2.failTask('ClientError: Something nobody documented', { key: BOOT_KEY, afterMs: MINUTE });
    const started = await invoke(start, { state, execution: exec });
    ec2.clock.advance(2 * MINUTE);
    // WHEN
    const failure = await invoke(check, { state: { ...state, import: started }, execution: exec }).catch((e) => e);
    // THEN
    expect(failure.name).toBe('ImportTaskFailed');
    expect(failure.message).toBe(`The import task ${started.importTaskId} failed: ClientError: Something nobody documented. Fix: ${GENERAL_REMEDY}`);
  });

  test('a disk the service role cannot read fails as the simulator validates it: the S3 access remedy', async () => {
    // GIVEN: a disk object that does not exist
    const exec = execution();
    const state: ImportState = { request: request(), disks: importDisks(['vms/missing.vmdk']) };
    const started = await invoke(start, { state, execution: exec });
    ec2.clock.advance(24 * 60 * MINUTE);
    // WHEN
    const failure = await invoke(check, { state: { ...state, import: started }, execution: exec }).catch((e) => e);
    // THEN
    expect(failure.name).toBe('ImportTaskFailed');
    expect(failure.message).toContain('403 Forbidden');
    expect(failure.message).toContain(`Fix: ${REMEDIES.find((r) => r.id === 'S3_ACCESS')!.remedy}`);
  });

  test('a state without the started import fails with InvalidInput', async () => {
    // GIVEN / WHEN
    const failure = await invoke(check, { state: { request: request() }, execution: execution() }).catch((e) => e);
    // THEN
    expect(failure.name).toBe('InvalidInput');
    expect(failure.message).toContain('"import"');
  });
});

describe('register (snapshot mode)', () => {
  test('registers the snapshots in disk order, with the defaults; a retry does not register twice', async () => {
    // GIVEN
    const exec = execution();
    const req = request({ mode: 'snapshot' }, [BOOT_KEY, DATA_KEY]);
    const state = await importedState(req, exec, [BOOT_KEY, DATA_KEY]);
    const from = ec2.calls.length;
    // WHEN
    const registered = await invoke(register, { state, execution: exec });
    const again = await invoke(register, { state, execution: exec });
    // THEN
    expect(again).toEqual(registered);
    expect(callsOf('RegisterImage', from)).toHaveLength(1);
    const [params] = callsOf('RegisterImage', from);
    expect(params).toMatchObject({
      'Name': req.name,
      'Architecture': 'x86_64',
      'RootDeviceName': '/dev/xvda',
      'VirtualizationType': 'hvm',
      'EnaSupport': 'true',
      'BootMode': 'legacy-bios',
      'BlockDeviceMapping.1.DeviceName': '/dev/xvda',
      'BlockDeviceMapping.1.Ebs.SnapshotId': state.status!.snapshotIds[0],
      'BlockDeviceMapping.2.DeviceName': '/dev/xvdb',
      'BlockDeviceMapping.2.Ebs.SnapshotId': state.status!.snapshotIds[1],
    });
    const image = ec2.images().find((i) => i.ImageId === registered.imageId)!;
    expect(image.Name).toBe(req.name);
    expect(image.BlockDeviceMappings!.map((m) => [m.DeviceName, m.Ebs?.SnapshotId])).toEqual([
      ['/dev/xvda', state.status!.snapshotIds[0]],
      ['/dev/xvdb', state.status!.snapshotIds[1]],
    ]);
  });

  test('the options choose the root device, ENA, architecture and boot mode', async () => {
    // GIVEN
    const exec = execution();
    const req = request({ mode: 'snapshot', rootDeviceName: '/dev/sda1', enaSupport: false, architecture: 'arm64', bootMode: 'uefi' });
    const state = await importedState(req, exec);
    const from = ec2.calls.length;
    // WHEN
    await invoke(register, { state, execution: exec });
    // THEN
    const [params] = callsOf('RegisterImage', from);
    expect(params).toMatchObject({ 'RootDeviceName': '/dev/sda1', 'BlockDeviceMapping.1.DeviceName': '/dev/sda1', 'EnaSupport': 'false', 'Architecture': 'arm64', 'BootMode': 'uefi' });
  });

  test('an AMI of that name with other snapshots is not taken for ours', async () => {
    // GIVEN: an image registered under the name, from another import
    const exec = execution();
    const req = request({ mode: 'snapshot' });
    const other = await importedState(request({ mode: 'snapshot' }), execution());
    await invoke(register, { state: { ...other, request: { ...other.request!, name: req.name } }, execution: exec });
    const state = await importedState(req, exec);
    // WHEN
    const failure = await invoke(register, { state, execution: exec }).catch((e) => e);
    // THEN
    expect(failure.name).toBe('InvalidImportOptions');
    expect(failure.message).toContain('already exists');
  });
});

describe('finalize', () => {
  test('the result carries the validate step\'s finding codes, for the success event', async () => {
    // GIVEN: a completed import whose validation found two things
    const exec = execution(60);
    const state = await importedState(request({}), exec);
    // WHEN
    const result = await invoke(finalize, { state: { ...state, validation: { findingCodes: ['COMPRESSED_WRAPPER', 'NOT_STREAM_OPTIMIZED'] } }, execution: exec });
    // THEN
    expect(result.findings).toEqual(['COMPRESSED_WRAPPER', 'NOT_STREAM_OPTIMIZED']);
  });

  test('tags, shares, copies and the Image Builder image; a retry makes nothing twice', async () => {
    // GIVEN: a completed image-mode import
    const exec = execution(3600);
    const req = request({
      tags: { Team: 'web' },
      shareWithAccounts: ['210987654321'],
      shareWithOrganizationArns: [ORG_ARN],
      shareWithOrganizationalUnitArns: [OU_ARN],
      copyToRegions: ['eu-west-1', 'ap-southeast-2'],
      imageBuilder: { name: 'web-server', semanticVersion: '1.2.3', osVersion: 'Ubuntu 22' },
    });
    const state = await importedState(req, exec);
    const imageId = state.status!.imageId!;
    // WHEN
    const result = await invoke(finalize, { state, execution: exec });
    const again = await invoke(finalize, { state, execution: exec });
    // THEN
    expect(result).toEqual({
      execution: exec.id,
      source: req.source,
      imageId,
      name: req.name,
      snapshotIds: state.status!.snapshotIds,
      copies: [
        { region: 'eu-west-1', imageId: expect.stringMatching(/^ami-/) },
        { region: 'ap-southeast-2', imageId: expect.stringMatching(/^ami-/) },
      ],
      sharedWith: { accounts: ['210987654321'], organizationArns: [ORG_ARN], organizationalUnitArns: [OU_ARN] },
      imageBuilderImageArn: expect.stringMatching(/^arn:aws:imagebuilder:us-east-1:\d{12}:image\/web-server\/1\.2\.3\/1$/),
      findings: [],
      durationSeconds: expect.any(Number),
    });
    expect(result.durationSeconds).toBeGreaterThanOrEqual(3600);
    expect(result.durationSeconds).toBeLessThan(3700);
    expect({ ...again, durationSeconds: 0 }).toEqual({ ...result, durationSeconds: 0 });
    // The AMI and its snapshot carry the tags.
    const expected = { 'Name': req.name, 'Team': 'web', 'vmie:source': `s3://${BUCKET}/${BOOT_KEY}`, 'vmie:execution': exec.id };
    const image = ec2.images().find((i) => i.ImageId === imageId)!;
    expect(Object.fromEntries(image.Tags!.map((t) => [t.Key, t.Value]))).toEqual(expected);
    const snapshot = ec2.snapshots().find((s) => s.SnapshotId === state.status!.snapshotIds[0])!;
    expect(Object.fromEntries(snapshot.Tags!.map((t) => [t.Key, t.Value]))).toEqual(expected);
    // Shared: launch permissions on the AMI, create-volume permission on the snapshot.
    expect(image.LaunchPermissions).toEqual([{ UserId: '210987654321' }, { OrganizationArn: ORG_ARN }, { OrganizationalUnitArn: OU_ARN }]);
    expect(snapshot.CreateVolumePermissions).toEqual([{ UserId: '210987654321' }]);
    // Copies in the target Regions, from this one, once each.
    for (const copy of result.copies) {
      const made = ec2.images().filter((i) => i.ImageId === copy.imageId);
      expect(made).toHaveLength(1);
      expect(made[0]).toMatchObject({ Region: copy.region, Name: req.name });
    }
    expect(ec2.images().filter((i) => i.Name === req.name)).toHaveLength(2);
    // One Image Builder import, from the ImportImage task, with the platform the task reported.
    const builds = ec2.imageBuilderImports().filter((b) => b.arn === result.imageBuilderImageArn);
    expect(builds).toEqual([expect.objectContaining({ name: 'web-server', semanticVersion: '1.2.3', platform: 'Linux', vmImportTaskId: state.import!.importTaskId, osVersion: 'Ubuntu 22' })]);
  });

  test('snapshot mode finalizes the registered AMI', async () => {
    // GIVEN
    const exec = execution();
    const req = request({ mode: 'snapshot' });
    const state = await importedState(req, exec);
    const registered = await invoke(register, { state, execution: exec });
    // WHEN
    const result = await invoke(finalize, { state: { ...state, registered }, execution: exec });
    // THEN
    const nobody = { accounts: [], organizationArns: [], organizationalUnitArns: [] };
    expect(result).toMatchObject({ imageId: registered.imageId, name: req.name, copies: [], sharedWith: nobody });
    expect(result.imageBuilderImageArn).toBeUndefined();
    const image = ec2.images().find((i) => i.ImageId === registered.imageId)!;
    expect(image.Tags).toEqual(expect.arrayContaining([{ Key: 'Name', Value: req.name }]));
  });

  test('a state without an AMI fails with InvalidInput', async () => {
    // GIVEN
    const state = { request: request(), status: { status: 'completed', progress: 100, snapshotIds: [] } };
    // WHEN
    const failure = await invoke(finalize, { state, execution: execution() }).catch((e) => e);
    // THEN
    expect(failure.name).toBe('InvalidInput');
  });
});

describe('cleanup', () => {
  test('in the workflow: cancels the running task, says why and what to do', async () => {
    // GIVEN: a running import and the Catch's $.error of a failed check
    const exec = execution(120);
    const state: ImportState = { request: request(), disks: importDisks() };
    const started = await invoke(start, { state, execution: exec });
    const cause = JSON.stringify({ errorType: 'ImportTaskFailed', errorMessage: 'The import task failed: ClientError: Footers not identical. Fix: Export the VM again', trace: [] });
    // WHEN
    const failure = await invoke(cleanup, { state: { ...state, import: started, error: { Error: 'ImportTaskFailed', Cause: cause } }, execution: exec });
    // THEN
    expect(failure).toEqual({
      execution: exec.id,
      status: 'FAILED',
      reason: 'The import task failed: ClientError: Footers not identical.',
      remedy: 'Export the VM again',
      error: 'ImportTaskFailed',
      cancelledTasks: [started.importTaskId],
      durationSeconds: expect.any(Number),
      source: state.request!.source,
    });
    expect(failure.durationSeconds).toBeGreaterThanOrEqual(120);
    ec2.clock.advance(5 * MINUTE);
    expect(ec2.importImageTasks().find((t) => t.ImportTaskId === started.importTaskId)).toMatchObject({ Status: 'deleted' });
  });

  test.each([
    [
      'an UnsupportedImage error with a fix per finding',
      { Error: 'UnsupportedImage', Cause: JSON.stringify({ errorType: 'UnsupportedImage', errorMessage: 's3://b/k cannot be imported: [A] first. Fix: Do one | [B] second. Fix: Do two' }) },
      { reason: 's3://b/k cannot be imported: [A] first. Fix: Do one | [B] second. Fix: Do two', remedy: 'Do one | Do two' },
    ],
    [
      'an error without a fix, matched by the error table',
      { Error: 'Transient', Cause: 'ImportImage: InvalidParameter: The service role vmimport does not exist or does not have sufficient permissions' },
      { remedy: REMEDIES.find((r) => r.id === 'ROLE')!.remedy },
    ],
    ['a named error without a fix', { Error: 'ObjectNotFound', Cause: 's3://b/k does not exist' }, { reason: 's3://b/k does not exist', remedy: expect.stringContaining('exists') }],
  ])('explains %s', async (_what, error, expected) => {
    // GIVEN: a failure before any import started
    const exec = execution();
    // WHEN
    const failure = await invoke(cleanup, { state: { error }, execution: exec });
    // THEN
    expect(failure).toMatchObject({ error: error.Error, cancelledTasks: [], ...expected });
  });

  test('finds a task by the execution tag when the state lost its id, and leaves ended tasks alone', async () => {
    // GIVEN: one running snapshot task whose id the state does not have, and a completed import of the same execution
    const exec = execution();
    const done = await importedState(request(), exec);
    const lost = await invoke(start, { state: { request: request({ mode: 'snapshot' }), disks: importDisks() }, execution: exec });
    const from = ec2.calls.length;
    // WHEN
    const failure = await invoke(cleanup, { state: { request: done.request, error: { Error: 'States.Timeout', Cause: 'Task timed out' } }, execution: exec });
    // THEN
    expect(failure.cancelledTasks).toEqual(lost.snapshotTaskIds);
    expect(failure.remedy).toContain('timeout');
    expect(callsOf('CancelImportTask', from).map((p) => p.ImportTaskId)).toEqual(lost.snapshotTaskIds);
  });

  test('a refused listing does not stop clean-up: the task the state knows is still cancelled', async () => {
    // GIVEN: a running import; EC2 refuses to list image import tasks (with the tag filter, then without)
    const exec = execution();
    const state: ImportState = { request: request(), disks: importDisks() };
    const started = await invoke(start, { state, execution: exec });
    ec2.failNext('DescribeImportImageTasks', { code: 'UnauthorizedOperation', message: 'You are not authorized to perform this operation.' }, 2);
    // WHEN
    const failure = await invoke(cleanup, { state: { ...state, import: started, error: { Error: 'States.Timeout' } }, execution: exec });
    // THEN
    expect(failure.cancelledTasks).toEqual([started.importTaskId]);
    expect(logged.map((l) => JSON.parse(l).message)).toContain('import tasks not listed');
  });

  test('a task that ended between the listing and the cancel is tolerated', async () => {
    // GIVEN: the state names a completed task
    const exec = execution();
    const done = await importedState(request(), exec);
    // WHEN
    const failure = await invoke(cleanup, { state: { ...done, import: { ...done.import!, mode: 'image' }, error: { Error: 'Lambda.Unknown' } }, execution: execution() });
    // THEN
    expect(failure.cancelledTasks).toEqual([]);
    expect(failure.reason).toBe('The import failed with Lambda.Unknown');
  });

  test('from the status-change event: cancels by tag and emits the failure event', async () => {
    // GIVEN: a running import of an execution that timed out, and an emitter that records
    const exec = execution();
    const req = request();
    const started = await invoke(start, { state: { request: req, disks: importDisks() }, execution: exec });
    const emitted: WorkflowEvent[] = [];
    const handler = createCleanupHandler({ emit: async (e) => void emitted.push(e) });
    const startDate = Date.now() - 7200_000;
    const event = statusChange(exec.id, 'TIMED_OUT', startDate, { bucket: BUCKET, key: BOOT_KEY });
    // WHEN
    const failure = await invoke(handler, event);
    // THEN
    expect(failure).toMatchObject({
      execution: exec.id,
      status: 'TIMED_OUT',
      error: 'TIMED_OUT',
      cancelledTasks: [started.importTaskId],
      source: { bucket: BUCKET, key: BOOT_KEY },
    });
    expect(failure.reason).toContain('timed out');
    expect(failure.durationSeconds).toBeGreaterThanOrEqual(7200);
    // The same shape as the failure event of the workflow's own Catch path ($.failure).
    expect(emitted).toEqual([{ source: 'vmie.import', detailType: 'VM Import Failed', detail: failure, resources: [exec.id] }]);
  });

  test('from the status-change event of an aborted execution with nothing running', async () => {
    // GIVEN
    const exec = execution();
    const emitted: WorkflowEvent[] = [];
    const handler = createCleanupHandler({ emit: async (e) => void emitted.push(e) });
    // WHEN
    const failure = await invoke(handler, statusChange(exec.id, 'ABORTED', Date.now() - 1000, { not: 'an import input' }));
    // THEN
    expect(failure).toMatchObject({ error: 'ABORTED', cancelledTasks: [] });
    expect(failure.source).toBeUndefined();
    expect(emitted.map((e) => (e.detail as { status: string }).status)).toEqual(['ABORTED']);
  });

  test('the deployed cleanup puts the failure event on the bus (PutEvents, the configured source); a refused entry fails the call', async () => {
    // GIVEN
    const bus = await startLocalEvents();
    const exec = execution();
    try {
      // WHEN
      await invoke(cleanup, statusChange(exec.id, 'ABORTED', Date.now() - 1000, {}), { VMIE_EVENT_SOURCE: 'acme.vm-import', ...bus.env });
      bus.failNext('InternalFailure');
      const refused = await invoke(cleanup, statusChange(exec.id, 'TIMED_OUT', Date.now() - 1000, {}), bus.env).catch((e) => e);
      // THEN
      expect(bus.entries).toEqual([expect.objectContaining({ source: 'acme.vm-import', detailType: 'VM Import Failed', detail: expect.objectContaining({ execution: exec.id, status: 'ABORTED' }) })]);
      expect(refused.name).toBe('Transient');
      expect(refused.message).toMatch(/PutEvents refused the VM Import Failed event: InternalFailure/);
    } finally {
      await bus.close();
    }
  });

  test('a status-change event of a running execution fails with InvalidInput', async () => {
    // GIVEN / WHEN
    const failure = await invoke(cleanup, statusChange(execution().id, 'RUNNING', Date.now(), {})).catch((e) => e);
    // THEN
    expect(failure.name).toBe('InvalidInput');
  });
});

describe('the handlers take any payload: a result or a named error, never another exception', () => {
  /** An EC2 client that answers nothing: reaching it means the payload passed the checks. */
  const REACHED = new Error('reached EC2');
  const stub = { send: async () => Promise.reject(REACHED) } as unknown as EC2Client;
  /** The error is EC2's answer, as it is or named by the handler. */
  const reached = (e: unknown): boolean => e === REACHED || (e instanceof Error && e.cause !== undefined && reached(e.cause));
  const handlers: Array<[string, (event: unknown) => Promise<unknown>]> = [
    ['start', (e) => startImport(stub, e, {})],
    ['check', (e) => checkImport(stub, e)],
    ['register', (e) => registerImage(stub, e)],
    ['finalize', (e) => finalizeImport({ ec2: () => stub, imagebuilder: () => stub as never, region: REGION }, e)],
    ['cleanup', (e) => cleanupImport({ ec2: () => stub, emit: async () => undefined }, e)],
  ];
  const valid = () => {
    const req = request({ mode: 'snapshot' });
    return {
      state: {
        request: req,
        disks: importDisks(),
        import: { mode: 'snapshot', snapshotTaskIds: ['import-snap-0123456789abcdef0'], startedAt: new Date().toISOString() },
        status: { status: 'completed', progress: 100, imageId: 'ami-0123456789abcdef0', snapshotIds: ['snap-0123456789abcdef0'] },
        registered: { imageId: 'ami-0123456789abcdef0' },
        error: { Error: 'States.Timeout', Cause: 'timed out' },
      },
      execution: execution(),
    };
  };
  const paths = ['state', 'execution', 'execution.id', 'execution.startTime', 'state.request', 'state.request.options', 'state.request.source', 'state.disks',
    'state.disks.0', 'state.disks.0.format', 'state.import', 'state.import.mode', 'state.import.snapshotTaskIds', 'state.status', 'state.status.snapshotIds',
    'state.registered', 'state.error', 'state.error.Cause', 'state.request.options.tags', 'state.request.options.copyToRegions'];
  const mutated = fc.tuple(fc.constantFrom(...paths), fc.jsonValue()).map(([path, value]) => {
    const event = valid() as Record<string, any>;
    const keys = path.split('.');
    let at = event;
    for (const k of keys.slice(0, -1)) at = at[k];
    at[keys[keys.length - 1]] = value;
    return event;
  });
  const statusChanges = fc.record({
    status: fc.oneof(fc.constantFrom('TIMED_OUT', 'ABORTED', 'FAILED'), fc.string()),
    executionArn: fc.oneof(fc.string(), fc.jsonValue()),
    startDate: fc.jsonValue(),
    stopDate: fc.jsonValue(),
    name: fc.jsonValue(),
    input: fc.oneof(fc.string(), fc.jsonValue()),
  }, { requiredKeys: [] })
    .map((detail) => ({ 'source': 'aws.states', 'detail-type': 'Step Functions Execution Status Change', detail }));

  test.each(handlers)('%s', async (_name, handler) => {
    // GIVEN / WHEN / THEN
    await fc.assert(
      fc.asyncProperty(fc.oneof(fc.anything(), mutated, statusChanges), async (event) => {
        const outcome = await withEnv({ AWS_REGION: REGION }, () => handler(event)).then(() => 'ok', (e: unknown) => e);
        return outcome === 'ok' || reached(outcome) || (outcome instanceof WorkflowError && ['InvalidInput', 'InvalidImportOptions'].includes(outcome.name));
      }),
      { numRuns: 300 },
    );
  });
});

/** The Step Functions "Execution Status Change" event EventBridge delivers. */
function statusChange(executionArn: string, status: string, startDate: number, input: unknown) {
  return {
    'version': '0',
    'id': '315c1398-40ff-a850-213b-158f73e60175',
    'detail-type': 'Step Functions Execution Status Change',
    'source': 'aws.states',
    'account': '123456789012',
    'time': new Date().toISOString(),
    'region': REGION,
    'resources': [executionArn],
    'detail': {
      executionArn,
      stateMachineArn: executionArn.replace(':execution:', ':stateMachine:').replace(/:[^:]+$/, ''),
      name: executionArn.slice(executionArn.lastIndexOf(':') + 1),
      status,
      startDate,
      stopDate: Date.now(),
      input: JSON.stringify(input),
      output: null,
    },
  };
}

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
