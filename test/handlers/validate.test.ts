import { handler, type ValidateEvent } from '../../lambda/handlers/validate';
import { qemuConvert, qemuInfo } from '../helpers/fixtures';
import { bootGptDisk, bootMbrDisk, bulkyMbrDisk, ova, zipOf } from '../helpers/inspect-fixtures';
import { startFaultProxy, startLocalS3, withEnv, type LocalS3 } from '../helpers/local-s3';

const BUCKET = 'import-bucket';
let s3: LocalS3;

const stream = (raw: string) => qemuConvert(raw, 'vmdk', ['subformat=streamOptimized']);

beforeAll(async () => {
  s3 = await startLocalS3([BUCKET]);
  await s3.upload(BUCKET, 'vms/web/disk1.vmdk', stream(bootMbrDisk()));
  await s3.upload(BUCKET, 'vms/web/disk2.vhdx', qemuConvert(bootGptDisk(), 'vhdx'));
  await s3.upload(BUCKET, 'vms/db/db.qcow2', qemuConvert(bootMbrDisk(), 'qcow2'));
  await s3.upload(BUCKET, 'vms/db/db.ova', ova('one-disk.ova', [{ name: 'disk1.vmdk', file: stream(bootMbrDisk()), capacity: qemuInfo(bootMbrDisk())['virtual-size'] }], { firmware: 'bios' }));
  await s3.upload(BUCKET, 'uploads/backup.zip', zipOf(bootMbrDisk()));
  await s3.upload(BUCKET, 'vms/big/big.qcow2', qemuConvert(bulkyMbrDisk(), 'qcow2'));
});

let logged: string[] = [];
beforeEach(() => {
  logged = [];
  jest.spyOn(console, 'log').mockImplementation((line: string) => void logged.push(line));
});

afterAll(async () => {
  await s3.close();
});

/** Runs the handler as Lambda would, with the SDK pointed at the local server by the environment. */
function invoke(event: ValidateEvent, endpoint = s3.endpoint) {
  return withEnv({ ...s3.env, AWS_ENDPOINT_URL_S3: endpoint }, () => handler(event));
}

describe('validate handler', () => {
  test('an importable image: the verdict, the Format and the whole report, in a few ranged GETs', async () => {
    // GIVEN: a proxy that records what the handler asks of S3
    const proxy = await startFaultProxy(s3.endpoint, () => ({ kind: 'pass' }));
    // WHEN
    const out = await invoke({ bucket: BUCKET, key: 'vms/web/disk1.vmdk' }, proxy.endpoint);
    // THEN
    expect(out).toMatchObject({
      importable: true,
      needsConversion: false,
      importFormat: 'VMDK',
      format: 'vmdk',
      virtualSize: qemuInfo(bootMbrDisk())['virtual-size'],
      bootMode: 'legacy-bios',
      findingCodes: [],
      objects: [{ bucket: BUCKET, key: 'vms/web/disk1.vmdk', etag: expect.stringMatching(/^"/) }],
    });
    expect(out.report).toMatchObject({ name: 'vms/web/disk1.vmdk', format: 'vmdk', subformat: 'streamOptimized', importable: true });
    expect(out.report.partitions.map((p) => p.filesystem)).toEqual(['ext4', 'unknown']);
    const gets = proxy.seen.filter((r) => r.method === 'GET');
    expect(proxy.seen.filter((r) => r.method === 'HEAD')).toHaveLength(1);
    expect(gets.length).toBe(out.report.requests);
    expect(gets.length).toBeLessThanOrEqual(24);
    // Every GET names both ends of its range: no suffix ranges.
    for (const g of gets) expect(g.range).toMatch(/^bytes=\d+-\d+$/);
    // One structured log line says what was found and what it cost.
    expect(logged.map((l) => JSON.parse(l))).toEqual([
      expect.objectContaining({ message: 'image inspected', objects: ['s3://import-bucket/vms/web/disk1.vmdk'], format: 'vmdk', importable: true, requests: out.report.requests }),
    ]);
    await proxy.close();
  });

  test('a 47 MiB image is inspected from its headers: a few ranged GETs, never the whole object', async () => {
    // GIVEN
    const proxy = await startFaultProxy(s3.endpoint, () => ({ kind: 'pass' }));
    // WHEN
    const out = await invoke({ bucket: BUCKET, key: 'vms/big/big.qcow2' }, proxy.endpoint);
    // THEN
    const size = out.objects[0].size;
    expect(size).toBeGreaterThan(40 * 1024 * 1024);
    expect(out).toMatchObject({ needsConversion: true, format: 'qcow2', virtualSize: qemuInfo(bulkyMbrDisk())['virtual-size'] });
    const gets = proxy.seen.filter((r) => r.method === 'GET');
    expect(gets.length).toBe(out.report.requests);
    expect(gets.length).toBeGreaterThan(1);
    expect(gets.length).toBeLessThanOrEqual(24);
    expect(out.report.bytesRead).toBeLessThanOrEqual(4 * 1024 * 1024);
    const ends = gets.map((g) => /^bytes=(\d+)-(\d+)$/.exec(g.range ?? '')).map((m) => [Number(m![1]), Number(m![2])]);
    expect(ends.every(([a, b]) => a <= b && b < size)).toBe(true);
    // The last 512 bytes were asked for with a range that names its start.
    expect(ends.some(([, b]) => b === size - 1)).toBe(true);
    await proxy.close();
  });

  test('an image that needs conversion returns needsConversion and the Format after conversion', async () => {
    // GIVEN / WHEN
    const out = await invoke({ bucket: BUCKET, key: 'vms/db/db.qcow2' });
    // THEN
    expect(out).toMatchObject({ importable: false, needsConversion: true, importFormat: 'VMDK', format: 'qcow2', findingCodes: ['FORMAT_NEEDS_CONVERSION'] });
  });

  test('an OVA is importable as OVA', async () => {
    // GIVEN / WHEN
    const out = await invoke({ bucket: BUCKET, key: 'vms/db/db.ova' });
    // THEN
    expect(out).toMatchObject({ importable: true, importFormat: 'OVA', format: 'ova', report: { ovf: { firmware: 'bios' } } });
  });

  test('several disk objects are one VM: boot disk first', async () => {
    // GIVEN / WHEN
    const out = await invoke({ disks: [{ bucket: BUCKET, key: 'vms/web/disk1.vmdk' }, { bucket: BUCKET, key: 'vms/web/disk2.vhdx' }] });
    // THEN
    expect(out).toMatchObject({ importable: true, format: 'vmdk', importFormat: 'VMDK', bootMode: 'legacy-bios' });
    expect(out.objects.map((o) => o.key)).toEqual(['vms/web/disk1.vmdk', 'vms/web/disk2.vhdx']);
    expect(out.report.disks.map((d) => [d.index, d.format, d.importFormat])).toEqual([
      [0, 'vmdk', 'VMDK'],
      [1, 'vhdx', 'VHDX'],
    ]);
  });

  test('an image that cannot be imported fails with UnsupportedImage, the findings and their remedies', async () => {
    // GIVEN / WHEN
    const failure = await invoke({ bucket: BUCKET, key: 'uploads/backup.zip' }).catch((e) => e);
    // THEN
    expect(failure).toBeInstanceOf(Error);
    expect(failure.name).toBe('UnsupportedImage');
    expect(failure.message).toContain('s3://import-bucket/uploads/backup.zip cannot be imported');
    expect(failure.message).toContain('[NOT_A_DISK]');
    expect(failure.message).toContain('Fix: Upload a disk image');
  });

  test('a missing object fails with ObjectNotFound naming it', async () => {
    // GIVEN / WHEN
    const failure = await invoke({ bucket: BUCKET, key: 'vms/none.vmdk' }).catch((e) => e);
    // THEN
    expect(failure.name).toBe('ObjectNotFound');
    expect(failure.message).toContain('s3://import-bucket/vms/none.vmdk');
  });

  test('an input without bucket or key fails with InvalidInput', async () => {
    // GIVEN / WHEN
    const noKey = await invoke({ bucket: BUCKET } as unknown as ValidateEvent).catch((e) => e);
    const noDisks = await invoke({ disks: [] }).catch((e) => e);
    // THEN
    expect(noKey.name).toBe('InvalidInput');
    expect(noDisks.name).toBe('InvalidInput');
  });
});
