"""One function's `bootstrap` served by AWS's Lambda Runtime Interface Emulator: what
`sam local invoke` runs inside its container, here without Docker.

The emulator ships in the SAM CLI wheel (samcli/local/rapid/aws-lambda-rie-*). It starts the
runtime at the first invocation (the cold start), serves one invocation at a time, and logs an
`INIT REPORT(durationMs: ...)` for the runtime's init (process start until it asks for its first
event). Function errors come back as HTTP 200 with the runtime's {"errorType", "errorMessage"}.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RIE_DIR = ROOT / ".tools" / "venv" / "lib" / "python3.11" / "site-packages" / "samcli" / "local" / "rapid"


def rie_binary() -> Path:
    return RIE_DIR / f"aws-lambda-rie-{'arm64' if platform.machine() == 'aarch64' else 'x86_64'}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports: each socket is held until all are chosen (one at a time, the
    system may hand the same port out twice, and the emulator then cannot listen)."""
    with contextlib.ExitStack() as held:
        sockets = [held.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def _wait_listening(port: int, timeout_s: float = 10) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.01)
    raise RuntimeError(f"the Runtime Interface Emulator did not listen on {port}")


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _peak_rss_kib(pid: int) -> int | None:
    try:
        m = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return None
    return int(m.group(1)) if m else None


def invoke_all(command: list[str], env: dict[str, str], payloads: list[bytes], cwd: Path, log_path: Path) -> dict:
    """Starts the emulator with `command` as the bootstrap, sends each payload in turn (the first
    is the cold start), and stops it. Returns each invocation's wall time (ms) and answer, the
    runtime's init time (ms, from the emulator's INIT REPORT) and the runtime process's peak RSS
    (KiB, VmHWM; the emulator's own "Max Memory Used" is not measured)."""
    api, front = free_ports(2)
    start_offset = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [
                str(rie_binary()),
                "--runtime-api-address",
                f"127.0.0.1:{api}",
                "--runtime-interface-emulator-address",
                f"127.0.0.1:{front}",
                *command,
            ],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    latencies, results, rss = [], [], None
    try:
        _wait_listening(front)
        url = f"http://127.0.0.1:{front}/2015-03-31/functions/function/invocations"
        for body in payloads:
            start = time.perf_counter()
            try:
                with urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=120) as r:
                    result = json.loads(r.read() or b"null")
            except OSError as e:  # the emulator answers 502 when the runtime cannot start
                result = {"errorType": "Invoke", "errorMessage": str(e)}
            latencies.append((time.perf_counter() - start) * 1000)
            results.append(result)
        rss = max((_peak_rss_kib(p) or 0 for p in _children(proc.pid)), default=0) or None
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log_path.read_bytes()[start_offset:].decode(errors="replace")
    init = re.search(r"INIT REPORT\(durationMs: ([0-9.]+)\)", text)
    return {"latencies_ms": latencies, "results": results, "init_ms": float(init.group(1)) if init else None, "peak_rss_kib": rss}


def error_of(result: object) -> str | None:
    """The function error in an answer, if it is one."""
    if isinstance(result, dict) and "errorType" in result:
        return f"{result['errorType']}: {str(result.get('errorMessage', ''))[:160]}"
    return None
