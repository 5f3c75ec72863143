"""The webhook output's parts, in the order a request goes through them (the output
itself, with its settings, is the built-in plugin ``nwpipe_plugins.webhook``).

- :mod:`.checks`: settings checks, run when the config loads;
- :mod:`.templates`: URL and header templates, compiled once, rendered per event;
- :mod:`.request`: one request's body and per-request headers from a batch;
- :mod:`.transport`: how a request travels (lean HTTP/1.1 client or aiohttp);
- :mod:`.classify`: an answer or a client error as Delivered, Retry or Failed;
- :mod:`.redaction`: what of the configuration a message must never show.
"""
