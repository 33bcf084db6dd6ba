/**
 * `vmie import` and `vmie export` (the bundled command, as a child process) against the local AWS:
 * the real SFN client talks to the local Step Functions API, behind which the synthesized import
 * and export state machines run with the bundled handlers, the local S3 and the EC2 simulator.
 *
 * It is also the round trip of the local run: an image is imported, the AMI exported, and the
 * exported file inspected by the engine.
 */
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { inspect } from '../../lambda/disk/inspect';
import { BufferSource } from '../../lambda/disk/source';
import { exampleApp } from '../demo/example-app';
import { writeSampleRawDisk } from '../demo/main';
import { ASSETS_DIR } from '../helpers/bundles';
import { startLocalAws, type LocalAws } from '../helpers/local-aws';
import { engineInspect } from '../helpers/local-ec2';
import type { LocalWorkflow } from '../helpers/local-sfn';
import { startLocalSfnApi, type LocalSfnApi } from '../helpers/local-sfn-api';

const bundle = path.join(ASSETS_DIR, 'vmie', 'index.js');
const IMPORTS = 'vmie-cli-imports';
const EXPORTS = 'vmie-cli-exports';

let work: string;
let aws: LocalAws;
let api: LocalSfnApi;
let importWf: LocalWorkflow;
let exportWf: LocalWorkflow;

beforeAll(async () => {
  if (!fs.existsSync(bundle)) throw new Error(`${bundle} is missing: run 'npx projen bundle' (npm test does) first.`);
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'vmie-cli-workflow-'));
  const { stack } = exampleApp(path.join(work, 'cdk.out'), { account: '123456789012', region: 'eu-west-1' });
  aws = await startLocalAws({
    stack,
    stateMachine: stack.vmie.importWorkflow.stateMachine.node.path,
    buckets: { [IMPORTS]: stack.vmie.importBucket, [EXPORTS]: stack.vmie.exportBucket },
    ec2: { region: 'eu-west-1', inspect: (b, k, c) => engineInspect(aws.s3.client)(b, k, c) },
  });
  importWf = aws.workflow;
  exportWf = await aws.loadWorkflow({ stateMachine: stack.vmie.exportWorkflow!.stateMachine.node.path });
  api = await startLocalSfnApi({ [importWf.stateMachineArn]: importWf, [exportWf.stateMachineArn]: exportWf });
});

afterAll(async () => {
  await api?.close();
  await aws?.close();
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

/** Runs the bundled vmie with the local endpoints, not on a terminal. */
function vmie(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [bundle, ...args], {
      env: { PATH: process.env.PATH ?? '', ...aws.env, ...api.env, ...env },
      maxBuffer: 16 << 20,
    }, (error, stdout, stderr) => {
      resolve({ code: error ? (typeof error.code === 'number' ? error.code : -1) : 0, stdout, stderr });
    });
  });
}

describe('vmie import and vmie export against the local AWS', () => {
  test('import --follow shows the states and the progress and ends with the AMI; export of that AMI writes a file the engine judges importable', async () => {
    // GIVEN: a raw disk in the import bucket
    const raw = path.join(work, 'disk.img');
    await writeSampleRawDisk(raw, 64 * 1024 * 1024);
    await aws.s3.client.send(new PutObjectCommand({ Bucket: IMPORTS, Key: 'uploads/disk.img', Body: fs.readFileSync(raw) }));

    // WHEN: imported with vmie
    const imported = await vmie(['import', `s3://${IMPORTS}/uploads/disk.img`, '--state-machine', importWf.stateMachineArn, '--follow', '--interval', '0.05']);

    // THEN
    expect(imported.stderr).toMatch(/^started arn:aws:states:eu-west-1:123456789012:execution:/m);
    expect(imported.code).toBe(0);
    const lines = imported.stdout.split('\n');
    for (const state of ['Read options', 'Validate image', 'Use original disks', 'Start import', 'Wait for import', 'Check import', 'Finalize image', 'Notify success']) {
      expect(lines).toContain(`> ${state}`);
    }
    expect(imported.stdout).toMatch(/^ {2}active \((pending|validating|converting|updating|booting)[^)]*\) \d+%$/m);
    const ami = /^succeeded: AMI (ami-[0-9a-f]+)/m.exec(imported.stdout)?.[1];
    expect(ami).toBeDefined();
    expect(aws.ec2.images().map((i) => i.ImageId)).toContain(ami);

    // WHEN: the AMI exported as a stream-optimized VMDK
    const exported = await vmie(['export', ami!, '--format', 'vmdk', '--state-machine', exportWf.stateMachineArn, '--follow', '--interval', '0.05', '--json']);

    // THEN
    expect(exported.code).toBe(0);
    const events = exported.stdout.trim().split('\n').map((l) => JSON.parse(l));
    expect(events.filter((e) => e.kind === 'state').map((e) => e.text)).toEqual(expect.arrayContaining(['> Check constraints', '> Start export', '> Check export']));
    const final = events[events.length - 1];
    expect(final.status).toBe('SUCCEEDED');
    const object = final.output.object as { bucket: string; key: string };
    expect(object.bucket).toBe(EXPORTS);
    const got = await aws.s3.client.send(new GetObjectCommand({ Bucket: object.bucket, Key: object.key }));
    const report = await inspect(new BufferSource(path.basename(object.key), Buffer.from(await got.Body!.transformToByteArray())));
    expect(report).toMatchObject({ format: 'vmdk', subformat: 'streamOptimized', importable: true, virtualSize: 64 * 1024 * 1024 });
  });

  test('a failed import exits 1 with the reason; usage errors exit 64', async () => {
    // GIVEN: an object that is not a disk image
    await aws.s3.client.send(new PutObjectCommand({ Bucket: IMPORTS, Key: 'uploads/notes.img', Body: 'just some text, not a disk' }));
    // WHEN
    const failed = await vmie(['import', `s3://${IMPORTS}/uploads/notes.img`, '--state-machine', importWf.stateMachineArn, '--follow', '--interval', '0.05']);
    const noMachine = await vmie(['import', `s3://${IMPORTS}/uploads/notes.img`]);
    const badId = await vmie(['export', 'vol-123', '--state-machine', exportWf.stateMachineArn]);
    const ovaOfAmi = await vmie(['export', 'ami-0123456789abcdef0', '--format', 'ova', '--state-machine', exportWf.stateMachineArn]);
    // THEN
    expect(failed.code).toBe(1);
    expect(failed.stdout).toMatch(/^> Cancel import$/m);
    expect(failed.stderr).toMatch(/^failed: UnsupportedImage/m);
    expect(noMachine.code).toBe(64);
    expect(noMachine.stderr).toMatch(/VMIE_IMPORT_STATE_MACHINE/);
    expect(badId.code).toBe(64);
    expect(ovaOfAmi.code).toBe(64);
    expect(ovaOfAmi.stderr).toMatch(/OVA is for instance exports/);
  });

  test('without --follow, import prints the execution and returns at once', async () => {
    // GIVEN / WHEN
    const r = await vmie(['import', `s3://${IMPORTS}/uploads/disk.img`, '--state-machine', importWf.stateMachineArn, '--json']);
    // THEN
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).executionArn).toMatch(/:execution:/);
    await Promise.all([...api.executions.values()].map((e) => e.result));
  });
});
