/**
 * The workflows' own roles, evaluated by an IAM policy simulator: every Lambda function of the
 * import and export workflows has a role of its own that allows what its step needs and nothing
 * more, and each state machine may invoke only its own workflow's functions.
 *
 * Every allowed request has a denied twin that differs only in the thing under test (the action,
 * the Region, the account, the bucket, the key, a context value or the role passed), and every
 * denied request is shown to be allowed once the principal is granted exactly that action on that
 * resource, so a denial always comes from the role's own policies and never from a request the
 * simulator cannot grant. Resources are written the way the IAM service reference defines their
 * ARNs (images and snapshots carry no account).
 */
import type { SimulationIdentityPolicy } from '@cloud-copilot/iam-simulate';
import { App, Stack } from 'aws-cdk-lib';
import { Match } from 'aws-cdk-lib/assertions';
import { VmImportBucket, VmImportExport } from '../../src';
import {
  ACCOUNT,
  allowOnly,
  PARTITION,
  REGION,
  simulate,
  StackPolicies,
  type PolicyDocument,
  type SimulatedRequest,
} from '../helpers/iam-simulate';

const OTHER_ACCOUNT = '222222222222';
const OTHER_REGION = 'us-east-1';
/** Requests to S3 come over TLS, as the buckets' policies demand. */
const TLS = { 'aws:SecureTransport': 'true' };

const ec2Arn = (type: string, id: string, region = REGION, account = ACCOUNT) => `arn:${PARTITION}:ec2:${region}:${account}:${type}/${id}`;
const IMAGE = `arn:${PARTITION}:ec2:${REGION}::image/ami-0123456789abcdef0`;
const OTHER_REGION_IMAGE = `arn:${PARTITION}:ec2:${OTHER_REGION}::image/ami-0123456789abcdef0`;
const SNAPSHOT = `arn:${PARTITION}:ec2:${REGION}::snapshot/snap-0123456789abcdef0`;
const OTHER_REGION_SNAPSHOT = `arn:${PARTITION}:ec2:${OTHER_REGION}::snapshot/snap-0123456789abcdef0`;
const INSTANCE = ec2Arn('instance', 'i-0123456789abcdef0');
const IMPORT_IMAGE_TASK = ec2Arn('import-image-task', 'import-ami-0123456789abcdef0');
const IMPORT_SNAPSHOT_TASK = ec2Arn('import-snapshot-task', 'import-snap-0123456789abcdef0');
const EXPORT_IMAGE_TASK = ec2Arn('export-image-task', 'export-ami-0123456789abcdef0');
const EXPORT_INSTANCE_TASK = ec2Arn('export-instance-task', 'export-i-0123456789abcdef0');
const DEFAULT_BUS = `arn:${PARTITION}:events:${REGION}:${ACCOUNT}:event-bus/default`;
const OTHER_BUS = `arn:${PARTITION}:events:${REGION}:${ACCOUNT}:event-bus/other`;
const OTHER_ROLE = `arn:${PARTITION}:iam::${ACCOUNT}:role/admin`;
const OTHER_BUCKET = `arn:${PARTITION}:s3:::another-bucket`;
const IMAGE_BUILDER_IMAGE = `arn:${PARTITION}:imagebuilder:${REGION}:${ACCOUNT}:image/imported-vm/1.0.0`;

/** The ARN of `arn` in another Region. */
function inRegion(arn: string, region: string): string {
  const parts = arn.split(':');
  parts[3] = region;
  return parts.join(':');
}

/** The ARN of `arn` in another account. */
function inAccount(arn: string, account: string): string {
  const parts = arn.split(':');
  parts[4] = account;
  return parts.join(':');
}

/** The Lambda functions of the workflows. */
type Step =
  | 'import prepare'
  | 'import validate'
  | 'import convert'
  | 'import tidy'
  | 'import start'
  | 'import check'
  | 'import register'
  | 'import finalize'
  | 'import cleanup'
  | 'export preflight'
  | 'export start'
  | 'export check'
  | 'export cleanup';

/** How each function is found: its `Handler` and the start of its `Description`. */
const STEPS: Record<Step, { handler: string; description: string }> = {
  'import prepare': { handler: 'prepare', description: 'VM import: ' },
  'import validate': { handler: 'handler', description: 'VM import: inspects' },
  'import convert': { handler: 'handler', description: 'VM import: converts' },
  'import tidy': { handler: 'tidy', description: 'VM import: ' },
  'import start': { handler: 'start', description: 'VM import: ' },
  'import check': { handler: 'check', description: 'VM import: ' },
  'import register': { handler: 'register', description: 'VM import: ' },
  'import finalize': { handler: 'finalize', description: 'VM import: ' },
  'import cleanup': { handler: 'cleanup', description: 'VM import: ' },
  'export preflight': { handler: 'preflight', description: 'VM export: ' },
  'export start': { handler: 'start', description: 'VM export: ' },
  'export check': { handler: 'check', description: 'VM export: ' },
  'export cleanup': { handler: 'cleanup', description: 'VM export: ' },
};
const ALL_STEPS = Object.keys(STEPS) as Step[];
const IMPORT_STEPS = ALL_STEPS.filter((s) => s.startsWith('import '));
const EXPORT_STEPS = ALL_STEPS.filter((s) => s.startsWith('export '));

type Workflow = 'import' | 'export';
type Principal = Step | `${Workflow} state machine` | 'import trigger';

/**
 * A request as the tables write it: action, resource, context. The resource may name the stack's
 * resources by placeholder: `<import-bucket>`, `<export-bucket>`, `<service-role>`,
 * `<function:STEP>`, `<state-machine:WORKFLOW>`, `<log-group:STEP>`, and `<own-role>` for the
 * role of the principal that sends the request.
 */
type Req = readonly [action: string, resource: string, context?: Record<string, string>];
/** An allowed request and its denied twin, which differs from it only in what the name says. */
type Twin = readonly [name: string, allowed: Req, denied: Req];

interface Role {
  readonly logicalId: string;
  readonly arn: string;
  readonly identityPolicies: SimulationIdentityPolicy[];
}

/** The deployed stack, as the simulator sees it. */
interface Deployment {
  readonly policies: StackPolicies;
  readonly roles: Record<Principal, Role>;
  /** A request by `principal`, with the placeholders of `req` replaced. */
  request(principal: Principal, req: Req): SimulatedRequest;
}

/**
 * Lets `policies` resolve what the workflows' policies refer to besides roles, buckets and keys:
 * log groups, Lambda functions and state machines, each deployed under its logical id as name.
 * Everything else is left to the shared resolver, which fails loudly on what it does not know.
 */
function resolvingWorkflowResources(policies: StackPolicies): StackPolicies {
  const resources = (policies.template.toJSON().Resources ?? {}) as Record<string, { Type: string }>;
  const typeOf = (id: string) => resources[id]?.Type;
  const ref = policies.ref.bind(policies);
  const getAtt = policies.getAtt.bind(policies);
  policies.ref = (id) => {
    switch (typeOf(id)) {
      case 'AWS::Logs::LogGroup':
        return id;
      case 'AWS::Lambda::Function':
        return id;
      case 'AWS::StepFunctions::StateMachine':
        return `arn:${PARTITION}:states:${REGION}:${ACCOUNT}:stateMachine:${id}`;
      default:
        return ref(id);
    }
  };
  policies.getAtt = (id, attribute) => {
    const key = `${typeOf(id)}.${attribute}`;
    switch (key) {
      case 'AWS::Logs::LogGroup.Arn':
        return `arn:${PARTITION}:logs:${REGION}:${ACCOUNT}:log-group:${id}:*`;
      case 'AWS::Lambda::Function.Arn':
        return `arn:${PARTITION}:lambda:${REGION}:${ACCOUNT}:function:${id}`;
      case 'AWS::StepFunctions::StateMachine.Arn':
        return policies.ref(id);
      default:
        return getAtt(id, attribute);
    }
  };
  return policies;
}

/** The logical id in `{ "Fn::GetAtt": [id, "Arn"] }` or `{ "Ref": id }`. */
function referencedId(value: unknown): string {
  const v = value as Record<string, unknown> | undefined;
  const getAtt = v?.['Fn::GetAtt'];
  if (Array.isArray(getAtt) && getAtt[1] === 'Arn') return getAtt[0] as string;
  if (typeof v?.Ref === 'string') return v.Ref;
  throw new Error(`expected a Ref or a Fn::GetAtt Arn, got ${JSON.stringify(value)}`);
}

/**
 * Synthesizes `new VmImportExport(stack, 'Vie', ...)` in account {@link ACCOUNT}, Region
 * {@link REGION}; the buckets, the service role and the roles are found from the functions and
 * state machines that use them.
 */
function deploy(options: { versionedImportBucket?: boolean } = {}): Deployment {
  const stack = new Stack(new App(), 'Vmie', { env: { account: ACCOUNT, region: REGION } });
  const importBucket = options.versionedImportBucket ? new VmImportBucket(stack, 'Images', { versioned: true }).bucket : undefined;
  new VmImportExport(stack, 'Vie', { importBucket });
  const policies = resolvingWorkflowResources(StackPolicies.fromStack(stack));
  const json = policies.template.toJSON();
  const props = (id: string) => json.Resources[id].Properties as Record<string, any>;

  const functionIds = Object.fromEntries(
    ALL_STEPS.map((step) => [
      step,
      policies.findOne('AWS::Lambda::Function', {
        Properties: {
          Handler: `index.${STEPS[step].handler}`,
          Description: Match.stringLikeRegexp(`^${STEPS[step].description}`),
        },
      }),
    ]),
  ) as Record<Step, string>;

  // The state machines, told apart by the comment of their definition.
  const stateMachineIds = {} as Record<Workflow, string>;
  for (const id of Object.keys(policies.template.findResources('AWS::StepFunctions::StateMachine'))) {
    const definition = JSON.parse(policies.resolve(props(id).DefinitionString) as string) as { Comment?: string };
    const workflow = (['import', 'export'] as const).find((w) => definition.Comment?.startsWith(`VM ${w}: `));
    if (!workflow || stateMachineIds[workflow]) throw new Error(`unexpected state machine ${id}: ${definition.Comment}`);
    stateMachineIds[workflow] = id;
  }
  const triggerRuleId = policies.findOne('AWS::Events::Rule', {
    Properties: { EventPattern: Match.objectLike({ 'detail-type': ['Object Created'] }) },
  });

  const roleIds: Record<Principal, string> = {
    ...(Object.fromEntries(ALL_STEPS.map((s) => [s, referencedId(props(functionIds[s]).Role)])) as Record<Step, string>),
    'import state machine': referencedId(props(stateMachineIds.import).RoleArn),
    'export state machine': referencedId(props(stateMachineIds.export).RoleArn),
    'import trigger': referencedId((props(triggerRuleId).Targets as Record<string, unknown>[])[0].RoleArn),
  };
  const roles = Object.fromEntries(
    Object.entries(roleIds).map(([p, id]) => [p, { logicalId: id, arn: policies.arn(id), identityPolicies: policies.identityPolicies(id) }]),
  ) as Record<Principal, Role>;

  // The buckets and the service role, as the functions are told them.
  const env = (step: Step) => props(functionIds[step]).Environment.Variables as Record<string, unknown>;
  const importBucketId = referencedId(env('import tidy').VMIE_IMPORT_BUCKET);
  const exportBucketId = referencedId(env('export start').VMIE_EXPORT_BUCKET);
  const serviceRoleId = referencedId(env('import start').VMIE_ROLE_NAME);
  if (referencedId(env('export start').VMIE_ROLE_NAME) !== serviceRoleId) throw new Error('the workflows use different service roles');
  if (options.versionedImportBucket && props(importBucketId).VersioningConfiguration?.Status !== 'Enabled') {
    throw new Error(`the import bucket ${importBucketId} is not versioned`);
  }
  const bucketPolicies = new Map<string, PolicyDocument | undefined>([
    [policies.arn(importBucketId), policies.bucketPolicy(importBucketId)],
    [policies.arn(exportBucketId), policies.bucketPolicy(exportBucketId)],
  ]);

  const placeholders: Record<string, string> = {
    'import-bucket': policies.arn(importBucketId),
    'export-bucket': policies.arn(exportBucketId),
    'service-role': policies.arn(serviceRoleId),
    'state-machine:import': policies.ref(stateMachineIds.import),
    'state-machine:export': policies.ref(stateMachineIds.export),
  };
  for (const s of ALL_STEPS) {
    placeholders[`function:${s}`] = policies.arn(functionIds[s]);
    const logGroup = policies.ref(referencedId(props(functionIds[s]).LoggingConfig?.LogGroup));
    placeholders[`log-group:${s}`] = `arn:${PARTITION}:logs:${REGION}:${ACCOUNT}:log-group:${logGroup}`;
  }
  const expand = (s: string, principal: Principal) =>
    s.replace(/<([^>]+)>/g, (_, name: string) => {
      const v = name === 'own-role' ? roles[principal].arn : placeholders[name];
      if (v === undefined) throw new Error(`no placeholder <${name}>`);
      return v;
    });

  return {
    policies,
    roles,
    request: (principal, [action, resource, context]) => {
      const arn = expand(resource, principal);
      const isS3 = action.startsWith('s3:');
      const bucket = isS3 ? arn.split('/')[0] : undefined;
      return {
        principal: roles[principal].arn,
        action,
        resource: arn,
        identityPolicies: roles[principal].identityPolicies,
        resourcePolicy: bucket === undefined ? undefined : bucketPolicies.get(bucket),
        context: isS3 ? { ...TLS, ...context } : context,
      };
    },
  };
}

/** Asserts that `request` is allowed, and denied once the principal has no identity policy. */
async function expectAllowedByIdentity(request: SimulatedRequest): Promise<void> {
  expect(await simulate(request)).toBe('Allowed');
  expect(await simulate({ ...request, identityPolicies: [] })).not.toBe('Allowed');
}

/** Asserts that `request` is denied, and allowed once the principal may do exactly that. */
async function expectDeniedByIdentity(request: SimulatedRequest): Promise<void> {
  expect(await simulate(request)).not.toBe('Allowed');
  const granted = [...(request.identityPolicies ?? []), allowOnly(request.action, request.resource)];
  expect(await simulate({ ...request, identityPolicies: granted })).toBe('Allowed');
}

/** The name of a request in a test title. */
function show([action, resource, context]: Req): string {
  return `${action} on ${resource}${context ? ` with ${JSON.stringify(context)}` : ''}`;
}

/** What a principal's role allows (each with its denied twin) and what else it must not do. */
interface RoleSpec {
  readonly twins: readonly Twin[];
  readonly denied: readonly Req[];
}

/** Tests a principal's role against its spec in the deployment `d()`. */
function describeRole(principal: Principal, spec: RoleSpec, d: () => Deployment): void {
  describe(`the role of the ${principal}`, () => {
    test.each(spec.twins.map(([name, allowed, denied]) => [name, show(allowed), show(denied), allowed, denied] as const))(
      '%s: allowed %s; denied %s',
      async (_name, _a, _d, allowed, denied) => {
        // GIVEN the role's policies
        // WHEN it sends the request its step needs, and the twin that differs in one thing
        const allowedRequest = d().request(principal, allowed);
        const deniedRequest = d().request(principal, denied);
        // THEN the first is allowed by the role, the twin denied by it
        await expectAllowedByIdentity(allowedRequest);
        await expectDeniedByIdentity(deniedRequest);
      },
    );

    if (spec.denied.length > 0) {
      test.each(spec.denied.map((r) => [show(r), r] as const))('denied: %s', async (_name, req) => {
        // GIVEN the role's policies
        // WHEN it sends a request its step does not need
        const request = d().request(principal, req);
        // THEN the request is denied by the role
        await expectDeniedByIdentity(request);
      });
    }
  });
}

const IMAGE_KEY = 'images/disk.vmdk';
const STAGED_KEY = '.vmie/converted/exec-1/disk-0.vmdk';
/** A key that starts like the staging prefix but lies outside it. */
const LOOKALIKE_KEY = '.vmie-other/disk-0.vmdk';

const SPECS: Partial<Record<Principal, RoleSpec>> = {
  'import prepare': {
    twins: [
      ['another bucket', ['s3:GetObject', `<import-bucket>/${IMAGE_KEY}`], ['s3:GetObject', `${OTHER_BUCKET}/${IMAGE_KEY}`]],
      ['another bucket', ['s3:GetObjectTagging', `<import-bucket>/${IMAGE_KEY}`], ['s3:GetObjectTagging', `${OTHER_BUCKET}/${IMAGE_KEY}`]],
      ['write instead of read', ['s3:GetObject', `<import-bucket>/${IMAGE_KEY}.vmie.json`], ['s3:PutObject', `<import-bucket>/${IMAGE_KEY}.vmie.json`]],
    ],
    denied: [
      ['s3:PutObject', `<import-bucket>/${STAGED_KEY}`],
      ['s3:DeleteObject', `<import-bucket>/${IMAGE_KEY}`],
      ['s3:PutObjectTagging', `<import-bucket>/${IMAGE_KEY}`],
      ['ec2:ImportImage', IMPORT_IMAGE_TASK],
    ],
  },
  'import validate': {
    twins: [
      ['another bucket', ['s3:GetObject', `<import-bucket>/${IMAGE_KEY}`], ['s3:GetObject', `${OTHER_BUCKET}/${IMAGE_KEY}`]],
      ['write instead of read', ['s3:GetObject', `<import-bucket>/${IMAGE_KEY}`], ['s3:PutObject', `<import-bucket>/${IMAGE_KEY}`]],
      ['the export bucket', ['s3:GetObject', `<import-bucket>/${IMAGE_KEY}`], ['s3:GetObject', `<export-bucket>/${IMAGE_KEY}`]],
    ],
    denied: [
      ['s3:PutObject', `<import-bucket>/${STAGED_KEY}`],
      ['s3:DeleteObject', `<import-bucket>/${IMAGE_KEY}`],
      ['ec2:ImportImage', IMPORT_IMAGE_TASK],
    ],
  },
  'import convert': {
    twins: [
      ['a key outside .vmie/', ['s3:PutObject', `<import-bucket>/${STAGED_KEY}`], ['s3:PutObject', `<import-bucket>/${IMAGE_KEY}`]],
      ['a key that only starts like .vmie/', ['s3:PutObject', `<import-bucket>/${STAGED_KEY}`], ['s3:PutObject', `<import-bucket>/${LOOKALIKE_KEY}`]],
      ['a key outside .vmie/', ['s3:AbortMultipartUpload', `<import-bucket>/${STAGED_KEY}`], ['s3:AbortMultipartUpload', `<import-bucket>/${IMAGE_KEY}`]],
      ['a key outside .vmie/', ['s3:DeleteObject', '<import-bucket>/.vmie/checkpoints/exec-1.json'], ['s3:DeleteObject', `<import-bucket>/${IMAGE_KEY}`]],
      ['another bucket', ['s3:GetObject', `<import-bucket>/${IMAGE_KEY}`], ['s3:GetObject', `${OTHER_BUCKET}/${IMAGE_KEY}`]],
      ['another bucket', ['s3:GetObject', `<import-bucket>/${STAGED_KEY}`], ['s3:GetObject', `${OTHER_BUCKET}/${STAGED_KEY}`]],
      ['another bucket', ['s3:PutObject', `<import-bucket>/${STAGED_KEY}`], ['s3:PutObject', `${OTHER_BUCKET}/${STAGED_KEY}`]],
      ['another bucket', ['s3:ListBucketMultipartUploads', '<import-bucket>'], ['s3:ListBucketMultipartUploads', OTHER_BUCKET]],
    ],
    denied: [
      ['s3:PutObject', `<export-bucket>/${STAGED_KEY}`],
      ['s3:PutObjectAcl', `<import-bucket>/${STAGED_KEY}`],
      ['s3:DeleteBucket', '<import-bucket>'],
      ['ec2:ImportImage', IMPORT_IMAGE_TASK],
    ],
  },
  'import tidy': {
    twins: [
      ['a key outside .vmie/', ['s3:DeleteObject', `<import-bucket>/${STAGED_KEY}`], ['s3:DeleteObject', `<import-bucket>/${IMAGE_KEY}`]],
      ['a key that only starts like .vmie/', ['s3:DeleteObject', `<import-bucket>/${STAGED_KEY}`], ['s3:DeleteObject', `<import-bucket>/${LOOKALIKE_KEY}`]],
      ['a key outside .vmie/', ['s3:AbortMultipartUpload', `<import-bucket>/${STAGED_KEY}`], ['s3:AbortMultipartUpload', `<import-bucket>/${IMAGE_KEY}`]],
      ['another bucket', ['s3:PutObjectTagging', `<import-bucket>/${IMAGE_KEY}`], ['s3:PutObjectTagging', `${OTHER_BUCKET}/${IMAGE_KEY}`]],
      ['another bucket', ['s3:PutObjectTagging', '<import-bucket>/any/key/at/all.raw'], ['s3:PutObjectTagging', '<export-bucket>/any/key/at/all.raw']],
      ['another bucket', ['s3:GetObjectTagging', `<import-bucket>/${IMAGE_KEY}`], ['s3:GetObjectTagging', `${OTHER_BUCKET}/${IMAGE_KEY}`]],
      ['another bucket', ['s3:ListBucketMultipartUploads', '<import-bucket>'], ['s3:ListBucketMultipartUploads', OTHER_BUCKET]],
      [
        'a listing outside .vmie/',
        ['s3:ListBucket', '<import-bucket>', { 's3:prefix': '.vmie/converted/exec-1/' }],
        ['s3:ListBucket', '<import-bucket>', { 's3:prefix': 'images/' }],
      ],
    ],
    denied: [
      ['s3:GetObject', `<import-bucket>/${IMAGE_KEY}`],
      ['s3:PutObject', `<import-bucket>/${STAGED_KEY}`],
      ['s3:DeleteObject', `<export-bucket>/${STAGED_KEY}`],
    ],
  },
  'import start': {
    twins: [
      ['another Region', ['ec2:ImportImage', IMPORT_IMAGE_TASK], ['ec2:ImportImage', inRegion(IMPORT_IMAGE_TASK, OTHER_REGION)]],
      ['another account', ['ec2:ImportImage', IMPORT_IMAGE_TASK], ['ec2:ImportImage', inAccount(IMPORT_IMAGE_TASK, OTHER_ACCOUNT)]],
      ['another Region', ['ec2:ImportSnapshot', IMPORT_SNAPSHOT_TASK], ['ec2:ImportSnapshot', inRegion(IMPORT_SNAPSHOT_TASK, OTHER_REGION)]],
      ['another account', ['ec2:ImportSnapshot', IMPORT_SNAPSHOT_TASK], ['ec2:ImportSnapshot', inAccount(IMPORT_SNAPSHOT_TASK, OTHER_ACCOUNT)]],
      // ImportImage creates an image and ImportSnapshot a snapshot: the IAM service reference
      // lists both as required resource types of the actions.
      ['another Region', ['ec2:ImportImage', IMAGE], ['ec2:ImportImage', OTHER_REGION_IMAGE]],
      ['another Region', ['ec2:ImportSnapshot', SNAPSHOT], ['ec2:ImportSnapshot', OTHER_REGION_SNAPSHOT]],
      ['another role', ['iam:PassRole', '<service-role>'], ['iam:PassRole', OTHER_ROLE]],
      ['the function\'s own role', ['iam:PassRole', '<service-role>'], ['iam:PassRole', '<own-role>']],
      [
        'no ec2:CreateAction',
        ['ec2:CreateTags', IMPORT_IMAGE_TASK, { 'ec2:CreateAction': 'ImportImage' }],
        ['ec2:CreateTags', IMPORT_IMAGE_TASK],
      ],
      [
        'another ec2:CreateAction',
        ['ec2:CreateTags', IMPORT_IMAGE_TASK, { 'ec2:CreateAction': 'ImportImage' }],
        ['ec2:CreateTags', IMPORT_IMAGE_TASK, { 'ec2:CreateAction': 'CreateTags' }],
      ],
      [
        'no ec2:CreateAction',
        ['ec2:CreateTags', IMPORT_SNAPSHOT_TASK, { 'ec2:CreateAction': 'ImportSnapshot' }],
        ['ec2:CreateTags', IMPORT_SNAPSHOT_TASK],
      ],
      [
        'an image instead of the import task',
        ['ec2:CreateTags', IMPORT_IMAGE_TASK, { 'ec2:CreateAction': 'ImportImage' }],
        ['ec2:CreateTags', IMAGE, { 'ec2:CreateAction': 'ImportImage' }],
      ],
    ],
    denied: [
      ['ec2:RunInstances', INSTANCE],
      ['ec2:CancelImportTask', IMPORT_IMAGE_TASK],
      ['ec2:RegisterImage', IMAGE],
      ['s3:GetObject', `<import-bucket>/${IMAGE_KEY}`],
    ],
  },
  'import check': {
    twins: [
      ['cancel instead of describe', ['ec2:DescribeImportImageTasks', '*'], ['ec2:CancelImportTask', IMPORT_IMAGE_TASK]],
      ['import instead of describe', ['ec2:DescribeImportSnapshotTasks', '*'], ['ec2:ImportImage', IMPORT_IMAGE_TASK]],
    ],
    denied: [
      ['ec2:CancelImportTask', IMPORT_SNAPSHOT_TASK],
      ['ec2:DescribeExportImageTasks', '*'],
      ['ec2:RegisterImage', IMAGE],
    ],
  },
  'import register': {
    twins: [
      ['another Region', ['ec2:RegisterImage', IMAGE], ['ec2:RegisterImage', OTHER_REGION_IMAGE]],
      ['tag instead of register', ['ec2:RegisterImage', IMAGE], ['ec2:CreateTags', IMAGE]],
      ['another Region', ['ec2:RegisterImage', SNAPSHOT], ['ec2:RegisterImage', OTHER_REGION_SNAPSHOT]],
      ['snapshots instead of images', ['ec2:DescribeImages', '*'], ['ec2:DescribeSnapshots', '*']],
    ],
    denied: [
      ['ec2:CreateTags', SNAPSHOT],
      ['ec2:DeregisterImage', IMAGE],
      ['ec2:ImportSnapshot', IMPORT_SNAPSHOT_TASK],
    ],
  },
  'import finalize': {
    twins: [
      ['an instance instead of the image', ['ec2:CreateTags', IMAGE], ['ec2:CreateTags', INSTANCE]],
      ['an image of another Region without ec2:CreateAction CopyImage', ['ec2:CreateTags', IMAGE], ['ec2:CreateTags', OTHER_REGION_IMAGE]],
      ['an instance instead of the snapshot', ['ec2:CreateTags', SNAPSHOT], ['ec2:CreateTags', INSTANCE]],
      ['another Region', ['ec2:ModifyImageAttribute', IMAGE], ['ec2:ModifyImageAttribute', OTHER_REGION_IMAGE]],
      ['another Region', ['ec2:ModifySnapshotAttribute', SNAPSHOT], ['ec2:ModifySnapshotAttribute', OTHER_REGION_SNAPSHOT]],
      ['deregister instead of copy', ['ec2:CopyImage', OTHER_REGION_IMAGE], ['ec2:DeregisterImage', OTHER_REGION_IMAGE]],
      ['delete instead of copy', ['ec2:CopyImage', SNAPSHOT], ['ec2:DeleteSnapshot', SNAPSHOT]],
      [
        'no ec2:CreateAction',
        ['ec2:CreateTags', OTHER_REGION_IMAGE, { 'ec2:CreateAction': 'CopyImage' }],
        ['ec2:CreateTags', OTHER_REGION_IMAGE],
      ],
      ['another Region', ['imagebuilder:ImportVmImage', IMAGE_BUILDER_IMAGE], ['imagebuilder:ImportVmImage', inRegion(IMAGE_BUILDER_IMAGE, OTHER_REGION)]],
      ['another account', ['imagebuilder:ImportVmImage', IMAGE_BUILDER_IMAGE], ['imagebuilder:ImportVmImage', inAccount(IMAGE_BUILDER_IMAGE, OTHER_ACCOUNT)]],
      ['snapshots instead of images', ['ec2:DescribeImportImageTasks', '*'], ['ec2:DescribeImportSnapshotTasks', '*']],
    ],
    denied: [
      ['ec2:DeregisterImage', IMAGE],
      ['ec2:DeleteSnapshot', SNAPSHOT],
      ['ec2:RunInstances', INSTANCE],
      ['iam:PassRole', '<service-role>'],
      ['ec2:ImportImage', IMPORT_IMAGE_TASK],
    ],
  },
  'import cleanup': {
    twins: [
      // CancelImportTask acts on import tasks only: an export task is cancelled with CancelExportTask.
      ['an export task', ['ec2:CancelImportTask', IMPORT_IMAGE_TASK], ['ec2:CancelExportTask', EXPORT_IMAGE_TASK]],
      ['an export task', ['ec2:CancelImportTask', IMPORT_SNAPSHOT_TASK], ['ec2:CancelExportTask', EXPORT_INSTANCE_TASK]],
      ['another account', ['ec2:CancelImportTask', IMPORT_IMAGE_TASK], ['ec2:CancelImportTask', inAccount(IMPORT_IMAGE_TASK, OTHER_ACCOUNT)]],
      ['another bus', ['events:PutEvents', DEFAULT_BUS], ['events:PutEvents', OTHER_BUS]],
      ['the default bus of another Region', ['events:PutEvents', DEFAULT_BUS], ['events:PutEvents', inRegion(DEFAULT_BUS, OTHER_REGION)]],
      ['export instead of import tasks', ['ec2:DescribeImportImageTasks', '*'], ['ec2:DescribeExportImageTasks', '*']],
    ],
    denied: [
      ['ec2:CancelExportTask', EXPORT_IMAGE_TASK],
      ['ec2:ImportImage', IMPORT_IMAGE_TASK],
      ['ec2:DeregisterImage', IMAGE],
    ],
  },
  'export preflight': {
    twins: [
      ['export instead of describe', ['ec2:DescribeImages', '*'], ['ec2:ExportImage', IMAGE]],
      ['export instead of describe', ['ec2:DescribeInstances', '*'], ['ec2:CreateInstanceExportTask', INSTANCE]],
      ['export tasks instead of snapshots', ['ec2:DescribeSnapshots', '*'], ['ec2:DescribeExportImageTasks', '*']],
      ['import tasks instead of volumes', ['ec2:DescribeVolumes', '*'], ['ec2:DescribeImportImageTasks', '*']],
    ],
    denied: [
      ['ec2:CreateTags', EXPORT_IMAGE_TASK, { 'ec2:CreateAction': 'ExportImage' }],
      ['iam:PassRole', '<service-role>'],
    ],
  },
  'export start': {
    twins: [
      ['another Region', ['ec2:ExportImage', IMAGE], ['ec2:ExportImage', OTHER_REGION_IMAGE]],
      ['another account', ['ec2:ExportImage', EXPORT_IMAGE_TASK], ['ec2:ExportImage', inAccount(EXPORT_IMAGE_TASK, OTHER_ACCOUNT)]],
      ['another account', ['ec2:CreateInstanceExportTask', INSTANCE], ['ec2:CreateInstanceExportTask', inAccount(INSTANCE, OTHER_ACCOUNT)]],
      ['another Region', ['ec2:CreateInstanceExportTask', EXPORT_INSTANCE_TASK], ['ec2:CreateInstanceExportTask', inRegion(EXPORT_INSTANCE_TASK, OTHER_REGION)]],
      ['another role', ['iam:PassRole', '<service-role>'], ['iam:PassRole', OTHER_ROLE]],
      [
        'no ec2:CreateAction',
        ['ec2:CreateTags', EXPORT_IMAGE_TASK, { 'ec2:CreateAction': 'ExportImage' }],
        ['ec2:CreateTags', EXPORT_IMAGE_TASK],
      ],
      [
        'an instance instead of the export task',
        ['ec2:CreateTags', EXPORT_INSTANCE_TASK, { 'ec2:CreateAction': 'CreateInstanceExportTask' }],
        ['ec2:CreateTags', INSTANCE, { 'ec2:CreateAction': 'CreateInstanceExportTask' }],
      ],
      ['cancel instead of describe', ['ec2:DescribeExportImageTasks', '*'], ['ec2:CancelExportTask', EXPORT_IMAGE_TASK]],
    ],
    denied: [
      ['ec2:ImportImage', IMPORT_IMAGE_TASK],
      ['ec2:CancelExportTask', EXPORT_INSTANCE_TASK],
      ['s3:PutObject', '<export-bucket>/exports/export-ami-0123456789abcdef0.vmdk'],
    ],
  },
  'export check': {
    twins: [
      ['cancel instead of describe', ['ec2:DescribeExportImageTasks', '*'], ['ec2:CancelExportTask', EXPORT_IMAGE_TASK]],
      ['export instead of describe', ['ec2:DescribeExportTasks', '*'], ['ec2:ExportImage', EXPORT_IMAGE_TASK]],
    ],
    denied: [
      ['ec2:CancelExportTask', EXPORT_INSTANCE_TASK],
      ['ec2:DescribeImportImageTasks', '*'],
    ],
  },
  'export cleanup': {
    twins: [
      // CancelExportTask acts on export tasks only: an import task is cancelled with CancelImportTask.
      ['an import task', ['ec2:CancelExportTask', EXPORT_IMAGE_TASK], ['ec2:CancelImportTask', IMPORT_IMAGE_TASK]],
      ['an import task', ['ec2:CancelExportTask', EXPORT_INSTANCE_TASK], ['ec2:CancelImportTask', IMPORT_SNAPSHOT_TASK]],
      ['another account', ['ec2:CancelExportTask', EXPORT_IMAGE_TASK], ['ec2:CancelExportTask', inAccount(EXPORT_IMAGE_TASK, OTHER_ACCOUNT)]],
      ['another bus', ['events:PutEvents', DEFAULT_BUS], ['events:PutEvents', OTHER_BUS]],
      ['import instead of export tasks', ['ec2:DescribeExportTasks', '*'], ['ec2:DescribeImportSnapshotTasks', '*']],
    ],
    denied: [
      ['ec2:CancelImportTask', IMPORT_IMAGE_TASK],
      ['ec2:ExportImage', EXPORT_IMAGE_TASK],
    ],
  },
};

/** The roles of the state machines: their own workflow's functions, the default bus. */
function stateMachineSpec(workflow: Workflow): RoleSpec {
  const own = workflow === 'import' ? IMPORT_STEPS : EXPORT_STEPS;
  const other = workflow === 'import' ? EXPORT_STEPS : IMPORT_STEPS;
  const twins: Twin[] = own.map((s, i) => [
    `the ${other[i % other.length]} function of the other workflow`,
    ['lambda:InvokeFunction', `<function:${s}>`],
    ['lambda:InvokeFunction', `<function:${other[i % other.length]}>`],
  ]);
  twins.push(
    ['a version of the other workflow\'s function', ['lambda:InvokeFunction', `<function:${own[0]}>:1`], ['lambda:InvokeFunction', `<function:${other[0]}>:1`]],
    ['another bus', ['events:PutEvents', DEFAULT_BUS], ['events:PutEvents', OTHER_BUS]],
    ['the default bus of another account', ['events:PutEvents', DEFAULT_BUS], ['events:PutEvents', inAccount(DEFAULT_BUS, OTHER_ACCOUNT)]],
  );
  const denied: Req[] = [
    ['states:StartExecution', `<state-machine:${workflow}>`],
    ['lambda:InvokeFunction', `arn:${PARTITION}:lambda:${REGION}:${ACCOUNT}:function:unrelated`],
    ['iam:PassRole', '<service-role>'],
  ];
  if (workflow === 'export') {
    twins.push(['the import bucket', ['s3:GetEncryptionConfiguration', '<export-bucket>'], ['s3:GetEncryptionConfiguration', '<import-bucket>']]);
    twins.push(['another bucket', ['s3:GetEncryptionConfiguration', '<export-bucket>'], ['s3:GetEncryptionConfiguration', OTHER_BUCKET]]);
  } else {
    denied.push(['s3:GetEncryptionConfiguration', '<export-bucket>'], ['s3:GetEncryptionConfiguration', '<import-bucket>']);
  }
  return { twins, denied };
}

describe('the roles of VmImportExport\'s workflows, evaluated by the IAM policy simulator', () => {
  let deployment: Deployment;
  const d = () => deployment;
  beforeAll(() => {
    deployment = deploy();
  });

  test('every function has a role of its own, assumed by Lambda only', () => {
    // GIVEN the synthesized stack
    // WHEN the roles of the functions are collected
    const roleIds = ALL_STEPS.map((s) => d().roles[s].logicalId);
    // THEN there are as many roles as functions, each trusting lambda.amazonaws.com alone
    expect(new Set(roleIds).size).toBe(ALL_STEPS.length);
    for (const id of roleIds) {
      const principals = d().policies.trustPolicy(id).Statement.map((st) => st.Principal);
      expect(principals).toEqual([{ Service: 'lambda.amazonaws.com' }]);
    }
  });

  describe('logs: each function writes to its own log group only', () => {
    test.each(ALL_STEPS.map((s, i) => [s, ALL_STEPS[(i + 1) % ALL_STEPS.length]] as const))(
      'the %s function: its own log group allowed, that of the %s function denied',
      async (step, other) => {
        // GIVEN the function's role
        // WHEN it writes log events to its own log group, and to another function's
        const stream = ':log-stream:2024/01/01/[$LATEST]0123456789abcdef';
        const own = d().request(step, ['logs:PutLogEvents', `<log-group:${step}>${stream}`]);
        const foreign = d().request(step, ['logs:PutLogEvents', `<log-group:${other}>${stream}`]);
        // THEN only its own log group is allowed
        await expectAllowedByIdentity(own);
        await expectDeniedByIdentity(foreign);
      },
    );
  });

  for (const [principal, spec] of Object.entries(SPECS) as [Principal, RoleSpec][]) describeRole(principal, spec, d);
  describeRole('import state machine', stateMachineSpec('import'), d);
  describeRole('export state machine', stateMachineSpec('export'), d);
  describeRole('import trigger', {
    twins: [['the export state machine', ['states:StartExecution', '<state-machine:import>'], ['states:StartExecution', '<state-machine:export>']]],
    denied: [['lambda:InvokeFunction', '<function:import start>']],
  }, d);
});

describe('with a versioned import bucket, evaluated by the IAM policy simulator', () => {
  let deployment: Deployment;
  const d = () => deployment;
  beforeAll(() => {
    deployment = deploy({ versionedImportBucket: true });
  });

  // The disks of a versioned bucket are pinned to their version: S3 authorizes reads and tagging
  // of a given version as the *Version* actions.
  const VERSION = { 's3:versionid': '3HL4kqtJlcpXroDTDmJ-rmSpXd3dIbrHY' };
  describeRole('import prepare', {
    twins: [
      ['another bucket', ['s3:GetObjectVersion', `<import-bucket>/${IMAGE_KEY}`, VERSION], ['s3:GetObjectVersion', `${OTHER_BUCKET}/${IMAGE_KEY}`, VERSION]],
      ['another bucket', ['s3:GetObjectVersionTagging', `<import-bucket>/${IMAGE_KEY}`, VERSION], ['s3:GetObjectVersionTagging', `${OTHER_BUCKET}/${IMAGE_KEY}`, VERSION]],
    ],
    denied: [],
  }, d);
  describeRole('import validate', {
    twins: [['another bucket', ['s3:GetObjectVersion', `<import-bucket>/${IMAGE_KEY}`, VERSION], ['s3:GetObjectVersion', `${OTHER_BUCKET}/${IMAGE_KEY}`, VERSION]]],
    denied: [],
  }, d);
  describeRole('import convert', {
    twins: [['another bucket', ['s3:GetObjectVersion', `<import-bucket>/${IMAGE_KEY}`, VERSION], ['s3:GetObjectVersion', `${OTHER_BUCKET}/${IMAGE_KEY}`, VERSION]]],
    denied: [],
  }, d);
  describeRole('import tidy', {
    twins: [
      ['another bucket', ['s3:GetObjectVersionTagging', `<import-bucket>/${IMAGE_KEY}`, VERSION], ['s3:GetObjectVersionTagging', `${OTHER_BUCKET}/${IMAGE_KEY}`, VERSION]],
      ['another bucket', ['s3:PutObjectVersionTagging', `<import-bucket>/${IMAGE_KEY}`, VERSION], ['s3:PutObjectVersionTagging', `${OTHER_BUCKET}/${IMAGE_KEY}`, VERSION]],
    ],
    denied: [['s3:DeleteObjectVersion', `<import-bucket>/${IMAGE_KEY}`, VERSION]],
  }, d);
});
