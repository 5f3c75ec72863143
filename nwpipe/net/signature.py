"""Standard Webhooks signatures (https://www.standardwebhooks.com): sign and verify.

The signature is HMAC-SHA256 over ``"{webhook-id}.{webhook-timestamp}.{body}"`` with
the secret's key, sent as ``webhook-signature: v1,<base64>`` (several may be given,
space-separated, while a secret is rotated). The webhook output signs with it; the
HTTP intake (``nwpipe serve``) verifies it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time

#: how far a signature's timestamp may be from now (the spec's recommendation)
TOLERANCE_SECONDS = 300


def signing_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret: base64 after an optional ``whsec_``."""
    raw = secret.strip()
    if raw.startswith("whsec_"):
        raw = raw[len("whsec_"):]
    raw += "=" * (-len(raw) % 4)
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("signing_secret must be 'whsec_' followed by base64") from None
    if not key:
        raise ValueError("signing_secret is empty")
    return key


def check_signing_secret(value: str) -> str:
    """A usable Standard Webhooks secret, for ``Setting(check=...)``."""
    signing_key(value)
    return value


def sign(key: bytes, message_id: str, timestamp: str, body: bytes) -> str:
    """The ``webhook-signature`` value (``v1,<base64>``) for one request."""
    digest = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(key: bytes, message_id: str | None, timestamp: str | None, signatures: str | None,
           body: bytes, *, now: float | None = None) -> str | None:
    """Why a request's signature is not valid, or None when it is.

    The reason never contains a header's value (it could be anything a client sent).
    """
    if not message_id or not timestamp or not signatures:
        return "missing webhook-id, webhook-timestamp or webhook-signature header"
    try:
        sent_at = int(timestamp)
    except ValueError:
        return "webhook-timestamp is not a number"
    now = time.time() if now is None else now
    if abs(now - sent_at) > TOLERANCE_SECONDS:
        return f"webhook-timestamp is more than {TOLERANCE_SECONDS} s away from now"
    expected = sign(key, message_id, timestamp, body)[3:].encode()
    valid = False
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        # every candidate is compared (in constant time), so the timing says nothing
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            valid = True
    return None if valid else "signature does not match"
