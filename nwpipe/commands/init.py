"""``nwpipe init``: write a commented starter configuration.

The starter config passes ``nwpipe check`` as written: the webhook URL reads
``${SOC_URL}`` with a placeholder default, and the credentials stay commented out
until they are needed.
"""

from __future__ import annotations

import os
from pathlib import Path

from nwpipe.config import DEFAULT_CONFIG_FILE
from nwpipe.errors import NwpipeError

__all__ = ["STARTER_CONFIG", "InitError", "write_starter_config"]

STARTER_CONFIG = '''\
# nwpipe configuration, written by `nwpipe init`.
#
#     nwpipe check              # validate this file (names the key of any problem)
#     nwpipe check --probe      # also send one test event to each webhook output
#     nwpipe run events.jsonl   # or: ... | nwpipe run
#
# Any string may use ${VAR} or ${VAR:-default} from the environment. Keep secrets
# there, never in this file: nwpipe never prints or logs a setting's value.

# Events that cannot be read, mapped or delivered are appended here, with the reason.
dead_letter = "nwpipe-dead-letter.jsonl"

# -----------------------------------------------------------------------------------
# Outputs: where events go. An event goes to every output whose filters match it.
# -----------------------------------------------------------------------------------

# A webhook receiver, with the fields of a Netography portal webhook integration
# (Settings > Response Integrations > Webhook): URL, Headers, Username, Password and
# Skip SSL Verification. The portal's names (authusername, authpassword,
# skipsslverification) are accepted too.
[outputs.soc]
type = "webhook"

# URL: where each event is POSTed. Set SOC_URL, or write the URL here. Jinja is
# allowed in the path and query: "https://soc.example.com/netography/{{ customer }}"
url = "${SOC_URL:-https://soc.example.com/netography}"

# Headers: "Name: value" pairs separated by commas, as in the portal (or a table:
# headers = { "X-Netography" = "Webhook" }).
headers = "X-Netography: Webhook"

# Authentication (HTTP Basic Auth). Uncomment both and set SOC_PASSWORD in the
# environment; or use bearer_token = "${SOC_TOKEN}" instead.
# username = "netography"
# password = "${SOC_PASSWORD}"

# Skip SSL Verification: keep it false. For a receiver whose certificate comes from
# a private CA, give that CA instead:
skip_ssl_verification = false
# ca_file = "/etc/ssl/certs/soc-ca.pem"

# How events are reshaped for this receiver: [mappings.soc] below. Without a mapping
# the receiver gets each event exactly as Netography sends it.
mapping = "soc"

# Only some events? Filter by customer and/or with a Jinja expression:
# customers = ["acme", "globex"]
# when      = "severity in ['high', 'critical'] and alerttype != 'ongoing'"

# Also keep a local copy of every event, rotated by size:
# [outputs.archive]
# type         = "file"
# path         = "nwpipe-archive.jsonl"
# rotate_bytes = 104857600      # 100 MiB; rotate_keep = 5 old files by default

# -----------------------------------------------------------------------------------
# Mappings: how an event is reshaped. In order: start from the whole event
# (keep = true) or from nothing (keep = false), drop fields, rename fields, then set
# the fields below. Fields are always computed from the original event.
# -----------------------------------------------------------------------------------
[mappings.soc]
keep = false
# With keep = true, remove or move fields of the event:
# drop   = ["beta", "bypassdisplay", "bypassrule"]
# rename = { alerttype = "state" }

[mappings.soc.fields]
# A string starting with "$" is a jsonpath: one match gives the value, several a
# list, none null.
alert_id = "$.id"
customer = "$.customer"
state    = "$.alerttype"
src_ip   = "$.srcip[0]"

# A table gives options: a default when nothing matches, or always a list (of
# every match, even when there is one or none).
bits_max = { path = "$.metrics.bits.max", default = 0 }
dst_ips  = { path = "$.dstip[*]", list = true }

# A string with {{ }} is Jinja (sandboxed), rendered to text. Filters include
# isotime, join_ips, severity_number, lookup and human_duration.
title      = "{{ severity | upper }}: {{ algorithm }} {{ alerttype }} for {{ customer }}"
started_at = "{{ start | isotime }}"
sources    = "{{ srcip | join_ips }}"

# Typed Jinja: the text converted to int, float, bool or json.
severity_level = { template = "{{ severity | severity_number }}", type = "int" }
is_end         = { template = "{{ alerttype == 'end' }}", type = "bool" }

# Constants: any other string, a number, or { value = ... } (needed for a string
# that starts with "$").
vendor  = "netography"
version = 1
queue   = { value = "$SOC-L1" }

# A dotted name makes nested objects: {"links": {"portal": "..."}}.
"links.portal" = "https://portal.netography.com"

# A whole body from a template instead of fields: a file of your own (in a folder
# listed in `templates = ["templates"]` at the top of this file) or a ready-made one:
# slack.json.j2, teams.json.j2, pagerduty.json.j2, splunk_hec.json.j2, ecs.json.j2,
# flat.json.j2.
# [mappings.slack]
# template = "slack.json.j2"
'''


#: written by ``nwpipe init --serve``, after the dead-letter line of STARTER_CONFIG
SERVE_SECTION = '''
# -----------------------------------------------------------------------------------
# `nwpipe serve`: receive Netography's webhook directly. In the portal (Settings >
# Response Integrations > Webhook) set URL to https://THIS-HOST:8443/netography and
# Username/Password to the values below; nwpipe answers 2xx only once an event is in
# the durable queue, and delivers it to the outputs below from there.
# -----------------------------------------------------------------------------------
[serve]
listen = "0.0.0.0:8443"
path   = "/netography"
# The portal's Username and Password (authusername/authpassword work too). Set
# SERVE_PASSWORD in the environment.
username = "netography"
password = "${SERVE_PASSWORD:-change-me}"
# HTTPS: Netography posts over the internet, so give a certificate (PEM files).
# tls_cert = "/etc/nwpipe/cert.pem"
# tls_key  = "/etc/nwpipe/key.pem"
# max_body_bytes = 1048576     # larger bodies get 413
# metrics_listen = "127.0.0.1:9108"   # /healthz, /readyz, /metrics on their own port

# The durable queue (a SQLite file). "full" makes every acknowledged event survive a
# power cut too, not only a crash of nwpipe.
[queue]
path = "nwpipe-queue.db"
sync = "full"
'''


class InitError(NwpipeError):
    """The starter config cannot be written where asked."""


def starter_config(serve: bool = False) -> str:
    """The starter config; with ``serve``, with a ``[serve]`` and ``[queue]`` section."""
    if not serve:
        return STARTER_CONFIG
    marker = 'dead_letter = "nwpipe-dead-letter.jsonl"\n'
    return STARTER_CONFIG.replace(marker, marker + SERVE_SECTION, 1)


def write_starter_config(path: str | Path = DEFAULT_CONFIG_FILE, *, force: bool = False,
                         serve: bool = False) -> Path:
    """Write :data:`STARTER_CONFIG` (with ``serve``: :func:`starter_config` for
    ``nwpipe serve``) to ``path`` and return where it went.

    A folder gets ``nwpipe.toml`` inside it; a path ending in ``/`` is a folder, created
    when missing. An existing file is kept unless ``force``
    (InitError names it); a missing parent folder is an InitError too.
    """
    target = Path(path)
    if str(path).endswith(("/", os.sep)) and not target.exists():
        # `nwpipe init deploy/`: the trailing slash says a folder is meant
        try:
            target.mkdir(parents=True)
        except OSError as exc:
            raise InitError(f"{path}: cannot create the folder ({exc.strerror})") from None
    if target.is_dir():
        target = target / DEFAULT_CONFIG_FILE
    if not target.parent.is_dir():
        raise InitError(f"{target}: folder {target.parent} does not exist")
    try:
        # "x" refuses an existing file atomically: nothing is ever half-overwritten
        with open(target, "w" if force else "x", encoding="utf-8") as fh:
            fh.write(starter_config(serve))
    except FileExistsError:
        raise InitError(f"{target} already exists; use --force to overwrite it") from None
    except IsADirectoryError:
        raise InitError(f"{target} is a folder") from None
    except PermissionError:
        raise InitError(f"{target}: permission denied") from None
    return target
