"""The uploader: one actor per server that copies finished recordings to S3 (or MinIO).

Recordings reach it two ways: the recorders tell it :class:`UploadRecording` when a file is
finalized (its upload marker already exists, see :mod:`golive.recordings`), and at start it
queues every upload the journal still holds: uploads that had not finished when the process
last stopped or crashed. The marker is the only durable state; the queue in memory is
rebuilt from it at every start, and an attempt is made only while the marker is still there
(a recorder's tell that crosses the start-up scan does not upload a file twice).

**One file at a time, in the actor's thread.** Each attempt is one message the actor sends
itself (``_Work``), so the mailbox is served between attempts: asks (``pending``, ``ping``)
and ``stop`` wait at most for the attempt in progress, whose every request is bounded by the
HTTP client's timeouts (connect :data:`CONNECT_TIMEOUT_SECONDS`, read
:data:`READ_TIMEOUT_SECONDS`). A stop or crash in the middle of an upload leaves the marker,
so the upload is made again at the next start.

**An attempt** makes the bucket if it does not exist, uploads the file to
``{S3_PREFIX}{name}`` (minio's ``put_object`` on the opened file, the same as its
``fput_object``: one ``PUT`` up to one part, a sequential multipart upload above), then
*confirms* it with a ``HEAD``: the object's size must be the file's, and its ETag the one
computed locally (the plain MD5 for one ``PUT``; for a multipart upload S3's
``md5(part digests)-N``, :func:`s3_etag`). Only then is the marker removed and, with
``DELETE_RECORDING_AFTER_UPLOAD=1``, the file deleted: no failure (server down, partial
upload, different object, crash) can ever lose a recording. Servers whose ETags are not MD5s
(AWS SSE-KMS or SSE-C encryption) cannot be confirmed and are not supported.

**The part size is golive's** (:func:`part_size_for`: 5 MiB, S3's smallest, or the smallest
multiple of it that keeps a file within S3's 10 000 parts, the rule minio applies by
default): it is passed to ``put_object`` and the expected ETag is computed with that same
size, so the two cannot disagree whatever the SDK picks by default. Every SDK call names its
arguments: minio 7.2.19 made them keyword-only (7.2.20 took that back, minio 8 brings it
again) and minio 8 makes ``get_part_info`` private; the uploader works on both APIs
(``make test`` runs its tests against each, see the Makefile).

**Retries.** A failed attempt (any minio, urllib3 or OS error, or an object that does not
match) is retried after :meth:`RetryPolicy.delay`: exponential backoff, capped, with *equal
jitter*. The actor never sleeps: a :class:`threading.Timer` tells it ``_RetryDue`` when the
delay is over (the timers are cancelled when it stops), and other files are uploaded
meanwhile. The HTTP client is built with ``retries=False``, so this backoff is the only retry
mechanism and a server that is down fails an attempt at once. After ``UPLOAD_MAX_ATTEMPTS``
failed attempts the upload counts as failed and leaves the queue, but its file and marker stay:
the next start tries again. A file deleted by hand before its upload is forgotten (marker
removed, nothing counted).

**Path style.** minio-py picks the addressing by itself: virtual-host style
(``bucket.host/key``) for AWS and Aliyun hosts, path style (``host/bucket/key``) for every
other host (MinIO, moto, Ceph ...). ``S3_PATH_STYLE=1`` forces path style on every host too
(``Minio.disable_virtual_style_endpoint``); ``S3_PATH_STYLE=0`` keeps minio's choice. It never
forces virtual-host style on a non-AWS host (Go-Live's ``BucketLookupAuto``).

Error texts are logged with the access and secret keys blanked out, should a server echo them.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, Final, cast
from xml.etree.ElementTree import ParseError

import certifi
import pykka
import structlog
import urllib3
from minio import Minio
from minio.error import MinioException, S3Error
from pykka.typing import ActorMemberMixin, proxy_method

from golive.actors.base import GoliveActor, guarded, tell_quietly
from golive.actors.messages import UploadRecording
from golive.config import Config
from golive.metrics import Metrics
from golive.recordings import NAME_PATTERN, RecordingStore

#: How long a connection to the S3 server may take to open; a server that is down fails fast.
CONNECT_TIMEOUT_SECONDS: Final = 5.0
#: How long the server may stay silent on an open connection (one part is 5 MiB or more).
READ_TIMEOUT_SECONDS: Final = 60.0
#: S3's limits on a multipart upload: the smallest part (but the last) and the most parts.
S3_MIN_PART_SIZE: Final = 5 * 1024 * 1024
S3_MAX_PARTS: Final = 10_000
#: Hashing reads the file in chunks of this size.
_HASH_CHUNK: Final = 1024 * 1024
#: Bucket creation answers that mean the bucket is there and ours.
_BUCKET_OURS: Final = frozenset({"BucketAlreadyOwnedByYou"})

#: What a failed attempt may raise: the server's answers, the transport, the disk, minio's
#: checks of names and answers (ValueError), an answer that is not XML, a mismatch.
_ATTEMPT_ERRORS: Final = (
    MinioException,
    urllib3.exceptions.HTTPError,
    OSError,
    ValueError,
    ParseError,
)


@dataclass(frozen=True, slots=True)
class S3Target:
    """Where recordings go: the ``S3_*`` settings, without the rest of the configuration."""

    endpoint: str  # host[:port], no scheme
    bucket: str
    region: str = ""
    access_key: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)
    use_ssl: bool = True
    path_style: bool = False  # force path style on every host (see the module docstring)
    prefix: str = ""

    @classmethod
    def from_config(cls, config: Config) -> S3Target:
        return cls(
            endpoint=config.s3_endpoint,
            bucket=config.s3_bucket,
            region=config.s3_region,
            access_key=config.s3_access_key,
            secret_key=config.s3_secret_key,
            use_ssl=config.s3_use_ssl,
            path_style=config.s3_path_style,
            prefix=config.s3_prefix,
        )

    def key(self, name: str) -> str:
        """The object key of recording ``name``."""
        return f"{self.prefix}{name}"

    def redact(self, text: str) -> str:
        """``text`` with the credentials blanked out (for logs)."""
        for secret in (self.secret_key, self.access_key):
            if secret:
                text = text.replace(secret, "***")
        return text


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with equal jitter.

    Attempt ``n`` (1-based) failed: the ceiling is ``min(max_seconds, base_seconds * 2**(n-1))``
    and the delay is drawn uniformly from ``[ceiling / 2, ceiling]``. Equal jitter rather than
    full jitter (``[0, ceiling]``): there is one uploader per server, so spreading many
    clients apart matters less than never retrying a server that is down almost at once.
    """

    base_seconds: float
    max_seconds: float
    max_attempts: int

    def __post_init__(self) -> None:
        if not 0 < self.base_seconds <= self.max_seconds:
            raise ValueError("need 0 < base_seconds <= max_seconds")
        if self.max_attempts < 1:
            raise ValueError("need max_attempts >= 1")

    @classmethod
    def from_config(cls, config: Config) -> RetryPolicy:
        return cls(
            base_seconds=config.upload_retry_base_seconds,
            max_seconds=config.upload_retry_max_seconds,
            max_attempts=config.upload_max_attempts,
        )

    def ceiling(self, attempt: int) -> float:
        """The longest delay after failed attempt ``attempt`` (1-based)."""
        doublings = min(max(attempt, 1) - 1, 64)  # past 2**64 every sane cap is reached
        return min(self.max_seconds, self.base_seconds * 2.0**doublings)

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based) before the next one."""
        ceiling = self.ceiling(attempt)
        return ceiling / 2 + rng.uniform(0.0, ceiling / 2)


ClientFactory = Callable[[S3Target], Minio]


def minio_client(target: S3Target) -> Minio:
    """A minio client for ``target`` whose HTTP client never retries and times out soon.

    Certificates are checked against ``SSL_CERT_FILE`` if set, else certifi's bundle (as
    minio's own default client does).
    """
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_SECONDS, read=READ_TIMEOUT_SECONDS),
        retries=False,
        maxsize=1,  # one request at a time: parts are uploaded one after another
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
    )
    client = Minio(
        endpoint=target.endpoint,
        access_key=target.access_key or None,
        secret_key=target.secret_key or None,
        secure=target.use_ssl,
        region=target.region or None,
        http_client=http,
    )
    if target.path_style:
        client.disable_virtual_style_endpoint()  # type: ignore[no-untyped-call]  # minio's
    return client


def part_size_for(size: int) -> int:
    """The part size golive uploads ``size`` bytes with: :data:`S3_MIN_PART_SIZE`, or the
    smallest multiple of it that needs no more than :data:`S3_MAX_PARTS` parts."""
    return max(1, math.ceil(size / (S3_MAX_PARTS * S3_MIN_PART_SIZE))) * S3_MIN_PART_SIZE


def part_count(size: int, part_size: int) -> int:
    """How many parts ``size`` bytes make in parts of ``part_size`` (one for an empty file:
    one ``PUT``), as minio splits them."""
    return max(1, math.ceil(size / part_size))


def s3_etag(stream: IO[bytes], size: int, part_size: int) -> str:
    """The ETag S3 gives ``size`` bytes of ``stream`` uploaded by ``put_object`` in parts of
    ``part_size``: in one part, the MD5 in hex; in several, the MD5 of the parts' binary
    MD5s, ``-`` and the number of parts. Reads from the stream's current position."""
    count = part_count(size, part_size)
    if count == 1:
        digest = hashlib.md5(usedforsecurity=False)
        _hash_into(digest, stream, size)
        return digest.hexdigest()
    digests = hashlib.md5(usedforsecurity=False)
    remaining = size
    for _ in range(count):
        part = hashlib.md5(usedforsecurity=False)
        _hash_into(part, stream, min(part_size, remaining))
        remaining -= part_size
        digests.update(part.digest())
    return f"{digests.hexdigest()}-{count}"


def _hash_into(digest: Any, stream: IO[bytes], length: int) -> None:
    while length > 0:
        chunk = stream.read(min(_HASH_CHUNK, length))
        if not chunk:
            raise OSError(f"the file ended {length} bytes early")
        digest.update(chunk)
        length -= len(chunk)


class NotConfirmed(Exception):  # noqa: N818  a failed check, not an unexpected error
    """The object in the bucket is not the file uploaded."""


class FileVanished(Exception):  # noqa: N818  an outcome, not an error
    """The file to upload is gone."""


@dataclass(frozen=True, slots=True)
class _Work:
    """Make the next upload attempt (uploader → itself)."""


@dataclass(frozen=True, slots=True)
class _RetryDue:
    """The backoff of ``name`` is over (timer → uploader)."""

    name: str


@dataclass(slots=True)
class _Upload:
    """One recording the uploader is responsible for until it is confirmed or given up."""

    name: str
    queued_at: float  # time.monotonic()
    attempts: int = 0


class UploaderActor(GoliveActor):
    actor_kind = "uploader"

    def __init__(
        self,
        *,
        store: RecordingStore,
        target: S3Target,
        policy: RetryPolicy,
        metrics: Metrics,
        delete_after_upload: bool,
        client_factory: ClientFactory = minio_client,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__()
        self._store = store
        self._target = target
        self._policy = policy
        self._metrics = metrics
        self._delete_after_upload = delete_after_upload
        self._client = client_factory(target)
        self._rng = rng or random.Random()  # noqa: S311  jitter, not cryptography
        self._uploads: dict[str, _Upload] = {}  # queued, in flight or backing off
        self._ready: deque[str] = deque()  # to attempt now, in order
        self._timers: dict[str, threading.Timer] = {}  # backing off
        self._work_scheduled = False
        self._bucket_known = False
        self._log = structlog.get_logger(__name__).bind(
            actor=self.actor_kind, bucket=target.bucket, endpoint=target.endpoint
        )

    def on_start(self) -> None:
        self._store.prepare()
        pending = self._store.pending_uploads()
        self._log.info("pending uploads found", count=len(pending))
        for path in pending:
            self._queue(path.name)

    @guarded
    def pending(self) -> tuple[str, ...]:
        """Names of the recordings waiting for their upload (queued or backing off)."""
        return tuple(self._uploads)

    def handle(self, message: Any) -> None:
        match message:
            case UploadRecording(path=path):
                self._queue(path.name)
            case _Work():
                self._work_scheduled = False
                self._work_one()
            case _RetryDue(name=name):
                if self._timers.pop(name, None) is not None and name in self._uploads:
                    self._ready.append(name)
                    self._schedule_work()
            case _:
                super().handle(message)

    def on_crash(self) -> None:
        self._metrics.actor_crashes.labels(self.actor_kind).inc()

    def release(self, *, crashed: bool) -> None:  # noqa: ARG002  same on crash and on stop
        # Nothing is deleted here: files and markers stay for the next start.
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._ready.clear()
        self._uploads.clear()
        self._metrics.uploads_pending.set(0)  # nobody is uploading them until the next start

    # -- the queue ----------------------------------------------------------------------------

    def _queue(self, name: str) -> None:
        if not NAME_PATTERN.fullmatch(name):
            self._log.warning("not a recording name, not uploaded", name=name)
            return
        if name in self._uploads:
            self._log.debug("upload already queued", name=name)
            return
        self._uploads[name] = _Upload(name=name, queued_at=time.monotonic())
        self._ready.append(name)
        self._update_gauge()
        self._schedule_work()

    def _schedule_work(self) -> None:
        if self._ready and not self._work_scheduled:
            self._work_scheduled = True
            self.actor_ref.tell(_Work())

    def _update_gauge(self) -> None:
        self._metrics.uploads_pending.set(len(self._uploads))

    def _done(self, name: str) -> None:
        self._uploads.pop(name, None)
        self._update_gauge()

    # -- one attempt --------------------------------------------------------------------------

    def _work_one(self) -> None:
        if not self._ready:
            return
        name = self._ready.popleft()
        upload = self._uploads.get(name)
        if upload is not None:
            self._attempt(upload)
        self._schedule_work()

    def _attempt(self, upload: _Upload) -> None:
        if not self._store.upload_pending(upload.name):
            # Told again after it was done (a recorder's tell crossing the start-up scan):
            # the journal, not the queue, says what is left to upload. Its marker, not a
            # listing of the journal: an attempt costs the same however long the backlog.
            self._done(upload.name)
            self._log.debug("upload no longer pending", name=upload.name)
            return
        upload.attempts += 1
        key = self._target.key(upload.name)
        try:
            size = self._upload(upload.name, key)
        except FileVanished:
            self._store.forget_upload(upload.name)
            self._done(upload.name)
            self._log.warning("recording vanished before its upload", name=upload.name)
            return
        except (*_ATTEMPT_ERRORS, NotConfirmed) as exc:
            self._failed(upload, exc)
            return
        self._done(upload.name)
        self._metrics.uploads.labels("succeeded").inc()
        try:
            self._store.uploaded(upload.name, delete=self._delete_after_upload)
        except OSError as exc:  # the object is safe; a marker left means one more upload
            self._log.error(
                "recording uploaded, but the journal could not be updated",
                name=upload.name,
                key=key,
                error=f"{type(exc).__name__}: {exc}",
            )
            return
        self._log.info(
            "recording uploaded",
            name=upload.name,
            key=key,
            size=size,
            attempts=upload.attempts,
            seconds=round(time.monotonic() - upload.queued_at, 3),
            deleted=self._delete_after_upload,
        )

    def _upload(self, name: str, key: str) -> int:
        """Upload and confirm one file; its size. Raises on any failure."""
        try:
            file = (self._store.directory / name).open("rb")
        except FileNotFoundError:
            raise FileVanished(name) from None
        with file:
            size = os.fstat(file.fileno()).st_size
            part_size = part_size_for(size)
            # Two reads of the file (hash, then upload), so each stays sequential and the
            # upload is minio's own; the second read is usually served by the page cache.
            expected = s3_etag(file, size, part_size)
            file.seek(0)
            self._ensure_bucket()
            self._client.put_object(
                bucket_name=self._target.bucket,
                object_name=key,
                data=file,
                length=size,
                content_type=_content_type(name),
                part_size=part_size,
                num_parallel_uploads=1,
            )
        stat = self._client.stat_object(bucket_name=self._target.bucket, object_name=key)
        etag = (stat.etag or "").strip('"').lower()
        if stat.size != size or etag != expected:
            raise NotConfirmed(
                f"object is {stat.size} bytes with ETag {etag!r}, "
                f"the file {size} bytes with ETag {expected!r}"
            )
        return size

    def _ensure_bucket(self) -> None:
        if self._bucket_known:
            return
        bucket = self._target.bucket
        if not self._client.bucket_exists(bucket_name=bucket):
            try:
                self._client.make_bucket(bucket_name=bucket)
            except S3Error as exc:
                if exc.code not in _BUCKET_OURS:
                    raise
            else:
                self._log.info("bucket created")
        self._bucket_known = True

    def _failed(self, upload: _Upload, exc: BaseException) -> None:
        self._bucket_known = False  # check again: the bucket may be what went wrong
        error = self._target.redact(f"{type(exc).__name__}: {exc}")
        if upload.attempts >= self._policy.max_attempts:
            self._done(upload.name)
            self._metrics.uploads.labels("failed").inc()
            self._log.error(
                "upload failed, recording kept for the next start",
                name=upload.name,
                attempts=upload.attempts,
                error=error,
            )
            return
        delay = self._policy.delay(upload.attempts, self._rng)
        self._metrics.upload_retries.inc()
        self._log.warning(
            "upload attempt failed, retrying",
            name=upload.name,
            attempt=upload.attempts,
            retry_in=round(delay, 3),
            error=error,
        )
        timer = threading.Timer(delay, tell_quietly, args=(self.actor_ref, _RetryDue(upload.name)))
        timer.daemon = True
        timer.name = f"uploader-retry-{upload.name}"
        self._timers[upload.name] = timer
        timer.start()


def _content_type(name: str) -> str:
    extension = name.rsplit(".", 1)[-1]
    return {
        "ivf": "video/x-ivf",
        "ogg": "audio/ogg",
        "mkv": "video/x-matroska",
    }.get(extension, "application/octet-stream")


class UploaderProxy(ActorMemberMixin, pykka.ActorProxy[UploaderActor]):
    pending = proxy_method(UploaderActor.pending)
    ping = proxy_method(UploaderActor.ping)


def uploader_proxy(ref: pykka.ActorRef[UploaderActor]) -> UploaderProxy:
    return cast(UploaderProxy, ref.proxy())
