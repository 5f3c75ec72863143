"""Load and validate the TOML configuration.

Everything is checked before any event is read: an unknown key, a wrong type, an unknown
output type, a missing required setting, an unset ``${VAR}``. Each problem is one
ConfigError naming the file, the key path (``outputs.soc.url``) and the problem.
"""

from __future__ import annotations

import builtins
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from nwpipe.errors import ConfigError, Problems
from nwpipe.outputs import Output
from nwpipe.queue.base import (
    DEFAULT_MAX_BYTES,
    DEFAULT_PATH,
    DEFAULT_SHARDS,
    SYNC_MODES,
    QueueSettings,
)
from nwpipe.settings import (
    EnvText,
    Setting,
    Substituted,
    did_you_mean,
    plain,
    validate_settings,
)
from nwpipe.sources.base import DEFAULT_SOURCE, Source
from nwpipe.sources.serve_settings import ServeSettings, build_serve_settings

#: where the config comes from when ``-c`` is not given
ENV_CONFIG = "NWPIPE_CONFIG"
DEFAULT_CONFIG_FILE = "nwpipe.toml"
DEFAULT_DEAD_LETTER = "nwpipe-dead-letter.jsonl"

_ENV_REF = re.compile(r"\$(\$)|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


@dataclass(frozen=True)
class RetryPolicy:
    """When the engine gives up on a delivery that keeps failing temporarily.

    The defaults ride out a receiver restart or a short outage (backoff 0.5 s doubling
    to 30 s, up to 8 attempts, at most 5 minutes) without holding a stream forever.
    """

    max_attempts: int = 8
    initial_backoff: float = 0.5
    max_backoff: float = 30.0
    max_elapsed: float = 300.0


@dataclass(frozen=True)
class BatchPolicy:
    """How many deliveries the engine hands to one ``send``."""

    max_events: int = 1
    max_bytes: int = 1 << 20
    max_wait: float = 1.0
    format: str | None = None


@dataclass(frozen=True)
class EngineSettings:
    """Settings every output has, whatever its type: they drive the delivery engine."""

    concurrency: int = 1
    rate_limit: float | None = None
    queue_size: int = 10_000
    batch: BatchPolicy = field(default_factory=BatchPolicy)
    retry: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass
class OutputConfig:
    """One ``[outputs.NAME]`` table, validated."""

    name: str
    type: str
    cls: builtins.type[Output]
    settings: dict[str, Any]
    engine: EngineSettings
    mapping: str | dict[str, str] | None = None
    customers: frozenset[str] | None = None
    when: str | None = None
    #: why this output cannot be created: a ``${VAR}`` of its settings is unset, which
    #: a command that does not deliver to it allows (see ``build_config(deliver_to=)``)
    unavailable: ConfigError | None = None

    def create(self) -> Output:
        """A new, unopened instance of this output."""
        if self.unavailable is not None:
            raise self.unavailable
        output = self.cls(self.name, self.settings)
        # the output may size its connection pool from this
        output.concurrency = self.engine.concurrency
        return output


@dataclass
class SourceConfig:
    """The ``[source]`` table, validated (without one: the files/stdin source)."""

    type: str = DEFAULT_SOURCE
    #: None when the config was built without the registered source types
    cls: builtins.type[Source] | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def create(self, inputs: list[str], max_line_bytes: int) -> Source:
        """A new, unopened source reading ``inputs`` (the arguments of ``nwpipe run``)."""
        if self.cls is None:
            raise ConfigError(f"unknown source type '{self.type}' (no source types are "
                              "registered; see `nwpipe plugins`)", key="source.type")
        return self.cls(self.settings, inputs=inputs, max_line_bytes=max_line_bytes)


@dataclass
class Config:
    """A whole validated configuration."""

    file: str | None
    outputs: dict[str, OutputConfig]
    source: SourceConfig = field(default_factory=SourceConfig)
    mappings: dict[str, dict] = field(default_factory=dict)
    templates: list[Path] = field(default_factory=list)
    dead_letter: str = DEFAULT_DEAD_LETTER
    serve: ServeSettings = field(default_factory=ServeSettings)
    max_line_bytes: int = 1 << 20
    shutdown_timeout: float = 10.0
    tests: list[dict] = field(default_factory=list)
    #: bounds on rendering one template for one event (nwpipe.transform.limits)
    template_time_limit: float = 2.0
    template_max_bytes: int = 1 << 20
    #: events that match no output are dead-lettered (stage "route"), not only counted
    strict_routing: bool = False
    queue: QueueSettings = field(default_factory=QueueSettings)
    #: processes `nwpipe run` decodes, maps and delivers in (`--workers`); "auto" resolved
    workers: int = 1

    @property
    def base_dir(self) -> Path:
        """Relative paths in the config are relative to the config file's folder."""
        return Path(self.file).resolve().parent if self.file else Path.cwd()


def _positive(value):
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value


def _non_negative(value):
    if value < 0:
        raise ValueError("must not be negative")
    return value


def workers_value(value):
    """A ``workers`` value (config key or ``--workers``): a number of processes, 1 or
    more, or ``"auto"`` (one per CPU)."""
    if value == "auto":
        return os.cpu_count() or 1
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            value = None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError('must be a number of processes (1 or more) or "auto"')
    return value


TOP_LEVEL = {
    "outputs": Setting(dict, default={}, help="where events go: [outputs.NAME] tables"),
    "mappings": Setting(dict, default={}, help="how events are reshaped: [mappings.NAME] tables"),
    "defaults": Setting(dict, default={}, help="settings shared by all outputs"),
    "serve": Setting(dict, default=None, help="the HTTP intake of `nwpipe serve`: [serve] table"),
    "templates": Setting((list, str), default=[], help="folders searched for template files"),
    "dead_letter": Setting(str, default=None, help="the dead-letter file (JSON lines)"),
    "max_line_bytes": Setting(int, default=1 << 20, check=_positive,
                              help="longest accepted input line or event, in bytes"),
    "shutdown_timeout": Setting(float, default=10.0, check=_non_negative,
                                help="seconds to finish in-flight deliveries on Ctrl-C/SIGTERM"),
    "tests": Setting(list, default=[], help="mapping tests run by `nwpipe test`"),
    "queue": Setting(dict, default={}, help="the durable queue: [queue] table"),
    "source": Setting(dict, default=None, help="where `nwpipe run` reads events: [source]"),
    "template_time_limit": Setting(float, default=2.0, check=_positive,
                                   help="seconds one template may take for one event"),
    "template_max_bytes": Setting(int, default=1 << 20, check=_positive,
                                  help="longest text one template may render for one event"),
    "strict_routing": Setting(bool, default=False,
                              help="dead-letter events that match no output (stage 'route')"),
    "workers": Setting((int, str), default=1, check=workers_value,
                       help="processes `nwpipe run` spreads decoding, mapping and delivery "
                            "over (\"auto\": one per CPU)"),
}


def _redis_url(value: str) -> str:
    if not value.startswith(("redis://", "rediss://")):
        raise ValueError("must start with redis:// or rediss://")
    return value


#: keys of the top-level [queue] table (see nwpipe.queue.base.QueueSettings)
QUEUE = {
    "path": Setting(str, default=DEFAULT_PATH, help="the SQLite queue file"),
    "max_bytes": Setting(int, default=DEFAULT_MAX_BYTES, check=_positive,
                         help="disk budget of the queue; past it, reading waits"),
    "sync": Setting(str, default="normal", choices=SYNC_MODES,
                    help="'normal': safe against a crash of nwpipe; 'full': fsync each commit"),
    "durable": Setting(bool, default=False,
                       help="commit every event read to the queue before delivering it"),
    "url": Setting(str, check=_redis_url, secret=True,
                   help="redis:// or rediss:// URL: a Redis Streams queue instead of SQLite"),
    "ca_file": Setting(str, help="CA bundle to verify a rediss:// server"),
    "shards": Setting(int, default=DEFAULT_SHARDS, check=_positive,
                      help="ordered logs of a Redis queue (alerts are spread by id)"),
    "prefix": Setting(str, default="nwpipe", help="prefix of the Redis keys"),
    "lease_seconds": Setting(float, default=15.0, check=_positive,
                             help="how long a Redis shard stays with a process that stopped"),
}

#: keys of [outputs.NAME] that are not the output type's own settings
OUTPUT_COMMON = {
    "type": Setting(str, required=True, help="the output type (webhook, stdout, file, ...)"),
    "mapping": Setting((str, dict), help="a mapping name, or a table of customer = mapping name"),
    "customers": Setting(list, help="only events of these customers"),
    "when": Setting(str, help="only events for which this Jinja expression is true"),
    "concurrency": Setting(int, check=_positive, help="deliveries in flight at once"),
    "rate_limit": Setting(float, check=_positive, help="at most this many sends per second"),
    "queue_size": Setting(int, check=_positive,
                          help="deliveries waiting per output before backpressure"),
    "batch": Setting(dict, help="group several events in one send"),
    "retry": Setting(dict, help="retry policy for temporary failures"),
}

BATCH = {
    "max_events": Setting(int, default=100, check=_positive),
    "max_bytes": Setting(int, default=1 << 20, check=_positive),
    "max_wait": Setting(float, default=1.0, check=_non_negative),
    "format": Setting(str),
}

RETRY = {
    "max_attempts": Setting(int, default=RetryPolicy.max_attempts, check=_positive),
    "initial_backoff": Setting(float, default=RetryPolicy.initial_backoff, check=_non_negative),
    "max_backoff": Setting(float, default=RetryPolicy.max_backoff, check=_non_negative),
    "max_elapsed": Setting(float, default=RetryPolicy.max_elapsed, check=_non_negative),
}


def find_config_file(explicit: str | None) -> str | None:
    """The config to use: ``-c`` if given, else ``$NWPIPE_CONFIG``, else ./nwpipe.toml,
    else none."""
    if explicit:
        return explicit
    env = os.environ.get(ENV_CONFIG)
    if env:
        return env
    if Path(DEFAULT_CONFIG_FILE).is_file():
        return DEFAULT_CONFIG_FILE
    return None


def expand_env(value: Any, key: str, file: str | None, environ=os.environ,
               missing: list[ConfigError] | None = None) -> Any:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in every string of ``value``.

    ``$$`` stands for a literal ``$``. An unset variable without a default is a
    ConfigError naming the key (never the value: it may be a secret). A value that is
    one whole ``${VAR}`` comes back as :class:`nwpipe.settings.EnvText`, which
    validation converts to the setting's type (int, float, bool, list of strings); a
    value with some ``${VAR}`` in it comes back as :class:`nwpipe.settings.Substituted`,
    which knows which parts came from the environment (a default is in the file for
    anyone to read, so it is not among them). With ``missing``, an unset variable is
    noted there and taken as empty instead of raising.
    """
    if isinstance(value, str):
        if "$" not in value:
            return value

        pieces: list[str] = []
        spans: list[tuple[int, int]] = []
        size = done = 0
        for match in _ENV_REF.finditer(value):
            literal = value[done:match.start()]
            pieces.append(literal)
            size += len(literal)
            done = match.end()
            if match.group(1):
                pieces.append("$")
                size += 1
                continue
            name, default = match.group(2), match.group(3)
            secret = False
            if name in environ:
                piece = environ[name]
                secret = True
            elif default is not None:
                # written in the file for anyone to read: not a secret
                piece = default
            else:
                problem = ConfigError(f"environment variable {name} is not set "
                                      f"(set it, or write ${{{name}:-default}})",
                                      key=key, file=file)
                if missing is None:
                    raise problem
                missing.append(problem)
                piece = ""
            pieces.append(piece)
            if secret:
                # remembered, so that what came from the environment is never shown
                spans.append((size, size + len(piece)))
            size += len(piece)
        pieces.append(value[done:])
        text = "".join(pieces)
        whole = _ENV_REF.fullmatch(value)
        if whole and whole.group(2):
            # the whole value is one variable: it may still take the setting's type
            return EnvText(text, whole.group(2), tuple(spans))
        return Substituted(text, tuple(spans)) if spans else text
    if isinstance(value, dict):
        return {k: expand_env(v, f"{key}.{k}" if key else k, file, environ, missing)
                for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, f"{key}[{i}]", file, environ, missing)
                for i, v in enumerate(value)]
    return value


def read_toml(path: str) -> dict:
    """Parse a TOML file; a syntax error names the file, line and column."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("config file not found", file=path) from None
    except IsADirectoryError:
        raise ConfigError("is a folder, not a config file", file=path) from None
    except PermissionError:
        raise ConfigError("permission denied", file=path) from None
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        line = None
        m = re.search(r"\(at line (\d+), column (\d+)\)", message)
        if m:
            line = int(m.group(1))
            message = message[: m.start()].strip() + f" (column {m.group(2)})"
        raise ConfigError(f"invalid TOML: {message}", file=path, line=line) from None
    except UnicodeDecodeError:
        raise ConfigError("invalid TOML: the file is not UTF-8", file=path) from None


def default_config() -> dict:
    """The built-in default: every event unchanged to stdout as one JSON line."""
    return {"outputs": {"stdout": {"type": "stdout"}}}


def load_config(path: str | None, output_types: dict[str, type[Output]],
                environ=os.environ, *,
                source_types: dict[str, type[Source]] | None = None) -> Config:
    """Read, expand and validate a config file (``None``: the built-in default)."""
    data = read_toml(path) if path else default_config()
    return build_config(data, output_types, file=path, environ=environ,
                        source_types=source_types)


def build_config(data: dict, output_types: dict[str, type[Output]], *, file: str | None = None,
                 environ=os.environ,
                 source_types: dict[str, type[Source]] | None = None,
                 deliver_to: Collection[str] | None = None) -> Config:
    """Validate an already-parsed config table: every problem found is reported at once
    (a :class:`nwpipe.errors.ConfigErrors` when there are several).

    ``deliver_to``: the only outputs the command delivers to (``nwpipe queue drain``);
    None for all. An unset ``${VAR}`` in another output's own settings, in a mapping
    none of these outputs uses, or in ``[serve]`` is then no error: such an output keeps
    its name and routing and refuses to be created (``OutputConfig.unavailable``).
    """
    problems = Problems()
    missing: list[ConfigError] | None = None if deliver_to is None else []
    data = expand_env(data, "", file, environ, missing)
    spared: dict[str, ConfigError] = {}
    if missing:
        spared = _spare(missing, data, set(deliver_to or ()), problems)
        if "serve" in spared:
            data = {k: v for k, v in data.items() if k != "serve"}
    known_top = {k: v for k, v in data.items() if k in TOP_LEVEL}
    with problems.collect():
        validate_settings(data, TOP_LEVEL, key="", file=file)
    # go on with the known keys, so that the problems inside them are found too
    try:
        top = validate_settings(known_top, TOP_LEVEL, key="", file=file)
    except ConfigError:
        problems.raise_if_any()
        raise
    templates = top["templates"]
    if isinstance(templates, str):
        templates = [templates]
    base = Path(file).resolve().parent if file else Path.cwd()
    template_dirs = []
    for i, item in enumerate(templates):
        with problems.collect():
            if not isinstance(item, str):
                raise ConfigError("must be a folder path (string)", key=f"templates[{i}]",
                                  file=file)
            folder = (base / item) if not Path(item).is_absolute() else Path(item)
            if not folder.is_dir():
                raise ConfigError(f"template folder {item!r} does not exist",
                                  key=f"templates[{i}]", file=file)
            template_dirs.append(folder)

    serve = ServeSettings()
    with problems.collect():
        serve = build_serve_settings(top["serve"], file=file)

    mappings = plain(top["mappings"])
    for name, table in mappings.items():
        with problems.collect():
            if not isinstance(table, dict):
                raise ConfigError("must be a table ([mappings.NAME])", key=f"mappings.{name}",
                                  file=file)

    defaults = top["defaults"]
    outputs: dict[str, OutputConfig] = {}
    if not top["outputs"] and file is not None:
        problems.errors.append(ConfigError("no outputs configured: add an [outputs.NAME] "
                                           "table", key="outputs", file=file))
    for name, table in top["outputs"].items():
        with problems.collect():
            if not isinstance(table, dict):
                raise ConfigError("must be a table ([outputs.NAME])", key=f"outputs.{name}",
                                  file=file)
            outputs[name] = _build_output(name, table, defaults, output_types, mappings, file,
                                          spared.get(f"outputs.{name}"))
    with problems.collect():
        _check_defaults(defaults, output_types, outputs, file)

    tests = plain(top["tests"])
    for i, item in enumerate(tests):
        with problems.collect():
            if not isinstance(item, dict):
                raise ConfigError("must be a table ([[tests]])", key=f"tests[{i}]", file=file)

    source = SourceConfig()
    with problems.collect():
        source = _build_source(top["source"], source_types, file)
    queue = QueueSettings()
    with problems.collect():
        if not isinstance(top["queue"], dict):
            raise ConfigError("must be a table ([queue])", key="queue", file=file)
        queue = QueueSettings(**validate_settings(top["queue"], QUEUE, key="queue", file=file))
    problems.raise_if_any()

    dead_letter = top["dead_letter"]
    if dead_letter is None:
        dead_letter = DEFAULT_DEAD_LETTER
    return Config(
        file=file,
        outputs=outputs,
        source=source,
        mappings=mappings,
        templates=template_dirs,
        dead_letter=dead_letter,
        serve=serve,
        max_line_bytes=top["max_line_bytes"],
        shutdown_timeout=top["shutdown_timeout"],
        tests=tests,
        template_time_limit=top["template_time_limit"],
        template_max_bytes=top["template_max_bytes"],
        strict_routing=top["strict_routing"],
        queue=queue,
        workers=top["workers"],
    )


def _check_defaults(defaults: dict, output_types, outputs, file) -> None:
    known = set(OUTPUT_COMMON) - {"type"}
    for cls in output_types.values():
        for name, setting in cls.settings.items():
            known.add(name)
            known.update(setting.aliases)
    problems = Problems()
    for key in defaults:
        if key not in known:
            problems.errors.append(ConfigError(f"unknown setting '{key}'"
                                               f"{did_you_mean(key, known)}",
                                               key=f"defaults.{key}", file=file))
    problems.raise_if_any()


def _spare(missing: list[ConfigError], data: dict, deliver_to: set[str],
           problems: Problems) -> dict[str, ConfigError]:
    """Sort the unset variables of a config built for ``deliver_to``: those the delivery
    does not need, by what they spare (``outputs.NAME``, ``mappings.NAME``, ``serve``:
    the first such problem), the others into ``problems``."""
    def table(value: Any) -> dict:
        return value if isinstance(value, dict) else {}

    outputs = table(data.get("outputs"))
    mappings = table(data.get("mappings"))
    used: set[str] = set()
    for name in deliver_to:
        mapping = table(outputs.get(name)).get("mapping")
        if isinstance(mapping, str):
            used.add(mapping)
        elif isinstance(mapping, dict):
            used.update(m for m in mapping.values() if isinstance(m, str))
    spared: dict[str, ConfigError] = {}
    for problem in missing:
        key = problem.key or ""
        spare = None
        if key == "serve" or key.startswith("serve."):
            spare = "serve"
        for name in outputs:
            prefix = f"outputs.{name}."
            setting = re.split(r"[.\[]", key[len(prefix):], maxsplit=1)[0]
            if key.startswith(prefix) and name not in deliver_to \
                    and setting not in OUTPUT_COMMON:
                spare = f"outputs.{name}"
        for name in mappings:
            if key.startswith(f"mappings.{name}.") and name not in used:
                spare = f"mappings.{name}"
        if key.startswith("defaults.") and not deliver_to:
            # shared by every output, and none is delivered to
            for name in outputs:
                spared.setdefault(f"outputs.{name}", problem)
            continue
        if spare is None:
            problems.errors.append(problem)
        else:
            spared.setdefault(spare, problem)
    return spared


def _build_output(name: str, table: dict, defaults: dict, output_types, mappings,
                  file, unavailable: ConfigError | None = None) -> OutputConfig:
    key = f"outputs.{name}"
    type_name = table.get("type")
    if type_name is None:
        raise ConfigError("required setting is missing (e.g. type = \"webhook\")",
                          key=f"{key}.type", file=file)
    if not isinstance(type_name, str):
        raise ConfigError("must be a string", key=f"{key}.type", file=file)
    cls = output_types.get(type_name)
    if cls is None:
        known = ", ".join(sorted(output_types)) or "none"
        raise ConfigError(f"unknown output type '{type_name}'"
                          f"{did_you_mean(type_name, output_types)}"
                          f" (known types: {known}; see `nwpipe plugins`)",
                          key=f"{key}.type", file=file)

    own_names = set()
    for setting_name, setting in cls.settings.items():
        own_names.add(setting_name)
        own_names.update(setting.aliases)
    merged: dict[str, Any] = {}
    for k, v in defaults.items():
        if k in OUTPUT_COMMON or k in own_names:
            merged[k] = v
    # a value in the output table wins over [defaults], alias or not
    for k in table:
        for setting_name, setting in cls.settings.items():
            if k == setting_name or k in setting.aliases:
                for other in (setting_name, *setting.aliases):
                    if other != k:
                        merged.pop(other, None)
    merged.update(table)

    common_table = {k: v for k, v in merged.items() if k in OUTPUT_COMMON}
    own_table = {k: v for k, v in merged.items() if k not in OUTPUT_COMMON}
    common = validate_settings(common_table, OUTPUT_COMMON, key=key, file=file)

    batch = BatchPolicy(max_events=cls.batch_max_events, max_wait=cls.batch_max_wait)
    if common["batch"] is not None:
        b = validate_settings(common["batch"], BATCH, key=f"{key}.batch", file=file)
        if b["format"] is not None:
            formats = cls.settings.get("batch_format")
            if formats is None:
                raise ConfigError(f"output type '{type_name}' has no batch formats",
                                  key=f"{key}.batch.format", file=file)
            # checked here, so that a problem is named where the user wrote it
            own_table["batch_format"] = validate_settings(
                {"format": b["format"]}, {"format": formats}, key=f"{key}.batch",
                file=file)["format"]
        batch = BatchPolicy(b["max_events"], b["max_bytes"], b["max_wait"], b["format"])
    retry = RetryPolicy()
    if common["retry"] is not None:
        r = validate_settings(common["retry"], RETRY, key=f"{key}.retry", file=file)
        retry = RetryPolicy(**r)
    engine = EngineSettings(
        concurrency=common["concurrency"] or cls.concurrency,
        rate_limit=common["rate_limit"],
        queue_size=common["queue_size"] or EngineSettings.queue_size,
        batch=batch,
        retry=retry,
    )

    # the type's own settings and the mapping names are checked even when one fails,
    # so that `nwpipe check` reports every problem of the output at once
    problems = Problems()
    settings: dict[str, Any] = {}
    with problems.collect():
        if unavailable is not None:
            # its own settings miss a variable, and this command does not deliver to it
            own_table = {}
            cls = _Unavailable
        settings = validate_settings(own_table, cls.settings, key=key, file=file)
        try:
            cls.check_config(settings)
        except ValueError as exc:
            raise ConfigError(str(exc), key=key, file=file) from None
        except ConfigError as exc:
            if exc.key is None:
                exc.key = key
            elif not exc.key.startswith("outputs."):
                exc.key = f"{key}.{exc.key}"
            exc.file = exc.file or file
            raise

    mapping = common["mapping"]
    with problems.collect():
        if isinstance(mapping, str):
            _check_mapping_name(mapping, mappings, f"{key}.mapping", file)
    if isinstance(mapping, dict):
        for customer, mapping_name in mapping.items():
            with problems.collect():
                if not isinstance(mapping_name, str):
                    raise ConfigError("must be a mapping name (string)",
                                      key=f"{key}.mapping.{customer}", file=file)
                _check_mapping_name(mapping_name, mappings, f"{key}.mapping.{customer}", file)
    problems.raise_if_any()
    customers = common["customers"]
    if customers is not None:
        for i, c in enumerate(customers):
            if not isinstance(c, str):
                raise ConfigError("must be a customer name (string)", key=f"{key}.customers[{i}]",
                                  file=file)
        customers = frozenset(customers)
    return OutputConfig(name=name, type=type_name, cls=output_types[type_name],
                        settings=plain(settings), engine=engine, mapping=mapping,
                        customers=customers, when=common["when"], unavailable=unavailable)


class _Unavailable(Output):
    """What an output whose settings cannot be read is checked against: nothing."""


def _build_source(table: dict | None, source_types: dict[str, type[Source]] | None,
                  file: str | None) -> SourceConfig:
    """The ``[source]`` table checked against its type's settings, like an output's."""
    if source_types is None:
        if table is not None:
            raise ConfigError("no source types are registered", key="source.type", file=file)
        return SourceConfig()
    table = {"type": DEFAULT_SOURCE} if table is None else table
    type_name = table.get("type", DEFAULT_SOURCE)
    if not isinstance(type_name, str):
        raise ConfigError("must be a string", key="source.type", file=file)
    cls = source_types.get(type_name)
    if cls is None:
        known = ", ".join(sorted(source_types)) or "none"
        raise ConfigError(f"unknown source type '{type_name}'"
                          f"{did_you_mean(type_name, source_types)} (known types: {known}; "
                          "see `nwpipe plugins`)", key="source.type", file=file)
    own = {k: v for k, v in table.items() if k != "type"}
    settings = validate_settings(own, cls.settings, key="source", file=file)
    try:
        cls.check_config(settings)
    except ValueError as exc:
        raise ConfigError(str(exc), key="source", file=file) from None
    return SourceConfig(type_name, cls, settings)


def _check_mapping_name(name: str, mappings: dict, key: str, file) -> None:
    if name not in mappings:
        known = ", ".join(sorted(mappings)) or "none defined"
        raise ConfigError(f"no mapping named '{name}'{did_you_mean(name, mappings)} "
                          f"(mappings: {known})", key=key, file=file)
