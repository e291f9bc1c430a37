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
  `InvocationDoesNotExist`, as AWS may right after SendCommand; then `Pending`, then
  `InProgress` (ResponseCode -1, no output yet); then `Success` or `Failed` with the script's
  exit code, or `TimedOut` past the step's `timeoutSeconds`; StandardOutputContent cut at 24,000
  characters and StandardErrorContent at 8,000
  (https://docs.aws.amazon.com/systems-manager/latest/APIReference/API_GetCommandInvocation.html).
- Only the documents the harness gives the agent run (the template's, by name), and only as the
  template holds them: another name, or a stored copy that differs, is `InvalidDocument`. The
  emulator listens on loopback without authentication and the agent runs scripts as root, so
  nothing another local process stores in the emulator is ever run.
- The script: the document's `aws:runShellScript` lines with `{{ Name }}` replaced by the values
  (defaults for those not given), written to `_script.sh` and run with `sh`, as
  amazon-ssm-agent's runshellscript plugin does. It runs on this host in PID, mount and UTS
  namespaces of its own (`unshare`, as test_volatile_evidence.py does), which stand for the
  instance (host name `simulated-instance`): the attacker's implant runs there (a copy of `sleep`
  deleted from disk after it started), its logs are an authentication log with the attacker's
  login over an empty `/var/log` (the host's logs, logins and journal are hidden), and the run's
  CA is its system bundle, so the archive's upload reaches the HTTPS front for the emulator's S3
  (local.tls_front) as it would reach S3. The network is the host's (the upload must reach the
  front): the archive's sockets and routes, and the kernel log, are this machine's.

- A volume the responder attached (the memory imager's `VolumeId` and `Device` parameters): EBS
  has no bytes in the emulator, so the agent gives the instance one. A sparse file of the
  volume's size (as moto records it) behind a loop device, under the name a Xen instance shows
  for the attachment (`/dev/sdg` is `/dev/xvdg`) in a `/dev` of the instance's own (a tmpfs with
  null, zero, urandom, the standard streams and `/dev/shm`). The file stays in the agent's folder
  (`runs[...]["volume"]`), so what the script wrote can be read back.

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
# When the agent picks a command up (the invocation exists, Pending) and starts it (InProgress),
# in seconds after SendCommand: AWS's agent polls; the local run's collection reads every second,
# so it meets each phase.
PICKUP_S = 1.0
START_S = 2.0
# The target's exit status when the simulated instance itself could not be made.
TARGET_FAILED = 97

# The instance as the script sees it, then the agent's run of the script. Any step of the set-up
# that fails ends it with TARGET_FAILED, saying why: never a script run on the host's own files.
TARGET = f"""set -u
cd "$1"
fail() {{ echo "the simulated instance could not be made: $*" >&2; exit {TARGET_FAILED}; }}
hostname simulated-instance || fail "no UTS namespace"
if [ -n "${{2:-}}" ]; then
  [ -f /etc/ssl/certs/ca-certificates.crt ] || fail "no /etc/ssl/certs/ca-certificates.crt to put the run's CA in place of"
  mount --bind "$2" /etc/ssl/certs/ca-certificates.crt || fail "the run's CA could not be mounted"
fi
# The instance's own logs and logins, not the host's.
mount -t tmpfs tmpfs /var/log || fail "no tmpfs over /var/log"
echo "Dec  3 08:00:00 simulated-instance sshd[4242]: Accepted publickey for attacker from 203.0.113.7" >/var/log/auth.log
: >/var/log/wtmp
if [ -e /run/utmp ]; then
  : >utmp
  mount --bind utmp /run/utmp || fail "the host's utmp could not be hidden"
fi
if [ -d /run/log/journal ]; then
  mount -t tmpfs tmpfs /run/log/journal || fail "the host's journal could not be hidden"
fi
cp /bin/sleep implant
./implant 3600 &
# Deleted once it runs (before exec, the file is still needed).
for _ in $(seq 100); do
  case $(readlink "/proc/$!/exe") in */implant) break ;; esac
  sleep 0.05
done
rm implant
# A volume attached to the instance (the memory imager's): the loop device standing for it, under
# the name the attachment shows on a Xen instance, in a /dev of the instance's own.
if [ -n "${{3:-}}" ]; then
  numbers="$((0x$(stat -c %t "$3"))) $((0x$(stat -c %T "$3")))" || fail "no loop device $3"
  mount -t tmpfs -o mode=755 tmpfs /dev || fail "no tmpfs over /dev"
  mknod /dev/null c 1 3 && mknod /dev/zero c 1 5 && mknod /dev/urandom c 1 9 || fail "no device nodes"
  chmod 666 /dev/null /dev/zero /dev/urandom
  ln -s /proc/self/fd /dev/fd && ln -s /proc/self/fd/0 /dev/stdin && ln -s /proc/self/fd/1 /dev/stdout && ln -s /proc/self/fd/2 /dev/stderr
  mkdir /dev/shm && mount -t tmpfs tmpfs /dev/shm || fail "no /dev/shm"
  # shellcheck disable=SC2086 # the major and minor numbers, split on purpose
  mknod "$4" b $numbers || fail "no $4"
fi
rc=0
sh _script.sh >stdout 2>stderr || rc=$?
echo "$rc" >rc
"""


class Agent:
    """The agent on the instances it manages; `ca` is the bundle they trust (local.tls_front);
    `documents` the only documents it runs, by name (their content as the template holds it)."""

    def __init__(self, folder: Path, ca: Path | None, documents: dict[str, dict]):
        self.folder = folder
        self.ca = ca
        self.documents = documents
        self.managed: set[str] = set()
        self.runs: list[dict] = []
        self._threads: list[threading.Thread] = []
        self._processes: list[subprocess.Popen] = []
        # Cleared, the agent picks commands up but starts none (InProgress waits) until it is set:
        # a test holds a collection running while the workflow goes on.
        self.released = threading.Event()
        self.released.set()

    def manage(self, instance_id: str) -> None:
        self.managed.add(instance_id)

    def wait(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        for t in list(self._threads):
            t.join(max(0.0, deadline - time.monotonic()))

    def stop(self) -> None:
        """Kills what still runs (unshare --kill-child takes the namespace's processes with it)."""
        for p in self._processes:
            if p.poll() is None:
                p.kill()

    def start(self, command, script: str, timeout_s: int) -> None:
        for instance_id in command.instance_ids:
            t = threading.Thread(target=self._run, args=(command, instance_id, script, timeout_s), daemon=True)
            self._threads.append(t)
            t.start()

    def _run(self, command, instance_id: str, script: str, timeout_s: int) -> None:
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
            "ExecutionStartDateTime": "",
            "ExecutionElapsedTime": "",
            "ExecutionEndDateTime": "",
            "Status": "Pending",
            "StatusDetails": "Pending",
            "StandardOutputContent": "",
            "StandardOutputUrl": "",
            "StandardErrorContent": "",
            "StandardErrorUrl": "",
        }
        command.invocations.append(invocation)
        status, details, rc, stdout, stderr = "Failed", "Failed", 1, "", ""
        try:
            time.sleep(START_S - PICKUP_S)
            self.released.wait(timeout_s)
            invocation.update(Status="InProgress", StatusDetails="In Progress", ExecutionStartDateTime=started.isoformat())
            command.status = command.status_details = "InProgress"
            work = self.folder / f"{command.command_id}-{instance_id}"
            work.mkdir(parents=True)
            (work / "_script.sh").write_text(script, encoding="utf-8")
            (work / "target.sh").write_text(TARGET, encoding="utf-8")
            volume = self._attached(command, work)
            try:
                rc, stdout, stderr, timed_out = self._execute(work, timeout_s, volume)
            finally:
                if volume:
                    subprocess.run(["losetup", "--detach", volume["loop"]], check=False, capture_output=True)
            if timed_out:
                status, details, rc = "TimedOut", "Execution Timed Out", -1
            elif rc == 0:
                status = details = "Success"
            self.runs.append(
                {
                    "command_id": command.command_id,
                    "instance_id": instance_id,
                    "rc": rc,
                    "folder": str(work),
                    "volume": volume and volume["file"],
                }
            )
        except (OSError, subprocess.SubprocessError, ValueError) as e:  # the agent's own failure: the invocation ends, saying so
            stderr = f"the simulated agent failed: {e!r}"
        finally:
            ended = datetime.datetime.now(datetime.UTC)
            invocation.update(
                ResponseCode=rc,
                ExecutionEndDateTime=ended.isoformat(),
                ExecutionElapsedTime=f"PT{(ended - started).total_seconds():.3f}S",
                StandardOutputContent=stdout[:MAX_STDOUT],
                StandardErrorContent=stderr[:MAX_STDERR],
                Status=status,
                StatusDetails=details,
            )
            ended_all = [i for i in command.invocations if i["Status"] not in ("Pending", "InProgress")]
            command.completed_count = len(ended_all)
            if len(ended_all) == len(command.instance_ids):
                command.error_count = sum(1 for i in ended_all if i["Status"] != "Success")
                command.status = command.status_details = "Failed" if command.error_count else "Success"

    def _attached(self, command, work: Path) -> dict | None:
        """The loop device standing for the volume a command names (`VolumeId`, `Device`), or
        none: a sparse file of the volume's size as the emulator records it."""
        parameters = command.parameters or {}
        volume_id, device = (parameters.get(k, [None])[0] for k in ("VolumeId", "Device"))
        if not volume_id or not device:
            return None
        from moto.backends import get_backend

        size_gib = attached_to = None
        for account in get_backend("ec2").values():
            for backend in account.values():
                found = backend.volumes.get(volume_id)
                if found is not None:
                    size_gib = found.size
                    attached_to = getattr(getattr(found, "attachment", None), "instance", None)
                    attached_to = getattr(attached_to, "id", None)
        if size_gib is None:
            raise ValueError(f"{volume_id} is not a volume of the emulator")
        if attached_to not in command.instance_ids:
            # On AWS the device would not be there: the script finds no volume.
            return None
        backing = work / f"{volume_id}.img"
        with backing.open("wb") as f:
            f.truncate(int(size_gib) * 1024**3)
        loop = subprocess.run(["losetup", "--find", "--show", str(backing)], check=True, capture_output=True, text=True).stdout.strip()
        return {"file": str(backing), "loop": loop, "device": "/dev/xvd" + device.removeprefix("/dev/sd")}

    def _execute(self, work: Path, timeout_s: int, volume: dict | None = None) -> tuple[int, str, str, bool]:
        unshare = shutil.which("unshare")
        if not unshare:
            return 1, "", "the simulated agent needs unshare (util-linux) to make the instance: nothing run", False
        process = subprocess.Popen(
            [
                unshare,
                "--pid",
                "--mount",
                "--uts",
                "--fork",
                "--kill-child",
                "--mount-proc",
                "bash",
                str(work / "target.sh"),
                str(work),
                str(self.ca or ""),
                *((volume["loop"], volume["device"]) if volume else ()),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._processes.append(process)
        try:
            _, made = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            return -1, "", f"the script ran past its {timeout_s} s", True
        if not (work / "rc").is_file():
            return 1, "", f"the simulated instance could not be made (unshare needs root here): {made[-2000:]}", False
        rc, stdout, stderr = ((work / name).read_text(encoding="utf-8", errors="replace") for name in ("rc", "stdout", "stderr"))
        return (int(rc) if rc.strip().isdigit() else 1), stdout, stderr, False


_AGENT: Agent | None = None


@contextlib.contextmanager
def running(folder: Path, ca: Path | None, documents: dict[str, dict]):
    """The agent for the block: moto's SSM answers as above while it runs."""
    global _AGENT
    patch()
    _AGENT = Agent(folder, ca, documents)
    try:
        yield _AGENT
    finally:
        _AGENT.wait(30)
        _AGENT.stop()
        _AGENT = None


def render(content: dict, parameters: dict[str, list[str]]) -> tuple[str, int]:
    """The script the agent runs and its step's timeout, or the error SSM answers
    (`InvalidParameters`) as ValueError."""
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
        # The whole value (re.search's `$` would let a trailing newline through).
        if pattern and not re.fullmatch(pattern.removeprefix("^").removesuffix("$"), value):
            raise ValueError(f"{name} does not match its allowedPattern")
        script = script.replace("{{ " + name + " }}", value).replace("{{" + name + "}}", value)
    return script, int(steps[0]["inputs"].get("timeoutSeconds", 3600))


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
        trusted = agent.documents.get(name)
        try:
            stored = json.loads(self.get_document(name, None, None, "JSON")["Content"])
        except Exception as e:  # moto's own error for a missing document, named as AWS names it
            raise InvalidDocument("The document does not exist or is not shared with this account.") from e
        if trusted is None or stored != trusted:
            raise InvalidDocument(f"{name}: not a document the simulated agent runs (only the template's, as the template holds it)")
        try:
            script, timeout_s = render(trusted, kwargs.get("parameters") or {})
        except ValueError as e:
            raise RESTError("InvalidParameters", f"The specified parameters are not valid for the document: {e}") from e
        unmanaged = [i for i in kwargs.get("instance_ids") or [] if i not in agent.managed]
        if unmanaged or not kwargs.get("instance_ids"):
            raise RESTError("InvalidInstanceId", "Instances not in a valid state for account")
        command = original(self, **kwargs)
        command.invocations = []
        command.status = command.status_details = "Pending"
        command.completed_count = 0
        agent.start(command, script, timeout_s)
        return command

    SSMBackend.send_command = send_command
    SSMBackend._ec2_quarantine_agent = True
