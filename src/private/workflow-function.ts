import { Duration, Size } from 'aws-cdk-lib';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import * as tasks from 'aws-cdk-lib/aws-stepfunctions-tasks';
import { Construct } from 'constructs';
import { handlerCode, LAMBDA_RUNTIME } from './assets';
import { acknowledgeActionWildcard, acknowledgeResourceWildcard } from './nag';

/** Properties of a {@link WorkflowFunction}. */
export interface WorkflowFunctionProps {
  /** The bundle in `assets/`. */
  readonly bundle: string;
  /** The export of the bundle that handles the invocation. */
  readonly handler: string;
  /** What the function does (its description, and its role's). */
  readonly description: string;
  readonly environment?: Record<string, string>;
  readonly timeout?: Duration;
  readonly memorySize?: number;
  readonly ephemeralStorageSize?: Size;
  readonly logRetention: logs.RetentionDays;
}

/**
 * One step of a workflow: a Node.js Lambda function (arm64) running one export of a bundled handler,
 * with a role of its own (nothing but its log group until the workflow grants it what the step
 * needs) and a log group with a retention.
 */
export class WorkflowFunction extends Construct {
  public readonly function: lambda.Function;
  public readonly role: iam.Role;

  public constructor(scope: Construct, id: string, props: WorkflowFunctionProps) {
    super(scope, id);
    const logGroup = new logs.LogGroup(this, 'Logs', { retention: props.logRetention });
    this.role = new iam.Role(this, 'Role', {
      assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com'),
      description: props.description,
    });
    logGroup.grantWrite(this.role);
    this.function = new lambda.Function(this, 'Function', {
      runtime: LAMBDA_RUNTIME,
      architecture: lambda.Architecture.ARM_64,
      code: handlerCode(props.bundle),
      handler: `index.${props.handler}`,
      role: this.role,
      logGroup,
      description: props.description,
      timeout: props.timeout ?? Duration.minutes(1),
      memorySize: props.memorySize ?? 256,
      ephemeralStorageSize: props.ephemeralStorageSize,
      environment: props.environment,
    });
    acknowledgeResourceWildcard(
      this.role,
      `${logGroup.logGroupArn}:*`,
      'Writing log events needs the log streams of the function\'s own log group; nothing else is wildcarded.',
    );
  }

  /**
   * Adds a statement to the function's role. Wildcard resources are acknowledged to cdk-nag with
   * `why` (each is a resource type the action cannot be narrowed below, or a prefix it must reach).
   */
  public allow(actions: string[], resources: string[], why: string, conditions?: Record<string, Record<string, unknown>>): void {
    this.role.addToPrincipalPolicy(new iam.PolicyStatement({ actions, resources, conditions }));
    for (const r of resources) if (r.includes('*')) acknowledgeResourceWildcard(this.role, r, why);
  }

  /** Acknowledges the wildcards an L2 grant (`bucket.grantRead`, ...) put on the role. */
  public acknowledgeGrant(resource: string, actionGroups: string[], why: string): void {
    acknowledgeResourceWildcard(this.role, resource, why);
    for (const a of actionGroups) acknowledgeActionWildcard(this.role, a, why);
  }

  /** Acknowledges, on the state machine's role, the `:*` of the function's versions that invoking it grants. */
  public acknowledgeInvoke(stateMachineRole: iam.IRole): void {
    acknowledgeResourceWildcard(stateMachineRole, `${this.function.functionArn}:*`, 'Step Functions may invoke the versions of this workflow function, and nothing else.');
  }

  /**
   * A task that invokes the function with the whole state and the execution (id, name, start time)
   * and writes the function's answer into `resultPath`. Transient failures are retried.
   */
  public task(scope: Construct, id: string, stateName: string, resultPath: string | undefined): tasks.LambdaInvoke {
    const task = new tasks.LambdaInvoke(scope, id, {
      stateName,
      lambdaFunction: this.function,
      payloadResponseOnly: true,
      payload: sfn.TaskInput.fromObject({
        state: sfn.JsonPath.entirePayload,
        execution: {
          id: sfn.JsonPath.executionId,
          name: sfn.JsonPath.executionName,
          startTime: sfn.JsonPath.executionStartTime,
        },
      }),
      resultPath: resultPath ?? sfn.JsonPath.DISCARD,
      retryOnServiceExceptions: true,
    });
    task.addRetry({
      errors: ['Transient'],
      interval: Duration.seconds(5),
      backoffRate: 2,
      maxAttempts: 5,
      jitterStrategy: sfn.JitterType.FULL,
    });
    return task;
  }
}
