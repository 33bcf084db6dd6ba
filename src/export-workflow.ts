import { ArnFormat, Duration, Stack, Token } from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import * as tasks from 'aws-cdk-lib/aws-stepfunctions-tasks';
import { Construct } from 'constructs';
import { WorkflowFunction } from './private/workflow-function';
import { describeFailure, workflowStateMachine } from './private/workflow-parts';
import type { IVmieServiceRole } from './service-role';

const EXPORT_EVENT_SOURCE = 'vmie.export';
const DESCRIBE = 'EC2 Describe actions support no resource-level permissions.';

/** The file format of an export. */
export class ExportFormat {
  /** Stream-optimized VMDK (VMware). */
  public static readonly VMDK = new ExportFormat('VMDK');
  /** Dynamic VHD (Hyper-V, Citrix). */
  public static readonly VHD = new ExportFormat('VHD');
  /** Raw disk image. */
  public static readonly RAW = new ExportFormat('RAW');
  /** An OVA package with a VMDK (instance exports only). */
  public static readonly OVA = new ExportFormat('OVA');
  private constructor(public readonly value: string) {}
}

/** Properties of a {@link VmExportWorkflow}. */
export interface VmExportWorkflowProps {
  /**
   * The bucket exports are written to: in the stack's Region, SSE-S3 (an SSE-KMS bucket is
   * rejected by the service), and, for instance exports, granting the Region's VM Export account
   * (a `VmExportBucket` does all of this).
   */
  readonly exportBucket: s3.IBucket;

  /** The VM Import/Export service role that image exports run as; it is granted write access to the bucket. */
  readonly serviceRole: IVmieServiceRole;

  /**
   * The format of an export whose input names none.
   *
   * @default ExportFormat.VMDK
   */
  readonly defaultFormat?: ExportFormat;

  /**
   * The key prefix of exported files, unless the input gives one.
   *
   * @default 'exports/'
   */
  readonly prefix?: string;

  /**
   * Export tasks the account may run at once in the Region (the service's quota, 5 by default).
   * Executions wait for room instead of failing.
   *
   * @default 5
   */
  readonly maxConcurrentExports?: number;

  /**
   * The longest an export may take; on timeout the export task is cancelled.
   *
   * @default Duration.days(1)
   */
  readonly timeout?: Duration;

  /**
   * A topic that is told of every export that succeeds or fails.
   *
   * @default - events on the default event bus only
   */
  readonly notificationTopic?: sns.ITopic;

  /**
   * How long the logs of the workflow's functions and state machine are kept.
   *
   * @default logs.RetentionDays.THREE_MONTHS
   */
  readonly logRetention?: logs.RetentionDays;
}

/**
 * The export workflow: a Step Functions state machine that exports an AMI (`ExportImage`: VMDK, VHD
 * or raw) or an instance (`CreateInstanceExportTask`: OVA, VMDK, VHD or raw) to the export bucket.
 * It checks the documented constraints first (encrypted snapshots, volumes over 1 TiB, Marketplace
 * and license-included images, instances with several volumes, an SSE-KMS bucket) and fails with
 * the reason and the remedy; waits for room when the Region's export tasks are all in use; polls
 * the task with a growing interval; cancels it on failure, timeout or abort; and ends with an
 * event naming the object written.
 *
 * Start it with `{ "imageId": "ami-..." }` or `{ "instanceId": "i-...", "format": "OVA" }`,
 * optionally with `prefix`, `description`, `tags` and, for instances, `targetEnvironment`.
 */
export class VmExportWorkflow extends Construct {
  /** The `source` of the workflow's events (`VM Export Succeeded`, `VM Export Failed`). */
  public static readonly EVENT_SOURCE = EXPORT_EVENT_SOURCE;

  /** The state machine. */
  public readonly stateMachine: sfn.StateMachine;
  /** The export bucket. */
  public readonly exportBucket: s3.IBucket;

  public constructor(scope: Construct, id: string, props: VmExportWorkflowProps) {
    super(scope, id);
    const problems: string[] = [];
    const max = props.maxConcurrentExports ?? 5;
    if (!Token.isUnresolved(max) && (!Number.isInteger(max) || max < 1 || max > 100)) {
      problems.push(`maxConcurrentExports must be a whole number from 1 to 100 (the Region's export task quota), got ${max}.`);
    }
    if (props.timeout && !props.timeout.isUnresolved() && (props.timeout.toSeconds() < 3600 || props.timeout.toSeconds() > 365 * 86400)) {
      problems.push(`timeout must be between 1 hour and 365 days, got ${props.timeout.toHumanString()}.`);
    }
    const prefix = props.prefix ?? 'exports/';
    if (!Token.isUnresolved(prefix) && prefix !== '' && !prefix.endsWith('/')) {
      problems.push(`prefix should end with '/' (the service appends the file name to it), got '${prefix}'.`);
    }
    if (props.defaultFormat === ExportFormat.OVA) {
      problems.push('defaultFormat cannot be OVA: ExportImage writes VMDK, VHD or RAW; ask for OVA per instance export in the input.');
    }
    if (problems.length > 0) throw new Error(`VmExportWorkflow ${this.node.path}: ${problems.join(' ')}`);

    this.exportBucket = props.exportBucket;
    const stack = Stack.of(this);
    const retention = props.logRetention ?? logs.RetentionDays.THREE_MONTHS;
    props.serviceRole.addExportBucket(props.exportBucket);

    const ec2Arn = (resource: string, account: string = stack.account) =>
      stack.formatArn({ service: 'ec2', account, resource, resourceName: '*', arnFormat: ArnFormat.SLASH_RESOURCE_NAME });
    const exportTasks = [ec2Arn('export-image-task'), ec2Arn('export-instance-task')];
    const env = {
      VMIE_ROLE_NAME: props.serviceRole.roleName,
      VMIE_EXPORT_BUCKET: props.exportBucket.bucketName,
      VMIE_EXPORT_PREFIX: prefix,
      VMIE_DEFAULT_FORMAT: (props.defaultFormat ?? ExportFormat.VMDK).value,
      VMIE_MAX_EXPORT_TASKS: String(max),
      VMIE_EVENT_SOURCE: EXPORT_EVENT_SOURCE,
    };
    const fn = (idPart: string, handler: string, description: string) =>
      new WorkflowFunction(this, idPart, { bundle: 'export', handler, description, logRetention: retention, environment: env });

    const preflight = fn('Preflight', 'preflight', 'VM export: checks the documented constraints before exporting');
    preflight.allow(['ec2:DescribeImages', 'ec2:DescribeSnapshots', 'ec2:DescribeInstances', 'ec2:DescribeVolumes'], ['*'], DESCRIBE);

    const start = fn('Start', 'start', 'VM export: starts ExportImage or CreateInstanceExportTask');
    start.allow(['ec2:DescribeExportImageTasks', 'ec2:DescribeExportTasks'], ['*'], DESCRIBE);
    start.allow(['ec2:ExportImage'], [ec2Arn('image', ''), exportTasks[0]], 'Exports the AMI an execution names, creating a task whose id is not known before.');
    start.allow(['ec2:CreateInstanceExportTask'], [ec2Arn('instance'), exportTasks[1]], 'Exports the instance an execution names, creating a task whose id is not known before.');
    start.allow(['ec2:CreateTags'], exportTasks, 'Tags export tasks as they are created, and only then.', { StringEquals: { 'ec2:CreateAction': ['ExportImage', 'CreateInstanceExportTask'] } });
    props.serviceRole.grantPassRole(start.role);

    const check = fn('Check', 'check', 'VM export: checks the export task');
    check.allow(['ec2:DescribeExportImageTasks', 'ec2:DescribeExportTasks'], ['*'], DESCRIBE);

    const cleanup = fn('Cleanup', 'cleanup', 'VM export: cancels the export task of a failed, timed out or aborted run');
    cleanup.allow(['ec2:DescribeExportImageTasks', 'ec2:DescribeExportTasks'], ['*'], DESCRIBE);
    cleanup.allow(['ec2:CancelExportTask'], exportTasks, 'Cancels the export task of a failed execution, whose id it finds by the execution tag.');
    cleanup.allow(['events:PutEvents'], [stack.formatArn({ service: 'events', resource: 'event-bus', resourceName: 'default' })], 'Tells the default bus that an export timed out or was aborted.');

    // The definition.
    const bucketEncryption = new tasks.CallAwsService(this, 'BucketEncryption', {
      stateName: 'Read bucket encryption',
      service: 's3',
      action: 'getBucketEncryption',
      parameters: { Bucket: props.exportBucket.bucketName },
      iamResources: [props.exportBucket.bucketArn],
      iamAction: 's3:GetEncryptionConfiguration',
      resultPath: '$.bucket',
    });
    const noEncryption = new sfn.Pass(this, 'NoEncryption', { stateName: 'No bucket encryption', result: sfn.Result.fromObject({}), resultPath: '$.bucket' });
    bucketEncryption.addCatch(noEncryption, { errors: ['States.TaskFailed'], resultPath: '$.bucket' });

    const checkConstraints = preflight.task(this, 'PreflightTask', 'Check constraints', '$.preflight');
    const startExport = start.task(this, 'StartTask', 'Start export', '$.export');
    // A full Region waits for room: about 4 hours of retries, 5 minutes apart.
    startExport.addRetry({ errors: ['RoleNotReady'], interval: Duration.seconds(10), backoffRate: 2, maxDelay: Duration.minutes(2), maxAttempts: 8 });
    startExport.addRetry({ errors: ['ExportLimitExceeded'], interval: Duration.minutes(1), backoffRate: 2, maxDelay: Duration.minutes(5), maxAttempts: 50 });
    const waitForExport = new sfn.Wait(this, 'WaitForExport', { stateName: 'Wait for export', time: sfn.WaitTime.duration(Duration.seconds(30)) });
    const checkExport = check.task(this, 'CheckTask', 'Check export', '$.status');
    checkExport.addRetry({ errors: ['ExportInProgress'], interval: Duration.seconds(30), backoffRate: 2, maxDelay: Duration.minutes(5), maxAttempts: 24 });
    const keepWaiting = new sfn.Wait(this, 'KeepWaiting', { stateName: 'Keep waiting', time: sfn.WaitTime.duration(Duration.minutes(5)) });
    checkExport.addCatch(keepWaiting, { errors: ['ExportInProgress'], resultPath: '$.poll' });
    keepWaiting.next(checkExport);

    const notifySuccess = new tasks.EventBridgePutEvents(this, 'NotifySuccess', {
      stateName: 'Notify success',
      entries: [{
        source: EXPORT_EVENT_SOURCE,
        detailType: 'VM Export Succeeded',
        detail: sfn.TaskInput.fromObject({
          'export.$': '$.export',
          'object.$': '$.status.object',
          'execution.$': '$$.Execution.Id',
        }),
      }],
      resultPath: sfn.JsonPath.DISCARD,
    });
    const exported = new sfn.Succeed(this, 'Exported', { stateName: 'Exported', outputPath: '$.status' });

    const cancelExport = cleanup.task(this, 'CleanupTask', 'Cancel export', '$.failure');
    const notifyFailure = new tasks.EventBridgePutEvents(this, 'NotifyFailure', {
      stateName: 'Notify failure',
      entries: [{ source: EXPORT_EVENT_SOURCE, detailType: 'VM Export Failed', detail: sfn.TaskInput.fromJsonPathAt('$.failure') }],
      resultPath: sfn.JsonPath.DISCARD,
    });
    const failed = new sfn.Fail(this, 'Failed', { stateName: 'Export failed', errorPath: '$.failure.error', causePath: '$.failure.reason' });
    let successTail: sfn.IChainable = exported;
    let failureTail: sfn.IChainable = failed;
    if (props.notificationTopic) {
      const publish = (idPart: string, stateName: string, subject: string, path: string) =>
        new tasks.SnsPublish(this, idPart, {
          stateName,
          topic: props.notificationTopic!,
          subject,
          message: sfn.TaskInput.fromJsonPathAt(path),
          resultPath: sfn.JsonPath.DISCARD,
        });
      successTail = publish('PublishSuccess', 'Publish success', 'VM export succeeded', '$.status').next(exported);
      failureTail = publish('PublishFailure', 'Publish failure', 'VM export failed', '$.failure').next(failed);
    }
    const failureDescribed = describeFailure(this, 'export');
    cancelExport.addCatch(failureDescribed, { errors: ['States.ALL'], resultPath: '$.cleanupError' });
    failureDescribed.next(notifyFailure);
    cancelExport.next(notifyFailure).next(failureTail);
    for (const t of [checkConstraints, startExport, checkExport]) {
      t.addCatch(cancelExport, { errors: ['States.ALL'], resultPath: '$.error' });
    }

    const definition = bucketEncryption
      .next(checkConstraints)
      .next(startExport)
      .next(waitForExport)
      .next(checkExport)
      .next(notifySuccess)
      .next(successTail);
    noEncryption.next(checkConstraints);

    this.stateMachine = workflowStateMachine(this, {
      definition,
      timeout: props.timeout ?? Duration.days(1),
      retention,
      comment: 'VM export: an AMI or an instance becomes a VM file in the export bucket',
      functions: [preflight, start, check, cleanup],
      onStop: [cleanup],
      onStopDescription: 'Cancels the export task of timed out or aborted VM exports',
    });
  }

  /** Lets `grantee` start exports (`states:StartExecution`). */
  public grantStartExecution(grantee: iam.IGrantable): iam.Grant {
    return this.stateMachine.grantStartExecution(grantee);
  }

  /** Lets `grantee` follow exports: describe executions and read their history. */
  public grantRead(grantee: iam.IGrantable): iam.Grant {
    return this.stateMachine.grantRead(grantee);
  }

  /** Exports that ended with a file. */
  public metricSucceeded(props?: cloudwatch.MetricOptions): cloudwatch.Metric {
    return this.stateMachine.metricSucceeded(props);
  }

  /** Exports that failed. */
  public metricFailed(props?: cloudwatch.MetricOptions): cloudwatch.Metric {
    return this.stateMachine.metricFailed(props);
  }

  /** How long exports take. */
  public metricDuration(props?: cloudwatch.MetricOptions): cloudwatch.Metric {
    return this.stateMachine.metricTime(props);
  }
}
