"""A real S3-speaking server for tests: moto's, over HTTP on 127.0.0.1 (no MinIO server can
be installed here). moto keeps its buckets in the process, not in the server: each test uses a
bucket of its own and resets moto when it ends."""

from __future__ import annotations

import socket
import urllib.request

from minio import Minio
from moto.server import ThreadedMotoServer

ACCESS_KEY = "golive-test-access"
SECRET_KEY = "golive-test-secret"  # noqa: S105  moto accepts any credentials
TIMEOUT = 10.0


# --- an S3 server on loopback ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class S3Server:
    """moto's S3 on 127.0.0.1:``port``; stopped, nothing listens there."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._server: ThreadedMotoServer | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self._server is None
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.stop()
        if self._server._server is not None:  # stop() leaves the socket listening
            self._server._server.server_close()
        self._server = None

    def reset(self) -> None:
        """Forget every bucket (moto keeps them in the process, across servers)."""
        if self._server is None:
            return
        request = urllib.request.Request(f"http://{self.endpoint}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=TIMEOUT):  # noqa: S310  same URL
            pass

    def settings(self, bucket: str) -> dict[str, str]:
        """The ``S3_*`` variables that point golive at this server and ``bucket``."""
        return {
            "S3_ENDPOINT": self.endpoint,
            "S3_USE_SSL": "0",
            "S3_REGION": "us-east-1",
            "S3_BUCKET": bucket,
            "S3_ACCESS_KEY": ACCESS_KEY,
            "S3_SECRET_KEY": SECRET_KEY,
        }

    def client(self) -> Minio:
        """A second, independent client to look at what the uploader stored."""
        return Minio(
            endpoint=self.endpoint,
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            secure=False,
            region="us-east-1",
        )
