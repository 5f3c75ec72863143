"""What `nwpipe check` knows about the variables a mapping's templates use.

A name a template reads is known when it is one of the mapping's ``vars``, a Jinja or
nwpipe global (``range``, ``now``, ...), ``event`` (the whole event), a variable the
template sets itself, or a field of Netography's event (the vendor's sample). Any
other name is most likely a typo or a missing ``vars`` entry: a warning, since a
receiver's own events may carry extra fields. A built-in template that cannot work
without a variable (PagerDuty's ``routing_key``) makes a missing one an error, found
before any event is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from nwpipe.config import Config
from nwpipe.errors import ConfigError, Problems
from nwpipe.settings import did_you_mean

#: the top-level fields of Netography Fusion's webhook event (examples/netography-sample.json)
NETOGRAPHY_FIELDS = frozenset({
    "alerttype", "algorithm", "beta", "bypassdisplay", "bypassrule", "cachekey",
    "categories", "customer", "description", "dstinternal", "dstip", "duration", "end",
    "factorcount", "factors", "flowsrcname", "id", "ignore", "input", "ipinfo", "ipinfocount",
    "lasttimestamp", "metrics", "name", "output", "rollupperiod", "rulecount", "rules",
    "severity", "site", "srcinternal", "srcip", "start", "summary", "tag", "tags",
    "threshold", "timestamp", "track", "track_by", "updatecount", "updateinterval",
})

#: variables a built-in template cannot work without, and what each one is
REQUIRED_VARS = {
    "pagerduty.json.j2": {
        "routing_key": "the integration key of a PagerDuty service, e.g. "
                       "vars = { routing_key = \"${PD_ROUTING_KEY}\" }",
    },
}

#: names every template sees besides the event's fields and the globals
_ALWAYS = frozenset({"event"})


@dataclass(frozen=True)
class UnknownVariable:
    """A template variable that is neither vars, a Jinja name nor an event field."""

    key: str
    name: str
    suggestion: str

    def line(self, file: str | None) -> str:
        """``nwpipe.toml: mappings.siem.fields.title: unknown variable 'algoritm' ...``."""
        where = f"{file}: " if file else ""
        return (f"{where}{self.key}: variable '{self.name}' is neither in vars, a Jinja "
                f"name nor a field of Netography's event{self.suggestion}")


def _sources(config: Config, router: Any) -> Iterator[tuple[str, str, set[str]]]:
    """``(key, template text, names it may use besides the base ones)`` for each template
    of the config."""
    for name, mapping in router.mappings.items():
        known = set(getattr(mapping, "_globals", {})) | set(getattr(mapping, "_vars", {}))
        for field in getattr(mapping, "_fields", ()):
            if field.kind == "template" and field.source:
                yield field.key, field.source, known
        body_source = None
        env = getattr(mapping, "_body_env", None)
        if mapping.template_name and env is not None and env.loader is not None:
            try:
                body_source = env.loader.get_source(env, mapping.template_name)[0]
            except LookupError:  # jinja2.TemplateNotFound is one
                body_source = None
            key = f"mappings.{name}.template"
        elif getattr(mapping, "_body", None) is not None:
            key = f"mappings.{name}.body"
        if body_source is not None:
            yield key, body_source, known
    for output in config.outputs.values():
        if output.when:
            yield f"outputs.{output.name}.when", "{{ " + output.when + " }}", set()


def _optional(tree: Any) -> set[str]:
    """Names a template reads with a fallback (``x | default(...)``, ``x is defined``):
    optional settings, not typos."""
    from jinja2 import nodes

    names = set()
    for node in tree.find_all((nodes.Filter, nodes.Test)):
        if node.name in ("default", "d", "defined", "undefined") \
                and isinstance(node.node, nodes.Name):
            names.add(node.node.name)
    return names


class _AnyName(dict):
    """Filters and tests as the analysis sees them: every name exists (compiling the
    mapping already checked them against the real environment)."""

    def __contains__(self, name: object) -> bool:
        return True


def unknown_variables(config: Config, router: Any) -> list[UnknownVariable]:
    """Every template variable of ``config`` that nothing defines (see the module doc)."""
    # Jinja only when asked (`nwpipe check`): a run without templates never imports it
    import jinja2
    from jinja2 import meta

    parser = jinja2.Environment()
    parser.filters = _AnyName(parser.filters)
    parser.tests = _AnyName(parser.tests)
    base = set(parser.globals) | {"now"} | _ALWAYS | NETOGRAPHY_FIELDS
    found: list[UnknownVariable] = []
    seen: set[tuple[str, str]] = set()
    for key, source, known in _sources(config, router):
        try:
            tree = parser.parse(source)
            names = meta.find_undeclared_variables(tree) - _optional(tree)
        except jinja2.TemplateError:
            continue  # compiling the mapping already reported it
        candidates = base | known
        for name in sorted(names - candidates):
            if (key, name) not in seen:
                seen.add((key, name))
                found.append(UnknownVariable(key, name, did_you_mean(name, candidates)))
    return found


def check_required_vars(config: Config, router: Any) -> None:
    """A built-in template used without a variable it needs is a ConfigError (several:
    ConfigErrors), before any event is read."""
    problems = Problems()
    for name, mapping in router.mappings.items():
        needed = REQUIRED_VARS.get(getattr(mapping, "template_name", None) or "", {})
        given = getattr(mapping, "_vars", {})
        for var, what in needed.items():
            if var not in given:
                problems.errors.append(ConfigError(
                    f"template '{mapping.template_name}' needs vars.{var}: {what}",
                    key=f"mappings.{name}.vars", file=config.file))
    problems.raise_if_any()
