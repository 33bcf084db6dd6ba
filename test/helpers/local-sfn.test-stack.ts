/**
 * A small stack that exercises the local workflow harness: Lambda functions from a directory the
 * test writes, a Wait by path and by timestamp, a Choice, a Retry with backoff and a maximum delay,
 * a Catch by error name, EventBridge PutEvents, SNS Publish and an execution timeout.
 *
 * ```
 * Prepare (function ARN; given the state and the execution's id and start time) -> Pause (Wait SecondsPath) -> Route (Choice)
 *   mode = 'fail' -> Reject (function ARN, Catch UnsupportedImage) -> Notify (sns:publish) -> Failed (Fail)
 *   mode = 'slow' -> Linger (Wait 7200 s) -> Done
 *   mode = 'hold' -> Hold (function ARN) -> Done
 *   notBefore present -> Until (Wait TimestampPath) -> Flaky
 *   otherwise -> Flaky (lambda:invoke, Retry TransientError 4 s x3 up to 10 s, Catch UnsupportedImage -> Notify)
 *                -> Announce (events:putEvents) -> Done (Succeed)
 * ```
 * The state machine times out after one hour. A second state machine lists the bucket through the
 * `aws-sdk:s3:listObjectsV2` integration.
 */
import { App, Duration, Stack } from 'aws-cdk-lib';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import * as tasks from 'aws-cdk-lib/aws-stepfunctions-tasks';

/** What {@link localSfnTestStack} made. */
export interface LocalSfnTestStack {
  readonly stack: Stack;
  readonly bucket: s3.Bucket;
  readonly topic: sns.Topic;
  readonly stateMachine: sfn.StateMachine;
  /** A second state machine (Echo, then ListImages: the bucket's keys through the aws-sdk:s3 integration), so that selecting one is needed. */
  readonly other: sfn.StateMachine;
  /** The functions, by the name of their handler export. */
  readonly functions: Record<'prepare' | 'reject' | 'hold' | 'flaky', lambda.Function>;
}

/** Retry settings of the Flaky state, for the tests' arithmetic. */
export const FLAKY_RETRY = { intervalSeconds: 4, backoffRate: 3, maxDelaySeconds: 10, maxAttempts: 3 } as const;
/** The Linger wait and the state machine timeout, in seconds. */
export const LINGER_SECONDS = 7200;
export const TIMEOUT_SECONDS = 3600;

/**
 * The stack, in an environment-agnostic stack named `LocalSfnTest`, with every function's code
 * taken from `codeDir` (an `index.js` exporting prepare, reject, hold and flaky).
 */
export function localSfnTestStack(codeDir: string): LocalSfnTestStack {
  const stack = new Stack(new App(), 'LocalSfnTest');
  const bucket = new s3.Bucket(stack, 'Images');
  const topic = new sns.Topic(stack, 'Alerts');
  const code = lambda.Code.fromAsset(codeDir);
  const fn = (id: string, handler: string, environment?: Record<string, string>) => new lambda.Function(stack, id, {
    runtime: lambda.Runtime.NODEJS_24_X,
    code,
    handler: `index.${handler}`,
    timeout: Duration.seconds(30),
    memorySize: 256,
    environment,
  });
  const functions = {
    prepare: fn('PrepareFn', 'prepare', { IMAGE_BUCKET: bucket.bucketName, ALERT_TOPIC: topic.topicArn, GREETING: 'hello' }),
    reject: fn('RejectFn', 'reject'),
    hold: fn('HoldFn', 'hold'),
    flaky: fn('FlakyFn', 'flaky'),
  };

  const done = new sfn.Succeed(stack, 'Done');
  const failed = new sfn.Fail(stack, 'Failed', { error: 'ImageRejected', cause: 'the image cannot be imported' });
  const notify = new tasks.SnsPublish(stack, 'Notify', {
    topic,
    subject: 'Image rejected',
    message: sfn.TaskInput.fromJsonPathAt('$.error'),
    resultPath: '$.notified',
  }).next(failed);
  const announce = new tasks.EventBridgePutEvents(stack, 'Announce', {
    entries: [{
      source: 'vmie.local-sfn-test',
      detailType: 'Image ready',
      detail: sfn.TaskInput.fromObject({ 'image.$': '$.image', 'attempts.$': '$.flaky.attempts' }),
    }],
    resultPath: '$.announced',
  }).next(done);
  const flaky = new tasks.LambdaInvoke(stack, 'Flaky', {
    lambdaFunction: functions.flaky,
    resultSelector: { 'attempts.$': '$.Payload.attempts', 'seenAt.$': '$.Payload.seenAt' },
    resultPath: '$.flaky',
  });
  flaky.addRetry({
    errors: ['TransientError'],
    interval: Duration.seconds(FLAKY_RETRY.intervalSeconds),
    backoffRate: FLAKY_RETRY.backoffRate,
    maxDelay: Duration.seconds(FLAKY_RETRY.maxDelaySeconds),
    maxAttempts: FLAKY_RETRY.maxAttempts,
  });
  flaky.addCatch(notify, { errors: ['UnsupportedImage'], resultPath: '$.error' });
  flaky.next(announce);
  const reject = new tasks.LambdaInvoke(stack, 'Reject', {
    lambdaFunction: functions.reject,
    payloadResponseOnly: true,
  });
  reject.addCatch(notify, { errors: ['UnsupportedImage'], resultPath: '$.error' });
  const hold = new tasks.LambdaInvoke(stack, 'Hold', { lambdaFunction: functions.hold, payloadResponseOnly: true, resultPath: '$.held' }).next(done);
  const linger = new sfn.Wait(stack, 'Linger', { time: sfn.WaitTime.duration(Duration.seconds(LINGER_SECONDS)) }).next(done);
  const until = new sfn.Wait(stack, 'Until', { time: sfn.WaitTime.timestampPath('$.notBefore') }).next(flaky);
  const route = new sfn.Choice(stack, 'Route')
    .when(sfn.Condition.stringEquals('$.mode', 'fail'), reject)
    .when(sfn.Condition.stringEquals('$.mode', 'slow'), linger)
    .when(sfn.Condition.stringEquals('$.mode', 'hold'), hold)
    .when(sfn.Condition.isPresent('$.notBefore'), until)
    .otherwise(flaky);
  const prepare = new tasks.LambdaInvoke(stack, 'Prepare', {
    lambdaFunction: functions.prepare,
    payloadResponseOnly: true,
    payload: sfn.TaskInput.fromObject({
      state: sfn.JsonPath.entirePayload,
      execution: { id: sfn.JsonPath.executionId, startTime: sfn.JsonPath.executionStartTime },
    }),
  });
  const pause = new sfn.Wait(stack, 'Pause', { time: sfn.WaitTime.secondsPath('$.waitSeconds') });
  const stateMachine = new sfn.StateMachine(stack, 'Workflow', {
    definitionBody: sfn.DefinitionBody.fromChainable(prepare.next(pause).next(route)),
    timeout: Duration.seconds(TIMEOUT_SECONDS),
  });
  const listImages = new tasks.CallAwsService(stack, 'ListImages', {
    service: 's3',
    action: 'listObjectsV2',
    parameters: { Bucket: bucket.bucketName },
    iamResources: [bucket.bucketArn],
    resultSelector: { 'keys.$': '$.Contents[*].Key' },
    resultPath: '$.listing',
  });
  const other = new sfn.StateMachine(stack, 'Other', {
    definitionBody: sfn.DefinitionBody.fromChainable(new sfn.Pass(stack, 'Echo').next(listImages)),
  });
  return { stack, bucket, topic, stateMachine, other, functions };
}
