/**
 * Runs a synthesized state machine locally: the definition is taken from the stack's template
 * (intrinsics resolved by `cfn-resolve`), executed by aws-local-stepfunctions, and every Lambda
 * task runs the function's staged asset from the synthesized assembly, the bundle that would be
 * deployed. Waits and retry back-offs take no real time: they advance a virtual clock by exactly
 * what Step Functions would wait, and the state machine's `TimeoutSeconds` is measured on it.
 *
 * What each Task resource does here:
 * - a Lambda function ARN, or `arn:aws:states:::lambda:invoke` with `FunctionName`: the function's
 *   handler, with its environment in `process.env` during the call (one call at a time), a
 *   Lambda-like context, and errors named as Lambda names them (`errorType` = `err.name`) so that
 *   Retry and Catch match them by name;
 * - `arn:aws:states:::events:putEvents`, `arn:aws:states:::sns:publish`: captured in
 *   {@link LocalWorkflow.events} and {@link LocalWorkflow.messages};
 * - `arn:aws:states:::aws-sdk:<service>:<action>`: a `serviceHandlers` entry if one matches, else
 *   the real AWS SDK v3 client of the service, pointed at the endpoints in `env`;
 * - any other resource: a `serviceHandlers` entry (matched by ARN prefix), else it is refused when
 *   the workflow is loaded.
 *
 * Known limits: waits in concurrent Parallel branches or Map iterations advance the clock one
 * after the other (the clock only moves forward); tasks take no simulated time, so a Task's
 * `TimeoutSeconds` never expires, and a function's own timeout is reported by
 * `getRemainingTimeInMillis` but not enforced; `.sync` and `.waitForTaskToken` integrations run
 * only through `serviceHandlers`; JSONata definitions are refused (the interpreter runs JSONPath).
 */
import { randomUUID } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { types as utilTypes } from 'node:util';
import * as cdk from 'aws-cdk-lib';
import type { StateMachine as LibraryStateMachine } from 'aws-local-stepfunctions' with { 'resolution-mode': 'import' };
import { CfnResolver } from './cfn-resolve';
import { VirtualClock } from './virtual-clock';

// aws-local-stepfunctions uses Promise.withResolvers (Node.js 22); Node.js 20 lacks it.
if (typeof (Promise as any).withResolvers !== 'function') {
  Object.defineProperty(Promise, 'withResolvers', {
    configurable: true,
    writable: true,
    value: function withResolvers<T>(this: PromiseConstructor) {
      let resolve!: (value: T | PromiseLike<T>) => void;
      let reject!: (reason?: unknown) => void;
      const promise = new this<T>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      return { promise, resolve, reject };
    },
  });
}

// The package is an ES module with a CommonJS build; this file compiles to CommonJS.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { StateMachine } = require('aws-local-stepfunctions') as { StateMachine: typeof LibraryStateMachine };

/** The largest state input or output Step Functions accepts (256 KiB of UTF-8). */
export const MAX_PAYLOAD_BYTES = 256 * 1024;

/** How to load and run a workflow. */
export interface LocalWorkflowOptions {
  /** The synthesized app's stack (the harness synthesizes the App to a temporary directory to find staged assets). */
  readonly stack: cdk.Stack;
  /** Which state machine: the construct path or a substring of its logical id; default: the only one. */
  readonly stateMachine?: string;
  /** Environment for the Lambda handlers (local S3/EC2 endpoints ...), added to each function's own resolved Environment.Variables. */
  readonly env?: Record<string, string>;
  /** Simulated time: waits and retry back-offs advance it by exactly what Step Functions would wait, and no real time passes. */
  readonly clock?: VirtualClock;
  /** Physical names for resources (logical id -> name); see cfn-resolve. */
  readonly physicalNames?: Record<string, string>;
  /** Extra handlers for Task resources that are not Lambda functions (by resource ARN prefix), e.g. aws-sdk integrations. */
  readonly serviceHandlers?: Record<string, (params: any) => Promise<any>>;
}

/** How an execution ended. */
export interface LocalExecutionResult {
  readonly status: 'SUCCEEDED' | 'FAILED' | 'ABORTED' | 'TIMED_OUT';
  readonly output?: any;
  readonly error?: string;
  readonly cause?: string;
}

/** One event of aws-local-stepfunctions' event log, with the simulated time it happened at. */
export interface LocalExecutionEvent {
  /** `ExecutionStarted`, `StateEntered`, `StateExited`, `StateFailed`, `StateRetried`, `StateCaught`, `ExecutionSucceeded`, `ExecutionFailed`, `ExecutionAborted`, `ExecutionTimeout`, `MapIteration*`, `ParallelBranch*`. */
  readonly type: string;
  /** The real time the interpreter logged (ms since the Unix epoch). */
  readonly timestamp: number;
  /** The simulated time (the clock's ms) at which the event happened. */
  readonly simulatedTime: number;
  readonly state?: { readonly name: string; readonly type: string; readonly input: any; readonly output?: any };
  readonly retry?: { readonly retrier: any; readonly attempt: number };
  readonly input?: any;
  readonly output?: any;
  readonly Error?: string;
  readonly Cause?: any;
  readonly index?: number;
  readonly [other: string]: unknown;
}

/** A running (or finished) execution. */
export interface LocalExecution {
  readonly executionArn: string;
  readonly name: string;
  readonly stateMachineArn: string;
  /** The execution input. */
  readonly input: any;
  /** The simulated start time. */
  readonly startDate: Date;
  readonly result: Promise<LocalExecutionResult>;
  /** Every event so far (aws-local-stepfunctions' event log), with the simulated time of each. */
  readonly events: ReadonlyArray<LocalExecutionEvent>;
  abort(): void;
  /** The input a Task state's attempt was given (after InputPath and Parameters), by its StateEntered or StateRetried event. */
  taskInputOf(event: LocalExecutionEvent): any;
  /** `RUNNING` until the result is known, then the result's status. */
  status(): 'RUNNING' | LocalExecutionResult['status'];
  /** The result, once known. */
  outcome(): LocalExecutionResult | undefined;
  /** The simulated stop time, once stopped. */
  stopDate(): Date | undefined;
  /** States entered, in order (names), and the count of state transitions as Step Functions bills them (each state entered and each retry). */
  statesEntered(): string[];
  transitions(): number;
  /** Simulated time since the start: until the stop once stopped. */
  simulatedMs(): number;
}

/** A Lambda function of the stack, as the harness runs it. */
export interface LocalFunction {
  readonly logicalId: string;
  readonly handler: string;
  /** The staged asset directory ('' when the function cannot run here; see `problem`). */
  readonly assetDir: string;
  readonly environment: Record<string, string>;
  readonly functionName: string;
  readonly timeoutSeconds: number;
  readonly memorySize: number;
  /** Why the function cannot run here, if it cannot. */
  readonly problem?: string;
}

/** How the harness runs one Task resource. */
export type TaskTarget =
  | { readonly kind: 'function'; readonly functionArn: string }
  | { readonly kind: 'lambda:invoke' }
  | { readonly kind: 'events:putEvents' }
  | { readonly kind: 'sns:publish' }
  | { readonly kind: 'aws-sdk'; readonly service: string; readonly action: string }
  | { readonly kind: 'service'; readonly prefix: string };

/** An error a task raises, named as Step Functions names it. */
class TaskError extends Error {
  public constructor(name: string, cause: string) {
    super(cause);
    this.name = name;
  }
}

/** An error that no Retry or Catch handles (like States.Runtime in Step Functions). */
class TerminalError extends TaskError {
  public get isRetryable(): boolean {
    return false;
  }

  public get isCatchable(): boolean {
    return false;
  }
}

/** The resource the rewritten Wait states use, and where the simulated start time is put in the context. */
const WAIT_RESOURCE = 'arn:aws:states:::local:wait';
/**
 * The interpreter races each task against a real-time timer (60 s unless the state says otherwise);
 * tasks take no simulated time, so that timer is pushed out of the way (it must stay below the
 * longest timer Node.js accepts, 2^31 - 1 ms).
 */
const REAL_TASK_TIMEOUT_SECONDS = 2_000_000;
const START_TIME_KEY = 'SimulatedStartTime';

/** Handlers run one at a time: they share process.env. */
let lane: Promise<unknown> = Promise.resolve();
function exclusive<T>(fn: () => Promise<T>): Promise<T> {
  const run = lane.then(fn, fn);
  lane = run.catch(() => undefined);
  return run;
}

async function withEnv<T>(env: Record<string, string>, fn: () => Promise<T>): Promise<T> {
  const saved = new Map<string, string | undefined>();
  for (const [key, value] of Object.entries(env)) {
    saved.set(key, process.env[key]);
    process.env[key] = value;
  }
  try {
    return await fn();
  } finally {
    for (const [key, value] of saved) {
      if (value === undefined) delete process.env[key];
      else process.env[key] = value;
    }
  }
}

/** Lets every pending microtask run, so that the event log consumer has seen every event so far. */
function drain(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** A state machine of a synthesized stack, ready to run locally. */
export class LocalWorkflow {
  /** Loads the state machine of `options.stack`. */
  public static async fromStack(options: LocalWorkflowOptions): Promise<LocalWorkflow> {
    const { stack } = options;
    const stage = cdk.Stage.of(stack);
    if (!stage) throw new Error(`${stack.node.path} is not in an App`);
    const assembly = stage.synth();
    const artifact = assembly.getStackArtifact(stack.artifactId);
    const template = artifact.template;
    const concrete = (value: string) => (cdk.Token.isUnresolved(value) ? undefined : value);
    const resolver = new CfnResolver(template, {
      region: concrete(stack.region),
      accountId: concrete(stack.account),
      stackName: stack.stackName,
      physicalNames: options.physicalNames,
    });
    const assets = assetIndex(artifact.dependencies.map((d) => (d as { file?: string }).file));
    const logicalId = selectStateMachine(stack, template, options.stateMachine);
    const functions = loadFunctions(template, resolver, assets, assembly.directory);
    return new LocalWorkflow(options, template, resolver, logicalId, functions);
  }

  /** The ARN of the state machine. */
  public readonly stateMachineArn: string;
  /** The name of the state machine. */
  public readonly stateMachineName: string;
  /** The role the state machine runs with. */
  public readonly roleArn: string;
  /** The state machine's `TimeoutSeconds`, if it has one. */
  public readonly timeoutSeconds: number | undefined;
  /** The Lambda functions of the stack, by ARN. */
  public readonly functions: Record<string, LocalFunction>;
  /** Events sent by `events:putEvents` tasks, in order. */
  public readonly events: Array<{ source: string; detailType: string; detail: any; eventBusName?: string }> = [];
  /** Messages published by `sns:publish` tasks, in order. */
  public readonly messages: Array<{ topicArn: string; subject?: string; message: string }> = [];
  /** The region and partition the template was resolved for. */
  public readonly region: string;
  public readonly partition: string;
  public readonly accountId: string;

  private readonly resolvedDefinition: any;
  private readonly executable: any;
  private readonly states = new Map<string, any>();
  private readonly targets = new Map<string, TaskTarget>();
  private readonly machine: LibraryStateMachine;

  private constructor(
    private readonly options: LocalWorkflowOptions,
    template: any,
    resolver: CfnResolver,
    logicalId: string,
    functions: Record<string, LocalFunction>,
  ) {
    this.functions = functions;
    this.region = resolver.region;
    this.partition = resolver.partition;
    this.accountId = resolver.accountId;
    const properties = template.Resources[logicalId].Properties ?? {};
    this.stateMachineArn = resolver.getAtt(logicalId, 'Arn');
    this.stateMachineName = resolver.getAtt(logicalId, 'Name');
    this.roleArn = properties.RoleArn === undefined ? '' : String(resolver.resolve(properties.RoleArn));
    this.resolvedDefinition = readDefinition(properties, resolver, logicalId);
    if (this.resolvedDefinition.QueryLanguage === 'JSONata') throw new Error(`${logicalId}: JSONata definitions cannot run locally`);
    const timeout = this.resolvedDefinition.TimeoutSeconds;
    if (timeout !== undefined && !(Number.isInteger(timeout) && timeout > 0)) throw new Error(`${logicalId}: invalid TimeoutSeconds ${timeout}`);
    this.timeoutSeconds = timeout;
    collectStates(this.resolvedDefinition, this.states);
    for (const [name, state] of this.states) {
      if (state.QueryLanguage === 'JSONata') throw new Error(`state ${name}: JSONata cannot run locally`);
      if (state.Type === 'Task') this.targets.set(name, this.targetOf(name, state));
    }
    this.executable = executableDefinition(this.resolvedDefinition);
    this.machine = new StateMachine(this.executable, { validationOptions: { checkArn: true, checkPaths: true } });
  }

  /** The resolved ASL definition (JSON), e.g. for asl-validator; a fresh copy on each read. */
  public get definition(): any {
    return structuredClone(this.resolvedDefinition);
  }

  /** The type of a state of the definition (Task, Wait, ...), by name, at any depth. */
  public stateType(name: string): string | undefined {
    return this.states.get(name)?.Type;
  }

  /** The resolved definition of a state, by name, at any depth. */
  public stateDefinition(name: string): any {
    const state = this.states.get(name);
    return state === undefined ? undefined : structuredClone(state);
  }

  /** How the Task state `name` runs here. */
  public taskTarget(name: string): TaskTarget | undefined {
    return this.targets.get(name);
  }

  /** The Task state `name`'s Resource. */
  public taskResource(name: string): string | undefined {
    return this.states.get(name)?.Resource;
  }

  /** Starts an execution. */
  public start(input: any, options: { name?: string } = {}): LocalExecution {
    const name = options.name ?? randomUUID();
    if (!/^[^\s<>{}[\]?*"#%\\^|~`$&,;:/\u0000-\u001f\u007f-\u009f]{1,80}$/.test(name)) {
      throw new Error(`invalid execution name ${JSON.stringify(name)}`);
    }
    return new Execution(this, this.machine, this.options, name, input, (exec) => this.runOptions(exec));
  }

  private runOptions(exec: Execution): any {
    const taskResourceLocalHandlers: Record<string, (input: any) => Promise<any>> = {};
    const retryIntervalOverrides: Record<string, number> = {};
    for (const [name, state] of this.states) {
      if (state.Type === 'Task') taskResourceLocalHandlers[name] = (input) => this.runTask(exec, name, input);
      if (state.Type === 'Wait') taskResourceLocalHandlers[name] = (input) => exec.wait(name, state, input);
      if (Array.isArray(state.Retry)) retryIntervalOverrides[name] = 0;
    }
    return {
      overrides: { taskResourceLocalHandlers, retryIntervalOverrides },
      context: {
        Execution: {
          Id: exec.executionArn,
          Name: exec.name,
          RoleArn: this.roleArn,
          [START_TIME_KEY]: exec.startDate.toISOString(),
        },
        StateMachine: { Id: this.stateMachineArn, Name: this.stateMachineName },
      },
    };
  }

  private targetOf(stateName: string, state: any): TaskTarget {
    const resource = state.Resource;
    if (typeof resource !== 'string') throw new Error(`state ${stateName}: Resource is not a string`);
    if (/^arn:[^:]+:lambda:[^:]*:[^:]*:function:/.test(resource)) {
      const fn = this.findFunction(resource);
      if (!fn) throw new Error(`state ${stateName}: no function ${resource} in the stack`);
      return { kind: 'function', functionArn: fn };
    }
    const integration = /^arn:[^:]+:states:::(.+)$/.exec(resource)?.[1];
    const handler = this.serviceHandlerPrefix(resource);
    if (integration === 'lambda:invoke') {
      const fnName = state.Parameters?.FunctionName;
      if (typeof fnName === 'string' && !this.findFunction(fnName)) throw new Error(`state ${stateName}: no function ${fnName} in the stack`);
      return { kind: 'lambda:invoke' };
    }
    if (handler !== undefined) return { kind: 'service', prefix: handler };
    if (integration === 'events:putEvents') return { kind: 'events:putEvents' };
    if (integration === 'sns:publish') return { kind: 'sns:publish' };
    const sdk = integration === undefined ? null : /^aws-sdk:([a-z0-9]+):([a-zA-Z0-9]+)$/.exec(integration);
    if (sdk) {
      try {
        require.resolve(`@aws-sdk/client-${sdk[1]}`);
      } catch {
        throw new Error(`state ${stateName}: ${resource} needs @aws-sdk/client-${sdk[1]}, which is not installed; give a serviceHandlers entry instead`);
      }
      return { kind: 'aws-sdk', service: sdk[1], action: sdk[2] };
    }
    throw new Error(`state ${stateName}: resource ${resource} cannot run locally; give a serviceHandlers entry for it`);
  }

  private serviceHandlerPrefix(resource: string): string | undefined {
    let best: string | undefined;
    for (const prefix of Object.keys(this.options.serviceHandlers ?? {})) {
      if (resource.startsWith(prefix) && (best === undefined || prefix.length > best.length)) best = prefix;
    }
    return best;
  }

  /** The ARN key of the function named by an ARN (possibly qualified), a partial ARN or a name. */
  private findFunction(ref: string): string | undefined {
    const m = /^(?:arn:[^:]+:lambda:[^:]*:[^:]*:function:|[0-9]{12}:function:)?([^:]+)(?::[^:]+)?$/.exec(ref);
    const name = m?.[1];
    return Object.keys(this.functions).find((arn) => this.functions[arn].functionName === name);
  }

  private async runTask(exec: Execution, stateName: string, input: any): Promise<any> {
    await drain();
    if (exec.stopped) return null;
    exec.noteTaskInput(stateName, input);
    const target = this.targets.get(stateName)!;
    let result: any;
    switch (target.kind) {
      case 'function':
        result = await this.invoke(exec, target.functionArn, input);
        break;
      case 'lambda:invoke': {
        if (input === null || typeof input !== 'object' || typeof input.FunctionName !== 'string') {
          throw new TerminalError('States.Runtime', `state ${stateName}: lambda:invoke needs a FunctionName`);
        }
        const fn = this.findFunction(input.FunctionName);
        if (!fn) throw new TaskError('Lambda.ResourceNotFoundException', `Function not found: ${input.FunctionName}`);
        const requestId = randomUUID();
        const payload = await this.invoke(exec, fn, input.Payload === undefined ? {} : input.Payload, requestId);
        result = {
          ExecutedVersion: '$LATEST',
          Payload: payload,
          SdkHttpMetadata: { HttpStatusCode: 200 },
          SdkResponseMetadata: { RequestId: requestId },
          StatusCode: 200,
        };
        break;
      }
      case 'events:putEvents':
        result = this.putEvents(input);
        break;
      case 'sns:publish':
        result = this.publish(input);
        break;
      case 'aws-sdk':
        result = await this.callSdk(target.service, target.action, input);
        break;
      case 'service':
        result = await this.options.serviceHandlers![target.prefix](input);
        break;
    }
    if (exec.stopped) return null;
    return checkedPayload(result);
  }

  /** Runs a function's handler with its environment, one call at a time. */
  private invoke(exec: Execution, functionArn: string, event: any, requestId: string = randomUUID()): Promise<any> {
    const fn = this.functions[functionArn];
    if (fn.problem) return Promise.reject(new TerminalError('States.Runtime', `function ${fn.logicalId} cannot run locally: ${fn.problem}`));
    return exclusive(async () => {
      if (exec.stopped) return null;
      const env: Record<string, string> = {
        AWS_REGION: this.region,
        AWS_DEFAULT_REGION: this.region,
        AWS_LAMBDA_FUNCTION_NAME: fn.functionName,
        AWS_LAMBDA_FUNCTION_VERSION: '$LATEST',
        AWS_LAMBDA_FUNCTION_MEMORY_SIZE: String(fn.memorySize),
        ...fn.environment,
        ...this.options.env,
      };
      return withEnv(env, async () => {
        const deadline = Date.now() + fn.timeoutSeconds * 1000;
        const context = {
          callbackWaitsForEmptyEventLoop: true,
          functionName: fn.functionName,
          functionVersion: '$LATEST',
          invokedFunctionArn: functionArn,
          memoryLimitInMB: String(fn.memorySize),
          awsRequestId: requestId,
          logGroupName: `/aws/lambda/${fn.functionName}`,
          logStreamName: `local/[$LATEST]${requestId.replace(/-/g, '')}`,
          getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
        };
        try {
          const value = await callHandler(loadHandler(fn), structuredClone(event), context);
          return value === undefined ? null : JSON.parse(JSON.stringify(value));
        } catch (err) {
          throw lambdaError(err);
        }
      });
    });
  }

  private putEvents(input: any): any {
    const entries = input?.Entries;
    if (!Array.isArray(entries) || entries.length < 1 || entries.length > 10) {
      throw new TaskError('EventBridge.ValidationException', 'Entries must hold 1 to 10 entries');
    }
    const ids: Array<{ EventId: string }> = [];
    for (const entry of entries) {
      if (typeof entry?.Source !== 'string' || typeof entry?.DetailType !== 'string' || entry?.Detail === undefined) {
        throw new TaskError('EventBridge.ValidationException', 'each entry needs Source, DetailType and Detail');
      }
      let detail = entry.Detail;
      if (typeof detail === 'string') {
        try {
          detail = JSON.parse(detail);
        } catch {
          throw new TaskError('EventBridge.ValidationException', 'Detail is not JSON');
        }
      }
      this.events.push({
        source: entry.Source,
        detailType: entry.DetailType,
        detail,
        ...(entry.EventBusName === undefined ? {} : { eventBusName: String(entry.EventBusName) }),
      });
      ids.push({ EventId: randomUUID() });
    }
    return { Entries: ids, FailedEntryCount: 0 };
  }

  private publish(input: any): any {
    if (typeof input?.TopicArn !== 'string' || input?.Message === undefined) {
      throw new TaskError('SNS.InvalidParameterException', 'TopicArn and Message are required');
    }
    const message = typeof input.Message === 'string' ? input.Message : JSON.stringify(input.Message);
    this.messages.push({ topicArn: input.TopicArn, message, ...(input.Subject === undefined ? {} : { subject: String(input.Subject) }) });
    const requestId = randomUUID();
    return {
      MessageId: randomUUID(),
      SdkHttpMetadata: { HttpStatusCode: 200 },
      SdkResponseMetadata: { RequestId: requestId },
    };
  }

  private async callSdk(service: string, action: string, params: any): Promise<any> {
    const env = this.options.env ?? {};
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const sdk = require(`@aws-sdk/client-${service}`);
    const pascal = action.charAt(0).toUpperCase() + action.slice(1);
    const Command = sdk[`${pascal}Command`];
    const Client = Object.entries(sdk).find(([key, value]) => key.toLowerCase() === `${service}client` && typeof value === 'function')?.[1] as any;
    const serviceName = service.charAt(0).toUpperCase() + service.slice(1);
    if (typeof Command !== 'function' || typeof Client !== 'function') {
      throw new TerminalError('States.Runtime', `no ${pascal}Command in @aws-sdk/client-${service}`);
    }
    const endpoint = env[`AWS_ENDPOINT_URL_${service.toUpperCase()}`] ?? env.AWS_ENDPOINT_URL;
    const client = new Client({
      region: env.AWS_REGION ?? this.region,
      ...(endpoint ? { endpoint } : {}),
      ...(service === 's3' && endpoint ? { forcePathStyle: true } : {}),
      ...(env.AWS_ACCESS_KEY_ID && env.AWS_SECRET_ACCESS_KEY
        ? { credentials: { accessKeyId: env.AWS_ACCESS_KEY_ID, secretAccessKey: env.AWS_SECRET_ACCESS_KEY } }
        : {}),
    });
    try {
      const { $metadata: _metadata, ...output } = await client.send(new Command(params ?? {}));
      if (output.Body && typeof output.Body.transformToString === 'function') output.Body = await output.Body.transformToString();
      return JSON.parse(JSON.stringify(output));
    } catch (err: any) {
      const name = String(err?.name ?? 'Error');
      throw new TaskError(`${serviceName}.${name.endsWith('Exception') ? name : `${name}Exception`}`, String(err?.message ?? err));
    } finally {
      client.destroy();
    }
  }
}

/** One execution: the interpreter's run, its event log and its simulated time. */
class Execution implements LocalExecution {
  public readonly executionArn: string;
  public readonly stateMachineArn: string;
  public readonly startDate: Date;
  public readonly result: Promise<LocalExecutionResult>;
  public stopped = false;
  private readonly recorded: LocalExecutionEvent[] = [];
  private readonly taskInputs = new WeakMap<LocalExecutionEvent, any>();
  private readonly clock: VirtualClock;
  private readonly startMs: number;
  private readonly deadline: number;
  private timedOut = false;
  private final: LocalExecutionResult | undefined;
  private stopMs: number | undefined;
  private readonly run: { abort: () => void; result: Promise<any>; eventLogs: AsyncGenerator<any> };

  public constructor(
    private readonly workflow: LocalWorkflow,
    machine: LibraryStateMachine,
    options: LocalWorkflowOptions,
    public readonly name: string,
    public readonly input: any,
    runOptions: (exec: Execution) => any,
  ) {
    this.stateMachineArn = workflow.stateMachineArn;
    this.executionArn = `arn:${workflow.partition}:states:${workflow.region}:${workflow.accountId}:execution:${workflow.stateMachineName}:${name}`;
    this.clock = options.clock ?? new VirtualClock(Date.now());
    this.startMs = this.clock.now();
    this.startDate = new Date(this.startMs);
    this.deadline = workflow.timeoutSeconds === undefined ? Infinity : this.startMs + workflow.timeoutSeconds * 1000;
    const unsubscribe = this.clock.onAdvance((now) => {
      if (now >= this.deadline) this.timeOut();
    });
    this.run = machine.run(input, runOptions(this)) as any;
    const consumed = this.consume();
    this.result = this.settle(consumed).finally(unsubscribe);
  }

  public get events(): ReadonlyArray<LocalExecutionEvent> {
    return this.recorded;
  }

  public abort(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.run.abort();
  }

  public status(): 'RUNNING' | LocalExecutionResult['status'] {
    return this.final?.status ?? 'RUNNING';
  }

  public outcome(): LocalExecutionResult | undefined {
    return this.final;
  }

  public stopDate(): Date | undefined {
    return this.stopMs === undefined ? undefined : new Date(this.stopMs);
  }

  public statesEntered(): string[] {
    return this.recorded.filter((e) => e.type === 'StateEntered').map((e) => e.state!.name);
  }

  public transitions(): number {
    return this.recorded.filter((e) => e.type === 'StateEntered' || e.type === 'StateRetried').length;
  }

  public simulatedMs(): number {
    return (this.stopMs ?? Math.min(this.clock.now(), this.deadline)) - this.startMs;
  }

  public taskInputOf(event: LocalExecutionEvent): any {
    return this.taskInputs.get(event);
  }

  /** Remembers the input of the latest attempt of a Task state. */
  public noteTaskInput(stateName: string, input: any): void {
    for (let i = this.recorded.length - 1; i >= 0; i--) {
      const event = this.recorded[i];
      if ((event.type === 'StateEntered' || event.type === 'StateRetried') && event.state?.name === stateName) {
        this.taskInputs.set(event, structuredClone(input));
        return;
      }
    }
  }

  /** A Wait state: advances the clock by what Step Functions would wait, then passes its input on. */
  public async wait(stateName: string, state: any, input: any): Promise<any> {
    await drain();
    if (this.stopped) return input;
    const context = {
      Execution: { Id: this.executionArn, Name: this.name, StartTime: this.startDate.toISOString(), Input: this.input },
      StateMachine: { Id: this.stateMachineArn, Name: this.workflow.stateMachineName },
    };
    let ms: number;
    if (state.Seconds !== undefined) {
      ms = state.Seconds * 1000;
    } else if (state.SecondsPath !== undefined) {
      const seconds = referencePath(state.SecondsPath, input, context);
      if (!Number.isInteger(seconds) || seconds < 0) {
        throw new TerminalError('States.Runtime', `${stateName}: SecondsPath ${state.SecondsPath} gives ${JSON.stringify(seconds)}, not a non-negative integer`);
      }
      ms = seconds * 1000;
    } else {
      const timestamp = state.Timestamp ?? referencePath(state.TimestampPath, input, context);
      if (typeof timestamp !== 'string' || !RFC3339.test(timestamp)) {
        throw new TerminalError('States.Runtime', `${stateName}: ${JSON.stringify(timestamp)} is not an RFC 3339 timestamp`);
      }
      ms = Math.max(0, Date.parse(timestamp) - this.clock.now());
    }
    this.advance(ms);
    return input;
  }

  /** Advances the clock by `ms`, but not past the execution's deadline. */
  private advance(ms: number): void {
    if (this.stopped || ms <= 0) return;
    const room = this.deadline - this.clock.now();
    this.clock.advance(Math.max(0, Math.min(ms, room)));
  }

  private timeOut(): void {
    if (this.stopped) return;
    this.timedOut = true;
    this.stopped = true;
    this.run.abort();
  }

  private async consume(): Promise<void> {
    for await (const event of this.run.eventLogs) {
      if (event.type === 'StateRetried') {
        this.advance(retryDelayMs(event.retry.retrier, event.retry.attempt));
        // The execution timed out during the back-off: the retry never happened.
        if (this.timedOut) continue;
      }
      let recorded: LocalExecutionEvent = { ...event, simulatedTime: Math.min(this.clock.now(), this.deadline) };
      if (recorded.state && this.workflow.stateType(recorded.state.name) === 'Wait') {
        recorded = { ...recorded, state: { ...recorded.state, type: 'Wait' } };
      }
      if (recorded.type === 'ExecutionAborted' && this.timedOut) recorded = { ...recorded, type: 'ExecutionTimeout' };
      this.recorded.push(recorded);
    }
  }

  private async settle(consumed: Promise<void>): Promise<LocalExecutionResult> {
    let output: any;
    let failure: any;
    let aborted = false;
    try {
      output = await this.run.result;
    } catch (err: any) {
      if (err?.name === 'ExecutionAbortedError') aborted = true;
      else if (err?.name === 'ExecutionError') failure = err;
      else throw err;
    }
    await consumed;
    let result: LocalExecutionResult;
    if (this.timedOut) result = { status: 'TIMED_OUT' };
    else if (aborted) result = { status: 'ABORTED' };
    else if (failure) result = this.failure(failure.cause);
    else result = { status: 'SUCCEEDED', output };
    this.stopped = true;
    this.stopMs = this.timedOut ? this.deadline : this.clock.now();
    this.final = result;
    return result;
  }

  /** The error and cause of a failed execution; a Fail state without Error or Cause gives none. */
  private failure(error: any): LocalExecutionResult {
    const last = [...this.recorded].reverse().find((e) => e.type === 'StateEntered');
    const state = last?.state ? this.workflow.stateDefinition(last.state.name) : undefined;
    const fromFail = state?.Type === 'Fail';
    const name = fromFail && state.Error === undefined && state.ErrorPath === undefined ? undefined : error?.name;
    const cause = fromFail && state.Cause === undefined && state.CausePath === undefined ? undefined : error?.message;
    return {
      status: 'FAILED',
      ...(typeof name === 'string' ? { error: name } : {}),
      ...(typeof cause === 'string' ? { cause } : {}),
    };
  }
}

/** The back-off before retry number `attempt` (1-based) of a retrier, without jitter. */
export function retryDelayMs(retrier: { IntervalSeconds?: number; BackoffRate?: number; MaxDelaySeconds?: number }, attempt: number): number {
  const interval = retrier.IntervalSeconds ?? 1;
  const rate = retrier.BackoffRate ?? 2;
  let seconds = interval * Math.pow(rate, attempt - 1);
  if (retrier.MaxDelaySeconds !== undefined) seconds = Math.min(seconds, retrier.MaxDelaySeconds);
  return seconds * 1000;
}

const RFC3339 = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/;

/** Evaluates a reference path (`$.a.b`, `$['a'][0]`, `$$.Execution.Input.x`). */
export function referencePath(expression: string, input: any, context: any): any {
  let rest: string;
  let value: any;
  if (expression.startsWith('$$')) {
    value = context;
    rest = expression.slice(2);
  } else if (expression.startsWith('$')) {
    value = input;
    rest = expression.slice(1);
  } else {
    throw new TerminalError('States.Runtime', `invalid path ${expression}`);
  }
  const step = /^(?:\.([^.[\]]+)|\['([^']*)'\]|\[(\d+)\])/;
  while (rest.length > 0) {
    const m = step.exec(rest);
    if (!m) throw new TerminalError('States.Runtime', `unsupported path ${expression}`);
    const key = m[1] ?? m[2] ?? Number(m[3]);
    if (value === null || typeof value !== 'object' || !Object.prototype.hasOwnProperty.call(value, key)) {
      throw new TerminalError('States.Runtime', `path ${expression} does not point to a value`);
    }
    value = value[key];
    rest = rest.slice(m[0].length);
  }
  return value;
}

function checkedPayload(value: any): any {
  const bytes = Buffer.byteLength(JSON.stringify(value ?? null), 'utf8');
  if (bytes > MAX_PAYLOAD_BYTES) {
    throw new TerminalError('States.DataLimitExceeded', `the task result has ${bytes} bytes, more than ${MAX_PAYLOAD_BYTES}`);
  }
  return value;
}

/** The error Step Functions sees when a function throws: named by errorType, caused by the Lambda error payload. */
function lambdaError(err: unknown): TaskError {
  const e = err as any;
  const isError = utilTypes.isNativeError(err) || (e !== null && typeof e === 'object' && typeof e.name === 'string' && typeof e.message === 'string');
  const errorType = isError ? String(e.name) : typeof err;
  const errorMessage = isError ? String(e.message) : String(err);
  const trace = isError && typeof e.stack === 'string' ? e.stack.split('\n') : [];
  return new TaskError(errorType, JSON.stringify({ errorType, errorMessage, trace }));
}

function callHandler(handler: (...args: any[]) => any, event: any, context: any): Promise<any> {
  if (handler.length >= 3) {
    return new Promise((resolve, reject) => {
      const returned = handler(event, context, (err: unknown, value: unknown) => (err ? reject(err) : resolve(value)));
      if (returned && typeof returned.then === 'function') returned.then(resolve, reject);
    });
  }
  return Promise.resolve().then(() => handler(event, context));
}

/** The handler function of a function's Handler setting (`dir/file.export.nested`). */
function loadHandler(fn: LocalFunction): (...args: any[]) => any {
  const slash = fn.handler.lastIndexOf('/');
  const dot = fn.handler.indexOf('.', slash + 1);
  if (dot < 0) throw namedError('Runtime.MalformedHandlerName', `Bad handler ${fn.handler}: missing module name`);
  const modulePath = path.join(fn.assetDir, fn.handler.slice(0, dot));
  const file = ['.js', '.cjs'].map((ext) => modulePath + ext).find((f) => fs.existsSync(f));
  if (!file) {
    const esm = fs.existsSync(`${modulePath}.mjs`) ? ' (ES module handlers are not supported here)' : '';
    throw namedError('Runtime.ImportModuleError', `Cannot find module ${modulePath}${esm}`);
  }
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  let value: any = require(file);
  for (const key of fn.handler.slice(dot + 1).split('.')) value = value?.[key];
  if (typeof value !== 'function') throw namedError('Runtime.HandlerNotFound', `${fn.handler} is undefined or not exported`);
  return value;
}

function namedError(name: string, message: string): Error {
  const err = new Error(message);
  err.name = name;
  return err;
}

/** Staged assets by S3 object key, from the stack's asset manifests. */
function assetIndex(files: Array<string | undefined>): Map<string, { path: string; packaging: string }> {
  const index = new Map<string, { path: string; packaging: string }>();
  for (const file of files) {
    if (!file || !file.endsWith('.assets.json') || !fs.existsSync(file)) continue;
    const manifest = JSON.parse(fs.readFileSync(file, 'utf8'));
    for (const entry of Object.values<any>(manifest.files ?? {})) {
      if (typeof entry?.source?.path !== 'string') continue;
      const staged = { path: path.resolve(path.dirname(file), entry.source.path), packaging: String(entry.source.packaging ?? 'file') };
      for (const destination of Object.values<any>(entry.destinations ?? {})) {
        if (typeof destination?.objectKey === 'string') index.set(destination.objectKey, staged);
      }
    }
  }
  return index;
}

function loadFunctions(
  template: any,
  resolver: CfnResolver,
  assets: Map<string, { path: string; packaging: string }>,
  assemblyDir: string,
): Record<string, LocalFunction> {
  const functions: Record<string, LocalFunction> = {};
  for (const [logicalId, resource] of Object.entries<any>(template.Resources ?? {})) {
    if (resource?.Type !== 'AWS::Lambda::Function') continue;
    const p = resource.Properties ?? {};
    const arn = resolver.getAtt(logicalId, 'Arn');
    const environment: Record<string, string> = {};
    for (const [key, value] of Object.entries<any>(resolver.resolve(p.Environment?.Variables ?? {}))) environment[key] = String(value);
    let assetDir = '';
    let problem: string | undefined;
    const runtime = String(resolver.resolve(p.Runtime ?? ''));
    const handler = String(resolver.resolve(p.Handler ?? ''));
    const code = p.Code ?? {};
    if (!runtime.startsWith('nodejs')) {
      problem = `runtime ${runtime || '(none)'} is not Node.js`;
    } else if (code.ZipFile !== undefined) {
      assetDir = path.join(assemblyDir, 'local-sfn-inline', logicalId);
      fs.mkdirSync(assetDir, { recursive: true });
      const moduleName = handler.slice(0, handler.indexOf('.'));
      fs.writeFileSync(path.join(assetDir, `${moduleName}.js`), String(resolver.resolve(code.ZipFile)));
    } else if (code.S3Key !== undefined) {
      const key = String(resolver.resolve(code.S3Key));
      const staged = assets.get(key);
      if (!staged) problem = `its code ${key} is not an asset of the assembly`;
      else if (!fs.existsSync(staged.path) || !fs.statSync(staged.path).isDirectory()) problem = `its asset ${staged.path} is not a staged directory`;
      else assetDir = staged.path;
    } else {
      problem = 'its code is neither an asset nor inline';
    }
    functions[arn] = {
      logicalId,
      handler,
      assetDir,
      environment,
      functionName: resolver.physicalName(logicalId),
      timeoutSeconds: Number(resolver.resolve(p.Timeout ?? 3)),
      memorySize: Number(resolver.resolve(p.MemorySize ?? 128)),
      ...(problem === undefined ? {} : { problem }),
    };
  }
  return functions;
}

function selectStateMachine(stack: cdk.Stack, template: any, selector: string | undefined): string {
  const ids = Object.entries<any>(template.Resources ?? {})
    .filter(([, r]) => r?.Type === 'AWS::StepFunctions::StateMachine')
    .map(([id]) => id);
  let chosen = ids;
  if (selector !== undefined) {
    const byPath = stack.node.findAll()
      .filter((c): c is cdk.CfnResource => cdk.CfnResource.isCfnResource(c) && c.cfnResourceType === 'AWS::StepFunctions::StateMachine')
      .filter((c) => c.node.path === selector || c.node.scope?.node.path === selector)
      .map((c) => stack.resolve(c.logicalId) as string);
    chosen = byPath.length > 0 ? byPath : ids.filter((id) => id.includes(selector));
  }
  if (chosen.length !== 1) {
    throw new Error(`expected one state machine${selector === undefined ? '' : ` matching '${selector}'`}, found ${chosen.length} among: ${ids.join(', ') || '(none)'}`);
  }
  return chosen[0];
}

function readDefinition(properties: any, resolver: CfnResolver, logicalId: string): any {
  const substitutions: Record<string, unknown> = resolver.resolve(properties.DefinitionSubstitutions ?? {});
  const substitute = (text: string) => text.replace(/\$\{([^}]+)\}/g, (match, key: string) =>
    Object.prototype.hasOwnProperty.call(substitutions, key) ? String(substitutions[key]) : match);
  let definition: any;
  if (properties.DefinitionString !== undefined) {
    const text = resolver.resolve(properties.DefinitionString);
    if (typeof text !== 'string') throw new Error(`${logicalId}: DefinitionString does not resolve to a string`);
    definition = JSON.parse(substitute(text));
  } else if (properties.Definition !== undefined) {
    definition = mapStrings(resolver.resolve(properties.Definition), substitute);
  } else {
    throw new Error(`${logicalId}: only DefinitionString and Definition can be read (not DefinitionS3Location)`);
  }
  if (definition === null || typeof definition !== 'object' || typeof definition.StartAt !== 'string' || typeof definition.States !== 'object') {
    throw new Error(`${logicalId}: the definition has no StartAt or States`);
  }
  return definition;
}

function mapStrings(value: any, fn: (text: string) => string): any {
  if (typeof value === 'string') return fn(value);
  if (Array.isArray(value)) return value.map((v) => mapStrings(v, fn));
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, mapStrings(v, fn)]));
  }
  return value;
}

/** Every state of a definition, nested ones included; state names must be unique. */
function collectStates(definition: any, out: Map<string, any>): void {
  for (const [name, state] of Object.entries<any>(definition?.States ?? {})) {
    if (out.has(name)) throw new Error(`the state name ${name} is used twice`);
    out.set(name, state);
    if (state?.Type === 'Parallel') for (const branch of state.Branches ?? []) collectStates(branch, out);
    if (state?.Type === 'Map') collectStates(state.ItemProcessor ?? state.Iterator, out);
  }
}

/**
 * The definition the interpreter runs: no TimeoutSeconds (the harness measures it in simulated
 * time), Wait states as local tasks (the harness advances the clock), and `$$.Execution.StartTime`
 * read from the simulated start time.
 */
function executableDefinition(definition: any): any {
  const copy = structuredClone(definition);
  delete copy.TimeoutSeconds;
  const rewrite = (machine: any) => {
    for (const [name, state] of Object.entries<any>(machine?.States ?? {})) {
      if (state?.Type === 'Wait') {
        const task: any = { Type: 'Task', Resource: WAIT_RESOURCE, TimeoutSeconds: REAL_TASK_TIMEOUT_SECONDS };
        for (const key of ['Comment', 'InputPath', 'OutputPath', 'Next', 'End']) if (key in state) task[key] = state[key];
        machine.States[name] = task;
      }
      if (state?.Type === 'Task') {
        delete state.TimeoutSecondsPath;
        delete state.HeartbeatSecondsPath;
        state.TimeoutSeconds = REAL_TASK_TIMEOUT_SECONDS;
      }
      if (state?.Type === 'Parallel') for (const branch of state.Branches ?? []) rewrite(branch);
      if (state?.Type === 'Map') rewrite(state.ItemProcessor ?? state.Iterator);
    }
  };
  rewrite(copy);
  return mapStrings(copy, (text) => text.replace(/\$\$\.Execution\.StartTime\b/g, `$$$$.Execution.${START_TIME_KEY}`));
}
