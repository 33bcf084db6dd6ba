import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import * as fc from 'fast-check';
import { exampleApp } from './example-app';
import { makeSampleImage, matchesEventPattern, objectCreatedEvent, triggerPattern, writeSampleRawDisk, type DemoResult } from './main';
import { inspect, openDiskImage } from '../../lambda/disk/inspect';
import { BufferSource, FileSource } from '../../lambda/disk/source';
import { qemuInfo, run } from '../helpers/fixtures';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

let dir: string;

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmie-demo-test-'));
});

afterAll(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

const ROOT = path.join(__dirname, '..', '..');

/** Runs `ts-node test/demo/main.ts` as `npm run demo` does (after the bundle), in a process of its own. */
function runMain(env: Record<string, string>): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const tsNode = path.join(ROOT, 'node_modules', 'ts-node', 'dist', 'bin.js');
  const args = [tsNode, '--transpile-only', '--project', path.join(ROOT, 'test', 'tsconfig.json'), path.join(ROOT, 'test', 'demo', 'main.ts')];
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

describe('npm run demo', () => {
  test('synthesizes the example app, imports the sample image through the local workflow, and ends with an AMI id', async () => {
    // GIVEN a fresh output directory, and a file for the run's result
    const outdir = path.join(dir, 'cdk.out');
    const resultFile = path.join(dir, 'result.json');

    // WHEN the demo's main runs
    const { code, stdout, stderr } = await runMain({ VMIE_DEMO_OUTDIR: outdir, VMIE_DEMO_RESULT: resultFile });

    // THEN it exits cleanly, and the import succeeded with an AMI named and tagged with the example app's defaults
    expect({ code, stderr: stderr.split('\n').filter((l) => /demo failed|Error/.test(l)) }).toEqual({ code: 0, stderr: [] });
    const result: DemoResult = JSON.parse(fs.readFileSync(resultFile, 'utf8'));
    expect({ status: result.status, error: result.error, cause: result.cause }).toEqual({ status: 'SUCCEEDED' });
    expect(result.imageId).toMatch(/^ami-[0-9a-f]{8,17}$/);
    expect(result.output.imageId).toBe(result.imageId);
    expect(result.imageName).toMatch(/^sample-[0-9a-f]+$/);
    expect(result.ami).toMatchObject({ state: 'available', bootMode: 'legacy-bios' });
    expect(result.ami?.tags).toMatchObject({ Name: result.imageName, Team: 'platform', CostCenter: 'vm-migration' });
    // AND the gzipped image went through the conversion before the import started
    const states = result.statesEntered;
    expect(states.indexOf('Convert image')).toBeGreaterThan(states.indexOf('Validate image'));
    expect(states.indexOf('Start import')).toBeGreaterThan(states.indexOf('Convert image'));
    expect(states[states.length - 1]).toBe('Imported');
    // AND the success event names the same AMI
    expect(result.events).toEqual([expect.objectContaining({ source: 'vmie.import', detailType: 'VM Import Succeeded' })]);
    expect(result.events[0].detail).toMatchObject({ imageId: result.imageId, name: result.imageName, source: { key: result.sample.key } });
    // AND the check step reported a progress that grew while the import ran
    expect(result.progress.length).toBeGreaterThan(2);
    expect(result.progress).toEqual([...result.progress].sort((a, b) => a - b));
    expect(result.progress[result.progress.length - 1]).toBeLessThan(100);
    // AND one Lambda invocation per step, the check once per progress report and once more when done
    const steps = ['Read options', 'Validate image', 'Convert image', 'Start import', 'Finalize image', 'Tidy up'];
    for (const step of steps) expect(states.filter((s) => s === step)).toHaveLength(1);
    expect(result.lambdaInvocations).toBe(steps.length + result.progress.length + 1);
    expect(result.transitions).toBeGreaterThanOrEqual(states.length);
    // AND the simulated time covers the import, which took no real time to wait for
    expect(result.simulatedMs).toBeGreaterThanOrEqual(30 * 60_000);
    expect(result.realMs).toBeLessThan(result.simulatedMs / 10);

    // AND the output starts with the synthesized summary and ends with the AMI, the event and the totals
    const printed = stdout.replace(/\n$/, '').split('\n');
    expect(printed).toEqual(result.lines);
    expect(printed[0]).toMatch(/^Synthesized VmImportExportExample \(eu-west-1, account \d{12}\) to .*: \d+ resources$/);
    const amiLine = printed.findIndex((l) => l.startsWith(`AMI ${result.imageId} (${result.imageName})`));
    expect(amiLine).toBeGreaterThan(printed.findIndex((l) => /^\+\d\d:\d\d:\d\d {2}execution succeeded$/.test(l)));
    expect(printed.slice(amiLine).some((l) => l.includes(`"imageId": "${result.imageId}"`))).toBe(true);
    expect(printed[printed.length - 1]).toBe(
      `Simulated duration ${hms(result.simulatedMs)}, ${result.transitions} state transitions, ${result.lambdaInvocations} Lambda invocations, real time ${(result.realMs / 1000).toFixed(1)} s.`,
    );
    // AND the cloud assembly is in the output directory
    expect(fs.existsSync(path.join(outdir, 'manifest.json'))).toBe(true);
    expect(fs.existsSync(path.join(outdir, 'VmImportExportExample.template.json'))).toBe(true);
  }, 90_000);
});

describe('the sample image', () => {
  test('the raw disk built in JavaScript is judged importable: MBR, one active Linux partition, ext4 root', async () => {
    // GIVEN the sample's raw disk, 1 GiB, sparse
    const file = path.join(dir, 'raw-1g.img');
    const layout = await writeSampleRawDisk(file, GiB);

    // WHEN the engine inspects it
    const source = await FileSource.open(file);
    let report;
    try {
      report = await inspect(source);
    } finally {
      await source.close();
    }

    // THEN VM Import would take it as it is, booting with legacy BIOS from an ext4 root
    expect(report.findings.map((f) => f.code)).toEqual([]);
    expect(report).toMatchObject({ format: 'raw', virtualSize: GiB, importable: true, needsConversion: false, importFormat: 'RAW', bootMode: 'legacy-bios' });
    expect(report.partitions).toEqual([
      expect.objectContaining({ index: 1, start: layout.partitionStart * 512, size: layout.partitionSectors * 512, type: '0x83', bootable: true, filesystem: 'ext4', label: 'demo-root' }),
    ]);
    // AND only the written sectors hold data: the file is sparse
    expect(layout.written.reduce((n, e) => n + e.length, 0)).toBe(1536);
    expect(fs.statSync(file).blocks * 512).toBeLessThan(MiB);
  });

  test('the gzipped VHD holds the same disk: the project\'s VHD writer kept only the block with data, and qemu-img agrees', async () => {
    // GIVEN the sample upload, and its raw disk made the same way
    const sampleDir = fs.mkdtempSync(path.join(dir, 'sample-'));
    const sample = await makeSampleImage(sampleDir, 64 * MiB);
    const raw = path.join(sampleDir, 'raw.img');
    await writeSampleRawDisk(raw, 64 * MiB);

    // WHEN it is decompressed and read back
    const vhd = zlib.gunzipSync(fs.readFileSync(sample.file));
    const vhdFile = path.join(sampleDir, 'back.vhd');
    fs.writeFileSync(vhdFile, vhd);
    const image = await openDiskImage(new BufferSource('back.vhd', vhd));

    // THEN it is a dynamic VHD of the same virtual size, with one 2 MiB block and the same bytes
    expect({ format: image.format, subformat: image.subformat, virtualSize: image.virtualSize }).toEqual({ format: 'vhd', subformat: 'dynamic', virtualSize: 64 * MiB });
    const extents = [];
    for await (const e of image.extents()) extents.push(e);
    expect(extents).toEqual([{ offset: 0, length: 2 * MiB }]);
    expect(sample.vhdSize).toBe(vhd.length);
    expect(vhd.length).toBeLessThan(3 * MiB);
    const rawHead = fs.readFileSync(raw).subarray(0, 2 * MiB);
    expect((await image.read(0, 2 * MiB)).equals(rawHead)).toBe(true);
    // AND qemu-img reads the VHD as the same disk as the raw one (qemu sizes a VHD of an unknown
    // creator by its CHS geometry, a little under the footer's current size: the rest is zeros)
    const info = qemuInfo(vhdFile);
    expect(info.format).toBe('vpc');
    expect(info['virtual-size']).toBeGreaterThan(63 * MiB);
    expect(info['virtual-size']).toBeLessThanOrEqual(64 * MiB);
    expect(run('qemu-img', ['compare', '-f', 'raw', '-F', 'vpc', raw, vhdFile])).toMatch(/identical/);
  });
});

describe('the upload event', () => {
  test('the synthesized trigger rule matches the Object Created event of an image, and not of other objects', () => {
    // GIVEN the example app's template and its trigger rule's pattern
    const { app, stack } = exampleApp(path.join(dir, 'trigger.out'), { account: '123456789012', region: 'eu-west-1' });
    const template = app.synth().getStackByName(stack.stackName).template;
    const logicalId = (c: any) => stack.resolve(c.node.defaultChild.logicalId);
    const pattern = triggerPattern(template, logicalId(stack.vmie.importWorkflow.triggerRule!), { [logicalId(stack.vmie.importBucket)]: 'imports' });
    const event = (bucket: string, key: string) => objectCreatedEvent({ bucket, key, size: 1, etag: 'e', region: 'eu-west-1', account: '123456789012', time: new Date(0) });

    // WHEN events of uploads are matched
    // THEN images in the bucket match; other objects and other buckets do not
    expect(matchesEventPattern(pattern, event('imports', 'uploads/sample.vhd.gz'))).toBe(true);
    expect(matchesEventPattern(pattern, event('imports', 'vm.ova'))).toBe(true);
    expect(matchesEventPattern(pattern, event('imports', 'notes.txt'))).toBe(false);
    expect(matchesEventPattern(pattern, event('other', 'vm.ova'))).toBe(false);
    expect(matchesEventPattern(pattern, { ...event('imports', 'vm.ova'), 'detail-type': 'Object Deleted' })).toBe(false);
  });

  test('a wildcard prefix*suffix matches exactly the keys with that prefix and suffix', () => {
    // GIVEN any prefix, suffix and key, with the pattern's wildcard escaping
    const escape = (s: string) => s.replace(/[\\*]/g, (c) => `\\${c}`);
    fc.assert(
      fc.property(fc.string({ maxLength: 6 }), fc.string({ maxLength: 6 }), fc.string({ maxLength: 16 }), (prefix, suffix, key) => {
        // WHEN the key is matched against prefix*suffix
        const pattern = { detail: { object: { key: [{ wildcard: `${escape(prefix)}*${escape(suffix)}` }] } } };
        const matched = matchesEventPattern(pattern, { detail: { object: { key } } });
        // THEN it matches exactly when the key has both, without overlap
        expect(matched).toBe(key.length >= prefix.length + suffix.length && key.startsWith(prefix) && key.endsWith(suffix));
      }),
      { numRuns: 300 },
    );
  });

  test('a pattern matcher the demo does not know is refused, not guessed', () => {
    // GIVEN a pattern with a numeric matcher
    const pattern = { detail: { object: { size: [{ numeric: ['>', 0] }] } } };
    // WHEN it is matched, THEN it throws naming the matcher
    expect(() => matchesEventPattern(pattern, { detail: { object: { size: 5 } } })).toThrow(/numeric/);
  });
});

function hms(ms: number): string {
  const s = Math.round(ms / 1000);
  const pad = (n: number) => String(n).padStart(2, '0');
  return `${pad(Math.floor(s / 3600))}:${pad(Math.floor((s % 3600) / 60))}:${pad(s % 60)}`;
}
