"""Simple templates compiled to one plain Python function each.

Most mapping templates are a line of text with a few ``{{ expression }}`` in it:
``{{ algorithm | upper }} {{ alerttype }} for {{ customer }}``. Jinja renders one with a
new ``Context`` (and its ``EvalContext``) per event and a generator per rendering,
which costs several times the work of the template itself. :func:`compile_simple`
turns such a template into a function ``render(event) -> str`` that looks its
variables up in the event directly and evaluates each expression with the very
operations Jinja's own generated code uses: the sandbox's ``getattr``/``getitem``
(attribute rules, unsafe attributes an error), the environment's filters and tests
(with the environment or evaluation context they ask for), ``undefined(name=...)`` for
a missing variable, the environment's ``finalize`` and ``str`` for every output.
Constant folding is Jinja's own (its optimizer runs on each expression first), and
every rendering runs under the same time and size limits
(:mod:`nwpipe.transform.limits`). An error names the template line as Jinja's would.

A template is simple when it has no statements (no ``{% %}``) and every expression
is built from names, constants, ``.attr``, ``[key]``, filters and tests (with
constant or simple arguments), ``~``, comparisons, ``not``/``and``/``or``, literals and
``a if b else c``. Anything else (calls, macros, loops, arithmetic, filters that take
the whole context, more than a few dozen pieces of output) returns None: the caller
renders that template through Jinja.
"""

from __future__ import annotations

import keyword
from typing import Any, Callable, Mapping

import jinja2
from jinja2 import nodes
from jinja2.compiler import operators as _OPERATORS
from jinja2.exceptions import TemplateSyntaxError
from jinja2.nodes import EvalContext
from jinja2.optimizer import Optimizer
from jinja2.parser import Parser
from jinja2.runtime import missing, str_join
from jinja2.sandbox import SandboxedEnvironment
from jinja2.utils import _PassArg

from nwpipe.transform.limits import RenderLimits, guarded_render

__all__ = ["compile_simple", "compile_simple_expression"]

# guarded_join counts pieces of output one by one from this many on (see limits.py):
# a template with that many pieces keeps Jinja's way, so a size error is raised at the
# same piece.
_MAX_PIECES = 32

_IMMUTABLE = (str, int, float, bool, complex, type(None))


class _NotSimple(Exception):
    """The template uses something this compiler does not write out."""


class _Lines:
    """Stands in for the template in the generated function's globals: the error
    messages find the template's name and line through ``__jinja_template__``, as they
    do in Jinja's generated code."""

    def __init__(self, name: str | None, lines: dict[int, int]):
        self.name = name
        self._lines = lines

    def get_corresponding_lineno(self, lineno: int) -> int:
        """The template line of a line of the generated function."""
        found = 1
        for code_line, template_line in sorted(self._lines.items()):
            if code_line > lineno:
                break
            found = template_line
        return found


def _fresh(value: Any) -> Any:
    # Jinja writes a folded constant as a literal into its code, so a list or dict
    # argument is a new object at each rendering; a filter may change it freely.
    if isinstance(value, list):
        return [_fresh(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_fresh(v) for v in value)
    if isinstance(value, dict):
        return {k: _fresh(v) for k, v in value.items()}
    if isinstance(value, set):
        return {_fresh(v) for v in value}
    return value


def _plain_constant(value: Any) -> bool:
    if isinstance(value, _IMMUTABLE):
        return type(value) in _IMMUTABLE  # a subclass (Markup, say) keeps Jinja's way
    if isinstance(value, (list, tuple, set, frozenset)):
        return type(value) in (list, tuple, set, frozenset) and all(map(_plain_constant, value))
    if isinstance(value, dict):
        return type(value) is dict and all(
            _plain_constant(k) and _plain_constant(v) for k, v in value.items())
    return False


class _Writer:
    """Writes the Python expression of one (optimized) Jinja expression node."""

    def __init__(self, env: SandboxedEnvironment, namespace: dict[str, Any],
                 names: dict[str, str]):
        self.env = env
        self.namespace = namespace
        self.names = names          # template variable -> local name in the function
        self.eval_ctx = False       # whether the function needs an EvalContext
        self.temporaries = 0
        # getattr/getitem may be written out only when they are the sandbox's own
        self.plain_sandbox = (type(env).getattr is SandboxedEnvironment.getattr
                              and type(env).getitem is SandboxedEnvironment.getitem)

    def constant(self, value: Any) -> str:
        name = f"c{len(self.namespace)}"
        self.namespace[name] = value
        return name

    def expr(self, node: nodes.Node) -> str:
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            raise _NotSimple(type(node).__name__)
        return method(node)

    def _Name(self, node: nodes.Name) -> str:
        if node.ctx != "load":
            raise _NotSimple("assignment")
        local = self.names.setdefault(node.name, f"l{len(self.names)}")
        return f"(_undefined(name={self.constant(node.name)}) if {local} is _missing " \
               f"else {local})"

    def _Const(self, node: nodes.Const) -> str:
        value = node.value
        if not _plain_constant(value):
            raise _NotSimple("constant")
        if isinstance(value, _IMMUTABLE) or type(value) is frozenset:
            return self.constant(value)
        return f"_fresh({self.constant(value)})"

    def temporary(self) -> str:
        self.temporaries += 1
        return f"a{self.temporaries}"

    def _Getattr(self, node: nodes.Getattr) -> str:
        if node.ctx != "load":
            raise _NotSimple("assignment")
        value, attr = self.expr(node.node), self.constant(node.attr)
        if self.plain_sandbox and not hasattr(dict, node.attr):
            # The sandbox's getattr of an exact dict, written out: a dict has no such
            # attribute, so getattr() fails and the item is looked up (a miss gives
            # getattr's undefined). Spares an AttributeError per `.name` of an object.
            o = self.temporary()
            return (f"(({o}[{attr}] if {attr} in {o} else _getattr({o}, {attr})) "
                    f"if type({o} := {value}) is dict else _getattr({o}, {attr}))")
        return f"_getattr({value}, {attr})"

    def _Getitem(self, node: nodes.Getitem) -> str:
        if node.ctx != "load" or isinstance(node.arg, nodes.Slice):
            raise _NotSimple("slice")
        value = self.expr(node.node)
        if self.plain_sandbox and type(node.arg) is nodes.Const \
                and type(node.arg.value) in (str, int):
            # The sandbox's getitem tries the item first: for a dict that has it, that
            # is the answer.
            o, key = self.temporary(), self.constant(node.arg.value)
            return f"({o}[{key}] if type({o} := {value}) is dict and {key} in {o} " \
                   f"else _getitem({o}, {key}))"
        return f"_getitem({value}, {self.expr(node.arg)})"

    def _call(self, node: nodes.Filter | nodes.Test, table: dict) -> str:
        func = table.get(node.name)
        if func is None or node.node is None or node.dyn_args is not None \
                or node.dyn_kwargs is not None:
            raise _NotSimple("filter")
        pass_arg = _PassArg.from_obj(func)
        if pass_arg is _PassArg.context:
            raise _NotSimple("filter taking the context")
        parts = []
        if pass_arg is _PassArg.eval_context:
            self.eval_ctx = True
            parts.append("eval_ctx")
        elif pass_arg is _PassArg.environment:
            parts.append("_env")
        parts.append(self.expr(node.node))
        parts.extend(self.expr(arg) for arg in node.args)
        for kwarg in node.kwargs:
            key = str(kwarg.key)
            # an identifier from the template's own parser; a Python keyword would need
            # Jinja's **{...} form, which this does not write
            if not key.isidentifier() or keyword.iskeyword(key):
                raise _NotSimple("keyword argument")
            parts.append(f"{key}={self.expr(kwarg.value)}")
        return f"{self.constant(func)}({', '.join(parts)})"

    def _Filter(self, node: nodes.Filter) -> str:
        return self._call(node, self.env.filters)

    def _Test(self, node: nodes.Test) -> str:
        return self._call(node, self.env.tests)

    def _Concat(self, node: nodes.Concat) -> str:
        return f"_str_join(({''.join(self.expr(n) + ', ' for n in node.nodes)}))"

    def _Compare(self, node: nodes.Compare) -> str:
        text = self.operand(node.expr)
        for op in node.ops:
            text += f" {_OPERATORS[op.op]} {self.operand(op.expr)}"
        return f"({text})"

    def operand(self, node: nodes.Node) -> str:
        # A constant compared with (`severity in ['high', 'low']`) is only read by the
        # comparison and never reaches other code: no new copy is needed.
        if type(node) is nodes.Const and _plain_constant(node.value):
            return self.constant(node.value)
        return self.expr(node)

    def _Not(self, node: nodes.Not) -> str:
        if "not" in self.env.intercepted_unops:
            raise _NotSimple("intercepted operator")
        return f"(not {self.expr(node.node)})"

    def _binop(self, node: nodes.BinExpr, op: str) -> str:
        if op in self.env.intercepted_binops:
            raise _NotSimple("intercepted operator")
        return f"({self.expr(node.left)} {op} {self.expr(node.right)})"

    def _And(self, node: nodes.And) -> str:
        return self._binop(node, "and")

    def _Or(self, node: nodes.Or) -> str:
        return self._binop(node, "or")

    def _CondExpr(self, node: nodes.CondExpr) -> str:
        if node.expr2 is None:
            raise _NotSimple("if without else")
        return (f"({self.expr(node.expr1)} if {self.expr(node.test)} "
                f"else {self.expr(node.expr2)})")

    def _Tuple(self, node: nodes.Tuple) -> str:
        if node.ctx != "load":
            raise _NotSimple("assignment")
        items = [self.expr(n) for n in node.items]
        return f"({', '.join(items)},)" if len(items) == 1 else f"({', '.join(items)})"

    def _List(self, node: nodes.List) -> str:
        return f"[{', '.join(self.expr(n) for n in node.items)}]"

    def _Dict(self, node: nodes.Dict) -> str:
        pairs = (f"{self.expr(p.key)}: {self.expr(p.value)}" for p in node.items)
        return "{" + ", ".join(pairs) + "}"


def compile_simple(template: jinja2.Template, source: str, globals_: Mapping,
                   vars_: Mapping, limits: RenderLimits) -> Callable[[Mapping], str] | None:
    """``render(event) -> str`` for a simple ``template`` (see the module doc), giving
    exactly ``render(template, template_variables(event, globals_, vars_))`` (output or
    exception); None when the template is not simple.

    ``source`` is the template's text; ``vars_`` win over the event's fields, which win
    over ``globals_``; ``event`` is the whole event.
    """
    env = template.environment
    if not isinstance(env, SandboxedEnvironment) or env.is_async \
            or env.autoescape is not False:
        return None
    finalize = env.finalize
    if finalize is not None and _PassArg.from_obj(finalize) is not None:
        return None
    try:
        tree = env.parse(source)
    except TemplateSyntaxError:
        return None
    children: list[nodes.Expr] = []
    for node in tree.body:
        if type(node) is not nodes.Output:
            return None
        children.extend(node.nodes)
    if len(children) >= _MAX_PIECES:
        return None
    try:
        return _build(template, env, children, globals_, vars_, limits)
    except _NotSimple:
        return None


def compile_simple_expression(env: jinja2.Environment, source: str,
                              limits: RenderLimits) -> Callable[[Mapping], Any] | None:
    """``evaluate(event) -> value`` for a simple Jinja expression (``severity == 'high'
    and alerttype != 'ongoing'``), giving exactly what
    ``env.compile_expression(source, undefined_to_none=False)(template_variables(event))``
    gives (value or exception), within ``limits`` (time and signals); None when the
    expression is not simple or does not parse (the caller then reports the error).
    """
    if not isinstance(env, SandboxedEnvironment) or env.is_async \
            or env.autoescape is not False:
        return None
    try:  # as Environment.compile_expression parses it
        parser = Parser(env, source, state="variable")
        expr = parser.parse_expression()
        if not parser.stream.eos:
            return None
        expr.set_environment(env)
    except TemplateSyntaxError:
        return None
    try:
        # Jinja's expression template assigns the value on its line 1
        evaluate = _assemble(env, None, [expr], env.globals, {}, expression=True)
    except _NotSimple:
        return None
    return guarded_render(evaluate, limits, sized=False)


def _build(template: jinja2.Template, env: SandboxedEnvironment, children: list[nodes.Expr],
           globals_: Mapping, vars_: Mapping, limits: RenderLimits) -> Callable[[Mapping], str]:
    evaluate = _assemble(env, template.name, children, globals_, vars_)
    # the size is checked outside the generated function: as with Jinja's own
    # rendering, that error names no template line
    return guarded_render(evaluate, limits)


def _assemble(env: SandboxedEnvironment, template_name: str | None,
              children: list[nodes.Expr], globals_: Mapping, vars_: Mapping,
              expression: bool = False) -> Callable[[Mapping], Any]:
    """The generated ``evaluate(event)``: the text of the output nodes ``children``, or
    with ``expression`` the value of the one expression in ``children``."""
    eval_ctx = EvalContext(env, template_name)
    namespace: dict[str, Any] = {
        "_missing": missing, "_undefined": env.undefined, "_getattr": env.getattr,
        "_getitem": env.getitem, "_env": env, "_str_join": str_join, "_fresh": _fresh,
        "_EvalContext": EvalContext, "_name": template_name,
    }
    names: dict[str, str] = {}
    writer = _Writer(env, namespace, names)
    finalize = "(_finalize(" if env.finalize is not None else "(("
    namespace["_finalize"] = env.finalize
    pieces: list[tuple[str, int]] = []  # (expression, template line)
    for child in children:
        if isinstance(child, nodes.TemplateData):
            pieces.append((writer.constant(child.data), 0))
            continue
        if not expression:
            try:
                child.as_const(eval_ctx)
            except Exception:  # Impossible, or an error Jinja leaves to the rendering
                pass
            else:
                raise _NotSimple("constant output")  # Jinja folds it in at compile time
        optimized = Optimizer(env).visit(child, eval_ctx) if env.optimized else child
        if expression:
            pieces.append((writer.expr(optimized), 1))
        else:
            pieces.append((f"str{finalize}{writer.expr(optimized)}))", child.lineno))

    lines = ["def evaluate(event):"]
    for name, local in names.items():
        if name == "event":
            lines.append(f"    {local} = event")
        elif name in vars_:
            lines.append(f"    {local} = {writer.constant(vars_[name])}")
        elif name in globals_:
            lines.append(f"    {local} = event.get({writer.constant(name)}, "
                         f"{writer.constant(globals_[name])})")
        else:
            lines.append(f"    {local} = event.get({writer.constant(name)}, _missing)")
    if writer.eval_ctx:
        lines.append("    eval_ctx = _EvalContext(_env, _name)")
    template_lines: dict[int, int] = {}
    results = []
    for n, (code_text, line) in enumerate(pieces):
        if line:
            template_lines[len(lines) + 1] = line
            lines.append(f"    p{n} = {code_text}")
            results.append(f"p{n}")
        else:
            results.append(code_text)
    if len(results) == 1:
        lines.append(f"    return {results[0]}")
    else:
        lines.append(f"    return ''.join(({', '.join(results)}))")
    namespace["__jinja_template__"] = _Lines(template_name, template_lines)
    code = compile("\n".join(lines), f"<nwpipe template {template_name or 'string'}>", "exec")
    exec(code, namespace)  # noqa: S102 - names and values are passed as constants
    return namespace["evaluate"]
