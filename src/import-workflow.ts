import { ArnFormat, Duration, Size, Stack, Token } from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as events from 'aws-cdk-lib/aws-events';
import * as targets from 'aws-cdk-lib/aws-events-targets';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import * as tasks from 'aws-cdk-lib/aws-stepfunctions-tasks';
import { Construct } from 'constructs';
import { importOptionsProblems, renderImportOptions, type ImportOptions } from './import-options';
import { WorkflowFunction } from './private/workflow-function';
import { describeFailure, workflowStateMachine } from './private/workflow-parts';
import type { IVmieServiceRole } from './service-role';

const STAGING_PREFIX = '.vmie/';
const IMAGE_SUFFIXES = ['.ova', '.vmdk', '.vhd', '.vhdx', '.img', '.raw', '.qcow2', '.vdi', '.gz', '.xz', '.zst'];
const IMPORT_EVENT_SOURCE = 'vmie.import';
const READ_ACTIONS = ['s3:GetObject*', 's3:GetBucket*', 's3:List*'];
const DESCRIBE = 'EC2 Describe actions support no resource-level permissions.';

/** Starts an import when an image is uploaded to the import bucket. */
export interface ImportTriggerOptions {
  /**
   * Only objects under this prefix start an import.
   *
   * @default - the whole bucket
   */
  readonly prefix?: string;

  /**
   * Only objects whose key ends with one of these start an import (case-sensitive).
   *
   * @default - .ova .vmdk .vhd .vhdx .img .raw .qcow2 .vdi and the compressed .gz .xz .zst
   */
  readonly suffixes?: string[];
}

/** Properties of a {@link VmImportWorkflow}. */
export interface VmImportWorkflowProps {
  /**
   * The bucket the images are uploaded to. It must send its events to EventBridge for the trigger
   * (a `VmImportBucket` does); converted disks are staged in it under `.vmie/`.
   */
  readonly importBucket: s3.IBucket;

  /**
   * The VM Import/Export service role the imports run as. The workflow grants it read access to
   * the import bucket and the use of `defaults.encryptionKey`.
   */
  readonly serviceRole: IVmieServiceRole;

  /**
   * How images are imported unless an image says otherwise (sidecar `<key>.vmie.json` or object
   * tags `vmie:*`).
   *
   * @default - ImportImage with the boot mode detected on the disk; everything else as the service decides
   */
  readonly defaults?: ImportOptions;

  /**
   * Start an import when an image is uploaded. Set `enableTrigger: false` to start imports only by
   * hand (`vmie import`, `StartExecution`) or from your own rules.
   *
   * @default - every image uploaded anywhere in the bucket with one of the image suffixes
   */
  readonly trigger?: ImportTriggerOptions;

  /**
   * Whether uploads start imports.
   *
   * @default true
   */
  readonly enableTrigger?: boolean;

  /**
   * The longest an import may take, from the upload to the finished AMI. On timeout the running
   * import task is cancelled and any upload of a conversion aborted.
   *
   * @default Duration.days(3)
   */
  readonly timeout?: Duration;

  /**
   * A topic that is told of every import that succeeds or fails.
   *
   * @default - events on the default event bus only
   */
  readonly notificationTopic?: sns.ITopic;

  /**
   * Memory of the conversion function. Lambda gives CPU in proportion (about 2 vCPUs at 3,008 MiB),
   * and compression uses every core.
   *
   * @default 3008
   */
  readonly conversionMemorySize?: number;

  /**
   * Temporary storage of the conversion function, used only to unpack a compressed qcow2, VDI or
   * VMDK (a compressed raw disk is converted as it streams).
   *
   * @default Size.gibibytes(10)
   */
  readonly conversionEphemeralStorage?: Size;

  /**
   * How long the logs of the workflow's functions and state machine are kept.
   *
   * @default logs.RetentionDays.THREE_MONTHS
   */
  readonly logRetention?: logs.RetentionDays;
}

/**
 * The import workflow: a Step Functions state machine that turns an image in the import bucket
 * into an AMI. It reads the image's options, validates the image (headers only), converts it when
 * VM Import would not take it as it is (resumably, across as many Lambda invocations as it takes),
 * starts `ImportImage` (or `ImportSnapshot` + `RegisterImage`) with a client token derived from the
 * object, so that a duplicate trigger never starts a second import, waits with a growing interval,
 * names, tags, shares and copies the AMI, and tells EventBridge (and optionally SNS) how it ended.
 * Every failure, timeout and abort goes through one clean-up: the running import task is cancelled
 * and staged uploads aborted.
 */
export class VmImportWorkflow extends Construct {
  /** Where the workflow stages what it makes on the way (converted disks, checkpoints) in the import bucket. */
  public static readonly STAGING_PREFIX = STAGING_PREFIX;
  /** The suffixes of the objects that start an import by default. */
  public static readonly DEFAULT_SUFFIXES: string[] = [...IMAGE_SUFFIXES];
  /** The `source` of the workflow's events on the default event bus (`VM Import Succeeded`, `VM Import Failed`). */
  public static readonly EVENT_SOURCE = IMPORT_EVENT_SOURCE;

  /** The state machine. Start it with `{ "bucket": "...", "key": "..." }`. */
  public readonly stateMachine: sfn.StateMachine;
  /** The import bucket. */
  public readonly importBucket: s3.IBucket;
  /** The rule that starts imports on upload, when enabled. */
  public readonly triggerRule?: events.Rule;

  public constructor(scope: Construct, id: string, props: VmImportWorkflowProps) {
    super(scope, id);
    const defaults = props.defaults ?? {};
    const problems = importOptionsProblems(defaults, 'defaults');
    if (props.timeout && !props.timeout.isUnresolved() && (props.timeout.toSeconds() < 3600 || props.timeout.toSeconds() > 365 * 86400)) {
      problems.push(`timeout must be between 1 hour and 365 days (imports of large disks take hours), got ${props.timeout.toHumanString()}.`);
    }
    const memory = props.conversionMemorySize ?? 3008;
    if (!Token.isUnresolved(memory) && (memory < 1024 || memory > 10240)) {
      problems.push(`conversionMemorySize must be between 1024 and 10240 MiB (the conversion buffers a multipart part and compresses on every core), got ${memory}.`);
    }
    for (const s of props.trigger?.suffixes ?? []) {
      if (!s.startsWith('.')) problems.push(`trigger.suffixes: '${s}' should start with a dot (for example '.vmdk').`);
    }
    if (props.trigger?.prefix?.startsWith(STAGING_PREFIX)) {
      problems.push(`trigger.prefix must not lie under '${STAGING_PREFIX}', where the workflow stages converted disks.`);
    }
    if (problems.length > 0) throw new Error(`VmImportWorkflow ${this.node.path}: ${problems.join(' ')}`);

    this.importBucket = props.importBucket;
    const retention = props.logRetention ?? logs.RetentionDays.THREE_MONTHS;
    const stack = Stack.of(this);
    const bucket = props.importBucket;
    props.serviceRole.addImportBucket(bucket);
    if (defaults.encryptionKey) props.serviceRole.addEncryptionKey(defaults.encryptionKey);

    const ec2Arn = (resource: string, region = stack.region, account = stack.account) =>
      stack.formatArn({ service: 'ec2', region, account, resource, resourceName: '*', arnFormat: ArnFormat.SLASH_RESOURCE_NAME });
    const taskArns = [ec2Arn('import-image-task'), ec2Arn('import-snapshot-task')];
    const imageArn = ec2Arn('image', stack.region, '');
    const snapshotArn = ec2Arn('snapshot', stack.region, '');

    // The steps.
    type Extra = Partial<ConstructorParameters<typeof WorkflowFunction>[2]>;
    const fn = (idPart: string, bundle: string, handler: string, description: string, extra: Extra = {}) =>
      new WorkflowFunction(this, idPart, { bundle, handler, description, logRetention: retention, ...extra });

    const prepare = fn('ReadOptions', 'validate', 'prepare', 'VM import: reads an image\'s options (sidecar, tags, defaults)', {
      environment: {
        VMIE_IMPORT_DEFAULTS: stack.toJsonString(renderImportOptions(defaults)),
        VMIE_STAGING_PREFIX: STAGING_PREFIX,
      },
    });
    bucket.grantRead(prepare.role);
    prepare.acknowledgeGrant(bucket.arnForObjects('*'), READ_ACTIONS, 'Reads an image\'s sidecar and tags; images may be uploaded under any key.');

    const validate = fn('Validate', 'validate', 'handler', 'VM import: inspects the image (headers only)', {
      timeout: Duration.minutes(2),
      memorySize: 512,
    });
    bucket.grantRead(validate.role);
    validate.acknowledgeGrant(bucket.arnForObjects('*'), READ_ACTIONS, 'Reads the headers of images uploaded under any key.');

    const convert = fn('Convert', 'convert', 'handler', 'VM import: converts the image to stream-optimized VMDK, resumably', {
      timeout: Duration.minutes(15),
      memorySize: memory,
      ephemeralStorageSize: props.conversionEphemeralStorage ?? Size.gibibytes(10),
      environment: { VMIE_STAGING_PREFIX: STAGING_PREFIX, UV_THREADPOOL_SIZE: '8' },
    });
    bucket.grantRead(convert.role);
    bucket.grantPut(convert.role, `${STAGING_PREFIX}*`);
    bucket.grantDelete(convert.role, `${STAGING_PREFIX}*`);
    convert.acknowledgeGrant(bucket.arnForObjects('*'), READ_ACTIONS, 'Reads images uploaded under any key.');
    convert.acknowledgeGrant(bucket.arnForObjects(`${STAGING_PREFIX}*`), ['s3:Abort*', 's3:DeleteObject*'], 'Writes, aborts and removes converted disks and checkpoints under the staging prefix only.');

    const tidy = fn('Tidy', 'convert', 'tidy', 'VM import: removes staged files and marks processed images', {
      timeout: Duration.minutes(5),
      environment: { VMIE_STAGING_PREFIX: STAGING_PREFIX, VMIE_IMPORT_BUCKET: bucket.bucketName },
    });
    bucket.grantDelete(tidy.role, `${STAGING_PREFIX}*`);
    tidy.acknowledgeGrant(bucket.arnForObjects(`${STAGING_PREFIX}*`), ['s3:DeleteObject*'], 'Removes staged files under the staging prefix only.');
    tidy.allow(['s3:ListBucket'], [bucket.bucketArn], 'Lists the staged files of an execution.', { StringLike: { 's3:prefix': `${STAGING_PREFIX}*` } });
    tidy.allow(['s3:AbortMultipartUpload'], [bucket.arnForObjects(`${STAGING_PREFIX}*`)], 'Aborts the uploads of conversions, which are all under the staging prefix.');
    tidy.allow(['s3:ListBucketMultipartUploads'], [bucket.bucketArn], 'Finds the uploads of an execution to abort them.');
    tidy.allow(['s3:GetObjectTagging', 's3:PutObjectTagging', 's3:GetObjectVersionTagging', 's3:PutObjectVersionTagging'], [bucket.arnForObjects('*')], 'Tags imported images vmie:processed=true; images may be uploaded under any key of the import bucket.');

    const start = fn('Start', 'import', 'start', 'VM import: starts ImportImage or ImportSnapshot', {
      environment: { VMIE_ROLE_NAME: props.serviceRole.roleName },
    });
    start.allow(['ec2:ImportImage', 'ec2:ImportSnapshot'], [...taskArns, imageArn, snapshotArn], 'Import tasks, and the images and snapshots they make, are created by the call; their ids are not known before.');
    start.allow(['ec2:CreateTags'], taskArns, 'Tags import tasks as they are created (tag specifications), and only then.', { StringEquals: { 'ec2:CreateAction': ['ImportImage', 'ImportSnapshot'] } });
    props.serviceRole.grantPassRole(start.role);

    const check = fn('Check', 'import', 'check', 'VM import: checks the import task');
    check.allow(['ec2:DescribeImportImageTasks', 'ec2:DescribeImportSnapshotTasks'], ['*'], DESCRIBE);

    const register = fn('Register', 'import', 'register', 'VM import: registers the AMI of imported snapshots');
    register.allow(['ec2:RegisterImage'], [imageArn, snapshotArn], 'Registers a new image from the snapshots just imported; their ids are not known before.');
    register.allow(['ec2:DescribeImages'], ['*'], DESCRIBE);

    const finalize = fn('Finalize', 'import', 'finalize', 'VM import: names, tags, shares and copies the AMI', {
      timeout: Duration.minutes(5),
    });
    finalize.allow(['ec2:DescribeImages', 'ec2:DescribeSnapshots', 'ec2:DescribeImportImageTasks'], ['*'], DESCRIBE);
    finalize.allow(['ec2:CreateTags'], [imageArn, snapshotArn], 'Names and tags the imported AMI and its snapshots, whose ids the import gives.');
    finalize.allow(['ec2:ModifyImageAttribute'], [imageArn], 'Shares the imported AMI, whose id the import gives.');
    finalize.allow(['ec2:ModifySnapshotAttribute'], [snapshotArn], 'Shares the snapshots of the imported AMI, whose ids the import gives.');
    finalize.allow(['ec2:CopyImage'], [ec2Arn('image', '*', ''), snapshotArn], 'Copies the imported AMI to the Regions an import asks for.');
    finalize.allow(['ec2:CreateTags'], [ec2Arn('image', '*', '')], 'Tags AMI copies as they are created, and only then.', { StringEquals: { 'ec2:CreateAction': 'CopyImage' } });
    finalize.allow(['imagebuilder:ImportVmImage', 'imagebuilder:TagResource'], [stack.formatArn({ service: 'imagebuilder', resource: 'image', resourceName: '*' })], 'Creates an Image Builder image from the import when asked; its name comes with the import.');

    const cleanup = fn('Cleanup', 'import', 'cleanup', 'VM import: cancels the import of a failed, timed out or aborted run', {
      environment: { VMIE_EVENT_SOURCE: IMPORT_EVENT_SOURCE },
    });
    cleanup.allow(['ec2:DescribeImportImageTasks', 'ec2:DescribeImportSnapshotTasks'], ['*'], DESCRIBE);
    cleanup.allow(['ec2:CancelImportTask'], taskArns, 'Cancels the import task of a failed execution, whose id it finds by the execution tag.');
    cleanup.allow(['events:PutEvents'], [stack.formatArn({ service: 'events', resource: 'event-bus', resourceName: 'default' })], 'Tells the default bus that an import timed out or was aborted.');

    // The definition.
    const readOptions = prepare.task(this, 'ReadOptionsTask', 'Read options', '$.request');
    const ignored = new sfn.Succeed(this, 'Ignored', { stateName: 'Not an image', comment: 'Staged files and other objects that are not images end here.' });
    readOptions.addCatch(ignored, { errors: ['NotAnImage'], resultPath: '$.ignored' });

    const validateImage = validate.task(this, 'ValidateTask', 'Validate image', '$.validation');
    const planConversion = new sfn.Pass(this, 'PlanConversion', {
      stateName: 'Plan conversion',
      parameters: {
        'done': false,
        'disks.$': '$.validation.objects',
        'target': 'vmdk',
        'outputBucket': bucket.bucketName,
        'outputPrefix.$': `States.Format('${STAGING_PREFIX}converted/{}/', $$.Execution.Name)`,
      },
      resultPath: '$.conversion',
    });
    const convertImage = convert.task(this, 'ConvertTask', 'Convert image', '$.conversion');
    // A conversion killed by its timeout or its memory resumes from its last checkpoint.
    convertImage.addRetry({ errors: ['Sandbox.Timedout', 'Lambda.Unknown', 'States.Timeout'], interval: Duration.seconds(10), backoffRate: 2, maxAttempts: 2 });
    const useConverted = new sfn.Pass(this, 'UseConverted', { stateName: 'Use converted disks', inputPath: '$.conversion.outputs', resultPath: '$.disks' });
    const useOriginal = new sfn.Pass(this, 'UseOriginal', { stateName: 'Use original disks', inputPath: '$.validation.importDisks', resultPath: '$.disks' });

    const startImport = start.task(this, 'StartTask', 'Start import', '$.import');
    startImport.addRetry({ errors: ['RoleNotReady'], interval: Duration.seconds(10), backoffRate: 2, maxDelay: Duration.minutes(2), maxAttempts: 8 });
    startImport.addRetry({ errors: ['ImportLimitExceeded'], interval: Duration.minutes(1), backoffRate: 2, maxDelay: Duration.minutes(5), maxAttempts: 50 });

    // A duplicate trigger (the same upload, another execution) finds the import already started:
    // this execution drops what it staged and ends; the first one carries on.
    const dropDuplicate = tidy.task(this, 'DropDuplicateTask', 'Drop duplicate', undefined);
    startImport.addCatch(dropDuplicate, { errors: ['DuplicateImport'], resultPath: '$.duplicate' });
    dropDuplicate.next(new sfn.Succeed(this, 'AlreadyImporting', { stateName: 'Already importing', comment: 'Another execution imports the same objects.' }));

    const waitForImport = new sfn.Wait(this, 'WaitForImport', { stateName: 'Wait for import', time: sfn.WaitTime.duration(Duration.seconds(30)) });
    const checkImport = check.task(this, 'CheckTask', 'Check import', '$.status');
    // While the task runs, the check fails with ImportInProgress and is retried with a growing
    // interval (30 s doubling to 5 min): one state transition per poll.
    checkImport.addRetry({ errors: ['ImportInProgress'], interval: Duration.seconds(30), backoffRate: 2, maxDelay: Duration.minutes(5), maxAttempts: 24 });
    const keepWaiting = new sfn.Wait(this, 'KeepWaiting', { stateName: 'Keep waiting', time: sfn.WaitTime.duration(Duration.minutes(5)) });
    checkImport.addCatch(keepWaiting, { errors: ['ImportInProgress'], resultPath: '$.poll' });
    keepWaiting.next(checkImport);

    const registerImage = register.task(this, 'RegisterTask', 'Register image', '$.registered');
    const finalizeImage = finalize.task(this, 'FinalizeTask', 'Finalize image', '$.result');
    const tidyUp = tidy.task(this, 'TidyTask', 'Tidy up', undefined);

    const notifySuccess = new tasks.EventBridgePutEvents(this, 'NotifySuccess', {
      stateName: 'Notify success',
      entries: [{ source: IMPORT_EVENT_SOURCE, detailType: 'VM Import Succeeded', detail: sfn.TaskInput.fromJsonPathAt('$.result') }],
      resultPath: sfn.JsonPath.DISCARD,
    });
    const imported = new sfn.Succeed(this, 'Imported', { stateName: 'Imported', outputPath: '$.result' });

    // One clean-up path for every failure.
    const cancelImport = cleanup.task(this, 'CleanupTask', 'Cancel import', '$.failure');
    const removeStaged = tidy.task(this, 'RemoveStagedTask', 'Remove staged files', undefined);
    const notifyFailure = new tasks.EventBridgePutEvents(this, 'NotifyFailure', {
      stateName: 'Notify failure',
      entries: [{ source: IMPORT_EVENT_SOURCE, detailType: 'VM Import Failed', detail: sfn.TaskInput.fromJsonPathAt('$.failure') }],
      resultPath: sfn.JsonPath.DISCARD,
    });
    const failed = new sfn.Fail(this, 'Failed', {
      stateName: 'Import failed',
      errorPath: '$.failure.error',
      causePath: '$.failure.reason',
    });
    let failureTail: sfn.IChainable = failed;
    let successTail: sfn.IChainable = imported;
    if (props.notificationTopic) {
      const publish = (idPart: string, stateName: string, subject: string, path: string) =>
        new tasks.SnsPublish(this, idPart, {
          stateName,
          topic: props.notificationTopic!,
          subject,
          message: sfn.TaskInput.fromJsonPathAt(path),
          resultPath: sfn.JsonPath.DISCARD,
        });
      successTail = publish('PublishSuccess', 'Publish success', 'VM import succeeded', '$.result').next(imported);
      failureTail = publish('PublishFailure', 'Publish failure', 'VM import failed', '$.failure').next(failed);
    }
    // A failure to clean up must not hide the original failure: carry on to the notification.
    removeStaged.addCatch(notifyFailure, { errors: ['States.ALL'], resultPath: '$.tidyError' });
    cancelImport.next(removeStaged).next(notifyFailure).next(failureTail);
    // When the clean-up itself fails, the failure is described from the error caught.
    const failureDescribed = describeFailure(this, 'import');
    cancelImport.addCatch(failureDescribed, { errors: ['States.ALL'], resultPath: '$.cleanupError' });
    failureDescribed.next(removeStaged);

    for (const t of [readOptions, validateImage, convertImage, startImport, checkImport, registerImage, finalizeImage, tidyUp, dropDuplicate]) {
      t.addCatch(cancelImport, { errors: ['States.ALL'], resultPath: '$.error' });
    }

    const afterImport = new sfn.Choice(this, 'SnapshotMode', { stateName: 'Snapshot mode?' })
      .when(sfn.Condition.stringEquals('$.import.mode', 'snapshot'), registerImage.next(finalizeImage))
      .otherwise(finalizeImage);
    finalizeImage.next(tidyUp).next(notifySuccess).next(successTail);

    const importChain = startImport.next(waitForImport).next(checkImport).next(afterImport);
    const conversionDone = new sfn.Choice(this, 'ConversionDone', { stateName: 'Conversion done?' })
      .when(sfn.Condition.booleanEquals('$.conversion.done', false), convertImage)
      .otherwise(useConverted.next(startImport));
    const definition = readOptions
      .next(validateImage)
      .next(new sfn.Choice(this, 'NeedsConversion', { stateName: 'Needs conversion?' })
        .when(sfn.Condition.booleanEquals('$.validation.needsConversion', true), planConversion.next(convertImage).next(conversionDone))
        .otherwise(useOriginal.next(importChain)));

    // Timeout and abort end the execution without running a state: the same clean-up runs from
    // the execution's status change.
    this.stateMachine = workflowStateMachine(this, {
      definition,
      timeout: props.timeout ?? Duration.days(3),
      retention,
      comment: 'VM import: an image in the import bucket becomes an AMI',
      functions: [prepare, validate, convert, tidy, start, check, register, finalize, cleanup],
      onStop: [cleanup, tidy],
      onStopDescription: 'Cancels the import task and aborts uploads of timed out or aborted VM imports',
    });

    if (props.enableTrigger ?? true) {
      this.triggerRule = this.addTrigger('Trigger', props.trigger ?? {});
    }
  }

  /**
   * Adds a rule that starts an import for each image uploaded under `options.prefix` with one of
   * `options.suffixes`.
   */
  public addTrigger(id: string, options: ImportTriggerOptions): events.Rule {
    const prefix = options.prefix ?? '';
    const suffixes = options.suffixes ?? IMAGE_SUFFIXES;
    return new events.Rule(this, id, {
      description: `Starts a VM import for images uploaded to the import bucket${prefix ? ` under ${prefix}` : ''}`,
      eventPattern: {
        source: ['aws.s3'],
        detailType: ['Object Created'],
        detail: {
          bucket: { name: [this.importBucket.bucketName] },
          object: { key: suffixes.map((s) => ({ wildcard: `${escapeWildcard(prefix)}*${escapeWildcard(s)}` })) },
        },
      },
      targets: [new targets.SfnStateMachine(this.stateMachine)],
    });
  }

  /** Lets `grantee` start imports (`states:StartExecution`). */
  public grantStartExecution(grantee: iam.IGrantable): iam.Grant {
    return this.stateMachine.grantStartExecution(grantee);
  }

  /** Lets `grantee` follow imports: describe executions and read their history. */
  public grantRead(grantee: iam.IGrantable): iam.Grant {
    return this.stateMachine.grantRead(grantee);
  }

  /** Imports that ended with an AMI. */
  public metricSucceeded(props?: cloudwatch.MetricOptions): cloudwatch.Metric {
    return this.stateMachine.metricSucceeded(props);
  }

  /** Imports that failed (including images that cannot be imported). */
  public metricFailed(props?: cloudwatch.MetricOptions): cloudwatch.Metric {
    return this.stateMachine.metricFailed(props);
  }

  /** Imports that ran out of time. */
  public metricTimedOut(props?: cloudwatch.MetricOptions): cloudwatch.Metric {
    return this.stateMachine.metricTimedOut(props);
  }

  /** Imports started. */
  public metricStarted(props?: cloudwatch.MetricOptions): cloudwatch.Metric {
    return this.stateMachine.metricStarted(props);
  }

  /** How long imports take, from the upload to the finished AMI. */
  public metricDuration(props?: cloudwatch.MetricOptions): cloudwatch.Metric {
    return this.stateMachine.metricTime(props);
  }
}

/** EventBridge wildcard patterns treat `*` as the wildcard and `\` as the escape. */
function escapeWildcard(s: string): string {
  return s.replace(/[\\*]/g, (c) => `\\${c}`);
}
