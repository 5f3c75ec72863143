"""Client TLS for outputs: one context, built once when an output opens."""

from __future__ import annotations

import ssl
from typing import Any

from nwpipe.settings import Setting, existing_file


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


def tls_settings(peer: str, prefix: str = "") -> dict[str, Setting]:
    """The TLS settings an output declares; ``peer`` names what it connects to in help
    texts ("the receiver"), ``prefix`` marks settings used with one protocol only."""
    return {
        "skip_ssl_verification": Setting(bool, default=False, aliases=("skipsslverification",),
                                         help=f"{prefix}do not verify the TLS certificate "
                                              "(warns)"),
        "ca_file": Setting(str, default=None, check=existing_file,
                           help=f"{prefix}PEM CA bundle to verify {peer} with"),
        "client_cert": Setting(str, default=None, check=existing_file,
                               help=f"{prefix}PEM client certificate for mutual TLS"),
        "client_key": Setting(str, default=None, check=existing_file,
                              help=f"{prefix}PEM key of client_cert (if not in the same file)"),
    }


def check_tls_files(config: dict[str, Any]) -> None:
    """Raise ValueError, when the config loads, for TLS files that do not go together or
    do not load (for ``Output.check_config``)."""
    if config.get("client_key") and not config.get("client_cert"):
        raise ValueError("client_key is set but client_cert is not")
    if not (config.get("ca_file") or config.get("client_cert")):
        # no file of the user's to load: building the context here would only load the
        # system's CAs (milliseconds of start-up, for an http:// URL too)
        return
    try:
        client_context(config)
    except (ssl.SSLError, OSError) as exc:
        which = "client_cert/client_key" if config.get("client_cert") else "ca_file"
        raise ValueError(f"cannot load {which}: {exc.strerror or exc}") from None
