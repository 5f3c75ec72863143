"""The documentation cannot drift from the program.

- Every ```toml block in README.md and docs/*.md is a config that `nwpipe check` accepts,
  run as a subprocess on the block as written. An HTML comment right before a block
  gives what it needs: `<!-- check: NAME=value ... -->` sets environment variables,
  `with=PATH` appends the block to a file of the repository (and runs next to a copy of
  that file's folder), `plugin=FILE` loads the page's ```python block that starts with
  `# FILE` through --plugins-dir, `pem=CERT,KEY` names the paths of a TLS certificate and
  its key (the test points them at a throw-away pair), `pyproject` marks a packaging file (valid TOML with a
  [project] table, not a config). `fails` marks a deliberate mistake: check must exit 1,
  and its stderr must be exactly the ```text block that follows; `warns` marks an
  example that check accepts with the warnings of the ```text block that follows (any
  other example must pass without a warning).
  A block without an `[outputs...]` table (a mapping on its own) gets a stdout output
  appended, so that it is a whole config.
- Every ```console block is a transcript: each `$ command` runs in bash, in a fresh
  folder holding a copy of examples/ (and, as nwpipe.toml, the ```toml block shown right
  before the transcript, with nothing but prose and ```text blocks between, if any), with `nwpipe` being this checkout's. Its output,
  stdout and stderr together, must be the lines shown, modulo timings; a line `...`
  (indented or not) stands for any number of lines.
- The site's navigation lists every page, README.md's links resolve, and the README's
  two commands are the ones CI runs.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)
MARKER = re.compile(r"<!-- check:([^>]*)-->\s*\Z")
DEADLINE = 120  # seconds for one command; only reached when something hangs


@dataclass(eq=False)
class Block:
    page: Path
    line: int
    language: str
    text: str
    marker: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    def option(self, name: str) -> str | None:
        for token in self.marker:
            if token.startswith(name + "="):
                return token.split("=", 1)[1]
        return None

    @property
    def env(self) -> dict[str, str]:
        return dict(token.split("=", 1) for token in self.marker
                    if re.match(r"[A-Z_][A-Z0-9_]*=", token))


def blocks_of(page: Path) -> list[Block]:
    text = page.read_text()
    found = []
    for match in FENCE.finditer(text):
        before = text[:match.start()]
        marker = MARKER.search(before)
        found.append(Block(page, before.count("\n") + 1, match.group(1), match.group(2),
                           shlex.split(marker.group(1)) if marker else []))
    return found


BLOCKS = [block for page in PAGES for block in blocks_of(page)]
TOML = [b for b in BLOCKS if b.language == "toml"]
CONSOLE = [b for b in BLOCKS if b.language == "console"]


def following(block: Block, language: str) -> Block | None:
    """The next fenced block on the same page, if it is in ``language``."""
    same_page = [b for b in BLOCKS if b.page == block.page]
    index = same_page.index(block)
    if index + 1 < len(same_page) and same_page[index + 1].language == language:
        return same_page[index + 1]
    return None


def preceding_config(block: Block) -> Block | None:
    """The ```toml block shown right before ``block`` (only prose and the ```text blocks
    of its messages between)."""
    same_page = [b for b in BLOCKS if b.page == block.page]
    for earlier in reversed(same_page[:same_page.index(block)]):
        if earlier.language == "toml":
            return earlier
        if earlier.language != "text":
            return None
    return None


def python_block(page: Path, name: str) -> str:
    for block in blocks_of(page):
        if block.language == "python" and block.text.startswith(f"# {name}\n"):
            return block.text
    raise AssertionError(f"{page.name}: no ```python block starting with '# {name}'")


def base_env(bin_dir: Path) -> dict[str, str]:
    """The environment of a documented command: this checkout's nwpipe, no plugins
    installed elsewhere, no config from the caller's environment."""
    env = {k: v for k, v in os.environ.items() if k != "NWPIPE_CONFIG"}
    env.update(NWPIPE_LOAD_PLUGINS="", PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1",
               PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", COLUMNS="100")
    return env


@pytest.fixture(scope="session")
def nwpipe_bin(tmp_path_factory) -> Path:
    """A folder whose `nwpipe` runs this checkout's nwpipe with the test's Python."""
    folder = tmp_path_factory.mktemp("bin")
    script = folder / "nwpipe"
    script.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m nwpipe "$@"\n')
    script.chmod(0o755)
    return folder


def run_shell(command: str, cwd: Path, env: dict[str, str]) -> tuple[int, str, str]:
    try:
        done = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL, timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{command!r} did not finish within {DEADLINE} s") from None
    return done.returncode, done.stdout, done.stderr


def in_parallel(function, items) -> dict:
    """``function(item)`` for every item, a few at a time (each starts a Python process);
    the result, or the exception it raised, by item."""
    def guarded(item):
        try:
            return function(item)
        except Exception as exc:  # reported by the test of that item
            return exc
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(items, pool.map(guarded, items)))


def outcome(results: dict, item):
    result = results[item]
    if isinstance(result, Exception):
        raise result
    return result


# -- TOML examples ---------------------------------------------------------------------------

def has_outputs(text: str) -> bool:
    return "outputs" in tomllib.loads(text)


def prepare_config(block: Block, folder: Path) -> tuple[Path, list[str]]:
    """Write ``block`` as a whole config in ``folder``; the config and extra CLI args."""
    text, args = block.text, []
    base = block.option("with")
    if base:
        source = ROOT / base
        shutil.copytree(source.parent, folder, dirs_exist_ok=True)
        text = source.read_text() + "\n" + text
        config = folder / source.name
    else:
        config = folder / "nwpipe.toml"
        if not has_outputs(text):
            text += '\n[outputs.docs_check]\ntype = "stdout"\n'
    pem = block.option("pem")
    if pem:  # a throw-away certificate and key where the example names real ones
        cert_path, key_path = pem.split(",")
        cert = trustme.CA().issue_cert("nwpipe.example.com")
        cert.cert_chain_pems[0].write_to_path(folder / "cert.pem")
        cert.private_key_pem.write_to_path(folder / "key.pem")
        text = text.replace(cert_path, str(folder / "cert.pem"))
        text = text.replace(key_path, str(folder / "key.pem"))
    plugin = block.option("plugin")
    if plugin:
        plugins = folder / "plugins"
        plugins.mkdir()
        (plugins / plugin).write_text(python_block(block.page, plugin))
        args = ["--plugins-dir", str(plugins)]
    config.write_text(text)
    return config, args


def check_block(block: Block, folder: Path, bin_dir: Path) -> tuple[int, str, str]:
    """`nwpipe check` on ``block`` written as a whole config in ``folder``."""
    config, args = prepare_config(block, folder)
    env = {**base_env(bin_dir), **block.env}
    command = shlex.join(["nwpipe", *args, "check", "-c", config.name])
    return run_shell(command, config.parent, env)


@pytest.fixture(scope="session")
def checked(tmp_path_factory, nwpipe_bin) -> dict:
    """`nwpipe check` on every TOML example but packaging files, by block."""
    configs = [b for b in TOML if "pyproject" not in b.marker]
    return in_parallel(lambda b: check_block(b, tmp_path_factory.mktemp("check"), nwpipe_bin),
                       configs)


@pytest.mark.parametrize("block", TOML, ids=[b.where for b in TOML])
def test_toml_example_passes_check(block, checked):
    if "pyproject" in block.marker:
        assert "project" in tomllib.loads(block.text), f"{block.where}: no [project] table"
        return
    code, out, err = outcome(checked, block)
    assert "Traceback" not in err, f"{block.where}: {err}"
    if "fails" not in block.marker:
        assert code == 0, f"{block.where}: nwpipe check failed:\n{err}"
        if "warns" not in block.marker:
            # an example is a model to copy: no warnings unless it shows one on purpose
            assert "warning" not in err, f"{block.where}: {err}"
            return
    else:
        assert code == 1, f"{block.where}: the bad example passed check:\n{out}"
    shown = following(block, "text")
    assert shown, f"{block.where}: a 'fails' or 'warns' example is followed by a ```text " \
                  "block with the messages check gives"
    assert err.strip() == shown.text.strip(), \
        f"{block.where}: check says something else than {shown.where}:\n{err}"


def test_every_bad_example_is_marked():
    """A ```text block right after a TOML example shows check's messages: that example is
    a deliberate mistake or warning and marked so (or the text is no message of check)."""
    for block in TOML:
        shown = following(block, "text")
        if shown and shown.text.startswith("nwpipe: error:"):
            assert "fails" in block.marker, f"{block.where}: mark it <!-- check: fails -->"
        if shown and shown.text.startswith("nwpipe: warning:"):
            assert "warns" in block.marker, f"{block.where}: mark it <!-- check: warns -->"


# -- command transcripts ---------------------------------------------------------------------

TIMINGS = [
    (re.compile(r"\b\d[\d,]*(\.\d+)?k? events/s\b"), "<rate> events/s"),
    (re.compile(r"\(\d[\d,]*(\.\d+)?/s\)"), "(<rate>/s)"),
    (re.compile(r"\b\d+(\.\d+)? (s|ms)\b"), "<time>"),
    # how many attempts fit in a time budget depends on the timing too
    (re.compile(r"\b\d[\d,]* retried\b"), "<n> retried"),
]


def normalise(text: str) -> list[str]:
    """Lines without trailing blanks, timings and rates replaced by placeholders."""
    lines = []
    for line in text.rstrip("\n").split("\n"):
        for pattern, placeholder in TIMINGS:
            line = pattern.sub(placeholder, line)
        lines.append(line.rstrip())
    return lines


def matches(shown: list[str], actual: list[str]) -> bool:
    """Whether ``actual`` is ``shown``, each `...` line standing for any lines."""
    if not shown:
        return not actual
    if shown[0].strip() == "...":
        return any(matches(shown[1:], actual[i:]) for i in range(len(actual) + 1))
    return bool(actual) and shown[0] == actual[0] and matches(shown[1:], actual[1:])


def transcript(block: Block) -> list[tuple[str, list[str]]]:
    """The commands of a console block, each with the output lines shown under it."""
    steps: list[tuple[str, list[str]]] = []
    for line in block.text.rstrip("\n").split("\n"):
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            assert steps, f"{block.where}: a transcript starts with '$ command'"
            steps[-1][1].append(line)
    return steps


def replay_transcript(block: Block, folder: Path, bin_dir: Path) -> list[tuple[str, list[str]]]:
    """Run the commands of ``block`` in ``folder``; each command with its output lines."""
    shutil.copytree(ROOT / "examples", folder / "examples",
                    ignore=shutil.ignore_patterns("nwpipe-*.jsonl", "__pycache__", "*.egg-info"))
    config = preceding_config(block)
    if config is not None:
        (folder / "nwpipe.toml").write_text(config.text)
    env = {**base_env(bin_dir), **block.env}
    printed = []
    for command, _ in transcript(block):
        # stderr joins stdout as on a terminal; the command's own redirections still apply
        _, out, err = run_shell("exec 2>&1\n" + command, folder, env)
        printed.append((command, normalise(out + err)))
    return printed


@pytest.fixture(scope="session")
def replayed(tmp_path_factory, nwpipe_bin) -> dict:
    return in_parallel(
        lambda b: replay_transcript(b, tmp_path_factory.mktemp("console"), nwpipe_bin),
        CONSOLE)


@pytest.mark.parametrize("block", CONSOLE, ids=[b.where for b in CONSOLE])
def test_shown_output_is_the_real_one(block, replayed):
    for (command, shown), (_, actual) in zip(transcript(block), outcome(replayed, block)):
        assert matches(normalise("\n".join(shown)), actual), \
            f"{block.where}: `{command}` prints\n" + "\n".join(actual)


# -- the site and the front page -------------------------------------------------------------

def test_every_page_is_in_the_site_navigation():
    nav = set(re.findall(r"^\s*- (?:(?:\"[^\"]+\"|[^:\n]+): )?([\w./-]+\.md)\s*$",
                         (ROOT / "mkdocs.yml").read_text(), re.M))
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert pages == nav, f"not in the nav: {pages - nav}; no such page: {nav - pages}"


def test_readme_links_resolve():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", readme)
    assert links
    for link in links:
        assert (ROOT / link).exists(), f"README.md links to {link}, which does not exist"


def test_readme_shows_the_two_commands_ci_runs():
    readme = (ROOT / "README.md").read_text()
    run = ("python3 -m venv .venv && .venv/bin/pip install -q . && "
           ".venv/bin/nwpipe run examples/events.jsonl")
    test = ("python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && "
            ".venv/bin/python -m pytest")
    assert f"\n    {run}\n" in readme and f"\n    {test}\n" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -q -e '.[test]'" in ci and "\n.venv/bin/python -m pytest\n" in ci
    assert "mkdocs build --strict" in ci


def test_license_is_the_one_the_package_declares():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == {"text": "Apache-2.0"}
    license_text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text  # the full text, not a notice
