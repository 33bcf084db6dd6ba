import { Duration } from 'aws-cdk-lib';
import * as events from 'aws-cdk-lib/aws-events';
import * as targets from 'aws-cdk-lib/aws-events-targets';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import { Construct } from 'constructs';
import { acknowledgeResourceWildcard } from './nag';
import type { WorkflowFunction } from './workflow-function';

/**
 * The state that describes a failure in `$.failure` when the clean-up step itself failed, so that
 * the failure event still says what went wrong.
 */
export function describeFailure(scope: Construct, what: 'import' | 'export'): sfn.Pass {
  return new sfn.Pass(scope, 'DescribeFailure', {
    stateName: 'Describe failure',
    parameters: {
      'error.$': '$.error.Error',
      'reason.$': '$.error.Cause',
      'remedy': `See the execution's history; the ${what} task, if any, may still need cancelling (the clean-up failed).`,
      'status': 'FAILED',
      'execution.$': '$$.Execution.Id',
      'cancelledTasks': [],
    },
    resultPath: '$.failure',
  });
}

/** What {@link workflowStateMachine} builds. */
export interface WorkflowStateMachineProps {
  readonly definition: sfn.IChainable;
  readonly timeout: Duration;
  readonly retention: logs.RetentionDays;
  readonly comment: string;
  /** The workflow's functions, whose invocation the state machine's role is granted. */
  readonly functions: readonly WorkflowFunction[];
  /** The functions that clean up after a timeout or an abort. */
  readonly onStop: readonly WorkflowFunction[];
  /** What the clean-up rule does, in one line. */
  readonly onStopDescription: string;
}

/**
 * A Standard state machine with X-Ray tracing and logs, and the rule that runs the clean-up
 * functions when an execution times out or is aborted (both end it without running a state).
 */
export function workflowStateMachine(scope: Construct, props: WorkflowStateMachineProps): sfn.StateMachine {
  const smLogs = new logs.LogGroup(scope, 'StateMachineLogs', { retention: props.retention });
  const stateMachine = new sfn.StateMachine(scope, 'StateMachine', {
    definitionBody: sfn.DefinitionBody.fromChainable(props.definition),
    stateMachineType: sfn.StateMachineType.STANDARD,
    timeout: props.timeout,
    tracingEnabled: true,
    logs: { destination: smLogs, level: sfn.LogLevel.ALL, includeExecutionData: false },
    comment: props.comment,
  });
  for (const f of props.functions) f.acknowledgeInvoke(stateMachine.role);
  acknowledgeResourceWildcard(stateMachine.role, '*', 'X-Ray tracing and CloudWatch Logs delivery actions support no resource-level permissions.');
  new events.Rule(scope, 'CleanupRule', {
    description: props.onStopDescription,
    eventPattern: {
      source: ['aws.states'],
      detailType: ['Step Functions Execution Status Change'],
      detail: { status: ['TIMED_OUT', 'ABORTED'], stateMachineArn: [stateMachine.stateMachineArn] },
    },
    targets: props.onStop.map((f) => new targets.LambdaFunction(f.function)),
  });
  return stateMachine;
}
