"""The TURN credentials told to clients in ``Link`` headers (RFC 9725 section 4.6).

Two schemes, one at a time (``golive.config`` refuses both):

- ``TURN_USERNAME``/``TURN_PASSWORD``: the same static pair in every answer.
- ``TURN_SECRET``: TURN REST credentials (draft-uberti-behave-turn-rest; coturn's
  ``use-auth-secret`` with ``static-auth-secret`` = ``TURN_SECRET``). Each answer gets a fresh
  ``username = "<unix expiry>:<room>"`` and ``credential = base64(HMAC-SHA1(TURN_SECRET,
  username))``; the TURN server recomputes the HMAC and refuses the pair once the expiry has
  passed (``TURN_CREDENTIAL_TTL_SECONDS`` ahead, a day by default). The user part names the
  room, which ``/api/rooms`` lists anyway: never a token, a session id or anything secret
  (STUN sends the username in the clear).

Either way, only requests whose credential admits the room get them (``golive.http.whip``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import NamedTuple

from golive.config import Config

__all__ = ["TurnCredentials", "rest_credential", "turn_credentials"]


class TurnCredentials(NamedTuple):
    username: str
    credential: str


def rest_credential(secret: str, username: str) -> str:
    """``base64(HMAC-SHA1(secret, username))``: what coturn computes for ``username``."""
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def turn_credentials(config: Config, room: str, now: float | None = None) -> TurnCredentials | None:
    """The TURN username and credential for an answer about ``room``; None without any."""
    if config.turn_secret:
        expiry = int(time.time() if now is None else now) + config.turn_credential_ttl_seconds
        username = f"{expiry}:{room}"
        return TurnCredentials(username, rest_credential(config.turn_secret, username))
    if config.turn_username:
        return TurnCredentials(config.turn_username, config.turn_password)
    return None
