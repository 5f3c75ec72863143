"""The ``[serve]`` table: settings of the HTTP intake (``nwpipe serve``), validated.

Kept apart from the server itself so that ``nwpipe check`` validates the table without
importing aiohttp's server. The Netography portal's field names are accepted too
(``authusername``/``authpassword``), so a user can copy an integration across.
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass
from typing import Any

from nwpipe.errors import ConfigError, NwpipeError
from nwpipe.net.signature import signing_key
from nwpipe.net.tls import CertificateError, load_cert_chain
from nwpipe.settings import Setting, existing_file, positive_seconds, validate_settings

DEFAULT_LISTEN = "127.0.0.1:8080"


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) as (host, port); ValueError names the problem."""
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:8080 or 0.0.0.0:8080)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"{value!r}: write an IPv6 address in brackets, e.g. [::1]:8080")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is not between 0 and 65535")
    return host, port


def check_listen(flag: str, value: str) -> None:
    """A command line's ``HOST:PORT``: NwpipeError naming ``flag`` when it is not one."""
    try:
        parse_listen(value)
    except ValueError as exc:
        raise NwpipeError(f"{flag}: {exc}") from None


def _check_listen(value: str) -> str:
    parse_listen(value)
    return value


def _check_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("must start with '/' (e.g. \"/\" or \"/netography\")")
    if any(c in value for c in "?# \t") or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must be a plain URL path (no query, fragment, spaces or controls)")
    return value


def _check_secret(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    return value


#: the shortest signing key ``[serve]`` accepts, in bytes after decoding: a shorter HMAC
#: key can be guessed offline from one signed request
MIN_SIGNING_KEY_BYTES = 16


def _check_signing_secret(value: str) -> str:
    """A Standard Webhooks secret whose key (base64 after an optional ``whsec_``, as
    the spec writes it) is at least :data:`MIN_SIGNING_KEY_BYTES` long."""
    size = len(signing_key(value))
    if size < MIN_SIGNING_KEY_BYTES:
        raise ValueError(f"signing_secret is too short: its key is {size} bytes after "
                         f"base64 decoding, at least {MIN_SIGNING_KEY_BYTES} are needed "
                         "(e.g. 'whsec_' followed by 32 random bytes in base64)")
    return value


def _at_least_one(value: int) -> int:
    if value < 1:
        raise ValueError("must be at least 1")
    return value


SERVE = {
    "listen": Setting(str, default=DEFAULT_LISTEN, check=_check_listen,
                      help="HOST:PORT the intake listens on"),
    "path": Setting(str, default="/", check=_check_path,
                    help="URL path that accepts POSTed events"),
    "username": Setting(str, default=None, aliases=("authusername",),
                        help="HTTP Basic Auth user name senders must give"),
    "password": Setting(str, default=None, aliases=("authpassword",), secret=True,
                        check=_check_secret, help="HTTP Basic Auth password senders must give"),
    "bearer_token": Setting(str, default=None, secret=True, check=_check_secret,
                            help="token senders must give as 'Authorization: Bearer ...'"),
    "signing_secret": Setting(str, default=None, secret=True, check=_check_signing_secret,
                              help="'whsec_...': require a valid Standard Webhooks signature"),
    "tls_cert": Setting(str, default=None, check=existing_file,
                        help="PEM certificate (chain) to serve HTTPS with"),
    "tls_key": Setting(str, default=None, check=existing_file,
                       help="PEM key of tls_cert (if not in the same file)"),
    "max_body_bytes": Setting(int, default=1 << 20, check=_at_least_one,
                              help="largest accepted request body (413 beyond)"),
    "read_timeout": Setting(float, default=10.0, check=positive_seconds,
                            help="seconds a client has to send its headers, and its body"),
    "max_connections": Setting(int, default=256, check=_at_least_one,
                               help="open client connections at most; more are closed at once"),
    "metrics_listen": Setting(str, default=None, check=_check_listen,
                              help="HOST:PORT for /healthz, /readyz and /metrics on their own"),
}


@dataclass(frozen=True)
class ServeSettings:
    """A validated ``[serve]`` table (the defaults when the config has none)."""

    listen: str = DEFAULT_LISTEN
    path: str = "/"
    username: str | None = None
    password: str | None = None
    bearer_token: str | None = None
    signing_secret: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    max_body_bytes: int = 1 << 20
    read_timeout: float = 10.0
    max_connections: int = 256
    metrics_listen: str | None = None
    #: True when the config has a [serve] table (not only the defaults)
    configured: bool = False

    def describe(self) -> str:
        """One line for ``nwpipe check`` (never a secret)."""
        auth = ("Basic Auth" if self.username is not None else
                "bearer token" if self.bearer_token is not None else "no authentication")
        parts = [f"{'https' if self.tls_cert else 'http'}://{self.listen}{self.path}", auth]
        if self.signing_secret:
            parts.append("Standard Webhooks signatures required")
        parts.append(f"max_body_bytes {self.max_body_bytes}")
        if self.metrics_listen:
            parts.append(f"metrics on {self.metrics_listen}")
        return "; ".join(parts)

    @property
    def secrets(self) -> list[str]:
        """Values never to show in a message or log line."""
        return [s for s in (self.password, self.bearer_token, self.signing_secret) if s]

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server TLS context (None: plain HTTP)."""
        if not self.tls_cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        load_cert_chain(context, self.tls_cert, self.tls_key, names=("tls_cert", "tls_key"))
        return context


class SettingProblem(ValueError):
    """A problem with settings that go together, naming the ``key`` to fix."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def settings_from(values: dict[str, Any]) -> ServeSettings:
    """Validated ``[serve]`` keys (see :data:`SERVE`) as ServeSettings, after the checks
    of keys that go together; SettingProblem names the key."""
    if (values["username"] is None) != (values["password"] is None):
        missing = "password" if values["password"] is None else "username"
        raise SettingProblem(missing, "Basic Auth needs both username and password")
    if values["bearer_token"] is not None and values["username"] is not None:
        raise SettingProblem("bearer_token",
                             "set either username/password or bearer_token, not both")
    if values["tls_key"] and not values["tls_cert"]:
        raise SettingProblem("tls_key", "tls_key is set but tls_cert is not")
    settings = ServeSettings(**values, configured=True)
    try:
        settings.ssl_context()
    except CertificateError as exc:
        raise SettingProblem(exc.key, exc.message) from None
    except (ssl.SSLError, OSError) as exc:
        raise SettingProblem("tls_cert", f"cannot load tls_cert/tls_key: "
                                         f"{exc.strerror or exc}") from None
    return settings


def build_serve_settings(table: dict[str, Any] | None, *, file: str | None = None) -> ServeSettings:
    """Validate a ``[serve]`` table; ConfigError names ``serve.<key>`` and the problem."""
    if table is None:
        return ServeSettings()
    values = validate_settings(table, SERVE, key="serve", file=file)
    try:
        return settings_from(values)
    except SettingProblem as exc:
        raise ConfigError(exc.message, key=f"serve.{exc.key}", file=file) from None
