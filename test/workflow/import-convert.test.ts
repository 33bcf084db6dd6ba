/**
 * The import workflow end to end for images VM Import would not take as they are: the convert
 * step writes a stream-optimized VMDK under the execution's staging prefix (resumably, across as
 * many invocations as it takes), the import reads that, and the staged files are removed at the
 * end. Each converted disk is judged by `qemu-img compare` against the original disk. Also: a
 * conversion that fails half-way resumes from its checkpoint, and an aborted conversion leaves no
 * upload behind.
 */
import * as path from 'node:path';
import { GetObjectTaggingCommand } from '@aws-sdk/client-s3';
import { qemuCompare } from '../helpers/convert-inputs';
import { qemuConvert, tempDir } from '../helpers/fixtures';
import { BUCKET, ImportHarness, STAGING, type Invocation, type Run } from '../helpers/import-workflow-harness';
import { bootMbrDisk, bulkyMbrDisk, compressed } from '../helpers/inspect-fixtures';
import { executionStatusChangeEvent } from '../helpers/local-aws';
import { startFaultProxy, type FaultProxy } from '../helpers/local-s3';
import type { LocalExecution } from '../helpers/local-sfn';

/** What the convert step keeps in reserve at the end of an invocation (convert.ts). */
const RESERVE_MS = 90_000;

let h: ImportHarness;
let dir: string;
let cleanupDir: () => void;

/**
 * The Lambda context of a convert invocation with room for `looks` looks at the remaining time:
 * after that it reports less than the reserve, as a function near its timeout does. The step looks
 * once before each disk and once per 1 MiB run, so each invocation converts a bounded amount,
 * whatever the speed of the machine running the test.
 */
function budgeted(context: any, looks: number): any {
  let seen = 0;
  return { ...context, getRemainingTimeInMillis: () => (++seen <= looks ? 15 * 60_000 : RESERVE_MS - 1) };
}

/** The converted disks of each execution, downloaded before the tidy-up removes them. */
const converted = new Map<string, string[]>();

/** Keeps the staged disks of a successful execution (the tidy-up that ends it deletes them). */
async function keepConvertedDisks(call: Invocation): Promise<void> {
  if (call.step !== 'convert.tidy' || !call.event?.state?.conversion || call.event.state.error) return;
  const name = call.event.execution.name;
  const files: string[] = [];
  for (const out of call.event.state.conversion.outputs ?? []) {
    const file = path.join(dir, `${name}-${path.basename(out.key)}`);
    await h.download(out.key, file);
    files.push(file);
  }
  converted.set(name, files);
}

/** Runs the workflow with the convert step on a budget of `looks` and the converted disks kept. */
async function runConverting(
  input: any,
  name: string,
  looks?: number,
  more?: (call: Invocation, n: number) => Promise<any> | undefined,
): Promise<Run> {
  let converts = 0;
  h.intercept = async (call) => {
    await keepConvertedDisks(call);
    if (call.step !== 'convert.handler') return call.run();
    const n = ++converts;
    const context = looks === undefined ? call.context : budgeted(call.context, looks);
    return (await more?.(call, n)) ?? call.run(undefined, context);
  };
  try {
    return await h.run(input, name);
  } finally {
    h.intercept = (call) => call.run();
  }
}

/** The convert invocations of an execution: the input each attempt was given. */
function convertAttempts(exec: LocalExecution): any[] {
  return exec.events
    .filter((e) => (e.type === 'StateEntered' || e.type === 'StateRetried') && e.state?.name === 'Convert image')
    .map((e) => exec.taskInputOf(e)?.state?.conversion);
}

async function tagsOf(key: string): Promise<Record<string, string>> {
  const out = await h.aws.s3.client.send(new GetObjectTaggingCommand({ Bucket: BUCKET, Key: key }));
  return Object.fromEntries((out.TagSet ?? []).map((t) => [t.Key!, t.Value!]));
}

/** The checks of a converted import: imported from the staged VMDK, which equals the disk, and staging removed. */
async function expectImportedConverted(run: Run, sourceKey: string, originalRaw: string): Promise<void> {
  const { exec, result } = run;
  expect(result.status).toBe('SUCCEEDED');
  expect(exec.statesEntered()).toEqual(expect.arrayContaining(['Plan conversion', 'Convert image', 'Use converted disks', 'Imported']));
  // The import read the staged VMDK of this execution.
  const task = h.aws.ec2.importImageTasks().find((t) => (t.Tags ?? []).some((tag) => tag.Key === 'vmie:execution' && tag.Value === exec.executionArn));
  expect(task?.SnapshotDetails?.map((s) => [s.Format, s.UserBucket?.S3Key])).toEqual([['VMDK', `${STAGING}converted/${exec.name}/disk-1.vmdk`]]);
  expect(result.output).toMatchObject({ source: { bucket: BUCKET, key: sourceKey }, imageId: task!.ImageId });
  expect(h.workflow.events.find((e) => e.detailType === 'VM Import Succeeded' && e.detail.execution === exec.executionArn)?.detail).toEqual(result.output);
  // The staged VMDK holds the same disk as the original.
  const [file] = converted.get(exec.name) ?? [];
  expect(file).toBeDefined();
  const compare = qemuCompare(originalRaw, file, 'vmdk');
  expect(compare.out).toMatch(/Images are identical/);
  expect(compare.status).toBe(0);
  // Nothing is left: no staged object, no checkpoint, no upload; the source is marked processed.
  expect(await h.keys(`${STAGING}converted/${exec.name}/`)).toEqual([]);
  expect(await h.aws.s3.listUploads(BUCKET)).toEqual([]);
  expect(await tagsOf(sourceKey)).toMatchObject({ 'vmie:processed': 'true' });
}

beforeAll(async () => {
  ({ dir, cleanup: cleanupDir } = tempDir('vmie-import-convert-'));
  h = await ImportHarness.start();
});

afterAll(async () => {
  await h?.close();
  cleanupDir?.();
});

describe('images converted before the import', () => {
  const cases: Array<[string, string, () => string]> = [
    ['qcow2', 'vms/kvm/web-01.qcow2', () => qemuConvert(bootMbrDisk(), 'qcow2')],
    ['VDI', 'vms/vbox/web-01.vdi', () => qemuConvert(bootMbrDisk(), 'vdi')],
    ['monolithicSparse VMDK', 'vms/workstation/web-01.vmdk', () => qemuConvert(bootMbrDisk(), 'vmdk', ['subformat=monolithicSparse'])],
    ['gzip-compressed raw', 'vms/gz/web-01.img.gz', () => compressed(bootMbrDisk(), 'gzip')],
    ['xz-compressed raw', 'vms/xz/web-01.img.xz', () => compressed(bootMbrDisk(), 'xz')],
  ];

  test.each(cases)('%s is converted to stream-optimized VMDK and imported', async (format, key, make) => {
    // GIVEN the image in the import bucket
    await h.aws.s3.upload(BUCKET, key, make());

    // WHEN the workflow runs
    const run = await runConverting({ bucket: BUCKET, key }, `convert-${format.replace(/[^a-z0-9]+/gi, '-')}`);

    // THEN the disk was converted in one invocation and imported from the staged VMDK
    await expectImportedConverted(run, key, bootMbrDisk());
    expect(convertAttempts(run.exec)).toHaveLength(1);
  });
});

describe('a conversion across several invocations', () => {
  /** Each test imports its own object: the same disk under another key (another client token). */
  async function bigImage(name: string): Promise<string> {
    const key = `vms/big/${name}.qcow2`;
    await h.aws.s3.upload(BUCKET, key, qemuConvert(bulkyMbrDisk(), 'qcow2'));
    return key;
  }

  test('pauses near the end of each invocation and resumes from its checkpoint', async () => {
    // GIVEN a 64 MiB disk, and a convert step with room for about 16 MiB per invocation
    const key = await bigImage('db-plain');

    // WHEN the workflow runs
    const run = await runConverting({ bucket: BUCKET, key }, 'resume-plain', 16);

    // THEN the step ran several times, each resuming from the checkpoint the one before saved
    const attempts = convertAttempts(run.exec);
    expect(attempts.length).toBeGreaterThanOrEqual(3);
    expect(attempts[0].checkpoint).toBeUndefined();
    for (const [i, a] of attempts.slice(1).entries()) {
      expect(a).toMatchObject({ done: false, checkpoint: { bucket: BUCKET, key: `${STAGING}converted/resume-plain/checkpoint` } });
      if (i > 0) expect(a.progress.bytesDone).toBeGreaterThan(attempts[i].progress.bytesDone);
    }
    // AND the result is the disk
    await expectImportedConverted(run, key, bulkyMbrDisk());
  });

  test('an invocation that dies half-way is retried and resumes from the last checkpoint to the same disk', async () => {
    // GIVEN a convert invocation that dies in the middle of its work, once a checkpoint exists: a
    // part of its upload went up, but it dies as it saves its checkpoint (S3 hears nothing more from
    // it), and the Lambda service reports the invocation failed
    const key = await bigImage('db-crash');
    let proxy: FaultProxy | undefined;
    let abandoned: Promise<unknown> | undefined;
    let crashedAt: number | undefined;
    const crash = async (call: Invocation, n: number) => {
      if (n < 2 || crashedAt !== undefined) return undefined;
      let parts = 0;
      let dead = false;
      let died!: () => void;
      const dying = new Promise<void>((resolve) => (died = resolve));
      proxy = await startFaultProxy(h.aws.s3.endpoint, (req) => {
        const checkpoint = req.method === 'PUT' && req.url.split('?')[0].endsWith('/checkpoint');
        if (req.method === 'PUT' && /[?&]partNumber=/.test(req.url)) {
          parts++;
        } else if (!dead && parts > 0 && checkpoint) {
          dead = true;
          died();
        }
        // A dead sandbox changes nothing more in S3: whatever it still sends is refused.
        return dead ? { kind: 'error', status: 503, code: 'ServiceUnavailable' } : { kind: 'pass' };
      });
      const running = call.run(undefined, budgeted(call.context, 16), { AWS_ENDPOINT_URL_S3: proxy.endpoint });
      const first = await Promise.race([running.then(() => 'answered', () => 'answered'), dying.then(() => 'died')]);
      if (first === 'answered') {
        // This invocation uploaded no part before its checkpoint (or finished): die in a later one.
        await proxy.close();
        proxy = undefined;
        return running;
      }
      crashedAt = n;
      abandoned = running.catch(() => undefined);
      throw Object.assign(new Error('The invocation ended before the function answered'), { name: 'Lambda.ServiceException' });
    };

    // WHEN the workflow runs
    let run: Run;
    try {
      run = await runConverting({ bucket: BUCKET, key }, 'resume-crash', 16, crash);
    } finally {
      await proxy?.close();
      await abandoned;
    }

    // THEN the invocation that died was retried with the same input: the checkpoint before it
    expect(crashedAt).toBeDefined();
    const attempts = convertAttempts(run.exec);
    const retries = run.exec.events.filter((e) => e.type === 'StateRetried' && e.state?.name === 'Convert image');
    expect(retries).toHaveLength(1);
    expect(retries[0].retry!.retrier.ErrorEquals).toContain('Lambda.ServiceException');
    expect(attempts[crashedAt!]).toEqual(attempts[crashedAt! - 1]);
    expect(attempts[crashedAt! - 1].checkpoint).toBeDefined();
    // AND the conversion went on from there to the same disk (the part the dead invocation sent is sent again)
    await expectImportedConverted(run, key, bulkyMbrDisk());
  });

  test('a transient S3 failure half-way (5xx after the SDK\'s retries) is retried by the state machine and resumes', async () => {
    // GIVEN a convert invocation, once a checkpoint exists, meets S3 answering 503 to its part
    // uploads (as long as the SDK retries them)
    const key = await bigImage('db-transient');
    let proxy: FaultProxy | undefined;
    let refused = 0;
    let faultedAt: number | undefined;
    const fault = async (call: Invocation, n: number) => {
      if (n < 2 || faultedAt !== undefined) return undefined;
      await proxy?.close();
      proxy = await startFaultProxy(h.aws.s3.endpoint, (req) => {
        if (req.method === 'PUT' && /[?&]partNumber=/.test(req.url)) {
          refused++;
          faultedAt = n;
          return { kind: 'error', status: 503, code: 'SlowDown' };
        }
        return { kind: 'pass' };
      });
      return call.run(undefined, budgeted(call.context, 16), { AWS_ENDPOINT_URL_S3: proxy.endpoint });
    };

    // WHEN the workflow runs
    let run: Run;
    try {
      run = await runConverting({ bucket: BUCKET, key }, 'resume-transient', 16, fault);
    } finally {
      await proxy?.close();
    }

    // THEN the step failed as Transient (the contract's name for what the SDK's retries did not absorb), was retried, and resumed
    expect(refused).toBeGreaterThan(1);
    expect([run.result.status, run.result.error]).toEqual(['SUCCEEDED', undefined]);
    const retries = run.exec.events.filter((e) => e.type === 'StateRetried' && e.state?.name === 'Convert image');
    expect(retries.map((e) => e.retry!.retrier.ErrorEquals)).toEqual([expect.arrayContaining(['Transient'])]);
    await expectImportedConverted(run, key, bulkyMbrDisk());
  });

  test('an aborted conversion: the rule on the status change aborts the upload and removes the staged files', async () => {
    // GIVEN an execution aborted after its second convert invocation paused
    const key = await bigImage('db-aborted');
    let exec: LocalExecution | undefined;
    h.intercept = async (call) => {
      if (call.step !== 'convert.handler') return call.run();
      const out = await call.run(undefined, budgeted(call.context, 16));
      if (convertAttempts(exec!).length === 2) exec!.abort();
      return out;
    };
    try {
      exec = h.workflow.start({ bucket: BUCKET, key }, { name: 'abort-converting' });
      expect((await exec.result).status).toBe('ABORTED');
    } finally {
      h.intercept = (call) => call.run();
    }
    const prefix = `${STAGING}converted/${exec.name}/`;
    expect((await h.aws.s3.listUploads(BUCKET)).map((u) => u.key)).toEqual([`${prefix}disk-1.vmdk`]);
    expect(await h.keys(prefix)).toEqual([`${prefix}checkpoint`]);

    // WHEN EventBridge delivers the status change to the rule's targets
    const delivered = await h.aws.deliverEvent(executionStatusChangeEvent(h.workflow, exec));

    // THEN the upload was aborted and the staged files removed; there was no import task to cancel
    expect(delivered.map((d) => d.error)).toEqual([undefined, undefined]);
    expect(await h.aws.s3.listUploads(BUCKET)).toEqual([]);
    expect(await h.keys(prefix)).toEqual([]);
    const tidied = delivered.find((d) => h.workflow.functions[d.target].handler === 'index.tidy')!.output;
    expect(tidied).toMatchObject({ abortedUploads: [expect.stringContaining('disk-1.vmdk')], taggedProcessed: [] });
    const failure = h.aws.events.entries.find((e) => e.detailType === 'VM Import Failed' && e.detail.execution === exec!.executionArn);
    expect(failure?.detail).toMatchObject({ status: 'ABORTED', cancelledTasks: [] });
    // AND the source was not marked processed
    expect(await tagsOf(key)).not.toHaveProperty('vmie:processed');
  });
});
