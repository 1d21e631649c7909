"""The uploader on both of minio's APIs (issue 14, item 5).

minio 7.2.19 made every argument of every call keyword-only; 7.2.20 (what requirements.lock
pins) took that back, and minio 8 brings it again (with ``get_part_info`` made private). The
uploader names every argument and computes its part size itself, so it works on both. This
runs the upload tests (tests/test_uploader.py, against moto's S3 server, nothing mocked) a
second time, in a fresh interpreter whose ``minio`` is the keyword-only one the Makefile
installs into ``.venv/minio-kwonly`` (requirements-minio-kwonly.lock).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KWONLY = Path(sys.prefix) / "minio-kwonly"
SHOW_API = (
    "import inspect, minio; "
    "kind = inspect.signature(minio.Minio.put_object).parameters['bucket_name'].kind; "
    "print(minio.__version__, kind.name)"
)


def pinned_version() -> str:
    for line in (ROOT / "requirements-minio-kwonly.lock").read_text().splitlines():
        if line.startswith("minio=="):
            return line.removeprefix("minio==").split()[0]
    raise AssertionError("requirements-minio-kwonly.lock pins no minio")


@pytest.mark.timeout(300)
def test_the_upload_tests_pass_on_minios_keyword_only_api() -> None:
    if not (KWONLY / ".installed").exists():
        pytest.fail(f"{KWONLY} is missing: `make setup` installs it")
    env = {**os.environ, "PYTHONPATH": str(KWONLY)}
    shown = subprocess.run(
        [sys.executable, "-c", SHOW_API],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert shown.stdout.split() == [pinned_version(), "KEYWORD_ONLY"]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/test_uploader.py",
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-10_000:] + result.stderr[-2_000:]
    assert " passed" in result.stdout.splitlines()[-1]
