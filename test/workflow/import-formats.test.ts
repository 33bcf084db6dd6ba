/**
 * The import workflow end to end, for images VM Import takes as they are: the synthesized
 * definition runs with the bundled handlers against the local S3 and the EC2 simulator, and each
 * image ends as an AMI. Also: snapshot mode, several disks, a duplicate trigger, the definition
 * against asl-validator, and what an import costs in state transitions and Lambda invocations.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { GetObjectTaggingCommand } from '@aws-sdk/client-s3';
import { Template } from 'aws-cdk-lib/assertions';
import { convert, FileSink } from '../../lambda/disk/convert';
import { openRaw } from '../../lambda/disk/raw';
import { FileSource } from '../../lambda/disk/source';
import { qemuConvert, qemuInfo } from '../helpers/fixtures';
import { BUCKET, ImportHarness, STAGING, minutes, type Run } from '../helpers/import-workflow-harness';
import { bootGptDisk, bootMbrDisk } from '../helpers/inspect-fixtures';
import { startLocalEc2, type LocalEc2 } from '../helpers/local-ec2';
import { retryDelayMs } from '../helpers/local-sfn';
import { cachedTar, ovaEntries } from '../helpers/ova-builder';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const aslValidator: (definition: any) => { isValid: boolean; errorsText: (sep?: string) => string } = require('asl-validator');

const HOUR = 3_600_000;

let h: ImportHarness;

/** The stream-optimized VMDK of the boot disk as the project's own writer makes it. */
async function projectStreamVmdk(raw: string): Promise<string> {
  const file = path.join(path.dirname(raw), `${path.basename(raw)}.vmie-stream.vmdk`);
  if (fs.existsSync(file)) return file;
  const source = await FileSource.open(raw);
  try {
    const sink = await FileSink.create(`${file}.tmp`);
    await convert(await openRaw(source), 'vmdk', sink);
    fs.renameSync(`${file}.tmp`, file);
  } finally {
    await source.close();
  }
  return file;
}

/** An OVA of one stream-optimized VMDK made by qemu-img, with a SHA-256 manifest. */
function bootOva(): string {
  const vmdk = qemuConvert(bootMbrDisk(), 'vmdk', ['subformat=streamOptimized']);
  return cachedTar('workflow-boot-mbr.ova', () => ovaEntries(
    { base: 'web-01', disks: [{ name: 'web-01-disk1.vmdk', file: vmdk }], manifest: 'SHA256' },
    (f) => qemuInfo(f)['virtual-size'],
  ));
}

/** The S3 `Object Created` event EventBridge delivers for an upload. */
function objectCreated(key: string, etag?: string): any {
  return {
    'version': '0',
    'id': '17793124-05d4-b198-2fde-7ededc63b103',
    'detail-type': 'Object Created',
    'source': 'aws.s3',
    'account': '123456789012',
    'time': '2025-01-01T00:00:00Z',
    'region': 'us-east-1',
    'resources': [`arn:aws:s3:::${BUCKET}`],
    'detail': {
      'version': '0',
      'bucket': { name: BUCKET },
      'object': { key, size: 1, ...(etag ? { etag } : {}), sequencer: '00617F08299329D189' },
      'request-id': 'N4N7GDK58NMKJ12R',
      'requester': '123456789012',
      'reason': 'PutObject',
    },
  };
}

async function upload(key: string, file: string): Promise<void> {
  await h.aws.s3.upload(BUCKET, key, file);
}

async function tagsOf(key: string): Promise<Record<string, string>> {
  const out = await h.aws.s3.client.send(new GetObjectTaggingCommand({ Bucket: BUCKET, Key: key }));
  return Object.fromEntries((out.TagSet ?? []).map((t) => [t.Key!, t.Value!]));
}

/** The params of the EC2 calls of `action` made since `from`. */
function callsOf(action: string, from: number): Array<Record<string, string>> {
  return h.aws.ec2.calls.slice(from).filter((c) => c.action === action).map((c) => c.params);
}

/** The DiskContainers of an ImportImage call, in order. */
function containersOf(params: Record<string, string>): Array<{ format: string; key: string }> {
  const out: Array<{ format: string; key: string }> = [];
  for (let i = 1; params[`DiskContainer.${i}.Format`] !== undefined; i++) {
    out.push({ format: params[`DiskContainer.${i}.Format`], key: params[`DiskContainer.${i}.UserBucket.S3Key`] });
  }
  return out;
}

/**
 * The checks every successful import passes: the execution ends in Imported with the AMI, the
 * success event carries it, the AMI and its snapshots are named and tagged, the source is tagged
 * processed, and nothing is left under the execution's staging prefix.
 */
async function expectImported(run: Run, sourceKey: string): Promise<any> {
  const { exec, result } = run;
  expect(result.status).toBe('SUCCEEDED');
  expect(exec.statesEntered().slice(-3)).toEqual(['Tidy up', 'Notify success', 'Imported']);
  const output = result.output;
  expect(output).toMatchObject({ execution: exec.executionArn, source: { bucket: BUCKET, key: sourceKey }, imageId: expect.stringMatching(/^ami-/) });
  // The success event: the same result, on the default bus.
  const event = h.workflow.events.find((e) => e.detailType === 'VM Import Succeeded' && e.detail.execution === exec.executionArn);
  expect(event).toBeDefined();
  expect(event!.source).toBe('vmie.import');
  expect(event!.detail).toEqual(output);
  expect(event!.detail.snapshotIds.length).toBeGreaterThan(0);
  expect(event!.detail.durationSeconds).toEqual(expect.any(Number));
  // The AMI exists, named (Name tag) and tagged with its source and execution, and so are its snapshots.
  const image = h.aws.ec2.images().find((i) => i.ImageId === output.imageId);
  expect(image).toBeDefined();
  const imageTags = Object.fromEntries((image!.Tags ?? []).map((t) => [t.Key, t.Value]));
  expect(imageTags).toMatchObject({ 'Name': output.name, 'vmie:source': `s3://${BUCKET}/${sourceKey}`, 'vmie:execution': exec.executionArn });
  expect((image!.BlockDeviceMappings ?? []).map((m) => m.Ebs?.SnapshotId)).toEqual(output.snapshotIds);
  for (const id of output.snapshotIds) {
    const snapshot = h.aws.ec2.snapshots().find((s) => s.SnapshotId === id);
    expect(Object.fromEntries((snapshot?.Tags ?? []).map((t) => [t.Key, t.Value]))).toMatchObject({ Name: output.name });
  }
  // The source is marked processed; the execution's staging is gone.
  expect(await tagsOf(sourceKey)).toMatchObject({ 'vmie:processed': 'true' });
  expect(await h.keys(`${STAGING}converted/${exec.name}/`)).toEqual([]);
  expect(await h.aws.s3.listUploads(BUCKET)).toEqual([]);
  return output;
}

beforeAll(async () => {
  h = await ImportHarness.start();
});

afterAll(async () => {
  await h?.close();
});

describe('the definition', () => {
  test('is valid ASL once resolved from the template', () => {
    // GIVEN the import state machine loaded from the synthesized stack
    // WHEN its resolved definition is validated
    const definition = h.workflow.definition;
    const { isValid, errorsText } = aslValidator(definition);

    // THEN it is valid, fully resolved, and every Lambda task runs a staged bundle
    expect(errorsText('\n')).toBe('');
    expect(isValid).toBe(true);
    expect(JSON.stringify(definition)).not.toMatch(/Fn::|"Ref"|\$\{Token/);
    const lambdaTasks = Object.keys(definition.States).filter((s) => h.workflow.taskTarget(s)?.kind === 'function');
    expect(lambdaTasks).toEqual(expect.arrayContaining(['Read options', 'Validate image', 'Convert image', 'Start import', 'Check import', 'Finalize image', 'Tidy up', 'Cancel import']));
    for (const fn of Object.values(h.workflow.functions)) expect(fn.problem).toBeUndefined();
  });
});

describe('images imported as they are', () => {
  const cases: Array<[string, string, () => Promise<string> | string, string]> = [
    ['raw', 'vms/raw/web-01.img', () => bootMbrDisk(), 'RAW'],
    ['stream-optimized VMDK (qemu-img)', 'vms/qemu/web-01.vmdk', () => qemuConvert(bootMbrDisk(), 'vmdk', ['subformat=streamOptimized']), 'VMDK'],
    ['stream-optimized VMDK (the project\'s writer)', 'vms/vmie/web-01.vmdk', () => projectStreamVmdk(bootMbrDisk()), 'VMDK'],
    ['dynamic VHD', 'vms/vhd/web-01.vhd', () => qemuConvert(bootMbrDisk(), 'vpc', ['subformat=dynamic'], 'vhd'), 'VHD'],
    ['fixed VHD', 'vms/vhd-fixed/web-01.vhd', () => qemuConvert(bootMbrDisk(), 'vpc', ['subformat=fixed', 'force_size=on'], 'vhd'), 'VHD'],
    ['VHDX', 'vms/vhdx/web-01.vhdx', () => qemuConvert(bootMbrDisk(), 'vhdx', [], 'vhdx'), 'VHDX'],
    ['OVA', 'vms/ova/web-01.ova', () => bootOva(), 'OVA'],
  ];

  test.each(cases)('%s becomes an AMI through one ImportImage of the object', async (_name, key, make, format) => {
    // GIVEN the image uploaded to the import bucket
    await upload(key, await make());
    const from = h.aws.ec2.calls.length;

    // WHEN the upload's event starts an execution
    const run = await h.run(objectCreated(key));

    // THEN the image was imported as it is: no conversion, one ImportImage of the object with its Format
    await expectImported(run, key);
    expect(run.exec.statesEntered()).toContain('Use original disks');
    expect(run.exec.statesEntered()).not.toContain('Convert image');
    const [params, ...more] = callsOf('ImportImage', from);
    expect(more).toEqual([]);
    expect(containersOf(params)).toEqual([{ format, key }]);
    const request = run.exec.events.find((e) => e.type === 'StateExited' && e.state?.name === 'Read options')!.state!.output.request;
    expect(params.ClientToken).toBe(request.clientToken);
    expect(params.ClientToken).toMatch(/^[0-9a-f]{64}$/);
  });
});

describe('import modes', () => {
  test('snapshot mode imports each disk with ImportSnapshot and registers the AMI', async () => {
    // GIVEN a raw image whose sidecar asks for snapshot mode
    const key = 'vms/appliance/fcos.raw';
    await upload(key, bootMbrDisk());
    await h.aws.s3.put(BUCKET, `${key}.vmie.json`, JSON.stringify({ mode: 'snapshot', amiName: 'fcos-appliance', tags: { Team: 'platform' } }));
    const from = h.aws.ec2.calls.length;

    // WHEN the import runs
    const run = await h.run({ bucket: BUCKET, key });

    // THEN one ImportSnapshot and one RegisterImage were made, and the AMI is the registered one
    const output = await expectImported(run, key);
    expect(run.exec.statesEntered()).toContain('Register image');
    expect(callsOf('ImportImage', from)).toEqual([]);
    const snapshotCalls = callsOf('ImportSnapshot', from);
    expect(snapshotCalls).toHaveLength(1);
    expect(snapshotCalls[0]).toMatchObject({ 'DiskContainer.Format': 'RAW', 'DiskContainer.UserBucket.S3Key': key });
    const [register] = callsOf('RegisterImage', from);
    expect(register).toMatchObject({ 'Name': 'fcos-appliance', 'RootDeviceName': '/dev/xvda', 'BlockDeviceMapping.1.Ebs.SnapshotId': output.snapshotIds[0] });
    const image = h.aws.ec2.images().find((i) => i.ImageId === output.imageId)!;
    expect(image.Name).toBe('fcos-appliance');
    expect(Object.fromEntries((image.Tags ?? []).map((t) => [t.Key, t.Value]))).toMatchObject({ Team: 'platform' });
  });

  test('several disks, boot disk first, become one ImportImage with a container per disk, in order', async () => {
    // GIVEN a boot disk and a data disk
    const boot = 'vms/db/db-01-boot.vmdk';
    const data = 'vms/db/db-01-data.vmdk';
    await upload(boot, qemuConvert(bootMbrDisk(), 'vmdk', ['subformat=streamOptimized']));
    await upload(data, qemuConvert(bootGptDisk(), 'vmdk', ['subformat=streamOptimized']));
    const from = h.aws.ec2.calls.length;

    // WHEN the import is started by hand with the ordered list of disks
    const run = await h.run({ disks: [{ bucket: BUCKET, key: boot }, { bucket: BUCKET, key: data }] });

    // THEN one task imported both disks, in that order, into one AMI with two volumes
    const output = await expectImported(run, boot);
    const calls = callsOf('ImportImage', from);
    expect(calls).toHaveLength(1);
    expect(containersOf(calls[0])).toEqual([{ format: 'VMDK', key: boot }, { format: 'VMDK', key: data }]);
    expect(output.snapshotIds).toHaveLength(2);
    const image = h.aws.ec2.images().find((i) => i.ImageId === output.imageId)!;
    expect(image.BlockDeviceMappings).toHaveLength(2);
    // AND both objects are marked processed
    expect(await tagsOf(data)).toMatchObject({ 'vmie:processed': 'true' });
  });
});

describe('a duplicate trigger', () => {
  test('the same Object Created event twice starts one import task; the second execution ends quietly', async () => {
    // GIVEN an upload whose event is delivered twice (EventBridge delivers at least once)
    const key = 'vms/dup/web-01.vmdk';
    await upload(key, qemuConvert(bootMbrDisk(), 'vmdk', ['subformat=streamOptimized']));
    const event = objectCreated(key);
    const from = h.aws.ec2.calls.length;

    // WHEN two executions run for it at the same time
    const first = h.workflow.start(event, { name: 'dup-first' });
    const second = h.workflow.start(event, { name: 'dup-second' });
    const [a, b] = await Promise.all([first.result, second.result]);

    // THEN both end well, but only one import task was made (the client token), and one AMI
    expect([a.status, b.status]).toEqual(['SUCCEEDED', 'SUCCEEDED']);
    const tokens = new Set(callsOf('ImportImage', from).map((p) => p.ClientToken));
    expect(tokens.size).toBe(1);
    const tasks = h.aws.ec2.importImageTasks().filter((t) => (t.Tags ?? []).some((tag) => tag.Key === 'vmie:execution' && [first.executionArn, second.executionArn].includes(tag.Value!)));
    expect(tasks).toHaveLength(1);
    const ends = [first, second].map((e) => e.statesEntered().at(-1));
    expect(ends.sort()).toEqual(['Already importing', 'Imported']);
    const winner = [first, second].find((e) => e.statesEntered().at(-1) === 'Imported')!;
    expect(h.workflow.events.filter((e) => e.detailType === 'VM Import Succeeded' && [first.executionArn, second.executionArn].includes(e.detail.execution)))
      .toHaveLength(1);
    await expectImported({ exec: winner, result: winner.outcome()! }, key);
  });
});

describe('objects that are not images to import', () => {
  /** Whether the trigger rule of the stack would start an execution for an upload of `key`. */
  function triggerMatches(key: string): boolean {
    const rules = Object.values<any>(Template.fromStack(h.stack).findResources('AWS::Events::Rule'))
      .map((r) => r.Properties.EventPattern)
      .filter((p) => p.source?.includes('aws.s3'));
    expect(rules).toHaveLength(1);
    return rules[0].detail.object.key.some((k: { wildcard: string }) =>
      new RegExp(`^${k.wildcard.split('*').map((part) => part.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*')}$`).test(key));
  }

  test('a disk the workflow staged itself starts no import and no failure', async () => {
    // GIVEN a converted disk the workflow wrote under its staging prefix: its upload sends an
    // Object Created event like any other, which the trigger rule passes on
    const key = `${STAGING}converted/an-earlier-execution/disk-1.vmdk`;
    await upload(key, qemuConvert(bootMbrDisk(), 'vmdk', ['subformat=streamOptimized']));
    expect(triggerMatches(key)).toBe(true);

    // WHEN the execution the rule starts runs
    const run = await h.run(objectCreated(key));

    // THEN it ends as "Not an image": no import, no failure event (no alarm)
    expect([run.result.status, run.exec.statesEntered()]).toEqual(['SUCCEEDED', ['Read options', 'Not an image']]);
    expect(h.workflow.events.filter((e) => e.detail.execution === run.exec.executionArn)).toEqual([]);
  });
});

describe('cost of one import', () => {
  let simulators: LocalEc2[] = [];

  afterAll(async () => {
    for (const s of simulators) await s.close();
  });

  test('state transitions and Lambda invocations as the import takes 30 min, 2 h and 8 h', async () => {
    // GIVEN an image, and EC2 simulators whose imports take 30 minutes, 2 hours and 8 hours
    const key = 'vms/cost/web-01.img';
    await upload(key, bootMbrDisk());
    type Row = {
      importHours: number; executionHours: number; transitions: number; lambdaInvocations: number; transitionsPerHour: number; checks: number;
    };
    const rows: Row[] = [];
    for (const importDurationMs of [0.5 * HOUR, 2 * HOUR, 8 * HOUR]) {
      const ec2 = await startLocalEc2({ s3: h.aws.s3.client, clock: h.aws.clock, importDurationMs });
      simulators.push(ec2);
      // The import steps call this simulator.
      h.intercept = (call) => (call.bundle === 'import' ? call.run(undefined, undefined, { AWS_ENDPOINT_URL_EC2: ec2.endpoint }) : call.run());
      try {
        // WHEN one import runs to its end
        const { exec, result } = await h.run({ bucket: BUCKET, key });
        expect(result.status).toBe('SUCCEEDED');
        const hours = exec.simulatedMs() / HOUR;
        rows.push({
          importHours: importDurationMs / HOUR,
          executionHours: Math.round(hours * 100) / 100,
          transitions: exec.transitions(),
          lambdaInvocations: h.lambdaInvocations(exec),
          transitionsPerHour: Math.round((exec.transitions() / hours) * 10) / 10,
          checks: exec.events.filter((e) => (e.type === 'StateEntered' || e.type === 'StateRetried') && e.state?.name === 'Check import').length,
        });
        // THEN the execution lasts about as long as the import (it notices the end within one poll)
        expect(exec.simulatedMs()).toBeGreaterThanOrEqual(importDurationMs);
        expect(minutes(exec.simulatedMs() - importDurationMs)).toBeLessThanOrEqual(5.5);
      } finally {
        h.intercept = (call) => call.run();
      }
    }
    console.log(`import cost (transitions: states entered + retries, as Step Functions bills them):\n${rows.map((r) => JSON.stringify(r)).join('\n')}`);
    // AND the polling stays cheap: at most 40 transitions per hour of import
    for (const r of rows) expect(r.transitionsPerHour).toBeLessThanOrEqual(40);
    // AND a longer import costs what the definition's polling says: per cycle, Keep waiting, the
    // check, and its retries on ImportInProgress (each with its back-off)
    const retrier = h.workflow.stateDefinition('Check import').Retry.find((r: any) => r.ErrorEquals.includes('ImportInProgress'));
    let cycleSeconds = h.workflow.stateDefinition('Keep waiting').Seconds;
    for (let n = 1; n <= retrier.MaxAttempts; n++) cycleSeconds += retryDelayMs(retrier, n) / 1000;
    const steadyPerHour = (retrier.MaxAttempts + 2) / (cycleSeconds / 3600);
    const [short, , long] = rows;
    const slope = (long.transitions - short.transitions) / (long.executionHours - short.executionHours);
    console.log(`steady state: ${steadyPerHour.toFixed(1)} transitions per hour by the definition, ${slope.toFixed(1)} measured`);
    expect(Math.abs(slope - steadyPerHour)).toBeLessThanOrEqual(2);
  });
});
