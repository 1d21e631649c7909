"""Debian's ffprobe and ffmpeg as the judges of a recording."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Probe:
    codec: str
    frames: int  # decoded frames (video) or packets (audio)
    duration: float  # the container's duration as ffprobe reports it, seconds
    width: int
    height: int


def decode_errors(path: Path) -> str:
    """What ``ffmpeg -v error -i F -f null -`` prints: empty for a clean file."""
    result = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-f", "null", "-"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return (result.stderr + ("" if result.returncode == 0 else f"exit {result.returncode}")).strip()


def probe(path: Path) -> Probe:
    result = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-count_packets",
            "-show_entries",
            "format=duration:stream=codec_name,nb_read_packets,width,height",
            "-of",
            "json",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    data = json.loads(result.stdout)
    stream = data["streams"][0]
    return Probe(
        codec=stream["codec_name"],
        frames=int(stream.get("nb_read_packets", 0)),
        duration=float(data["format"].get("duration", "nan")),
        width=int(stream.get("width", 0)),
        height=int(stream.get("height", 0)),
    )
