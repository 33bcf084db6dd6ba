/**
 * Custom resource `Custom::VmExportBucketAcl`: grants the Region's VM Export account READ_ACP and
 * WRITE in an export bucket's ACL, as `CreateInstanceExportTask` requires, keeping the owner's
 * FULL_CONTROL and every other grant. On delete, it takes only its own grants away.
 */
import { GetBucketAclCommand, PutBucketAclCommand, S3Client, type Grant } from '@aws-sdk/client-s3';
import { sendResponse, type CustomResourceEvent, type CustomResourceResult } from '../aws/cfn-response';

const s3 = new S3Client({ forcePathStyle: Boolean(process.env.AWS_ENDPOINT_URL_S3 || process.env.AWS_ENDPOINT_URL) });

/** The Lambda entry point. */
export async function handler(event: CustomResourceEvent): Promise<void> {
  let result: CustomResourceResult;
  try {
    result = await apply(event);
  } catch (e) {
    const err = e as Error;
    result = {
      status: 'FAILED',
      physicalResourceId: event.PhysicalResourceId ?? `${String(event.ResourceProperties.BucketName)}:vm-export-acl`,
      reason: `${err.name}: ${err.message}`,
    };
  }
  await sendResponse(event, result);
}

/** Applies the event to the bucket ACL. Exported for tests. */
export async function apply(event: CustomResourceEvent): Promise<CustomResourceResult> {
  const bucket = requireString(event.ResourceProperties, 'BucketName');
  const canonicalId = requireString(event.ResourceProperties, 'CanonicalId');
  const physicalResourceId = `${bucket}:vm-export-acl`;

  // Ids whose grants this resource owns: the current one, and the previous one on update.
  const owned = new Set([canonicalId]);
  const old = event.OldResourceProperties;
  if (event.RequestType === 'Update' && old && typeof old.CanonicalId === 'string') owned.add(old.CanonicalId);
  const oldBucket = event.RequestType === 'Update' && old && typeof old.BucketName === 'string' ? old.BucketName : undefined;

  if (event.RequestType === 'Delete') {
    await rewriteAcl(bucket, owned, undefined, true);
    return { status: 'SUCCESS', physicalResourceId: event.PhysicalResourceId ?? physicalResourceId };
  }
  if (oldBucket && oldBucket !== bucket) {
    await rewriteAcl(oldBucket, owned, undefined, true);
  }
  await rewriteAcl(bucket, owned, canonicalId, false);
  return { status: 'SUCCESS', physicalResourceId, data: { CanonicalId: canonicalId } };
}

/**
 * Reads the ACL of `bucket`, removes the grants to `owned` ids, adds READ_ACP and WRITE for
 * `grantTo` when given, keeps the owner's FULL_CONTROL, and writes it back.
 */
async function rewriteAcl(bucket: string, owned: Set<string>, grantTo: string | undefined, missingOk: boolean): Promise<void> {
  let current;
  try {
    current = await s3.send(new GetBucketAclCommand({ Bucket: bucket }));
  } catch (e) {
    if (missingOk && (e as Error).name === 'NoSuchBucket') return;
    throw e;
  }
  const owner = current.Owner;
  if (!owner?.ID) throw new Error(`GetBucketAcl of ${bucket} returned no owner id`);
  const kept = (current.Grants ?? []).filter((g) => !(g.Grantee?.Type === 'CanonicalUser' && g.Grantee.ID && owned.has(g.Grantee.ID)));
  const grants: Grant[] = [...kept];
  const ownerFull = grants.some(
    (g) => g.Grantee?.Type === 'CanonicalUser' && g.Grantee.ID === owner.ID && g.Permission === 'FULL_CONTROL',
  );
  if (!ownerFull) grants.unshift({ Grantee: { Type: 'CanonicalUser', ID: owner.ID }, Permission: 'FULL_CONTROL' });
  if (grantTo) {
    for (const Permission of ['READ_ACP', 'WRITE'] as const) {
      grants.push({ Grantee: { Type: 'CanonicalUser', ID: grantTo }, Permission });
    }
  }
  await s3.send(
    new PutBucketAclCommand({
      Bucket: bucket,
      AccessControlPolicy: { Owner: { ID: owner.ID, DisplayName: owner.DisplayName }, Grants: grants },
    }),
  );
}

function requireString(props: Record<string, unknown>, name: string): string {
  const v = props[name];
  if (typeof v !== 'string' || v.length === 0) throw new Error(`The resource property ${name} is missing`);
  return v;
}
