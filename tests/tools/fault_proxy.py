"""A fault-injecting, recording HTTP proxy between the functions under test and the AWS emulator.

Every request is forwarded to the emulator and recorded (service, action, access key, fault).
Tests add rules at POST /__proxy__/faults; a request that matches a rule gets the rule's fault
instead of (or, for a delay, before) the emulator's answer:

    {"action": "ec2:CreateSnapshots", "fault": "throttle" | "unavailable" | "denied" | "delay" | "error",
     "code": "InvalidGroup.NotFound", "status": 400 (for "error"),
     "access_key": "<the test's key id>" (optional), "times": 1 (optional; default every time),
     "probability": 0.3 (optional; drawn from the proxy's seeded generator), "seconds": 2 (delay)}

Faults answer as the service does: EC2's XML error shape, or the Query services' (IAM, STS,
SNS). Rules are keyed by access key so that parallel tests (one emulated account each) do not
see each other's faults. GET /__proxy__/log returns the calls; GET /__proxy__/summary counts;
POST /__proxy__/outcome {"kind": ...} lets a test record what it concluded.
Deterministic: one seed (--seed) drives every probabilistic rule.

Each log entry also has the request's start and end (seconds on the proxy's monotonic clock) and
the caller's app id from the User-Agent (`app/<id>`, the SDK's AWS_SDK_UA_APP_ID), so the
benchmarks can find chains of dependent calls per function.

With --ec2-token-buckets the proxy also enforces EC2's request rate limits as AWS publishes them
(token buckets: capacity, refill per second; see EC2_BUCKETS): a request finding its bucket empty
gets EC2's RequestLimitExceeded (HTTP 503) and is logged with the fault "rate_limited".
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import re
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DESTRUCTIVE = {"ec2:TerminateInstances", "ec2:DeleteVolume", "ec2:DeleteSnapshot", "ec2:DetachVolume", "ec2:StopInstances"}
CREDENTIAL = re.compile(r"Credential=([^/]+)/[^/]+/[^/]+/([^/]+)/aws4_request")
APP_ID = re.compile(r"(?:^| )app/([^ ]+)")

# EC2's published request token buckets (capacity, refill per second), per account and region.
# Actions with a bucket of their own are named; the rest share their category's bucket.
EC2_BUCKETS = {
    "ModifyNetworkInterfaceAttribute": (100, 5),
    "CreateSnapshots": (100, 5),
    "CreateTags": (100, 10),
    "describe": (100, 20),
    "mutating": (50, 5),
}


class TokenBucket:
    def __init__(self, capacity: float, rate: float):
        self.capacity, self.rate = capacity, rate
        self.tokens, self.at = float(capacity), time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def ec2_bucket(name: str) -> str:
    if name in EC2_BUCKETS:
        return name
    return "describe" if name.startswith(("Describe", "Get", "List")) else "mutating"


class State:
    def __init__(self, upstream: str, seed: int, token_buckets: bool = False):
        self.buckets = {k: TokenBucket(*v) for k, v in EC2_BUCKETS.items()} if token_buckets else None
        u = urllib.parse.urlparse(upstream)
        self.host, self.port = u.hostname, u.port
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.rules: list[dict] = []
        self.log: list[dict] = []
        self.outcomes: dict[str, int] = {}

    def match(self, action: str, access_key: str | None) -> dict | None:
        with self.lock:
            for rule in self.rules:
                if rule["action"] != action or rule.get("access_key") not in (None, access_key):
                    continue
                if rule.get("times") == 0:
                    continue
                if "probability" in rule and self.rng.random() >= rule["probability"]:
                    continue
                if rule.get("times") is not None:
                    rule["times"] -= 1
                return dict(rule)
        return None

    def rate_limited(self, service: str, name: str) -> bool:
        if self.buckets is None or service != "ec2":
            return False
        with self.lock:
            return not self.buckets[ec2_bucket(name)].take()


def error_body(service: str, code: str, message: str) -> tuple[str, bytes]:
    if service == "ec2":
        body = f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>fault-proxy</RequestID></Response>"
    else:
        body = f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>fault-proxy</RequestId></ErrorResponse>"
    return "text/xml", body.encode()


FAULTS = {
    # fault: (status, ec2 code, other services' code, message)
    "throttle": (503, "RequestLimitExceeded", "Throttling", "Rate exceeded (injected)"),
    "unavailable": (500, "InternalError", "InternalFailure", "An internal error occurred (injected)"),
    "denied": (403, "UnauthorizedOperation", "AccessDenied", "You are not authorized to perform this operation (injected)"),
    "rate_limited": (503, "RequestLimitExceeded", "Throttling", "Request limit exceeded."),
}


def handler(state: State):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_args):
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str]):
            self.send_response(status)
            for k, v in headers.items():
                if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _control(self, body: bytes):
            path = self.path[len("/__proxy__/"):]
            if self.command == "POST" and path == "faults":
                rule = json.loads(body)
                with state.lock:
                    state.rules.append(rule)
                return self._send(200, b"{}", {"Content-Type": "application/json"})
            if self.command == "POST" and path == "outcome":
                kind = json.loads(body)["kind"]
                with state.lock:
                    state.outcomes[kind] = state.outcomes.get(kind, 0) + 1
                return self._send(200, b"{}", {"Content-Type": "application/json"})
            if self.command == "GET" and path == "log":
                with state.lock:
                    data = json.dumps(state.log).encode()
                return self._send(200, data, {"Content-Type": "application/json"})
            if self.command == "GET" and path == "summary":
                with state.lock:
                    data = json.dumps(summary(state)).encode()
                return self._send(200, data, {"Content-Type": "application/json"})
            return self._send(404, b"{}", {"Content-Type": "application/json"})

        def _handle(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.startswith("/__proxy__/"):
                return self._control(body)
            m = CREDENTIAL.search(self.headers.get("Authorization", ""))
            access_key, service = (m.group(1), m.group(2)) if m else (None, "unknown")
            target = self.headers.get("X-Amz-Target")
            if target:
                name = target.split(".")[-1]
            else:
                form = urllib.parse.parse_qs(body.decode(errors="replace")) if body else {}
                query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
                name = (form.get("Action") or query.get("Action") or ["unknown"])[0]
            action = f"{service}:{name}"
            rule = state.match(action, access_key)
            if rule is None and state.rate_limited(service, name):
                rule = {"fault": "rate_limited"}
            app = APP_ID.search(self.headers.get("User-Agent", "") + " " + self.headers.get("X-Amz-User-Agent", ""))
            entry = {"action": action, "access_key": access_key, "fault": rule["fault"] if rule else None,
                     "app": app.group(1) if app else None, "start": time.monotonic()}
            if not target and body:
                entry["params"] = {k: v[0] for k, v in form.items() if len(v[0]) <= 200}
            if rule and rule["fault"] in FAULTS:
                status, ec2_code, code, message = FAULTS[rule["fault"]]
                ctype, payload = error_body(service, ec2_code if service == "ec2" else code, message)
                entry["status"], entry["end"] = status, time.monotonic()
                with state.lock:
                    state.log.append(entry)
                return self._send(status, payload, {"Content-Type": ctype})
            if rule and rule["fault"] == "error":
                status = int(rule.get("status", 400))
                ctype, payload = error_body(service, rule["code"], rule.get("message", "injected"))
                entry["status"], entry["end"] = status, time.monotonic()
                with state.lock:
                    state.log.append(entry)
                return self._send(status, payload, {"Content-Type": ctype})
            if rule and rule["fault"] == "delay":
                time.sleep(float(rule.get("seconds", 2)))
            conn = http.client.HTTPConnection(state.host, state.port, timeout=60)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                entry["status"], entry["end"] = resp.status, time.monotonic()
                with state.lock:
                    state.log.append(entry)
                self._send(resp.status, data, dict(resp.getheaders()))
            except OSError:
                # The client gave up (a delay past its timeout): nothing to answer.
                entry["status"], entry["end"] = None, time.monotonic()
                with state.lock:
                    state.log.append(entry)
            finally:
                conn.close()

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

    return Handler


def summary(state: State) -> dict:
    faults = [e for e in state.log if e["fault"]]
    destructive = sorted({e["action"] for e in state.log if e["action"] in DESTRUCTIVE})
    return {
        "calls": len(state.log),
        "faults_injected": len(faults),
        "destructive_calls": destructive,
        "outcomes": dict(state.outcomes),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="fault-injecting proxy in front of the AWS emulator")
    p.add_argument("--upstream", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--ec2-token-buckets", action="store_true", help="enforce EC2's request rate limits")
    args = p.parse_args(argv)
    state = State(args.upstream, args.seed, args.ec2_token_buckets)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler(state))
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
