/**
 * Resolves the CloudFormation intrinsic functions of a synthesized template to the concrete values
 * a deployment into one account and Region would produce, so that tests can read a template the
 * way the deployed resources would see it (a state machine definition with real ARNs, a function's
 * environment with real names).
 *
 * Supported: `Ref` (parameters, pseudo parameters, resources), `Fn::GetAtt` (the ARNs and names
 * of the resource types the library's stacks use), `Fn::Join`, `Fn::Sub`, `Fn::Select`,
 * `Fn::Split`, `Fn::FindInMap`, `Fn::If` with the template's `Conditions` (`Fn::Equals`,
 * `Fn::And`, `Fn::Or`, `Fn::Not`, `Condition`), `Fn::Base64`, `Fn::ToJsonString`, `Fn::Length`
 * and `AWS::NoValue`. Anything else throws an error naming it.
 *
 * Physical names: the caller's map (logical id -> name) first, then the resource's own name
 * property (`FunctionName`, `BucketName`, ...), else a deterministic name derived from the stack
 * name and the logical id, the way CloudFormation names resources (`Stack-LogicalId-SUFFIX`,
 * lower case for buckets).
 */
import { createHash } from 'node:crypto';

/** Where the template is deemed deployed, and the values the caller fixes. */
export interface CfnResolveOptions {
  /** `AWS::Region`. @default 'us-east-1' */
  readonly region?: string;
  /** `AWS::AccountId`. @default '123456789012' */
  readonly accountId?: string;
  /** `AWS::Partition`. @default 'aws' */
  readonly partition?: string;
  /** `AWS::URLSuffix`. @default 'amazonaws.com' */
  readonly urlSuffix?: string;
  /** `AWS::StackName`. @default 'Stack' */
  readonly stackName?: string;
  /** Values of the template's parameters (a list parameter takes an array or a comma-separated string). */
  readonly parameters?: Record<string, string | number | string[]>;
  /** Physical names of resources, by logical id. */
  readonly physicalNames?: Record<string, string>;
}

/** The value of `AWS::NoValue`: removes the property or list element that holds it. */
const NO_VALUE: unique symbol = Symbol('AWS::NoValue');

/** How `Ref`, the ARN and the name property work for one resource type. */
interface ResourceKind {
  /** The property that names the resource, if the type has one. */
  readonly nameProperty?: string;
  /** Whether names are lower case (S3 buckets). */
  readonly lowerCase?: boolean;
  /** The longest name the service accepts. */
  readonly maxLength?: number;
  /** What `Ref` returns. @default the physical name */
  readonly ref?: 'name' | 'arn' | 'url' | 'id';
  /** The resource's ARN from its name. */
  readonly arn?: (name: string, env: Env, properties: any) => string;
  /** Other attributes than `Arn`. */
  readonly attributes?: Record<string, (name: string, env: Env, properties: any) => string>;
}

interface Env {
  readonly region: string;
  readonly account: string;
  readonly partition: string;
  readonly urlSuffix: string;
  resolve(value: unknown): any;
}

const KINDS: Record<string, ResourceKind> = {
  'AWS::Lambda::Function': {
    nameProperty: 'FunctionName',
    maxLength: 64,
    arn: (n, e) => `arn:${e.partition}:lambda:${e.region}:${e.account}:function:${n}`,
  },
  'AWS::IAM::Role': {
    nameProperty: 'RoleName',
    maxLength: 64,
    arn: (n, e, p) => `arn:${e.partition}:iam::${e.account}:role${rolePath(e.resolve(p.Path))}${n}`,
    attributes: { RoleId: (n) => `AROA${hashOf(n, 17).toUpperCase()}` },
  },
  'AWS::IAM::ManagedPolicy': {
    nameProperty: 'ManagedPolicyName',
    maxLength: 128,
    ref: 'arn',
    arn: (n, e, p) => `arn:${e.partition}:iam::${e.account}:policy${rolePath(e.resolve(p.Path))}${n}`,
    attributes: { PolicyArn: (n, e, p) => `arn:${e.partition}:iam::${e.account}:policy${rolePath(e.resolve(p.Path))}${n}` },
  },
  'AWS::S3::Bucket': {
    nameProperty: 'BucketName',
    lowerCase: true,
    maxLength: 63,
    arn: (n, e) => `arn:${e.partition}:s3:::${n}`,
    attributes: {
      DomainName: (n, e) => `${n}.s3.${e.urlSuffix}`,
      RegionalDomainName: (n, e) => `${n}.s3.${e.region}.${e.urlSuffix}`,
      DualStackDomainName: (n, e) => `${n}.s3.dualstack.${e.region}.${e.urlSuffix}`,
      WebsiteURL: (n, e) => `http://${n}.s3-website-${e.region}.${e.urlSuffix}`,
    },
  },
  'AWS::SNS::Topic': {
    nameProperty: 'TopicName',
    maxLength: 256,
    ref: 'arn',
    arn: (n, e) => `arn:${e.partition}:sns:${e.region}:${e.account}:${n}`,
    attributes: {
      TopicArn: (n, e) => `arn:${e.partition}:sns:${e.region}:${e.account}:${n}`,
      TopicName: (n) => n,
    },
  },
  'AWS::StepFunctions::StateMachine': {
    nameProperty: 'StateMachineName',
    maxLength: 80,
    ref: 'arn',
    arn: (n, e) => `arn:${e.partition}:states:${e.region}:${e.account}:stateMachine:${n}`,
    attributes: { Name: (n) => n },
  },
  'AWS::Events::EventBus': {
    nameProperty: 'Name',
    maxLength: 256,
    arn: (n, e) => `arn:${e.partition}:events:${e.region}:${e.account}:event-bus/${n}`,
    attributes: { Name: (n) => n },
  },
  'AWS::Events::Rule': {
    nameProperty: 'Name',
    maxLength: 64,
    arn: (n, e) => `arn:${e.partition}:events:${e.region}:${e.account}:rule/${n}`,
  },
  'AWS::SQS::Queue': {
    nameProperty: 'QueueName',
    maxLength: 80,
    ref: 'url',
    arn: (n, e) => `arn:${e.partition}:sqs:${e.region}:${e.account}:${n}`,
    attributes: {
      QueueName: (n) => n,
      QueueUrl: (n, e) => `https://sqs.${e.region}.${e.urlSuffix}/${e.account}/${n}`,
    },
  },
  'AWS::Logs::LogGroup': {
    nameProperty: 'LogGroupName',
    maxLength: 512,
    arn: (n, e) => `arn:${e.partition}:logs:${e.region}:${e.account}:log-group:${n}:*`,
  },
  'AWS::KMS::Key': {
    ref: 'id',
    arn: (n, e) => `arn:${e.partition}:kms:${e.region}:${e.account}:key/${keyId(n)}`,
    attributes: { KeyId: (n) => keyId(n) },
  },
};

function rolePath(path: unknown): string {
  if (path === undefined || path === null) return '/';
  if (typeof path !== 'string' || !path.startsWith('/') || !path.endsWith('/')) throw new Error(`invalid IAM path ${JSON.stringify(path)}`);
  return path;
}

function hashOf(text: string, length: number): string {
  return createHash('sha256').update(text).digest('hex').slice(0, length);
}

/** A key id (a UUID) derived from the key's physical name. */
function keyId(name: string): string {
  const h = hashOf(`key:${name}`, 32);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}

const PSEUDO_PARAMETERS = ['AWS::Region', 'AWS::AccountId', 'AWS::Partition', 'AWS::URLSuffix', 'AWS::StackName', 'AWS::StackId', 'AWS::NotificationARNs', 'AWS::NoValue'];

/** Resolves the intrinsic functions of one template. */
export class CfnResolver {
  public readonly region: string;
  public readonly accountId: string;
  public readonly partition: string;
  public readonly urlSuffix: string;
  public readonly stackName: string;
  private readonly resources: Record<string, any>;
  private readonly conditionCache = new Map<string, boolean>();
  private readonly evaluating = new Set<string>();

  public constructor(private readonly template: any, private readonly options: CfnResolveOptions = {}) {
    this.region = options.region ?? 'us-east-1';
    this.accountId = options.accountId ?? '123456789012';
    this.partition = options.partition ?? 'aws';
    this.urlSuffix = options.urlSuffix ?? 'amazonaws.com';
    this.stackName = options.stackName ?? 'Stack';
    this.resources = template?.Resources ?? {};
  }

  /** `value` with every intrinsic function replaced by its value (`AWS::NoValue` removes what holds it). */
  public resolve(value: unknown): any {
    const out = this.walk(value);
    return out === NO_VALUE ? undefined : out;
  }

  /** The physical name of a resource (see the module documentation for the order of sources). */
  public physicalName(logicalId: string): string {
    const resource = this.resourceOf(logicalId);
    const given = this.options.physicalNames?.[logicalId];
    if (given !== undefined) return given;
    const kind = KINDS[resource.Type] ?? {};
    if (kind.nameProperty && resource.Properties?.[kind.nameProperty] !== undefined) {
      const named = this.resolve(resource.Properties[kind.nameProperty]);
      if (typeof named !== 'string') throw new Error(`${logicalId}.${kind.nameProperty} does not resolve to a string`);
      return named;
    }
    return derivedName(this.stackName, logicalId, kind.maxLength ?? 64, kind.lowerCase ?? false);
  }

  /** What `Ref` of a parameter, pseudo parameter or resource gives. */
  public ref(name: string): any {
    switch (name) {
      case 'AWS::Region': return this.region;
      case 'AWS::AccountId': return this.accountId;
      case 'AWS::Partition': return this.partition;
      case 'AWS::URLSuffix': return this.urlSuffix;
      case 'AWS::StackName': return this.stackName;
      case 'AWS::StackId': return `arn:${this.partition}:cloudformation:${this.region}:${this.accountId}:stack/${this.stackName}/${keyId(this.stackName)}`;
      case 'AWS::NotificationARNs': return [];
      case 'AWS::NoValue': return NO_VALUE;
    }
    if (name.startsWith('AWS::')) throw new Error(`Ref: unsupported pseudo parameter ${name} (supported: ${PSEUDO_PARAMETERS.join(', ')})`);
    const parameter = this.template?.Parameters?.[name];
    if (parameter !== undefined) return this.parameterValue(name, parameter);
    const resource = this.resourceOf(name);
    const kind = KINDS[resource.Type] ?? {};
    const physical = this.physicalName(name);
    switch (kind.ref ?? 'name') {
      case 'arn': return this.getAtt(name, 'Arn');
      case 'url': return this.getAtt(name, 'QueueUrl');
      case 'id': return this.getAtt(name, 'KeyId');
      default: return physical;
    }
  }

  /** What `Fn::GetAtt` of a resource attribute gives. */
  public getAtt(logicalId: string, attribute: string): string {
    const resource = this.resourceOf(logicalId);
    const kind = KINDS[resource.Type];
    const env = this.env();
    const properties = resource.Properties ?? {};
    const name = this.physicalName(logicalId);
    const fn = attribute === 'Arn' ? kind?.arn : kind?.attributes?.[attribute];
    if (!fn) throw new Error(`Fn::GetAtt: attribute ${attribute} of ${resource.Type} (${logicalId}) is not supported`);
    return fn(name, env, properties);
  }

  /** The value of one of the template's conditions. */
  public condition(name: string): boolean {
    const cached = this.conditionCache.get(name);
    if (cached !== undefined) return cached;
    const expression = this.template?.Conditions?.[name];
    if (expression === undefined) throw new Error(`unknown condition ${name}`);
    if (this.evaluating.has(name)) throw new Error(`condition ${name} refers to itself`);
    this.evaluating.add(name);
    try {
      const value = this.evaluateCondition(expression);
      this.conditionCache.set(name, value);
      return value;
    } finally {
      this.evaluating.delete(name);
    }
  }

  private env(): Env {
    return {
      region: this.region,
      account: this.accountId,
      partition: this.partition,
      urlSuffix: this.urlSuffix,
      resolve: (v) => this.resolve(v),
    };
  }

  private resourceOf(logicalId: string): any {
    const resource = this.resources[logicalId];
    if (resource === undefined || resource === null || typeof resource !== 'object') {
      throw new Error(`no parameter or resource with logical id ${logicalId}`);
    }
    return resource;
  }

  private parameterValue(name: string, parameter: any): any {
    const given = this.options.parameters?.[name];
    const type: string = parameter.Type ?? 'String';
    if (given === undefined && type.startsWith('AWS::SSM::Parameter::Value<')) {
      throw new Error(`parameter ${name} is read from SSM (${parameter.Default}): give its value in 'parameters'`);
    }
    const value = given ?? parameter.Default;
    if (value === undefined) throw new Error(`parameter ${name} has no default: give its value in 'parameters'`);
    if (type === 'CommaDelimitedList' || type.startsWith('List<')) {
      return Array.isArray(value) ? value.map(String) : String(value).split(',');
    }
    if (Array.isArray(value)) throw new Error(`parameter ${name} of type ${type} takes one value, not a list`);
    return String(value);
  }

  private walk(value: unknown): any {
    if (Array.isArray(value)) {
      return value.map((v) => this.walk(v)).filter((v) => v !== NO_VALUE);
    }
    if (value === null || typeof value !== 'object') return value;
    const keys = Object.keys(value);
    if (keys.length === 1 && (keys[0] === 'Ref' || keys[0].startsWith('Fn::'))) {
      return this.intrinsic(keys[0], (value as any)[keys[0]]);
    }
    const out: Record<string, any> = {};
    for (const key of keys) {
      const v = this.walk((value as any)[key]);
      if (v !== NO_VALUE) out[key] = v;
    }
    return out;
  }

  private intrinsic(fn: string, args: any): any {
    switch (fn) {
      case 'Ref':
        if (typeof args !== 'string') throw new Error('Ref takes a logical id or parameter name');
        return this.ref(args);
      case 'Fn::GetAtt': {
        const [id, attribute] = typeof args === 'string' ? splitOnce(args, '.') : this.walk(args);
        if (typeof id !== 'string' || typeof attribute !== 'string') throw new Error(`Fn::GetAtt takes [logicalId, attribute], not ${JSON.stringify(args)}`);
        return this.getAtt(id, attribute);
      }
      case 'Fn::Join': {
        const [delimiter, list] = this.args(fn, args, 2);
        const items = this.walk(list);
        if (typeof delimiter !== 'string' || !Array.isArray(items)) throw new Error('Fn::Join takes [delimiter, list]');
        return items.map((item) => scalarText(fn, item)).join(delimiter);
      }
      case 'Fn::Sub': return this.sub(args);
      case 'Fn::Select': {
        const [index, list] = this.args(fn, args, 2).map((a) => this.walk(a));
        const i = Number(index);
        if (!Array.isArray(list)) throw new Error('Fn::Select takes [index, list]');
        if (!Number.isInteger(i) || i < 0 || i >= list.length) throw new Error(`Fn::Select: index ${index} is outside a list of ${list.length}`);
        return list[i];
      }
      case 'Fn::Split': {
        const [delimiter, source] = this.args(fn, args, 2).map((a) => this.walk(a));
        if (typeof delimiter !== 'string' || delimiter === '' || typeof source !== 'string') throw new Error('Fn::Split takes [delimiter, string]');
        return source.split(delimiter);
      }
      case 'Fn::FindInMap': {
        if (!Array.isArray(args) || args.length < 3 || args.length > 4) throw new Error('Fn::FindInMap takes [map, key, key]');
        const [map, top, second] = args.slice(0, 3).map((a) => this.walk(a));
        const found = this.template?.Mappings?.[map]?.[top]?.[second];
        if (found !== undefined) return found;
        const fallback = args[3]?.DefaultValue;
        if (fallback !== undefined) return this.walk(fallback);
        throw new Error(`Fn::FindInMap: no ${map}.${top}.${second}`);
      }
      case 'Fn::If': {
        const [condition, whenTrue, whenFalse] = this.args(fn, args, 3);
        if (typeof condition !== 'string') throw new Error('Fn::If takes [condition, value, value]');
        return this.walk(this.condition(condition) ? whenTrue : whenFalse);
      }
      case 'Fn::Base64': return Buffer.from(scalarText(fn, this.walk(args))).toString('base64');
      case 'Fn::ToJsonString': return JSON.stringify(this.walk(args));
      case 'Fn::Length': {
        const list = this.walk(args);
        if (!Array.isArray(list)) throw new Error('Fn::Length takes a list');
        return list.length;
      }
      default:
        throw new Error(`unsupported intrinsic function ${fn}`);
    }
  }

  private args(fn: string, args: any, count: number): any[] {
    if (!Array.isArray(args) || args.length !== count) throw new Error(`${fn} takes ${count} arguments, not ${JSON.stringify(args)}`);
    return args;
  }

  private sub(args: any): string {
    let text: unknown;
    let variables: Record<string, unknown> = {};
    if (typeof args === 'string') {
      text = args;
    } else if (Array.isArray(args) && args.length === 2) {
      text = args[0];
      variables = args[1] ?? {};
    }
    if (typeof text !== 'string' || variables === null || typeof variables !== 'object') throw new Error('Fn::Sub takes a string or [string, variables]');
    return text.replace(/\$\{([^}]*)\}/g, (_match, name: string) => {
      if (name.startsWith('!')) return `\${${name.slice(1)}}`;
      const key = name.trim();
      if (Object.prototype.hasOwnProperty.call(variables, key)) return scalarText('Fn::Sub', this.walk((variables as any)[key]));
      if (key.includes('.') && !key.startsWith('AWS::')) {
        const [id, attribute] = splitOnce(key, '.');
        return this.getAtt(id, attribute);
      }
      return scalarText('Fn::Sub', this.ref(key));
    });
  }

  private evaluateCondition(expression: any): boolean {
    if (expression === null || typeof expression !== 'object' || Array.isArray(expression)) {
      throw new Error(`invalid condition ${JSON.stringify(expression)}`);
    }
    const keys = Object.keys(expression);
    if (keys.length !== 1) throw new Error(`invalid condition ${JSON.stringify(expression)}`);
    const [fn] = keys;
    const args = expression[fn];
    switch (fn) {
      case 'Condition':
        if (typeof args !== 'string') throw new Error('Condition takes a name');
        return this.condition(args);
      case 'Fn::Equals': {
        const [a, b] = this.args(fn, args, 2).map((v) => this.resolve(v));
        return JSON.stringify(a) === JSON.stringify(b);
      }
      case 'Fn::Not': return !this.evaluateCondition(this.args(fn, args, 1)[0]);
      case 'Fn::And':
      case 'Fn::Or': {
        if (!Array.isArray(args) || args.length < 2 || args.length > 10) throw new Error(`${fn} takes 2 to 10 conditions`);
        const values = args.map((a) => this.evaluateCondition(a));
        return fn === 'Fn::And' ? values.every(Boolean) : values.some(Boolean);
      }
      default:
        throw new Error(`unsupported condition function ${fn}`);
    }
  }
}

/** Resolves `value`, taken from `template`; a shorthand for `new CfnResolver(template, options).resolve(value)`. */
export function resolveCfn(template: any, value: unknown, options?: CfnResolveOptions): any {
  return new CfnResolver(template, options).resolve(value);
}

/** A name as CloudFormation would generate it: `Stack-LogicalId-SUFFIX`, within `maxLength`. */
function derivedName(stackName: string, logicalId: string, maxLength: number, lowerCase: boolean): string {
  const suffix = hashOf(`${stackName}/${logicalId}`, 12).toUpperCase();
  let base = `${stackName}-${logicalId}`.slice(0, Math.max(1, maxLength - suffix.length - 1));
  let name = `${base}-${suffix}`;
  if (lowerCase) {
    base = base.toLowerCase().replace(/[^a-z0-9.-]/g, '-');
    name = `${base}-${suffix.toLowerCase()}`;
  }
  return name;
}

function splitOnce(text: string, separator: string): [string, string] {
  const at = text.indexOf(separator);
  if (at < 0) throw new Error(`expected "logicalId${separator}attribute", got ${JSON.stringify(text)}`);
  return [text.slice(0, at), text.slice(at + 1)];
}

function scalarText(fn: string, value: unknown): string {
  if (typeof value === 'string') return value;
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  throw new Error(`${fn}: expected a string, got ${JSON.stringify(value)}`);
}
