"""Config loading: TOML, ${ENV} expansion, validation with path-precise messages."""

from __future__ import annotations

import pytest

from nwpipe.config import build_config, expand_env, find_config_file, load_config
from nwpipe.errors import ConfigError
from nwpipe.plugins import Plugins


@pytest.fixture(scope="module")
def types():
    return Plugins(load_entry_points=False).output_types


def write(tmp_path, text):
    path = tmp_path / "nwpipe.toml"
    path.write_text(text)
    return str(path)


def error(tmp_path, types, text, environ=None):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, types, environ=environ or {})
    return str(info.value)


def test_no_config_is_stdout_passthrough(types):
    config = load_config(None, types, environ={})
    assert list(config.outputs) == ["stdout"]
    assert config.outputs["stdout"].type == "stdout"
    assert config.outputs["stdout"].mapping is None


def test_full_output_table(tmp_path, types):
    config = load_config(write(tmp_path, """
        dead_letter = "dl.jsonl"
        [mappings.siem]
        [mappings.siem-acme]
        [defaults]
        concurrency = 4
        [outputs.archive]
        type = "file"
        path = "out/${NAME:-events}.jsonl"
        mapping = { default = "siem", acme = "siem-acme" }
        customers = ["acme", "globex"]
        when = "alerttype != 'ongoing'"
        retry = { max_attempts = 3, initial_backoff = 0.1 }
        rate_limit = 50
    """), types, environ={})
    out = config.outputs["archive"]
    assert out.settings["path"] == "out/events.jsonl"
    assert out.mapping == {"default": "siem", "acme": "siem-acme"}
    assert out.customers == frozenset({"acme", "globex"})
    assert out.when == "alerttype != 'ongoing'"
    assert out.engine.concurrency == 4          # from [defaults]
    assert out.engine.retry.max_attempts == 3
    assert out.engine.retry.initial_backoff == 0.1
    assert out.engine.retry.max_backoff == 30.0  # default kept
    assert out.engine.rate_limit == 50.0
    assert config.dead_letter == "dl.jsonl"


def test_output_value_wins_over_defaults(tmp_path, types):
    config = load_config(write(tmp_path, """
        [defaults]
        concurrency = 4
        [outputs.a]
        type = "file"
        path = "a"
        concurrency = 2
        [outputs.b]
        type = "stdout"
    """), types, environ={})
    assert config.outputs["a"].engine.concurrency == 2
    assert config.outputs["b"].engine.concurrency == 4


def test_env_expansion_everywhere():
    env = {"HOST": "soc.example.com", "TOKEN": "s3cret"}
    data = {"a": "https://${HOST}/x", "b": ["${TOKEN}", "${MISSING:-fallback}"], "c": "$$5 ${TOKEN}",
            "d": {"e": 1}}
    assert expand_env(data, "", None, env) == {
        "a": "https://soc.example.com/x", "b": ["s3cret", "fallback"], "c": "$5 s3cret", "d": {"e": 1}}


def test_unset_variable_names_key_not_value(tmp_path, types):
    message = error(tmp_path, types, '[outputs.a]\ntype = "file"\npath = "${DL_PATH}"\n')
    assert "outputs.a.path" in message
    assert "DL_PATH is not set" in message
    assert message.startswith(str(tmp_path / "nwpipe.toml"))


@pytest.mark.parametrize("text, where, what", [
    ('[outputs.a]\ntype = "fille"\n', "outputs.a.type", "did you mean 'file'"),
    ('[outputs.a]\ntype = "file"\npaht = "x"\n', "outputs.a.paht", "did you mean 'path'"),
    ('[outputs.a]\ntype = "file"\n', "outputs.a.path", "required setting is missing"),
    ('[outputs.a]\npath = "x"\n', "outputs.a.type", "required setting is missing"),
    ('[outputs.a]\ntype = "file"\npath = 5\n', "outputs.a.path", "must be a string"),
    ('[outputs.a]\ntype = "file"\npath = "x"\nconcurrency = 0\n', "outputs.a.concurrency", "greater than 0"),
    ('[outputs.a]\ntype = "file"\npath = "x"\nretry = { max_atempts = 3 }\n',
     "outputs.a.retry.max_atempts", "did you mean 'max_attempts'"),
    ('[outputs.a]\ntype = "file"\npath = "x"\nmapping = "siem"\n', "outputs.a.mapping",
     "no mapping named 'siem'"),
    ('[mappings.siem]\n[outputs.a]\ntype = "file"\npath = "x"\nmapping = { default = "sien" }\n',
     "outputs.a.mapping.default", "did you mean 'siem'"),
    ('[outputs.a]\ntype = "file"\npath = "x"\ncustomers = "acme"\n', "outputs.a.customers", "must be a list"),
    ('[outputs.a]\ntype = "file"\npath = "x"\nbatch = { format = "ndjson" }\n', "outputs.a.batch.format",
     "has no batch formats"),
    ('[outputs.a]\ntype = "webhook"\nurl = "https://x.example/"\nbatch = { format = "xml" }\n',
     "outputs.a.batch.format", "'json_array'"),
    ('[defaults]\nconcurency = 3\n[outputs.a]\ntype = "stdout"\n', "defaults.concurency",
     "did you mean 'concurrency'"),
    ('outputz = 1\n', "outputz", "did you mean 'outputs'"),
    ('dead_letter = "x"\n', "outputs", "no outputs configured"),
    ('templates = ["nope"]\n[outputs.a]\ntype = "stdout"\n', "templates[0]", "does not exist"),
])
def test_validation_names_key_and_problem(tmp_path, types, text, where, what):
    message = error(tmp_path, types, text)
    assert f": {where}: " in message
    assert what in message


def test_toml_syntax_error_has_line(tmp_path, types):
    message = error(tmp_path, types, '[outputs.a]\ntype = "stdout"\nx = \n')
    assert "nwpipe.toml:3: invalid TOML" in message


def test_missing_file(tmp_path, types):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.toml"), types)


def test_portal_alias_and_canonical_name_conflict(types):
    from nwpipe import Output, Setting

    class Portal(Output):
        settings = {"username": Setting(str, aliases=("authusername",))}

    with pytest.raises(ConfigError, match="set the same thing"):
        build_config({"outputs": {"p": {"type": "p", "username": "a", "authusername": "b"}}},
                     {"p": Portal}, environ={})
    config = build_config({"outputs": {"p": {"type": "p", "authusername": "a"}}}, {"p": Portal},
                          environ={})
    assert config.outputs["p"].settings["username"] == "a"


def test_config_file_discovery(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NWPIPE_CONFIG", raising=False)
    assert find_config_file(None) is None
    (tmp_path / "nwpipe.toml").write_text("")
    assert find_config_file(None) == "nwpipe.toml"
    monkeypatch.setenv("NWPIPE_CONFIG", "/etc/nwpipe.toml")
    assert find_config_file(None) == "/etc/nwpipe.toml"
    assert find_config_file("mine.toml") == "mine.toml"
