import { Annotations, Aws, Fn, Names, Stack, Token, Validations } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { Construct, IConstruct } from 'constructs';
import { acknowledgeActionWildcard, acknowledgeResourceWildcard } from './private/nag';
import { checkBucketRegion, checkExportBucketEncryption } from './private/validation';

/**
 * The VM Import/Export service role: the role that `vmie.amazonaws.com` assumes to read disk
 * images, write exports and register the result. Its name is what `RoleName` takes on
 * `ImportImage`, `ImportSnapshot` and `ExportImage`.
 */
export interface IVmieServiceRole extends IConstruct {
  /** The role. */
  readonly role: iam.IRole;
  /** The name of the role, for the `RoleName` parameter of the VM Import/Export API. */
  readonly roleName: string;
  /** The ARN of the role. */
  readonly roleArn: string;

  /**
   * Lets the service read disk images from `bucket`, and decrypt them when the bucket is encrypted
   * with a KMS key.
   *
   * @param objectsKeyPattern the objects the service may read. @default '*'
   */
  addImportBucket(bucket: s3.IBucket, objectsKeyPattern?: string): void;

  /**
   * Lets the service write exported images into `bucket`.
   *
   * @param objectsKeyPattern the objects the service may write. @default '*'
   */
  addExportBucket(bucket: s3.IBucket, objectsKeyPattern?: string): void;

  /**
   * Lets the service use `key` to encrypt imported snapshots and AMIs (`Encrypted` with `KmsKeyId`).
   */
  addEncryptionKey(key: kms.IKey): void;

  /** Grants `grantee` permission to pass the role to VM Import/Export (`iam:PassRole`). */
  grantPassRole(grantee: iam.IGrantable): iam.Grant;
}

/**
 * Properties of a {@link VmieServiceRole}.
 */
export interface VmieServiceRoleProps {
  /**
   * The name of the role.
   *
   * The service accepts any role name through the `RoleName` API parameter. Give
   * `VmieServiceRole.CONVENTIONAL_ROLE_NAME` (`vmimport`) for the name that tools assume when no
   * `RoleName` is passed; that name is unique in an account, so the stack then fails to deploy
   * where the account already has a `vmimport` role (adopt it with `VmieServiceRole.fromRoleName`).
   *
   * @default - a name unique to this construct and Region, generated at synth time, so it never
   * collides with an existing `vmimport` role.
   */
  readonly roleName?: string;

  /**
   * Buckets that hold disk images to import.
   *
   * @default - none; add them with `addImportBucket`.
   */
  readonly importBuckets?: s3.IBucket[];

  /**
   * Buckets that receive exported images. They must not be encrypted with a KMS key.
   *
   * @default - none; add them with `addExportBucket`.
   */
  readonly exportBuckets?: s3.IBucket[];

  /**
   * KMS keys used to encrypt imported snapshots and AMIs.
   *
   * @default - none; imports encrypted with the EBS default key need no grant here.
   */
  readonly encryptionKeys?: kms.IKey[];

  /**
   * Whether to allow the License Manager actions needed by imports that name license
   * configurations (`LicenseSpecifications`).
   *
   * @default false
   */
  readonly licenseConfigurations?: boolean;

  /**
   * Whether the trust policy carries confused-deputy protection: the service may assume the role
   * only on behalf of this account (`aws:SourceAccount`) and for VM Import/Export tasks of this
   * account (`aws:SourceArn` like `arn:<partition>:vmie:*:<account>:*`).
   *
   * @default true
   */
  readonly confusedDeputyProtection?: boolean;

  /**
   * A permissions boundary for the role.
   *
   * @default - no permissions boundary.
   */
  readonly permissionsBoundary?: iam.IManagedPolicy;

  /**
   * A description of the role.
   *
   * @default 'VM Import/Export service role'
   */
  readonly description?: string;
}

/**
 * Options for adopting an existing service role with {@link VmieServiceRole.fromRoleName}.
 */
export interface VmieServiceRoleImportOptions {
  /**
   * Whether grants may add statements to the adopted role's policy.
   *
   * When false, `addImportBucket` and the other methods change nothing, and the role must already
   * allow what the imports need.
   *
   * @default true
   */
  readonly mutable?: boolean;
}

const ROLE_NAME_PATTERN = /^[\w+=,.@-]{1,64}$/;
/** Room left in a generated name for "-" and the longest Region name. */
const GENERATED_NAME_MAX = 64 - 1 - 16;

/**
 * What created and adopted service roles share: the grants to buckets and keys.
 */
export abstract class VmieServiceRoleBase extends Construct implements IVmieServiceRole {
  public abstract readonly role: iam.IRole;
  public abstract readonly roleName: string;
  public abstract readonly roleArn: string;
  /** Undefined for an adopted role that may not be changed. */
  private grants?: RoleGrants;

  /** Lets the grant methods add statements to `role` (and to bucket and key policies). */
  protected enableGrants(role: iam.IRole): void {
    this.grants = new RoleGrants(this, role);
  }

  public addImportBucket(bucket: s3.IBucket, objectsKeyPattern: string = '*'): void {
    this.grants?.importBucket(bucket, objectsKeyPattern);
  }

  public addExportBucket(bucket: s3.IBucket, objectsKeyPattern: string = '*'): void {
    this.grants?.exportBucket(bucket, objectsKeyPattern);
  }

  public addEncryptionKey(key: kms.IKey): void {
    this.grants?.encryptionKey(key);
  }

  public grantPassRole(grantee: iam.IGrantable): iam.Grant {
    return this.role.grantPassRole(grantee.grantPrincipal);
  }
}

/**
 * The VM Import/Export service role, with secure defaults.
 *
 * - Trust: `vmie.amazonaws.com` may assume it with the external id `vmimport` or the role's own
 *   name, only for this account (confused-deputy protection, on by default).
 * - Permissions: exactly what the VM Import/Export User Guide lists, scoped to the buckets and keys
 *   it is given: read images from import buckets (and decrypt them when they use SSE-KMS), write
 *   exports to export buckets, register the resulting snapshots and images, use the KMS keys of
 *   encrypted imports, and optionally License Manager.
 * - Name: unique per construct and Region by default, so that it never collides with an existing
 *   `vmimport` role.
 */
export class VmieServiceRole extends VmieServiceRoleBase {
  /** The conventional name of the service role, `vmimport`. */
  public static readonly CONVENTIONAL_ROLE_NAME = 'vmimport';

  /** The external id the service sends when it assumes the role. */
  public static readonly EXTERNAL_ID = 'vmimport';

  /**
   * Adopts an existing service role, such as a `vmimport` role made by hand.
   *
   * @param roleName the name of the existing role
   */
  public static fromRoleName(
    scope: Construct,
    id: string,
    roleName: string,
    options: VmieServiceRoleImportOptions = {},
  ): IVmieServiceRole {
    validateRoleName(roleName, 'roleName');
    return new ImportedVmieServiceRole(scope, id, roleName, options.mutable ?? true);
  }

  /** The role. */
  public readonly role: iam.Role;
  /** The name of the role, for the `RoleName` parameter of the VM Import/Export API. */
  public readonly roleName: string;
  /** The ARN of the role. */
  public readonly roleArn: string;

  public constructor(scope: Construct, id: string, props: VmieServiceRoleProps = {}) {
    super(scope, id);
    if (props.roleName !== undefined) validateRoleName(props.roleName, 'roleName');

    const stack = Stack.of(this);
    const roleName = props.roleName ?? generatedRoleName(this);
    const protection = props.confusedDeputyProtection ?? true;

    const conditions: Record<string, Record<string, unknown>> = {
      StringEquals: {
        'sts:ExternalId': externalIds(roleName),
        ...(protection ? { 'aws:SourceAccount': stack.account } : {}),
      },
    };
    if (protection) {
      conditions.ArnLike = { 'aws:SourceArn': `arn:${stack.partition}:vmie:*:${stack.account}:*` };
    }

    this.role = new iam.Role(this, 'Resource', {
      roleName,
      description: props.description ?? 'VM Import/Export service role',
      assumedBy: new iam.ServicePrincipal('vmie.amazonaws.com', { conditions }),
      permissionsBoundary: props.permissionsBoundary,
    });
    if (props.roleName === VmieServiceRole.CONVENTIONAL_ROLE_NAME) {
      Annotations.of(this).addWarningV2(
        'cdk-vm-import-export:conventionalRoleName',
        'The role is named "vmimport": the stack fails to deploy in an account that already has a role of that name. Leave roleName unset for a unique name, or adopt the existing role with VmieServiceRole.fromRoleName.',
      );
    }
    this.roleName = this.role.roleName;
    this.roleArn = this.role.roleArn;
    this.enableGrants(this.role);

    // The guide's statement for registering the imported snapshots as images. These EC2 actions
    // take no resource-level scoping for what the service does on the caller's behalf.
    this.role.addToPrincipalPolicy(
      new iam.PolicyStatement({
        sid: 'RegisterImportedImages',
        actions: ['ec2:ModifySnapshotAttribute', 'ec2:CopySnapshot', 'ec2:RegisterImage', 'ec2:Describe*'],
        resources: ['*'],
      }),
    );
    if (props.licenseConfigurations) {
      this.role.addToPrincipalPolicy(
        new iam.PolicyStatement({
          sid: 'LicenseConfigurations',
          actions: [
            'license-manager:GetLicenseConfiguration',
            'license-manager:UpdateLicenseSpecificationsForResource',
            'license-manager:ListLicenseSpecificationsForResource',
          ],
          resources: ['*'],
        }),
      );
    }
    acknowledgeWildcards(this.role);

    for (const b of props.importBuckets ?? []) this.addImportBucket(b);
    for (const b of props.exportBuckets ?? []) this.addExportBucket(b);
    for (const k of props.encryptionKeys ?? []) this.addEncryptionKey(k);
  }
}

/** An existing role adopted by name. */
class ImportedVmieServiceRole extends VmieServiceRoleBase {
  public readonly role: iam.IRole;
  public readonly roleName: string;
  public readonly roleArn: string;

  public constructor(scope: Construct, id: string, roleName: string, mutable: boolean) {
    super(scope, id);
    this.role = iam.Role.fromRoleName(this, 'Resource', roleName, { mutable });
    this.roleName = this.role.roleName;
    this.roleArn = this.role.roleArn;
    if (mutable) this.enableGrants(this.role);
  }
}

/** The grants of a service role, shared by created and adopted roles. */
class RoleGrants {
  private readonly importBuckets = new Set<string>();
  private readonly exportBuckets = new Set<string>();
  private readonly keys = new Set<string>();

  public constructor(private readonly scope: Construct, private readonly role: iam.IRole) {}

  public importBucket(bucket: s3.IBucket, pattern: string): void {
    if (!this.once(this.importBuckets, bucket.node.path, pattern)) return;
    checkBucketRegion(this.scope, bucket, 'import bucket');
    iam.Grant.addToPrincipalOrResource({
      grantee: this.role,
      actions: ['s3:GetBucketLocation', 's3:ListBucket'],
      resourceArns: [bucket.bucketArn],
      resource: bucket,
    });
    this.grantObjects(bucket, pattern, ['s3:GetObject'], 'The service reads the disk images of this import bucket');
    // An SSE-KMS import bucket: the service must decrypt the images.
    bucket.encryptionKey?.grantDecrypt(this.role);
  }

  public exportBucket(bucket: s3.IBucket, pattern: string): void {
    if (!this.once(this.exportBuckets, bucket.node.path, pattern)) return;
    checkBucketRegion(this.scope, bucket, 'export bucket');
    checkExportBucketEncryption(bucket, 'export bucket');
    iam.Grant.addToPrincipalOrResource({
      grantee: this.role,
      actions: ['s3:GetBucketLocation', 's3:ListBucket', 's3:GetBucketAcl'],
      resourceArns: [bucket.bucketArn],
      resource: bucket,
    });
    this.grantObjects(bucket, pattern, ['s3:GetObject', 's3:PutObject'], 'The service writes exported images into this export bucket');
  }

  public encryptionKey(key: kms.IKey): void {
    if (!this.once(this.keys, key.node.path, '')) return;
    // The guide's kms:GenerateDataKey* and kms:ReEncrypt* groups, spelled out: the key-pair
    // actions in the first group are never used for EBS snapshots.
    key.grant(
      this.role,
      'kms:CreateGrant',
      'kms:Decrypt',
      'kms:DescribeKey',
      'kms:Encrypt',
      'kms:GenerateDataKey',
      'kms:GenerateDataKeyWithoutPlaintext',
      'kms:ReEncryptFrom',
      'kms:ReEncryptTo',
    );
  }

  /** Grants object actions on `bucket` objects matching `pattern`, with the wildcard acknowledged. */
  private grantObjects(bucket: s3.IBucket, pattern: string, actions: string[], why: string): void {
    const arn = bucket.arnForObjects(pattern);
    iam.Grant.addToPrincipalOrResource({ grantee: this.role, actions, resourceArns: [arn], resource: bucket });
    acknowledgeResourceWildcard(this.role, arn, `${why}; the grant covers the objects matching "${pattern}" of this bucket only.`);
  }

  private once(seen: Set<string>, path: string, pattern: string): boolean {
    const k = `${path}|${pattern}`;
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  }
}

function validateRoleName(name: string, prop: string): void {
  if (Token.isUnresolved(name)) return;
  if (!ROLE_NAME_PATTERN.test(name)) {
    throw new Error(
      `${prop} "${name}" is not a valid IAM role name: use 1 to 64 letters, digits and +=,.@_- only.`,
    );
  }
}

/** A name unique to the construct's path and, through the Region, to the deployment. */
function generatedRoleName(scope: Construct): string {
  const base = Names.uniqueResourceName(scope, { maxLength: GENERATED_NAME_MAX, separator: '-' });
  const region = Stack.of(scope).region;
  return Token.isUnresolved(region) ? Fn.join('-', [base, Aws.REGION]) : `${base}-${region}`;
}

/** The external ids the trust policy accepts: `vmimport`, and the role's own name. */
function externalIds(roleName: string): string | string[] {
  return !Token.isUnresolved(roleName) && roleName === VmieServiceRole.EXTERNAL_ID
    ? VmieServiceRole.EXTERNAL_ID
    : [VmieServiceRole.EXTERNAL_ID, roleName];
}

/** Acknowledges, for cdk-nag and other validation plugins, the wildcards of the guide's EC2 statement. */
function acknowledgeWildcards(role: iam.Role): void {
  const reason =
    'The VM Import/Export User Guide grants the service ec2:Describe*, ec2:CopySnapshot, ec2:ModifySnapshotAttribute and ' +
    'ec2:RegisterImage (and the optional License Manager actions) on "*": they act on snapshots and images that do not ' +
    'exist before the import.';
  acknowledgeActionWildcard(role, 'ec2:Describe*', reason);
  Validations.of(role).acknowledge({ id: 'AwsSolutions-IAM5[Resource::*]', reason });
}
