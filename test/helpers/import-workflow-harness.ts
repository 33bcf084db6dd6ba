/**
 * The import workflow of a synthesized `VmImportExport`, run end to end against the local AWS
 * (see `local-aws.ts`): the definition taken from the template, every Lambda task running the
 * staged bundle of `assets/`, the EC2 simulator and the state machine on one virtual clock.
 *
 * What this adds to the local AWS:
 * - The bundles are loaded by Node.js itself rather than by Jest's module registry. The bundles
 *   keep the SDK's `import('node:http')`, which Jest's sandbox refuses (it needs
 *   `--experimental-vm-modules`), so each staged `index.js` is mocked with the module Node.js
 *   loads. The sandbox's `process.env` (where the harness puts each function's environment) is
 *   copied into the real one as each call starts (and the real one put back when the harness
 *   closes), and the bundles' console output is kept in {@link ImportHarness.logs} instead of
 *   being printed.
 * - Every call of a bundled handler goes through {@link ImportHarness.intercept}, which a test may
 *   set to watch a step, change its environment (a fault proxy in front of S3), its context, or
 *   what the invocation answers.
 */
import { randomUUID } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { GetObjectCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { App, Duration, Stack } from 'aws-cdk-lib';
import { startLocalAws, type LocalAws } from './local-aws';
import { engineInspect, type LocalEc2Options } from './local-ec2';
import type { LocalExecution, LocalExecutionResult, LocalWorkflow } from './local-sfn';
import { VirtualClock } from './virtual-clock';
import { VmImportExport } from '../../src';

/** The account and Region of the test stacks: those of the EC2 simulator. */
export const ACCOUNT = '123456789012';
export const REGION = 'us-east-1';
/** The import bucket's physical name. */
export const BUCKET = 'vmie-imports';
/** Where the workflow stages its files in the import bucket. */
export const STAGING = '.vmie/';

/** The bundles of the import workflow, by an export only each has. */
const BUNDLE_MARKERS: ReadonlyArray<[string, string]> = [['tidy', 'convert'], ['prepare', 'validate'], ['start', 'import']];

/** One call of a bundled handler. */
export interface Invocation {
  /** `validate`, `convert` or `import`. */
  readonly bundle: string;
  /** The export called (`handler`, `tidy`, `start`, ...). */
  readonly handler: string;
  /** `<bundle>.<handler>`, e.g. `convert.handler`. */
  readonly step: string;
  /** The event the handler is given. */
  readonly event: any;
  /** The Lambda context the harness made. */
  readonly context: any;
  /** Runs the handler; `env` is added to the function's environment for this call. */
  run(event?: any, context?: any, env?: Record<string, string>): Promise<any>;
}

/** Options of {@link ImportHarness.start}. */
export interface ImportHarnessOptions {
  /** The workflow's timeout. @default the construct's default */
  readonly timeout?: Duration;
}

/** How one execution went. */
export interface Run {
  readonly exec: LocalExecution;
  readonly result: LocalExecutionResult;
}

/** The import workflow of a `VmImportExport` on the local AWS. */
export class ImportHarness {
  /** Synthesizes a stack with a `VmImportExport` (import only) and starts the local AWS for it. */
  public static async start(options: ImportHarnessOptions = {}): Promise<ImportHarness> {
    const stack = new Stack(new App(), 'VmieImportFlow', { env: { account: ACCOUNT, region: REGION } });
    const vmie = new VmImportExport(stack, 'Vmie', {
      enableExport: false,
      dashboard: false,
      importTimeout: options.timeout,
    });
    // Real time of the handlers (Date.now) and simulated time start together, so that the
    // durations the handlers compute are not skewed by the clock's default epoch.
    const clock = new VirtualClock(Date.now());
    // The simulator inspects imported disks with the engine, reading them from the local S3.
    let s3: LocalAws['s3'] | undefined;
    const inspect: LocalEc2Options['inspect'] = (bucket, key, context) => engineInspect(s3!.client)(bucket, key, context);
    const aws = await startLocalAws({
      stack,
      stateMachine: vmie.importWorkflow.stateMachine.node.path,
      clock,
      buckets: { [BUCKET]: vmie.importBucket },
      ec2: { inspect },
    });
    s3 = aws.s3;
    const harness = new ImportHarness(stack, vmie, aws);
    harness.loadBundlesNatively(aws.workflow);
    return harness;
  }

  /** Every invocation so far, in order, as `<bundle>.<handler>`. */
  public readonly invocations: string[] = [];
  /** The console output of the handlers (JSON log lines mostly). */
  public readonly logs: string[] = [];
  public readonly workflow: LocalWorkflow;
  /** The real environment before the first call, and the variables the latest call set. */
  private baseline: Record<string, string | undefined> | undefined;
  private applied: string[] = [];
  private restoreConsole: (() => void) | undefined;
  private restoreEnv: (() => void) | undefined;

  private constructor(
    public readonly stack: Stack,
    public readonly vmie: VmImportExport,
    public readonly aws: LocalAws,
  ) {
    this.workflow = aws.workflow;
  }

  /** Called for every invocation of a bundled handler; the default runs it as it is. */
  public intercept: (call: Invocation) => Promise<any> = (call) => call.run();

  /** Starts an execution and waits for its end. */
  public async run(input: any, name: string = randomUUID()): Promise<Run> {
    const exec = this.workflow.start(input, { name });
    const result = await exec.result;
    return { exec, result };
  }

  /** The keys under `prefix` in the import bucket. */
  public async keys(prefix: string): Promise<string[]> {
    const out = await this.aws.s3.client.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: prefix }));
    return (out.Contents ?? []).map((o) => o.Key!).sort();
  }

  /** Downloads `s3://BUCKET/key` to `file`. */
  public async download(key: string, file: string): Promise<void> {
    const out = await this.aws.s3.client.send(new GetObjectCommand({ Bucket: BUCKET, Key: key }));
    fs.writeFileSync(file, Buffer.from(await out.Body!.transformToByteArray()));
  }

  /** The Lambda invocations of an execution: each entry into, and each retry of, a state whose task is a function. */
  public lambdaInvocations(exec: LocalExecution): number {
    return exec.events.filter((e) => (e.type === 'StateEntered' || e.type === 'StateRetried') && e.state
      && this.workflow.taskTarget(e.state.name)?.kind === 'function').length;
  }

  public async close(): Promise<void> {
    this.restoreConsole?.();
    this.restoreEnv?.();
    await this.aws.close();
  }

  /** Mocks each staged bundle with the module Node.js loads, its handlers wrapped by {@link intercept}. */
  private loadBundlesNatively(workflow: LocalWorkflow): void {
    // The real global object (the sandbox's `process` and `console` are copies).
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const main = require('node:vm').runInThisContext('globalThis');
    const nativeRequire = (file: string) => main.process.getBuiltinModule('node:module').createRequire(file)(file);
    const files = new Set(Object.values(workflow.functions).filter((f) => f.assetDir !== '').map((f) => path.join(f.assetDir, 'index.js')));
    for (const file of files) {
      jest.doMock(file, () => {
        const mod = nativeRequire(file);
        const bundle = BUNDLE_MARKERS.find(([marker]) => typeof mod[marker] === 'function')?.[1] ?? path.basename(path.dirname(file));
        const wrapped: Record<string, unknown> = {};
        for (const [name, value] of Object.entries<any>(mod)) {
          wrapped[name] = typeof value !== 'function' ? value : (event: any, context: any) => {
            const step = `${bundle}.${name}`;
            this.invocations.push(step);
            // The function's environment as the harness set it in the sandbox, when the call began.
            const env = { ...process.env };
            const run = (e: any = event, c: any = context, extra: Record<string, string> = {}) =>
              this.callNatively(main, () => value(e, c), { ...env, ...extra });
            return this.intercept({ bundle, handler: name, step, event, context, run });
          };
        }
        return wrapped;
      });
    }
  }

  /**
   * Runs `fn` with `env` in the real process environment. The variables the previous call set are
   * put back first, and nothing is restored when a call ends: a call the test abandons (a crash)
   * may end at any time without touching the environment of the calls after it.
   */
  private async callNatively<T>(main: any, fn: () => Promise<T>, env: Record<string, string | undefined>): Promise<T> {
    const realEnv = main.process.env;
    const baseline = (this.baseline ??= { ...realEnv });
    this.restoreEnv = () => {
      for (const key of this.applied) {
        if (baseline[key] === undefined) delete realEnv[key];
        else realEnv[key] = baseline[key];
      }
      this.applied = [];
    };
    this.restoreEnv();
    this.applied = Object.keys(env).filter((key) => env[key] !== undefined);
    for (const key of this.applied) realEnv[key] = env[key];
    if (!this.restoreConsole) {
      const saved = { log: main.console.log, info: main.console.info, warn: main.console.warn, error: main.console.error };
      const keep = (...args: unknown[]) => void this.logs.push(args.map(String).join(' '));
      Object.assign(main.console, { log: keep, info: keep, warn: keep, error: keep });
      this.restoreConsole = () => Object.assign(main.console, saved);
    }
    return fn();
  }
}

/** The simulated minutes of `ms`. */
export function minutes(ms: number): number {
  return ms / 60_000;
}
