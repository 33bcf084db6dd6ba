/**
 * The example app of the README: VM Import/Export in one construct, with a few import defaults.
 */
import { App, CfnOutput, Environment, Stack, StackProps } from 'aws-cdk-lib';
import { Construct } from 'constructs';
import { LicenseType, VmImportExport } from '../../src';

/** A stack with everything VM Import/Export needs: an image uploaded to its import bucket becomes an AMI. */
export class VmImportExportExampleStack extends Stack {
  public readonly vmie: VmImportExport;

  public constructor(scope: Construct, id: string, props?: StackProps) {
    super(scope, id, props);
    this.vmie = new VmImportExport(this, 'Vie', {
      importDefaults: {
        licenseType: LicenseType.BYOL,
        tags: { Team: 'platform', CostCenter: 'vm-migration' },
      },
    });
    new CfnOutput(this, 'ImportBucketName', { value: this.vmie.importBucket.bucketName, description: 'Upload images here to import them' });
    new CfnOutput(this, 'ImportStateMachineArn', { value: this.vmie.importWorkflow.stateMachine.stateMachineArn });
    if (this.vmie.exportWorkflow) {
      new CfnOutput(this, 'ExportStateMachineArn', { value: this.vmie.exportWorkflow.stateMachine.stateMachineArn });
    }
  }
}

/**
 * Builds the example app; `outdir` is where the cloud assembly goes, `env` the stack's account and
 * Region (by default those of the CDK environment, else placeholders).
 */
export function exampleApp(outdir?: string, env?: Environment): { app: App; stack: VmImportExportExampleStack } {
  const app = new App({ outdir });
  const stack = new VmImportExportExampleStack(app, 'VmImportExportExample', {
    env: env ?? { account: process.env.CDK_DEFAULT_ACCOUNT ?? '111111111111', region: process.env.CDK_DEFAULT_REGION ?? 'eu-west-1' },
  });
  return { app, stack };
}
