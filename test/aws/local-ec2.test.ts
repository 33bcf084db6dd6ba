import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import {
  CancelExportTaskCommand,
  CancelImportTaskCommand,
  CopyImageCommand,
  CreateInstanceExportTaskCommand,
  CreateTagsCommand,
  DeleteSnapshotCommand,
  DeregisterImageCommand,
  DescribeExportImageTasksCommand,
  DescribeExportTasksCommand,
  DescribeImageAttributeCommand,
  DescribeImagesCommand,
  DescribeImportImageTasksCommand,
  DescribeImportSnapshotTasksCommand,
  DescribeInstancesCommand,
  DescribeSnapshotAttributeCommand,
  DescribeSnapshotsCommand,
  DescribeVolumesCommand,
  EC2Client,
  ExportImageCommand,
  ImportImageCommand,
  type ImportImageCommandInput,
  ImportSnapshotCommand,
  ModifyImageAttributeCommand,
  ModifySnapshotAttributeCommand,
  RegisterImageCommand,
} from '@aws-sdk/client-ec2';
import { ImagebuilderClient, ImportVmImageCommand } from '@aws-sdk/client-imagebuilder';
import { GetObjectCommand, HeadObjectCommand } from '@aws-sdk/client-s3';
import * as fc from 'fast-check';
import { vhdSize } from '../../lambda/disk/convert';
import { inspect } from '../../lambda/disk/inspect';
import { FileSource } from '../../lambda/disk/source';
import { qemuConvert, sampleMbrDisk, tempDir } from '../helpers/fixtures';
import {
  ACCESS_DENIED_MESSAGE,
  CANCELED_MESSAGE,
  EC2_NAMESPACE,
  engineInspect,
  startLocalEc2,
  type LocalEc2,
  type LocalEc2Options,
} from '../helpers/local-ec2';
import { startLocalS3, withEnv, type LocalS3 } from '../helpers/local-s3';
import { VirtualClock } from '../helpers/virtual-clock';

const MINUTE = 60_000;
const IMAGES = 'images';
const EXPORTS = 'exports';

let s3: LocalS3;
let raw: string;
let rawSize: number;
let streamVmdk: string;
let sparseVmdk: string;
let tmp: { dir: string; cleanup: () => void };
const running: LocalEc2[] = [];

beforeAll(async () => {
  s3 = await startLocalS3([IMAGES, EXPORTS]);
  raw = sampleMbrDisk(16);
  rawSize = fs.statSync(raw).size;
  streamVmdk = qemuConvert(raw, 'vmdk', ['subformat=streamOptimized']);
  sparseVmdk = qemuConvert(raw, 'vmdk');
  await s3.upload(IMAGES, 'disks/sample.raw', raw);
  await s3.upload(IMAGES, 'disks/stream.vmdk', streamVmdk);
  await s3.upload(IMAGES, 'disks/sparse.vmdk', sparseVmdk);
  tmp = tempDir('vmie-local-ec2-test-');
});

afterEach(async () => {
  while (running.length) await running.pop()!.close();
});

afterAll(async () => {
  await s3.close();
  tmp.cleanup();
});

/** A simulator that the test's teardown closes. */
async function start(options: Partial<LocalEc2Options> = {}): Promise<LocalEc2> {
  const sim = await startLocalEc2({ s3: s3.client, ...options });
  running.push(sim);
  return sim;
}

/** A client of the real SDK aimed at the simulator in `region`, without retries. */
function clientFor(sim: LocalEc2, region = 'us-east-1'): EC2Client {
  return new EC2Client({ endpoint: sim.endpoint, region, maxAttempts: 1, credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' } });
}

function rawImport(key = 'disks/sample.raw', extra: Partial<ImportImageCommandInput> = {}): ImportImageCommand {
  return new ImportImageCommand({
    Description: 'sample',
    RoleName: 'vmie-service-role',
    LicenseType: 'BYOL',
    DiskContainers: [{ Format: 'RAW', UserBucket: { S3Bucket: IMAGES, S3Key: key } }],
    ...extra,
  });
}

async function errorOf(p: Promise<unknown>): Promise<{ name: string; message: string; status?: number }> {
  try {
    await p;
  } catch (e) {
    const err = e as Error & { $metadata?: { httpStatusCode?: number } };
    return { name: err.name, message: err.message, status: err.$metadata?.httpStatusCode };
  }
  throw new Error('the call succeeded');
}

async function describeImport(sim: LocalEc2, id: string) {
  const out = await sim.client.send(new DescribeImportImageTasksCommand({ ImportTaskIds: [id] }));
  return out.ImportImageTasks![0];
}

async function download(bucket: string, key: string): Promise<string> {
  const out = await s3.client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
  const file = path.join(tmp.dir, `${Date.now()}-${path.basename(key)}`);
  fs.writeFileSync(file, await out.Body!.transformToByteArray());
  return file;
}

async function inspectFile(file: string) {
  const src = await FileSource.open(file);
  try {
    return await inspect(src);
  } finally {
    await src.close();
  }
}

function sha256(file: string): string {
  return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

describe('VirtualClock', () => {
  test('moves only when advanced, and tells its listeners', () => {
    // GIVEN
    const clock = new VirtualClock(1_000);
    const seen: Array<[number, number]> = [];
    const stop = clock.onAdvance((now, previous) => seen.push([now, previous]));
    // WHEN
    clock.advance(500);
    clock.advance(0);
    stop();
    clock.advance(5);
    // THEN
    expect(clock.now()).toBe(1_505);
    expect(clock.date().getTime()).toBe(1_505);
    expect(seen).toEqual([
      [1_500, 1_000],
      [1_500, 1_500],
    ]);
    expect(() => clock.advance(-1)).toThrow(RangeError);
    expect(() => clock.advance(Number.NaN)).toThrow(RangeError);
  });
});

describe('ImportImage', () => {
  test('progresses with the clock through the documented messages and completes with an AMI and snapshots', async () => {
    // GIVEN
    const sim = await start();
    // WHEN
    const started = await sim.client.send(
      rawImport('disks/sample.raw', { TagSpecifications: [{ ResourceType: 'import-image-task', Tags: [{ Key: 'vmie:execution', Value: 'exec-1' }] }] }),
    );
    const seen: Array<{ at: number; status?: string; message?: string; progress?: number }> = [];
    for (const minute of [1, 4, 7, 10, 20, 27, 30, 35]) {
      sim.clock.advance(minute * MINUTE - (seen.length ? seen[seen.length - 1].at : 0) * MINUTE);
      const t = await describeImport(sim, started.ImportTaskId!);
      seen.push({ at: minute, status: t.Status, message: t.StatusMessage, progress: Number(t.Progress) });
    }
    sim.clock.advance(5 * MINUTE);
    const done = await describeImport(sim, started.ImportTaskId!);
    // THEN
    expect(started.ImportTaskId).toMatch(/^import-ami-[0-9a-f]{17}$/);
    expect(started).toMatchObject({ Status: 'active', StatusMessage: 'pending', Description: 'sample', LicenseType: 'BYOL' });
    expect(started.Tags).toEqual([{ Key: 'vmie:execution', Value: 'exec-1' }]);
    expect(seen.map((s) => s.status)).toEqual(Array(8).fill('active'));
    expect(seen.map((s) => s.message)).toEqual(['pending', 'validating', 'validated', 'converting', 'converting', 'converting', 'updating', 'booting']);
    const progress = seen.map((s) => s.progress!);
    expect(progress).toEqual([...progress].sort((a, b) => a - b));
    expect(progress[3]).toBeLessThan(progress[4]);
    expect(progress[4]).toBeLessThan(progress[5]);
    expect(done).toMatchObject({ Status: 'completed', Platform: 'Linux', Architecture: 'x86_64', LicenseType: 'BYOL' });
    expect(done.Progress).toBeUndefined();
    expect(done.ImageId).toMatch(/^ami-[0-9a-f]{17}$/);
    expect(done.SnapshotDetails).toEqual([
      expect.objectContaining({
        DeviceName: '/dev/sda1',
        DiskImageSize: rawSize,
        Format: 'RAW',
        SnapshotId: expect.stringMatching(/^snap-[0-9a-f]{17}$/),
        Status: 'completed',
        UserBucket: { S3Bucket: IMAGES, S3Key: 'disks/sample.raw' },
      }),
    ]);
    const images = await sim.client.send(new DescribeImagesCommand({ ImageIds: [done.ImageId!] }));
    expect(images.Images![0]).toMatchObject({
      ImageId: done.ImageId,
      Name: started.ImportTaskId,
      State: 'available',
      RootDeviceName: '/dev/sda1',
      BlockDeviceMappings: [{ DeviceName: '/dev/sda1', Ebs: { SnapshotId: done.SnapshotDetails![0].SnapshotId, VolumeSize: 1 } }],
    });
    const snaps = await sim.client.send(new DescribeSnapshotsCommand({ SnapshotIds: [done.SnapshotDetails![0].SnapshotId!] }));
    expect(snaps.Snapshots![0]).toMatchObject({ State: 'completed', VolumeSize: 1, Encrypted: false, OwnerId: '123456789012' });
    expect(sim.images().map((i) => i.ImageId)).toEqual([done.ImageId]);
    expect(sim.importImageTasks()).toHaveLength(1);
    const call = sim.calls.find((c) => c.action === 'ImportImage')!;
    expect(call.params).toMatchObject({
      'RoleName': 'vmie-service-role',
      'DiskContainer.1.Format': 'RAW',
      'DiskContainer.1.UserBucket.S3Bucket': IMAGES,
      'DiskContainer.1.UserBucket.S3Key': 'disks/sample.raw',
      'TagSpecification.1.ResourceType': 'import-image-task',
      'TagSpecification.1.Tag.1.Key': 'vmie:execution',
    });
  });

  test('the same ClientToken returns the same task; other parameters under it are refused', async () => {
    // GIVEN
    const sim = await start();
    // WHEN
    const a = await sim.client.send(rawImport('disks/sample.raw', { ClientToken: 'token-1' }));
    const b = await sim.client.send(rawImport('disks/sample.raw', { ClientToken: 'token-1' }));
    const other = await errorOf(sim.client.send(rawImport('disks/stream.vmdk', { ClientToken: 'token-1' })));
    const c = await sim.client.send(rawImport('disks/sample.raw', { ClientToken: 'token-2' }));
    // THEN
    expect(b.ImportTaskId).toBe(a.ImportTaskId);
    expect(c.ImportTaskId).not.toBe(a.ImportTaskId);
    expect(other.name).toBe('IdempotentParameterMismatch');
    expect(sim.importImageTasks().map((t) => t.ImportTaskId)).toEqual([a.ImportTaskId, c.ImportTaskId]);
  });

  test.each([
    ['LicenseType with UsageOperation', { LicenseType: 'BYOL', UsageOperation: 'RunInstances' }, 'InvalidParameterCombination'],
    ['UEFI with encryption', { LicenseType: undefined, BootMode: 'uefi', Encrypted: true }, 'InvalidParameter'],
    ['UEFI with a license configuration', { BootMode: 'uefi', LicenseSpecifications: [{ LicenseConfigurationArn: 'arn:aws:license-manager:us-east-1:123456789012:license-configuration:lic-1' }] }, 'InvalidParameter'],
    ['uefi-preferred', { BootMode: 'uefi-preferred' }, 'InvalidParameterValue'],
    ['arm64 without UEFI', { Architecture: 'arm64' }, 'InvalidParameterCombination'],
    ['a KMS key without encryption', { KmsKeyId: 'alias/mine' }, 'InvalidParameterCombination'],
    ['Linux with the AWS license', { LicenseType: 'AWS', Platform: 'Linux' }, 'InvalidParameterCombination'],
    ['an unknown usage operation', { LicenseType: undefined, UsageOperation: 'RunInstances:9999' }, 'InvalidParameterValue'],
    ['an unknown format', { DiskContainers: [{ Format: 'QCOW2', UserBucket: { S3Bucket: IMAGES, S3Key: 'disks/sample.raw' } }] }, 'InvalidParameterValue'],
    [
      'an OVA among other disks',
      {
        DiskContainers: [
          { Format: 'OVA', UserBucket: { S3Bucket: IMAGES, S3Key: 'a.ova' } },
          { Format: 'RAW', UserBucket: { S3Bucket: IMAGES, S3Key: 'disks/sample.raw' } },
        ],
      },
      'InvalidParameter',
    ],
    ['no disk container', { DiskContainers: [] }, 'MissingParameter'],
    ['a disk container with two sources', { DiskContainers: [{ Format: 'RAW', Url: 's3://images/x', UserBucket: { S3Bucket: IMAGES, S3Key: 'x' } }] }, 'InvalidParameter'],
    ['a tag for another resource type', { TagSpecifications: [{ ResourceType: 'image', Tags: [{ Key: 'a', Value: 'b' }] }] }, 'InvalidParameterValue'],
  ] as Array<[string, Partial<ImportImageCommandInput>, string]>)('%s is refused with %#', async (_what, extra, code) => {
    // GIVEN
    const sim = await start();
    // WHEN
    const err = await errorOf(sim.client.send(rawImport('disks/sample.raw', extra)));
    // THEN
    expect(err.name).toBe(code);
    expect(err.status).toBe(400);
    expect(sim.importImageTasks()).toEqual([]);
  });

  test('DryRun answers DryRunOperation and starts nothing', async () => {
    // GIVEN
    const sim = await start();
    // WHEN
    const err = await errorOf(sim.client.send(rawImport('disks/sample.raw', { DryRun: true })));
    // THEN
    expect(err.name).toBe('DryRunOperation');
    expect(sim.importImageTasks()).toEqual([]);
  });

  test('an object the role cannot read ends the task deleted with the 403 message when validation ends', async () => {
    // GIVEN
    const sim = await start();
    const { ImportTaskId } = await sim.client.send(rawImport('disks/missing.raw'));
    // WHEN
    sim.clock.advance(5 * MINUTE);
    const during = await describeImport(sim, ImportTaskId!);
    sim.clock.advance(1 * MINUTE);
    const after = await describeImport(sim, ImportTaskId!);
    sim.clock.advance(60 * MINUTE);
    const later = await describeImport(sim, ImportTaskId!);
    // THEN
    expect(during).toMatchObject({ Status: 'active', StatusMessage: 'validating' });
    expect(after).toMatchObject({ Status: 'deleted', StatusMessage: ACCESS_DENIED_MESSAGE });
    expect(after.ImageId).toBeUndefined();
    expect(later.Status).toBe('deleted');
    expect(sim.images()).toEqual([]);
  });

  test("with the engine's inspection, a VMDK that is not stream-optimized fails with the service's message and a stream-optimized one completes", async () => {
    // GIVEN
    const sim = await start({ inspect: engineInspect(s3.client) });
    const vmdk = (key: string) => rawImport(key, { DiskContainers: [{ Format: 'VMDK', UserBucket: { S3Bucket: IMAGES, S3Key: key } }] });
    // WHEN
    const bad = await sim.client.send(vmdk('disks/sparse.vmdk'));
    const good = await sim.client.send(vmdk('disks/stream.vmdk'));
    sim.clock.advance(40 * MINUTE);
    const ids = [bad.ImportTaskId!, good.ImportTaskId!];
    const [badTask, goodTask] = (await sim.client.send(new DescribeImportImageTasksCommand({ ImportTaskIds: ids })))
      .ImportImageTasks!;
    // THEN
    expect(badTask).toMatchObject({ Status: 'deleted', StatusMessage: 'ClientError: Disk validation failed [Unsupported VMDK File Format]' });
    expect(goodTask).toMatchObject({ Status: 'completed', Platform: 'Linux' });
    expect(goodTask.SnapshotDetails![0].DiskImageSize).toBe(fs.statSync(streamVmdk).size);
    expect(sim.snapshots()).toHaveLength(1);
  });

  test('a disk declared in another format than its content fails validation with the engine', async () => {
    // GIVEN
    const sim = await start({ inspect: engineInspect(s3.client) });
    // WHEN
    const { ImportTaskId } = await sim.client.send(
      rawImport('disks/stream.vmdk', { DiskContainers: [{ Format: 'VHD', UserBucket: { S3Bucket: IMAGES, S3Key: 'disks/stream.vmdk' } }] }),
    );
    sim.clock.advance(40 * MINUTE);
    // THEN
    expect(await describeImport(sim, ImportTaskId!)).toMatchObject({
      Status: 'deleted',
      StatusMessage: 'ClientError: Disk validation failed [Unsupported specified file format]',
    });
  });

  test('more than 21 disks fail the task with Too many volumes', async () => {
    // GIVEN
    const sim = await start();
    const disks = Array.from({ length: 22 }, () => ({ Format: 'RAW', UserBucket: { S3Bucket: IMAGES, S3Key: 'disks/sample.raw' } }));
    // WHEN
    const { ImportTaskId } = await sim.client.send(rawImport('x', { DiskContainers: disks }));
    sim.clock.advance(40 * MINUTE);
    // THEN
    expect(await describeImport(sim, ImportTaskId!)).toMatchObject({ Status: 'deleted', StatusMessage: 'ClientError: Too many volumes' });
  });

  test('describe filters by task-state, tag:<key> and tag-key, and CreateTags tags a task', async () => {
    // GIVEN
    const sim = await start();
    const tagged = (value: string) => ({ TagSpecifications: [{ ResourceType: 'import-image-task' as const, Tags: [{ Key: 'vmie:execution', Value: value }] }] });
    const a = await sim.client.send(rawImport('disks/sample.raw', tagged('exec-a')));
    const b = await sim.client.send(rawImport('disks/missing.raw', tagged('exec-b')));
    const c = await sim.client.send(rawImport('disks/sample.raw'));
    sim.clock.advance(7 * MINUTE);
    await sim.client.send(new CreateTagsCommand({ Resources: [c.ImportTaskId!], Tags: [{ Key: 'owner', Value: 'team-x' }] }));
    // WHEN
    const ids = async (Filters: Array<{ Name: string; Values: string[] }>) =>
      (await sim.client.send(new DescribeImportImageTasksCommand({ Filters }))).ImportImageTasks!.map((t) => t.ImportTaskId);
    // THEN
    expect(await ids([{ Name: 'task-state', Values: ['active'] }])).toEqual([a.ImportTaskId, c.ImportTaskId]);
    expect(await ids([{ Name: 'task-state', Values: ['deleted'] }])).toEqual([b.ImportTaskId]);
    expect(await ids([{ Name: 'tag:vmie:execution', Values: ['exec-b'] }])).toEqual([b.ImportTaskId]);
    expect(await ids([{ Name: 'tag:vmie:execution', Values: ['exec-*'] }])).toEqual([a.ImportTaskId, b.ImportTaskId]);
    expect(await ids([{ Name: 'tag-key', Values: ['owner'] }])).toEqual([c.ImportTaskId]);
    expect((await errorOf(ids([{ Name: 'colour', Values: ['red'] }]))).name).toBe('InvalidParameterValue');
    expect((await errorOf(sim.client.send(new DescribeImportImageTasksCommand({ ImportTaskIds: ['import-ami-0123456789abcdef0'] })))).name).toBe(
      'InvalidConversionTaskId',
    );
  });

  test('cancel: deleting at once, deleted with the cancel message a minute later, still listed; a second cancel is refused', async () => {
    // GIVEN
    const sim = await start();
    const { ImportTaskId } = await sim.client.send(rawImport());
    sim.clock.advance(10 * MINUTE);
    // WHEN
    const cancel = await sim.client.send(new CancelImportTaskCommand({ ImportTaskId, CancelReason: 'workflow aborted' }));
    const deleting = await describeImport(sim, ImportTaskId!);
    sim.clock.advance(MINUTE);
    const deleted = await describeImport(sim, ImportTaskId!);
    const again = await errorOf(sim.client.send(new CancelImportTaskCommand({ ImportTaskId })));
    sim.clock.advance(60 * MINUTE);
    // THEN
    expect(cancel).toMatchObject({ ImportTaskId, PreviousState: 'active', State: 'deleting' });
    expect(deleting.Status).toBe('deleting');
    expect(deleted).toMatchObject({ Status: 'deleted', StatusMessage: CANCELED_MESSAGE });
    expect(again.name).toBe('IncorrectState');
    expect(sim.importImageTasks().map((t) => t.Status)).toEqual(['deleted']);
    expect(sim.images()).toEqual([]);
  });

  test('ended tasks stay listed for 7 days after they end', async () => {
    // GIVEN
    const sim = await start();
    const { ImportTaskId } = await sim.client.send(rawImport());
    sim.clock.advance(40 * MINUTE);
    // WHEN
    sim.clock.advance(7 * 24 * 60 * MINUTE);
    const week = await sim.client.send(new DescribeImportImageTasksCommand({}));
    sim.clock.advance(1);
    const later = await sim.client.send(new DescribeImportImageTasksCommand({}));
    const byId = await errorOf(sim.client.send(new DescribeImportImageTasksCommand({ ImportTaskIds: [ImportTaskId!] })));
    // THEN
    expect(week.ImportImageTasks!.map((t) => [t.ImportTaskId, t.Status])).toEqual([[ImportTaskId, 'completed']]);
    expect(later.ImportImageTasks).toEqual([]);
    expect(byId.name).toBe('InvalidConversionTaskId');
  });

  test('property: under any sequence of clock advances, messages follow the documented order and progress never falls', async () => {
    // GIVEN
    const sim = await start();
    const order = ['pending', 'validating', 'validated', 'converting', 'updating', 'booting', 'completed'];
    // WHEN / THEN
    await fc.assert(
      fc.asyncProperty(fc.array(fc.integer({ min: 0, max: 12 * MINUTE }), { minLength: 1, maxLength: 12 }), async (steps) => {
        const { ImportTaskId } = await sim.client.send(rawImport());
        let rank = 0;
        let progress = 0;
        for (const step of [...steps, 40 * MINUTE]) {
          sim.clock.advance(step);
          const t = await describeImport(sim, ImportTaskId!);
          const now = order.indexOf(t.Status === 'completed' ? 'completed' : t.StatusMessage!);
          expect(now).toBeGreaterThanOrEqual(rank);
          rank = now;
          if (t.Status === 'active') {
            expect(Number(t.Progress)).toBeGreaterThanOrEqual(progress);
            progress = Number(t.Progress);
          }
        }
        expect(rank).toBe(order.length - 1);
      }),
      { numRuns: 25 },
    );
  });
});

describe('scripted failures', () => {
  test('failTask ends the next task deleted at the end of validation, or after afterMs; with a key, only the task importing it', async () => {
    // GIVEN
    const sim = await start();
    sim.failTask('ClientError: Unknown OS / Missing OS files');
    sim.failTask('ClientError: FirstBootFailure', { afterMs: 33 * MINUTE });
    sim.failTask('ClientError: No bootable partition found', { key: 'disks/stream.vmdk' });
    const first = await sim.client.send(rawImport());
    const second = await sim.client.send(rawImport());
    const untouched = await sim.client.send(rawImport());
    const keyed = await sim.client.send(rawImport('disks/stream.vmdk', { DiskContainers: [{ Format: 'VMDK', UserBucket: { S3Bucket: IMAGES, S3Key: 'disks/stream.vmdk' } }] }));
    // WHEN
    sim.clock.advance(6 * MINUTE);
    const at6 = await Promise.all([first, second, untouched, keyed].map((t) => describeImport(sim, t.ImportTaskId!)));
    sim.clock.advance(27 * MINUTE);
    const at33 = await describeImport(sim, second.ImportTaskId!);
    sim.clock.advance(7 * MINUTE);
    const at40 = await describeImport(sim, untouched.ImportTaskId!);
    // THEN
    expect(at6.map((t) => [t.Status, t.StatusMessage])).toEqual([
      ['deleted', 'ClientError: Unknown OS / Missing OS files'],
      ['active', 'validated'],
      ['active', 'validated'],
      ['deleted', 'ClientError: No bootable partition found'],
    ]);
    expect(at33).toMatchObject({ Status: 'deleted', StatusMessage: 'ClientError: FirstBootFailure' });
    expect(at40.Status).toBe('completed');
  });

  test('failNext answers the scripted error the given number of times, then the action works; every call is recorded', async () => {
    // GIVEN
    const sim = await start();
    const client = clientFor(sim);
    sim.failNext('ImportImage', { code: 'InvalidParameter', message: 'The service role vmie-service-role does not exist or does not have sufficient permissions' }, 2);
    sim.failNext('DescribeImages', { code: 'RequestLimitExceeded', message: 'Request limit exceeded.' });
    // WHEN
    const e1 = await errorOf(client.send(rawImport()));
    const e2 = await errorOf(client.send(rawImport()));
    const ok = await client.send(rawImport());
    const throttled = await errorOf(client.send(new DescribeImagesCommand({})));
    const fine = await client.send(new DescribeImagesCommand({}));
    // THEN
    expect([e1.name, e2.name]).toEqual(['InvalidParameter', 'InvalidParameter']);
    expect(e1.message).toContain('does not have sufficient permissions');
    expect(e1.status).toBe(400);
    expect(throttled).toMatchObject({ name: 'RequestLimitExceeded', status: 503 });
    expect(ok.ImportTaskId).toBeDefined();
    expect(fine.Images).toEqual([]);
    expect(sim.calls.map((c) => c.action)).toEqual(['ImportImage', 'ImportImage', 'ImportImage', 'DescribeImages', 'DescribeImages']);
    expect(sim.importImageTasks()).toHaveLength(1);
    client.destroy();
  });
});

describe('limits', () => {
  test('beyond maxActiveImportTasks ImportImage and ImportSnapshot answer ResourceLimitExceeded until a task ends', async () => {
    // GIVEN
    const sim = await start({ maxActiveImportTasks: 2 });
    await sim.client.send(rawImport());
    const second = await sim.client.send(
      new ImportSnapshotCommand({ DiskContainer: { Format: 'RAW', UserBucket: { S3Bucket: IMAGES, S3Key: 'disks/sample.raw' } } }),
    );
    // WHEN
    const full = await errorOf(sim.client.send(rawImport()));
    const fullSnap = await errorOf(
      sim.client.send(new ImportSnapshotCommand({ DiskContainer: { Format: 'RAW', UserBucket: { S3Bucket: IMAGES, S3Key: 'disks/sample.raw' } } })),
    );
    await sim.client.send(new CancelImportTaskCommand({ ImportTaskId: second.ImportTaskId }));
    const room = await sim.client.send(rawImport());
    // THEN
    expect(full.name).toBe('ResourceLimitExceeded');
    expect(full.message).toContain('The limit is 2');
    expect(fullSnap.name).toBe('ResourceLimitExceeded');
    expect(room.ImportTaskId).toBeDefined();
  });
});

describe('ImportSnapshot and RegisterImage', () => {
  test('a snapshot import completes with a snapshot that RegisterImage turns into an AMI', async () => {
    // GIVEN
    const sim = await start({ inspect: engineInspect(s3.client) });
    const started = await sim.client.send(
      new ImportSnapshotCommand({
        Description: 'root disk',
        ClientToken: 'snap-token',
        DiskContainer: { Format: 'VMDK', UserBucket: { S3Bucket: IMAGES, S3Key: 'disks/stream.vmdk' } },
        TagSpecifications: [{ ResourceType: 'import-snapshot-task', Tags: [{ Key: 'k', Value: 'v' }] }],
      }),
    );
    const again = await sim.client.send(
      new ImportSnapshotCommand({
        Description: 'root disk',
        ClientToken: 'snap-token',
        DiskContainer: { Format: 'VMDK', UserBucket: { S3Bucket: IMAGES, S3Key: 'disks/stream.vmdk' } },
        TagSpecifications: [{ ResourceType: 'import-snapshot-task', Tags: [{ Key: 'k', Value: 'v' }] }],
      }),
    );
    // WHEN
    const messages: Array<string | undefined> = [];
    for (const step of [1, 3, 10]) {
      sim.clock.advance(step * MINUTE);
      const t = (await sim.client.send(new DescribeImportSnapshotTasksCommand({ ImportTaskIds: [started.ImportTaskId!] }))).ImportSnapshotTasks![0];
      messages.push(t.SnapshotTaskDetail!.StatusMessage);
    }
    sim.clock.advance(30 * MINUTE);
    const done = (await sim.client.send(new DescribeImportSnapshotTasksCommand({ Filters: [{ Name: 'tag:k', Values: ['v'] }] }))).ImportSnapshotTasks![0];
    const snapshotId = done.SnapshotTaskDetail!.SnapshotId!;
    const registered = await sim.client.send(
      new RegisterImageCommand({
        Name: 'imported-root',
        Architecture: 'x86_64',
        BootMode: 'legacy-bios',
        EnaSupport: true,
        VirtualizationType: 'hvm',
        RootDeviceName: '/dev/xvda',
        BlockDeviceMappings: [{ DeviceName: '/dev/xvda', Ebs: { SnapshotId: snapshotId, VolumeType: 'gp3', DeleteOnTermination: true } }],
        TagSpecifications: [{ ResourceType: 'image', Tags: [{ Key: 'Name', Value: 'imported-root' }] }],
      }),
    );
    const duplicate = await errorOf(
      sim.client.send(new RegisterImageCommand({ Name: 'imported-root', BlockDeviceMappings: [{ DeviceName: '/dev/xvda', Ebs: { SnapshotId: snapshotId } }] })),
    );
    const unknown = await errorOf(
      sim.client.send(new RegisterImageCommand({ Name: 'other', BlockDeviceMappings: [{ DeviceName: '/dev/xvda', Ebs: { SnapshotId: 'snap-0123456789abcdef0' } }] })),
    );
    const small = await errorOf(
      sim.client.send(new RegisterImageCommand({ Name: 'small', BlockDeviceMappings: [{ DeviceName: '/dev/xvda', Ebs: { SnapshotId: snapshotId, VolumeSize: 0 } }] })),
    );
    // THEN
    expect(again.ImportTaskId).toBe(started.ImportTaskId);
    expect(started.ImportTaskId).toMatch(/^import-snap-[0-9a-f]{17}$/);
    expect(started.SnapshotTaskDetail).toMatchObject({ Status: 'active', StatusMessage: 'pending', Format: 'VMDK', DiskImageSize: 0 });
    expect(messages).toEqual(['pending', 'validating', 'downloading/converting']);
    expect(done.SnapshotTaskDetail).toMatchObject({ Status: 'completed', DiskImageSize: fs.statSync(streamVmdk).size });
    expect(snapshotId).toMatch(/^snap-/);
    const image = (await sim.client.send(new DescribeImagesCommand({ Owners: ['self'], Filters: [{ Name: 'name', Values: ['imported-*'] }] }))).Images!;
    expect(image).toEqual([
      expect.objectContaining({
        ImageId: registered.ImageId,
        BootMode: 'legacy-bios',
        EnaSupport: true,
        VirtualizationType: 'hvm',
        Tags: [{ Key: 'Name', Value: 'imported-root' }],
        BlockDeviceMappings: [expect.objectContaining({ DeviceName: '/dev/xvda', Ebs: expect.objectContaining({ SnapshotId: snapshotId, VolumeType: 'gp3' }) })],
      }),
    ]);
    expect(duplicate.name).toBe('InvalidAMIName.Duplicate');
    expect(unknown.name).toBe('InvalidSnapshot.NotFound');
    expect(small.name).toBe('InvalidBlockDeviceMapping');
    expect(sim.importSnapshotTasks()).toHaveLength(1);
  });

  test('ImportSnapshot refuses an OVA, and a snapshot import is not failed by boot findings', async () => {
    // GIVEN
    const sim = await start({ inspect: engineInspect(s3.client) });
    const blank = path.join(tmp.dir, 'data.raw');
    fs.writeFileSync(blank, Buffer.alloc(4 * 1024 * 1024, 7));
    await s3.upload(IMAGES, 'disks/data.raw', blank);
    // WHEN
    const ova = await errorOf(sim.client.send(new ImportSnapshotCommand({ DiskContainer: { Format: 'OVA', UserBucket: { S3Bucket: IMAGES, S3Key: 'x.ova' } } })));
    const snap = await sim.client.send(new ImportSnapshotCommand({ DiskContainer: { Format: 'RAW', UserBucket: { S3Bucket: IMAGES, S3Key: 'disks/data.raw' } } }));
    const image = await sim.client.send(rawImport('disks/data.raw'));
    sim.clock.advance(40 * MINUTE);
    await sim.settle();
    // THEN
    expect(ova.name).toBe('InvalidParameterValue');
    expect(sim.importSnapshotTasks().find((t) => t.ImportTaskId === snap.ImportTaskId)!.SnapshotTaskDetail!.Status).toBe('completed');
    expect(sim.importImageTasks().find((t) => t.ImportTaskId === image.ImportTaskId)).toMatchObject({
      Status: 'deleted',
      StatusMessage: 'ClientError: No valid partition. Not a valid volume.',
    });
  });
});

describe('images and snapshots', () => {
  test('CopyImage makes a new image in the target Region, records its source, is idempotent, and copies tags on request', async () => {
    // GIVEN
    const sim = await start();
    const source = sim.addImage({ rawFile: raw, name: 'golden' });
    await sim.client.send(new CreateTagsCommand({ Resources: [source], Tags: [{ Key: 'team', Value: 'platform' }] }));
    const west = clientFor(sim, 'eu-west-1');
    const copy = () =>
      west.send(new CopyImageCommand({ SourceImageId: source, SourceRegion: 'us-east-1', Name: 'golden-copy', ClientToken: 'copy-1', CopyImageTags: true }));
    // WHEN
    const first = await copy();
    const second = await copy();
    const inWest = (await west.send(new DescribeImagesCommand({ ImageIds: [first.ImageId!] }))).Images![0];
    const inEast = await errorOf(sim.client.send(new DescribeImagesCommand({ ImageIds: [first.ImageId!] })));
    const missing = await errorOf(west.send(new CopyImageCommand({ SourceImageId: 'ami-0123456789abcdef0', SourceRegion: 'us-east-1', Name: 'x-copy' })));
    // THEN
    expect(second.ImageId).toBe(first.ImageId);
    expect(first.ImageId).not.toBe(source);
    expect(inWest).toMatchObject({ Name: 'golden-copy', State: 'available', SourceImageId: source, SourceImageRegion: 'us-east-1', Tags: [{ Key: 'team', Value: 'platform' }] });
    expect(inEast.name).toBe('InvalidAMIID.NotFound');
    expect(missing.name).toBe('InvalidAMIID.NotFound');
    const images = sim.images();
    expect(images.map((i) => [i.ImageId, i.Region])).toEqual([
      [source, 'us-east-1'],
      [first.ImageId, 'eu-west-1'],
    ]);
    expect(sim.snapshots().map((s) => s.Region)).toEqual(['us-east-1', 'eu-west-1']);
    const copyCall = sim.calls.find((c) => c.action === 'CopyImage')!;
    expect(copyCall.params).toMatchObject({ SourceRegion: 'us-east-1', SourceImageId: source });
    west.destroy();
  });

  test('a copied image stays pending for copyDurationMs', async () => {
    // GIVEN
    const sim = await start({ copyDurationMs: 5 * MINUTE });
    const source = sim.addImage({ rawFile: raw });
    const { ImageId } = await sim.client.send(new CopyImageCommand({ SourceImageId: source, SourceRegion: 'us-east-1', Name: 'later' }));
    // WHEN
    const before = (await sim.client.send(new DescribeImagesCommand({ ImageIds: [ImageId!] }))).Images![0].State;
    sim.clock.advance(5 * MINUTE);
    const after = (await sim.client.send(new DescribeImagesCommand({ ImageIds: [ImageId!] }))).Images![0].State;
    // THEN
    expect([before, after]).toEqual(['pending', 'available']);
  });

  test('ModifyImageAttribute adds users, organizations and OUs; ModifySnapshotAttribute adds createVolumePermission', async () => {
    // GIVEN
    const sim = await start();
    const image = sim.addImage({ rawFile: raw });
    const snapshotId = sim.images()[0].BlockDeviceMappings![0].Ebs!.SnapshotId!;
    const org = 'arn:aws:organizations::111111111111:organization/o-abcdef1234';
    const ou = 'arn:aws:organizations::111111111111:ou/o-abcdef1234/ou-ab12-cdef3456';
    // WHEN
    await sim.client.send(
      new ModifyImageAttributeCommand({
        ImageId: image,
        LaunchPermission: { Add: [{ UserId: '210987654321' }, { OrganizationArn: org }, { OrganizationalUnitArn: ou }] },
      }),
    );
    await sim.client.send(new ModifyImageAttributeCommand({ ImageId: image, Attribute: 'launchPermission', OperationType: 'add', UserIds: ['333333333333'] }));
    await sim.client.send(
      new ModifySnapshotAttributeCommand({ SnapshotId: snapshotId, Attribute: 'createVolumePermission', CreateVolumePermission: { Add: [{ UserId: '210987654321' }] } }),
    );
    const badUser = await errorOf(sim.client.send(new ModifyImageAttributeCommand({ ImageId: image, LaunchPermission: { Add: [{ UserId: 'someone' }] } })));
    const attribute = await sim.client.send(new DescribeImageAttributeCommand({ ImageId: image, Attribute: 'launchPermission' }));
    const snapAttribute = await sim.client.send(new DescribeSnapshotAttributeCommand({ SnapshotId: snapshotId, Attribute: 'createVolumePermission' }));
    // THEN
    const expected = [{ UserId: '210987654321' }, { OrganizationArn: org }, { OrganizationalUnitArn: ou }, { UserId: '333333333333' }];
    expect(sim.images()[0].LaunchPermissions).toEqual(expected);
    expect(attribute.LaunchPermissions).toEqual(expected);
    expect(sim.snapshots()[0].CreateVolumePermissions).toEqual([{ UserId: '210987654321' }]);
    expect(snapAttribute.CreateVolumePermissions).toEqual([{ UserId: '210987654321' }]);
    expect(badUser.name).toBe('InvalidAMIAttributeItemValue');
  });

  test('a snapshot encrypted with the default key cannot be shared; DeleteSnapshot refuses a snapshot in use; DeregisterImage frees it', async () => {
    // GIVEN
    const sim = await start();
    const image = sim.addImage({ rawFile: raw, encrypted: true });
    const snapshotId = sim.snapshots()[0].SnapshotId!;
    // WHEN
    const share = await errorOf(
      sim.client.send(new ModifySnapshotAttributeCommand({ SnapshotId: snapshotId, CreateVolumePermission: { Add: [{ UserId: '210987654321' }] } })),
    );
    const inUse = await errorOf(sim.client.send(new DeleteSnapshotCommand({ SnapshotId: snapshotId })));
    const dereg = await sim.client.send(new DeregisterImageCommand({ ImageId: image }));
    await sim.client.send(new DeleteSnapshotCommand({ SnapshotId: snapshotId }));
    // THEN
    expect(share.name).toBe('InvalidParameter');
    expect(inUse.name).toBe('InvalidSnapshot.InUse');
    expect(dereg.Return).toBe(true);
    expect(sim.images()).toEqual([]);
    expect(sim.snapshots()).toEqual([]);
  });
});

describe('exports', () => {
  test.each([
    ['VMDK', 'vmdk', 'streamOptimized'],
    ['VHD', 'vhd', 'dynamic'],
    ['RAW', 'raw', 'raw'],
  ] as const)('ExportImage %s writes a real %s file at the documented key when the task completes', async (format, ext, subformat) => {
    // GIVEN
    const sim = await start();
    const imageId = sim.addImage({ rawFile: raw });
    const started = await sim.client.send(
      new ExportImageCommand({
        ImageId: imageId,
        DiskImageFormat: format,
        RoleName: 'vmie-service-role',
        ClientToken: `export-${format}`,
        S3ExportLocation: { S3Bucket: EXPORTS, S3Prefix: 'vms/' },
        TagSpecifications: [{ ResourceType: 'export-image-task', Tags: [{ Key: 'vmie:execution', Value: 'exec-9' }] }],
      }),
    );
    const key = `vms/${started.ExportImageTaskId}.${ext}`;
    const repeated = await sim.client.send(
      new ExportImageCommand({
        ImageId: imageId,
        DiskImageFormat: format,
        RoleName: 'vmie-service-role',
        ClientToken: `export-${format}`,
        S3ExportLocation: { S3Bucket: EXPORTS, S3Prefix: 'vms/' },
        TagSpecifications: [{ ResourceType: 'export-image-task', Tags: [{ Key: 'vmie:execution', Value: 'exec-9' }] }],
      }),
    );
    // WHEN
    sim.clock.advance(10 * MINUTE);
    const describe = new DescribeExportImageTasksCommand({ ExportImageTaskIds: [started.ExportImageTaskId!] });
    const midway = (await sim.client.send(describe)).ExportImageTasks![0];
    const absent = await errorOf(s3.client.send(new HeadObjectCommand({ Bucket: EXPORTS, Key: key })));
    sim.clock.advance(10 * MINUTE);
    const done = (await sim.client.send(new DescribeExportImageTasksCommand({ Filters: [{ Name: 'tag:vmie:execution', Values: ['exec-9'] }] }))).ExportImageTasks![0];
    const file = await download(EXPORTS, key);
    const report = await inspectFile(file);
    // THEN
    expect(started.ExportImageTaskId).toMatch(/^export-ami-[0-9a-f]{17}$/);
    expect(repeated.ExportImageTaskId).toBe(started.ExportImageTaskId);
    expect(started).toMatchObject({ Status: 'active', DiskImageFormat: format, ImageId: imageId, RoleName: 'vmie-service-role', S3ExportLocation: { S3Bucket: EXPORTS, S3Prefix: 'vms/' } });
    expect(midway).toMatchObject({ Status: 'active', StatusMessage: 'converting' });
    expect(Number(midway.Progress)).toBeGreaterThan(10);
    expect(absent.name).toBe('NotFound');
    expect(done).toMatchObject({ ExportImageTaskId: started.ExportImageTaskId, Status: 'completed' });
    expect(sim.exportTasks()).toEqual([{ id: started.ExportImageTaskId, kind: 'image', state: 'completed', bucket: EXPORTS, key }]);
    expect(report.format).toBe(ext);
    expect(report.subformat).toBe(subformat);
    // The VHD writer rounds the disk up to whole MiB, as Azure and Hyper-V need.
    expect(report.virtualSize).toBe(format === 'VHD' ? vhdSize(rawSize) : rawSize);
    if (format === 'RAW') expect(sha256(file)).toBe(sha256(raw));
  });

  test.each([
    ['an encrypted snapshot', { encrypted: true }, /encrypted EBS snapshots/],
    ['a marketplace product code', { productCodes: ['abc123marketplace'] }, /is a marketplace AMI and is not exportable/],
    ['a licensed Windows image', { platform: 'windows' as const }, /Windows or SQL Server license/],
    ['a volume over 1 TiB', { sizeGiB: 1025 }, /larger than 1 TiB/],
  ])('an image with %s cannot be exported (NotExportable)', async (_what, extra, message) => {
    // GIVEN
    const sim = await start();
    const imageId = sim.addImage({ rawFile: raw, ...extra });
    // WHEN
    const err = await errorOf(
      sim.client.send(new ExportImageCommand({ ImageId: imageId, DiskImageFormat: 'VMDK', S3ExportLocation: { S3Bucket: EXPORTS } })),
    );
    // THEN
    expect(err.name).toBe('NotExportable');
    expect(err.message).toMatch(message);
    expect(sim.exportTasks()).toEqual([]);
  });

  test('a BYOL Windows image can be exported; a missing bucket cannot take it', async () => {
    // GIVEN
    const sim = await start();
    const imageId = sim.addImage({ rawFile: raw, platform: 'windows', usageOperation: 'RunInstances:0800' });
    // WHEN
    const ok = await sim.client.send(new ExportImageCommand({ ImageId: imageId, DiskImageFormat: 'VHD', S3ExportLocation: { S3Bucket: EXPORTS } }));
    const noBucket = await errorOf(sim.client.send(new ExportImageCommand({ ImageId: imageId, DiskImageFormat: 'VHD', S3ExportLocation: { S3Bucket: 'nowhere' } })));
    // THEN
    expect(ok.Status).toBe('active');
    expect(noBucket.name).toBe('InvalidParameter');
  });

  test('beyond maxActiveExportTasks both export calls answer ResourceLimitExceeded; a cancelled task frees its place', async () => {
    // GIVEN
    const sim = await start();
    const imageId = sim.addImage({ rawFile: raw });
    const instanceId = sim.addInstance({ volumes: [{ sizeGiB: 8, rawFile: raw }] });
    const exportImage = () => sim.client.send(new ExportImageCommand({ ImageId: imageId, DiskImageFormat: 'RAW', S3ExportLocation: { S3Bucket: EXPORTS } }));
    const exportInstance = () =>
      sim.client.send(
        new CreateInstanceExportTaskCommand({ InstanceId: instanceId, TargetEnvironment: 'vmware', ExportToS3Task: { DiskImageFormat: 'VMDK', S3Bucket: EXPORTS } }),
      );
    const first = await exportImage();
    for (let i = 0; i < 3; i++) await exportImage();
    await exportInstance();
    // WHEN
    const sixth = await errorOf(exportImage());
    const sixthInstance = await errorOf(exportInstance());
    await sim.client.send(new CancelExportTaskCommand({ ExportTaskId: first.ExportImageTaskId }));
    const room = await exportImage();
    // THEN
    expect(sixth.name).toBe('ResourceLimitExceeded');
    expect(sixth.message).toContain('The limit is 5');
    expect(sixthInstance.name).toBe('ResourceLimitExceeded');
    expect(room.Status).toBe('active');
    expect(sim.exportTasks().map((e) => e.state)).toEqual(['deleting', 'active', 'active', 'active', 'active', 'active']);
    sim.clock.advance(MINUTE);
    expect(sim.exportTasks()[0].state).toBe('deleted');
  });

  test('CreateInstanceExportTask to OVA writes a package the engine reads, at prefix/export-i-<id>.ova', async () => {
    // GIVEN
    const sim = await start();
    const instanceId = sim.addInstance({ volumes: [{ sizeGiB: 8, rawFile: raw }] });
    const { ExportTask } = await sim.client.send(
      new CreateInstanceExportTaskCommand({
        InstanceId: instanceId,
        TargetEnvironment: 'vmware',
        Description: 'to vSphere',
        ExportToS3Task: { ContainerFormat: 'ova', DiskImageFormat: 'VMDK', S3Bucket: EXPORTS, S3Prefix: 'vms/' },
        TagSpecifications: [{ ResourceType: 'export-instance-task', Tags: [{ Key: 'vmie:execution', Value: 'exec-3' }] }],
      }),
    );
    // WHEN
    sim.clock.advance(20 * MINUTE);
    const done = (await sim.client.send(new DescribeExportTasksCommand({ ExportTaskIds: [ExportTask!.ExportTaskId!] }))).ExportTasks![0];
    const report = await inspectFile(await download(EXPORTS, done.ExportToS3Task!.S3Key!));
    // THEN
    expect(ExportTask).toMatchObject({
      State: 'active',
      Description: 'to vSphere',
      InstanceExportDetails: { InstanceId: instanceId, TargetEnvironment: 'vmware' },
      Tags: [{ Key: 'vmie:execution', Value: 'exec-3' }],
    });
    expect(ExportTask!.ExportTaskId).toMatch(/^export-i-[0-9a-f]{17}$/);
    expect(done.State).toBe('completed');
    expect(done.ExportToS3Task).toEqual({ ContainerFormat: 'ova', DiskImageFormat: 'vmdk', S3Bucket: EXPORTS, S3Key: `vms/${ExportTask!.ExportTaskId}.ova` });
    expect(report.format).toBe('ova');
    expect(report.subformat).toBe('vmdk');
    expect(report.disks[0].subformat).toBe('streamOptimized');
    expect(report.virtualSize).toBe(rawSize);
    expect(report.importable).toBe(true);
  });

  test('CreateInstanceExportTask to VHD for microsoft writes a VHD; cancel goes cancelling then cancelled', async () => {
    // GIVEN
    const sim = await start();
    const instanceId = sim.addInstance({ volumes: [{ sizeGiB: 8, rawFile: raw }] });
    const task = () =>
      sim.client.send(
        new CreateInstanceExportTaskCommand({ InstanceId: instanceId, TargetEnvironment: 'microsoft', ExportToS3Task: { DiskImageFormat: 'VHD', S3Bucket: EXPORTS } }),
      );
    const a = (await task()).ExportTask!;
    const b = (await task()).ExportTask!;
    // WHEN
    await sim.client.send(new CancelExportTaskCommand({ ExportTaskId: b.ExportTaskId }));
    const cancelling = (await sim.client.send(new DescribeExportTasksCommand({ ExportTaskIds: [b.ExportTaskId!] }))).ExportTasks![0].State;
    sim.clock.advance(20 * MINUTE);
    const tasks = (await sim.client.send(new DescribeExportTasksCommand({}))).ExportTasks!;
    const report = await inspectFile(await download(EXPORTS, `${a.ExportTaskId}.vhd`));
    const late = await errorOf(sim.client.send(new CancelExportTaskCommand({ ExportTaskId: a.ExportTaskId })));
    // THEN
    expect(cancelling).toBe('cancelling');
    expect(tasks.map((t) => [t.ExportTaskId, t.State])).toEqual([
      [a.ExportTaskId, 'completed'],
      [b.ExportTaskId, 'cancelled'],
    ]);
    expect(report.format).toBe('vhd');
    expect(late.name).toBe('IncorrectState');
    const missing = await errorOf(s3.client.send(new HeadObjectCommand({ Bucket: EXPORTS, Key: `${b.ExportTaskId}.vhd` })));
    expect(missing.name).toBe('NotFound');
  });

  test.each([
    ['raw for citrix', { TargetEnvironment: 'citrix', DiskImageFormat: 'RAW' }, 'Unsupported'],
    ['vmdk for microsoft', { TargetEnvironment: 'microsoft', DiskImageFormat: 'VMDK' }, 'Unsupported'],
    ['an OVA of a VHD', { TargetEnvironment: 'citrix', DiskImageFormat: 'VHD', ContainerFormat: 'ova' }, 'Unsupported'],
  ] as const)('CreateInstanceExportTask refuses %s', async (_what, spec, code) => {
    // GIVEN
    const sim = await start();
    const instanceId = sim.addInstance({ volumes: [{ sizeGiB: 8, rawFile: raw }] });
    // WHEN
    const err = await errorOf(
      sim.client.send(
        new CreateInstanceExportTaskCommand({
          InstanceId: instanceId,
          TargetEnvironment: spec.TargetEnvironment,
          ExportToS3Task: { DiskImageFormat: spec.DiskImageFormat, ContainerFormat: 'ContainerFormat' in spec ? spec.ContainerFormat : undefined, S3Bucket: EXPORTS },
        }),
      ),
    );
    // THEN
    expect(err.name).toBe(code);
  });

  test('instances with several volumes, an encrypted volume, a volume over 1 TiB or a Windows license cannot be exported', async () => {
    // GIVEN
    const sim = await start();
    const ids = [
      sim.addInstance({ volumes: [{ sizeGiB: 8, rawFile: raw }, { sizeGiB: 8, rawFile: raw }] }),
      sim.addInstance({ volumes: [{ sizeGiB: 8, rawFile: raw, encrypted: true }] }),
      sim.addInstance({ volumes: [{ sizeGiB: 2048, rawFile: raw }] }),
      sim.addInstance({ volumes: [{ sizeGiB: 30, rawFile: raw }], platform: 'windows' }),
    ];
    // WHEN
    const errors = await Promise.all(
      ids.map((InstanceId) =>
        errorOf(
          sim.client.send(new CreateInstanceExportTaskCommand({ InstanceId, TargetEnvironment: 'vmware', ExportToS3Task: { DiskImageFormat: 'VMDK', S3Bucket: EXPORTS } })),
        ),
      ),
    );
    // THEN
    expect(errors.map((e) => e.name)).toEqual(['NotExportable', 'NotExportable', 'NotExportable', 'NotExportable']);
    expect(errors[0].message).toContain('2 volumes');
    expect(sim.exportTasks()).toEqual([]);
  });
});

describe('instances and volumes', () => {
  test('DescribeInstances and DescribeVolumes list the fixtures and filter them', async () => {
    // GIVEN
    const sim = await start();
    const a = sim.addInstance({ volumes: [{ sizeGiB: 8, rawFile: raw }] });
    const b = sim.addInstance({ instanceId: 'i-0123456789abcdef0', volumes: [{ sizeGiB: 30, rawFile: raw, encrypted: true }], platform: 'windows' });
    // WHEN
    const all = await sim.client.send(new DescribeInstancesCommand({}));
    const one = await sim.client.send(new DescribeInstancesCommand({ InstanceIds: [b] }));
    const vols = await sim.client.send(new DescribeVolumesCommand({ Filters: [{ Name: 'attachment.instance-id', Values: [b] }] }));
    const unknown = await errorOf(sim.client.send(new DescribeInstancesCommand({ InstanceIds: ['i-0fffffffffffffff0'] })));
    // THEN
    expect(all.Reservations!.flatMap((r) => r.Instances!.map((i) => i.InstanceId))).toEqual([a, b]);
    expect(one.Reservations![0].Instances![0]).toMatchObject({
      InstanceId: 'i-0123456789abcdef0',
      Platform: 'windows',
      State: { Name: 'stopped' },
      BlockDeviceMappings: [{ DeviceName: '/dev/xvda', Ebs: { VolumeId: vols.Volumes![0].VolumeId, Status: 'attached' } }],
    });
    expect(vols.Volumes).toEqual([
      expect.objectContaining({ Size: 30, Encrypted: true, State: 'in-use', Attachments: [expect.objectContaining({ InstanceId: b, Device: '/dev/xvda' })] }),
    ]);
    expect(unknown.name).toBe('InvalidInstanceID.NotFound');
  });
});

describe('Image Builder ImportVmImage', () => {
  test('returns an image build version ARN, records the import, is idempotent, and refuses an unknown task', async () => {
    // GIVEN
    const sim = await start();
    const { ImportTaskId } = await sim.client.send(rawImport());
    const ib = new ImagebuilderClient({ endpoint: sim.endpoint, region: 'us-east-1', maxAttempts: 1, credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' } });
    const request = { name: 'Imported VM', semanticVersion: '1.0.0', platform: 'Linux' as const, vmImportTaskId: ImportTaskId!, tags: { team: 'platform' }, clientToken: 'ib-1' };
    // WHEN
    const first = await ib.send(new ImportVmImageCommand(request));
    const again = await ib.send(new ImportVmImageCommand(request));
    const unknown = await errorOf(ib.send(new ImportVmImageCommand({ ...request, clientToken: 'ib-2', vmImportTaskId: 'import-ami-0123456789abcdef0' })));
    // THEN
    expect(first.imageArn).toBe('arn:aws:imagebuilder:us-east-1:123456789012:image/imported-vm/1.0.0/1');
    expect(first.clientToken).toBe('ib-1');
    expect(again.imageArn).toBe(first.imageArn);
    expect(unknown.name).toBe('InvalidParameterValueException');
    expect(sim.imageBuilderImports()).toEqual([
      expect.objectContaining({ arn: first.imageArn, name: 'Imported VM', platform: 'Linux', vmImportTaskId: ImportTaskId, tags: { team: 'platform' } }),
    ]);
    expect(sim.calls.filter((c) => c.action === 'ImportVmImage')[0].params).toMatchObject({ 'vmImportTaskId': ImportTaskId, 'semanticVersion': '1.0.0', 'tags.team': 'platform' });
    ib.destroy();
  });
});

describe('wire format', () => {
  test('clients built from env reach the simulator', async () => {
    // GIVEN
    const sim = await start({ region: 'eu-central-1' });
    sim.addImage({ rawFile: raw, name: 'from-env' });
    // WHEN
    const { ImportTaskId } = await sim.client.send(rawImport());
    const [images, vmImport] = await withEnv(sim.env, async () => {
      const client = new EC2Client({});
      const ib = new ImagebuilderClient({});
      try {
        return await Promise.all([
          client.send(new DescribeImagesCommand({ Owners: ['self'] })),
          ib.send(new ImportVmImageCommand({ name: 'from-env', semanticVersion: '0.0.1', platform: 'Linux', vmImportTaskId: ImportTaskId! })),
        ]);
      } finally {
        client.destroy();
        ib.destroy();
      }
    });
    // THEN
    expect(sim.env).toMatchObject({ AWS_ENDPOINT_URL_EC2: sim.endpoint, AWS_ENDPOINT_URL_IMAGEBUILDER: sim.endpoint, AWS_REGION: 'eu-central-1' });
    expect(images.Images!.map((i) => i.Name)).toEqual(['from-env']);
    expect(vmImport.imageArn).toBe('arn:aws:imagebuilder:eu-central-1:123456789012:image/from-env/0.0.1/1');
  });

  test('errors are EC2 Query error documents; unknown actions answer InvalidAction', async () => {
    // GIVEN
    const sim = await start();
    // WHEN
    const res = await post(sim.endpoint, 'Action=FlyToTheMoon&Version=2016-11-15');
    const ok = await post(sim.endpoint, 'Action=DescribeImages&Version=2016-11-15');
    // THEN
    expect(res.status).toBe(400);
    expect(res.body).toMatch(/^<\?xml[^>]*>\s*<Response><Errors><Error><Code>InvalidAction<\/Code><Message>[^<]+<\/Message><\/Error><\/Errors><RequestID>[0-9a-f-]+<\/RequestID><\/Response>$/);
    expect(ok.status).toBe(200);
    expect(ok.body).toContain(`<DescribeImagesResponse xmlns="${EC2_NAMESPACE}"><requestId>`);
  });

  test('property: any form body answers 200 or a well-formed client error, never an internal error', async () => {
    // GIVEN
    const sim = await start();
    sim.addImage({ rawFile: raw });
    const actions = [
      'ImportImage',
      'ImportSnapshot',
      'DescribeImportImageTasks',
      'DescribeImportSnapshotTasks',
      'CancelImportTask',
      'RegisterImage',
      'DescribeImages',
      'DescribeSnapshots',
      'CopyImage',
      'CreateTags',
      'ModifyImageAttribute',
      'ModifySnapshotAttribute',
      'ExportImage',
      'DescribeExportImageTasks',
      'CreateInstanceExportTask',
      'DescribeExportTasks',
      'CancelExportTask',
      'DescribeInstances',
      'DescribeVolumes',
    ];
    const keys = fc.constantFrom(
      'DiskContainer.1.Format',
      'DiskContainer.1.UserBucket.S3Bucket',
      'DiskContainer.1.UserBucket.S3Key',
      'DiskContainer.Format',
      'DiskContainer.Url',
      'ImportTaskId',
      'ImportTaskId.1',
      'Filter.1.Name',
      'Filter.1.Value.1',
      'Filters.1.Name',
      'Name',
      'ImageId',
      'ImageId.1',
      'SnapshotId',
      'BlockDeviceMapping.1.DeviceName',
      'BlockDeviceMapping.1.Ebs.SnapshotId',
      'BlockDeviceMapping.1.Ebs.VolumeSize',
      'SourceImageId',
      'SourceRegion',
      'ResourceId.1',
      'Tag.1.Key',
      'Tag.1.Value',
      'LaunchPermission.Add.1.UserId',
      'LaunchPermission.Add.1.Group',
      'DiskImageFormat',
      'S3ExportLocation.S3Bucket',
      'ExportToS3.DiskImageFormat',
      'ExportToS3.S3Bucket',
      'TargetEnvironment',
      'InstanceId',
      'ExportTaskId',
      'MaxResults',
      'NextToken',
      'Encrypted',
      'BootMode',
      'TagSpecification.1.ResourceType',
      'TagSpecification.1.Tag.1.Key',
    );
    const values = fc.oneof(
      fc.string({ maxLength: 12 }),
      fc.constantFrom('true', 'false', '0', '-1', '99999999999', 'RAW', 'VMDK', 'OVA', 'images', 'exports', 'disks/sample.raw', 'ami-0123456789abcdef0', 'uefi', 'vmware', 'task-state', 'image'),
      fc.constant(sim.images()[0].ImageId!),
    );
    const body = fc.tuple(fc.constantFrom(...actions), fc.dictionary(keys, values, { maxKeys: 8 }));
    // WHEN / THEN
    await fc.assert(
      fc.asyncProperty(body, async ([action, params]) => {
        const form = new URLSearchParams({ Action: action, Version: '2016-11-15', ...params }).toString();
        const res = await post(sim.endpoint, form);
        if (res.status === 200) {
          expect(res.body).toContain(`<${action}Response xmlns="${EC2_NAMESPACE}">`);
        } else {
          expect([400, 412]).toContain(res.status);
          expect(res.body).toMatch(/<Response><Errors><Error><Code>[A-Za-z.]+<\/Code><Message>/);
        }
      }),
      { numRuns: 300 },
    );
  });
});

/** Posts a raw form body to the simulator. */
function post(endpoint: string, form: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(`${endpoint}/`, { method: 'POST', headers: { 'Content-Type': 'application/x-www-form-urlencoded' } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
    });
    req.on('error', reject);
    req.end(form);
  });
}
