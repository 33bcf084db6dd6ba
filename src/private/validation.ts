import { Duration, Stack, Token } from 'aws-cdk-lib';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { Construct } from 'constructs';

/**
 * Fails when `bucket` is known to be in another Region than the stack of `scope`: VM
 * Import/Export answers "The given S3 bucket is not local to the Region". Unresolved Regions are
 * never judged.
 */
export function checkBucketRegion(scope: Construct, bucket: s3.IBucket, what: string): void {
  const stackRegion = Stack.of(scope).region;
  const bucketRegion = bucket.env.region;
  if (Token.isUnresolved(stackRegion) || Token.isUnresolved(bucketRegion)) return;
  if (stackRegion !== bucketRegion) {
    throw new Error(
      `The ${what} ${bucket.node.path} is in ${bucketRegion}, but the stack is in ${stackRegion}: ` +
        'VM Import/Export needs the bucket in the Region of the import or export ' +
        '("The given S3 bucket is not local to the Region"). Use a bucket in the same Region.',
    );
  }
}

/**
 * Fails when an export bucket is encrypted with a KMS key: VM Import/Export writes exports only to
 * buckets encrypted with SSE-S3 (or unencrypted), and rejects SSE-KMS export buckets.
 */
export function checkExportBucketEncryption(bucket: s3.IBucket, what: string): void {
  if (bucket.encryptionKey) {
    throw new Error(
      `The ${what} ${bucket.node.path} is encrypted with a KMS key, but VM Import/Export rejects ` +
        'SSE-KMS export buckets. Use a bucket encrypted with S3-managed keys (SSE-S3).',
    );
  }
}

/** S3 lifecycle rules count whole days: a duration of less than a day, or not whole, is refused. */
export function checkDays(d: Duration | undefined, prop: string): void {
  if (!d || Token.isUnresolved(d.toSeconds())) return;
  const days = d.toSeconds() / 86_400;
  if (days < 1 || !Number.isInteger(days)) {
    throw new Error(`${prop} is ${d.toHumanString()}, but S3 lifecycle rules count whole days: give Duration.days(n) with n >= 1.`);
  }
}

/** What {@link lifecycleRules} needs to know of a bucket's props. */
export interface LifecycleOptions {
  readonly abortIncompleteUploadsAfter?: Duration;
  /** When objects expire, and the name of the prop that says so (for messages). */
  readonly expireAfter?: Duration;
  readonly expireAfterProp: string;
  readonly expireRuleId: string;
  /** Only objects with these tags expire. */
  readonly expireTagFilters?: Record<string, string>;
  readonly versioned?: boolean;
}

/**
 * The lifecycle rules of the library's buckets: incomplete multipart uploads are aborted (after 7
 * days unless told otherwise), and objects expire when asked, with their earlier versions.
 */
export function lifecycleRules(o: LifecycleOptions): s3.LifecycleRule[] {
  checkDays(o.abortIncompleteUploadsAfter, 'abortIncompleteUploadsAfter');
  checkDays(o.expireAfter, o.expireAfterProp);
  const rules: s3.LifecycleRule[] = [
    { id: 'AbortIncompleteUploads', abortIncompleteMultipartUploadAfter: o.abortIncompleteUploadsAfter ?? Duration.days(7) },
  ];
  if (o.expireAfter) {
    rules.push({
      id: o.expireRuleId,
      tagFilters: o.expireTagFilters,
      expiration: o.expireAfter,
      noncurrentVersionExpiration: o.versioned ? o.expireAfter : undefined,
    });
  }
  return rules;
}

/** The server access log settings of a bucket: a prefix needs a bucket; the prefix has a default. */
export function accessLogSettings(
  bucket: s3.IBucket | undefined,
  prefix: string | undefined,
  defaultPrefix: string,
): Pick<s3.BucketProps, 'serverAccessLogsBucket' | 'serverAccessLogsPrefix'> {
  if (prefix !== undefined && !bucket) {
    throw new Error('serverAccessLogsPrefix is set but serverAccessLogsBucket is not: give the bucket that receives the logs.');
  }
  return bucket ? { serverAccessLogsBucket: bucket, serverAccessLogsPrefix: prefix ?? defaultPrefix } : {};
}
