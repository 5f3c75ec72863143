"""The plugin's own tests: the real nwpipe command with the plugin installed, and the
output driven directly, against real TCP listeners on 127.0.0.1."""

import asyncio
import json
import os
import socket
import socketserver
import subprocess
import sys
import threading

from nwpipe_example_plugin import TcpJsonlOutput, defang

from nwpipe import Delivered, Delivery, Failed, Retry


def nwpipe(*args, input=None, cwd=None):
    # load only this plugin, whatever else is installed
    env = {**os.environ, "NWPIPE_LOAD_PLUGINS": "tcp_jsonl"}
    env.pop("NWPIPE_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "nwpipe", *args], input=input, cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=60)


class Collector:
    """A threaded TCP server collecting JSON lines."""

    def __init__(self, port=0):
        self.received = []
        collector = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                for line in self.rfile:
                    collector.received.append(json.loads(line))

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()  # waits for the handlers: every line is in


def events(count):
    return "".join(json.dumps({"id": f"a{i}", "customer": "acme", "alerttype": "start",
                               "srcip": [f"10.0.0.{i}"]}) + "\n" for i in range(count))


def test_plugin_is_listed_with_its_output_type_and_filter():
    proc = nwpipe("plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    plugin = {p["name"]: p for p in json.loads(proc.stdout)}["tcp_jsonl"]
    assert plugin["output_types"] == ["tcp-jsonl"]
    assert plugin["jinja_filters"] == ["defang"]


def test_events_arrive_as_json_lines_in_order(tmp_path):
    collector = Collector()
    config = tmp_path / "nwpipe.toml"
    config.write_text(f'[outputs.c]\ntype = "tcp-jsonl"\nhost = "127.0.0.1"\n'
                      f'port = {collector.port}\n')
    proc = nwpipe("run", "-c", str(config), input=events(5), cwd=tmp_path)
    collector.stop()
    assert proc.returncode == 0, proc.stderr
    assert [e["id"] for e in collector.received] == [f"a{i}" for i in range(5)]


def test_defang_filter_in_a_mapping(tmp_path):
    collector = Collector()
    config = tmp_path / "nwpipe.toml"
    config.write_text(f'[outputs.c]\ntype = "tcp-jsonl"\nhost = "127.0.0.1"\n'
                      f'port = {collector.port}\nmapping = "analyst"\n\n'
                      '[mappings.analyst]\nkeep = false\n'
                      'fields = { src = "{{ srcip | join_ips | defang }}" }\n')
    proc = nwpipe("run", "-c", str(config), input=events(1), cwd=tmp_path)
    collector.stop()
    assert proc.returncode == 0, proc.stderr
    assert collector.received == [{"src": "10[.]0[.]0[.]0"}]
    assert defang("2001:db8::1") == "2001[:]db8[:][:]1"


def test_config_errors_name_the_key(tmp_path):
    config = tmp_path / "nwpipe.toml"
    config.write_text('[outputs.c]\ntype = "tcp-jsonl"\nhost = "127.0.0.1"\nport = 99999\n')
    proc = nwpipe("check", "-c", str(config))
    assert proc.returncode == 1
    assert "outputs.c.port: must be a TCP port between 1 and 65535" in proc.stderr


def delivery(i, body=None):
    body = body or {"id": f"a{i}"}
    return Delivery(id=str(i), body=body, event=body, output="c")


def test_send_reports_retry_when_down_and_recovers():
    with socket.socket() as sock:  # a port where nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def scenario():
        output = TcpJsonlOutput("c", {"host": "127.0.0.1", "port": port, "timeout": 2.0,
                                      "max_line_bytes": 1 << 20})
        await output.open()
        down = await output.send([delivery(0)])
        collector = Collector(port)
        up = await output.send([delivery(1)])
        await output.close()
        for _ in range(250):  # until the collector's thread has read the line
            if collector.received:
                break
            await asyncio.sleep(0.02)
        collector.stop()
        return down, up, collector.received

    down, up, received = asyncio.run(scenario())
    assert isinstance(down, Retry) and f"127.0.0.1:{port}" in down.reason
    assert up == Delivered() and received == [{"id": "a1"}]


def test_send_reports_failed_for_a_line_that_is_too_long():
    async def scenario():
        output = TcpJsonlOutput("c", {"host": "127.0.0.1", "port": 9, "timeout": 2.0,
                                      "max_line_bytes": 100})
        await output.open()
        return await output.send([delivery(0, {"pad": "x" * 200})])

    result = asyncio.run(scenario())
    assert isinstance(result, Failed) and "longer than max_line_bytes" in result.reason
