"""config.yaml: pydantic models, ``${ENV}`` interpolation and ``load_config()``. No logic.

Every problem is reported with ``file:line:column`` and what to do about it; all of them
at once (``ConfigError.problems``).
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from monitor.core.model import FeedSpec, Severity
from monitor.core.schedule import parse_hhmm, quiet_window, tz_problem
from monitor.core.units import parse_duration, parse_size
from monitor.core.yamlpos import Positions, load_yaml, problems_from_validation
from monitor.errors import ConfigError, Problem, YamlError
from monitor.redact import (
    display_url,
    looks_like_url,
    redact_text,
    template_secrets,
    url_secrets,
)

DEFAULT_CONFIG = "config.yaml"
ENV_CONFIG = "MONITOR_CONFIG"

Duration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
Size = Annotated[int, BeforeValidator(parse_size), Field(gt=0)]
OptionalDuration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]  # 0: off


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Defaults(_Model):
    interval: Duration = 300.0
    # adaptive polling (README "How often feeds are polled"): the feed's hints and its
    # learned cadence move the interval within [min_interval, max_interval] (widened to
    # include ``interval``); ``adaptive: false`` leaves the cadence out, and so does a
    # feed's own ``interval`` unless that feed says ``adaptive: true``
    min_interval: Duration = 60.0
    max_interval: Duration = 3600.0
    adaptive: bool = True
    alert_on_first_poll: bool = False
    jitter: float = Field(0.1, ge=0, le=1)  # fraction of the interval
    channels: tuple[str, ...] = ()  # for rules that name no channels
    # an item published longer ago than this is recorded but never alerted on (a feed
    # re-surfacing its archive); counted as "stale" in the poll's log line, `monitor once`
    # and monitor_stale_items_skipped_total
    max_age: Duration = 3 * 86400.0


class FeedConfig(_Model):
    name: str = Field(min_length=1)
    url: str
    interval: Duration | None = None
    min_interval: Duration | None = None
    max_interval: Duration | None = None
    adaptive: bool | None = None
    tags: tuple[str, ...] = ()
    alert_on_first_poll: bool | None = None
    max_age: Duration | None = None  # default: defaults.max_age

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^\s/]+", v):
            raise ValueError(f"url must start with http:// or https://, got {display_url(v)!r}")
        return v


class FetchConfig(_Model):
    # polls in flight at once; ``auto`` (the default) sizes it for the configured poll
    # rate: ceil(2 s × Σ 1/interval) within [16, 1024] (``schedule.auto_concurrency``)
    concurrency: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    per_host: int = Field(2, ge=1)
    connect_timeout: Duration = 10.0
    timeout: Duration = 30.0
    max_bytes: Size = 10 * 1024 * 1024
    max_redirects: int = Field(5, ge=0)
    user_agent: str = ""
    backoff_max: Duration = 6 * 3600.0
    parse_workers: int = Field(0, ge=0)  # 0 = one more than the cores
    parse_in: Literal["process", "thread"] = "process"
    # one parse/prepare job's deadline: past it the job is abandoned, its worker killed
    # and replaced, and the feed fails (and backs off)
    parse_timeout: Duration = 30.0


class PoolConfig(_Model):
    """``store.pool``: the PostgreSQL connection pool of each instance (SQLite has one
    connection and ignores it)."""

    min: int = Field(1, ge=0)
    max: int = Field(5, ge=1)

    @model_validator(mode="after")
    def _order(self) -> PoolConfig:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is more than max ({self.max})")
        return self


class StoreConfig(_Model):
    """``store:``, a URL, or a mapping with the URL and how each instance uses it:

        store: postgresql://monitor@db/monitor
        store: {url: postgresql://monitor@db/monitor, pool: {min: 1, max: 10},
                timeout: 60s, heartbeat: 5s, dead_after: 30s}

    ``timeout``: one PostgreSQL command's limit. ``heartbeat``: how often an instance
    says it is alive in the store; ``dead_after``: how long another instance waits
    after its last heartbeat before taking it for dead and retaking its claims."""

    url: str = "sqlite:///monitor.db"
    pool: PoolConfig = PoolConfig()
    timeout: Duration = 60.0
    heartbeat: Duration = 5.0
    dead_after: Duration = 30.0

    @model_validator(mode="before")
    @classmethod
    def _from_url(cls, v: Any) -> Any:
        return {"url": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _grace(self) -> StoreConfig:
        if self.dead_after < 2 * self.heartbeat:
            raise ValueError(f"dead_after ({self.dead_after:g}s) must be at least twice "
                             f"heartbeat ({self.heartbeat:g}s): one late heartbeat is not death")
        return self


class QuietHours(_Model):
    """A channel's quiet hours: alerts are held from ``from`` to ``to`` (local time in
    ``tz``, crossing midnight when ``to`` is not after ``from``) and go out as one digest
    when the window ends; severities in ``except_severity`` pass at once."""

    from_: str = Field(alias="from")
    to: str
    tz: str = "UTC"
    except_severity: tuple[Severity, ...] = ()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("from_", "to", mode="before")
    @classmethod
    def _sexagesimal(cls, v: Any) -> Any:
        # YAML 1.1 reads an unquoted 22:00 as the number 1320 (22 × 60): take it back
        if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 24 * 60:
            return f"{v // 60:02d}:{v % 60:02d}"
        return v

    @field_validator("from_", "to")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        parse_hhmm(v)
        return v.strip()

    @field_validator("tz")
    @classmethod
    def _tz(cls, v: str) -> str:
        quiet_window(datetime(2026, 1, 1, tzinfo=UTC), "00:00", "01:00", v)  # a known zone?
        return v

    @field_validator("except_severity", mode="before")
    @classmethod
    def _one(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _span(self) -> QuietHours:
        if parse_hhmm(self.from_) == parse_hhmm(self.to):
            raise ValueError(f"from and to are both {self.to}: the window would be "
                             "empty (or the whole day); give two different times")
        return self

    @property
    def label(self) -> str:
        """``22:00–07:00`` as a reader sees it."""
        return f"{self.from_}\u2013{self.to}"


class SlackChannel(_Model):
    type: Literal["slack"]
    webhook_url: str | None = None
    token: str | None = None
    channel: str | None = None
    base_url: str | None = None  # Web API base URL (tests point slack-sdk at a local server)
    rate: float = Field(1.0, gt=0)  # messages per second
    username: str | None = None
    icon_emoji: str | None = None
    timeout: Duration = Field(30.0, ge=1)  # one request to Slack, connecting included
    quiet: QuietHours | None = None

    @field_validator("webhook_url", "base_url")
    @classmethod
    def _http_url(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return v
        v = v.strip()  # e.g. the line break of a secret read from a file
        if not v:
            raise ValueError(f"{info.field_name} is empty (if it comes from an environment "
                             "variable, that variable is set but empty)")
        if not re.match(r"^https?://[^\s/]+", v, re.IGNORECASE):
            # the value is not shown: a webhook URL is a secret
            example = ("https://hooks.slack.com/services/T…/B…/…"
                       if info.field_name == "webhook_url" else "https://slack.com/api/")
            raise ValueError(f"{info.field_name} must be an http(s) URL like {example}")
        return v

    @model_validator(mode="after")
    def _auth(self) -> SlackChannel:
        if self.webhook_url and self.token:
            raise ValueError("give either webhook_url or token + channel, not both")
        if not self.webhook_url and not self.token:
            raise ValueError(
                "a slack channel needs webhook_url (incoming webhook) or token + channel (bot)"
            )
        if self.token and not self.channel:
            raise ValueError("a bot token needs a channel, e.g. channel: '#news'")
        return self


class EmailChannel(_Model):
    type: Literal["email"]
    host: str
    port: int | None = None
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password: str | None = None
    from_: str = Field(alias="from")
    to: tuple[str, ...] = Field(min_length=1)
    timeout: Duration = 30.0
    rate: float = Field(1.0, gt=0)
    # PEM bundle of the CAs to trust instead of the system store (a relay with a private
    # CA); relative to the config file. Checked when the config is loaded (parse_config).
    ca_file: str | None = None
    quiet: QuietHours | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("to", mode="before")
    @classmethod
    def _to(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("ca_file", "username", "password", mode="before")
    @classmethod
    def _blank_is_unset(cls, v: Any) -> Any:
        # ``username: ${SMTP_USER:-}`` with the variable unset means no login (an empty
        # user name would make the client try one, and the server refuse it for good)
        return None if isinstance(v, str) and not v.strip() else v

    @model_validator(mode="after")
    def _tls(self) -> EmailChannel:
        if self.ca_file and self.security == "none":
            raise ValueError(
                "ca_file needs security: starttls or tls (with security: none no "
                "certificate is checked)"
            )
        return self

    @property
    def effective_port(self) -> int:
        if self.port:
            return self.port
        return {"tls": 465, "starttls": 587, "none": 25}[self.security]


class FileChannel(_Model):
    type: Literal["file"]
    path: str
    rate: float = Field(10000.0, gt=0)  # a local file needs no pacing; the knob stays
    quiet: QuietHours | None = None


Channel = Annotated[SlackChannel | EmailChannel | FileChannel, Field(discriminator="type")]


class DedupConfig(_Model):
    window: Duration = 48 * 3600.0
    threshold: float | None = Field(None, gt=0, le=1)  # None: the calibrated default (0.28)
    # polls whose new stories reach dedup within this time of each other are decided
    # together, in publication order: clusters do not depend on which feed answered first
    settle: OptionalDuration = 0.5


class DeliveryConfig(_Model):
    retry_min: Duration = 30.0
    retry_max: Duration = 3600.0
    give_up_after: Duration = 7 * 86400.0  # retryable failures older than this are given up
    batch: int = Field(50, ge=1)
    # a channel whose due queue is more than its rate can send in this long sends one
    # summary per rule instead of one message per story (0: never roll up)
    rollup_after: OptionalDuration = 5.0
    # an alert still unsent this long after it was queued is not news any more: it goes
    # into one "while monitor could not deliver" summary instead (0: no limit)
    max_age: OptionalDuration = 6 * 3600.0


class DigestConfig(_Model):
    # the IANA time zone digests' cron lines are read in, for rules that name none
    # (``digest: {cron: ..., tz: ...}``); None: UTC
    tz: str | None = None

    @field_validator("tz")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        why = tz_problem(v)
        if why is not None:
            raise ValueError(why)
        return v


class HealthConfig(_Model):
    """Feed health: operational notices (a feed failing, silent, back) go to ``channel``
    (one of ``channels``; none without it, the health is still tracked and shown)."""

    channel: str | None = None
    # where notices about ``channel`` itself go when it is the one failing (a revoked
    # Slack token must not be reported only to that Slack channel)
    fallback: str | None = None
    # a feed failing for this long gets a notice
    feed_failing_after: Duration = 3600.0
    # a feed with no new story for more than factor × its usual time between stories
    # (and at least silent_after_min) is silent
    silent_after_factor: float = Field(6.0, gt=1)
    silent_after_min: Duration = 6 * 3600.0


class ServerAuth(_Model):
    """Credentials the status page and ``/metrics`` ask for (``/healthz`` and ``/readyz``
    stay open for probes): a bearer token, or a user name and password (HTTP basic auth),
    or both. Give them from the environment: ``token: ${MONITOR_STATUS_TOKEN}``."""

    token: str | None = None
    user: str | None = None
    password: str | None = None

    @field_validator("token", "user", "password", mode="before")
    @classmethod
    def _blank_is_unset(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v

    @model_validator(mode="after")
    def _complete(self) -> ServerAuth:
        if (self.user is None) != (self.password is None):
            raise ValueError("basic auth needs both user and password")
        if self.token is None and self.user is None:
            raise ValueError("auth needs a token, or a user and password (an environment "
                             "variable that is set but empty gives none)")
        return self


class ServerConfig(_Model):
    listen: str = "127.0.0.1:9464"
    enabled: bool = True
    # required by the status page and /metrics when set; required to be set when
    # ``listen`` is not a loopback address (checked by ``parse_config``)
    auth: ServerAuth | None = None

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def loopback(self) -> bool:
        """Is ``listen`` reachable from this machine only?"""
        return loopback_host(self.host)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        m = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]*):([0-9]{1,5})", v.strip())
        if m is None or int(m.group(2)) > 65535:
            raise ValueError(f"listen must be host:port with a port from 0 to 65535, like "
                             f"127.0.0.1:9464, 0.0.0.0:9464 or [::1]:9464, got {v!r}")
        return v.strip()


class Config(_Model):
    defaults: Defaults = Defaults()
    feeds: tuple[FeedConfig, ...] = ()
    rules: str = "rules"
    store: StoreConfig = StoreConfig()
    retention: Duration = 30 * 86400.0
    # SIGTERM: in-flight polls and the delivery in hand get this long, then the daemon exits
    shutdown_timeout: Duration = 10.0
    channels: dict[str, Channel] = {}
    fetch: FetchConfig = FetchConfig()
    dedup: DedupConfig = DedupConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    digest: DigestConfig = DigestConfig()
    server: ServerConfig = ServerConfig()
    health: HealthConfig = HealthConfig()
    # where the config file lives: relative paths resolve against it
    base_dir: str = Field("", exclude=True)
    # credentials in URLs: the values ${VAR} put in a URL's user info or query, and those
    # a URL carries by its structure (a password, an api_key=...); see ``display``
    url_secrets: frozenset[str] = Field(frozenset(), exclude=True)
    # channels whose ${VAR} were left unresolved (``load_config(..., channel_secrets=
    # False)``, for the commands that only read the store): known by name only, and
    # ``build_notifiers`` refuses to build them
    unresolved_channels: frozenset[str] = Field(frozenset(), exclude=True)

    @model_validator(mode="after")
    def _unique(self) -> Config:
        for ch in self.defaults.channels:
            if ch not in self.channels:
                known = ", ".join(sorted(self.channels)) or "none"
                raise ValueError(f"defaults.channels: unknown channel {ch!r}; known: {known}")
        seen: set[str] = set()
        for f in self.feeds:
            if f.name in seen:
                raise ValueError(f"feed name {f.name!r} is used twice; feed names must be unique")
            seen.add(f.name)
        d = self.defaults
        if d.min_interval > d.max_interval:
            raise ValueError(f"defaults: min_interval ({d.min_interval:g}s) is longer than "
                             f"max_interval ({d.max_interval:g}s)")
        for f in self.feeds:
            lo, hi = f.min_interval or d.min_interval, f.max_interval or d.max_interval
            if lo > hi:
                raise ValueError(f"feed {f.name!r}: min_interval ({lo:g}s) is longer than "
                                 f"max_interval ({hi:g}s)")
        return self

    def feed_specs(self) -> list[FeedSpec]:
        d = self.defaults
        return [
            FeedSpec(
                name=f.name,
                url=f.url,
                interval=f.interval or d.interval,
                min_interval=f.min_interval or d.min_interval,
                max_interval=f.max_interval or d.max_interval,
                # a feed's own interval is the user saying how often: it is not learned
                # away unless the feed also says ``adaptive: true``
                adaptive=(d.adaptive and f.interval is None) if f.adaptive is None
                else f.adaptive,
                tags=tuple(f.tags),
                alert_on_first_poll=(
                    d.alert_on_first_poll if f.alert_on_first_poll is None else f.alert_on_first_poll
                ),
                max_age=f.max_age or d.max_age,
            )
            for f in self.feeds
        ]

    def display(self, url: str) -> str:
        """``url`` as it may be shown (logs, health, status, errors): credentials as
        ``***``, scheme, host and path readable. Fetch with the real one."""
        return display_url(url, secrets_of(self))

    def redact(self, text: str) -> str:
        """Free text (an error message) with its URLs shown by ``display`` and every
        secret of the configuration as ``***``."""
        return redact_text(text, secrets_of(self))

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p

    @property
    def rules_path(self) -> Path:
        return self.resolve(self.rules)

    @property
    def store_url(self) -> str:
        """The store URL with a relative SQLite path made absolute against the config."""
        url = self.store.url
        if url.startswith("sqlite:///"):
            rest = url[len("sqlite:///") :]
            if rest == ":memory:":
                return url
            return "sqlite:///" + str(self.resolve(rest))
        return url


def loopback_host(host: str) -> bool:
    """``127.0.0.1``, ``127.x.y.z``, ``::1``, ``localhost`` and no host at all (``:9464``:
    the server binds 127.0.0.1): True. Any other name or address (``0.0.0.0``), False."""
    host = host.strip("[]").lower()
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ca_file_problem(path: Path) -> str | None:
    """Why ``path`` cannot serve as a bundle of trusted CAs (PEM), or None if it can."""
    if path.exists() and not path.is_file():
        return f"{path} is not a file"
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(path))
    except FileNotFoundError:
        return f"{path} does not exist"
    except ssl.SSLError as e:  # before OSError: an SSLError is one
        return f"{path} is not a PEM bundle of CA certificates ({e.reason or e})"
    except OSError as e:
        return f"cannot read {path}: {e.strerror or e}"
    return None


def _file_problems(config: Config, path: str, positions: Positions) -> list[Problem]:
    """Files the configuration reads, checked at load (as the rules path is at startup)
    so that ``monitor check`` and the daemon's start report them, not the first alert."""
    out: list[Problem] = []
    for name, ch in config.channels.items():
        if isinstance(ch, EmailChannel) and ch.ca_file:
            problem = ca_file_problem(config.resolve(ch.ca_file))
            if problem:
                pos = positions.get(("channels", name, "ca_file"))
                out.append(
                    Problem(
                        path,
                        pos[0] if pos else None,
                        pos[1] if pos else None,
                        f"channels.{name}.ca_file: {problem}",
                    )
                )
    return out


def _server_problems(config: Config, path: str, positions: Positions) -> list[Problem]:
    """A server reachable from other machines must ask for credentials."""
    out: list[Problem] = []
    srv = config.server
    if srv.enabled and srv.auth is None and not srv.loopback:
        pos = positions.get(("server", "listen"))
        out.append(Problem(
            path, pos[0] if pos else None, pos[1] if pos else None,
            f"server.listen: {srv.listen} is not a loopback address, and the status page and "
            "/metrics would be open to anyone who can reach it: add server.auth with "
            "token: ${MONITOR_STATUS_TOKEN} (or user: and password:), or listen on "
            "127.0.0.1"))
    return out


def _health_problems(config: Config, path: str, positions: Positions) -> list[Problem]:
    """``health.channel`` and ``health.fallback`` name configured channels, and the
    fallback is another channel than the health channel."""
    out: list[Problem] = []
    known = ", ".join(sorted(config.channels)) or "none"
    for key in ("channel", "fallback"):
        name = getattr(config.health, key)
        pos = positions.get(("health", key))
        at = (pos[0] if pos else None, pos[1] if pos else None)
        if name is not None and name not in config.channels:
            out.append(Problem(path, *at, f"health.{key}: unknown channel {name!r}; "
                                          f"known: {known}"))
        elif key == "fallback" and name is not None and name == config.health.channel:
            out.append(Problem(path, *at, "health.fallback: the same channel as "
                                          "health.channel; name another one, which carries "
                                          "the notices when the health channel fails"))
    return out


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(
    data: Any, where: tuple[str | int, ...], env: dict[str, str], missing: list[tuple[Any, str]],
    secrets: set[str],
) -> Any:
    """``data`` with ``${VAR}`` replaced; unset variables appended to ``missing``, and
    the credentials of every URL (see ``monitor.redact``) added to ``secrets``."""
    if isinstance(data, dict):
        return {k: _interpolate(v, (*where, k), env, missing, secrets) for k, v in data.items()}
    if isinstance(data, list):
        return [_interpolate(v, (*where, i), env, missing, secrets) for i, v in enumerate(data)]
    if isinstance(data, str):
        substituted: list[tuple[int, int, str]] = []

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                value = env[name]
            elif default is not None:
                value = default
            else:
                missing.append((where, name))
                return m.group(0)  # leave it: the missing variable is the problem reported
            substituted.append((m.start(), m.end(), value))
            return value

        out = _ENV.sub(sub, data)
        if substituted:
            secrets.update(template_secrets(data, substituted))
        if looks_like_url(out.strip()):
            secrets.update(url_secrets(out.strip(), lone_user=where not in (("store",), ("store", "url"))))
        return out
    return data


def secrets_of(config: Config) -> list[str]:
    """Values that must never be logged (webhook URLs, tokens, passwords, credentials in
    URLs: ``Config.url_secrets``)."""
    out: list[str] = sorted(config.url_secrets)
    for ch in config.channels.values():
        if isinstance(ch, SlackChannel):
            out += [s for s in (ch.webhook_url, ch.token) if s]
        elif isinstance(ch, EmailChannel) and ch.password:
            out.append(ch.password)
    auth = config.server.auth
    if auth is not None:
        out += [s for s in (auth.token, auth.password) if s]
    m = re.match(r"^[a-z]+://[^:/@]+:([^@]+)@", config.store.url)
    if m:
        out.append(m.group(1))  # a database password in the store URL
    return out


def find_config(explicit: str | None) -> Path:
    """The usual precedence: ``--config`` if given, else ``$MONITOR_CONFIG`` if set, else
    ``./config.yaml``."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(ENV_CONFIG)
    if env:
        return Path(env)
    return Path(DEFAULT_CONFIG)


_CHANNEL_TYPES: dict[str, type[SlackChannel | EmailChannel | FileChannel]] = {
    "slack": SlackChannel, "email": EmailChannel, "file": FileChannel,
}


def _defer_channels(data: dict[str, Any], names: set[str]) -> dict[str, Any]:
    """``data`` with the channels ``names`` (that hold unset variables) built without
    validation: a command that only reads the store needs their names, not their
    secrets. A channel whose type is not known is left to validation (and its error)."""
    channels = data.get("channels")
    if not isinstance(channels, dict):
        return data
    built = dict(channels)
    for name in names:
        raw = channels.get(name)
        if isinstance(raw, dict) and raw.get("type") in _CHANNEL_TYPES:
            built[name] = _CHANNEL_TYPES[raw["type"]].model_construct(**raw)
    return {**data, "channels": built}


def parse_config(text: str, path: str, env: dict[str, str] | None = None, *,
                 channel_secrets: bool = True) -> Config:
    """Validate config text; raise ``ConfigError`` listing every problem.

    ``channel_secrets=False`` (the commands that only read the store: status, stories,
    outbox retry, backtest...): a variable that is unset where only a channel uses it
    is not a problem; that channel is kept by name (``Config.unresolved_channels``) and
    cannot be sent to. The store's variables are still needed."""
    env = dict(os.environ) if env is None else env
    try:
        data, positions = load_yaml(text, path)
    except YamlError as e:
        raise ConfigError([e.problem], "invalid configuration") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([Problem(path, 1, 1, "the configuration must be a mapping of keys")])
    missing: list[tuple[Any, str]] = []
    secrets: set[str] = set()
    data = _interpolate(data, (), env, missing, secrets)
    deferred: set[str] = set()
    if not channel_secrets:
        deferred = {str(where[1]) for where, _ in missing
                    if len(where) > 2 and where[0] == "channels"}
        missing = [(where, name) for where, name in missing
                   if not (len(where) > 2 and where[0] == "channels")]
        data = _defer_channels(data, deferred)
    problems: list[Problem] = []
    for where, name in missing:
        pos = positions.get(tuple(where))
        problems.append(
            Problem(
                path,
                pos[0] if pos else None,
                pos[1] if pos else None,
                f"environment variable {name} is not set (used in {'.'.join(map(str, where))}); "
                f"export it or write ${{{name}:-default}}",
            )
        )
    base = str(Path(path).resolve().parent)
    try:
        config = Config.model_validate({**data, "base_dir": base, "url_secrets": secrets,
                                        "unresolved_channels": deferred})
    except ValidationError as e:
        # a value that holds an unset variable is already reported: its validation
        # error is only a consequence (an empty URL is not a URL)
        unset = {(p.line, p.column) for p in problems}
        problems += [p for p in problems_from_validation(e, path, positions)
                     if (p.line, p.column) not in unset or p.line is None]
        config = None
    if config is not None:
        problems += _file_problems(config, path, positions)
        problems += _server_problems(config, path, positions)
        problems += _health_problems(config, path, positions)
    if problems or config is None:
        # a problem may quote a value (``got '...'``): never a credential
        shown = [replace(p, message=redact_text(p.message, secrets)) for p in problems]
        raise ConfigError(shown, "invalid configuration")
    return config


def load_config(path: Path | str, env: dict[str, str] | None = None, *,
                channel_secrets: bool = True) -> Config:
    p = Path(path)
    if not p.exists():
        raise ConfigError(
            [
                Problem(
                    str(p),
                    None,
                    None,
                    "configuration file not found; copy config.example.yaml to config.yaml, "
                    f"or pass --config PATH, or set {ENV_CONFIG}",
                )
            ]
        )
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([Problem(str(p), None, None, f"cannot read: {e}")]) from e
    return parse_config(text, str(p), env, channel_secrets=channel_secrets)
