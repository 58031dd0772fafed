"""config.yaml validation: every problem located at file:line:column, env interpolation."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.config import (
    Config,
    EmailChannel,
    SlackChannel,
    find_config,
    load_config,
    parse_config,
    secrets_of,
)
from monitor.core.units import parse_duration, parse_size
from monitor.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(text, "c.yaml", env or {})
    return [str(p) for p in e.value.problems]


def test_example_config_is_valid() -> None:
    cfg = load_config(ROOT / "config.example.yaml", env={"SLACK_WEBHOOK_URL": "https://h/x"})
    assert [f.name for f in cfg.feeds] == ["bbc-world", "aljazeera", "npr-world"]
    specs = {s.name: s for s in cfg.feed_specs()}
    assert specs["bbc-world"].interval == 300
    assert specs["npr-world"].interval == 600
    assert specs["aljazeera"].tags == ("world",)
    assert cfg.rules_path == ROOT / "rules"
    assert cfg.store_url == f"sqlite:///{ROOT / 'monitor.db'}"
    assert isinstance(cfg.channels["slack-news"], SlackChannel)
    email = cfg.channels["email-oncall"]
    assert isinstance(email, EmailChannel) and email.effective_port == 587
    assert cfg.fetch.max_bytes == 10 * 1024 * 1024


def test_defaults_when_empty() -> None:
    cfg = parse_config("", "c.yaml", {})
    assert cfg.feeds == () and cfg.store.url == "sqlite:///monitor.db"
    assert cfg.defaults.interval == 300 and cfg.retention == 30 * 86400
    assert cfg.dedup.window == 48 * 3600


def test_durations_and_sizes() -> None:
    assert parse_duration("90s") == 90 and parse_duration("5m") == 300
    assert parse_duration("2h") == 7200 and parse_duration("7d") == 7 * 86400
    assert parse_duration(12) == 12.0
    assert parse_size("10MiB") == 10 * 2**20 and parse_size("512kb") == 512_000
    with pytest.raises(ValueError, match="duration"):
        parse_duration("soon")
    with pytest.raises(ValueError, match="size"):
        parse_size("big")


def test_every_problem_is_located() -> None:
    text = (
        "feeds:\n"
        "  - name: a\n"
        "    url: http://x/feed\n"
        "    intervall: 5m\n"  # line 4: typo
        "  - name: b\n"
        "    url: ftp://x\n"  # line 6: bad scheme
        "    interval: soon\n"  # line 7: bad duration
        "channels:\n"
        "  s:\n"
        "    type: slack\n"
        "    webhook_url: ${NOPE}\n"  # line 11: missing env
    )
    got = problems(text)
    assert any(p.startswith("c.yaml:4:5: unknown key 'feeds.0.intervall'") for p in got), got
    assert any(p.startswith("c.yaml:6:10: feeds.1.url: url must start with http") for p in got), got
    assert any(p.startswith("c.yaml:7:15:") and "duration" in p for p in got), got
    assert any(p.startswith("c.yaml:11:18: environment variable NOPE is not set") for p in got), got


def test_duplicate_feed_names_and_yaml_errors() -> None:
    got = problems("feeds:\n  - {name: a, url: 'http://x'}\n  - {name: a, url: 'http://y'}\n")
    assert any("used twice" in p for p in got)
    got = problems("feeds: [\n")
    assert got[0].startswith("c.yaml:") and "invalid YAML" in got[0]
    got = problems("store: a\nstore: b\n")
    assert "duplicate key 'store'" in got[0] and got[0].startswith("c.yaml:2:1")


def test_channel_validation() -> None:
    got = problems("channels:\n  s:\n    type: slack\n    token: x\n")
    assert any("needs a channel" in p for p in got)
    got = problems("channels:\n  s:\n    type: pager\n")
    assert got and got[0].startswith("c.yaml:3:5:") and "pager" in got[0]
    got = problems("channels:\n  e:\n    type: email\n    host: h\n    from: a@b\n")
    assert any("missing required key 'channels.e.to'" in p for p in got), got


def test_slack_urls_are_checked_without_showing_them() -> None:
    text = "channels:\n  s:\n    type: slack\n    webhook_url: ${HOOK}\n"
    [bad] = problems(text, {"HOOK": "notaurl-T0/B0/secret123"})
    assert bad.startswith("c.yaml:4:18:") and "webhook_url must be an http(s) URL" in bad, bad
    assert "secret123" not in bad
    [empty] = problems(text, {"HOOK": ""})
    assert "webhook_url is empty" in empty and "set but empty" in empty, empty
    [api] = problems("channels:\n  s:\n    type: slack\n    token: xoxb-1\n"
                     "    channel: '#n'\n    base_url: slack.com/api\n")
    assert "base_url must be an http(s) URL" in api, api
    ok = parse_config(text, "c.yaml", {"HOOK": "HTTPS://hooks.slack.com/services/T0/B0/x\n"})
    s = ok.channels["s"]  # any case of scheme; the line break of a secrets file dropped
    assert isinstance(s, SlackChannel)
    assert s.webhook_url == "HTTPS://hooks.slack.com/services/T0/B0/x"


@pytest.mark.parametrize("listen", ["nonsense", "0.0.0.0:99999", "127.0.0.1:", ":x", "::1",
                                    "http://0.0.0.0:9464", "host name:1", "0.0.0.0:\u00b2"])
def test_a_bad_listen_address_is_located(listen: str) -> None:
    [got] = problems(f"server:\n  listen: '{listen}'\n")
    assert got.startswith("c.yaml:2:11:") and "listen must be host:port" in got, got


@pytest.mark.parametrize("listen", ["127.0.0.1:9464", "0.0.0.0:0", "[::1]:9464", "localhost:80",
                                    ":9464", "127.0.0.2:1"])
def test_good_listen_addresses(listen: str) -> None:
    auth = "" if listen.startswith(("127.", "[::1]", "localhost", ":")) else "  auth: {token: t0k3n}\n"
    cfg = parse_config(f"server:\n  listen: '{listen}'\n{auth}", "c.yaml", {})
    assert cfg.server.listen == listen
    assert cfg.server.loopback == (not auth)


@pytest.mark.parametrize("listen", ["0.0.0.0:9464", "[::]:9464", "192.0.2.7:80",
                                    "monitor.example.org:9464"])
def test_a_non_loopback_listen_without_auth_is_refused_where_it_is_written(listen: str) -> None:
    [got] = problems(f"feeds: []\nserver:\n  listen: '{listen}'\n")
    assert got.startswith("c.yaml:3:11:") and "not a loopback address" in got, got
    assert "server.auth" in got and "MONITOR_STATUS_TOKEN" in got
    # off, the server opens nothing
    parse_config(f"server:\n  listen: '{listen}'\n  enabled: false\n", "c.yaml", {})


def test_server_auth_from_the_environment_is_a_secret() -> None:
    text = "server:\n  listen: 0.0.0.0:9464\n  auth:\n    token: ${TOK}\n"
    cfg = parse_config(text, "c.yaml", {"TOK": "s3cr3t-tok"})
    assert cfg.server.auth is not None and cfg.server.auth.token == "s3cr3t-tok"
    assert "s3cr3t-tok" in secrets_of(cfg)
    assert cfg.redact("Bearer s3cr3t-tok") == "Bearer ***"
    [unset] = problems(text)
    assert unset.startswith("c.yaml:4:12:") and "TOK is not set" in unset, unset
    [empty] = problems(text, {"TOK": " "})
    assert "auth needs a token, or a user and password" in empty, empty
    basic = parse_config("server:\n  listen: 0.0.0.0:1\n  auth:\n    user: ops\n"
                         "    password: ${PW}\n", "c.yaml", {"PW": "hunter22"})
    assert basic.server.auth is not None and "hunter22" in secrets_of(basic)
    [half] = problems("server:\n  auth: {user: ops}\n")
    assert "needs both user and password" in half, half


def test_env_interpolation_and_secrets() -> None:
    cfg = parse_config(
        "channels:\n  s:\n    type: slack\n    webhook_url: ${HOOK}\n"
        "  e:\n    type: email\n    host: ${SMTP_HOST:-localhost}\n    from: a@b\n    to: c@d\n"
        "    password: ${PW}\n",
        "c.yaml",
        {"HOOK": "https://hooks.example/T/B/secret", "PW": "hunter22"},
    )
    s = cfg.channels["s"]
    assert isinstance(s, SlackChannel) and s.webhook_url == "https://hooks.example/T/B/secret"
    e = cfg.channels["e"]
    assert isinstance(e, EmailChannel) and e.host == "localhost" and e.to == ("c@d",)
    assert set(secrets_of(cfg)) == {"https://hooks.example/T/B/secret", "hunter22"}


def test_unset_optional_login_means_no_login() -> None:
    """``username: ${SMTP_USER:-}`` with the variable unset: no AUTH attempt at all (an
    empty user name would be sent and refused for good)."""
    cfg = parse_config(
        "channels:\n  e:\n    type: email\n    host: localhost\n    from: a@b\n    to: c@d\n"
        "    username: ${SMTP_USER:-}\n    password: ${SMTP_PASSWORD:-}\n",
        "c.yaml", {},
    )
    e = cfg.channels["e"]
    assert isinstance(e, EmailChannel) and e.username is None and e.password is None
    set_ = parse_config(
        "channels:\n  e:\n    type: email\n    host: localhost\n    from: a@b\n    to: c@d\n"
        "    username: ${SMTP_USER:-}\n", "c.yaml", {"SMTP_USER": "alerts"},
    ).channels["e"]
    assert isinstance(set_, EmailChannel) and set_.username == "alerts"


def test_missing_file_is_a_helpful_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "nope.yaml")
    assert "not found" in str(e.value) and "--config" in str(e.value)


def test_find_config_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The usual precedence: the flag, then the environment, then the default file; an
    existing ./config.yaml does not silently beat $MONITOR_CONFIG."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text("")
    monkeypatch.setenv("MONITOR_CONFIG", str(tmp_path / "env.yaml"))
    assert find_config("x.yaml") == Path("x.yaml")
    assert find_config(None) == tmp_path / "env.yaml"
    monkeypatch.delenv("MONITOR_CONFIG")
    assert find_config(None) == Path("config.yaml")


def test_config_is_frozen() -> None:
    cfg = Config()
    with pytest.raises(Exception, match="frozen"):
        cfg.rules = "x"  # type: ignore[misc]


def test_default_channels_must_exist() -> None:
    got = problems("defaults:\n  channels: [nope]\nchannels:\n  f: {type: file, path: a}\n")
    assert any("unknown channel 'nope'" in p for p in got), got
    cfg = parse_config("defaults:\n  channels: [f]\nchannels:\n  f: {type: file, path: a}\n",
                       "c.yaml", {})
    assert cfg.defaults.channels == ("f",)


def test_a_yaml_value_that_cannot_be_built_is_a_config_error(tmp_path: Path) -> None:
    """PyYAML builds dates itself and raises ValueError for 2024-02-30: reported, located
    in the file, never a traceback."""
    p = tmp_path / "config.yaml"
    p.write_text("feeds: []\nstarted: 2024-02-30\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"config.yaml: invalid YAML: day is out of range"):
        load_config(p)


def test_an_unset_variable_is_reported_once(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("feeds: []\nchannels:\n  s: {type: slack, webhook_url: '${NOPE_URL}'}\n",
                   encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_config(cfg, env={})
    assert len(e.value.problems) == 1, e.value.problems
    assert "NOPE_URL is not set" in e.value.problems[0].message
    # a real problem elsewhere in the same file is still reported
    cfg.write_text("feeds: []\nchannels:\n  s: {type: slack, webhook_url: '${NOPE_URL}'}\n"
                   "  t: {type: slack, webhook_url: 'ftp://x'}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as e2:
        load_config(cfg, env={})
    assert len(e2.value.problems) == 2


# -- health and max_age (#13) -------------------------------------------------------------


def test_health_and_max_age() -> None:
    cfg = parse_config("""
defaults: {max_age: 2d}
feeds:
  - {name: a, url: 'https://a.example/rss'}
  - {name: archive, url: 'https://b.example/rss', max_age: 30d}
channels:
  ops: {type: file, path: ops.jsonl}
health:
  channel: ops
  feed_failing_after: 30m
  silent_after_factor: 4
  silent_after_min: 2h
""", "c.yaml", {})
    assert [s.max_age for s in cfg.feed_specs()] == [2 * 86400, 30 * 86400]
    h = cfg.health
    assert (h.channel, h.feed_failing_after, h.silent_after_factor, h.silent_after_min) == (
        "ops", 1800, 4, 7200)
    empty = parse_config("", "c.yaml", {})
    assert empty.health.channel is None and empty.health.feed_failing_after == 3600
    assert empty.defaults.max_age == 3 * 86400


def test_health_problems_are_located() -> None:
    got = problems("""
channels:
  ops: {type: file, path: ops.jsonl}
health:
  channel: pager
""")
    assert got == ["c.yaml:5:12: health.channel: unknown channel 'pager'; known: ops"], got
    got = problems("""
channels:
  ops: {type: file, path: ops.jsonl}
health:
  channel: ops
  feed_failing_after: soon
  silent_after_factor: 1
""")
    assert any(p.startswith("c.yaml:6:23:") and "feed_failing_after" in p for p in got), got
    assert any(p.startswith("c.yaml:7:24:") and "silent_after_factor" in p for p in got), got
    got = problems("feeds:\n  - {name: a, url: 'https://a.example/', max_age: 0}\n")
    assert any(p.startswith("c.yaml:2:") and "max_age" in p for p in got), got


def test_health_fallback_is_another_configured_channel() -> None:
    got = problems("""
channels:
  ops: {type: file, path: ops.jsonl}
health:
  channel: ops
  fallback: pager
""")
    assert got == ["c.yaml:6:13: health.fallback: unknown channel 'pager'; known: ops"], got
    got = problems("""
channels:
  ops: {type: file, path: ops.jsonl}
health:
  channel: ops
  fallback: ops
""")
    assert len(got) == 1 and got[0].startswith("c.yaml:6:13: health.fallback: the same channel")


def test_store_is_a_url_or_a_mapping_with_pool_timeout_and_liveness() -> None:
    cfg = parse_config("store: postgresql://u:pw@db/m\n", "c.yaml", {})
    assert cfg.store.url == "postgresql://u:pw@db/m" and cfg.store_url == cfg.store.url
    assert (cfg.store.pool.min, cfg.store.pool.max, cfg.store.timeout) == (1, 5, 60.0)
    assert (cfg.store.heartbeat, cfg.store.dead_after) == (5.0, 30.0)
    assert "pw" in secrets_of(cfg)
    cfg = parse_config(
        "store:\n  url: postgresql://u:${PW}@db/m\n  pool: {min: 2, max: 20}\n"
        "  timeout: 15s\n  heartbeat: 2s\n  dead_after: 10s\n", "c.yaml", {"PW": "sekret"})
    assert cfg.store.url == "postgresql://u:sekret@db/m"
    assert (cfg.store.pool.min, cfg.store.pool.max, cfg.store.timeout) == (2, 20, 15.0)
    assert (cfg.store.heartbeat, cfg.store.dead_after) == (2.0, 10.0)
    assert "sekret" in secrets_of(cfg)


def test_store_settings_are_validated_where_they_are_written() -> None:
    got = problems("store:\n  url: sqlite:///m.db\n  pool: {min: 4, max: 2}\n")
    assert any(p.startswith("c.yaml:3:") and "min (4) is more than max (2)" in p
               for p in got), got
    got = problems("store:\n  url: sqlite:///m.db\n  timeout: soon\n")
    assert any(p.startswith("c.yaml:3:12") and "duration" in p for p in got), got
    got = problems("store:\n  url: sqlite:///m.db\n  poool: {max: 3}\n")
    assert any(p.startswith("c.yaml:3:") and "poool" in p for p in got), got
    got = problems("store:\n  heartbeat: 10s\n  dead_after: 15s\n")
    assert any(p.startswith("c.yaml:2:") and "at least twice" in p for p in got), got
