"""A receiver that verifies nwpipe's signed requests, in every body format.

    pip install standardwebhooks
    WEBHOOK_SECRET=whsec_... python standardwebhooks_receiver.py 8080

The signature covers the raw body bytes as nwpipe sent them (before gzip): one event,
a JSON array batch or an ndjson batch. Verify those bytes first, then parse them.
"""

import json
import os
import sys
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

MAX_BODY = 16 * 1024 * 1024  # refuse larger bodies, also after gunzip
OUTPUT = threading.Lock()  # requests are handled in threads: keep lines whole


def gunzip(data: bytes) -> bytes:
    """The gzip body decompressed, refusing more than MAX_BODY bytes."""
    inflater = zlib.decompressobj(wbits=31)
    body = inflater.decompress(data, MAX_BODY + 1)
    if len(body) > MAX_BODY or not inflater.eof:
        raise ValueError("gzip body too large or cut short")
    return body


def verified_events(verifier: Webhook, body: bytes, headers: dict) -> list:
    """The events of one request, after its signature is checked over the raw bytes.

    Raises WebhookVerificationError when the request is forged, altered or stale,
    ValueError when the body cannot be read.
    """
    headers = {name.lower(): value for name, value in headers.items()}
    if headers.get("content-encoding", "").lower() == "gzip":
        body = gunzip(body)  # nwpipe signs the body before compressing it
    # json_parse=False: verify() would parse the body as one JSON document, and an
    # ndjson batch is not one
    verifier.verify(body, headers, json_parse=False)
    if not headers["webhook-id"].startswith("batch_"):
        return [json.loads(body)]  # one event
    if headers.get("content-type", "").startswith("application/x-ndjson"):
        return [json.loads(line) for line in body.splitlines() if line.strip()]
    return json.loads(body)  # a JSON array of events


class Handler(BaseHTTPRequestHandler):
    verifier: Webhook  # set at start, from WEBHOOK_SECRET

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.send_response(413)
            self.end_headers()
            return
        body = self.rfile.read(length)
        try:
            events = verified_events(self.verifier, body, dict(self.headers))
        except WebhookVerificationError:
            self.send_response(401)  # not from nwpipe, altered, or replayed late
        except (ValueError, KeyError):
            self.send_response(400)
        else:
            with OUTPUT:  # hand each event on; here: one JSON line on stdout
                for event in events:
                    print(json.dumps(event), flush=True)
            self.send_response(204)
        self.end_headers()


if __name__ == "__main__":
    Handler.verifier = Webhook(os.environ["WEBHOOK_SECRET"])  # the output's signing_secret
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    print(f"listening on port {server.server_address[1]}", file=sys.stderr, flush=True)
    server.serve_forever()
