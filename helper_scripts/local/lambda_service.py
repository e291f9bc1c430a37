"""A local Lambda service for the Rust functions: the Invoke API in front, the Runtime API behind.

Each function's `bootstrap` runs as its own process and polls its own Runtime API endpoint, as it
does on AWS Lambda. Invocations arrive on the Invoke API (`POST /2015-03-31/functions/{name}/
invocations`, the call Step Functions makes for a Lambda Task) and answer as Lambda does: the
result with 200, or a function error with 200, the `X-Amz-Function-Error: Unhandled` header and
the runtime's `{"errorType", "errorMessage"}` body, so that Retry and Catch match the errorType.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

RUNTIME_PREFIX = "/2018-06-01/runtime/"
INVOKE_PREFIX = "/2015-03-31/functions/"
DEFAULT_TIMEOUT_S = 60


class _Server(ThreadingHTTPServer):
    """A threaded server that takes a burst of connections at once, as Lambda's endpoints do.

    Step Functions opens one connection per running branch of a Map; with the standard library's
    listen backlog of 5, a burst of them overflowed it and the interpreter got "Connection was
    closed before we received a valid response", a failure no Lambda endpoint gives for a burst
    (it throttles with 429 instead, which this service never needs to).
    """

    daemon_threads = True
    request_queue_size = 256


@dataclass
class Invocation:
    request_id: str
    payload: bytes
    timeout_s: float
    # Set when a process takes the invocation: Lambda's timeout runs from there, not from the
    # Invoke call (Lambda starts another environment instead of queueing).
    deadline_ms: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    result: bytes = b""
    error: bool = False


class Function:
    """One function: its processes and the Runtime API endpoint they poll.

    `copies` processes poll the same endpoint, as Lambda runs that many execution environments
    of a function at once; each takes the next pending invocation when it is free.
    """

    def __init__(self, name: str, binary: Path, env: dict[str, str], log_path: Path, region: str, account: str, copies: int = 1):
        self.name = name
        self.arn = f"arn:aws:lambda:{region}:{account}:function:{name}"
        self.pending: queue.Queue[Invocation] = queue.Queue()
        self.inflight: dict[str, Invocation] = {}
        self.lock = threading.Lock()
        self.init_error: bytes | None = None
        self.invocations = 0
        self.server = _Server(("127.0.0.1", 0), _runtime_handler(self))
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        port = self.server.server_address[1]
        self.log = open(log_path, "wb")  # noqa: SIM115 (open for the processes' lifetime; stop() closes it)
        self.processes: list[subprocess.Popen] = []
        for _ in range(max(1, copies)):
            self.processes.append(self._start(binary, env, port))

    def _start(self, binary: Path, env: dict[str, str], port: int) -> subprocess.Popen:
        process = subprocess.Popen(
            [str(binary)],
            env={
                **env,
                "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{port}",
                "AWS_LAMBDA_FUNCTION_NAME": self.name,
                "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
                "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{self.name}",
                "AWS_LAMBDA_LOG_STREAM_NAME": "local",
                # The function's name in the SDK's User-Agent, so a request log can tell callers apart.
                "AWS_SDK_UA_APP_ID": self.name,
            },
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        threading.Thread(target=self._watch, args=(process,), daemon=True).start()
        return process

    def _watch(self, process: subprocess.Popen) -> None:
        code = process.wait()
        # A process that dies fails whatever it was running, as Lambda reports Runtime.ExitError
        # (which of several copies ran which invocation is not tracked: all in flight fail), and,
        # when no copy is left, whatever was waiting.
        body = json.dumps({"errorType": "Runtime.ExitError", "errorMessage": f"the function process exited with {code}"}).encode()
        with self.lock:
            waiting = list(self.inflight.values())
            self.inflight.clear()
        while all(p.poll() is not None for p in self.processes):
            try:
                waiting.append(self.pending.get_nowait())
            except queue.Empty:
                break
        for inv in waiting:
            inv.result, inv.error = body, True
            inv.done.set()

    def invoke(self, payload: bytes, timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[bytes, bool]:
        if all(p.poll() is not None for p in self.processes):
            body = (
                self.init_error
                or json.dumps(
                    {"errorType": "Runtime.ExitError", "errorMessage": f"the function process exited with {self.processes[0].returncode}"}
                ).encode()
            )
            return body, True
        inv = Invocation(str(uuid.uuid4()), payload, timeout_s)
        self.invocations += 1
        self.pending.put(inv)
        while not inv.done.wait(0.2):
            if inv.deadline_ms and time.time() * 1000 > inv.deadline_ms:
                with self.lock:
                    self.inflight.pop(inv.request_id, None)
                return json.dumps(
                    {"errorType": "Sandbox.Timedout", "errorMessage": f"Task timed out after {timeout_s:.0f} seconds"}
                ).encode(), True
        return inv.result, inv.error

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
        self.server.shutdown()
        self.log.close()


def _runtime_handler(fn: Function):
    class Handler(BaseHTTPRequestHandler):
        # Headers and body are two writes: no Nagle wait for the peer's delayed ACK between them.
        disable_nagle_algorithm = True

        def log_message(self, *_args):  # quiet
            pass

        def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path != RUNTIME_PREFIX + "invocation/next":
                return self._reply(404)
            inv = fn.pending.get()
            inv.deadline_ms = int((time.time() + inv.timeout_s) * 1000)
            with fn.lock:
                fn.inflight[inv.request_id] = inv
            self._reply(
                200,
                inv.payload,
                {
                    "Content-Type": "application/json",
                    "Lambda-Runtime-Aws-Request-Id": inv.request_id,
                    "Lambda-Runtime-Deadline-Ms": str(inv.deadline_ms),
                    "Lambda-Runtime-Invoked-Function-Arn": fn.arn,
                    "Lambda-Runtime-Trace-Id": f"Root=1-{uuid.uuid4().hex[:8]}-{uuid.uuid4().hex[:24]};Sampled=0",
                },
            )

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path == RUNTIME_PREFIX + "init/error":
                fn.init_error = body
                return self._reply(202, b"{}")
            parts = self.path[len(RUNTIME_PREFIX) :].split("/")
            if len(parts) != 3 or parts[0] != "invocation" or parts[2] not in ("response", "error"):
                return self._reply(404)
            with fn.lock:
                inv = fn.inflight.pop(parts[1], None)
            if inv is None:
                return self._reply(400, b'{"errorType":"InvalidRequestID"}')
            inv.result, inv.error = body, parts[2] == "error"
            inv.done.set()
            self._reply(202, b"{}")

    return Handler


class LambdaService:
    """The Invoke API for a set of functions."""

    def __init__(self, region: str, account: str):
        self.region = region
        self.account = account
        self.functions: dict[str, Function] = {}
        self.server = _Server(("127.0.0.1", 0), self._invoke_handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, name: str, binary: Path, env: dict[str, str], log_path: Path, copies: int = 1) -> Function:
        fn = Function(name, binary, env, log_path, self.region, self.account, copies)
        self.functions[name] = fn
        return fn

    def arn(self, name: str) -> str:
        return f"arn:aws:lambda:{self.region}:{self.account}:function:{name}"

    def invoke(self, name: str, payload: object) -> tuple[object, bool]:
        body, error = self.functions[name].invoke(json.dumps(payload).encode())
        return json.loads(body or b"null"), error

    def stop(self) -> None:
        for fn in self.functions.values():
            fn.stop()
        self.server.shutdown()

    def _invoke_handler(self):
        service = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True

            def log_message(self, *_args):
                pass

            def do_POST(self):
                path = urllib.parse.unquote(self.path.split("?")[0])
                if not (path.startswith(INVOKE_PREFIX) and path.endswith("/invocations")):
                    return self._reply(404, {"Type": "User", "message": f"no route {path}"})
                name = path[len(INVOKE_PREFIX) : -len("/invocations")]
                # A full ARN or a partial one names the function by its last part.
                if ":function:" in name:
                    name = name.split(":function:")[1].split(":")[0]
                fn = service.functions.get(name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if fn is None:
                    return self._reply(
                        404, {"Type": "User", "message": f"Function not found: {name}"}, {"x-amzn-ErrorType": "ResourceNotFoundException"}
                    )
                result, error = fn.invoke(body or b"{}")
                headers = {"X-Amz-Executed-Version": "$LATEST"}
                if error:
                    headers["X-Amz-Function-Error"] = "Unhandled"
                self._reply_raw(200, result, headers)

            def _reply(self, status, obj, headers=None):
                self._reply_raw(status, json.dumps(obj).encode(), headers)

            def _reply_raw(self, status, body: bytes, headers=None):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


def function_env(emulator_endpoint: str, region: str, extra: dict[str, str]) -> dict[str, str]:
    """The environment of a function process: the emulator's address and test credentials only."""
    # EC2Q_CALL_TRACE: the benchmarks' trace of each function's EC2 calls (src/aws/calls.rs).
    keep = {k: os.environ[k] for k in ("PATH", "HOME", "RUST_LOG", "RUST_BACKTRACE", "EC2Q_CALL_TRACE") if k in os.environ}
    return {
        **keep,
        "AWS_ENDPOINT_URL": emulator_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        **extra,
    }
