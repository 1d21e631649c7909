"""Media on the event loop: aiortc peer connections that forward RTP without decoding.

Everything here runs on the event loop thread. What touches aiortc's private internals is in
:mod:`golive.media.hooks`, and ``tests/test_aiortc_internals.py`` fails loudly, naming the
attribute, if an aiortc upgrade moves one of them.
"""
