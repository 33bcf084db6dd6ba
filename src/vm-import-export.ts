import { Duration } from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as cw_actions from 'aws-cdk-lib/aws-cloudwatch-actions';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as sns from 'aws-cdk-lib/aws-sns';
import { Construct } from 'constructs';
import { VmExportBucket, VmExportGrant } from './export-bucket';
import { ExportFormat, VmExportWorkflow } from './export-workflow';
import { VmImportBucket } from './import-bucket';
import type { ImportOptions } from './import-options';
import { VmImportWorkflow, type ImportTriggerOptions } from './import-workflow';
import { VmieServiceRole, type IVmieServiceRole } from './service-role';

/** Properties of {@link VmImportExport}. */
export interface VmImportExportProps {
  /**
   * The service role to use.
   *
   * @default - a new `VmieServiceRole` with a generated name
   */
  readonly serviceRole?: IVmieServiceRole;

  /**
   * The bucket images are uploaded to. It must send events to EventBridge for uploads to start imports.
   *
   * @default - a new `VmImportBucket`
   */
  readonly importBucket?: s3.IBucket;

  /**
   * A KMS key for the new import bucket (ignored when `importBucket` is given).
   *
   * @default - SSE-S3
   */
  readonly importBucketKey?: kms.IKey;

  /**
   * The bucket exports are written to.
   *
   * @default - a new `VmExportBucket` (bucket-policy grant to the Region's VM Export account)
   */
  readonly exportBucket?: s3.IBucket;

  /**
   * How the new export bucket grants the VM Export account (ignored when `exportBucket` is given).
   *
   * @default VmExportGrant.BUCKET_POLICY
   */
  readonly exportGrant?: VmExportGrant;

  /**
   * Whether to add the export workflow.
   *
   * @default true
   */
  readonly enableExport?: boolean;

  /**
   * How images are imported unless an image says otherwise.
   *
   * @default - see `VmImportWorkflowProps.defaults`
   */
  readonly importDefaults?: ImportOptions;

  /**
   * Which uploads start an import.
   *
   * @default - every image uploaded with one of the image suffixes
   */
  readonly trigger?: ImportTriggerOptions;

  /**
   * The longest an import may take.
   *
   * @default Duration.days(3)
   */
  readonly importTimeout?: Duration;

  /**
   * The format of exports whose input names none.
   *
   * @default ExportFormat.VMDK
   */
  readonly defaultExportFormat?: ExportFormat;

  /**
   * A topic told of every import and export that ends.
   *
   * @default - events on the default event bus only
   */
  readonly notificationTopic?: sns.ITopic;

  /**
   * A topic the alarms notify.
   *
   * @default - alarms without actions
   */
  readonly alarmTopic?: sns.ITopic;

  /**
   * Server access logs of the new buckets go to this bucket.
   *
   * @default - no server access logs
   */
  readonly serverAccessLogsBucket?: s3.IBucket;

  /**
   * How long the workflows' logs are kept.
   *
   * @default logs.RetentionDays.THREE_MONTHS
   */
  readonly logRetention?: logs.RetentionDays;

  /**
   * Whether to create a CloudWatch dashboard of imports and exports.
   *
   * @default true
   */
  readonly dashboard?: boolean;
}

/**
 * VM Import/Export in one construct: the service role, an import bucket whose uploads become AMIs
 * through the import workflow, an export bucket that the export workflow fills from AMIs and
 * instances, alarms on failures and timeouts, and a dashboard. Every part is exposed for
 * composition, and every part can be replaced by one you already have.
 */
export class VmImportExport extends Construct {
  public readonly serviceRole: IVmieServiceRole;
  public readonly importBucket: s3.IBucket;
  public readonly exportBucket?: s3.IBucket;
  public readonly importWorkflow: VmImportWorkflow;
  public readonly exportWorkflow?: VmExportWorkflow;
  /** Alarms on failed and timed out imports (and failed exports). */
  public readonly alarms: cloudwatch.Alarm[] = [];
  public readonly dashboard?: cloudwatch.Dashboard;

  public constructor(scope: Construct, id: string, props: VmImportExportProps = {}) {
    super(scope, id);
    if (props.importBucket && props.importBucketKey) {
      throw new Error(`VmImportExport ${this.node.path}: importBucketKey applies to the bucket this construct creates; with importBucket given, encrypt that bucket yourself.`);
    }
    if (props.exportBucket && props.exportGrant) {
      throw new Error(`VmImportExport ${this.node.path}: exportGrant applies to the bucket this construct creates; with exportBucket given, grant the VM Export account on it yourself (VmExportBucket does).`);
    }
    this.serviceRole = props.serviceRole ?? new VmieServiceRole(this, 'ServiceRole');
    this.importBucket = props.importBucket ?? new VmImportBucket(this, 'ImportBucket', {
      encryptionKey: props.importBucketKey,
      serverAccessLogsBucket: props.serverAccessLogsBucket,
    }).bucket;
    this.importWorkflow = new VmImportWorkflow(this, 'ImportWorkflow', {
      importBucket: this.importBucket,
      serviceRole: this.serviceRole,
      defaults: props.importDefaults,
      trigger: props.trigger,
      timeout: props.importTimeout,
      notificationTopic: props.notificationTopic,
      logRetention: props.logRetention,
    });
    if (props.enableExport ?? true) {
      this.exportBucket = props.exportBucket ?? new VmExportBucket(this, 'ExportBucket', {
        exportGrant: props.exportGrant,
        serverAccessLogsBucket: props.serverAccessLogsBucket,
      }).bucket;
      this.exportWorkflow = new VmExportWorkflow(this, 'ExportWorkflow', {
        exportBucket: this.exportBucket,
        serviceRole: this.serviceRole,
        defaultFormat: props.defaultExportFormat,
        notificationTopic: props.notificationTopic,
        logRetention: props.logRetention,
      });
    }

    const period = Duration.minutes(5);
    const alarm = (idPart: string, metric: cloudwatch.Metric, description: string) => {
      const a = new cloudwatch.Alarm(this, idPart, {
        metric,
        threshold: 1,
        evaluationPeriods: 1,
        comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
        alarmDescription: description,
      });
      if (props.alarmTopic) a.addAlarmAction(new cw_actions.SnsAction(props.alarmTopic));
      this.alarms.push(a);
      return a;
    };
    alarm('ImportFailedAlarm', this.importWorkflow.metricFailed({ period, statistic: 'Sum' }), 'A VM import failed: see the VM Import Failed event or the execution for the reason and the remedy.');
    alarm('ImportTimedOutAlarm', this.importWorkflow.metricTimedOut({ period, statistic: 'Sum' }), 'A VM import ran out of time; its import task was cancelled.');
    if (this.exportWorkflow) {
      alarm('ExportFailedAlarm', this.exportWorkflow.metricFailed({ period, statistic: 'Sum' }), 'A VM export failed: see the VM Export Failed event for the reason and the remedy.');
    }

    if (props.dashboard ?? true) {
      const hour = Duration.hours(1);
      const widgets: cloudwatch.IWidget[] = [
        new cloudwatch.GraphWidget({
          title: 'Imports',
          left: [
            this.importWorkflow.metricStarted({ period: hour, statistic: 'Sum', label: 'started' }),
            this.importWorkflow.metricSucceeded({ period: hour, statistic: 'Sum', label: 'succeeded' }),
            this.importWorkflow.metricFailed({ period: hour, statistic: 'Sum', label: 'failed' }),
            this.importWorkflow.metricTimedOut({ period: hour, statistic: 'Sum', label: 'timed out' }),
          ],
          width: 12,
        }),
        new cloudwatch.GraphWidget({
          title: 'Import duration',
          left: [
            this.importWorkflow.metricDuration({ period: hour, statistic: 'p50', label: 'p50' }),
            this.importWorkflow.metricDuration({ period: hour, statistic: 'Maximum', label: 'max' }),
          ],
          width: 12,
        }),
      ];
      if (this.exportWorkflow) {
        widgets.push(new cloudwatch.GraphWidget({
          title: 'Exports',
          left: [
            this.exportWorkflow.metricSucceeded({ period: hour, statistic: 'Sum', label: 'succeeded' }),
            this.exportWorkflow.metricFailed({ period: hour, statistic: 'Sum', label: 'failed' }),
          ],
          right: [this.exportWorkflow.metricDuration({ period: hour, statistic: 'Maximum', label: 'max duration' })],
          width: 12,
        }));
      }
      widgets.push(new cloudwatch.AlarmStatusWidget({ title: 'Alarms', alarms: this.alarms, width: 12 }));
      this.dashboard = new cloudwatch.Dashboard(this, 'Dashboard', { widgets: [widgets] });
    }
  }

  /** Lets `grantee` upload images to the import bucket. */
  public grantUpload(grantee: iam.IGrantable): iam.Grant {
    return this.importBucket.grantPut(grantee);
  }

  /** Lets `grantee` start imports by hand and follow them. */
  public grantStartImport(grantee: iam.IGrantable): iam.Grant {
    this.importWorkflow.grantRead(grantee);
    return this.importWorkflow.grantStartExecution(grantee);
  }

  /** Lets `grantee` start exports and follow them (nothing when the export workflow is off). */
  public grantStartExport(grantee: iam.IGrantable): iam.Grant | undefined {
    if (!this.exportWorkflow) return undefined;
    this.exportWorkflow.grantRead(grantee);
    return this.exportWorkflow.grantStartExecution(grantee);
  }
}
