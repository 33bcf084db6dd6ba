/**
 * Evaluates the IAM policies of a synthesized stack with the IAM policy simulator
 * (@cloud-copilot/iam-simulate).
 *
 * The stack is synthesized with `Template.fromStack`; the CloudFormation intrinsics of the policies
 * (Ref, Fn::GetAtt, Fn::Join, Fn::FindInMap, Fn::Select and the pseudo parameters) are resolved into
 * the concrete values a deployment to account {@link ACCOUNT} in {@link REGION} would produce, and
 * requests are evaluated against them. Anything the resolver does not know fails loudly: a policy
 * that is only half resolved would make the simulator's answer meaningless.
 */
import { createHash } from 'node:crypto';
import { runSimulation, type EvaluationResult, type SimulationIdentityPolicy } from '@cloud-copilot/iam-simulate';
import { Stack } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';

/** The account the stack is deployed to. */
export const ACCOUNT = '111111111111';
/** The Region the stack is deployed to. */
export const REGION = 'eu-west-1';
/** The partition of {@link REGION}. */
export const PARTITION = 'aws';

/** An IAM policy document, with every intrinsic resolved. */
export interface PolicyDocument {
  readonly Version?: string;
  readonly Statement: Record<string, unknown>[];
}

interface CfnResourceJson {
  readonly Type: string;
  readonly Properties?: Record<string, unknown>;
}

const PSEUDO_PARAMETERS: Record<string, string> = {
  'AWS::Partition': PARTITION,
  'AWS::AccountId': ACCOUNT,
  'AWS::Region': REGION,
  'AWS::URLSuffix': 'amazonaws.com',
};

/**
 * The policies of a synthesized stack, resolved for a deployment to {@link ACCOUNT} in
 * {@link REGION}.
 */
export class StackPolicies {
  /** Synthesizes `stack`. */
  public static fromStack(stack: Stack): StackPolicies {
    return new StackPolicies(Template.fromStack(stack));
  }

  private readonly resources: Record<string, CfnResourceJson>;
  private readonly mappings: Record<string, Record<string, Record<string, unknown>>>;

  private constructor(public readonly template: Template) {
    const json = template.toJSON();
    this.resources = json.Resources ?? {};
    this.mappings = json.Mappings ?? {};
  }

  /**
   * The logical id of the one resource of `type` that matches `props` (as `Template.findResources`
   * takes them: `{ Properties: ... }`, or a `Match` matcher). Fails unless exactly one resource matches.
   */
  public findOne(type: string, props: unknown): string {
    const ids = Object.keys(this.template.findResources(type, props));
    if (ids.length !== 1) {
      throw new Error(`expected exactly one ${type} matching ${JSON.stringify(props)}, found ${ids.length}: ${ids.join(', ')}`);
    }
    return ids[0];
  }

  /** What `Ref` of the resource `logicalId` returns once deployed. */
  public ref(logicalId: string): string {
    const r = this.resource(logicalId);
    switch (r.Type) {
      case 'AWS::S3::Bucket':
        return this.bucketName(logicalId, r);
      case 'AWS::KMS::Key':
        return keyId(logicalId);
      case 'AWS::IAM::Role':
        return this.roleName(logicalId, r);
      case 'AWS::IAM::Policy':
        return logicalId;
      default:
        throw new Error(`Ref of ${r.Type} (${logicalId}) is not known to the resolver`);
    }
  }

  /** What `Fn::GetAtt` of the resource `logicalId` returns once deployed. */
  public getAtt(logicalId: string, attribute: string): string {
    const r = this.resource(logicalId);
    const key = `${r.Type}.${attribute}`;
    switch (key) {
      case 'AWS::S3::Bucket.Arn':
        return `arn:${PARTITION}:s3:::${this.bucketName(logicalId, r)}`;
      case 'AWS::KMS::Key.Arn':
        return `arn:${PARTITION}:kms:${REGION}:${ACCOUNT}:key/${keyId(logicalId)}`;
      case 'AWS::KMS::Key.KeyId':
        return keyId(logicalId);
      case 'AWS::IAM::Role.Arn': {
        const path = r.Properties?.Path === undefined ? '/' : this.resolveString(r.Properties.Path);
        return `arn:${PARTITION}:iam::${ACCOUNT}:role${path}${this.roleName(logicalId, r)}`;
      }
      default:
        throw new Error(`Fn::GetAtt ${attribute} of ${r.Type} (${logicalId}) is not known to the resolver`);
    }
  }

  /** The ARN of the resource `logicalId`. */
  public arn(logicalId: string): string {
    return this.getAtt(logicalId, 'Arn');
  }

  /** `value` with every intrinsic function resolved. */
  public resolve(value: unknown): unknown {
    if (Array.isArray(value)) return value.map((v) => this.resolve(v));
    if (value === null || typeof value !== 'object') return value;
    const entries = Object.entries(value as Record<string, unknown>);
    if (entries.length === 1 && (entries[0][0] === 'Ref' || entries[0][0].startsWith('Fn::'))) {
      return this.intrinsic(entries[0][0], entries[0][1]);
    }
    return Object.fromEntries(entries.map(([k, v]) => [k, this.resolve(v)]));
  }

  /** The policies attached to the role `logicalId`: inline, `AWS::IAM::Policy` and customer managed. */
  public identityPolicies(roleLogicalId: string): SimulationIdentityPolicy[] {
    const role = this.resource(roleLogicalId);
    if (role.Type !== 'AWS::IAM::Role') throw new Error(`${roleLogicalId} is a ${role.Type}, not an AWS::IAM::Role`);
    const props = role.Properties ?? {};
    const managedArns = this.resolve(props.ManagedPolicyArns ?? []) as string[];
    if (managedArns.length > 0) {
      throw new Error(`the role ${roleLogicalId} has managed policies whose content is not in the stack: ${managedArns.join(', ')}`);
    }
    if (props.PermissionsBoundary !== undefined) {
      throw new Error(`the role ${roleLogicalId} has a permissions boundary, which the resolver does not evaluate`);
    }
    const roleName = this.ref(roleLogicalId);
    const policies: SimulationIdentityPolicy[] = [];
    for (const inline of (props.Policies ?? []) as Record<string, unknown>[]) {
      policies.push({ name: this.resolveString(inline.PolicyName), policy: this.resolve(inline.PolicyDocument) });
    }
    for (const type of ['AWS::IAM::Policy', 'AWS::IAM::ManagedPolicy']) {
      for (const [id, p] of Object.entries(this.template.findResources(type))) {
        const roles = this.resolve(p.Properties?.Roles ?? []) as string[];
        if (!roles.includes(roleName)) continue;
        const name = p.Properties?.PolicyName ?? p.Properties?.ManagedPolicyName;
        policies.push({ name: name === undefined ? id : this.resolveString(name), policy: this.resolve(p.Properties?.PolicyDocument) });
      }
    }
    return policies;
  }

  /** The trust policy (`AssumeRolePolicyDocument`) of the role `logicalId`. */
  public trustPolicy(roleLogicalId: string): PolicyDocument {
    return this.resolve(this.resource(roleLogicalId).Properties?.AssumeRolePolicyDocument) as PolicyDocument;
  }

  /** The key policy of the KMS key `logicalId`. */
  public keyPolicy(keyLogicalId: string): PolicyDocument {
    return this.resolve(this.resource(keyLogicalId).Properties?.KeyPolicy) as PolicyDocument;
  }

  /** The bucket policy of the bucket `logicalId`, or undefined when it has none. */
  public bucketPolicy(bucketLogicalId: string): PolicyDocument | undefined {
    const name = this.ref(bucketLogicalId);
    const docs = Object.values(this.template.findResources('AWS::S3::BucketPolicy'))
      .filter((p) => this.resolve(p.Properties?.Bucket) === name)
      .map((p) => this.resolve(p.Properties?.PolicyDocument) as PolicyDocument);
    if (docs.length > 1) throw new Error(`the bucket ${bucketLogicalId} has ${docs.length} bucket policies`);
    return docs[0];
  }

  private resource(logicalId: string): CfnResourceJson {
    const r = this.resources[logicalId];
    if (!r) throw new Error(`no resource ${logicalId} in the template`);
    return r;
  }

  private resolveString(value: unknown): string {
    const s = this.resolve(value);
    if (typeof s !== 'string') throw new Error(`expected a string, got ${JSON.stringify(s)}`);
    return s;
  }

  private bucketName(logicalId: string, r: CfnResourceJson): string {
    const name = r.Properties?.BucketName;
    return name === undefined ? logicalId.toLowerCase().slice(0, 63) : this.resolveString(name);
  }

  private roleName(logicalId: string, r: CfnResourceJson): string {
    const name = r.Properties?.RoleName;
    return name === undefined ? logicalId : this.resolveString(name);
  }

  private intrinsic(fn: string, arg: unknown): unknown {
    switch (fn) {
      case 'Ref': {
        const name = arg as string;
        if (name.startsWith('AWS::')) {
          const v = PSEUDO_PARAMETERS[name];
          if (v === undefined) throw new Error(`the pseudo parameter ${name} is not known to the resolver`);
          return v;
        }
        return this.ref(name);
      }
      case 'Fn::GetAtt': {
        const [id, attribute] = typeof arg === 'string' ? arg.split(/\.(.*)/s) : (arg as string[]);
        return this.getAtt(id, attribute);
      }
      case 'Fn::Join': {
        const [sep, parts] = arg as [string, unknown[]];
        const resolved = this.resolve(parts) as unknown[];
        return resolved.map((p) => {
          if (typeof p !== 'string') throw new Error(`Fn::Join of a non-string: ${JSON.stringify(p)}`);
          return p;
        }).join(sep);
      }
      case 'Fn::FindInMap': {
        const [map, top, second] = (this.resolve(arg) as string[]);
        const v = this.mappings[map]?.[top]?.[second];
        if (v === undefined) throw new Error(`Fn::FindInMap ${map}.${top}.${second} has no value`);
        return v;
      }
      case 'Fn::Select': {
        const [index, list] = this.resolve(arg) as [string | number, unknown[]];
        return list[Number(index)];
      }
      default:
        throw new Error(`the intrinsic ${fn} is not known to the resolver`);
    }
  }
}

/** One request to evaluate. */
export interface SimulatedRequest {
  /** The ARN of the principal, or a service principal such as `vmie.amazonaws.com`. */
  readonly principal: string;
  readonly action: string;
  /** The ARN of the resource, or `*`. */
  readonly resource: string;
  /** The account that owns the resource. @default ACCOUNT */
  readonly resourceAccount?: string;
  /** The request context. */
  readonly context?: Record<string, string | string[]>;
  /** The identity policies of the principal. @default none */
  readonly identityPolicies?: SimulationIdentityPolicy[];
  /** The resource policy: bucket policy, key policy or trust policy. @default none */
  readonly resourcePolicy?: PolicyDocument;
}

/**
 * The simulator's decision on `request`. Fails when the simulator rejects the input (an unknown
 * action, a resource of the wrong type, an invalid policy) or when it would drop a context key
 * as not applicable to the request: the decision would then not be about the request as written.
 */
export async function simulate(request: SimulatedRequest): Promise<EvaluationResult> {
  const response = await runSimulation(
    {
      request: {
        principal: request.principal,
        action: request.action,
        resource: { resource: request.resource, accountId: request.resourceAccount ?? ACCOUNT },
        contextVariables: request.context ?? {},
      },
      identityPolicies: request.identityPolicies ?? [],
      serviceControlPolicies: [],
      resourceControlPolicies: [],
      resourcePolicy: request.resourcePolicy,
    },
    { simulationMode: 'Strict' },
  );
  if (response.resultType === 'error') {
    throw new Error(`the simulator rejected ${request.action} on ${request.resource}: ${JSON.stringify(response.errors)}`);
  }
  const results = response.resultType === 'single' ? [response.result] : response.results;
  const ignored = results.flatMap((r) => r.ignoredContextKeys ?? []);
  if (ignored.length > 0) {
    throw new Error(`the simulator ignored the context keys ${ignored.join(', ')} for ${request.action} on ${request.resource}`);
  }
  return response.overallResult;
}

/** A policy that allows exactly `action` on `resource`. */
export function allowOnly(action: string, resource: string): SimulationIdentityPolicy {
  return {
    name: 'AllowOnly',
    policy: { Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: action, Resource: resource }] },
  };
}

/** A stable, KMS-shaped key id for a logical id. */
function keyId(logicalId: string): string {
  const h = createHash('sha256').update(logicalId).digest('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}
