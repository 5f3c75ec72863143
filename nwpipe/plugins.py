"""The plugin manager: built-in plugins, entry points and ``--plugins-dir``.

Built-in plugins are ordinary plugin modules, listed as entry points of the
``nwpipe.builtin`` group in nwpipe's own package metadata and registered exactly like
third-party ones (the core imports none of them by name); :mod:`nwpipe.entrypoints` reads
both groups in one pass. A plugin that fails to import gives one warning naming it; a
hook implementation whose name or arguments match no hook is an error.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pluggy

from nwpipe import entrypoints, hookspecs
from nwpipe.errors import NwpipeError
from nwpipe.outputs import Output
from nwpipe.settings import did_you_mean
from nwpipe.sources.base import DEFAULT_SOURCE, Source

log = logging.getLogger("nwpipe")

#: entry-point group of the plugins that ship with nwpipe (always loaded)
BUILTIN_GROUP = "nwpipe.builtin"

#: The types each built-in plugin that provides types registers, by entry-point name.
#: A run whose config names only these types imports just the plugins it uses (the
#: webhook and syslog plugins cost a good part of start-up); tests/test_startup.py
#: checks this table against what the modules register.
BUILTIN_TYPES: dict[str, tuple[str, ...]] = {
    "stdout": ("output:stdout",),
    "file": ("output:file",),
    "webhook": ("output:webhook",),
    "syslog": ("output:syslog",),
    "files": ("source:files",),
    "http": ("source:http",),
    # the Jinja filters: needed by any config that may render a template
    "filters": ("jinja:filters",),
}

#: output types whose settings are never templates
_UNTEMPLATED_OUTPUTS = {"output:stdout", "output:file"}

#: comma-separated names of the installed (entry-point) plugins to load; "" loads none
ENV_LOAD_PLUGINS = "NWPIPE_LOAD_PLUGINS"
#: set to 1 to print every hook call on stderr (for debugging a plugin)
ENV_TRACE_PLUGINS = "NWPIPE_TRACE_PLUGINS"


def types_named(data: dict) -> set[str] | None:
    """The types a parsed config names (``{"output:stdout", "source:files"}``) when
    the built-in plugins provide all of them and nothing else may need another type's
    settings; None otherwise (then every plugin is loaded, and a mistyped type gets
    its "did you mean" from the full list)."""
    if data.get("defaults"):
        return None  # [defaults] keys are checked against every output type's settings
    outputs = data.get("outputs")
    if not isinstance(outputs, dict) or not outputs:
        return None
    named = set()
    for table in outputs.values():
        if not isinstance(table, dict) or not isinstance(table.get("type"), str):
            return None
        named.add(f"output:{table['type']}")
    source = data.get("source", {"type": DEFAULT_SOURCE})
    if not isinstance(source, dict) or not isinstance(source.get("type", DEFAULT_SOURCE), str):
        return None
    named.add(f"source:{source.get('type', DEFAULT_SOURCE)}")
    outputs_named = {kind for kind in named if kind.startswith("output:")}
    if (data.get("mappings") or any("when" in table for table in outputs.values())
            or not outputs_named <= _UNTEMPLATED_OUTPUTS):
        named.add("jinja:filters")
    provided = {kind for kinds in BUILTIN_TYPES.values() for kind in kinds}
    return named if named <= provided else None


class PluginError(NwpipeError):
    """A plugin breaks the contract (unknown hook, duplicate output type, ...)."""


@dataclass
class PluginInfo:
    """What ``nwpipe plugins`` shows about one loaded plugin."""

    name: str
    origin: str
    hooks: list[str] = field(default_factory=list)
    output_types: list[str] = field(default_factory=list)
    source_types: list[str] = field(default_factory=list)
    jinja_filters: list[str] = field(default_factory=list)


class Plugins:
    """Loaded plugins and what they registered."""

    def __init__(self, plugins_dirs=(), *, load_entry_points: bool = True,
                 only_types: set[str] | None = None):
        """Load the plugins. ``only_types`` (see :func:`types_named`): skip the built-in
        plugins that provide none of these types; None loads every one."""
        self.pm = pluggy.PluginManager("nwpipe")
        self.pm.add_hookspecs(hookspecs)
        self.origins: dict[str, str] = {}
        if os.environ.get(ENV_TRACE_PLUGINS) and os.environ[ENV_TRACE_PLUGINS] != "0":
            self.pm.trace.root.setwriter(lambda text: sys.stderr.write(f"nwpipe trace: {text}"))
            self.pm.enable_tracing()
        # one pass over the installed distributions for both groups
        found = entrypoints.entry_points((BUILTIN_GROUP, "nwpipe")) if load_entry_points \
            else entrypoints.entry_points((BUILTIN_GROUP,))
        builtin = found[BUILTIN_GROUP]
        if not builtin:
            raise PluginError("nwpipe's built-in plugins are not registered (its package "
                              "metadata is out of date): reinstall nwpipe, e.g. "
                              "pip install -e .")
        self._no_templates = only_types is not None and "jinja:filters" not in only_types
        for ep in builtin:
            provides = BUILTIN_TYPES.get(ep.name)
            if only_types is not None and provides and only_types.isdisjoint(provides):
                continue
            self._register_module(ep.value, "built-in")
        if load_entry_points:
            self._load_entry_points(found["nwpipe"])
        for folder in plugins_dirs:
            self._load_dir(Path(folder))
        self._check()
        self.output_types: dict[str, type[Output]] = {}
        self.output_plugins: dict[str, str] = {}
        self.source_types: dict[str, type[Source]] = {}
        self.source_plugins: dict[str, str] = {}
        self.jinja_filters: dict[str, Callable] = {}
        self.filter_plugins: dict[str, str] = {}
        self._collect()

    # -- loading ---------------------------------------------------------------

    def _register(self, plugin, name: str, origin: str) -> None:
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {name} ({origin}): {exc}") from None
        except ValueError as exc:  # already registered under that name
            log.warning("plugin %s (%s) not loaded: %s", name, origin, exc)
            return
        self.origins[name] = origin

    def _register_module(self, module_name: str, origin: str) -> None:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # a broken plugin must not stop nwpipe
            log.warning("plugin %s (%s) failed to load: %s: %s", module_name, origin,
                        type(exc).__name__, exc)
            return
        self._register(module, module_name, origin)

    def _load_entry_points(self, found: list) -> None:
        wanted = os.environ.get(ENV_LOAD_PLUGINS)
        allowed = None if wanted is None else {n.strip() for n in wanted.split(",") if n.strip()}
        for ep in found:
            if allowed is not None and ep.name not in allowed:
                continue
            dist = ep.dist.name if ep.dist is not None else "unknown distribution"
            version = f" {ep.dist.version}" if ep.dist is not None else ""
            origin = f"entry point {ep.value} ({dist}{version})"
            if self.pm.has_plugin(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                log.warning("plugin %s from %s failed to load: %s: %s", ep.name, dist,
                            type(exc).__name__, exc)
                continue
            self._register(plugin, ep.name, origin)

    def _load_dir(self, folder: Path) -> None:
        if not folder.is_dir():
            raise PluginError(f"--plugins-dir {folder}: no such folder")
        import importlib.util  # only plugin folders need it

        for path in sorted(folder.glob("*.py")):
            name = f"nwpipe_dir_plugin.{path.stem}"
            try:
                spec = importlib.util.spec_from_file_location(name, path)
                if spec is None or spec.loader is None:
                    raise ImportError("not a Python module")
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                spec.loader.exec_module(module)
            except Exception as exc:
                sys.modules.pop(name, None)
                log.warning("plugin %s failed to load: %s: %s", path, type(exc).__name__, exc)
                continue
            self._register(module, path.stem, str(path))

    def _check(self) -> None:
        known = [name for name in dir(hookspecs) if name.startswith("register_")]
        for name, hookcallers in self._unknown_hooks().items():
            for plugin_name in hookcallers:
                raise PluginError(
                    f"plugin {plugin_name} ({self.origins.get(plugin_name, '?')}) implements "
                    f"unknown hook '{name}'{did_you_mean(name, known)}")
        self.pm.check_pending()

    def _unknown_hooks(self) -> dict[str, list[str]]:
        unknown: dict[str, list[str]] = {}
        for name in dir(self.pm.hook):
            caller = getattr(self.pm.hook, name)
            if isinstance(caller, pluggy.HookCaller) and not caller.has_spec():
                unknown[name] = [impl.plugin_name for impl in caller.get_hookimpls()]
        return unknown

    # -- registries ------------------------------------------------------------

    def _call_each(self, hook_name: str, make_register) -> None:
        """Call a hook plugin by plugin, so each registration knows who made it.

        Going through pluggy (not calling the functions directly) keeps
        NWPIPE_TRACE_PLUGINS tracing and argument checking in force.
        """
        everyone = [plugin for _, plugin in self.pm.list_name_plugin()]
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            others = [p for p in everyone if p is not impl.plugin]
            caller = self.pm.subset_hook_caller(hook_name, remove_plugins=others)
            caller(register=make_register(impl.plugin_name))

    def _collect(self) -> None:
        def type_register(kind: str, base: type, types: dict, owners: dict[str, str]):
            """A ``register(type_name, cls)`` for output or source types."""
            def for_plugin(plugin_name: str):
                def register(type_name: str, cls: type) -> None:
                    if not isinstance(type_name, str) or not type_name:
                        raise PluginError(f"plugin {plugin_name}: {kind} type name must be a "
                                          f"non-empty string")
                    if not (isinstance(cls, type) and issubclass(cls, base)):
                        raise PluginError(f"plugin {plugin_name}: {kind} type '{type_name}' "
                                          f"must be a subclass of nwpipe.{base.__name__}")
                    if type_name in types:
                        raise PluginError(f"{kind} type '{type_name}' is registered twice: by "
                                          f"{owners[type_name]} and by {plugin_name}")
                    types[type_name] = cls
                    owners[type_name] = plugin_name
                return register
            return for_plugin

        def filter_register(plugin_name: str):
            def register(name: str, func: Callable) -> None:
                if not callable(func):
                    raise PluginError(f"plugin {plugin_name}: Jinja filter '{name}' is not "
                                      "callable")
                self.jinja_filters[name] = func
                self.filter_plugins[name] = plugin_name
            return register

        self._call_each("register_outputs", type_register("output", Output, self.output_types,
                                                          self.output_plugins))
        self._call_each("register_sources", type_register("source", Source, self.source_types,
                                                          self.source_plugins))
        self._call_each("register_jinja_filters", filter_register)
        if self._no_templates and not self.jinja_filters:
            return  # nothing will render a template: Jinja is not even imported
        # Every template environment made from now on (an output's URL and headers too)
        # gets these filters.
        from nwpipe.transform.templating import use_filters
        use_filters(self.jinja_filters)

    def info(self) -> list[PluginInfo]:
        """Every loaded plugin with where it came from and what it registered."""
        result = []
        for name, plugin in self.pm.list_name_plugin():
            hooks = sorted(c.name for c in self.pm.get_hookcallers(plugin) or [])
            types = sorted(t for t, p in self.output_plugins.items() if p == name)
            sources = sorted(t for t, p in self.source_plugins.items() if p == name)
            filters = sorted(f for f, p in self.filter_plugins.items() if p == name)
            result.append(PluginInfo(name=name, origin=self.origins.get(name, "?"), hooks=hooks,
                                     output_types=types, source_types=sources,
                                     jinja_filters=filters))
        return result
