import { App, Stack, Validations } from 'aws-cdk-lib';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { AwsSolutionsChecks } from 'cdk-nag';
import { VmExportBucket, VmExportGrant, VmieServiceRole, VmImportBucket } from '../../src';

/** Synthesizes `app` with the AwsSolutions pack; returns the report of what is left, or '' when clean. */
function nagReport(app: App): string {
  Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
  try {
    app.synth();
    return '';
  } catch (e) {
    return (e as Error).message;
  }
}

function newApp(): { app: App; stack: Stack } {
  const app = new App();
  return { app, stack: new Stack(app, 'NagStack', { env: { account: '111111111111', region: 'eu-west-1' } }) };
}

describe('cdk-nag AwsSolutionsChecks', () => {
  test('every construct and option, with access logs configured: no unacknowledged findings', () => {
    // GIVEN
    const { app, stack } = newApp();
    const logs = new s3.Bucket(stack, 'AccessLogs', {
      encryption: s3.BucketEncryption.S3_MANAGED,
      enforceSSL: true,
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
    });
    Validations.of(logs).acknowledge({ id: 'AwsSolutions-S1', reason: 'This bucket is the access log destination; logging it to itself would loop.' });
    const key = new kms.Key(stack, 'Key', { enableKeyRotation: true });
    // WHEN
    const images = new VmImportBucket(stack, 'Images', { encryptionKey: key, serverAccessLogsBucket: logs });
    const exportsByPolicy = new VmExportBucket(stack, 'Exports', { serverAccessLogsBucket: logs });
    const exportsByAcl = new VmExportBucket(stack, 'AclExports', { exportGrant: VmExportGrant.BUCKET_ACL, serverAccessLogsBucket: logs });
    new VmieServiceRole(stack, 'Role', {
      importBuckets: [images.bucket],
      exportBuckets: [exportsByPolicy.bucket, exportsByAcl.bucket],
      encryptionKeys: [key],
      licenseConfigurations: true,
    });
    // THEN
    expect(nagReport(app)).toBe('');
  });

  test('with the defaults, what is left is S1 (server access logs are opt-in) on each bucket, and nothing else', () => {
    // GIVEN
    const { app, stack } = newApp();
    // WHEN
    new VmImportBucket(stack, 'Images');
    new VmExportBucket(stack, 'Exports');
    // THEN
    const report = nagReport(app);
    const rules = [...report.matchAll(/AwsSolutions-[A-Z]+\d+/g)].map((m) => m[0]);
    expect(new Set(rules)).toEqual(new Set(['AwsSolutions-S1']));
    expect(report).toMatch(/Images/);
    expect(report).toMatch(/Exports/);
  });
});
