/**
 * The service role, evaluated by an IAM policy simulator: it allows what VM Import/Export needs
 * (the User Guide's role policy, scoped to the given buckets and keys) and nothing more, and only
 * VM Import/Export acting for this account may assume it.
 *
 * Every allowed request has a denied twin that differs only in the thing under test (the bucket,
 * the key, the action, a context value or the stack's props), and every denied request is shown to
 * be allowed once the principal is granted exactly that action on that resource, so a denial
 * always comes from the role's own policies and never from a request the simulator cannot grant.
 */
import type { SimulationIdentityPolicy } from '@cloud-copilot/iam-simulate';
import { App, Stack } from 'aws-cdk-lib';
import { Match } from 'aws-cdk-lib/assertions';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { VmExportBucket, VmieServiceRole, VmImportBucket, type VmieServiceRoleProps } from '../../src';
import {
  ACCOUNT,
  allowOnly,
  REGION,
  simulate,
  StackPolicies,
  type PolicyDocument,
  type SimulatedRequest,
} from '../helpers/iam-simulate';

const OTHER_ACCOUNT = '222222222222';
const OBJECT_KEY = 'images/disk.vmdk';
const SNAPSHOT = `arn:aws:ec2:${REGION}::snapshot/snap-0123456789abcdef0`;
const IMAGE = `arn:aws:ec2:${REGION}::image/ami-0123456789abcdef0`;
const INSTANCE = `arn:aws:ec2:${REGION}:${ACCOUNT}:instance/i-0123456789abcdef0`;
const LICENSE_CONFIGURATION = `arn:aws:license-manager:${REGION}:${ACCOUNT}:license-configuration:lic-0123456789abcdef0123456789abcdef`;
const IMPORT_TASK = `arn:aws:vmie:${REGION}:${ACCOUNT}:import-task/import-ami-0123456789abcdef0`;
const OTHER_ACCOUNT_IMPORT_TASK = `arn:aws:vmie:${REGION}:${OTHER_ACCOUNT}:import-task/import-ami-0123456789abcdef0`;
/** Requests to S3 come over TLS, as the buckets' policies demand. */
const TLS = { 'aws:SecureTransport': 'true' };

type BucketKind = 'SSE-S3 import bucket' | 'SSE-KMS import bucket' | 'export bucket' | 'unrelated bucket';
type KeyKind = 'import bucket key' | 'AMI key' | 'unrelated key';
const BUCKETS: BucketKind[] = ['SSE-S3 import bucket', 'SSE-KMS import bucket', 'export bucket', 'unrelated bucket'];
const KEYS: KeyKind[] = ['import bucket key', 'AMI key', 'unrelated key'];

interface Target {
  readonly arn: string;
  readonly policy?: PolicyDocument;
}

/** The deployed stack, as the simulator sees it. */
interface Deployment {
  readonly roleName: string;
  readonly roleArn: string;
  readonly trustPolicy: PolicyDocument;
  readonly buckets: Record<BucketKind, Target>;
  readonly keys: Record<KeyKind, Target>;
  /** A request by the service role, evaluated with the role's identity policies. */
  asRole(action: string, resource: string, resourcePolicy?: PolicyDocument, context?: Record<string, string>): SimulatedRequest;
}

/**
 * Synthesizes the stack under test: an SSE-S3 import bucket, an SSE-KMS import bucket, an export
 * bucket, an unrelated bucket, a key for encrypted AMIs, an unrelated key and the service role.
 * Resources are then found by their properties.
 */
function deploy(props: Partial<VmieServiceRoleProps> = {}): Deployment {
  const stack = new Stack(new App(), 'Vmie');
  const importBucket = new VmImportBucket(stack, 'ImportBucket');
  const importKey = new kms.Key(stack, 'ImportKey', { description: 'import bucket key' });
  const kmsImportBucket = new VmImportBucket(stack, 'KmsImportBucket', { encryptionKey: importKey });
  const exportBucket = new VmExportBucket(stack, 'ExportBucket');
  new s3.Bucket(stack, 'UnrelatedBucket');
  const amiKey = new kms.Key(stack, 'AmiKey', { description: 'AMI key' });
  new kms.Key(stack, 'UnrelatedKey', { description: 'unrelated key' });
  new VmieServiceRole(stack, 'ServiceRole', {
    importBuckets: [importBucket.bucket, kmsImportBucket.bucket],
    exportBuckets: [exportBucket.bucket],
    encryptionKeys: [amiKey],
    licenseConfigurations: true,
    ...props,
  });
  const policies = StackPolicies.fromStack(stack);

  const roleId = policies.findOne('AWS::IAM::Role', {
    Properties: {
      AssumeRolePolicyDocument: {
        Statement: Match.arrayWith([Match.objectLike({ Principal: { Service: 'vmie.amazonaws.com' } })]),
      },
    },
  });
  const sse = (algorithm: string) => ({
    ServerSideEncryptionConfiguration: Match.arrayWith([
      Match.objectLike({ ServerSideEncryptionByDefault: Match.objectLike({ SSEAlgorithm: algorithm }) }),
    ]),
  });
  const ownership = (o: string) => ({ Rules: [{ ObjectOwnership: o }] });
  const bucketIds: Record<BucketKind, string> = {
    'SSE-S3 import bucket': policies.findOne('AWS::S3::Bucket', {
      Properties: { BucketEncryption: sse('AES256'), OwnershipControls: ownership('BucketOwnerEnforced') },
    }),
    'SSE-KMS import bucket': policies.findOne('AWS::S3::Bucket', {
      Properties: { BucketEncryption: sse('aws:kms'), OwnershipControls: ownership('BucketOwnerEnforced') },
    }),
    'export bucket': policies.findOne('AWS::S3::Bucket', {
      Properties: { BucketEncryption: sse('AES256'), OwnershipControls: ownership('BucketOwnerPreferred') },
    }),
    'unrelated bucket': policies.findOne(
      'AWS::S3::Bucket',
      Match.not(Match.objectLike({ Properties: { OwnershipControls: Match.anyValue() } })),
    ),
  };
  const keyId = (description: string) => policies.findOne('AWS::KMS::Key', { Properties: { Description: description } });
  const keyIds: Record<KeyKind, string> = {
    'import bucket key': keyId('import bucket key'),
    'AMI key': keyId('AMI key'),
    'unrelated key': keyId('unrelated key'),
  };
  const roleArn = policies.arn(roleId);
  const identityPolicies = policies.identityPolicies(roleId);

  return {
    roleName: policies.ref(roleId),
    roleArn,
    trustPolicy: policies.trustPolicy(roleId),
    buckets: Object.fromEntries(
      BUCKETS.map((b) => [b, { arn: policies.arn(bucketIds[b]), policy: policies.bucketPolicy(bucketIds[b]) }]),
    ) as Record<BucketKind, Target>,
    keys: Object.fromEntries(
      KEYS.map((k) => [k, { arn: policies.arn(keyIds[k]), policy: policies.keyPolicy(keyIds[k]) }]),
    ) as Record<KeyKind, Target>,
    asRole: (action, resource, resourcePolicy, context) => ({
      principal: roleArn,
      action,
      resource,
      resourcePolicy,
      identityPolicies,
      context,
    }),
  };
}

/** `policy` with the principal of every statement replaced by `principal`. */
function withPrincipal(policy: PolicyDocument, principal: string): PolicyDocument {
  const element = principal.startsWith('arn:') ? { AWS: principal } : { Service: principal };
  return { ...policy, Statement: policy.Statement.map((st) => ({ ...st, Principal: element })) };
}

/** Asserts that `request` is allowed, and denied once the principal has no identity policy. */
async function expectAllowedByIdentity(request: SimulatedRequest): Promise<void> {
  expect(await simulate(request)).toBe('Allowed');
  expect(await simulate({ ...request, identityPolicies: [] })).not.toBe('Allowed');
}

/** Asserts that `request` is denied, and allowed once the principal may do exactly that. */
async function expectDeniedByIdentity(request: SimulatedRequest): Promise<void> {
  expect(await simulate(request)).not.toBe('Allowed');
  const granted = [...(request.identityPolicies ?? []), allowOnly(request.action, request.resource)];
  expect(await simulate({ ...request, identityPolicies: granted })).toBe('Allowed');
}

describe('VmieServiceRole, evaluated by the IAM policy simulator', () => {
  let d: Deployment;
  beforeAll(() => {
    d = deploy();
  });

  describe('S3: read from import buckets, write to the export bucket, nothing else', () => {
    const IMPORT = ['SSE-S3 import bucket', 'SSE-KMS import bucket'] as const;
    const READABLE = [...IMPORT, 'export bucket'] as const;
    /** Each action, on the bucket or on its objects, and the buckets where the role may do it. */
    const MATRIX: [string, 'bucket' | 'object', readonly BucketKind[]][] = [
      ['s3:GetBucketLocation', 'bucket', READABLE],
      ['s3:ListBucket', 'bucket', READABLE],
      ['s3:GetBucketAcl', 'bucket', ['export bucket']],
      ['s3:PutBucketPolicy', 'bucket', []],
      ['s3:PutBucketAcl', 'bucket', []],
      ['s3:DeleteBucket', 'bucket', []],
      ['s3:GetObject', 'object', READABLE],
      ['s3:PutObject', 'object', ['export bucket']],
      ['s3:DeleteObject', 'object', []],
      ['s3:PutObjectAcl', 'object', []],
    ];
    const CASES = MATRIX.flatMap(([action, on, allowed]) =>
      BUCKETS.map((bucket) => [action, bucket, on, allowed.includes(bucket)] as const),
    );

    test.each(CASES)('%s on the %s (%s): allowed = %s', async (action, bucket, on, allowed) => {
      // GIVEN the role's policies and the bucket's policy
      const target = d.buckets[bucket];
      const resource = on === 'bucket' ? target.arn : `${target.arn}/${OBJECT_KEY}`;
      // WHEN the role sends the request over TLS
      const request = d.asRole(action, resource, target.policy, TLS);
      // THEN it is allowed exactly where the role needs it
      if (allowed) await expectAllowedByIdentity(request);
      else await expectDeniedByIdentity(request);
    });

    test('the bucket policies take part: a read over plain HTTP is explicitly denied', async () => {
      // GIVEN an import bucket the role may read
      const target = d.buckets['SSE-S3 import bucket'];
      const resource = `${target.arn}/${OBJECT_KEY}`;
      // WHEN the role reads an image over TLS, and over plain HTTP
      const tls = await simulate(d.asRole('s3:GetObject', resource, target.policy, TLS));
      const http = await simulate(d.asRole('s3:GetObject', resource, target.policy, { 'aws:SecureTransport': 'false' }));
      // THEN only the TLS read is allowed
      expect(tls).toBe('Allowed');
      expect(http).toBe('ExplicitlyDenied');
    });
  });

  describe('KMS: decrypt images of the SSE-KMS import bucket, use the AMI key, nothing else', () => {
    const AMI_KEY_ACTIONS = [
      'kms:CreateGrant',
      'kms:Decrypt',
      'kms:DescribeKey',
      'kms:Encrypt',
      'kms:GenerateDataKey',
      'kms:GenerateDataKeyWithoutPlaintext',
      'kms:ReEncryptFrom',
      'kms:ReEncryptTo',
    ];
    const MATRIX: [string, readonly KeyKind[]][] = [
      ...AMI_KEY_ACTIONS.map((a): [string, readonly KeyKind[]] => [a, a === 'kms:Decrypt' ? ['import bucket key', 'AMI key'] : ['AMI key']]),
      ['kms:PutKeyPolicy', []],
      ['kms:ScheduleKeyDeletion', []],
      ['kms:DisableKey', []],
      ['kms:RetireGrant', []],
    ];
    const CASES = MATRIX.flatMap(([action, allowed]) => KEYS.map((key) => [action, key, allowed.includes(key)] as const));

    test.each(CASES)('%s on the %s: allowed = %s', async (action, key, allowed) => {
      // GIVEN the role's policies and the key's policy
      const target = d.keys[key];
      // WHEN the role uses the key
      const request = d.asRole(action, target.arn, target.policy);
      // THEN it is allowed exactly where the role needs it
      if (allowed) await expectAllowedByIdentity(request);
      else await expectDeniedByIdentity(request);
    });
  });

  describe('EC2 and IAM: register the imported snapshots as images, nothing else', () => {
    const CASES: [string, string, boolean][] = [
      ['ec2:ModifySnapshotAttribute', SNAPSHOT, true],
      ['ec2:ModifySnapshotAttribute', '*', true],
      ['ec2:CopySnapshot', SNAPSHOT, true],
      ['ec2:CopySnapshot', '*', true],
      ['ec2:RegisterImage', IMAGE, true],
      ['ec2:RegisterImage', '*', true],
      ['ec2:DescribeImages', '*', true],
      ['ec2:DescribeSnapshots', '*', true],
      ['ec2:DeleteSnapshot', SNAPSHOT, false],
      ['ec2:DeleteSnapshot', '*', false],
      ['ec2:DeregisterImage', IMAGE, false],
      ['ec2:RunInstances', INSTANCE, false],
      ['ec2:RunInstances', '*', false],
      ['iam:PassRole', '*', false],
      ['iam:CreateRole', '*', false],
      ['iam:CreateRole', `arn:aws:iam::${ACCOUNT}:role/any`, false],
      ['iam:DeleteRole', '*', false],
      ['iam:CreateAccessKey', '*', false],
      ['license-manager:CreateLicenseConfiguration', '*', false],
      ['license-manager:DeleteLicenseConfiguration', LICENSE_CONFIGURATION, false],
    ];

    test.each(CASES)('%s on %s: allowed = %s', async (action, resource, allowed) => {
      // GIVEN the role's policies
      // WHEN the role sends the request
      const request = d.asRole(action, resource);
      // THEN it is allowed exactly where the role needs it
      if (allowed) await expectAllowedByIdentity(request);
      else await expectDeniedByIdentity(request);
    });

    test.each(['iam:PassRole', 'iam:PutRolePolicy', 'iam:AttachRolePolicy', 'iam:UpdateAssumeRolePolicy'])(
      '%s on the role itself is denied',
      async (action) => {
        // GIVEN the role's policies
        // WHEN the role acts on itself
        const request = d.asRole(action, d.roleArn);
        // THEN it is denied
        await expectDeniedByIdentity(request);
      },
    );
  });

  describe('License Manager: only with licenseConfigurations', () => {
    const CASES: [string, string][] = [
      ['license-manager:GetLicenseConfiguration', LICENSE_CONFIGURATION],
      ['license-manager:UpdateLicenseSpecificationsForResource', LICENSE_CONFIGURATION],
      ['license-manager:ListLicenseSpecificationsForResource', '*'],
    ];
    let without: Deployment;
    beforeAll(() => {
      without = deploy({ licenseConfigurations: undefined });
    });

    test.each(CASES)('%s on %s is allowed with licenseConfigurations: true', async (action, resource) => {
      // GIVEN a role with licenseConfigurations: true
      // WHEN the role sends the request
      const request = d.asRole(action, resource);
      // THEN it is allowed
      await expectAllowedByIdentity(request);
    });

    test.each(CASES)('%s on %s is denied without licenseConfigurations', async (action, resource) => {
      // GIVEN a role without licenseConfigurations
      // WHEN the role sends the request
      const request = without.asRole(action, resource);
      // THEN it is denied
      await expectDeniedByIdentity(request);
    });
  });

  describe('trust policy: only VM Import/Export, for this account', () => {
    const VMIE = 'vmie.amazonaws.com';
    const VALID = { 'sts:ExternalId': 'vmimport', 'aws:SourceAccount': ACCOUNT, 'aws:SourceArn': IMPORT_TASK };
    const without = (key: string): Record<string, string> =>
      Object.fromEntries(Object.entries(VALID).filter(([k]) => k !== key));

    /** sts:AssumeRole on the role of `deployment`. */
    const assume = (
      deployment: Deployment,
      principal: string,
      context: Record<string, string>,
      identityPolicies: SimulationIdentityPolicy[] = [],
      trustPolicy: PolicyDocument = deployment.trustPolicy,
    ) =>
      simulate({
        principal,
        action: 'sts:AssumeRole',
        resource: deployment.roleArn,
        resourcePolicy: trustPolicy,
        identityPolicies,
        context,
      });

    test.each([
      ['the external id vmimport', () => 'vmimport'],
      ['the role name as external id', () => d.roleName],
    ])('vmie.amazonaws.com may assume the role with %s', async (_, externalId) => {
      // GIVEN the role's trust policy
      const context = { ...VALID, 'sts:ExternalId': externalId() };
      // WHEN VM Import/Export assumes the role for a task of this account
      const result = await assume(d, VMIE, context);
      // THEN it is allowed
      expect(result).toBe('Allowed');
    });

    test.each([
      ['without an external id', without('sts:ExternalId')],
      ['with another external id', { ...VALID, 'sts:ExternalId': 'other' }],
      ['without aws:SourceAccount', without('aws:SourceAccount')],
      ['for another account (aws:SourceAccount)', { ...VALID, 'aws:SourceAccount': OTHER_ACCOUNT }],
      ['without aws:SourceArn', without('aws:SourceArn')],
      ['for a task of another account (aws:SourceArn)', { ...VALID, 'aws:SourceArn': OTHER_ACCOUNT_IMPORT_TASK }],
      ['for another service (aws:SourceArn)', { ...VALID, 'aws:SourceArn': `arn:aws:ec2:${REGION}:${ACCOUNT}:instance/i-0123456789abcdef0` }],
    ])('vmie.amazonaws.com may not assume the role %s', async (_, context) => {
      // GIVEN the role's trust policy
      // WHEN VM Import/Export assumes the role with a context that differs from the valid one in one value
      const result = await assume(d, VMIE, context);
      // THEN it is denied
      expect(result).not.toBe('Allowed');
    });

    test.each([
      ['the service principal ec2.amazonaws.com', 'ec2.amazonaws.com'],
      ['a role of this account', `arn:aws:iam::${ACCOUNT}:role/admin`],
      ['the root of this account', `arn:aws:iam::${ACCOUNT}:root`],
      ['a role of another account', `arn:aws:iam::${OTHER_ACCOUNT}:role/admin`],
    ])('%s may not assume the role, even with the valid context and sts:AssumeRole in its own policy', async (_, principal) => {
      // GIVEN the role's trust policy, and a principal whose own policy allows sts:AssumeRole
      const own = principal.startsWith('arn:') ? [allowOnly('sts:AssumeRole', '*')] : [];
      // WHEN it assumes the role with the context VM Import/Export sends, and then assumes a role
      // whose trust policy is the same but for naming this principal instead of vmie.amazonaws.com
      const result = await assume(d, principal, VALID, own);
      const trustingIt = await assume(d, principal, VALID, own, withPrincipal(d.trustPolicy, principal));
      // THEN only the role that names the principal is assumed
      expect(result).not.toBe('Allowed');
      expect(trustingIt).toBe('Allowed');
    });

    describe('with confusedDeputyProtection: false', () => {
      let unprotected: Deployment;
      beforeAll(() => {
        unprotected = deploy({ confusedDeputyProtection: false });
      });

      test.each([
        ['for another account (aws:SourceAccount)', { ...VALID, 'aws:SourceAccount': OTHER_ACCOUNT }],
        ['for a task of another account (aws:SourceArn)', { ...VALID, 'aws:SourceArn': OTHER_ACCOUNT_IMPORT_TASK }],
      ])('vmie.amazonaws.com may assume the role %s: the protection is what denies it', async (_, context) => {
        // GIVEN the trust policies of a protected and an unprotected role
        // WHEN VM Import/Export assumes each role for another account
        const protectedResult = await assume(d, VMIE, context);
        const unprotectedResult = await assume(unprotected, VMIE, context);
        // THEN only the unprotected role is assumed
        expect(protectedResult).not.toBe('Allowed');
        expect(unprotectedResult).toBe('Allowed');
      });

      test('the external id is still required', async () => {
        // GIVEN the trust policy of an unprotected role
        // WHEN VM Import/Export assumes it without, and with, the external id
        const withoutId = await assume(unprotected, VMIE, without('sts:ExternalId'));
        const withId = await assume(unprotected, VMIE, VALID);
        // THEN only the request with the external id is allowed
        expect(withoutId).not.toBe('Allowed');
        expect(withId).toBe('Allowed');
      });
    });
  });
});
