import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  DescribeExecutionCommand,
  GetExecutionHistoryCommand,
  HistoryEvent,
  ListExecutionsCommand,
  SFNClient,
  StartExecutionCommand,
  StopExecutionCommand,
} from '@aws-sdk/client-sfn';
import * as fc from 'fast-check';
import { CfnResolver, resolveCfn } from '../helpers/cfn-resolve';
import { startLocalS3 } from '../helpers/local-s3';
import { LocalExecution, LocalWorkflow, retryDelayMs } from '../helpers/local-sfn';
import { startLocalSfnApi } from '../helpers/local-sfn-api';
import { FLAKY_RETRY, LINGER_SECONDS, localSfnTestStack, LocalSfnTestStack, TIMEOUT_SECONDS } from '../helpers/local-sfn.test-stack';
import { VirtualClock } from '../helpers/virtual-clock';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const aslValidator: (definition: any, options?: any) => { isValid: boolean; errorsText: (sep?: string) => string } = require('asl-validator');

/** The functions of the test stack; the flaky one fails `failures` times per image, then answers. */
const HANDLER_CODE = `
const fs = require('node:fs');
const attempts = new Map();
class TransientError extends Error { constructor(m) { super(m); this.name = 'TransientError'; } }
class UnsupportedImage extends Error { constructor(m) { super(m); this.name = 'UnsupportedImage'; } }
exports.prepare = async (event, context) => ({
  ...event.state,
  prepared: {
    execution: event.execution,
    bucket: process.env.IMAGE_BUCKET,
    topic: process.env.ALERT_TOPIC,
    greeting: process.env.GREETING,
    endpoint: process.env.LOCAL_ENDPOINT,
    region: process.env.AWS_REGION,
    functionName: context.functionName,
    remainingMs: context.getRemainingTimeInMillis(),
  },
});
exports.reject = async (event) => { throw new UnsupportedImage(event.image + ' has no partition table'); };
exports.hold = async (event) => {
  while (!fs.existsSync(event.gate)) await new Promise((resolve) => setTimeout(resolve, 5));
  return 'released';
};
exports.flaky = async (event) => {
  const seen = attempts.get(event.image) || [];
  // The simulated time this attempt runs at, when the test shares its clock.
  seen.push(typeof globalThis.localSfnNow === 'function' ? globalThis.localSfnNow() : null);
  attempts.set(event.image, seen);
  if (seen.length <= event.failures) throw new TransientError('attempt ' + seen.length + ' failed');
  return { attempts: seen.length, seenAt: seen };
};
`;

const PHYSICAL = { bucket: 'local-sfn-images', topic: 'local-sfn-alerts' };
const ACCOUNT = '123456789012';
const REGION = 'us-east-1';

let dir: string;
let built: LocalSfnTestStack;
let workflow: LocalWorkflow;
let clock: VirtualClock;

function logicalIdOf(construct: { node: { defaultChild?: any } }): string {
  return built.stack.resolve(construct.node.defaultChild.logicalId);
}

/** Resolves when `exec` has entered `state`. */
async function entered(exec: LocalExecution, state: string): Promise<void> {
  while (!exec.statesEntered().includes(state)) await new Promise((resolve) => setTimeout(resolve, 5));
}

/** The back-off of the Flaky retrier before retry `n` (1-based), in ms. */
const flakyDelay = (n: number) => retryDelayMs({
  IntervalSeconds: FLAKY_RETRY.intervalSeconds,
  BackoffRate: FLAKY_RETRY.backoffRate,
  MaxDelaySeconds: FLAKY_RETRY.maxDelaySeconds,
}, n);

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'local-sfn-'));
  fs.mkdirSync(path.join(dir, 'code'));
  fs.writeFileSync(path.join(dir, 'code', 'index.js'), HANDLER_CODE);
  built = localSfnTestStack(path.join(dir, 'code'));
  clock = new VirtualClock();
  (globalThis as any).localSfnNow = () => clock.now();
  workflow = await LocalWorkflow.fromStack({
    stack: built.stack,
    stateMachine: 'LocalSfnTest/Workflow',
    clock,
    env: { LOCAL_ENDPOINT: 'http://127.0.0.1:9' },
    physicalNames: { [logicalIdOf(built.bucket)]: PHYSICAL.bucket, [logicalIdOf(built.topic)]: PHYSICAL.topic },
  });
});

afterAll(() => {
  delete (globalThis as any).localSfnNow;
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('loading a synthesized state machine', () => {
  test('the resolved definition is valid ASL with concrete ARNs, and tasks run the staged bundle', () => {
    // GIVEN the workflow loaded from the synthesized stack
    // WHEN the definition is read and validated
    const definition = workflow.definition;
    const { isValid, errorsText } = aslValidator(definition);

    // THEN it is valid, with no CloudFormation left in it
    expect(errorsText('\n')).toBe('');
    expect(isValid).toBe(true);
    expect(JSON.stringify(definition)).not.toMatch(/Fn::|"Ref"|\$\{Token/);
    expect(definition.TimeoutSeconds).toBe(TIMEOUT_SECONDS);
    // AND each Lambda task names a function of the stack by its ARN
    const prepareArn = `arn:aws:lambda:${REGION}:${ACCOUNT}:function:${workflow.functions[definition.States.Prepare.Resource].functionName}`;
    expect(definition.States.Prepare.Resource).toBe(prepareArn);
    expect(definition.States.Flaky.Parameters.FunctionName).toBe(
      Object.keys(workflow.functions).find((arn) => workflow.functions[arn].logicalId === logicalIdOf(built.functions.flaky)),
    );
    expect(definition.States.Notify.Parameters.TopicArn).toBe(`arn:aws:sns:${REGION}:${ACCOUNT}:${PHYSICAL.topic}`);
    // AND the functions run the asset staged in the assembly, not the source directory
    const prepare = workflow.functions[prepareArn];
    expect(prepare.handler).toBe('index.prepare');
    expect(path.resolve(prepare.assetDir)).not.toBe(path.resolve(dir, 'code'));
    expect(fs.readFileSync(path.join(prepare.assetDir, 'index.js'), 'utf8')).toBe(HANDLER_CODE);
    expect(prepare.environment).toEqual({
      IMAGE_BUCKET: PHYSICAL.bucket,
      ALERT_TOPIC: `arn:aws:sns:${REGION}:${ACCOUNT}:${PHYSICAL.topic}`,
      GREETING: 'hello',
    });
  });

  test('a stack with two state machines needs a selector: the construct path or part of the logical id', async () => {
    // GIVEN the test stack, which has two state machines
    // WHEN no selector is given, THEN loading fails naming both
    const otherId = logicalIdOf(built.other);
    const workflowId = logicalIdOf(built.stateMachine);
    await expect(LocalWorkflow.fromStack({ stack: built.stack })).rejects.toThrow(new RegExp(`found 2 among: .*(${otherId}|${workflowId})`));
    // WHEN selected by part of the logical id, THEN that one is loaded
    const other = await LocalWorkflow.fromStack({ stack: built.stack, stateMachine: otherId.slice(0, 5) });
    expect(other.definition.StartAt).toBe('Echo');
    // AND its ARN is built from its derived physical name
    expect(other.stateMachineArn).toBe(`arn:aws:states:${REGION}:${ACCOUNT}:stateMachine:${other.stateMachineName}`);
    expect(other.stateMachineName).toContain(otherId);
  });

  test('aws-sdk tasks call the real SDK client at the endpoints in env, unless a service handler takes them', async () => {
    // GIVEN a local S3 holding two images, and the state machine that lists the bucket
    const s3 = await startLocalS3([PHYSICAL.bucket]);
    const load = (bucket: string, serviceHandlers?: Record<string, (params: any) => Promise<any>>) => LocalWorkflow.fromStack({
      stack: built.stack,
      stateMachine: logicalIdOf(built.other),
      env: s3.env,
      physicalNames: { [logicalIdOf(built.bucket)]: bucket },
      serviceHandlers,
    });
    try {
      await s3.put(PHYSICAL.bucket, 'a.vmdk', 'a');
      await s3.put(PHYSICAL.bucket, 'b.vhd', 'b');

      // WHEN it runs, THEN the task's result is the service's answer
      const listed = await (await load(PHYSICAL.bucket)).start({ a: 1 }).result;
      expect(listed).toEqual({ status: 'SUCCEEDED', output: { a: 1, listing: { keys: ['a.vmdk', 'b.vhd'] } } });

      // WHEN the bucket does not exist, THEN the error is named as Step Functions names SDK errors
      const missing = await (await load('local-sfn-missing')).start({}).result;
      expect(missing).toMatchObject({ status: 'FAILED', error: 'S3.NoSuchBucketException' });

      // WHEN a service handler matches the resource, THEN it answers instead, with the task's parameters
      const calls: any[] = [];
      const handled = await load(PHYSICAL.bucket, {
        'arn:aws:states:::aws-sdk:s3:': async (params) => {
          calls.push(params);
          return { Contents: [{ Key: 'from-handler' }] };
        },
      });
      const result = await handled.start({}).result;
      expect(calls).toEqual([{ Bucket: PHYSICAL.bucket }]);
      expect(result.output.listing).toEqual({ keys: ['from-handler'] });
    } finally {
      await s3.close();
    }
  });
});

describe('executions', () => {
  test('waits and retries advance the clock by exactly what Step Functions waits, and transitions are counted', async () => {
    // GIVEN an image whose conversion fails three times before it succeeds
    const start = clock.now();
    const input = { image: 'disk-retried.vmdk', mode: 'convert', waitSeconds: 90, failures: 3 };

    // WHEN it runs
    const exec = workflow.start(input, { name: 'retried' });
    const result = await exec.result;

    // THEN it succeeds with each step's output
    expect(result.status).toBe('SUCCEEDED');
    expect(result.output.flaky.attempts).toBe(4);
    expect(result.output.announced).toMatchObject({ FailedEntryCount: 0, Entries: [{ EventId: expect.any(String) }] });
    expect(result.output.prepared).toEqual({
      execution: { id: exec.executionArn, startTime: new Date(start).toISOString() },
      bucket: PHYSICAL.bucket,
      topic: `arn:aws:sns:${REGION}:${ACCOUNT}:${PHYSICAL.topic}`,
      greeting: 'hello',
      endpoint: 'http://127.0.0.1:9',
      region: REGION,
      functionName: Object.values(workflow.functions).find((f) => f.logicalId === logicalIdOf(built.functions.prepare))!.functionName,
      remainingMs: expect.any(Number),
    });
    expect(result.output.prepared.remainingMs).toBeGreaterThan(0);
    expect(result.output.prepared.remainingMs).toBeLessThanOrEqual(30_000);
    // AND the function's environment was restored after the call
    expect(process.env.IMAGE_BUCKET).toBeUndefined();
    expect(process.env.LOCAL_ENDPOINT).toBeUndefined();
    // AND the states, the transitions and the simulated time are as computed by hand:
    // Pause waits 90 s, then three retries back off 4 s, min(12, 10) s and min(36, 10) s.
    expect(exec.statesEntered()).toEqual(['Prepare', 'Pause', 'Route', 'Flaky', 'Announce', 'Done']);
    expect(exec.transitions()).toBe(6 + 3);
    expect([1, 2, 3].map(flakyDelay)).toEqual([4_000, 10_000, 10_000]);
    const expected = 90_000 + 4_000 + 10_000 + 10_000;
    expect(exec.simulatedMs()).toBe(expected);
    expect(clock.now() - start).toBe(expected);
    // AND every event carries its simulated time
    const at = (type: string, name: string) => exec.events
      .filter((e) => e.type === type && e.state?.name === name)
      .map((e) => e.simulatedTime - start);
    expect(at('StateEntered', 'Pause')).toEqual([0]);
    expect(at('StateExited', 'Pause')).toEqual([90_000]);
    expect(at('StateRetried', 'Flaky')).toEqual([94_000, 104_000, 114_000]);
    expect(at('StateEntered', 'Announce')).toEqual([expected]);
    // AND each attempt of the function ran only after the clock had moved by the back-off before it
    expect(result.output.flaky.seenAt.map((t: number) => t - start)).toEqual([90_000, 94_000, 104_000, 114_000]);
    // AND the retried errors keep the name the function gave them, as Lambda reports it
    const failures = exec.events.filter((e) => e.type === 'StateFailed');
    expect(failures.map((e) => e.Error)).toEqual(['TransientError', 'TransientError', 'TransientError']);
    expect(JSON.parse(failures[2].Cause as string)).toMatchObject({ errorType: 'TransientError', errorMessage: 'attempt 3 failed' });
    // AND the event was put on the bus
    expect(workflow.events).toContainEqual({
      source: 'vmie.local-sfn-test',
      detailType: 'Image ready',
      detail: { image: 'disk-retried.vmdk', attempts: 4 },
    });
  });

  test('a Wait until a timestamp waits until that simulated time', async () => {
    // GIVEN an execution that must not convert before 1000 s from now (simulated)
    const start = clock.now();
    const notBefore = new Date(start + 1_000_000).toISOString();

    // WHEN it runs with one transient failure
    const exec = workflow.start({ image: 'disk-until.vmdk', mode: 'convert', waitSeconds: 30, failures: 1, notBefore });
    const result = await exec.result;

    // THEN Flaky starts exactly at the timestamp, and one back-off of 4 s follows
    expect(result.status).toBe('SUCCEEDED');
    expect(exec.statesEntered()).toEqual(['Prepare', 'Pause', 'Route', 'Until', 'Flaky', 'Announce', 'Done']);
    expect(exec.transitions()).toBe(7 + 1);
    const flakyEntered = exec.events.find((e) => e.type === 'StateEntered' && e.state?.name === 'Flaky')!;
    expect(flakyEntered.simulatedTime).toBe(start + 1_000_000);
    expect(result.output.flaky.seenAt.map((t: number) => t - start)).toEqual([1_000_000, 1_000_000 + flakyDelay(1)]);
    expect(exec.simulatedMs()).toBe(1_000_000 + flakyDelay(1));
  });

  test('retries give up after MaxAttempts and the error keeps its name', async () => {
    // GIVEN an image that fails one more time than the retrier allows
    const input = { image: 'disk-exhausted.vmdk', mode: 'convert', waitSeconds: 5, failures: FLAKY_RETRY.maxAttempts + 1 };

    // WHEN it runs
    const exec = workflow.start(input);
    const result = await exec.result;

    // THEN the execution fails with the function's error name and Lambda's error payload as cause
    expect(result.status).toBe('FAILED');
    expect(result.error).toBe('TransientError');
    expect(JSON.parse(result.cause!)).toMatchObject({ errorType: 'TransientError', errorMessage: `attempt ${FLAKY_RETRY.maxAttempts + 1} failed` });
    expect(exec.transitions()).toBe(4 + FLAKY_RETRY.maxAttempts);
    expect(exec.simulatedMs()).toBe(5_000 + flakyDelay(1) + flakyDelay(2) + flakyDelay(3));
  });

  test('an error is caught by its name, and the failure path publishes the reason', async () => {
    // GIVEN an image the Reject function refuses with UnsupportedImage
    const before = workflow.messages.length;

    // WHEN it runs
    const exec = workflow.start({ image: 'disk-refused.vhd', waitSeconds: 0, mode: 'fail' });
    const result = await exec.result;

    // THEN the Catch for UnsupportedImage leads to Notify, then the Fail state
    expect(exec.statesEntered()).toEqual(['Prepare', 'Pause', 'Route', 'Reject', 'Notify', 'Failed']);
    expect(result).toEqual({ status: 'FAILED', error: 'ImageRejected', cause: 'the image cannot be imported' });
    // AND the message carries the caught error, named and caused as Step Functions gives it
    const published = workflow.messages.slice(before);
    expect(published).toHaveLength(1);
    expect(published[0].topicArn).toBe(`arn:aws:sns:${REGION}:${ACCOUNT}:${PHYSICAL.topic}`);
    expect(published[0].subject).toBe('Image rejected');
    const caught = JSON.parse(published[0].message);
    expect(caught.Error).toBe('UnsupportedImage');
    expect(JSON.parse(caught.Cause)).toMatchObject({ errorType: 'UnsupportedImage', errorMessage: 'disk-refused.vhd has no partition table' });
    expect(exec.simulatedMs()).toBe(0);
  });

  test('the state machine times out in simulated time', async () => {
    // GIVEN an execution that lingers longer than the state machine's timeout
    const start = clock.now();
    expect(LINGER_SECONDS).toBeGreaterThan(TIMEOUT_SECONDS);

    // WHEN it runs
    const exec = workflow.start({ image: 'disk-slow.raw', waitSeconds: 60, mode: 'slow' });
    const result = await exec.result;

    // THEN it times out exactly at TimeoutSeconds, inside Linger, and never reaches Done
    expect(result).toEqual({ status: 'TIMED_OUT' });
    expect(exec.simulatedMs()).toBe(TIMEOUT_SECONDS * 1000);
    expect(clock.now() - start).toBe(TIMEOUT_SECONDS * 1000);
    expect(exec.statesEntered()).toEqual(['Prepare', 'Pause', 'Route', 'Linger']);
    expect(exec.events[exec.events.length - 1]).toMatchObject({ type: 'ExecutionTimeout', simulatedTime: start + TIMEOUT_SECONDS * 1000 });
    expect(exec.status()).toBe('TIMED_OUT');
  });

  test('advancing a shared clock past the timeout times out a running execution', async () => {
    // GIVEN an execution held in a function
    const gate = path.join(dir, 'gate-clock');
    const exec = workflow.start({ image: 'disk-held.raw', waitSeconds: 0, mode: 'hold', gate });
    await entered(exec, 'Hold');

    // WHEN the clock is moved past the timeout, and the function then returns
    clock.advance(TIMEOUT_SECONDS * 1000 + 1);
    const result = await exec.result;
    fs.writeFileSync(gate, '');
    await new Promise((resolve) => setTimeout(resolve, 50));

    // THEN the execution timed out and went no further
    expect(result.status).toBe('TIMED_OUT');
    expect(exec.simulatedMs()).toBe(TIMEOUT_SECONDS * 1000);
    expect(exec.statesEntered()).toEqual(['Prepare', 'Pause', 'Route', 'Hold']);
  });

  test('abort stops the execution where it is', async () => {
    // GIVEN an execution held in a function
    const gate = path.join(dir, 'gate-abort');
    const events = workflow.events.length;
    const exec = workflow.start({ image: 'disk-aborted.raw', waitSeconds: 0, mode: 'hold', gate });
    await entered(exec, 'Hold');
    expect(exec.status()).toBe('RUNNING');

    // WHEN it is aborted, and the function then returns
    exec.abort();
    const result = await exec.result;
    fs.writeFileSync(gate, '');
    await new Promise((resolve) => setTimeout(resolve, 50));

    // THEN it is ABORTED and nothing after Hold ran
    expect(result).toEqual({ status: 'ABORTED' });
    expect(exec.statesEntered()).toEqual(['Prepare', 'Pause', 'Route', 'Hold']);
    expect(exec.events[exec.events.length - 1].type).toBe('ExecutionAborted');
    expect(workflow.events.length).toBe(events);
  });
});

describe('cfn-resolve', () => {
  const template = {
    Parameters: {
      Stage: { Type: 'String', Default: 'test' },
      Zones: { Type: 'CommaDelimitedList', Default: 'a,b,c' },
    },
    Mappings: { Sizes: { test: { Memory: 256 } } },
    Conditions: {
      IsTest: { 'Fn::Equals': [{ Ref: 'Stage' }, 'test'] },
      IsProd: { 'Fn::Not': [{ Condition: 'IsTest' }] },
      Both: { 'Fn::And': [{ Condition: 'IsTest' }, { 'Fn::Or': [{ Condition: 'IsProd' }, { 'Fn::Equals': ['x', 'x'] }] }] },
    },
    Resources: {
      Fn: { Type: 'AWS::Lambda::Function', Properties: {} },
      Named: { Type: 'AWS::Lambda::Function', Properties: { FunctionName: { 'Fn::Sub': '${AWS::StackName}-named' } } },
      Role: { Type: 'AWS::IAM::Role', Properties: { Path: '/service/' } },
      Bucket: { Type: 'AWS::S3::Bucket' },
      Topic: { Type: 'AWS::SNS::Topic' },
      Machine: { Type: 'AWS::StepFunctions::StateMachine' },
      Queue: { Type: 'AWS::SQS::Queue' },
    },
  };
  const resolver = new CfnResolver(template, { stackName: 'My-Stack', physicalNames: { Fn: 'converter' } });

  test('Ref and Fn::GetAtt give names and well-formed ARNs', () => {
    // GIVEN the resolver of a small template
    // WHEN references are resolved
    // THEN parameters take their defaults, pseudo parameters the fixed environment
    expect(resolver.resolve({ Ref: 'Stage' })).toBe('test');
    expect(resolver.resolve({ Ref: 'Zones' })).toEqual(['a', 'b', 'c']);
    expect(resolver.resolve([{ Ref: 'AWS::Region' }, { Ref: 'AWS::AccountId' }, { Ref: 'AWS::Partition' }, { Ref: 'AWS::URLSuffix' }, { Ref: 'AWS::StackName' }]))
      .toEqual(['us-east-1', '123456789012', 'aws', 'amazonaws.com', 'My-Stack']);
    // AND resources take the caller's name, their own name property, or a derived one
    expect(resolver.resolve({ Ref: 'Fn' })).toBe('converter');
    expect(resolver.resolve({ Ref: 'Named' })).toBe('My-Stack-named');
    const bucket = resolver.resolve({ Ref: 'Bucket' });
    expect(bucket).toMatch(/^my-stack-bucket-[a-z0-9]{12}$/);
    expect(new CfnResolver(template, { stackName: 'My-Stack' }).physicalName('Bucket')).toBe(bucket);
    expect(resolver.resolve({ 'Fn::GetAtt': ['Fn', 'Arn'] })).toBe('arn:aws:lambda:us-east-1:123456789012:function:converter');
    const role = resolver.physicalName('Role');
    expect(resolver.resolve({ 'Fn::GetAtt': 'Role.Arn' })).toBe(`arn:aws:iam::123456789012:role/service/${role}`);
    expect(resolver.resolve({ 'Fn::GetAtt': ['Bucket', 'Arn'] })).toBe(`arn:aws:s3:::${bucket}`);
    const topic = resolver.physicalName('Topic');
    expect(resolver.resolve({ Ref: 'Topic' })).toBe(`arn:aws:sns:us-east-1:123456789012:${topic}`);
    expect(resolver.resolve({ 'Fn::GetAtt': ['Topic', 'TopicName'] })).toBe(topic);
    const machine = resolver.physicalName('Machine');
    expect(resolver.resolve({ Ref: 'Machine' })).toBe(`arn:aws:states:us-east-1:123456789012:stateMachine:${machine}`);
    expect(resolver.resolve({ Ref: 'Queue' })).toBe(`https://sqs.us-east-1.amazonaws.com/123456789012/${resolver.physicalName('Queue')}`);
  });

  test('Fn::Join, Fn::Sub, Fn::Select, Fn::Split, Fn::FindInMap and Fn::If', () => {
    // GIVEN the resolver of a small template
    // WHEN functions are resolved, THEN they compute as CloudFormation does
    expect(resolver.resolve({ 'Fn::Join': ['/', ['a', { Ref: 'Stage' }, 3]] })).toBe('a/test/3');
    expect(resolver.resolve({ 'Fn::Sub': 'arn:${AWS::Partition}:s3:::${Bucket}/${!Literal}/${Fn.Arn}' }))
      .toBe(`arn:aws:s3:::${resolver.physicalName('Bucket')}/\${Literal}/arn:aws:lambda:us-east-1:123456789012:function:converter`);
    expect(resolver.resolve({ 'Fn::Sub': ['${X}-${Stage}', { X: { Ref: 'AWS::Region' } }] })).toBe('us-east-1-test');
    expect(resolver.resolve({ 'Fn::Select': [1, { Ref: 'Zones' }] })).toBe('b');
    expect(resolver.resolve({ 'Fn::Select': ['2', { 'Fn::Split': ['|', 'x|y|z'] }] })).toBe('z');
    expect(resolver.resolve({ 'Fn::FindInMap': ['Sizes', { Ref: 'Stage' }, 'Memory'] })).toBe(256);
    expect(resolver.resolve({ 'Fn::If': ['IsTest', 'yes', 'no'] })).toBe('yes');
    expect(resolver.resolve({ 'Fn::If': ['IsProd', 'yes', 'no'] })).toBe('no');
    expect(resolver.condition('Both')).toBe(true);
    // AND AWS::NoValue removes what holds it
    expect(resolver.resolve({ a: { 'Fn::If': ['IsProd', 1, { Ref: 'AWS::NoValue' }] }, b: [1, { 'Fn::If': ['IsProd', 2, { Ref: 'AWS::NoValue' }] }] }))
      .toEqual({ b: [1] });
    // AND other parameter values can be given
    expect(resolveCfn(template, { 'Fn::If': ['IsTest', 'yes', 'no'] }, { parameters: { Stage: 'prod' } })).toBe('no');
  });

  test('unknown intrinsics, attributes and references throw, naming them', () => {
    // GIVEN the resolver of a small template
    // WHEN something it cannot resolve is met, THEN it says what
    expect(() => resolver.resolve({ 'Fn::ImportValue': 'Shared' })).toThrow(/Fn::ImportValue/);
    expect(() => resolver.resolve({ 'Fn::GetAZs': '' })).toThrow(/Fn::GetAZs/);
    expect(() => resolver.resolve({ 'Fn::GetAtt': ['Fn', 'SnapStartResponse'] })).toThrow(/SnapStartResponse of AWS::Lambda::Function \(Fn\)/);
    expect(() => resolver.resolve({ Ref: 'Missing' })).toThrow(/Missing/);
    expect(() => resolver.resolve({ Ref: 'AWS::Unknown' })).toThrow(/AWS::Unknown/);
    expect(() => resolver.resolve({ 'Fn::Select': [5, ['a']] })).toThrow(/index 5/);
  });

  test('property: values without intrinsics resolve to themselves; Join, Split and Select agree with JavaScript', () => {
    // GIVEN arbitrary JSON without intrinsic keys, and arbitrary string lists
    const plainKey = fc.string().filter((k) => k !== 'Ref' && !k.startsWith('Fn::'));
    const plain = fc.letrec((tie) => ({
      value: fc.oneof({ depthSize: 'small' }, fc.string(), fc.integer(), fc.boolean(), fc.constant(null), fc.array(tie('value'), { maxLength: 4 }), fc.dictionary(plainKey, tie('value'), { maxKeys: 4 })),
    })).value;
    // WHEN resolved, THEN they are unchanged
    fc.assert(fc.property(plain, (value) => {
      expect(resolver.resolve(value)).toEqual(value);
    }));
    const part = fc.string().filter((s) => !s.includes(','));
    fc.assert(fc.property(fc.array(part, { minLength: 1, maxLength: 6 }), fc.nat(), (parts, n) => {
      const joined = resolver.resolve({ 'Fn::Join': [',', parts] });
      expect(joined).toBe(parts.join(','));
      expect(resolver.resolve({ 'Fn::Split': [',', joined] })).toEqual(joined.split(','));
      const index = n % parts.length;
      expect(resolver.resolve({ 'Fn::Select': [index, { 'Fn::Split': [',', { 'Fn::Join': [',', parts] }] }] })).toBe(joined.split(',')[index]);
    }));
    // AND Fn::Sub leaves text without variables alone and keeps escaped ones literal
    fc.assert(fc.property(fc.string().filter((s) => !s.includes('$')), fc.stringMatching(/^[A-Za-z]{1,8}$/), (text, name) => {
      expect(resolver.resolve({ 'Fn::Sub': `${text}\${!${name}}` })).toBe(`${text}\${${name}}`);
    }));
  });
});

describe('the local Step Functions API', () => {
  test('the real SFN client starts, describes, pages the history of, lists and stops executions', async () => {
    // GIVEN the API serving the workflow, and the real client configured by the API's environment
    const api = await startLocalSfnApi({ [workflow.stateMachineArn]: workflow });
    const saved = { ...process.env };
    Object.assign(process.env, api.env);
    const client = new SFNClient({});
    try {
      // WHEN an execution that fails is started and watched
      const input = { image: 'disk-api.vhd', waitSeconds: 90, mode: 'fail' };
      const started = await client.send(new StartExecutionCommand({ stateMachineArn: workflow.stateMachineArn, name: 'api-fail', input: JSON.stringify(input) }));
      expect(started.executionArn).toBe(`arn:aws:states:${REGION}:${ACCOUNT}:execution:${workflow.stateMachineName}:api-fail`);
      await api.executions.get(started.executionArn!)!.result;
      const described = await client.send(new DescribeExecutionCommand({ executionArn: started.executionArn }));

      // THEN it is described as the service would
      expect(described).toMatchObject({ status: 'FAILED', error: 'ImageRejected', cause: 'the image cannot be imported', name: 'api-fail', stateMachineArn: workflow.stateMachineArn });
      expect(JSON.parse(described.input!)).toEqual(input);
      expect(described.stopDate!.getTime() - described.startDate!.getTime()).toBe(90_000);

      // AND its history comes in pages, in the service's shape
      const events: HistoryEvent[] = [];
      let nextToken: string | undefined;
      let pages = 0;
      do {
        const page = await client.send(new GetExecutionHistoryCommand({ executionArn: started.executionArn, maxResults: 4, nextToken }));
        expect(page.events!.length).toBeLessThanOrEqual(4);
        events.push(...page.events!);
        nextToken = page.nextToken;
        pages++;
      } while (nextToken);
      expect(pages).toBe(Math.ceil(events.length / 4));
      expect(events.map((e) => e.id)).toEqual(events.map((_, i) => i + 1));
      expect(events.map((e) => e.type)).toEqual([
        'ExecutionStarted',
        'TaskStateEntered', 'LambdaFunctionScheduled', 'LambdaFunctionStarted', 'LambdaFunctionSucceeded', 'TaskStateExited',
        'WaitStateEntered', 'WaitStateExited',
        'ChoiceStateEntered', 'ChoiceStateExited',
        'TaskStateEntered', 'LambdaFunctionScheduled', 'LambdaFunctionStarted', 'LambdaFunctionFailed', 'TaskStateExited',
        'TaskStateEntered', 'TaskScheduled', 'TaskStarted', 'TaskSucceeded', 'TaskStateExited',
        'FailStateEntered',
        'ExecutionFailed',
      ]);
      expect(events[1].stateEnteredEventDetails?.name).toBe('Prepare');
      expect(JSON.parse(events[1].stateEnteredEventDetails!.input!)).toEqual(input);
      expect(events[7].timestamp!.getTime() - events[6].timestamp!.getTime()).toBe(90_000);
      expect(events[13].lambdaFunctionFailedEventDetails?.error).toBe('UnsupportedImage');
      expect(JSON.parse(events[13].lambdaFunctionFailedEventDetails!.cause!).errorMessage).toBe('disk-api.vhd has no partition table');
      expect(events[16].taskScheduledEventDetails).toMatchObject({ resourceType: 'sns', resource: 'publish', region: REGION });
      expect(JSON.parse(events[16].taskScheduledEventDetails!.parameters!).TopicArn).toBe(`arn:aws:sns:${REGION}:${ACCOUNT}:${PHYSICAL.topic}`);
      expect(events[21].executionFailedEventDetails).toEqual({ error: 'ImageRejected', cause: 'the image cannot be imported' });
      const reversed = await client.send(new GetExecutionHistoryCommand({
        executionArn: started.executionArn,
        reverseOrder: true,
        includeExecutionData: false,
      }));
      expect(reversed.events!.map((e) => e.type)).toEqual(events.map((e) => e.type).reverse());
      expect(reversed.events![reversed.events!.length - 1].executionStartedEventDetails?.input).toBeUndefined();

      // WHEN a held execution is started, THEN it is listed as running, and stopping it aborts it
      const gate = path.join(dir, 'gate-api');
      const held = await client.send(new StartExecutionCommand({
        stateMachineArn: workflow.stateMachineArn,
        name: 'api-held',
        input: JSON.stringify({ image: 'disk-api-held.raw', waitSeconds: 0, mode: 'hold', gate }),
      }));
      await entered(api.executions.get(held.executionArn!)!, 'Hold');
      const running = await client.send(new ListExecutionsCommand({ stateMachineArn: workflow.stateMachineArn, statusFilter: 'RUNNING' }));
      expect(running.executions!.map((e) => e.name)).toEqual(['api-held']);
      await client.send(new StopExecutionCommand({ executionArn: held.executionArn, error: 'Operator', cause: 'changed their mind' }));
      fs.writeFileSync(gate, '');
      expect(await client.send(new DescribeExecutionCommand({ executionArn: held.executionArn })))
        .toMatchObject({ status: 'ABORTED', error: 'Operator', cause: 'changed their mind' });
      const all = await client.send(new ListExecutionsCommand({ stateMachineArn: workflow.stateMachineArn }));
      expect(all.executions!.map((e) => [e.name, e.status]).sort()).toEqual([['api-fail', 'FAILED'], ['api-held', 'ABORTED']]);

      // AND the service's errors come back by name
      await expect(client.send(new StartExecutionCommand({ stateMachineArn: workflow.stateMachineArn, name: 'api-fail', input: '{}' })))
        .rejects.toMatchObject({ name: 'ExecutionAlreadyExists' });
      await expect(client.send(new DescribeExecutionCommand({ executionArn: `${started.executionArn}-missing` })))
        .rejects.toMatchObject({ name: 'ExecutionDoesNotExist' });
      await expect(client.send(new StartExecutionCommand({ stateMachineArn: `${workflow.stateMachineArn}-missing` })))
        .rejects.toMatchObject({ name: 'StateMachineDoesNotExist' });
      await expect(client.send(new StartExecutionCommand({ stateMachineArn: workflow.stateMachineArn, input: 'not json' })))
        .rejects.toMatchObject({ name: 'InvalidExecutionInput' });
    } finally {
      client.destroy();
      for (const key of Object.keys(api.env)) {
        if (saved[key] === undefined) delete process.env[key];
        else process.env[key] = saved[key];
      }
      await api.close();
    }
  });
});
