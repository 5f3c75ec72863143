"""Client TLS for outputs: one context, built once when an output opens."""

from __future__ import annotations

import ssl
from typing import Any


def client_context(config: dict[str, Any]) -> ssl.SSLContext:
    """The client TLS context for an output's settings.

    Verified by default (the system's CAs, or ``ca_file``), with a client certificate
    for mutual TLS (``client_cert``, ``client_key``), or with no verification at all
    when ``skip_ssl_verification`` is true.
    """
    if config.get("skip_ssl_verification"):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(cafile=config.get("ca_file"))
    if config.get("client_cert"):
        context.load_cert_chain(config["client_cert"], config.get("client_key"))
    return context
