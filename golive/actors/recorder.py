"""Recorder actors (one per published track, writing files off the event loop).

Not built yet: recording arrives with the recording-and-upload issue. ``RECORD_ENABLED`` is
parsed and reported by ``/api/bootstrap``, but nothing is recorded.
"""
