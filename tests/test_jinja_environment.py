"""One Jinja environment factory: mappings, `when` and a webhook's URL and headers get the
same filters, the built-in ones registered through the hook like a user's."""

from __future__ import annotations

import textwrap

from test_webhook_e2e import event, nwpipe

from nwpipe.plugins import Plugins
from nwpipe.transform import templating
from nwpipe.transform.templating import make_environment, output_environment


def test_builtin_filters_come_from_a_builtin_plugin_through_the_hook():
    plugins = Plugins(load_entry_points=False)
    assert plugins.filter_plugins["isotime"] == "nwpipe_plugins.filters"
    assert set(templating.BUILTIN_FILTERS) <= set(plugins.jinja_filters)
    info = {i.name: i for i in plugins.info()}
    assert info["nwpipe_plugins.filters"].hooks == ["register_jinja_filters"]
    assert "isotime" in info["nwpipe_plugins.filters"].jinja_filters


def test_a_user_filter_reaches_every_kind_of_template_and_may_replace_a_builtin(tmp_path):
    (tmp_path / "mine.py").write_text(textwrap.dedent("""
        from nwpipe import hookimpl

        @hookimpl
        def register_jinja_filters(register):
            register("shout", lambda s: str(s).upper() + "!")
            register("isotime", lambda v: "my-time")
    """))
    try:
        plugins = Plugins([tmp_path], load_entry_points=False)
        assert plugins.filter_plugins["isotime"] != "nwpipe_plugins.filters"
        for env in (make_environment(), output_environment(),
                    output_environment(finalize=lambda v: f"<{v}>")):
            assert env.from_string("{{ 'a' | shout }} {{ 1 | isotime }}").render() in \
                ("A! my-time", "<A!> <my-time>")
    finally:
        Plugins(load_entry_points=False)  # back to the built-in filters only
    assert output_environment().from_string("{{ 1689391131 | isotime }}").render() == \
        "2023-07-15T03:18:51Z"


async def test_header_and_url_templates_may_use_every_filter(tmp_path, receiver):
    config = f"""
        [outputs.soc]
        type = "webhook"
        url = "{receiver.url}/at/{{{{ start | isotime }}}}"
        headers = {{ X-Start = "{{{{ start | isotime }}}}", X-Ips = "{{{{ srcip | join_ips }}}}" }}
    """
    check = await nwpipe(tmp_path, config, command="check")
    assert check.returncode == 0, check.stderr
    assert "No filter named" not in check.stderr + check.stdout
    run = await nwpipe(tmp_path, config, [event("a-1", start=1689391131,
                                                srcip=["192.0.2.1", "192.0.2.2"])])
    assert run.returncode == 0, run.stderr
    [request] = receiver.requests
    assert request.headers["X-Start"] == "2023-07-15T03:18:51Z"
    assert request.headers["X-Ips"] == "192.0.2.1, 192.0.2.2"
    assert request.path == "/at/2023-07-15T03%3A18%3A51Z"
