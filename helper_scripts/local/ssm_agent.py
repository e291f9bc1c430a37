"""A simulated SSM agent on the simulated instance, so that the local run collects for real.

moto 5.2.5 runs no agent: SendCommand takes any document name and any parameter values, and every
invocation is `Success` at once with no output (tests/README.md). With an agent started here
(`running`), moto's SSM answers for the instances it manages as AWS and the agent do:

- SendCommand (https://docs.aws.amazon.com/systems-manager/latest/APIReference/API_SendCommand.html):
  an unknown document is `InvalidDocument`; a parameter the document does not declare, a value
  outside its `allowedPattern`, or a parameter without default left out is `InvalidParameters`;
  an instance the agent does not manage is `InvalidInstanceId` (not running the agent, or not
  registered). Nothing is created then.
- The agent picks the command up a moment later: until then GetCommandInvocation answers
  `InvocationDoesNotExist`, as AWS may right after SendCommand; then `InProgress` (ResponseCode
  -1); then `Success` or `Failed` with the script's exit code, StandardOutputContent cut at
  24,000 characters and StandardErrorContent at 8,000
  (https://docs.aws.amazon.com/systems-manager/latest/APIReference/API_GetCommandInvocation.html).
- The script: the document's `aws:runShellScript` lines with `{{ Name }}` replaced by the values
  (defaults for those not given), written to `_script.sh` and run with `sh`, as
  amazon-ssm-agent's runshellscript plugin does. It runs on this host in a PID and mount namespace
  of its own (`unshare`, as test_volatile_evidence.py does), which stands for the instance: the
  attacker's implant runs there (a copy of `sleep` deleted from disk after it started), and the
  run's CA is the instance's system bundle, so the archive's upload reaches the HTTPS front for
  the emulator's S3 (local.tls_front) as it would reach S3.

The namespaces need root (or user namespaces); without `unshare` the agent fails the invocation,
saying why, rather than run the script on the host itself.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

# GetCommandInvocation's limits on the output it returns (the API reference).
MAX_STDOUT = 24_000
MAX_STDERR = 8_000
# How long the agent takes to pick a command up (AWS: the agent polls; seconds at most).
PICKUP_S = 0.5

# The instance as the script sees it: the implant, then the agent's run of the script.
TARGET = """set -u
cd "$1"
if [ -n "${2:-}" ]; then
  mount --bind "$2" /etc/ssl/certs/ca-certificates.crt
fi
cp /bin/sleep implant
./implant 3600 &
# Deleted once it runs (before exec, the file is still needed).
for _ in $(seq 100); do
  case $(readlink "/proc/$!/exe") in */implant) break ;; esac
  sleep 0.05
done
rm implant
rc=0
sh _script.sh >stdout 2>stderr || rc=$?
echo "$rc" >rc
"""


class Agent:
    """The agent on the instances it manages; `ca` is the bundle they trust (local.tls_front)."""

    def __init__(self, folder: Path, ca: Path | None):
        self.folder = folder
        self.ca = ca
        self.managed: set[str] = set()
        self.runs: list[dict] = []
        self._threads: list[threading.Thread] = []

    def manage(self, instance_id: str) -> None:
        self.managed.add(instance_id)

    def wait(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        for t in list(self._threads):
            t.join(max(0.0, deadline - time.monotonic()))

    def start(self, command, script: str) -> None:
        for instance_id in command.instance_ids:
            t = threading.Thread(target=self._run, args=(command, instance_id, script), daemon=True)
            self._threads.append(t)
            t.start()

    def _run(self, command, instance_id: str, script: str) -> None:
        time.sleep(PICKUP_S)
        started = datetime.datetime.now(datetime.UTC)
        invocation = {
            "CommandId": command.command_id,
            "InstanceId": instance_id,
            "Comment": command.comment,
            "DocumentName": command.document_name,
            "DocumentVersion": "$DEFAULT",
            "PluginName": "collectVolatileState",
            "ResponseCode": -1,
            "ExecutionStartDateTime": started.isoformat(),
            "ExecutionElapsedTime": "PT0S",
            "ExecutionEndDateTime": "",
            "Status": "InProgress",
            "StatusDetails": "InProgress",
            "StandardOutputContent": "",
            "StandardOutputUrl": "",
            "StandardErrorContent": "",
            "StandardErrorUrl": "",
        }
        command.invocations.append(invocation)
        work = self.folder / f"{command.command_id}-{instance_id}"
        work.mkdir(parents=True)
        (work / "_script.sh").write_text(script)
        (work / "target.sh").write_text(TARGET)
        rc, stdout, stderr = self._execute(work)
        ended = datetime.datetime.now(datetime.UTC)
        status = "Success" if rc == 0 else "Failed"
        invocation.update(
            ResponseCode=rc,
            ExecutionEndDateTime=ended.isoformat(),
            ExecutionElapsedTime=f"PT{(ended - started).total_seconds():.3f}S",
            StandardOutputContent=stdout[:MAX_STDOUT],
            StandardErrorContent=stderr[:MAX_STDERR],
            Status=status,
            StatusDetails=status,
        )
        self.runs.append({"command_id": command.command_id, "instance_id": instance_id, "rc": rc, "folder": str(work)})
        command.completed_count = len(command.invocations)
        if all(i["Status"] != "InProgress" for i in command.invocations) and len(command.invocations) == len(command.instance_ids):
            command.error_count = sum(1 for i in command.invocations if i["Status"] != "Success")
            command.status = "Failed" if command.error_count else "Success"
            command.status_details = command.status

    def _execute(self, work: Path) -> tuple[int, str, str]:
        unshare = shutil.which("unshare")
        if not unshare:
            return 1, "", "the simulated agent needs unshare (util-linux) to make the instance: nothing run"
        answer = subprocess.run(
            [unshare, "--pid", "--mount", "--fork", "--mount-proc", "bash", str(work / "target.sh"), str(work), str(self.ca or "")],
            check=False,
            capture_output=True,
            text=True,
            timeout=660,
        )
        if answer.returncode != 0 or not (work / "rc").is_file():
            return 1, "", f"the simulated instance could not be made (unshare needs root here): {answer.stderr[-2000:]}"
        rc, stdout, stderr = ((work / name).read_text(errors="replace") for name in ("rc", "stdout", "stderr"))
        return (int(rc) if rc.strip().isdigit() else 1), stdout, stderr


_AGENT: Agent | None = None


@contextlib.contextmanager
def running(folder: Path, ca: Path | None):
    """The agent for the block: moto's SSM answers as above while it runs."""
    global _AGENT
    patch()
    _AGENT = Agent(folder, ca)
    try:
        yield _AGENT
    finally:
        _AGENT.wait(30)
        _AGENT = None


def render(content: dict, parameters: dict[str, list[str]]) -> str:
    """The script the agent runs, or the error SSM answers (`InvalidParameters`) as ValueError."""
    declared = content.get("parameters", {})
    unknown = set(parameters) - set(declared)
    if unknown:
        raise ValueError(f"parameters the document does not declare: {sorted(unknown)}")
    steps = [s for s in content.get("mainSteps", []) if s.get("action") == "aws:runShellScript"]
    if len(steps) != 1:
        raise ValueError("the simulated agent runs documents of one aws:runShellScript step")
    script = "\n".join(steps[0]["inputs"]["runCommand"])
    for name, spec in declared.items():
        values = parameters.get(name)
        if values is None:
            if "default" not in spec:
                raise ValueError(f"{name} is required")
            value = str(spec["default"])
        elif len(values) != 1:
            raise ValueError(f"{name}: one value expected")
        else:
            value = values[0]
        pattern = spec.get("allowedPattern")
        # SSM matches allowedPattern as a Java regular expression; these patterns are anchored.
        if pattern and not re.search(pattern, value):
            raise ValueError(f"{name} does not match its allowedPattern")
        script = script.replace("{{ " + name + " }}", value).replace("{{" + name + "}}", value)
    return script


def patch() -> None:
    from moto.ssm.exceptions import InvalidDocument
    from moto.ssm.exceptions import SSMException as RESTError
    from moto.ssm.models import SimpleSystemManagerBackend as SSMBackend

    if getattr(SSMBackend, "_ec2_quarantine_agent", False):
        return
    original = SSMBackend.send_command

    def send_command(self, **kwargs):
        agent = _AGENT
        if agent is None:
            return original(self, **kwargs)
        name = kwargs.get("document_name")
        try:
            document = self.get_document(name, None, None, "JSON")
        except Exception as e:  # moto's own error for a missing document, named as AWS names it
            raise InvalidDocument("The document does not exist or is not shared with this account.") from e
        try:
            script = render(json.loads(document["Content"]), kwargs.get("parameters") or {})
        except ValueError as e:
            raise RESTError("InvalidParameters", f"The specified parameters are not valid for the document: {e}") from e
        unmanaged = [i for i in kwargs.get("instance_ids") or [] if i not in agent.managed]
        if unmanaged or not kwargs.get("instance_ids"):
            raise RESTError("InvalidInstanceId", "Instances not in a valid state for account")
        command = original(self, **kwargs)
        command.invocations = []
        command.status = command.status_details = "InProgress"
        command.completed_count = 0
        agent.start(command, script)
        return command

    SSMBackend.send_command = send_command
    SSMBackend._ec2_quarantine_agent = True
