"""Network helpers: the lean HTTP/1.1 client, HTTP utilities and TLS contexts."""
