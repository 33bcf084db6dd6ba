/**
 * The local AWS of the workflow tests in one call: a local S3 (s3rver), the local EC2 VM
 * Import/Export simulator, a local EventBridge PutEvents endpoint and a {@link LocalWorkflow} of a
 * synthesized stack, wired together with one {@link VirtualClock}, so that the bundled handlers,
 * the simulator's tasks and the state machine's waits all live in the same simulated time. The
 * functions reach all three servers through the `AWS_ENDPOINT_URL_*` variables of {@link LocalAws.env}.
 *
 * What it adds to the parts it starts:
 * - the buckets named in `buckets` exist in the local S3, and the stack's buckets given there get
 *   those names as their physical names (so the functions' environment and the definition name
 *   the local buckets);
 * - the `aws-sdk:s3:getBucketEncryption` task is answered from a table the test can change
 *   ({@link LocalAws.setBucketEncryption}), because s3rver does not implement it (it answers 501
 *   NotImplemented); every bucket starts with SSE-S3 (AES256), as S3 gives every new bucket;
 * - {@link LocalAws.deliverEvent} plays EventBridge: it matches an event against the
 *   `AWS::Events::Rule`s of a stack and delivers it to their targets (the staged bundle of a
 *   Lambda target, run as Lambda would, or a new execution of a state machine loaded here);
 * - {@link executionStatusChangeEvent} builds the `Step Functions Execution Status Change`
 *   event that Step Functions sends when an execution stops.
 *
 * Limits: an event delivered to a function runs in this process with the function's environment
 * in `process.env`, so deliver events only while no execution is inside a Lambda task (the
 * harness runs tasks one at a time, but it does not know of this delivery). Event patterns may
 * use exact values, `prefix`, `exists` and `anything-but` (a value or a list); other content
 * filters throw. Rule targets with an `InputTransformer` throw.
 */
import { randomUUID } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { HeadBucketCommand } from '@aws-sdk/client-s3';
import * as cdk from 'aws-cdk-lib';
import type { IConstruct } from 'constructs';
import { CfnResolver } from './cfn-resolve';
import { startLocalEc2, type LocalEc2, type LocalEc2Options } from './local-ec2';
import { startLocalEvents, type LocalEvents } from './local-events';
import { startLocalS3, withEnv, type LocalS3 } from './local-s3';
import { LocalWorkflow, referencePath, type LocalExecution, type LocalFunction } from './local-sfn';
import { VirtualClock } from './virtual-clock';

/** A bucket's default encryption, as GetBucketEncryption answers it. */
export interface BucketEncryption {
  readonly Rules: ReadonlyArray<{
    readonly ApplyServerSideEncryptionByDefault?: { readonly SSEAlgorithm: string; readonly KMSMasterKeyID?: string };
    readonly BucketKeyEnabled?: boolean;
  }>;
}

/** The default encryption S3 gives every new bucket: SSE-S3. */
export const SSE_S3: BucketEncryption = { Rules: [{ ApplyServerSideEncryptionByDefault: { SSEAlgorithm: 'AES256' }, BucketKeyEnabled: false }] };

/** Which state machine to load, and from which stack. */
export interface LocalWorkflowSelection {
  /** The stack (any stack of an App; its functions get the same local endpoints). @default the stack of {@link LocalAwsOptions} */
  readonly stack?: cdk.Stack;
  /** The construct path of the state machine (or of its parent), or part of its logical id. @default the only one of the stack */
  readonly stateMachine?: string;
}

/** Options of {@link startLocalAws}. */
export interface LocalAwsOptions extends LocalWorkflowSelection {
  /** The stack whose state machine runs. */
  readonly stack: cdk.Stack;
  /**
   * The buckets of the local S3, by physical name. Give a bucket of a stack (an `s3.IBucket`, a
   * construct whose default child is its `AWS::S3::Bucket`, or the `CfnBucket` itself) to make that
   * the bucket's physical name; `undefined` for a bucket outside the stacks.
   */
  readonly buckets?: Record<string, IConstruct | undefined>;
  /** Simulated time shared by the simulator and the workflows. @default a new VirtualClock at its default epoch */
  readonly clock?: VirtualClock;
  /** Options of the EC2 simulator (its S3 and clock are the ones started here). @default - the stack's Region, the simulator's defaults otherwise */
  readonly ec2?: Omit<LocalEc2Options, 's3' | 'clock'>;
  /** More environment for the functions (added after the local endpoints and credentials). */
  readonly env?: Record<string, string>;
  /** More physical names (logical id -> name), for resources other than the buckets. */
  readonly physicalNames?: Record<string, string>;
  /** More handlers for Task resources (see {@link LocalWorkflow}); they win over the GetBucketEncryption answer. */
  readonly serviceHandlers?: Record<string, (params: any) => Promise<any>>;
}

/** What delivering an event to one rule target did. */
export interface DeliveredEvent {
  /** The logical id of the rule. */
  readonly rule: string;
  /** The target's ARN. */
  readonly target: string;
  /** A Lambda target: what the function returned. */
  readonly output?: any;
  /** A Lambda target: the error the function threw (name and message, as Lambda reports it). */
  readonly error?: { readonly errorType: string; readonly errorMessage: string };
  /** A state machine target: the execution it started. */
  readonly execution?: LocalExecution;
}

/** An EventBridge event, as targets receive it. */
export interface EventBridgeEvent {
  readonly 'version': string;
  readonly 'id': string;
  readonly 'detail-type': string;
  readonly 'source': string;
  readonly 'account': string;
  readonly 'time': string;
  readonly 'region': string;
  readonly 'resources': string[];
  readonly 'detail': any;
}

/** The local AWS: S3, EC2 and the workflows, on one clock. */
export interface LocalAws {
  readonly clock: VirtualClock;
  readonly s3: LocalS3;
  readonly ec2: LocalEc2;
  /** The events the functions put on a bus themselves (PutEvents); the state machines' `events:putEvents` tasks are in {@link LocalWorkflow.events}. */
  readonly events: LocalEvents;
  /** The state machine of {@link LocalAwsOptions}. */
  readonly workflow: LocalWorkflow;
  /** The environment the functions get: the local S3, EC2 and EventBridge endpoints, Region, credentials, and `env`. */
  readonly env: Record<string, string>;
  /** Loads another state machine (of the same stack or another) against the same local AWS. */
  loadWorkflow(selection: LocalWorkflowSelection): Promise<LocalWorkflow>;
  /** Sets what GetBucketEncryption answers for `bucket`; `undefined`: no default encryption (the service's ServerSideEncryptionConfigurationNotFoundError). */
  setBucketEncryption(bucket: string, encryption: BucketEncryption | undefined): void;
  /** Delivers `event` to the targets of the stack's enabled rules that match it (default: the stack of {@link LocalAwsOptions}). */
  deliverEvent(event: EventBridgeEvent, stack?: cdk.Stack): Promise<DeliveredEvent[]>;
  /** Stops the servers and removes their files. */
  close(): Promise<void>;
}

/** The resource of the GetBucketEncryption SDK integration, in each partition. */
const GET_BUCKET_ENCRYPTION = ['aws', 'aws-cn', 'aws-us-gov'].map((p) => `arn:${p}:states:::aws-sdk:s3:getBucketEncryption`);

/** Starts the local S3 with the buckets, the EC2 simulator and the EventBridge endpoint, and loads the stack's state machine. */
export async function startLocalAws(options: LocalAwsOptions): Promise<LocalAws> {
  const clock = options.clock ?? new VirtualClock();
  const bucketNames = Object.keys(options.buckets ?? {});
  const s3 = await startLocalS3(bucketNames);
  let ec2: LocalEc2 | undefined;
  let events: LocalEvents | undefined;
  const stop = async () => {
    await ec2?.close();
    await events?.close();
    await s3.close();
  };
  try {
    const region = cdk.Token.isUnresolved(options.stack.region) ? undefined : options.stack.region;
    ec2 = await startLocalEc2({ region, ...options.ec2, s3: s3.client, clock });
    events = await startLocalEvents();
  } catch (err) {
    await stop();
    throw err;
  }
  // Each server's env names its endpoint; the Region and credentials are the same in all three.
  const env: Record<string, string> = { ...events.env, ...s3.env, ...ec2.env, ...options.env };
  const encryption = new Map<string, BucketEncryption | undefined>(bucketNames.map((b) => [b, SSE_S3]));

  const getBucketEncryption = async (params: any) => {
    const bucket = String(params?.Bucket ?? '');
    try {
      await s3.client.send(new HeadBucketCommand({ Bucket: bucket }));
    } catch {
      throw namedError('S3.NoSuchBucketException', `The specified bucket does not exist: ${bucket}`);
    }
    const config = encryption.has(bucket) ? encryption.get(bucket) : SSE_S3;
    if (!config) throw namedError('S3.ServerSideEncryptionConfigurationNotFoundErrorException', 'The server side encryption configuration was not found');
    return { ServerSideEncryptionConfiguration: structuredClone(config) };
  };
  const serviceHandlers: Record<string, (params: any) => Promise<any>> = {
    ...Object.fromEntries(GET_BUCKET_ENCRYPTION.map((r) => [r, getBucketEncryption])),
    ...options.serviceHandlers,
  };

  const loaded: LocalWorkflow[] = [];
  const loadWorkflow = async (selection: LocalWorkflowSelection): Promise<LocalWorkflow> => {
    const stack = selection.stack ?? options.stack;
    const workflow = await LocalWorkflow.fromStack({
      stack,
      stateMachine: selection.stateMachine,
      env,
      clock,
      physicalNames: physicalNamesFor(stack, options),
      serviceHandlers,
    });
    loaded.push(workflow);
    return workflow;
  };

  let workflow: LocalWorkflow;
  try {
    workflow = await loadWorkflow(options);
  } catch (err) {
    await stop();
    throw err;
  }

  return {
    clock,
    s3,
    ec2,
    events,
    workflow,
    env,
    loadWorkflow,
    setBucketEncryption(bucket, config) {
      encryption.set(bucket, config);
    },
    deliverEvent(event, stack = options.stack) {
      return deliver(event, stack, physicalNamesFor(stack, options), env, loaded);
    },
    close: stop,
  };
}

/**
 * The `Step Functions Execution Status Change` event Step Functions sends for `execution` (by
 * default with its current status; give `status` for the event of a status it has not reached).
 */
export function executionStatusChangeEvent(
  workflow: LocalWorkflow,
  execution: LocalExecution,
  status: string = execution.status(),
): EventBridgeEvent {
  const outcome = execution.outcome();
  const stop = execution.stopDate();
  return {
    'version': '0',
    'id': randomUUID(),
    'detail-type': 'Step Functions Execution Status Change',
    'source': 'aws.states',
    'account': workflow.accountId,
    'time': (stop ?? execution.startDate).toISOString().replace(/\.\d{3}Z$/, 'Z'),
    'region': workflow.region,
    'resources': [execution.executionArn],
    'detail': {
      executionArn: execution.executionArn,
      stateMachineArn: execution.stateMachineArn,
      name: execution.name,
      status,
      startDate: execution.startDate.getTime(),
      stopDate: stop === undefined ? null : stop.getTime(),
      input: JSON.stringify(execution.input),
      inputDetails: { included: true },
      output: outcome?.output === undefined ? null : JSON.stringify(outcome.output),
      outputDetails: outcome?.output === undefined ? null : { included: true },
      error: outcome?.error ?? null,
      cause: outcome?.cause ?? null,
    },
  };
}

/** Physical names of `stack`'s resources: its buckets named in `options.buckets`, then `options.physicalNames`. */
function physicalNamesFor(stack: cdk.Stack, options: LocalAwsOptions): Record<string, string> {
  const names: Record<string, string> = {};
  for (const [name, construct] of Object.entries(options.buckets ?? {})) {
    if (!construct) continue;
    const cfn = cfnResourceOf(construct);
    if (cdk.Stack.of(cfn) !== stack) continue;
    names[stack.resolve(cfn.logicalId)] = name;
  }
  return { ...names, ...options.physicalNames };
}

/** The CloudFormation resource behind a construct: itself, or its default child. */
function cfnResourceOf(construct: IConstruct): cdk.CfnResource {
  if (cdk.CfnResource.isCfnResource(construct)) return construct;
  const child = construct.node.defaultChild;
  if (child && cdk.CfnResource.isCfnResource(child)) return child;
  const bucket = (construct as { bucket?: IConstruct }).bucket;
  if (bucket && bucket !== construct) return cfnResourceOf(bucket);
  throw new Error(`${construct.node.path} is not a CloudFormation resource and has none as its default child`);
}

async function deliver(
  event: EventBridgeEvent,
  stack: cdk.Stack,
  physicalNames: Record<string, string>,
  env: Record<string, string>,
  loaded: readonly LocalWorkflow[],
): Promise<DeliveredEvent[]> {
  const stage = cdk.Stage.of(stack);
  if (!stage) throw new Error(`${stack.node.path} is not in an App`);
  const template = stage.synth().getStackArtifact(stack.artifactId).template;
  const concrete = (value: string) => (cdk.Token.isUnresolved(value) ? undefined : value);
  const resolver = new CfnResolver(template, {
    region: concrete(stack.region),
    accountId: concrete(stack.account),
    stackName: stack.stackName,
    physicalNames,
  });
  const workflows = loaded.filter((w) => w.region === resolver.region && w.accountId === resolver.accountId);
  const delivered: DeliveredEvent[] = [];
  for (const [logicalId, resource] of Object.entries<any>(template.Resources ?? {})) {
    if (resource?.Type !== 'AWS::Events::Rule' || (resource.Condition && !resolver.condition(resource.Condition))) continue;
    const props = resolver.resolve(resource.Properties ?? {});
    if ((props.State ?? 'ENABLED') !== 'ENABLED' || props.EventPattern === undefined) continue;
    const pattern = typeof props.EventPattern === 'string' ? JSON.parse(props.EventPattern) : props.EventPattern;
    if (!matches(pattern, event)) continue;
    for (const target of props.Targets ?? []) {
      const arn = String(target.Arn);
      const input = targetInput(target, event);
      const fn = workflows.map((w) => w.functions[arn]).find((f): f is LocalFunction => f !== undefined);
      if (fn) {
        delivered.push({ rule: logicalId, target: arn, ...(await invokeFunction(fn, arn, input, env, resolver.region)) });
        continue;
      }
      const machine = workflows.find((w) => w.stateMachineArn === arn);
      if (machine) {
        delivered.push({ rule: logicalId, target: arn, execution: machine.start(input) });
        continue;
      }
      throw new Error(`rule ${logicalId}: its target ${arn} is neither a function of a loaded workflow's stack nor a loaded state machine`);
    }
  }
  return delivered;
}

/** What a rule target receives: the event, or its `Input` or `InputPath`. */
function targetInput(target: any, event: EventBridgeEvent): any {
  if (target.InputTransformer !== undefined) throw new Error(`target ${target.Id}: InputTransformer is not supported here`);
  if (target.Input !== undefined) return typeof target.Input === 'string' ? JSON.parse(target.Input) : target.Input;
  if (target.InputPath !== undefined) return referencePath(String(target.InputPath), event, {});
  return event;
}

/** Runs a function's staged handler as an asynchronous Lambda invocation would. */
async function invokeFunction(
  fn: LocalFunction,
  arn: string,
  event: any,
  env: Record<string, string>,
  region: string,
): Promise<Pick<DeliveredEvent, 'output' | 'error'>> {
  if (fn.problem) throw new Error(`function ${fn.logicalId} cannot run locally: ${fn.problem}`);
  const dot = fn.handler.indexOf('.', fn.handler.lastIndexOf('/') + 1);
  const file = ['.js', '.cjs'].map((ext) => path.join(fn.assetDir, fn.handler.slice(0, dot)) + ext).find((f) => fs.existsSync(f));
  if (dot < 0 || !file) throw new Error(`function ${fn.logicalId}: no module for the handler ${fn.handler} in ${fn.assetDir}`);
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  let handler: any = require(file);
  for (const key of fn.handler.slice(dot + 1).split('.')) handler = handler?.[key];
  if (typeof handler !== 'function') throw new Error(`function ${fn.logicalId}: ${fn.handler} is not exported`);
  const requestId = randomUUID();
  const deadline = Date.now() + fn.timeoutSeconds * 1000;
  const context = {
    callbackWaitsForEmptyEventLoop: true,
    functionName: fn.functionName,
    functionVersion: '$LATEST',
    invokedFunctionArn: arn,
    memoryLimitInMB: String(fn.memorySize),
    awsRequestId: requestId,
    logGroupName: `/aws/lambda/${fn.functionName}`,
    logStreamName: `local/[$LATEST]${requestId.replace(/-/g, '')}`,
    getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
  };
  const lambdaEnv = {
    AWS_REGION: region,
    AWS_DEFAULT_REGION: region,
    AWS_LAMBDA_FUNCTION_NAME: fn.functionName,
    AWS_LAMBDA_FUNCTION_VERSION: '$LATEST',
    AWS_LAMBDA_FUNCTION_MEMORY_SIZE: String(fn.memorySize),
    ...fn.environment,
    ...env,
  };
  return withEnv(lambdaEnv, async () => {
    try {
      const value = await handler(structuredClone(event), context);
      return { output: value === undefined ? null : JSON.parse(JSON.stringify(value)) };
    } catch (err: any) {
      return { error: { errorType: String(err?.name ?? typeof err), errorMessage: String(err?.message ?? err) } };
    }
  });
}

/** Whether `event` matches an EventBridge event pattern. */
export function matches(pattern: any, event: any): boolean {
  if (pattern === null || typeof pattern !== 'object' || Array.isArray(pattern)) throw new Error(`an event pattern is an object, not ${JSON.stringify(pattern)}`);
  for (const [key, rule] of Object.entries<any>(pattern)) {
    const value = event === null || typeof event !== 'object' ? undefined : event[key];
    if (Array.isArray(rule)) {
      if (!rule.some((r) => matchesValue(r, value))) return false;
    } else if (rule !== null && typeof rule === 'object') {
      if (value === null || typeof value !== 'object' || Array.isArray(value) || !matches(rule, value)) return false;
    } else {
      throw new Error(`event pattern field ${key}: ${JSON.stringify(rule)} is neither a list nor an object`);
    }
  }
  return true;
}

/** Whether one element of a pattern's list matches a field (an array field matches when any element does). */
function matchesValue(rule: any, value: any): boolean {
  if (rule !== null && typeof rule === 'object') {
    const keys = Object.keys(rule);
    if (keys.length !== 1) throw new Error(`unsupported content filter ${JSON.stringify(rule)}`);
    const op = keys[0];
    const operand = rule[op];
    const values = Array.isArray(value) ? value : [value];
    switch (op) {
      case 'exists':
        return operand ? value !== undefined : value === undefined;
      case 'prefix':
        return values.some((v) => typeof v === 'string' && v.startsWith(String(operand)));
      case 'anything-but': {
        const excluded = Array.isArray(operand) ? operand : [operand];
        return value !== undefined && values.every((v) => !excluded.includes(v));
      }
      default:
        throw new Error(`unsupported content filter ${JSON.stringify(rule)}`);
    }
  }
  if (Array.isArray(value)) return value.includes(rule);
  return value === rule;
}

function namedError(name: string, message: string): Error {
  const err = new Error(message);
  err.name = name;
  return err;
}
