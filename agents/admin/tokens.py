"""Orkes' token flow on the server side: `POST /api/token` → a signed JWT, `X-Authorization`.

Tokens are HS256 JWTs made and checked with PyJWT: `sub` is the user (`app:<application id>`),
`kid` the access key that asked for it, `exp` its expiry (`herald.admin.tokenTtlSeconds`). The
signing key is derived from the configuration's admin `keySecret`, so every worker verifies
every worker's tokens and rotating that secret ends all of them.

A token is good only while its key is: every request looks the key up in the admin state, so a
key deactivated or deleted (or its application deleted) stops working on every worker as soon
as the worker has read the change, within seconds, whatever the token's expiry says.

Errors are Orkes' (conductor-python renews its token on exactly these): 401 with
`{"error": "EXPIRED_TOKEN"}` or `{"error": "INVALID_TOKEN"}`.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

import jwt

from streams.access import AccessState, app_user, secret_matches
from streams.config.models import AdminApi

ISSUER = "herald"
#: The administrator of the configuration: an application that is not stored anywhere.
CONFIG_ADMIN_APP = "herald-admin"


@dataclass(frozen=True)
class Caller:
    """Who a request comes from."""

    user: str  # app:<application id>
    key_id: str
    configured_admin: bool  # the configuration's admin key


class AuthError(Exception):
    """A request that is not authenticated: `code` is Orkes' error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Tokens:
    def __init__(self, settings: AdminApi) -> None:
        self.settings = settings
        secret = settings.keySecret.get_secret_value().encode()
        self._signing_key = hmac.new(secret, b"herald admin token signing", hashlib.sha256).digest()

    def issue(self, key_id: str, key_secret: str, state: AccessState) -> str:
        """A token for an access key, or AuthError when the id or secret is wrong or the key
        is not active."""
        settings = self.settings
        if key_id == settings.keyId:
            if not hmac.compare_digest(
                key_secret.encode(), settings.keySecret.get_secret_value().encode()
            ):
                raise AuthError("INVALID_CREDENTIALS", "invalid access key id or secret")
            user = app_user(CONFIG_ADMIN_APP)
        else:
            key = state.keys.get(key_id)
            if key is None or not secret_matches(key_secret, key["salt"], key["hash"]):
                raise AuthError("INVALID_CREDENTIALS", "invalid access key id or secret")
            if key.get("status") != "ACTIVE" or key["applicationId"] not in state.applications:
                raise AuthError("INVALID_CREDENTIALS", "the access key is not active")
            user = app_user(key["applicationId"])
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": user,
            "kid": key_id,
            "iat": now,
            "exp": now + settings.tokenTtlSeconds,
        }
        return jwt.encode(claims, self._signing_key, algorithm="HS256")

    def verify(self, token: str | None, state: AccessState) -> Caller:
        """The caller a token names, or AuthError (missing, bad signature, expired, or its
        key no longer active)."""
        if not token:
            raise AuthError("INVALID_TOKEN", "no token: send X-Authorization (POST /api/token)")
        try:
            claims = jwt.decode(
                token,
                self._signing_key,
                algorithms=["HS256"],
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "kid"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("EXPIRED_TOKEN", "the token has expired") from None
        except jwt.InvalidTokenError:
            raise AuthError("INVALID_TOKEN", "the token is not valid") from None
        key_id, user = str(claims["kid"]), str(claims["sub"])
        if key_id == self.settings.keyId and user == app_user(CONFIG_ADMIN_APP):
            return Caller(user, key_id, True)
        key = state.keys.get(key_id)
        if (
            key is None
            or key.get("status") != "ACTIVE"
            or app_user(key["applicationId"]) != user
            or key["applicationId"] not in state.applications
        ):
            raise AuthError("INVALID_TOKEN", "the token's access key is no longer active")
        return Caller(user, key_id, False)
