import { Annotations, Match, Template } from 'aws-cdk-lib/assertions';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { VmExportBucket, VmieServiceRole, VmImportBucket } from '../../src';
import { actionsOf, logicalIdOf, newStack, policyStatementsOfRole } from '../helpers/stacks';

const isServiceRole = (p: any) => JSON.stringify(p.AssumeRolePolicyDocument ?? {}).includes('vmie.amazonaws.com');

describe('VmieServiceRole', () => {
  test('trusts vmie.amazonaws.com with the external id and confused-deputy protection', () => {
    // GIVEN
    const stack = newStack();
    // WHEN
    new VmieServiceRole(stack, 'Role');
    // THEN
    const template = Template.fromStack(stack);
    const roleId = logicalIdOf(template, 'AWS::IAM::Role', isServiceRole);
    const role = template.toJSON().Resources[roleId];
    const name = role.Properties.RoleName;
    expect(name).toMatch(/^TestStack-Role-[0-9A-F]{8}-eu-west-1$/);
    expect(name.length).toBeLessThanOrEqual(64);
    expect(role.Properties.AssumeRolePolicyDocument.Statement).toEqual([
      {
        Effect: 'Allow',
        Principal: { Service: 'vmie.amazonaws.com' },
        Action: 'sts:AssumeRole',
        Condition: {
          StringEquals: { 'sts:ExternalId': ['vmimport', name], 'aws:SourceAccount': '111111111111' },
          ArnLike: { 'aws:SourceArn': { 'Fn::Join': ['', ['arn:', { Ref: 'AWS::Partition' }, ':vmie:*:111111111111:*']] } },
        },
      },
    ]);
  });

  test('the generated name of an environment-agnostic stack joins the Region at deploy time, in the name and the trust', () => {
    // GIVEN
    const stack = newStack({});
    // WHEN
    new VmieServiceRole(stack, 'Role');
    // THEN
    const template = Template.fromStack(stack);
    const role = template.toJSON().Resources[logicalIdOf(template, 'AWS::IAM::Role', isServiceRole)];
    const joined = { 'Fn::Join': ['-', ['TestStack-Role-' + role.Properties.RoleName['Fn::Join'][1][0].split('-').pop(), { Ref: 'AWS::Region' }]] };
    expect(role.Properties.RoleName).toEqual(joined);
    const cond = role.Properties.AssumeRolePolicyDocument.Statement[0].Condition;
    expect(cond.StringEquals['sts:ExternalId']).toEqual(['vmimport', joined]);
    expect(cond.StringEquals['aws:SourceAccount']).toEqual({ Ref: 'AWS::AccountId' });
    expect(cond.ArnLike['aws:SourceArn']).toEqual({
      'Fn::Join': ['', ['arn:', { Ref: 'AWS::Partition' }, ':vmie:*:', { Ref: 'AWS::AccountId' }, ':*']],
    });
  });

  test('two roles in one stack get different names', () => {
    // GIVEN
    const stack = newStack();
    // WHEN
    const a = new VmieServiceRole(stack, 'A');
    const b = new VmieServiceRole(stack, 'B');
    // THEN
    expect(stack.resolve(a.roleName)).not.toEqual(stack.resolve(b.roleName));
  });

  test('the conventional name: one external id, and a warning about existing vmimport roles', () => {
    // GIVEN
    const stack = newStack();
    // WHEN
    new VmieServiceRole(stack, 'Role', { roleName: VmieServiceRole.CONVENTIONAL_ROLE_NAME });
    // THEN
    const template = Template.fromStack(stack);
    template.hasResourceProperties('AWS::IAM::Role', {
      RoleName: 'vmimport',
      AssumeRolePolicyDocument: {
        Statement: [Match.objectLike({ Condition: Match.objectLike({ StringEquals: Match.objectLike({ 'sts:ExternalId': 'vmimport' }) }) })],
      },
    });
    Annotations.fromStack(stack).hasWarning('/TestStack/Role', Match.stringLikeRegexp('already has a role of that name'));
  });

  test('without confused-deputy protection the trust has only the external id', () => {
    // GIVEN
    const stack = newStack();
    // WHEN
    new VmieServiceRole(stack, 'Role', { roleName: 'my-vmimport', confusedDeputyProtection: false });
    // THEN
    Template.fromStack(stack).hasResourceProperties('AWS::IAM::Role', {
      AssumeRolePolicyDocument: {
        Statement: [{ Effect: 'Allow', Principal: { Service: 'vmie.amazonaws.com' }, Action: 'sts:AssumeRole', Condition: { StringEquals: { 'sts:ExternalId': ['vmimport', 'my-vmimport'] } } }],
      },
    });
  });

  test.each(['', 'has space', 'x'.repeat(65), 'bad/slash', 'ünïcode'])('rejects the invalid role name %j', (roleName) => {
    // GIVEN
    const stack = newStack();
    // THEN
    expect(() => new VmieServiceRole(stack, 'Role', { roleName })).toThrow(/roleName .* is not a valid IAM role name/);
  });

  test('grants exactly the guide\'s actions, scoped to the buckets and keys it is given', () => {
    // GIVEN
    const stack = newStack();
    const importBucket = new VmImportBucket(stack, 'Import');
    const exportBucket = new VmExportBucket(stack, 'Export');
    const amiKey = new kms.Key(stack, 'AmiKey');
    // WHEN
    new VmieServiceRole(stack, 'Role', {
      importBuckets: [importBucket.bucket],
      exportBuckets: [exportBucket.bucket],
      encryptionKeys: [amiKey],
    });
    // THEN
    const template = Template.fromStack(stack);
    const roleId = logicalIdOf(template, 'AWS::IAM::Role', isServiceRole);
    const importId = logicalIdOf(template, 'AWS::S3::Bucket', (p) => !!p.NotificationConfiguration);
    const exportId = logicalIdOf(template, 'AWS::S3::Bucket', (p) => !p.NotificationConfiguration);
    const keyId = logicalIdOf(template, 'AWS::KMS::Key');
    const statements = policyStatementsOfRole(template, roleId);
    const summary = statements.map((s) => ({ actions: actionsOf(s), resources: [].concat(s.Resource) }));
    expect(summary).toEqual(
      expect.arrayContaining([
        { actions: ['ec2:CopySnapshot', 'ec2:Describe*', 'ec2:ModifySnapshotAttribute', 'ec2:RegisterImage'], resources: ['*'] },
        { actions: ['s3:GetBucketLocation', 's3:ListBucket'], resources: [{ 'Fn::GetAtt': [importId, 'Arn'] }] },
        { actions: ['s3:GetObject'], resources: [{ 'Fn::Join': ['', [{ 'Fn::GetAtt': [importId, 'Arn'] }, '/*']] }] },
        { actions: ['s3:GetBucketAcl', 's3:GetBucketLocation', 's3:ListBucket'], resources: [{ 'Fn::GetAtt': [exportId, 'Arn'] }] },
        { actions: ['s3:GetObject', 's3:PutObject'], resources: [{ 'Fn::Join': ['', [{ 'Fn::GetAtt': [exportId, 'Arn'] }, '/*']] }] },
        {
          actions: ['kms:CreateGrant', 'kms:Decrypt', 'kms:DescribeKey', 'kms:Encrypt', 'kms:GenerateDataKey', 'kms:GenerateDataKeyWithoutPlaintext', 'kms:ReEncryptFrom', 'kms:ReEncryptTo'],
          resources: [{ 'Fn::GetAtt': [keyId, 'Arn'] }],
        },
      ]),
    );
    expect(statements).toHaveLength(6);
    expect(JSON.stringify(statements)).not.toMatch(/s3:\*|s3:DeleteObject|iam:|license-manager/);
  });

  test('an SSE-KMS import bucket brings kms:Decrypt on its key, and nothing more on it', () => {
    // GIVEN
    const stack = newStack();
    const key = new kms.Key(stack, 'BucketKey');
    const importBucket = new VmImportBucket(stack, 'Import', { encryptionKey: key });
    // WHEN
    const role = new VmieServiceRole(stack, 'Role');
    role.addImportBucket(importBucket.bucket);
    // THEN
    const template = Template.fromStack(stack);
    const roleId = logicalIdOf(template, 'AWS::IAM::Role', isServiceRole);
    const kmsStatements = policyStatementsOfRole(template, roleId).filter((s) => actionsOf(s).some((a) => a.startsWith('kms:')));
    expect(kmsStatements).toEqual([
      { Effect: 'Allow', Action: 'kms:Decrypt', Resource: { 'Fn::GetAtt': [logicalIdOf(template, 'AWS::KMS::Key'), 'Arn'] } },
    ]);
  });

  test('buckets and keys added after construction are granted; the same bucket twice is granted once', () => {
    // GIVEN
    const stack = newStack();
    const role = new VmieServiceRole(stack, 'Role');
    const bucket = new s3.Bucket(stack, 'Plain');
    // WHEN
    role.addImportBucket(bucket);
    role.addImportBucket(bucket);
    role.addImportBucket(bucket, 'images/*');
    // THEN
    const template = Template.fromStack(stack);
    const statements = policyStatementsOfRole(template, logicalIdOf(template, 'AWS::IAM::Role', isServiceRole));
    const getObject = statements.filter((s) => actionsOf(s).includes('s3:GetObject'));
    expect(getObject.map((s) => s.Resource['Fn::Join'][1][1])).toEqual(['/*', '/images/*']);
  });

  test('license configurations add the three License Manager actions', () => {
    // GIVEN
    const stack = newStack();
    // WHEN
    new VmieServiceRole(stack, 'Role', { licenseConfigurations: true });
    // THEN
    const template = Template.fromStack(stack);
    const statements = policyStatementsOfRole(template, logicalIdOf(template, 'AWS::IAM::Role', isServiceRole));
    expect(statements.map(actionsOf)).toContainEqual([
      'license-manager:GetLicenseConfiguration',
      'license-manager:ListLicenseSpecificationsForResource',
      'license-manager:UpdateLicenseSpecificationsForResource',
    ]);
  });

  test('rejects an export bucket encrypted with a KMS key, naming the reason', () => {
    // GIVEN
    const stack = newStack();
    const role = new VmieServiceRole(stack, 'Role');
    const kmsBucket = new s3.Bucket(stack, 'KmsBucket', { encryption: s3.BucketEncryption.KMS });
    // THEN
    expect(() => role.addExportBucket(kmsBucket)).toThrow(/rejects SSE-KMS export buckets/);
  });

  test('rejects a bucket known to be in another Region, and never judges unresolved Regions', () => {
    // GIVEN
    const stack = newStack();
    const role = new VmieServiceRole(stack, 'Role');
    const remote = s3.Bucket.fromBucketAttributes(stack, 'Remote', { bucketName: 'images', region: 'us-east-1' });
    const agnostic = newStack({});
    const agnosticRole = new VmieServiceRole(agnostic, 'Role');
    const other = s3.Bucket.fromBucketAttributes(agnostic, 'Remote', { bucketName: 'images', region: 'us-east-1' });
    // THEN
    expect(() => role.addImportBucket(remote)).toThrow(/is in us-east-1, but the stack is in eu-west-1.*not local to the Region/);
    expect(() => agnosticRole.addImportBucket(other)).not.toThrow();
  });

  test('fromRoleName adopts an existing role and grants to it, unless immutable', () => {
    // GIVEN
    const stack = newStack();
    const bucket = new s3.Bucket(stack, 'Images');
    const fn = new iam.Role(stack, 'Caller', { assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com') });
    // WHEN
    const adopted = VmieServiceRole.fromRoleName(stack, 'Existing', 'vmimport');
    adopted.addImportBucket(bucket);
    adopted.grantPassRole(fn);
    const frozen = VmieServiceRole.fromRoleName(stack, 'Frozen', 'other-role', { mutable: false });
    frozen.addImportBucket(bucket);
    // THEN
    expect(adopted.roleName).toBe('vmimport');
    const template = Template.fromStack(stack);
    template.resourceCountIs('AWS::IAM::Role', 1); // only the caller: nothing is created for adopted roles
    const policies = Object.values(template.findResources('AWS::IAM::Policy')) as any[];
    expect(policies.map((p) => p.Properties.Roles)).toEqual(expect.arrayContaining([['vmimport']]));
    expect(JSON.stringify(policies)).not.toContain('other-role');
    expect(JSON.stringify(policies)).toMatch(/iam:PassRole.*role\/vmimport/);
    expect(() => VmieServiceRole.fromRoleName(stack, 'Bad', 'no spaces allowed')).toThrow(/not a valid IAM role name/);
  });

  test('a permissions boundary and a description are passed on', () => {
    // GIVEN
    const stack = newStack();
    const boundary = iam.ManagedPolicy.fromManagedPolicyName(stack, 'Boundary', 'boundary');
    // WHEN
    new VmieServiceRole(stack, 'Role', { permissionsBoundary: boundary, description: 'migration' });
    // THEN
    const template = Template.fromStack(stack);
    template.hasResourceProperties('AWS::IAM::Role', { Description: 'migration' });
    const role = template.toJSON().Resources[logicalIdOf(template, 'AWS::IAM::Role', isServiceRole)];
    expect(JSON.stringify(role.Properties.PermissionsBoundary)).toContain(':policy/boundary');
  });
});
