"""A small file system for tests of disk faults, mounted where only this test can see it.

:class:`SmallFilesystem` mounts a tmpfs of a few hundred KiB in a *mount namespace of its own*,
held by a helper process (``unshare --mount``, then ``cat`` reading its stdin). The test
reaches it through ``/proc/PID/root/...``, the helper's view of the file system: nothing is
ever mounted in the test's own mount namespace, let alone the host's. When the helper ends,
its namespace ends and the mount with it; it ends when the test closes its stdin, and also
when the test process dies however it dies (its end of the pipe closes), so a failed or
killed test leaves nothing mounted. As root (``make test``: ``scripts/loopback-netns`` runs
the tests as root), or in a user namespace where the test is root (the script's non-root
path).

Faults are real: writes past the size fail with ``ENOSPC``, a file system remounted
read-only refuses every change with ``EROFS``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

TIMEOUT = 10.0
_FILL_CHUNK = 64 * 1024


class SmallFilesystem:
    """A tmpfs of ``size`` bytes (``inodes`` files and directories at most, root included)
    over the empty directory ``mountpoint``, in the helper's mount namespace."""

    def __init__(self, mountpoint: Path, *, size: int, inodes: int = 1000) -> None:
        for tool in ("unshare", "nsenter", "mount"):
            if shutil.which(tool) is None:
                pytest.fail(f"{tool} (util-linux) is needed to mount a test file system")
        mountpoint.mkdir(parents=True, exist_ok=True)
        self.mountpoint = mountpoint
        options = f"size={size},nr_inodes={inodes},mode=0755"
        self._helper = subprocess.Popen(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                'mount -t tmpfs -o "$1" golive-test "$2" && echo mounted && exec cat',
                "sh",
                options,
                str(mountpoint),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self._helper.stdout is not None
        if self._helper.stdout.readline().strip() != "mounted":  # EOF if the mount failed
            _, error = self._helper.communicate(timeout=TIMEOUT)
            pytest.fail(f"cannot mount a test file system (root is needed): {error.strip()}")
        #: Where this process reaches the file system (through the helper's root).
        self.path = Path(f"/proc/{self._helper.pid}/root") / mountpoint.relative_to("/")

    def remount_read_only(self) -> None:
        """Every change is refused from now on (``EROFS``), as after a disk error."""
        subprocess.run(
            [
                "nsenter",
                f"--target={self._helper.pid}",
                "--mount",
                "mount",
                "-o",
                "remount,ro",
                str(self.mountpoint),
            ],
            check=True,
            timeout=TIMEOUT,
            capture_output=True,
        )

    def fill(self, name: str = "filler") -> int:
        """Write a file until the file system is full; the bytes it took. Bounded by the
        size of the file system."""
        written = 0
        chunk = b"\0" * _FILL_CHUNK
        with (self.path / name).open("wb", buffering=0) as file:
            while True:
                try:
                    count = file.write(chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    return written
                written += count or 0

    def fill_inodes(self, folder: str = "") -> int:
        """Create empty files in ``folder`` until no inode is left; how many. Bounded by the
        file system's inode count."""
        count = 0
        while True:
            try:
                (self.path / folder / f"inode-{count}").touch()
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return count
            count += 1

    def free(self) -> int:
        """Bytes left for writing."""
        stat = os.statvfs(self.path)
        return stat.f_bavail * stat.f_frsize

    def close(self) -> None:
        """End the helper, and with its namespace the mount."""
        if self._helper.poll() is None:
            with contextlib.suppress(BrokenPipeError):
                assert self._helper.stdin is not None
                self._helper.stdin.close()
            try:
                self._helper.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self._helper.kill()
                self._helper.wait(TIMEOUT)
        for stream in (self._helper.stdout, self._helper.stderr):
            if stream is not None:
                stream.close()


@contextlib.contextmanager
def small_filesystem(
    mountpoint: Path, *, size: int, inodes: int = 1000
) -> Iterator[SmallFilesystem]:
    """A :class:`SmallFilesystem` for the block; unmounted (its namespace ended) afterwards."""
    filesystem = SmallFilesystem(mountpoint, size=size, inodes=inodes)
    try:
        yield filesystem
    finally:
        filesystem.close()
