import { Stack, Validations } from 'aws-cdk-lib';
import { IConstruct } from 'constructs';

/**
 * Renders a resolved CloudFormation value the way policy validation plugins (cdk-nag) name it in a
 * finding: `Fn::GetAtt` as `<LogicalId.Attribute>`, `Ref` as `<LogicalId>`, `Fn::Join` joined.
 */
function render(value: unknown): string {
  if (typeof value === 'string') return value;
  if (Array.isArray(value)) return value.map(render).join('');
  if (value && typeof value === 'object') {
    const o = value as Record<string, unknown>;
    if ('Fn::GetAtt' in o) return `<${(o['Fn::GetAtt'] as string[]).join('.')}>`;
    if ('Ref' in o) return `<${String(o.Ref)}>`;
    if ('Fn::Join' in o) {
      const [sep, parts] = o['Fn::Join'] as [string, unknown[]];
      return parts.map(render).join(sep);
    }
  }
  return JSON.stringify(value);
}

/**
 * Acknowledges the wildcard finding (AwsSolutions-IAM5) that a grant on `resourceArn` raises on
 * the policies of `scope`, for exactly that resource.
 */
export function acknowledgeResourceWildcard(scope: IConstruct, resourceArn: string, reason: string): void {
  const rendered = render(Stack.of(scope).resolve(resourceArn));
  Validations.of(scope).acknowledge({ id: `AwsSolutions-IAM5[Resource::${rendered}]`, reason });
}

/** Acknowledges the wildcard finding (AwsSolutions-IAM5) for an action group such as `kms:ReEncrypt*`. */
export function acknowledgeActionWildcard(scope: IConstruct, action: string, reason: string): void {
  Validations.of(scope).acknowledge({ id: `AwsSolutions-IAM5[Action::${action}]`, reason });
}
