"""The plugin's own test: run nwpipe with it against a real TCP listener on 127.0.0.1."""

import json
import subprocess
import sys
import threading
import socketserver


def test_events_arrive_as_json_lines(tmp_path):
    received = []

    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            for line in self.rfile:
                received.append(json.loads(line))

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    config = tmp_path / "nwpipe.toml"
    config.write_text(f'[outputs.c]\ntype = "tcp-jsonl"\nhost = "127.0.0.1"\nport = {port}\n')
    events = "".join(json.dumps({"id": f"a{i}", "customer": "acme", "alerttype": "start"}) + "\n"
                     for i in range(5))
    proc = subprocess.run([sys.executable, "-m", "nwpipe", "run", "-c", str(config)],
                          input=events, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    server.shutdown()
    server.server_close()
    assert [e["id"] for e in received] == [f"a{i}" for i in range(5)]
