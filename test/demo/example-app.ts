/**
 * The example app of the README: a service role, an import bucket and an export bucket, wired.
 */
import { App, CfnOutput, Stack, StackProps } from 'aws-cdk-lib';
import { Construct } from 'constructs';
import { VmExportBucket, VmieServiceRole, VmImportBucket } from '../../src';

/** A stack with everything VM Import/Export needs. */
export class VmImportExportExampleStack extends Stack {
  public constructor(scope: Construct, id: string, props?: StackProps) {
    super(scope, id, props);
    const importBucket = new VmImportBucket(this, 'ImportBucket');
    const exportBucket = new VmExportBucket(this, 'ExportBucket');
    const role = new VmieServiceRole(this, 'ServiceRole', {
      importBuckets: [importBucket.bucket],
      exportBuckets: [exportBucket.bucket],
    });
    new CfnOutput(this, 'ServiceRoleName', { value: role.roleName, description: 'Pass as RoleName to ImportImage and ExportImage' });
    new CfnOutput(this, 'ImportBucketName', { value: importBucket.bucketName });
    new CfnOutput(this, 'ExportBucketName', { value: exportBucket.bucketName });
  }
}

/** Builds the example app; `outdir` is where the cloud assembly goes. */
export function exampleApp(outdir?: string): { app: App; stack: VmImportExportExampleStack } {
  const app = new App({ outdir });
  const stack = new VmImportExportExampleStack(app, 'VmImportExportExample', {
    env: { account: process.env.CDK_DEFAULT_ACCOUNT ?? '111111111111', region: process.env.CDK_DEFAULT_REGION ?? 'eu-west-1' },
  });
  return { app, stack };
}
