"""HTTPS (contract section 6: ``TLS_CERT_FILE``, ``TLS_KEY_FILE``): a real golive process
serving a self-signed certificate for 127.0.0.1, made here with ``cryptography``.

Every process is killed at the end of its test whatever happened; every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support import metric_samples
from tests.test_server import Golive, environment, python_m, run_to_exit

LOOPBACK = ipaddress.IPv4Address("127.0.0.1")


@dataclass(frozen=True)
class Certificate:
    cert_file: Path
    key_file: Path

    def env(self) -> dict[str, str]:
        return {"TLS_CERT_FILE": str(self.cert_file), "TLS_KEY_FILE": str(self.key_file)}

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this certificate (and nothing else)."""
        return ssl.create_default_context(cafile=str(self.cert_file))


def self_signed(directory: Path, name: str = "golive") -> Certificate:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files in ``directory``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(LOOPBACK)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Certificate(cert_file, key_file)


@pytest.fixture
def certificate(tmp_path: Path) -> Certificate:
    return self_signed(tmp_path)


@pytest.fixture
def golive_processes() -> Iterator[list[Golive]]:
    """The golive processes a test starts; every one is killed when it ends."""
    started: list[Golive] = []
    yield started
    for golive in started:
        golive.kill()


def start(started: list[Golive], env: Mapping[str, str], cwd: Path) -> tuple[Golive, str]:
    """Start golive with ``env``; the process and its ``host:port`` once it listens."""
    golive = Golive(python_m(), environment(env), cwd)
    started.append(golive)
    url = golive.wait_listening()
    return golive, url.removeprefix("http://")


def fetch(url: str, context: ssl.SSLContext | None = None) -> tuple[int, str, str]:
    """GET ``url``: status, content type and body."""
    with urllib.request.urlopen(url, timeout=10, context=context) as response:  # noqa: S310  loopback
        return response.status, response.headers["Content-Type"], response.read().decode()


@pytest.mark.timeout(60)
def test_serves_https_with_the_configured_certificate(
    certificate: Certificate, golive_processes: list[Golive], tmp_path: Path
) -> None:
    golive, address = start(golive_processes, certificate.env(), tmp_path)
    status, content_type, body = fetch(f"https://{address}/healthz", certificate.client_context())
    assert (status, body) == (200, "ok")
    assert content_type.startswith("text/plain")

    # The certificate really is the one served: a client trusting another one refuses it.
    other = self_signed(tmp_path, "other")
    with pytest.raises(urllib.error.URLError) as refused:
        fetch(f"https://{address}/healthz", other.client_context())
    assert isinstance(refused.value.reason, ssl.SSLCertVerificationError)

    # Plain HTTP on the same port gets no HTTP answer.
    with pytest.raises((OSError, http.client.HTTPException)):
        fetch(f"http://{address}/healthz")

    # ... and the server is none the worse for it.
    assert fetch(f"https://{address}/healthz", certificate.client_context())[0] == 200
    assert golive.stop() == 0
    assert golive.stderr() == []


@pytest.mark.timeout(60)
def test_a_tls_handshake_that_never_comes_is_cut_and_counted(
    certificate: Certificate, golive_processes: list[Golive], tmp_path: Path
) -> None:
    """Silent TCP connections to a TLS port are bounded by the header timeout (asyncio's
    handshake timeout is 60 s) and by the connection cap, handshakes included."""
    env = {**certificate.env(), "HTTP_HEADER_TIMEOUT_SECONDS": "0.5", "HTTP_MAX_CONNECTIONS": "5"}
    golive, address = start(golive_processes, env, tmp_path)
    host, port = address.split(":")
    silent = [socket.create_connection((host, int(port)), timeout=10) for _ in range(8)]
    try:
        for sock in silent:  # closed by the server: at once beyond the cap, the rest in 0.5 s
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(1) == b""
    finally:
        for sock in silent:
            sock.close()
    status, _, text = fetch(f"https://{address}/metrics", certificate.client_context())
    assert status == 200
    samples = metric_samples(text)
    assert samples[("golive_http_connections_refused_total", ())] == 3
    assert golive.stop() == 0


@pytest.mark.timeout(60)
def test_without_tls_settings_it_serves_plain_http(
    golive_processes: list[Golive], tmp_path: Path
) -> None:
    golive, address = start(golive_processes, {}, tmp_path)
    assert fetch(f"http://{address}/healthz")[::2] == (200, "ok")
    with pytest.raises(urllib.error.URLError):
        fetch(f"https://{address}/healthz", ssl.create_default_context())
    assert golive.stop() == 0


def bad_tls_files(tmp_path: Path) -> dict[str, dict[str, str]]:
    good = self_signed(tmp_path)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text(
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n"
    )
    missing = tmp_path / "missing.pem"
    other = self_signed(tmp_path, "other")
    return {
        "missing-cert": {"TLS_CERT_FILE": str(missing), "TLS_KEY_FILE": str(good.key_file)},
        "missing-key": {"TLS_CERT_FILE": str(good.cert_file), "TLS_KEY_FILE": str(missing)},
        "garbled-cert": {"TLS_CERT_FILE": str(garbage), "TLS_KEY_FILE": str(good.key_file)},
        "garbled-key": {"TLS_CERT_FILE": str(good.cert_file), "TLS_KEY_FILE": str(garbage)},
        "key-of-another-cert": {
            "TLS_CERT_FILE": str(good.cert_file),
            "TLS_KEY_FILE": str(other.key_file),
        },
    }


BAD_TLS = ["missing-cert", "missing-key", "garbled-cert", "garbled-key", "key-of-another-cert"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", BAD_TLS)
def test_bad_tls_files_stop_start_up_with_one_line(tmp_path: Path, case: str) -> None:
    env = bad_tls_files(tmp_path)[case]
    result = run_to_exit(python_m(), env, tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "TLS_CERT_FILE" in lines[0] or "TLS_KEY_FILE" in lines[0]
    assert "golive listening" not in result.stdout
