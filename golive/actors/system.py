"""Starting and stopping golive's actors, in order.

Top-level actors start in a fixed order, each behind a ``ping().get()`` barrier, and stop in
reverse order: the uploader (with ``UPLOAD_RECORDINGS=1``) before the directory, so that it
outlives every room and recorder and hears of every finished recording. Before anything starts,
recordings the last process died in the middle of are repaired (:func:`recover_interrupted`).
Rooms, fanouts, subscribers and recorders are started and stopped by their parents; once the
top level has stopped, anything still registered with pykka is a bug: it is logged and stopped.
"""

from __future__ import annotations

from typing import Any

import pykka
import structlog

from golive.actors.directory import DirectoryActor, DirectoryProxy, directory_proxy
from golive.actors.ports import LoopPort
from golive.actors.recorder import RecordingSettings, recover_interrupted
from golive.actors.uploader import RetryPolicy, S3Target, UploaderActor
from golive.config import DEFAULT_RELAY_GRACE_SECONDS, Config
from golive.metrics import Metrics
from golive.recordings import JOURNAL_DIR, RecordingStore
from golive.tracing import Tracing

log = structlog.get_logger(__name__)


class ActorSystem:
    def __init__(
        self,
        *,
        port: LoopPort,
        metrics: Metrics,
        max_subscribers: int,
        timeout: float,
        config: Config | None = None,
        tracing: Tracing | None = None,
        journal: str = JOURNAL_DIR,
    ) -> None:
        """``journal``: the recording journal of this process (one per worker of a node)."""
        self._journal = journal
        self._config = config
        self._tracing = tracing
        self._port = port
        self._metrics = metrics
        self._max_subscribers = max_subscribers
        self._timeout = timeout
        self._started: list[pykka.ActorRef[Any]] = []
        self._directory: DirectoryProxy | None = None

    @property
    def directory(self) -> DirectoryProxy:
        if self._directory is None:
            raise RuntimeError("the actor system is not running")
        return self._directory

    def start(self) -> None:
        """Start the top-level actors in order; each answers a ping before the next starts.
        Blocks (on the disk, and on each actor's start): call it off the event loop."""
        ref = DirectoryActor.start(
            port=self._port,
            metrics=self._metrics,
            max_subscribers=self._max_subscribers,
            stop_timeout=self._timeout,
            recording=self._start_recording(),
            tracing=self._tracing,
            reconnect_seconds=(
                0.0 if self._config is None else self._config.publisher_reconnect_seconds
            ),
            relay_grace_seconds=(
                DEFAULT_RELAY_GRACE_SECONDS
                if self._config is None
                else self._config.relay_grace_seconds
            ),
        )
        self._started.append(ref)
        self._directory = directory_proxy(ref)
        self._directory.ping().get(timeout=self._timeout)
        log.debug("actors started", actors=[str(r) for r in self._started])

    def _start_recording(self) -> RecordingSettings | None:
        config = self._config
        if config is None or not (config.record_enabled or config.upload_recordings):
            return None
        store = RecordingStore(config.record_dir, self._journal)
        store.prepare()
        recovered = recover_interrupted(store, upload=config.upload_recordings)
        uploader = None
        if config.upload_recordings:
            uploader = UploaderActor.start(
                store=store,
                target=S3Target.from_config(config),
                policy=RetryPolicy.from_config(config),
                metrics=self._metrics,
                delete_after_upload=config.delete_recording_after_upload,
            )
            self._started.append(uploader)
            uploader.proxy().ping().get(timeout=self._timeout)
        log.info(
            "recording ready",
            directory=str(config.record_dir),
            recording=config.record_enabled,
            upload=config.upload_recordings,
            recovered=recovered,
        )
        if not config.record_enabled:
            return None
        return RecordingSettings(store, upload=config.upload_recordings, uploader=uploader)

    def stop(self) -> None:
        """Stop the top-level actors in reverse order, then sweep up any leftover as a bug."""
        while self._started:
            ref = self._started.pop()
            try:
                ref.stop(block=True, timeout=self._timeout)
            except pykka.ActorDeadError:
                continue
            except pykka.Timeout:
                log.error("actor did not stop in time", actor=str(ref))
        self._directory = None
        leftovers = pykka.ActorRegistry.get_all()
        if leftovers:
            log.error("actors left running after shutdown", actors=[str(r) for r in leftovers])
            pykka.ActorRegistry.stop_all(block=True, timeout=self._timeout)
