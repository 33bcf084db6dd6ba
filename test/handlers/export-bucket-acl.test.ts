import { loadBundle } from '../helpers/bundles';
import { startLocalAclServer, type LocalAclServer } from '../helpers/local-acl-server';

const OWNER = 'f'.repeat(64);
const VM_EXPORT = 'c4d8eabf8db69dbe46bfe0e517100c554f01200b104d59cd408e777ba442a322';
const OTHER = 'b'.repeat(64);

let server: LocalAclServer;
let handler: (event: any) => Promise<void>;

beforeAll(async () => {
  server = await startLocalAclServer();
  process.env.AWS_ENDPOINT_URL_S3 = server.endpoint;
  process.env.AWS_REGION = 'eu-west-1';
  process.env.AWS_ACCESS_KEY_ID = 'test';
  process.env.AWS_SECRET_ACCESS_KEY = 'test';
  // The bundle that Lambda runs; it builds its S3 client when it loads, so load it after the
  // endpoint is set.
  handler = loadBundle('export-bucket-acl').handler;
});

afterAll(async () => {
  await server.close();
  delete process.env.AWS_ENDPOINT_URL_S3;
});

function event(type: 'Create' | 'Update' | 'Delete', props: Record<string, string>, old?: Record<string, string>) {
  return {
    RequestType: type,
    ResponseURL: server.responseUrl,
    StackId: 'arn:aws:cloudformation:eu-west-1:111111111111:stack/s/1',
    RequestId: `req-${server.responses.length}`,
    LogicalResourceId: 'ExportsVmExportAcl',
    PhysicalResourceId: type === 'Create' ? undefined : `${props.BucketName}:vm-export-acl`,
    ResourceProperties: { ServiceToken: 'arn', ...props },
    OldResourceProperties: old,
  };
}

describe('the export bucket ACL custom resource', () => {
  test('create adds READ_ACP and WRITE for the VM Export account and keeps the owner and other grants', async () => {
    // GIVEN
    server.acls.set('exports', { owner: OWNER, grants: [{ id: OWNER, permission: 'FULL_CONTROL' }, { id: OTHER, permission: 'READ' }] });
    // WHEN
    await handler(event('Create', { BucketName: 'exports', CanonicalId: VM_EXPORT }));
    // THEN
    expect(server.acls.get('exports')!.grants).toEqual([
      { id: OWNER, permission: 'FULL_CONTROL' },
      { id: OTHER, permission: 'READ' },
      { id: VM_EXPORT, permission: 'READ_ACP' },
      { id: VM_EXPORT, permission: 'WRITE' },
    ]);
    expect(server.responses.at(-1)).toMatchObject({ Status: 'SUCCESS', PhysicalResourceId: 'exports:vm-export-acl', Data: { CanonicalId: VM_EXPORT } });
  });

  test('the owner\'s FULL_CONTROL is restored when the ACL lacks it, and repeating the call does not duplicate grants', async () => {
    // GIVEN
    server.acls.set('bare', { owner: OWNER, grants: [] });
    // WHEN
    await handler(event('Create', { BucketName: 'bare', CanonicalId: VM_EXPORT }));
    await handler(event('Update', { BucketName: 'bare', CanonicalId: VM_EXPORT }, { BucketName: 'bare', CanonicalId: VM_EXPORT }));
    // THEN
    expect(server.acls.get('bare')!.grants).toEqual([
      { id: OWNER, permission: 'FULL_CONTROL' },
      { id: VM_EXPORT, permission: 'READ_ACP' },
      { id: VM_EXPORT, permission: 'WRITE' },
    ]);
  });

  test('an update to another canonical id moves the grant', async () => {
    // GIVEN
    server.acls.set('moving', { owner: OWNER, grants: [{ id: OWNER, permission: 'FULL_CONTROL' }] });
    await handler(event('Create', { BucketName: 'moving', CanonicalId: VM_EXPORT }));
    // WHEN
    await handler(event('Update', { BucketName: 'moving', CanonicalId: OTHER }, { BucketName: 'moving', CanonicalId: VM_EXPORT }));
    // THEN
    expect(server.acls.get('moving')!.grants).toEqual([
      { id: OWNER, permission: 'FULL_CONTROL' },
      { id: OTHER, permission: 'READ_ACP' },
      { id: OTHER, permission: 'WRITE' },
    ]);
  });

  test('delete takes away only its own grants; a bucket that is gone is not an error', async () => {
    // GIVEN
    server.acls.set('leaving', {
      owner: OWNER,
      grants: [{ id: OWNER, permission: 'FULL_CONTROL' }, { id: OTHER, permission: 'READ' }, { id: VM_EXPORT, permission: 'WRITE' }],
    });
    // WHEN
    await handler(event('Delete', { BucketName: 'leaving', CanonicalId: VM_EXPORT }));
    await handler(event('Delete', { BucketName: 'never-existed', CanonicalId: VM_EXPORT }));
    // THEN
    expect(server.acls.get('leaving')!.grants).toEqual([{ id: OWNER, permission: 'FULL_CONTROL' }, { id: OTHER, permission: 'READ' }]);
    expect(server.responses.slice(-2).map((r) => r.Status)).toEqual(['SUCCESS', 'SUCCESS']);
  });

  test('a failure is reported to CloudFormation with the reason', async () => {
    // WHEN
    await handler(event('Create', { BucketName: 'missing-bucket', CanonicalId: VM_EXPORT }));
    await handler(event('Create', { BucketName: 'exports' } as any));
    // THEN
    const [missing, noId] = server.responses.slice(-2);
    expect(missing).toMatchObject({ Status: 'FAILED', Reason: expect.stringMatching(/NoSuchBucket/) });
    expect(noId).toMatchObject({ Status: 'FAILED', Reason: expect.stringMatching(/CanonicalId is missing/) });
  });
});
