"""Template limits: a render time limit and an output size limit per event, and Ctrl-C /
SIGTERM honoured within a second whatever a template is doing."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nwpipe.errors import EventError
from nwpipe.transform.limits import RenderLimits, TemplateLimitError
from nwpipe.transform.templating import (
    compile_condition,
    make_environment,
    render,
    template_variables,
)

NESTED_LOOPS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


def render_text(source: str, limits: RenderLimits, event: dict | None = None) -> str:
    env = make_environment(limits=limits)
    return render(env.from_string(source), template_variables(event or {}, env.globals))


SMALL = RenderLimits(time_limit=0.5, max_bytes=10_000)


@pytest.mark.parametrize("source, what", [
    ("{{ 'a' * 100000 }}", "the repeated value"),
    ("{{ [1, 2] * 100000 }}", "the repeated value"),
    ("{{ 'a' * (updatecount * 100000) }}", "the repeated value"),
    ("{{ 10 ** 100000000 }}", "the power"),
    ("{{ 'a'.ljust(10 ** 9) }}", "the result of ljust()"),
    ("{{ '%0999999999d' % 1 }}", "a formatted value"),
    ("{{ '{:>999999999}'.format(1) }}", "a formatted value"),
    ("{{ 'a' | center(10 ** 9) }}", "the result of the center filter"),
    ("{{ 'x' | indent(10 ** 9) }}", "the result of the indent filter"),
    ("{{ ('a' * 6000) | replace('a', 'bb') }}", "the replaced text"),
    ("{% for i in range(100000) %}{{ i }}{% endfor %}", "rendered text"),
])
def test_output_size_is_refused_before_it_is_built(source, what):
    started = time.monotonic()
    with pytest.raises(TemplateLimitError) as info:
        render_text(source, SMALL, {"updatecount": 3})
    assert str(info.value).startswith(what)
    assert "template_max_bytes (10000)" in str(info.value)
    assert time.monotonic() - started < 0.4  # refused, not built and then measured


def test_ordinary_templates_are_untouched_by_the_limits():
    assert render_text("{{ 'ab' * 3 }} {{ 2 ** 10 }} {{ 'x'.ljust(3) }}| {{ '%05d' % 7 }} "
                       "{{ 'id 12345678: %s' % 'x' }} {{ 'a b' | replace('a', 'c') }} "
                       "{{ 'abc def' | wordwrap(3) }} {{ 'x' | center(5) }}", SMALL) == \
        "ababab 1024 x  | 00007 id 12345678: x c b abc\ndef   x  "


def test_a_template_running_too_long_is_stopped_at_the_time_limit():
    started = time.monotonic()
    with pytest.raises(TemplateLimitError, match=r"longer than template_time_limit \(0.5 s\)"):
        render_text(NESTED_LOOPS, SMALL)
    assert time.monotonic() - started < 5  # 10^10 iterations would take hours


def test_a_when_condition_is_bounded_too():
    env = make_environment(limits=SMALL)
    test = compile_condition(env, "('a' * 10**9) | length > 1", key="outputs.o.when")
    with pytest.raises(EventError, match="outputs.o.when: the repeated value"):
        test({})


def test_sigterm_ends_a_rendering_at_once_after_the_handler_that_was_there():
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        limits = RenderLimits(time_limit=60)
        timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
        started = time.monotonic()
        timer.start()
        with pytest.raises(TemplateLimitError, match="rendering interrupted by SIGTERM"):
            render_text(NESTED_LOOPS, limits)
        assert time.monotonic() - started < 5
        assert seen == [signal.SIGTERM]
        assert render_text("{{ 1 + 1 }}", limits) == "2"  # the next rendering is normal
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- the real `nwpipe run` -------------------------------------------------------------------

def event(i: int, **extra) -> dict:
    return {"id": f"alert-{i}", "customer": "acme", "alerttype": "start", "updatecount": 1,
            **extra}


def config(tmp_path: Path, title: str, extra: str = "") -> Path:
    path = tmp_path / "nwpipe.toml"
    path.write_text(f"""{extra}
[mappings.m.fields]
title = {json.dumps(title)}

[outputs.f]
type = "file"
path = "out.jsonl"
mapping = "m"
""")
    return path


def env() -> dict:
    e = {**os.environ, "NWPIPE_LOAD_PLUGINS": ""}
    e.pop("NWPIPE_CONFIG", None)
    return e


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_cli_an_event_over_a_limit_is_dead_lettered_with_the_reason(tmp_path):
    config(tmp_path, "{% if updatecount > 1 %}{{ 'a' * (updatecount * 100000) }}"
                     "{% elif updatecount == 0 %}" + NESTED_LOOPS + "{% endif %}{{ id }}",
           "template_time_limit = 0.5\ntemplate_max_bytes = 100000\n")
    events = [event(1), event(2, updatecount=5), event(3, updatecount=0), event(4)]
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "nwpipe", "run", "-c", "nwpipe.toml",
                           "--dead-letter", "dl.jsonl"], cwd=tmp_path, env=env(),
                          input="".join(json.dumps(e) + "\n" for e in events),
                          capture_output=True, text=True, timeout=120)
    assert time.monotonic() - started < 60
    assert proc.returncode == 3, proc.stderr
    assert [b["title"] for b in lines(tmp_path / "out.jsonl")] == ["alert-1", "alert-4"]
    dead = {r["event"]["id"]: r for r in lines(tmp_path / "dl.jsonl")}
    assert set(dead) == {"alert-2", "alert-3"}
    assert dead["alert-2"]["stage"] == "map"
    assert "template_max_bytes (100000)" in dead["alert-2"]["reason"]
    assert "mappings.m.fields.title" in dead["alert-2"]["reason"]
    assert "longer than template_time_limit (0.5 s)" in dead["alert-3"]["reason"]


def test_cli_limits_are_checked_settings(tmp_path):
    config(tmp_path, "{{ id }}", "template_time_limit = -1\n")
    proc = subprocess.run([sys.executable, "-m", "nwpipe", "check", "-c", "nwpipe.toml"],
                          cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "template_time_limit" in proc.stderr and "Traceback" not in proc.stderr


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_cli_a_signal_takes_effect_within_a_second_during_a_long_template(tmp_path, signum):
    config(tmp_path, "{% if updatecount == 0 %}" + NESTED_LOOPS + "{% endif %}{{ id }}",
           "template_time_limit = 600\n")
    proc = subprocess.Popen([sys.executable, "-m", "nwpipe", "run", "-c", "nwpipe.toml",
                             "--dead-letter", "dl.jsonl"], cwd=tmp_path, env=env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        proc.stdin.write(json.dumps(event(1)) + "\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 60
        while not lines(tmp_path / "out.jsonl"):  # the first event is through
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr
            time.sleep(0.02)
        proc.stdin.write(json.dumps(event(2, updatecount=0)) + "\n")
        proc.stdin.flush()
        # Wait until it is busy in the template: half a second of CPU time spent on it.
        busy_from = cpu_seconds(proc.pid)
        while cpu_seconds(proc.pid) - busy_from < 0.5:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        sent = time.monotonic()
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert took < 1.5, f"exited {took:.2f} s after {signal.Signals(signum).name}"
    assert proc.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr
    # Every event read is accounted for: delivered, or dead-lettered with the reason.
    read = int(re.search(r"read ([\d,]+) event", stderr)[1].replace(",", ""))
    assert read == 2
    assert [b["title"] for b in lines(tmp_path / "out.jsonl")] == ["alert-1"]
    [record] = lines(tmp_path / "dl.jsonl")
    assert record["event"]["id"] == "alert-2"
    assert f"rendering interrupted by {signal.Signals(signum).name}" in record["reason"]
