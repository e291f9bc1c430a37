"""Step Functions' `states:startExecution` integration in moto's interpreter, as AWS runs it.

moto 5.2.5's interpreter (ported from LocalStack) hands a Task's parameters to boto3 as the state
machine names them (`StateMachineArn`, `Name`, `Input`), which boto3 refuses (its StartExecution
members are `stateMachineArn`, `name`, `input`): every such Task fails with `States.Runtime`
("'StateMachineArn'"). AWS takes the API's members with the first letter capitalized and answers
with them capitalized too (`ExecutionArn`, `StartDate`):
https://docs.aws.amazon.com/step-functions/latest/dg/connect-stepfunctions.html.
`patch()` converts both ways for the local runs (in-process).
"""

from __future__ import annotations


def patch() -> None:
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import state_task_service_sfn as sfn

    cls = sfn.StateTaskServiceSfn
    if getattr(cls, "_ec2_quarantine_integration", False):
        return
    original_parameters = cls._normalise_parameters
    original_eval = cls._eval_service_task

    def normalise_parameters(self, parameters: dict, boto_service_name=None, service_action_name=None) -> None:
        original_parameters(self, parameters, boto_service_name=boto_service_name, service_action_name=service_action_name)
        for key in [k for k in parameters if k[:1].isupper()]:
            parameters[key[0].lower() + key[1:]] = parameters.pop(key)

    def eval_service_task(self, env, *args, **kwargs):
        original_eval(self, env, *args, **kwargs)
        response = env.stack[-1]
        if isinstance(response, dict):
            env.stack[-1] = {
                key[0].upper() + key[1:]: value.isoformat() if hasattr(value, "isoformat") else value for key, value in response.items()
            }

    cls._normalise_parameters = normalise_parameters
    cls._eval_service_task = eval_service_task
    cls._ec2_quarantine_integration = True
