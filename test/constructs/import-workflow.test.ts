import { Duration } from 'aws-cdk-lib';
import { Match, Template } from 'aws-cdk-lib/assertions';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as sns from 'aws-cdk-lib/aws-sns';
import {
  BootMode, ImportArchitecture, ImportMode, LicenseType, VmieServiceRole, VmImportBucket, VmImportWorkflow, type VmImportWorkflowProps,
} from '../../src';
import { actionsOf, logicalIdOf, newStack, policyStatementsOfRole } from '../helpers/stacks';
import { definitionOf, statesOf } from '../helpers/state-machine';

function workflowStack(props: Partial<VmImportWorkflowProps> = {}) {
  const stack = newStack();
  const bucket = new VmImportBucket(stack, 'Images');
  const role = new VmieServiceRole(stack, 'Role');
  const workflow = new VmImportWorkflow(stack, 'Import', { importBucket: bucket.bucket, serviceRole: role, ...props });
  return { stack, bucket, role, workflow, template: Template.fromStack(stack) };
}

/** The statements of the role of the function whose handler is `index.<handler>` in bundle-agnostic terms. */
function statementsOfFunction(template: Template, handler: string): any[] {
  const fnId = logicalIdOf(template, 'AWS::Lambda::Function', (p) => p.Handler === `index.${handler}` && JSON.stringify(p.Description ?? '').includes('VM import'));
  const fn = template.findResources('AWS::Lambda::Function')[fnId];
  const roleId = fn.Properties.Role['Fn::GetAtt'][0];
  return policyStatementsOfRole(template, roleId);
}

describe('VmImportWorkflow', () => {
  test('the definition: named states in order, one clean-up path for every step', () => {
    // GIVEN / WHEN
    const { template } = workflowStack();
    const definition = definitionOf(template);
    const states = statesOf(definition);
    // THEN
    expect(definition.StartAt).toBe('Read options');
    expect(definition.TimeoutSeconds).toBe(3 * 24 * 3600);
    expect(Object.keys(states)).toEqual(expect.arrayContaining([
      'Read options', 'Validate image', 'Needs conversion?', 'Plan conversion', 'Convert image', 'Conversion done?',
      'Use converted disks', 'Use original disks', 'Start import', 'Wait for import', 'Check import', 'Keep waiting',
      'Snapshot mode?', 'Register image', 'Finalize image', 'Tidy up', 'Notify success', 'Imported',
      'Cancel import', 'Remove staged files', 'Notify failure', 'Import failed', 'Not an image',
    ]));
    for (const name of ['Read options', 'Validate image', 'Convert image', 'Start import', 'Check import', 'Register image', 'Finalize image', 'Tidy up']) {
      const all = states[name].Catch.find((c: any) => c.ErrorEquals.includes('States.ALL'));
      expect({ name, next: all?.Next, resultPath: all?.ResultPath }).toEqual({ name, next: 'Cancel import', resultPath: '$.error' });
      expect(states[name].Retry.some((r: any) => r.ErrorEquals.includes('Transient'))).toBe(true);
      expect(states[name].Retry.some((r: any) => r.ErrorEquals.includes('Lambda.ServiceException'))).toBe(true);
    }
    expect(states['Cancel import'].Next).toBe('Remove staged files');
    expect(states['Remove staged files'].Next).toBe('Notify failure');
    expect(states['Notify failure'].Next).toBe('Import failed');
    expect(states['Conversion done?'].Choices[0]).toEqual({ Variable: '$.conversion.done', BooleanEquals: false, Next: 'Convert image' });
  });

  test('the check retries itself with a growing wait from 30 s to 5 min, then keeps waiting in a loop', () => {
    // GIVEN / WHEN
    const states = statesOf(definitionOf(workflowStack().template));
    // THEN
    const check = states['Check import'];
    expect(check.Retry).toContainEqual(expect.objectContaining({
      ErrorEquals: ['ImportInProgress'], IntervalSeconds: 30, BackoffRate: 2, MaxDelaySeconds: 300, MaxAttempts: 24,
    }));
    expect(check.Catch[0]).toEqual({ ErrorEquals: ['ImportInProgress'], ResultPath: '$.poll', Next: 'Keep waiting' });
    expect(states['Keep waiting']).toMatchObject({ Type: 'Wait', Seconds: 300, Next: 'Check import' });
    expect(states['Wait for import']).toMatchObject({ Type: 'Wait', Seconds: 30, Next: 'Check import' });
  });

  test('the start retries the IAM propagation error and the service limits with backoff', () => {
    // GIVEN / WHEN
    const states = statesOf(definitionOf(workflowStack().template));
    // THEN
    expect(states['Start import'].Retry).toEqual(expect.arrayContaining([
      expect.objectContaining({ ErrorEquals: ['RoleNotReady'], IntervalSeconds: 10, BackoffRate: 2, MaxDelaySeconds: 120, MaxAttempts: 8 }),
      expect.objectContaining({ ErrorEquals: ['ImportLimitExceeded'], IntervalSeconds: 60, BackoffRate: 2, MaxDelaySeconds: 300, MaxAttempts: 50 }),
    ]));
  });

  test('uploads with an image suffix start an execution; staged files do not reach the import', () => {
    // GIVEN / WHEN
    const { template } = workflowStack({ trigger: { prefix: 'incoming/', suffixes: ['.ova', '.qcow2'] } });
    // THEN
    template.hasResourceProperties('AWS::Events::Rule', {
      EventPattern: {
        'source': ['aws.s3'],
        'detail-type': ['Object Created'],
        'detail': {
          bucket: { name: [Match.anyValue()] },
          object: { key: [{ wildcard: 'incoming/*.ova' }, { wildcard: 'incoming/*.qcow2' }] },
        },
      },
      Targets: [Match.objectLike({ Arn: { Ref: Match.stringLikeRegexp('ImportStateMachine') } })],
    });
    const states = statesOf(definitionOf(template));
    expect(states['Read options'].Catch[0]).toEqual({ ErrorEquals: ['NotAnImage'], ResultPath: '$.ignored', Next: 'Not an image' });
  });

  test('the trigger can be turned off', () => {
    // GIVEN / WHEN
    const { template, workflow } = workflowStack({ enableTrigger: false });
    // THEN
    expect(workflow.triggerRule).toBeUndefined();
    expect(Object.values(template.findResources('AWS::Events::Rule')).map((r: any) => r.Properties.EventPattern.source)).toEqual([['aws.states']]);
  });

  test('timeouts and aborts run the same clean-up from the execution status change', () => {
    // GIVEN / WHEN
    const { template } = workflowStack({ timeout: Duration.hours(30) });
    // THEN
    expect(definitionOf(template).TimeoutSeconds).toBe(30 * 3600);
    template.hasResourceProperties('AWS::Events::Rule', {
      EventPattern: {
        'source': ['aws.states'],
        'detail-type': ['Step Functions Execution Status Change'],
        'detail': { status: ['TIMED_OUT', 'ABORTED'], stateMachineArn: [{ Ref: Match.stringLikeRegexp('ImportStateMachine') }] },
      },
      Targets: Match.arrayWith([
        Match.objectLike({ Arn: { 'Fn::GetAtt': [Match.stringLikeRegexp('ImportCleanupFunction'), 'Arn'] } }),
        Match.objectLike({ Arn: { 'Fn::GetAtt': [Match.stringLikeRegexp('ImportTidyFunction'), 'Arn'] } }),
      ]),
    });
  });

  test('every function: Node.js 24 on arm64, a log group kept three months, a role of its own', () => {
    // GIVEN / WHEN
    const { template } = workflowStack();
    const fns = Object.values(template.findResources('AWS::Lambda::Function')).filter((f: any) => String(f.Properties.Description).startsWith('VM import'));
    // THEN
    expect(fns).toHaveLength(9);
    const roles = new Set(fns.map((f: any) => f.Properties.Role['Fn::GetAtt'][0]));
    expect(roles.size).toBe(9);
    for (const f of fns as any[]) {
      expect(f.Properties).toMatchObject({ Runtime: 'nodejs24.x', Architectures: ['arm64'] });
    }
    template.allResourcesProperties('AWS::Logs::LogGroup', { RetentionInDays: 90 });
    template.hasResourceProperties('AWS::Lambda::Function', {
      Handler: 'index.handler',
      MemorySize: 3008,
      Timeout: 900,
      EphemeralStorage: { Size: 10240 },
      Environment: { Variables: Match.objectLike({ UV_THREADPOOL_SIZE: '8' }) },
    });
  });

  test('least privilege: only the start step may pass the service role, and only that role', () => {
    // GIVEN / WHEN
    const { template } = workflowStack();
    // THEN
    const passRole = Object.values(template.findResources('AWS::IAM::Policy'))
      .flatMap((p: any) => p.Properties.PolicyDocument.Statement)
      .filter((s: any) => actionsOf(s).includes('iam:PassRole'));
    expect(passRole).toHaveLength(1);
    const serviceRoleId = logicalIdOf(template, 'AWS::IAM::Role', (p) => JSON.stringify(p.AssumeRolePolicyDocument).includes('vmie.amazonaws.com'));
    expect(passRole[0].Resource).toEqual({ 'Fn::GetAtt': [serviceRoleId, 'Arn'] });
    const start = statementsOfFunction(template, 'start');
    expect(start.flatMap(actionsOf).sort()).toEqual(
      ['ec2:CreateTags', 'ec2:ImportImage', 'ec2:ImportSnapshot', 'iam:PassRole', 'logs:CreateLogStream', 'logs:PutLogEvents'].sort(),
    );
    const check = statementsOfFunction(template, 'check');
    expect(check.flatMap(actionsOf).filter((a: string) => a.startsWith('ec2:')).sort()).toEqual(['ec2:DescribeImportImageTasks', 'ec2:DescribeImportSnapshotTasks']);
  });

  test('the defaults reach the options step; an encryption key is granted to the service role', () => {
    // GIVEN
    const stack = newStack();
    const key = new kms.Key(stack, 'Key');
    const bucket = new VmImportBucket(stack, 'Images');
    const role = new VmieServiceRole(stack, 'Role');
    // WHEN
    new VmImportWorkflow(stack, 'Import', {
      importBucket: bucket.bucket,
      serviceRole: role,
      defaults: { mode: ImportMode.SNAPSHOT, licenseType: LicenseType.BYOL, bootMode: BootMode.LEGACY_BIOS, encryptionKey: key, tags: { team: 'platform' }, copyToRegions: ['eu-central-1'] },
      notificationTopic: new sns.Topic(stack, 'Topic'),
    });
    const template = Template.fromStack(stack);
    // THEN
    const prepare = Object.values(template.findResources('AWS::Lambda::Function')).find((f: any) => f.Properties.Handler === 'index.prepare') as any;
    const defaults = JSON.stringify(prepare.Properties.Environment.Variables.VMIE_IMPORT_DEFAULTS);
    for (const s of ['snapshot', 'BYOL', 'legacy-bios', 'platform', 'eu-central-1', 'kmsKeyId']) expect(defaults).toContain(s);
    const roleStatements = policyStatementsOfRole(template, logicalIdOf(template, 'AWS::IAM::Role', (p) => JSON.stringify(p.AssumeRolePolicyDocument).includes('vmie.amazonaws.com')));
    expect(roleStatements.some((s) => actionsOf(s).includes('kms:Decrypt') && JSON.stringify(s.Resource).includes('Key'))).toBe(true);
    const states = statesOf(definitionOf(template));
    expect(states['Publish success']).toMatchObject({ Type: 'Task', Resource: 'arn:<AWS::Partition>:states:::sns:publish', Next: 'Imported' });
    expect(states['Publish failure'].Next).toBe('Import failed');
  });

  test.each([
    [{ defaults: { licenseType: LicenseType.AWS, usageOperation: 'RunInstances:0002' } }, /licenseType and usageOperation are mutually exclusive/],
    [{ defaults: { bootMode: BootMode.LEGACY_BIOS, architecture: ImportArchitecture.ARM64 } }, /arm64 images boot with UEFI only/],
    [{ defaults: { mode: ImportMode.SNAPSHOT, imageBuilder: { semanticVersion: '1.0.0' } } }, /imageBuilder needs an ImportImage task/],
    [{ defaults: { imageBuilder: { semanticVersion: '1.0' } } }, /semanticVersion must be major.minor.patch/],
    [{ defaults: { amiName: 'x' } }, /amiName must be 3 to 128 characters/],
    [{ defaults: { shareWithAccounts: ['12345'] } }, /not a 12-digit account id/],
    [{ defaults: { copyToRegions: ['Frankfurt'] } }, /not a Region code/],
    [{ timeout: Duration.minutes(30) }, /timeout must be between 1 hour and 365 days/],
    [{ conversionMemorySize: 512 }, /conversionMemorySize must be between 1024 and 10240/],
    [{ trigger: { prefix: '.vmie/x/' } }, /must not lie under '.vmie\/'/],
    [{ trigger: { suffixes: ['vmdk'] } }, /should start with a dot/],
  ] as Array<[Partial<VmImportWorkflowProps>, RegExp]>)('synth-time error %#: %p', (props, message) => {
    // GIVEN / WHEN / THEN
    expect(() => workflowStack(props)).toThrow(message);
  });

  test('a UEFI default with an encryption key is rejected at synth time', () => {
    // GIVEN
    const stack = newStack();
    const key = new kms.Key(stack, 'Key');
    const bucket = new VmImportBucket(stack, 'Images');
    const role = new VmieServiceRole(stack, 'Role');
    // WHEN / THEN
    expect(() => new VmImportWorkflow(stack, 'Import', { importBucket: bucket.bucket, serviceRole: role, defaults: { bootMode: BootMode.UEFI, encryptionKey: key } }))
      .toThrow(/UEFI import cannot also be encrypted/);
  });
});
