import * as fs from 'node:fs';
import * as path from 'node:path';
import { Match, Template } from 'aws-cdk-lib/assertions';
import { VmExportBucket, VmExportGrant } from '../../src';
import { canonicalIdForRegion, VM_EXPORT_DEFAULT_CANONICAL_ID } from '../../src/private/vm-export-accounts';
import { newStack } from '../helpers/stacks';

/**
 * The Region table of the reference (shared/reference/aws-vm-import-facts.md, section 2), read from
 * the file itself so that the code is checked against the facts, not against a second copy.
 */
function referenceTable(): { regions: Array<[string, string]>; otherId: string } {
  const file = path.join(__dirname, '..', '..', '..', 'shared', 'reference', 'aws-vm-import-facts.md');
  if (!fs.existsSync(file)) throw new Error(`The reference ${file} is missing: check out shared/ beside the repository.`);
  const regions: Array<[string, string]> = [];
  let otherId = '';
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    const cells = line.split('|').map((c) => c.trim());
    const id = cells.find((c) => /^[0-9a-f]{64}$/.test(c));
    if (!id) continue;
    const codes = cells[2] ?? '';
    if (/All other Regions/.test(cells[1])) otherId = id;
    for (const code of codes.split(',').map((c) => c.trim()).filter(Boolean)) regions.push([code, id]);
  }
  return { regions, otherId };
}

const reference = referenceTable();

describe('the VM Export canonical account', () => {
  test('the reference table was read', () => {
    expect(reference.regions.length).toBeGreaterThanOrEqual(22);
    expect(reference.otherId).toBe(VM_EXPORT_DEFAULT_CANONICAL_ID);
  });

  test.each(reference.regions)('a stack in %s grants %s', (region, id) => {
    // GIVEN
    const stack = newStack({ env: { account: '111111111111', region } });
    // WHEN
    const bucket = new VmExportBucket(stack, 'Exports');
    // THEN
    expect(bucket.vmExportCanonicalId).toBe(id);
    Template.fromStack(stack).hasResourceProperties('AWS::S3::BucketPolicy', {
      PolicyDocument: { Statement: Match.arrayWith([Match.objectLike({ Principal: { CanonicalUser: id } })]) },
    });
  });

  test.each(['us-east-1', 'us-west-2', 'eu-west-1', 'ap-northeast-1', 'sa-east-1'])('the long-standing Region %s gets the id for all other Regions', (region) => {
    expect(canonicalIdForRegion(region)).toBe(reference.otherId);
  });

  test('an environment-agnostic stack chooses the id at deploy time from a mapping of every documented Region', () => {
    // GIVEN
    const stack = newStack({});
    // WHEN
    new VmExportBucket(stack, 'Exports');
    new VmExportBucket(stack, 'AclExports', { exportGrant: VmExportGrant.BUCKET_ACL });
    // THEN
    const template = Template.fromStack(stack).toJSON();
    const mappings = Object.values(template.Mappings ?? {}) as Array<Record<string, { CanonicalId: string }>>;
    expect(mappings).toHaveLength(1); // shared by both buckets
    const mapping = mappings[0];
    for (const [region, id] of reference.regions) expect(mapping[region]).toEqual({ CanonicalId: id });
    expect(mapping['us-east-1']).toEqual({ CanonicalId: reference.otherId });
    expect(mapping['us-iso-east-1']).toBeUndefined(); // no documented account: deploy fails rather than grant a wrong one
    const mappingId = Object.keys(template.Mappings)[0];
    const findInMap = { 'Fn::FindInMap': [mappingId, { Ref: 'AWS::Region' }, 'CanonicalId'] };
    const text = JSON.stringify(template.Resources);
    expect(text).toContain(JSON.stringify({ CanonicalUser: findInMap }));
    expect(text).toContain(`"CanonicalId":${JSON.stringify(findInMap)}`); // the ACL custom resource
  });
});
