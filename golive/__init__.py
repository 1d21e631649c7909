"""golive: a WebRTC SFU for live streaming (WHIP in, WHEP out, RTP forwarded unchanged)."""

__version__ = "0.1.0"
