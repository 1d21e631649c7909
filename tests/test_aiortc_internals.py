"""Fail loudly, naming the attribute, if aiortc or aioice moved a private name golive hooks.

golive forwards RTP by hooking aiortc's internals (golive/media/hooks.py); aiortc is pinned
exactly in pyproject.toml. An upgrade that breaks a hook must fail here first, with the name.
"""

from __future__ import annotations

import inspect
from importlib.metadata import version

import aioice.ice
import aioice.stun
import aiortc.codecs
import aiortc.rtcdtlstransport
import aiortc.rtcpeerconnection
import aiortc.rtcrtpreceiver
import aiortc.rtp
import pytest
from aiortc import RTCPeerConnection

from golive.media.hooks import (
    ForwardingPeerConnection,
    ForwardingReceiver,
    ForwardingSender,
    GuardedDtlsTransport,
)


def missing(obj: object, names: list[str]) -> list[str]:
    return [f"{type(obj).__name__}.{name}" for name in names if not hasattr(obj, name)]


def test_pinned_versions() -> None:
    assert version("aiortc") == "1.16.0", "golive/media/hooks.py was written for aiortc 1.16.0"
    assert version("aioice") == "0.13.0", "golive/media/hooks.py was written for aioice 0.13.0"


def test_module_level_names() -> None:
    assert hasattr(RTCPeerConnection, "_RTCPeerConnection__createTransceiver"), (
        "RTCPeerConnection.__createTransceiver (name-mangled) is gone"
    )
    assert isinstance(aiortc.codecs.CODECS.get("video"), list), "aiortc.codecs.CODECS['video']"
    assert getattr(aiortc.rtcpeerconnection, "CODECS", None) is aiortc.codecs.CODECS, (
        "aiortc.rtcpeerconnection no longer negotiates from aiortc.codecs.CODECS"
    )
    assert callable(aiortc.rtcpeerconnection.is_codec_compatible), "is_codec_compatible"
    assert hasattr(aiortc.rtp, "DYNAMIC_PAYLOAD_TYPES"), "aiortc.rtp.DYNAMIC_PAYLOAD_TYPES"
    source = inspect.getsource(aiortc.rtcpeerconnection.find_common_codecs)
    assert "rtp.DYNAMIC_PAYLOAD_TYPES" in source, "find_common_codecs no longer reads it"
    for name in ("NackGenerator", "StreamStatistics"):
        assert hasattr(aiortc.rtcrtpreceiver, name), f"aiortc.rtcrtpreceiver.{name}"
    parameters = list(inspect.signature(aioice.ice.get_host_addresses).parameters)
    assert parameters == ["use_ipv4", "use_ipv6"], "aioice.ice.get_host_addresses(...)"


@pytest.mark.asyncio
async def test_instance_names() -> None:
    pc = ForwardingPeerConnection()
    try:
        transceiver = pc.addTransceiver("video", direction="recvonly")
        receiver, sender = transceiver.receiver, transceiver.sender
        assert isinstance(receiver, ForwardingReceiver), "the receiver class swap failed"
        assert isinstance(sender, ForwardingSender), "the sender class swap failed"
        dtls = receiver.transport
        ice = dtls.transport
        problems = [
            *missing(transceiver, ["_codecs"]),
            *missing(
                receiver,
                [
                    "_RTCRtpReceiver__kind",
                    "_RTCRtpReceiver__rtcp_ssrc",
                    "_RTCRtpReceiver__decoder_thread",
                    "_send_rtcp",
                    "_send_rtcp_nack",
                    "_send_rtcp_pli",
                    "_set_rtcp_ssrc",
                ],
            ),
            *missing(sender, ["_ssrc", "_rtx_ssrc"]),
            *missing(
                dtls,
                [
                    "_register_rtp_receiver",
                    "_unregister_rtp_receiver",
                    "_register_rtp_sender",
                    "_unregister_rtp_sender",
                    "_state",
                    "_tx_srtp",
                    "_role",
                    "_set_role",
                ],
            ),
            *missing(ice, ["_connection"]),
            *missing(ice._connection, ["_nominated", "_closing", "_protocols", "_check_list"]),
            *missing(dtls, ["_recv_next", "_rtp_router"]),
            *missing(dtls._rtp_router, ["ssrc_table"]),
        ]
        assert isinstance(dtls, GuardedDtlsTransport), "the DTLS transport class swap failed"
        assert getattr(ice._connection, "golive_guard", None) is not None, (
            "the ICE connection is not marked"
        )
        assert problems == [], f"aiortc/aioice internals golive uses are gone: {problems}"
        # What aiortc calls on receivers and senders, which golive overrides.
        for cls, names in (
            (ForwardingReceiver, ["receive", "stop", "_handle_rtp_packet", "_handle_rtcp_packet"]),
            (ForwardingSender, ["send", "stop", "_handle_rtcp_packet"]),
        ):
            for name in names:
                assert name in vars(cls), f"{cls.__name__}.{name} must override aiortc's"
                base = cls.__mro__[1]
                assert hasattr(base, name), f"aiortc's {base.__name__}.{name} is gone"
    finally:
        await pc.close()


def test_prompt_ice_completion_names() -> None:
    """What PromptConnection relies on: aioice's connect() paces its rounds with a 20 ms
    sleep, and _check_list_maybe_complete is where the check list is found complete."""
    connection = aioice.ice.Connection
    assert "asyncio.sleep(0.02)" in inspect.getsource(connection.connect), (
        "aioice Connection.connect no longer paces with asyncio.sleep(0.02)"
    )
    assert "ICE_COMPLETED" in inspect.getsource(connection._check_list_maybe_complete), (
        "aioice Connection._check_list_maybe_complete no longer completes the check list"
    )
    assert inspect.iscoroutinefunction(connection.close), "aioice Connection.close"


def test_patient_ice_names() -> None:
    """What PromptConnection's patience (peer-reflexive candidates after end-of-candidates)
    relies on: aioice asks _remote_candidates_expected whether to keep checking and whether
    the check list may fail, prunes components in _prune_components, and ends the remote
    candidates (prune, then complete or fail) in _end_remote_candidates."""
    connection = aioice.ice.Connection
    for method, called in (
        (connection._check_periodic, "self._remote_candidates_expected()"),
        (connection._check_list_maybe_fail, "self._remote_candidates_expected()"),
        (connection._end_remote_candidates, "self._prune_components()"),
        (connection._end_remote_candidates, "self._check_list_maybe_fail()"),
        (connection.check_incoming, "Learning peer-reflexive candidates"),
    ):
        assert called in inspect.getsource(method), f"aioice {method.__qualname__}: {called}"
    instance = connection(ice_controlling=False)
    assert missing(instance, ["_remote_candidates_end", "_check_list_done", "_components"]) == []


def test_bitrate_estimator_names() -> None:
    """What hooks.EstimatorOnFirstUse stands in for: the estimator every video receiver makes
    in its __init__, fed only from aiortc's own _handle_rtp_packet."""
    source = inspect.getsource(aiortc.rtcrtpreceiver.RTCRtpReceiver.__init__)
    assert "RemoteBitrateEstimator()" in source, "RTCRtpReceiver no longer makes its estimator"
    assert hasattr(aiortc.rtcrtpreceiver, "RemoteBitrateEstimator"), (
        "aiortc.rtcrtpreceiver.RemoteBitrateEstimator"
    )
    handler = inspect.getsource(aiortc.rtcrtpreceiver.RTCRtpReceiver._handle_rtp_packet)
    assert "self.__remote_bitrate_estimator.add(" in handler, "the estimator is fed otherwise"


def test_candidate_pair_fast_path_names() -> None:
    pair = aioice.ice.CandidatePair
    assert "protocol" in inspect.signature(pair.__init__).parameters, "CandidatePair.protocol"
    assert hasattr(pair, "remote_addr"), "aioice CandidatePair.remote_addr"
    assert hasattr(aioice.ice.StunProtocol, "send_data"), "aioice StunProtocol"


def test_datagram_screen_names() -> None:
    """What golive's screen of incoming datagrams (hooks.screen_datagram) relies on."""
    protocol = aioice.ice.StunProtocol
    parameters = list(inspect.signature(protocol.datagram_received).parameters)
    assert parameters == ["self", "data", "addr"], "aioice StunProtocol.datagram_received"
    assert "self.receiver.data_received(" in inspect.getsource(
        getattr(protocol.datagram_received, "golive_original", protocol.datagram_received)
    ), "aioice no longer hands non-STUN datagrams to the connection from datagram_received"
    pair = aioice.ice.CandidatePair(None, None)  # type: ignore[arg-type]
    assert hasattr(pair, "remote_nominated"), "aioice CandidatePair.remote_nominated"
    assert hasattr(pair, "state"), "aioice CandidatePair.state"
    assert hasattr(aioice.ice.CandidatePair.State, "SUCCEEDED"), "CandidatePair.State.SUCCEEDED"
    assert callable(aioice.stun.parse_message), "aioice.stun.parse_message"
    assert hasattr(RTCPeerConnection, "_RTCPeerConnection__createDtlsTransport"), (
        "RTCPeerConnection.__createDtlsTransport (name-mangled) is gone"
    )
    run = inspect.getsource(aiortc.rtcdtlstransport.RTCDtlsTransport._RTCDtlsTransport__run)  # type: ignore[attr-defined]
    assert "self._recv_next()" in run, "aiortc's DTLS receive loop no longer calls _recv_next"


def test_srtp_names_the_c_fan_out_uses() -> None:
    """The C fan-out protects with libsrtp inside pylibsrtp: its ``srtp_protect`` (libsrtp 2's
    signature) and a session's ``srtp_t`` (``Session._srtp``)."""
    import pylibsrtp  # noqa: PLC0415  only this test needs it directly
    from pylibsrtp._binding import ffi, lib  # type: ignore[import-not-found]  # noqa: PLC0415

    assert version("pylibsrtp") == "1.0.0", "golive/media/hooks.py was written for pylibsrtp 1.0.0"
    signature = ffi.getctype(ffi.typeof(ffi.addressof(lib, "srtp_protect")))
    assert signature == "srtp_err_status_t(*)(struct srtp_ctx_t_ *, void *, int *)", signature
    assert pylibsrtp.SRTP_MAX_TRAILER_LEN <= 144, "the C fan-out reserves 144 bytes of trailer"
    session = pylibsrtp.Session()
    assert ffi.typeof(session._srtp) is ffi.typeof("srtp_t *"), "pylibsrtp Session._srtp"
