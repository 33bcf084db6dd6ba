import { Duration, Stack } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { Construct } from 'constructs';
import { handlerCode, LAMBDA_RUNTIME } from './assets';
import { acknowledgeResourceWildcard } from './nag';

const ID = 'VmExportBucketAclProvider';

/**
 * The Lambda function behind the `Custom::VmExportBucketAcl` resources of a stack: one per stack,
 * allowed to read and write the ACLs of exactly the buckets that use it.
 */
export class ExportBucketAclProvider extends Construct {
  /** The provider of the stack of `scope`, created on first use. */
  public static of(scope: Construct): ExportBucketAclProvider {
    const stack = Stack.of(scope);
    return (stack.node.tryFindChild(ID) as ExportBucketAclProvider | undefined) ?? new ExportBucketAclProvider(stack, ID);
  }

  public readonly serviceToken: string;
  private readonly role: iam.Role;

  private constructor(scope: Construct, id: string) {
    super(scope, id);
    const logGroup = new logs.LogGroup(this, 'Logs', { retention: logs.RetentionDays.THREE_MONTHS });
    this.role = new iam.Role(this, 'Role', {
      assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com'),
      description: 'Keeps the VM Export grant in export bucket ACLs',
    });
    logGroup.grantWrite(this.role);
    const fn = new lambda.Function(this, 'Handler', {
      runtime: LAMBDA_RUNTIME,
      architecture: lambda.Architecture.ARM_64,
      handler: 'index.handler',
      code: handlerCode('export-bucket-acl'),
      role: this.role,
      logGroup,
      timeout: Duration.minutes(2),
      memorySize: 256,
      description: 'Grants the VM Export account READ_ACP and WRITE in export bucket ACLs',
    });
    this.serviceToken = fn.functionArn;
    acknowledgeResourceWildcard(
      this.role,
      `${logGroup.logGroupArn}:*`,
      'Writing log events needs the log streams of the function\'s own log group; nothing else is wildcarded.',
    );
  }

  /** Lets the function read and write the ACL of `bucket`. */
  public allowBucket(bucket: s3.IBucket): void {
    this.role.addToPrincipalPolicy(
      new iam.PolicyStatement({
        actions: ['s3:GetBucketAcl', 's3:PutBucketAcl'],
        resources: [bucket.bucketArn],
      }),
    );
  }
}
