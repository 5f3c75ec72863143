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
        load_cert_chain(context, config["client_cert"], config.get("client_key"),
                        names=("client_cert", "client_key"))
    return context


class CertificateError(ValueError):
    """A certificate or key that does not load; ``key`` is the setting to fix."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class _PassPhraseAsked(Exception):
    """OpenSSL wanted a pass phrase for the key."""


def _no_prompt() -> bytes:
    # without a password callback OpenSSL asks on the terminal ("Enter PEM pass
    # phrase:"), which blocks a service or a check; an encrypted key is a config error
    raise _PassPhraseAsked


def load_cert_chain(context: ssl.SSLContext, cert: str, key: str | None, *,
                    names: tuple[str, str]) -> None:
    """Load a PEM certificate (chain) and its key into ``context``, never asking for a
    pass phrase. CertificateError says which setting (``names``: the certificate's and the
    key's) to fix and why: no certificate, no key, an encrypted key, a key that does
    not belong to the certificate."""
    cert_name, key_name = names
    key_file = key or cert
    key_where = key_name if key else cert_name
    try:
        context.load_cert_chain(cert, key, password=_no_prompt)
        return
    except _PassPhraseAsked:
        raise CertificateError(key_where, f"the private key in {key_file} is encrypted "
                               "(has a pass phrase), which nwpipe cannot ask for; write it "
                               "without one (openssl pkey -in KEY -out PLAIN_KEY) and keep "
                               "that file readable by nwpipe only") from None
    except OSError as exc:  # ssl.SSLError is an OSError too
        problem = exc
    texts = {}
    for path in {cert, key_file}:
        try:
            with open(path, "rb") as f:
                texts[path] = f.read()
        except OSError as exc:
            raise CertificateError(key_where if path == key_file else cert_name,
                                   f"cannot read {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN CERTIFICATE-----" not in texts[cert]:
        raise CertificateError(cert_name, f"{cert} holds no PEM certificate "
                                          "(-----BEGIN CERTIFICATE-----)")
    if b"PRIVATE KEY-----" not in texts[key_file]:
        hint = "" if key else f" (set {key_name} to the key's file)"
        raise CertificateError(key_where, f"{key_file} holds no PEM private key{hint}")
    if "KEY_VALUES_MISMATCH" in str(problem):
        raise CertificateError(key_where, f"the key in {key_file} does not belong to the "
                                          f"certificate in {cert}")
    reason = getattr(problem, "reason", None) or problem.strerror or problem
    raise CertificateError(cert_name, f"cannot load {cert} with the key in {key_file}: {reason}")


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
    except CertificateError:
        raise  # it names the setting and the problem
    except (ssl.SSLError, OSError) as exc:
        which = "client_cert/client_key" if config.get("client_cert") else "ca_file"
        raise ValueError(f"cannot load {which}: {exc.strerror or exc}") from None
