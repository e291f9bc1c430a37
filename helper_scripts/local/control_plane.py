"""The deployed path's control plane: MiniStack, with a test double for GuardDuty.

Run with MiniStack's own Python (its venv, .tools/ministack), not the harness's:

    .tools/ministack/bin/python helper_scripts/local/control_plane.py

MiniStack (ministack on PyPI, MIT) is the emulator `sam deploy` deploys template.yaml into:
CloudFormation with the SAM transform, Lambda running each zip's `bootstrap` as a local process,
EventBridge delivering to Step Functions, Step Functions invoking the deployed functions, SNS,
SQS and DynamoDB. It listens on GATEWAY_PORT at BIND_HOST (the caller sets 127.0.0.1, and turns
MiniStack's IoT and SFTP listeners off: loopback only).

GuardDuty is the one part no emulator has. A customer's event may have any source that does not
begin with `aws.` (https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-events-structure.html;
PutEvents answers NotAuthorizedForSourceException otherwise), and MiniStack refuses it too. So this module stands in for GuardDuty: a
POST to /_test/guardduty/findings with a GuardDuty finding event (the EventBridge envelope, as
events/*.json hold it) hands the event to MiniStack's own EventBridge as a service would
publish it, on the default bus; the deployed rules then decide whether it matches. The answer is
PutEvents' answer (`{"FailedEntryCount": ..., "Entries": [...]}`). One gap of MiniStack is
corrected ([`timeout_seconds_path`]); every other request goes to its application as is.
"""

from __future__ import annotations

import json

FINDINGS_PATH = "/_test/guardduty/findings"


def guardduty_entry(event: dict) -> dict:
    """The PutEvents entry GuardDuty's event becomes: its source, detail type, resources and detail."""
    return {
        "Source": event["source"],
        "DetailType": event["detail-type"],
        "Resources": event.get("resources", []),
        "Detail": json.dumps(event["detail"]),
        "EventBusName": "default",
    }


def wrap(ministack_app):
    """The ASGI application: MiniStack's, with the GuardDuty double on FINDINGS_PATH."""
    from ministack.core.responses import set_request_account_id, set_request_region
    from ministack.services import eventbridge

    async def publish(scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            event = json.loads(body)
            entry = guardduty_entry(event)
            # The event is published in the finding's account and region, as GuardDuty does.
            set_request_account_id(str(event["account"]))
            set_request_region(str(event["region"]))
            status, _headers, answer = eventbridge._put_events({"Entries": [entry]}, allow_aws_source=True)
        except (ValueError, KeyError, TypeError) as e:
            status, answer = 400, json.dumps({"message": f"not a GuardDuty finding event: {e}"}).encode()
        if isinstance(answer, str):
            answer = answer.encode()
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": answer})

    async def app(scope, receive, send):
        if scope.get("type") == "http" and scope.get("path") == FINDINGS_PATH and scope.get("method") == "POST":
            await publish(scope, receive, send)
        else:
            await ministack_app(scope, receive, send)

    return app


def timeout_seconds_path() -> None:
    """MiniStack's Task state takes TimeoutSeconds only; AWS takes TimeoutSecondsPath as well, a
    reference path into the state's input that gives the timeout
    (https://docs.aws.amazon.com/step-functions/latest/dg/state-task.html). The containment
    state machine's approval wait uses it, so the deployed path resolves it as AWS does: before
    the task runs, the path's value becomes the state's TimeoutSeconds (a dotted path of field
    names, which is all the state machine uses)."""
    from ministack.services import stepfunctions

    execute = stepfunctions._execute_task
    if getattr(execute, "_timeout_path", False):
        return

    def _execute_task(state_def, raw_input, execution, ctx):
        path = state_def.get("TimeoutSecondsPath")
        if path and "TimeoutSeconds" not in state_def:
            value = raw_input
            for name in path.removeprefix("$.").split("."):
                value = value[name]
            state_def = {**state_def, "TimeoutSeconds": int(value)}
        return execute(state_def, raw_input, execution, ctx)

    _execute_task._timeout_path = True
    stepfunctions._execute_task = _execute_task


def main() -> None:
    import ministack.app

    timeout_seconds_path()
    ministack.app.app = wrap(ministack.app.app)
    ministack.app.main()


if __name__ == "__main__":
    main()
