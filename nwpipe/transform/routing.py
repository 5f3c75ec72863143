"""Routing: which outputs an event goes to, and with which mapping.

An event goes to every output whose ``customers`` and ``when`` match it (fan-out),
shaped by that output's mapping for the event's customer. Routes are compiled once
when the config loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

from nwpipe.config import Config, OutputConfig


def _identity(event: dict) -> dict:
    return event


@dataclass
class Route:
    """One output with its compiled filter and per-customer mappings."""

    output: OutputConfig
    customers: frozenset[str] | None
    condition: Callable[[dict], bool] | None
    by_customer: dict[str, Callable[[dict], object]]
    default_mapping: Callable[[dict], object] | None
    default_mapping_name: str | None
    mapping_names: dict[str, str]

    @property
    def name(self) -> str:
        return self.output.name

    def matches(self, event: dict) -> bool:
        """True when the event is for this output (customers and ``when``).

        Raises EventError when the ``when`` expression fails on this event.
        """
        if self.customers is not None and event.get("customer") not in self.customers:
            return False
        if self.condition is not None and not self.condition(event):
            return False
        return True

    def mapper(self, customer) -> Callable[[dict], object] | None:
        """The mapping function for a customer; None when the customer has none."""
        return self.by_customer.get(customer, self.default_mapping)

    def mapping_name(self, customer) -> str | None:
        return self.mapping_names.get(customer, self.default_mapping_name)


class Router:
    """All routes of a config, compiled."""

    def __init__(self, config: Config, jinja_filters: dict | None = None):
        self.config = config
        self.routes: list[Route] = []
        #: every compiled mapping by name (also those no output uses, for `nwpipe test`)
        self.mappings: dict[str, Any] = {}
        compiled = self.mappings
        needs_jinja = bool(config.mappings) or any(o.when for o in config.outputs.values())
        env = None
        if needs_jinja:
            from nwpipe.transform.limits import RenderLimits
            from nwpipe.transform.mapping import compile_mappings
            from nwpipe.transform.templating import compile_condition, make_environment

            limits = RenderLimits(config.template_time_limit, config.template_max_bytes)
            env = make_environment(config.templates, jinja_filters or {}, limits=limits)
            compiled.update(compile_mappings(config.mappings, env, file=config.file))
        for output in config.outputs.values():
            condition = None
            if output.when:
                assert env is not None  # made above whenever an output has a `when`
                condition = compile_condition(env, output.when, key=f"outputs.{output.name}.when",
                                              file=config.file)
            by_customer: dict[str, Callable] = {}
            names: dict[str, str] = {}
            default: Callable[[dict], object] | None = _identity
            default_name = None
            if isinstance(output.mapping, str):
                default = compiled[output.mapping].apply
                default_name = output.mapping
            elif isinstance(output.mapping, dict):
                default = None
                for customer, mapping_name in output.mapping.items():
                    if customer == "default":
                        default = compiled[mapping_name].apply
                        default_name = mapping_name
                    else:
                        by_customer[customer] = compiled[mapping_name].apply
                        names[customer] = mapping_name
            self.routes.append(Route(output, output.customers, condition, by_customer, default,
                                     default_name, names))

    def route(self, event: dict) -> Iterator[Route]:
        """The routes an event takes (``when`` errors propagate as EventError)."""
        for route in self.routes:
            if route.matches(event):
                yield route
