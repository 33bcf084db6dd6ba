import { createHash } from 'node:crypto';
import { PutObjectTaggingCommand } from '@aws-sdk/client-s3';
import * as fc from 'fast-check';
import { handler as validate, prepare } from '../../lambda/handlers/validate';
import { WorkflowError } from '../../lambda/workflow/errors';
import { importTrigger } from '../../lambda/workflow/events';
import { explain } from '../../lambda/workflow/import-cleanup';
import { optionsFromTags, parseOptionsJson, validateOptions } from '../../lambda/workflow/import-options';
import type { ImportRequest } from '../../lambda/workflow/payload';
import { qemuConvert } from '../helpers/fixtures';
import { bootMbrDisk } from '../helpers/inspect-fixtures';
import { startLocalS3, withEnv, type LocalS3 } from '../helpers/local-s3';

const BUCKET = 'import-bucket';
const EXECUTION = { id: 'arn:aws:states:us-east-1:111122223333:execution:Import:run-1', name: 'run-1', startTime: new Date().toISOString() };
let s3: LocalS3;

beforeAll(async () => {
  s3 = await startLocalS3([BUCKET]);
  await s3.put(BUCKET, 'vms/web/web-01.vmdk', 'not really a disk, prepare does not read it');
  await s3.put(BUCKET, 'vms/db/db disk+1.vhdx', 'a key with a space and a plus');
  await s3.put(BUCKET, 'vms/multi/boot.vmdk', 'boot disk');
  await s3.put(BUCKET, 'vms/multi/data.vmdk', 'data disk');
  await s3.put(BUCKET, 'vms/bad/bad.vmdk', 'image with a broken sidecar');
  await s3.put(BUCKET, 'vms/bad/bad.vmdk.vmie.json', '{ "mode": "image", ');
  await s3.put(BUCKET, 'vms/tagged/tagged.ova', 'image with option tags');
  await s3.put(BUCKET, 'vms/tagged/tagged.ova.vmie.json', JSON.stringify({ description: 'from the sidecar', platform: 'Linux', tags: { Env: 'prod', Sidecar: 'yes' } }));
  await tag('vms/tagged/tagged.ova', {
    'vmie:usage-operation': 'RunInstances:0800',
    'vmie:share-with-accounts': '111111111111 222222222222',
    'vmie:tag:Owner': 'platform-team',
    'vmie:ena-support': 'false',
    'Unrelated': 'ignored',
  });
  await s3.put(BUCKET, 'vms/typo/typo.vmdk', 'image with a misspelt option tag');
  await tag('vms/typo/typo.vmdk', { 'vmie:licence-type': 'BYOL' });
  await s3.upload(BUCKET, 'vms/real/disk1.vmdk', qemuConvert(bootMbrDisk(), 'vmdk', ['subformat=streamOptimized']));
  await s3.upload(BUCKET, 'vms/real/disk1.qcow2', qemuConvert(bootMbrDisk(), 'qcow2'));
});

afterAll(async () => {
  await s3.close();
});

beforeEach(() => {
  jest.spyOn(console, 'log').mockImplementation(() => undefined);
});

async function tag(key: string, tags: Record<string, string>): Promise<void> {
  const TagSet = Object.entries(tags).map(([Key, Value]) => ({ Key, Value }));
  await s3.client.send(new PutObjectTaggingCommand({ Bucket: BUCKET, Key: key, Tagging: { TagSet } }));
}

/** The S3 "Object Created" event EventBridge delivers for `key`, as the execution input. */
function s3Event(key: string, etag = 'd41d8cd98f00b204e9800998ecf8427e', versionId?: string) {
  return {
    'version': '0',
    'id': '17793124-05d4-b198-2fde-7ededc63b103',
    'detail-type': 'Object Created',
    'source': 'aws.s3',
    'account': '111122223333',
    'time': '2025-01-01T00:00:00Z',
    'region': 'us-east-1',
    'resources': [`arn:aws:s3:::${BUCKET}`],
    'detail': {
      'version': '0',
      'bucket': { name: BUCKET },
      'object': { key, size: 42, etag, ...(versionId ? { 'version-id': versionId } : {}), sequencer: '617f08299329d189' },
      'request-id': 'N4N7GDK58NMKJ12R',
      'requester': '111122223333',
      'reason': 'PutObject',
    },
  };
}

/** Runs prepare as the state machine does: the execution input wrapped in the task payload. */
function run(input: unknown, env: Record<string, string | undefined> = {}): Promise<ImportRequest> {
  return withEnv({ ...s3.env, VMIE_IMPORT_DEFAULTS: undefined, ...env }, () => prepare({ state: input, execution: EXECUTION }));
}

/** The documented client token, computed independently of the handler. */
function tokenOf(disks: Array<{ bucket: string; key: string; v: string }>): string {
  return createHash('sha256').update(disks.map((d) => `${d.bucket}/${d.key}@${d.v}\n`).join('')).digest('hex');
}

describe('prepare: the S3 event', () => {
  test('an Object Created event gives the request: source pinned by its ETag, token, default name, defaults', async () => {
    // GIVEN
    const event = s3Event('vms/web/web-01.vmdk', 'abc123', 'v-1');
    // WHEN
    const request = await run(event, { VMIE_IMPORT_DEFAULTS: JSON.stringify({ licenseType: 'BYOL', tags: { CostCenter: '42' } }) });
    // THEN
    const token = tokenOf([{ bucket: BUCKET, key: 'vms/web/web-01.vmdk', v: 'v-1' }]);
    expect(request).toEqual({
      source: { bucket: BUCKET, key: 'vms/web/web-01.vmdk', versionId: 'v-1', etag: 'abc123' },
      disks: [{ bucket: BUCKET, key: 'vms/web/web-01.vmdk', versionId: 'v-1', etag: 'abc123' }],
      options: { licenseType: 'BYOL', tags: { CostCenter: '42' } },
      clientToken: token,
      name: `web-01-${token.slice(0, 8)}`,
    });
    expect(request.clientToken).toMatch(/^[0-9a-f]{64}$/);
  });

  test('the ETag pins the content: the same object gives the same token, another upload another one', async () => {
    // GIVEN / WHEN
    const a = await run(s3Event('vms/web/web-01.vmdk', 'etag-1'));
    const again = await run(s3Event('vms/web/web-01.vmdk', '"etag-1"'));
    const b = await run(s3Event('vms/web/web-01.vmdk', 'etag-2'));
    // THEN
    expect(again.clientToken).toBe(a.clientToken);
    expect(b.clientToken).not.toBe(a.clientToken);
    expect(a.clientToken).toBe(tokenOf([{ bucket: BUCKET, key: 'vms/web/web-01.vmdk', v: 'etag-1' }]));
  });

  test('a URL-encoded key in the event is found decoded', async () => {
    // GIVEN: the key "vms/db/db disk+1.vhdx" as S3 notifications encode it
    const event = s3Event('vms/db/db+disk%2B1.vhdx');
    // WHEN
    const request = await run(event);
    // THEN
    expect(request.source.key).toBe('vms/db/db disk+1.vhdx');
    expect(request.name).toMatch(/^db-disk-1-[0-9a-f]{8}$/);
  });

  test('the sidecar, the object tags and the manual options merge over the defaults, in that order', async () => {
    // GIVEN: defaults (BYOL, tags), a sidecar (description, Linux, tags), tags (usage operation, shares, a user tag, ENA off)
    const defaults = { licenseType: 'BYOL', description: 'default', tags: { Env: 'dev', CostCenter: '42' }, copyToRegions: ['eu-west-1'] };
    // WHEN: a manual start that also names the AMI
    const request = await run(
      { bucket: BUCKET, key: 'vms/tagged/tagged.ova', options: { amiName: 'Web server (2025) v1.0', tags: { Env: 'staging' } } },
      { VMIE_IMPORT_DEFAULTS: JSON.stringify(defaults), AWS_REGION: 'us-east-1' },
    );
    // THEN
    expect(request.options).toEqual({
      // The tag's usageOperation replaced the default licenseType (they are exclusive).
      usageOperation: 'RunInstances:0800',
      description: 'from the sidecar',
      platform: 'Linux',
      shareWithAccounts: ['111111111111', '222222222222'],
      enaSupport: false,
      copyToRegions: ['eu-west-1'],
      amiName: 'Web server (2025) v1.0',
      tags: { Env: 'staging', CostCenter: '42', Sidecar: 'yes', Owner: 'platform-team' },
    });
    expect(request.name).toBe('Web server (2025) v1.0');
    expect(request.source.etag).toMatch(/^[0-9a-f]{32}$/);
  });

  test('a malformed sidecar fails with InvalidImportOptions naming its key and the JSON error', async () => {
    // GIVEN / WHEN
    const failure = await run(s3Event('vms/bad/bad.vmdk')).catch((e) => e);
    // THEN
    expect(failure.name).toBe('InvalidImportOptions');
    expect(failure.message).toContain(`s3://${BUCKET}/vms/bad/bad.vmdk.vmie.json`);
    expect(failure.message).toMatch(/not valid JSON: .*(JSON|end|Unexpected|Expected)/i);
  });

  test('an oversized or empty sidecar fails with InvalidImportOptions', async () => {
    // GIVEN
    await s3.put(BUCKET, 'vms/big/big.vmdk', 'image with a huge sidecar');
    await s3.put(BUCKET, 'vms/big/big.vmdk.vmie.json', `{"description": "${'x'.repeat(100 * 1024)}"}`);
    await s3.put(BUCKET, 'vms/empty/empty.vmdk', 'image with an empty sidecar');
    await s3.put(BUCKET, 'vms/empty/empty.vmdk.vmie.json', Buffer.alloc(0));
    // WHEN
    const big = await run(s3Event('vms/big/big.vmdk')).catch((e) => e);
    const empty = await run(s3Event('vms/empty/empty.vmdk')).catch((e) => e);
    // THEN
    expect(big.name).toBe('InvalidImportOptions');
    expect(big.message).toContain('larger than 65536 bytes');
    expect(empty.name).toBe('InvalidImportOptions');
    expect(empty.message).toContain('vms/empty/empty.vmdk.vmie.json is not valid JSON');
  });

  test('a misspelt vmie: tag fails with InvalidImportOptions naming it and the known tags', async () => {
    // GIVEN / WHEN
    const failure = await run(s3Event('vms/typo/typo.vmdk')).catch((e) => e);
    // THEN
    expect(failure.name).toBe('InvalidImportOptions');
    expect(failure.message).toContain('"vmie:licence-type"');
    expect(failure.message).toContain('vmie:license-type');
  });

  test('malformed construct defaults fail with InvalidImportOptions naming the variable', async () => {
    // GIVEN / WHEN
    const failure = await run(s3Event('vms/web/web-01.vmdk'), { VMIE_IMPORT_DEFAULTS: '{"mode": "fast"}' }).catch((e) => e);
    // THEN
    expect(failure.name).toBe('InvalidImportOptions');
    expect(failure.message).toContain('VMIE_IMPORT_DEFAULTS');
    expect(failure.message).toContain('"mode" must be one of image, snapshot');
  });

  test('the tag the workflow leaves on imported images is not an option', async () => {
    // GIVEN: an image imported before, tagged vmie:processed=true
    await s3.put(BUCKET, 'vms/again/again.vmdk', 'imported before');
    await tag('vms/again/again.vmdk', { 'vmie:processed': 'true', 'vmie:mode': 'snapshot' });
    // WHEN
    const request = await run({ bucket: BUCKET, key: 'vms/again/again.vmdk' });
    // THEN
    expect(request.options).toEqual({ mode: 'snapshot' });
  });

  test('an object under the staging prefix is not an upload: NotAnImage (the execution ends quietly)', async () => {
    // GIVEN / WHEN
    const failure = await run(s3Event('.vmie/converted/run-1/disk0.vmdk'), { VMIE_STAGING_PREFIX: '.vmie/' }).catch((e) => e);
    // THEN
    expect(failure.name).toBe('NotAnImage');
    expect(failure.message).toContain('stages its own files');
  });

  test('an event for the sidecar itself is NotAnImage', async () => {
    // GIVEN / WHEN
    const failure = await run(s3Event('vms/bad/bad.vmdk.vmie.json')).catch((e) => e);
    // THEN
    expect(failure.name).toBe('NotAnImage');
    expect(failure.message).toContain('sidecar');
  });

  test('a missing object fails with ObjectNotFound naming it', async () => {
    // GIVEN / WHEN
    const failure = await run(s3Event('vms/none/none.vmdk')).catch((e) => e);
    // THEN
    expect(failure.name).toBe('ObjectNotFound');
    expect(failure.message).toContain(`s3://${BUCKET}/vms/none/none.vmdk`);
  });
});

describe('prepare: the manual start', () => {
  test('several disks: each pinned by HeadObject, boot disk first, the token over all of them', async () => {
    // GIVEN
    const input = { disks: [{ bucket: BUCKET, key: 'vms/multi/boot.vmdk' }, { bucket: BUCKET, key: 'vms/multi/data.vmdk' }] };
    // WHEN
    const request = await run(input);
    // THEN
    expect(request.disks.map((d) => d.key)).toEqual(['vms/multi/boot.vmdk', 'vms/multi/data.vmdk']);
    expect(request.source).toEqual(request.disks[0]);
    const etags = request.disks.map((d) => d.etag);
    expect(etags.every((e) => /^[0-9a-f]{32}$/.test(e ?? ''))).toBe(true);
    expect(etags[0]).not.toBe(etags[1]);
    expect(request.clientToken).toBe(tokenOf(request.disks.map((d) => ({ bucket: d.bucket, key: d.key, v: d.etag! }))));
    expect(request.name).toMatch(/^boot-[0-9a-f]{8}$/);
  });

  test('a new upload of a disk changes the token; the same objects keep it', async () => {
    // GIVEN
    await s3.put(BUCKET, 'vms/multi/changing.vmdk', 'first content');
    const first = await run({ bucket: BUCKET, key: 'vms/multi/changing.vmdk' });
    const same = await run({ bucket: BUCKET, key: 'vms/multi/changing.vmdk' });
    // WHEN
    await s3.put(BUCKET, 'vms/multi/changing.vmdk', 'second content');
    const second = await run({ bucket: BUCKET, key: 'vms/multi/changing.vmdk' });
    // THEN
    expect(same.clientToken).toBe(first.clientToken);
    expect(second.clientToken).not.toBe(first.clientToken);
  });

  test('the execution input may come without the task wrapper', async () => {
    // GIVEN / WHEN
    const request = await withEnv({ ...s3.env, VMIE_IMPORT_DEFAULTS: undefined }, () => prepare({ bucket: BUCKET, key: 'vms/web/web-01.vmdk' }));
    // THEN
    expect(request.source.key).toBe('vms/web/web-01.vmdk');
  });

  test.each([
    ['no key', { bucket: BUCKET }],
    ['empty disks', { disks: [] }],
    ['a disk without bucket', { disks: [{ key: 'a.vmdk' }] }],
    ['a string', 'vms/web/web-01.vmdk'],
    ['an S3 event without a key', { ...s3Event('x'), detail: { bucket: { name: BUCKET }, object: {} } }],
  ])('an input with %s fails with InvalidInput', async (_what, input) => {
    // GIVEN / WHEN
    const failure = await run(input).catch((e) => e);
    // THEN
    expect(failure.name).toBe('InvalidInput');
  });
});

describe('prepare: the documented rules of the options', () => {
  const many = Object.fromEntries(Array.from({ length: 48 }, (_, i) => [`k${i}`, 'v']));
  test.each([
    ['licenseType with usageOperation', { licenseType: 'BYOL', usageOperation: 'RunInstances:0800' }, 'mutually exclusive'],
    ['UEFI with encryption', { bootMode: 'uefi', encrypted: true }, 'UEFI import cannot also be encrypted'],
    ['UEFI with license configurations', { bootMode: 'uefi', licenseConfigurationArns: ['arn:aws:license-manager:us-east-1:111122223333:license-configuration:lic-0123456789abcdef'] }, 'UEFI import cannot also specify licenseConfigurationArns'],
    ['arm64 with legacy BIOS', { architecture: 'arm64', bootMode: 'legacy-bios' }, 'arm64 needs bootMode uefi'],
    ['Linux with licenseType AWS', { platform: 'Linux', licenseType: 'AWS' }, 'Linux imports support licenseType BYOL only'],
    ['a KMS key without encryption', { kmsKeyId: 'alias/imports' }, 'kmsKeyId needs encrypted: true'],
    ['too many tags', { tags: many }, '48 tags; at most 47'],
    ['a reserved tag prefix', { tags: { 'aws:owner': 'x' } }, 'reserved prefix aws:'],
    ['a tag the workflow sets', { tags: { 'vmie:execution': 'x' } }, 'set by the workflow'],
    ['a tag value too long', { tags: { k: 'v'.repeat(257) } }, 'at most 256'],
    ['an AMI name too short', { amiName: 'ab' }, 'not a valid AMI name'],
    ['an AMI name with a bad character', { amiName: 'web#1' }, 'not a valid AMI name'],
    ['an account id that is not one', { shareWithAccounts: ['12345'] }, 'not a 12-digit account id'],
    ['a copy to the Region of the import', { copyToRegions: ['us-east-1'] }, 'is the Region of the import'],
    ['Image Builder in snapshot mode', { mode: 'snapshot', imageBuilder: { name: 'web', semanticVersion: '1.0.0' } }, 'imageBuilder needs image mode'],
    ['a usage operation in snapshot mode', { mode: 'snapshot', usageOperation: 'RunInstances:0002' }, 'image mode only'],
    ['a usage operation that is not one', { usageOperation: 'Windows' }, 'not a usage operation code'],
    ['uefi-preferred', { bootMode: 'uefi-preferred' }, 'must be one of legacy-bios, uefi'],
    ['an unknown option', { licence: 'BYOL' }, 'unknown option "licence"'],
  ])('%s is rejected with InvalidImportOptions', async (_what, options, message) => {
    // GIVEN / WHEN
    const failure = await run({ bucket: BUCKET, key: 'vms/web/web-01.vmdk', options }, { AWS_REGION: 'us-east-1' }).catch((e) => e);
    // THEN
    expect(failure.name).toBe('InvalidImportOptions');
    expect(failure.message).toContain(message);
  });

  test('every problem is named at once', () => {
    // GIVEN / WHEN
    const failure = (() => {
      try {
        return validateOptions({ licenseType: 'AWS', usageOperation: 'RunInstances', platform: 'Linux', amiName: 'x' });
      } catch (e) {
        return e as Error;
      }
    })();
    // THEN
    expect((failure as Error).message).toContain('mutually exclusive');
    expect((failure as Error).message).toContain('BYOL only');
    expect((failure as Error).message).toContain('not a valid AMI name');
  });

  test('arm64 boots with UEFI: the boot mode is set when not given', async () => {
    // GIVEN / WHEN
    const request = await run({ bucket: BUCKET, key: 'vms/web/web-01.vmdk', options: { architecture: 'arm64' } });
    // THEN
    expect(request.options).toEqual({ architecture: 'arm64', bootMode: 'uefi' });
  });

  test('an option set by a higher layer overrides the exclusive one of a lower layer', async () => {
    // GIVEN: defaults with usageOperation; the start input with licenseType
    const defaults = { usageOperation: 'RunInstances:0002' };
    // WHEN
    const request = await run({ bucket: BUCKET, key: 'vms/web/web-01.vmdk', options: { licenseType: 'BYOL' } }, { VMIE_IMPORT_DEFAULTS: JSON.stringify(defaults) });
    // THEN
    expect(request.options).toEqual({ licenseType: 'BYOL' });
  });
});

describe('validate in the workflow', () => {
  const payload = (key: string) => ({ state: { request: { disks: [{ bucket: BUCKET, key }] } }, execution: EXECUTION });

  test('takes the task payload and lists the disks to import when importable as is', async () => {
    // GIVEN / WHEN
    const out = await withEnv(s3.env, () => validate(payload('vms/real/disk1.vmdk')));
    // THEN
    expect(out.importable).toBe(true);
    expect(out.importDisks).toEqual([{ bucket: BUCKET, key: 'vms/real/disk1.vmdk', format: 'VMDK' }]);
  });

  test('lists no disks to import when the image needs conversion', async () => {
    // GIVEN / WHEN
    const out = await withEnv(s3.env, () => validate(payload('vms/real/disk1.qcow2')));
    // THEN
    expect(out.needsConversion).toBe(true);
    expect(out.importDisks).toBeUndefined();
  });

  test('a payload without request.disks fails with InvalidInput', async () => {
    // GIVEN / WHEN
    const failure = await withEnv(s3.env, () => validate({ state: { request: { disks: [] } }, execution: EXECUTION })).catch((e) => e);
    // THEN
    expect(failure.name).toBe('InvalidInput');
  });
});

describe('the parsers take any input: a result or a named error, never another exception', () => {
  const named = (e: unknown) => e instanceof WorkflowError && ['InvalidInput', 'InvalidImportOptions'].includes(e.name);
  const attempt = (fn: () => unknown) => {
    try {
      fn();
      return true;
    } catch (e) {
      return named(e);
    }
  };

  test('execution inputs: arbitrary JSON and mutated S3 events', () => {
    // GIVEN
    const mutatedEvent = fc
      .tuple(fc.constantFrom('detail', 'bucket', 'object', 'key', 'etag', 'version-id', 'source', 'detail-type'), fc.jsonValue())
      .map(([field, value]) => {
        const e = JSON.parse(JSON.stringify(s3Event('vms/x.vmdk'))) as Record<string, any>;
        if (field in e) e[field] = value;
        else if (field in e.detail) e.detail[field] = value;
        else e.detail.object[field] = value;
        return e;
      });
    // WHEN / THEN
    fc.assert(fc.property(fc.oneof(fc.jsonValue(), mutatedEvent, fc.anything()), (input) => attempt(() => importTrigger(input))), { numRuns: 500 });
  });

  test('options: arbitrary JSON text, arbitrary values and arbitrary tags', () => {
    // GIVEN
    const keys = fc.oneof(fc.string(), fc.constantFrom('mode', 'tags', 'imageBuilder', 'copyToRegions', 'encrypted', 'amiName', 'licenseType', 'usageOperation'));
    const options = fc.dictionary(keys, fc.jsonValue());
    const tagKeys = fc.oneof(fc.string(), fc.constantFrom('vmie:mode', 'vmie:tag:', 'vmie:tag:x', 'vmie:encrypted', 'vmie:copy-to-regions', 'vmie:image-builder-name', 'vmie:tags', 'vmie:'));
    const tags = fc.array(fc.record({ Key: tagKeys, Value: fc.string() }));
    // WHEN / THEN
    fc.assert(fc.property(fc.string(), (text) => attempt(() => parseOptionsJson(text, 'text'))), { numRuns: 300 });
    fc.assert(fc.property(options, (o) => attempt(() => validateOptions(parseOptionsJson(JSON.stringify(o), 'json')))), { numRuns: 500 });
    fc.assert(fc.property(tags, (t) => attempt(() => validateOptions(optionsFromTags(t, 'tags')))), { numRuns: 500 });
  });

  test('caught errors: arbitrary Error and Cause give a reason and a remedy', () => {
    // GIVEN
    const lambdaCause = fc.record({ errorType: fc.string(), errorMessage: fc.string() }).map((v) => JSON.stringify(v));
    const cause = fc.oneof(fc.string(), fc.jsonValue().map((v) => JSON.stringify(v)), lambdaCause);
    // WHEN / THEN
    fc.assert(
      fc.property(fc.record({ Error: fc.string(), Cause: cause }, { requiredKeys: [] }), (caught) => {
        const out = explain(caught as { Error: string; Cause?: string });
        return typeof out.reason === 'string' && out.reason !== '' && typeof out.remedy === 'string' && out.remedy !== '' && typeof out.error === 'string';
      }),
      { numRuns: 500 },
    );
  });
});
