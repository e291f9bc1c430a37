"""An HTTPS front for the emulator's S3, so that presigned URLs are `https://` as AWS's are.

The collector document takes an upload URL only if it is `https://` (its allowedPattern, which the
simulated agent checks as SSM does: local.ssm_agent), and its curl uploads with `--proto =https`.
moto serves plain HTTP. This front terminates TLS with a certificate made here (a CA of the run's
own and a leaf for 127.0.0.1 signed by it: rustls refuses a CA certificate as a server's) and
relays the bytes to the emulator unchanged. The functions trust the CA through SSL_CERT_FILE
(rustls-native-certs, which the AWS SDK's default HTTPS client uses, reads only that file when it
is set); the simulated instance trusts it as its system bundle (local.ssm_agent).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import select
import socket
import ssl
import threading
import time
from pathlib import Path

LOOPBACK = "127.0.0.1"


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA, and a leaf for 127.0.0.1 it signs, valid for a day: (ca.pem, leaf.pem, leaf.key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ec2-quarantine local run CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, LOOPBACK)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "ca.pem", folder / "leaf.pem", folder / "leaf.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].touch(mode=0o600)
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths


class TlsFront:
    """TLS on a free loopback port, each connection relayed to `upstream_port` on loopback."""

    def __init__(self, upstream_port: int, folder: Path):
        self.ca, cert, key = make_certificates(folder)
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(cert, key)
        self._upstream = upstream_port
        self._listener = socket.create_server((LOOPBACK, 0))
        self._listener.settimeout(0.5)
        self.port = self._listener.getsockname()[1]
        self.endpoint = f"https://{LOOPBACK}:{self.port}"
        self._stopped = threading.Event()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="tls-front", daemon=True).start()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            client.settimeout(30)
            tls = self._context.wrap_socket(client, server_side=True)
        except (OSError, ssl.SSLError):
            client.close()
            return
        try:
            upstream = socket.create_connection((LOOPBACK, self._upstream))
        except OSError:
            tls.close()
            return
        with self._lock:
            self._open.update((tls, upstream))
        try:
            _relay(tls, upstream, self._stopped)
        finally:
            with self._lock:
                self._open.difference_update((tls, upstream))
            for s in (tls, upstream):
                with contextlib.suppress(OSError):
                    s.close()

    def stop(self) -> None:
        self._stopped.set()
        self._listener.close()
        with self._lock:
            for s in list(self._open):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def _relay(tls: ssl.SSLSocket, upstream: socket.socket, stopped: threading.Event) -> None:
    """Bytes both ways, from one thread (an SSL socket is never used by two threads at once),
    until either side ends, nothing moves for a minute, or the front stops."""
    idle_since = time.monotonic()
    while not stopped.is_set() and time.monotonic() - idle_since < 60:
        ready = [tls] if tls.pending() else select.select([tls, upstream], [], [], 0.5)[0]
        for source in ready:
            try:
                data = source.recv(65536)
            except ssl.SSLWantReadError:
                continue
            except OSError:
                return
            if not data:
                return
            (upstream if source is tls else tls).sendall(data)
            idle_since = time.monotonic()
