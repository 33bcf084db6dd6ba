import { Duration, RemovalPolicy } from 'aws-cdk-lib';
import { Match, Template } from 'aws-cdk-lib/assertions';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { VmExportBucket, VmExportGrant, VmImportBucket } from '../../src';
import { VM_EXPORT_DEFAULT_CANONICAL_ID } from '../../src/private/vm-export-accounts';
import { newStack } from '../helpers/stacks';

const BLOCK_ALL = { BlockPublicAcls: true, BlockPublicPolicy: true, IgnorePublicAcls: true, RestrictPublicBuckets: true };

/** The statement of a bucket policy that denies requests without TLS. */
const TLS_ONLY = Match.objectLike({ Effect: 'Deny', Action: 's3:*', Condition: { Bool: { 'aws:SecureTransport': 'false' } } });

describe('VmImportBucket', () => {
  test('secure defaults: SSE-S3, public access blocked, TLS enforced, owner enforced, EventBridge, aborts uploads, retained', () => {
    // GIVEN
    const stack = newStack();
    // WHEN
    new VmImportBucket(stack, 'Images');
    // THEN
    const template = Template.fromStack(stack);
    template.hasResource('AWS::S3::Bucket', {
      UpdateReplacePolicy: 'Retain',
      DeletionPolicy: 'Retain',
      Properties: {
        BucketEncryption: { ServerSideEncryptionConfiguration: [{ ServerSideEncryptionByDefault: { SSEAlgorithm: 'AES256' } }] },
        PublicAccessBlockConfiguration: BLOCK_ALL,
        OwnershipControls: { Rules: [{ ObjectOwnership: 'BucketOwnerEnforced' }] },
        NotificationConfiguration: { EventBridgeConfiguration: { EventBridgeEnabled: true } },
        LifecycleConfiguration: { Rules: [{ Id: 'AbortIncompleteUploads', Status: 'Enabled', AbortIncompleteMultipartUpload: { DaysAfterInitiation: 7 } }] },
        VersioningConfiguration: Match.absent(),
        LoggingConfiguration: Match.absent(),
      },
    });
    template.hasResourceProperties('AWS::S3::BucketPolicy', { PolicyDocument: { Statement: Match.arrayWith([TLS_ONLY]) } });
    // No notifications custom resource: EventBridge is switched on in the bucket's own properties.
    template.resourceCountIs('AWS::Lambda::Function', 0);
  });

  test('a KMS key, versioning, expiry of processed images, access logs, and a removal policy', () => {
    // GIVEN
    const stack = newStack();
    const key = new kms.Key(stack, 'Key');
    const logs = new s3.Bucket(stack, 'Logs');
    // WHEN
    const images = new VmImportBucket(stack, 'Images', {
      encryptionKey: key,
      versioned: true,
      expireProcessedImagesAfter: Duration.days(30),
      abortIncompleteUploadsAfter: Duration.days(2),
      serverAccessLogsBucket: logs,
      removalPolicy: RemovalPolicy.DESTROY,
    });
    // THEN
    expect(images.encryptionKey).toBe(key);
    Template.fromStack(stack).hasResource('AWS::S3::Bucket', {
      DeletionPolicy: 'Delete',
      Properties: {
        BucketEncryption: {
          ServerSideEncryptionConfiguration: [
            { BucketKeyEnabled: true, ServerSideEncryptionByDefault: { SSEAlgorithm: 'aws:kms', KMSMasterKeyID: Match.anyValue() } },
          ],
        },
        VersioningConfiguration: { Status: 'Enabled' },
        LoggingConfiguration: { DestinationBucketName: Match.anyValue(), LogFilePrefix: 'vm-import-bucket/' },
        LifecycleConfiguration: {
          Rules: [
            { Id: 'AbortIncompleteUploads', Status: 'Enabled', AbortIncompleteMultipartUpload: { DaysAfterInitiation: 2 } },
            {
              Id: 'ExpireProcessedImages',
              Status: 'Enabled',
              ExpirationInDays: 30,
              NoncurrentVersionExpiration: { NoncurrentDays: 30 },
              TagFilters: [{ Key: 'vmie:processed', Value: 'true' }],
            },
          ],
        },
      },
    });
  });

  test.each([
    [{ abortIncompleteUploadsAfter: Duration.hours(12) }, /abortIncompleteUploadsAfter is 12 hours.*whole days/],
    [{ expireProcessedImagesAfter: Duration.hours(36) }, /expireProcessedImagesAfter is 1 day 12 hours.*whole days/],
    [{ serverAccessLogsPrefix: 'x/' }, /serverAccessLogsPrefix is set but serverAccessLogsBucket is not/],
  ])('rejects impossible props %#', (props, message) => {
    // GIVEN
    const stack = newStack();
    // THEN
    expect(() => new VmImportBucket(stack, 'Images', props)).toThrow(message);
  });

  test('grantUpload allows multipart uploads with the KMS key, grantRead allows reading', () => {
    // GIVEN
    const stack = newStack();
    const images = new VmImportBucket(stack, 'Images', { encryptionKey: new kms.Key(stack, 'Key') });
    const uploader = new iam.Role(stack, 'Uploader', { assumedBy: new iam.AccountRootPrincipal() });
    const reader = new iam.Role(stack, 'Reader', { assumedBy: new iam.AccountRootPrincipal() });
    // WHEN
    images.grantUpload(uploader, 'incoming/*');
    images.grantRead(reader);
    // THEN
    const template = Template.fromStack(stack);
    const policyOf = (role: string) =>
      JSON.stringify(Object.values(template.findResources('AWS::IAM::Policy')).filter((p: any) => p.Properties.Roles[0].Ref.startsWith(role)));
    const upload = policyOf('Uploader');
    expect(upload).toContain('"s3:PutObject"');
    expect(upload).toContain('"s3:Abort*"');
    expect(upload).toContain('/incoming/*');
    expect(upload).toContain('kms:GenerateDataKey*');
    expect(upload).not.toMatch(/s3:DeleteObject|s3:GetObject/);
    const read = policyOf('Reader');
    expect(read).toContain('"s3:GetObject*"');
    expect(read).toContain('"kms:Decrypt"');
    expect(read).not.toMatch(/s3:PutObject|kms:Encrypt/);
  });
});

describe('VmExportBucket', () => {
  test('defaults: SSE-S3, BucketOwnerPreferred, public access blocked, TLS, and the bucket-policy grant to the VM Export account', () => {
    // GIVEN
    const stack = newStack();
    // WHEN
    const exports = new VmExportBucket(stack, 'Exports');
    // THEN
    expect(exports.exportGrant).toBe(VmExportGrant.BUCKET_POLICY);
    expect(exports.vmExportCanonicalId).toBe(VM_EXPORT_DEFAULT_CANONICAL_ID);
    const template = Template.fromStack(stack);
    template.hasResource('AWS::S3::Bucket', {
      DeletionPolicy: 'Retain',
      Properties: {
        BucketEncryption: { ServerSideEncryptionConfiguration: [{ ServerSideEncryptionByDefault: { SSEAlgorithm: 'AES256' } }] },
        OwnershipControls: { Rules: [{ ObjectOwnership: 'BucketOwnerPreferred' }] },
        PublicAccessBlockConfiguration: BLOCK_ALL,
      },
    });
    template.hasResourceProperties('AWS::S3::BucketPolicy', {
      PolicyDocument: {
        Statement: Match.arrayWith([
          TLS_ONLY,
          Match.objectLike({ Sid: 'VmExportReadAcp', Effect: 'Allow', Principal: { CanonicalUser: VM_EXPORT_DEFAULT_CANONICAL_ID }, Action: 's3:GetBucketAcl' }),
          Match.objectLike({ Sid: 'VmExportWrite', Effect: 'Allow', Principal: { CanonicalUser: VM_EXPORT_DEFAULT_CANONICAL_ID }, Action: 's3:PutObject' }),
        ]),
      },
    });
    template.resourceCountIs('Custom::VmExportBucketAcl', 0);
  });

  test('the ACL grant: a custom resource with the canonical id, and a handler allowed only this bucket\'s ACL', () => {
    // GIVEN
    const stack = newStack({ env: { account: '111111111111', region: 'eu-south-1' } });
    // WHEN
    new VmExportBucket(stack, 'Exports', { exportGrant: VmExportGrant.BUCKET_ACL });
    new VmExportBucket(stack, 'MoreExports', { exportGrant: VmExportGrant.BUCKET_ACL });
    // THEN
    const template = Template.fromStack(stack);
    template.resourceCountIs('Custom::VmExportBucketAcl', 2);
    template.hasResourceProperties('Custom::VmExportBucketAcl', {
      BucketName: Match.anyValue(),
      CanonicalId: '04636d9a349e458b0c1cbf1421858b9788b4ec28b066148d4907bb15c52b5b9c',
    });
    template.resourceCountIs('AWS::Lambda::Function', 1); // one handler per stack
    template.hasResourceProperties('AWS::Lambda::Function', { Runtime: 'nodejs24.x', Handler: 'index.handler', Architectures: ['arm64'] });
    template.hasResourceProperties('AWS::Logs::LogGroup', { RetentionInDays: 90 });
    const statements = Object.values(template.findResources('AWS::IAM::Policy')).flatMap((p: any) => p.Properties.PolicyDocument.Statement);
    const acl = statements.filter((s: any) => JSON.stringify(s.Action).includes('PutBucketAcl'));
    expect(acl).toHaveLength(2);
    for (const s of acl) {
      expect(s.Action).toEqual(['s3:GetBucketAcl', 's3:PutBucketAcl']);
      expect(s.Resource).toEqual({ 'Fn::GetAtt': [expect.stringMatching(/Exports/), 'Arn'] });
    }
    // No bucket-policy grant in ACL mode.
    expect(JSON.stringify(template.findResources('AWS::S3::BucketPolicy'))).not.toContain('CanonicalUser');
  });

  test('no grant: no canonical user anywhere, still BucketOwnerPreferred', () => {
    // GIVEN
    const stack = newStack();
    // WHEN
    const exports = new VmExportBucket(stack, 'Exports', { exportGrant: VmExportGrant.NONE });
    // THEN
    expect(exports.vmExportCanonicalId).toBeUndefined();
    const template = Template.fromStack(stack);
    expect(JSON.stringify(template.toJSON())).not.toContain('CanonicalUser');
    template.hasResourceProperties('AWS::S3::Bucket', { OwnershipControls: { Rules: [{ ObjectOwnership: 'BucketOwnerPreferred' }] } });
  });

  test('an explicit canonical id overrides the table', () => {
    // GIVEN
    const stack = newStack();
    const id = 'a'.repeat(64);
    // WHEN
    new VmExportBucket(stack, 'Exports', { vmExportCanonicalId: id });
    // THEN
    Template.fromStack(stack).hasResourceProperties('AWS::S3::BucketPolicy', {
      PolicyDocument: { Statement: Match.arrayWith([Match.objectLike({ Principal: { CanonicalUser: id } })]) },
    });
  });

  test.each([
    [{ encryption: s3.BucketEncryption.KMS }, /encryption is KMS.*SSE-KMS export bucket is rejected/],
    [{ encryption: s3.BucketEncryption.KMS_MANAGED }, /encryption is KMS_MANAGED/],
    [{ encryption: s3.BucketEncryption.DSSE_MANAGED }, /encryption is DSSE_MANAGED/],
    [{ exportGrant: VmExportGrant.NONE, vmExportCanonicalId: 'a'.repeat(64) }, /vmExportCanonicalId is set but exportGrant is VmExportGrant.NONE/],
    [{ vmExportCanonicalId: 'not-an-id' }, /"not-an-id" is not a canonical user id/],
    [{ expireExportsAfter: Duration.minutes(5) }, /expireExportsAfter .* whole days/],
  ])('rejects impossible props %#', (props, message) => {
    // GIVEN
    const stack = newStack();
    // THEN
    expect(() => new VmExportBucket(stack, 'Exports', props)).toThrow(message);
  });

  test('a Region without a documented VM Export account fails at synth with the remedy', () => {
    // GIVEN
    const stack = newStack({ env: { account: '111111111111', region: 'us-iso-east-1' } });
    // THEN
    expect(() => new VmExportBucket(stack, 'Exports')).toThrow(/documents no VM Export account for Region us-iso-east-1: set vmExportCanonicalId/);
    expect(() => new VmExportBucket(newStack({ env: { region: 'us-iso-east-1' } }), 'Exports', { exportGrant: VmExportGrant.NONE })).not.toThrow();
  });
});
