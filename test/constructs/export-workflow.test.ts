import { App, Duration, Stack, Validations } from 'aws-cdk-lib';
import { Match, Template } from 'aws-cdk-lib/assertions';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as sns from 'aws-cdk-lib/aws-sns';
import { AwsSolutionsChecks } from 'cdk-nag';
import {
  ExportFormat, VmExportBucket, VmExportGrant, VmExportWorkflow, VmieServiceRole, VmImportExport, type VmExportWorkflowProps,
} from '../../src';
import { actionsOf, logicalIdOf, newStack, policyStatementsOfRole } from '../helpers/stacks';
import { definitionOf, statesOf } from '../helpers/state-machine';

function exportStack(props: Partial<VmExportWorkflowProps> = {}) {
  const stack = newStack();
  const bucket = new VmExportBucket(stack, 'Exports');
  const role = new VmieServiceRole(stack, 'Role');
  const workflow = new VmExportWorkflow(stack, 'Export', { exportBucket: bucket.bucket, serviceRole: role, ...props });
  return { stack, bucket, role, workflow, template: Template.fromStack(stack) };
}

describe('VmExportWorkflow', () => {
  test('the definition: constraints checked first, waits for room, polls with a growing wait, one clean-up path', () => {
    // GIVEN / WHEN
    const { template } = exportStack();
    const definition = definitionOf(template);
    const states = statesOf(definition);
    // THEN
    expect(definition.StartAt).toBe('Read bucket encryption');
    expect(definition.TimeoutSeconds).toBe(86400);
    expect(states['Read bucket encryption']).toMatchObject({ Resource: 'arn:<AWS::Partition>:states:::aws-sdk:s3:getBucketEncryption', Next: 'Check constraints' });
    expect(states['No bucket encryption'].Next).toBe('Check constraints');
    expect(states['Start export'].Retry).toContainEqual(expect.objectContaining({ ErrorEquals: ['ExportLimitExceeded'], IntervalSeconds: 60, MaxDelaySeconds: 300 }));
    expect(states['Check export'].Retry).toContainEqual(expect.objectContaining({ ErrorEquals: ['ExportInProgress'], IntervalSeconds: 30, BackoffRate: 2, MaxDelaySeconds: 300 }));
    expect(states['Check export'].Catch[0]).toEqual({ ErrorEquals: ['ExportInProgress'], ResultPath: '$.poll', Next: 'Keep waiting' });
    for (const name of ['Check constraints', 'Start export', 'Check export']) {
      expect(states[name].Catch.find((c: any) => c.ErrorEquals.includes('States.ALL')).Next).toBe('Cancel export');
    }
    expect(states['Cancel export'].Next).toBe('Notify failure');
    expect(states['Notify failure'].Next).toBe('Export failed');
    expect(states['Notify success'].Parameters.Entries[0]).toMatchObject({ Source: 'vmie.export', DetailType: 'VM Export Succeeded' });
  });

  test('least privilege: image exports pass only the service role; cancel only export tasks', () => {
    // GIVEN / WHEN
    const { template } = exportStack();
    const fnRole = (handler: string) => {
      const id = logicalIdOf(template, 'AWS::Lambda::Function', (p) => p.Handler === `index.${handler}`);
      return template.findResources('AWS::Lambda::Function')[id].Properties.Role['Fn::GetAtt'][0];
    };
    // THEN
    const start = policyStatementsOfRole(template, fnRole('start'));
    expect(start.flatMap(actionsOf).filter((a: string) => !a.startsWith('logs:')).sort()).toEqual([
      'ec2:CreateInstanceExportTask', 'ec2:CreateTags', 'ec2:DescribeExportImageTasks', 'ec2:DescribeExportTasks', 'ec2:ExportImage', 'iam:PassRole',
    ]);
    const serviceRoleId = logicalIdOf(template, 'AWS::IAM::Role', (p) => JSON.stringify(p.AssumeRolePolicyDocument).includes('vmie.amazonaws.com'));
    expect(start.find((s: any) => actionsOf(s).includes('iam:PassRole')).Resource).toEqual({ 'Fn::GetAtt': [serviceRoleId, 'Arn'] });
    const cleanup = policyStatementsOfRole(template, fnRole('cleanup'));
    const cancel = cleanup.find((s: any) => actionsOf(s).includes('ec2:CancelExportTask'));
    expect(JSON.stringify(cancel.Resource)).toMatch(/export-image-task\/\*/);
    expect(JSON.stringify(cancel.Resource)).toMatch(/export-instance-task\/\*/);
    // The service role may write to the export bucket.
    const serviceStatements = policyStatementsOfRole(template, serviceRoleId);
    expect(serviceStatements.some((s: any) => actionsOf(s).includes('s3:PutObject'))).toBe(true);
  });

  test('settings reach the functions', () => {
    // GIVEN / WHEN
    const { template } = exportStack({ defaultFormat: ExportFormat.VHD, prefix: 'vm/', maxConcurrentExports: 7, timeout: Duration.hours(6) });
    // THEN
    template.hasResourceProperties('AWS::Lambda::Function', {
      Handler: 'index.start',
      Environment: { Variables: Match.objectLike({ VMIE_DEFAULT_FORMAT: 'VHD', VMIE_EXPORT_PREFIX: 'vm/', VMIE_MAX_EXPORT_TASKS: '7' }) },
    });
    expect(definitionOf(template).TimeoutSeconds).toBe(6 * 3600);
  });

  test.each([
    [{ maxConcurrentExports: 0 }, /maxConcurrentExports must be a whole number from 1 to 100/],
    [{ prefix: 'exports' }, /prefix should end with '\/'/],
    [{ defaultFormat: ExportFormat.OVA }, /defaultFormat cannot be OVA/],
    [{ timeout: Duration.minutes(5) }, /timeout must be between 1 hour and 365 days/],
  ] as Array<[Partial<VmExportWorkflowProps>, RegExp]>)('synth-time error %#', (props, message) => {
    expect(() => exportStack(props)).toThrow(message);
  });

  test('an SSE-KMS export bucket is rejected at synth time (the service cannot write to it)', () => {
    // GIVEN
    const stack = newStack();
    const bucket = new s3.Bucket(stack, 'Kms', { encryption: s3.BucketEncryption.KMS });
    const role = new VmieServiceRole(stack, 'Role');
    // WHEN / THEN
    expect(() => new VmExportWorkflow(stack, 'Export', { exportBucket: bucket, serviceRole: role })).toThrow(/KMS/);
  });
});

describe('VmImportExport', () => {
  test('wires role, buckets, both workflows, alarms and a dashboard', () => {
    // GIVEN
    const stack = newStack();
    // WHEN
    const vie = new VmImportExport(stack, 'Vie', { notificationTopic: new sns.Topic(stack, 'Topic'), alarmTopic: new sns.Topic(stack, 'Alarms') });
    const template = Template.fromStack(stack);
    // THEN
    template.resourceCountIs('AWS::StepFunctions::StateMachine', 2);
    template.resourceCountIs('AWS::S3::Bucket', 2);
    template.resourceCountIs('AWS::CloudWatch::Alarm', 3);
    template.resourceCountIs('AWS::CloudWatch::Dashboard', 1);
    template.allResourcesProperties('AWS::CloudWatch::Alarm', { AlarmActions: [{ Ref: Match.stringLikeRegexp('Alarms') }] });
    expect(vie.exportWorkflow).toBeDefined();
    expect(vie.alarms).toHaveLength(3);
  });

  test('without export, and with your own buckets', () => {
    // GIVEN
    const stack = newStack();
    const mine = new s3.Bucket(stack, 'Mine', { eventBridgeEnabled: true });
    // WHEN
    const vie = new VmImportExport(stack, 'Vie', { importBucket: mine, enableExport: false, dashboard: false });
    const template = Template.fromStack(stack);
    // THEN
    template.resourceCountIs('AWS::StepFunctions::StateMachine', 1);
    template.resourceCountIs('AWS::S3::Bucket', 1);
    template.resourceCountIs('AWS::CloudWatch::Dashboard', 0);
    expect(vie.exportWorkflow).toBeUndefined();
    expect(vie.importBucket).toBe(mine);
  });

  test('props that would be ignored are errors', () => {
    // GIVEN
    const stack = newStack();
    const key = new kms.Key(stack, 'K');
    // WHEN / THEN
    expect(() => new VmImportExport(stack, 'A', { exportBucket: new s3.Bucket(stack, 'E'), exportGrant: VmExportGrant.BUCKET_ACL }))
      .toThrow(/exportGrant applies to the bucket this construct creates/);
    expect(() => new VmImportExport(stack, 'B', { importBucket: new s3.Bucket(stack, 'I'), importBucketKey: key }))
      .toThrow(/importBucketKey applies to the bucket this construct creates/);
  });

  test('cdk-nag: the whole construct with access logs has no unacknowledged findings', () => {
    // GIVEN
    const app = new App();
    const stack = new Stack(app, 'NagAll', { env: { account: '111111111111', region: 'eu-west-1' } });
    const logs = new s3.Bucket(stack, 'AccessLogs', { enforceSSL: true, blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL });
    Validations.of(logs).acknowledge({ id: 'AwsSolutions-S1', reason: 'This bucket is the access log destination.' });
    new VmImportExport(stack, 'Vie', { serverAccessLogsBucket: logs });
    Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
    // WHEN
    let report = '';
    try {
      app.synth();
    } catch (e) {
      report = (e as Error).message;
    }
    // THEN
    expect(report).toBe('');
  });
});
