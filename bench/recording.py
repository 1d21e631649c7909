"""What recording costs: the event loop's share (one tell per packet) and the recorder
thread's (frame assembly and writing), per packet, for each recorded codec.

Run with ``make bench``. Medians over several rounds; the machines are shared and noisy, so
read orders of magnitude and ratios, not the last digit.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import pykka

from golive.actors.messages import RecordPacket
from golive.media.recording import TrackRecording
from tests.recording.streams import h264_frames, opus_frames, packetize, vp8_frames

ROUNDS = 5
TELLS = 20_000


class _Sink(pykka.ThreadingActor):
    def on_receive(self, _message: object) -> None:
        return None


def tell_cost() -> float:
    """Microseconds the loop spends telling one 1200-byte packet to an actor."""
    ref = _Sink.start()
    data = bytes(1200)
    runs = []
    try:
        for _ in range(ROUNDS):
            start = time.perf_counter()
            for _ in range(TELLS):
                ref.tell(RecordPacket(data))
            runs.append((time.perf_counter() - start) / TELLS * 1e6)
    finally:
        ref.stop()
    return statistics.median(runs)


def recorder_cost(codec: str, packets: list[bytes], directory: Path) -> float:
    """Microseconds the recorder's thread spends per packet: assembly, gate and writing."""
    runs = []
    for round_number in range(ROUNDS):
        path = directory / f"bench_{round_number}.{codec.split('/')[1].lower()}"
        path.touch()
        recording = TrackRecording(path, codec)
        start = time.perf_counter()
        for packet in packets:
            recording.push(packet)
        recording.close()
        runs.append((time.perf_counter() - start) / len(packets) * 1e6)
    return statistics.median(runs)


def main() -> None:
    print(f"loop side: {tell_cost():.1f} µs per recorded packet (one tell, any number of viewers)")
    streams = {
        "video/VP8": packetize(vp8_frames(300, 60)),
        "video/H264": packetize(h264_frames(300, 60)),
        "audio/opus": packetize(opus_frames(500)),
    }
    with tempfile.TemporaryDirectory() as directory:
        for codec, packets in streams.items():
            cost = recorder_cost(codec, packets, Path(directory))
            print(f"recorder thread, {codec}: {cost:.1f} µs per packet ({len(packets)} packets)")


if __name__ == "__main__":
    main()
