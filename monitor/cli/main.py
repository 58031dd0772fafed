"""The commands. Parses arguments, calls the rest, prints text or ``--json``.

    monitor run        the daemon
    monitor once       poll every feed once, deliver, exit
    monitor check      validate config and rules; print every problem; exit 1 if any
    monitor demo       the real pipeline on bundled feeds, offline
    monitor status     feeds and outbox state
    monitor feeds      every feed's health: state, last success, next poll, cadence, problem
    monitor alerts     what was sent, held, rolled up or failed, with the peer's answer
    monitor notify test CHANNEL  send a test message through a channel
    monitor outbox retry  send failed deliveries again
    monitor rules test "would this story fire?" with the reasons
    monitor backtest   replay stored stories through (edited) rules, send nothing
    monitor stories cluster|list|show|explain
    monitor migrate    bring the store's schema to this monitor's version (--dry-run)
    monitor store copy --from URL --to URL   move a whole store (SQLite to PostgreSQL)
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from monitor import __version__
from monitor.cli.report import json_requested, log_problems, report_error, say_error
from monitor.cli.stdio import make_stdio_reliable
from monitor.config import Config, find_config, load_config
from monitor.core.rules.model import RuleSet
from monitor.core.units import parse_duration
from monitor.errors import ConfigError, MonitorError, Problem, RulesError
from monitor.log import get_logger, setup_logging
from monitor.shell import gcpolicy, loop


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="PATH",
                   help="config file (default $MONITOR_CONFIG, else ./config.yaml); "
                   "may also come before the command")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   help="default: info (warning for demo and the offline tools)")
    p.add_argument("--log-format", default="text", choices=["text", "json"])


class _Parser(argparse.ArgumentParser):
    """argparse, whose usage errors are a JSON log line when JSON logs were asked for."""

    json_errors = False

    def error(self, message: str) -> Any:  # argparse's signature says NoReturn
        if not self.json_errors:
            super().error(message)
        get_logger("monitor.cli").error("usage.invalid", error=message,
                                        usage=self.format_usage().strip())
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog="monitor",
        description="Watch news feeds; alert in Slack, by email or to a file, once per "
        "story, when a story matches your rules.",
        epilog="Start with `monitor demo` (offline, bundled feeds), then `monitor check "
        "--config config.yaml` and `monitor run`. `monitor COMMAND --help` for a "
        "command's options.",
    )
    ap.add_argument("--version", action="version", version=f"monitor {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the daemon")
    _add_common(p)
    p = sub.add_parser(
        "once", help="poll every feed once, deliver, exit",
        description="Exit status: 0 when it ran (some feeds may have failed: they are "
        "listed), 2 when every feed failed; with --strict, 3 when any feed failed or any "
        "delivery failed for good.")
    _add_common(p)
    p.add_argument("--strict", action="store_true",
                   help="exit 3 when any feed or delivery failed (for cron and monitoring)")
    p = sub.add_parser("check", help="validate config and rules")
    _add_common(p)
    p = sub.add_parser("demo", help="run the real pipeline offline on bundled feeds")
    _add_common(p)
    p.add_argument("--keep", metavar="DIR", nargs="?", const="",
                   help="keep the demo's files (in DIR, or a new temporary directory), and "
                        "then keep the daemon running on them with its status page on "
                        "--listen, until Ctrl-C")
    p.add_argument("--listen", metavar="HOST:PORT", default="127.0.0.1:9464",
                   help="where --keep serves the status page (default: %(default)s)")
    p = sub.add_parser("status", help="feeds and outbox state")
    _add_common(p)
    from monitor.cli import alerts as alerts_cli
    from monitor.cli import feeds as feeds_cli
    from monitor.cli import notifytest, storecmd

    feeds_cli.add_parser(sub, _add_common)
    alerts_cli.add_parser(sub, _add_common)
    notifytest.add_parser(sub, _add_common)
    storecmd.add_parsers(sub, _add_common)

    outbox = sub.add_parser("outbox", help="the deliveries").add_subparsers(
        dest="outbox_cmd", required=True)
    p = outbox.add_parser(
        "retry", help="send failed deliveries again (after fixing their cause)",
        description="Failed deliveries (a permanent refusal such as a bad token or a "
        "rejected recipient, or retries given up) go back to the outbox, due now; a "
        "running daemon sends them on its next round, `monitor once` at once. Without "
        "--channel or --id: every failed delivery.")
    _add_common(p)
    p.add_argument("--channel", help="only this channel's")
    p.add_argument("--id", type=_delivery_id, action="append", default=[], dest="ids",
                   metavar="ID", help="only this delivery (see `monitor status`); repeatable")

    rules = sub.add_parser("rules", help="rule tools").add_subparsers(dest="rules_cmd",
                                                                      required=True)
    p = rules.add_parser("test", help="would a story fire? and why")
    _add_common(p)
    p.add_argument("file", nargs="?", help="a text file (first line = title) or a feed file")
    p.add_argument("--title", help="story title")
    p.add_argument("--text", help="story text")
    p.add_argument("--feed", metavar="FILE_OR_URL", help="test every entry of a feed")
    p.add_argument("--rules", metavar="PATH", help="rules to test (default: the config's)")
    p.add_argument("--all", action="store_true", help="show every story and every rule, matched or not (text and --json)")

    p = sub.add_parser("backtest", help="replay stored stories through rules; send nothing")
    _add_common(p)
    p.add_argument("--since", default="7d", help="how far back (default 7d)")
    p.add_argument("--rules", metavar="PATH", help="rules to replay (default: the config's)")

    stories = sub.add_parser("stories", help="story clusters").add_subparsers(
        dest="stories_cmd", required=True)
    p = stories.add_parser("cluster", help="cluster JSON lines from stdin (offline)")
    _add_common(p)
    p.add_argument("--window", help="dedup window, e.g. 48h")
    p.add_argument("--threshold", type=float,
                   help="similarity threshold override, 0-1 (default 0.3)")
    p = stories.add_parser("list", help="recent clusters")
    _add_common(p)
    p.add_argument("--since", default="2d")
    p.add_argument("--limit", type=int, default=30)
    p = stories.add_parser("show", help="one cluster and its stories")
    _add_common(p)
    p.add_argument("cluster")
    p = stories.add_parser(
        "explain", help="are two stories the same story? the score taken apart",
        description="A and B are ids or links of stored stories, or JSON lines such as "
        '\'{"title": "...", "summary": "...", "published": "2026-12-05T10:00:00Z"}\'. '
        "B is scored against a cluster holding A alone, with the word weights of the "
        "stored window (none when both are JSON and no config is found).")
    _add_common(p)
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B")
    return ap


def _delivery_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 0 < value < 2**63:
        raise argparse.ArgumentTypeError(f"not a delivery id: {text!r}")
    return value


_GLOBAL_VALUED = ("--config", "-c", "--log-level", "--log-format")


def _options_after_command(argv: Sequence[str]) -> list[str]:
    """``monitor --config X status`` as ``monitor status --config X``: the options every
    command takes may come before the command too."""
    front: list[str] = []
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] not in ("-h", "--help",
                                                                        "--version"):
        opt = argv[i]
        name = opt.split("=", 1)[0]
        if name not in _GLOBAL_VALUED:
            break
        if "=" in opt or i + 1 >= len(argv):
            front.append(opt)
            i += 1
        else:
            front += [opt, argv[i + 1]]
            i += 2
    if not front or i >= len(argv):
        return list(argv)
    rest = list(argv[i:])
    # after the last word of the command: "stories explain" takes its own words
    return rest + front


def main(argv: Sequence[str] | None = None) -> int:
    whole_process = argv is None
    if whole_process:  # the process's own command line: its output must arrive whole
        make_stdio_reliable()
    argv = _options_after_command(sys.argv[1:] if argv is None else argv)
    if json_requested(argv):  # argparse's own errors are JSON lines too
        setup_logging("info", "json")
        _Parser.json_errors = True
    args = build_parser().parse_args(argv)
    quiet = args.cmd in ("demo", "check", "rules", "backtest", "stories", "status", "outbox",
                         "alerts", "notify", "feeds", "migrate", "store")
    setup_logging(args.log_level or ("warning" if quiet else "info"), args.log_format)
    if whole_process:
        if args.cmd == "once":
            gcpolicy.pause_for_start()  # on again once it has started (cmd_once)
        else:
            gcpolicy.resume()  # paused while importing (monitor.cli.entry)
    try:
        return _dispatch(args)
    except MonitorError as e:  # config or rules problems, a failed store, a command's error
        report_error(e, as_json=args.log_format == "json")
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        gcpolicy.resume()
        if whole_process:
            # the process ends here: what it built is freed as it exits, not traversed
            # again by the collector's passes while the interpreter shuts down (about
            # 8 % of a `monitor once` of 1,000 feeds that all answer 304)
            gc.freeze()


# the commands that send: they need every channel's secrets; the others only read the
# store and load the config without them (an unset ${VAR} of a channel is no error)
SENDING = ("run", "once")


def _config(args: argparse.Namespace) -> Config:
    from monitor.config import secrets_of
    from monitor.log import redact

    config = load_config(find_config(args.config), channel_secrets=args.cmd in SENDING)
    redact(*secrets_of(config))  # whatever prints, never a credential
    return config


def _dispatch(args: argparse.Namespace) -> int:
    cmd = args.cmd
    if cmd == "demo":
        from monitor.cli.demo import run_demo

        return loop.run(run_demo(keep=args.keep, as_json=args.json,
                                 serve=args.listen if args.keep is not None else None))
    if cmd == "check":
        return cmd_check(args)
    if cmd == "stories" and args.stories_cmd == "cluster":
        return cmd_cluster(args)
    if cmd == "stories" and args.stories_cmd == "explain":
        return loop.run(cmd_stories_explain(args))
    if cmd == "rules" and args.rules_cmd == "test":
        return cmd_rules_test(args)
    if cmd == "notify":
        from monitor.cli.notifytest import cmd_notify_test

        return loop.run(cmd_notify_test(args))
    if cmd == "store" and args.store_cmd == "copy":
        from monitor.cli.storecmd import cmd_store_copy

        return loop.run(cmd_store_copy(args))
    if cmd == "migrate":
        from monitor.cli.storecmd import cmd_migrate, store_url

        return loop.run(cmd_migrate(store_url(args, lambda: _config(args).store_url), args))
    config = _config(args)
    if cmd == "run":
        from monitor.shell.daemon import Daemon

        # a reload re-reads this file, its ${VAR} resolved with the environment as now
        return loop.run(Daemon(config, exit_watchdog=True,
                               config_path=find_config(args.config)).run())
    if cmd == "once":
        return loop.run(cmd_once(config, args.json, strict=args.strict))
    if cmd == "status":
        return loop.run(cmd_status(config, args.json))
    if cmd == "feeds":
        from monitor.cli.feeds import cmd_feeds

        return loop.run(cmd_feeds(config, args.json))
    if cmd == "backtest":
        return loop.run(cmd_backtest(config, args))
    if cmd == "outbox":
        return loop.run(cmd_outbox_retry(config, args))
    if cmd == "stories":
        return loop.run(cmd_stories(config, args))
    if cmd == "alerts":
        from monitor.cli.alerts import cmd_alerts

        return loop.run(cmd_alerts(config, args))
    raise AssertionError(cmd)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False, default=_json_value))


def _json_value(v: Any) -> Any:
    """Times as ISO 8601 (``2026-11-26T01:32:17+00:00``, as /healthz has them)."""
    return v.isoformat() if isinstance(v, datetime) else str(v)


# -- check ------------------------------------------------------------------------------
def cmd_check(args: argparse.Namespace) -> int:
    from monitor.shell.rulefiles import load_rules

    path = find_config(args.config)
    found: list[tuple[str, Problem]] = []  # (event, problem)
    config: Config | None = None
    try:
        config = load_config(path)
    except ConfigError as e:
        found += [("config.invalid", p) for p in e.problems]
    rules = None
    if config is not None:
        try:
            rules = load_rules(config.rules_path, channels=list(config.channels),
                               feeds=[f.name for f in config.feeds],
                               default_channels=config.defaults.channels,
                               default_digest_tz=config.digest.tz)
        except RulesError as e:
            found += [("rules.invalid", p) for p in e.problems]
    problems = [str(p) for _, p in found]
    if args.json:
        _print_json({
            "ok": not problems,
            "config": str(path),
            "problems": problems,
            "feeds": len(config.feeds) if config else None,
            "rules": len(rules.rules) if rules else None,
            "channels": sorted(config.channels) if config else None,
        })
    elif found and args.log_format == "json":
        for event, p in found:
            log_problems(event, [p], config=str(path), of=len(found))
    elif problems:
        print(f"{path}: {len(problems)} problem(s):", file=sys.stderr)
        for text in problems:
            print(text, file=sys.stderr)
    else:
        assert config is not None and rules is not None
        enabled = sum(1 for r in rules.rules if r.enabled)
        print(f"{path}: OK — {len(config.feeds)} feeds, {enabled} rules enabled "
              f"({len(rules.rules)} in {len(rules.files)} files), "
              f"channels: {', '.join(sorted(config.channels)) or 'none'}")
    return 1 if problems else 0


# -- once / status ----------------------------------------------------------------------
async def cmd_once(config: Config, as_json: bool, *, strict: bool = False) -> int:
    from monitor.metrics import Metrics
    from monitor.shell.daemon import Runtime

    # no server shows metrics here: they are not collected (nor prometheus_client imported)
    async with Runtime(config, metrics=Metrics(collect=False)) as rt:
        gcpolicy.started()  # what the start built lives to the end: out of the collector's way
        outcomes, sent = await rt.poll_and_deliver()
    from monitor.cli.once import once_report, print_once

    if as_json:
        _print_json(once_report(outcomes, sent))
    else:
        print_once(outcomes, sent)
    failed = sum(1 for o in outcomes if o.result in ("failed", "gone"))
    if outcomes and failed == len(outcomes):
        return 2
    if strict and (failed or sent.failed):
        return 3
    return 0


async def cmd_status(config: Config, as_json: bool) -> int:
    from monitor.config import secrets_of
    from monitor.core.units import format_duration
    from monitor.log import redact, scrub
    from monitor.store.open import open_store

    redact(*secrets_of(config))

    async with open_store(config.store_url) as store:
        feeds = await store.get_feeds()
        pending = await store.count_pending()
        failed = await store.deliveries(state="failed", limit=20)
    if as_json:
        _print_json({
            "feeds": [
                {"name": f.name, "url": config.display(f.url), "last_polled": f.last_polled,
                 "next_poll": f.next_poll, "failures": f.failures, "last_status": f.last_status,
                 "last_error": config.redact(scrub(f.last_error or "")) or None,
                 "gone": f.gone,
                 "problem": f.problem,
                 "stories_seen": f.stories_seen,
                 # the interval decided at the last successful poll (seconds) and why
                 "interval": f.poll_interval, "interval_why": f.poll_reason,
                 "cadence": f.cadence}
                for f in feeds
            ],
            "outbox": {"pending": pending,
                       "failed": [{"id": d.id, "key": d.key, "channel": d.channel,
                                   "error": scrub(d.last_error or "")} for d in failed]},
        })
        return 0
    for f in feeds:
        state = "GONE" if f.gone else (f"failing×{f.failures}" if f.failures else "ok")
        every = (f" every={format_duration(f.poll_interval)} ({f.poll_reason})"
                 if f.poll_interval is not None else "")
        print(f"{f.name:<24} {state:<12} last={_t(f.last_polled)} next={_t(f.next_poll)}"
              f"{every} seen={f.stories_seen}"
              + (f"  {config.redact(scrub(f.last_error))}" if f.last_error else "")
              + (f"  [{f.problem}]" if f.problem else ""))
    print(f"outbox: {pending} pending, {len(failed)} failed (recent)")
    for d in failed:
        print(f"  failed #{d.id} {d.channel}: {d.key}: {scrub(d.last_error or '')}")
    if failed:
        print("  (fix the cause, then `monitor outbox retry` sends them again)")
    return 0


async def cmd_outbox_retry(config: Config, args: argparse.Namespace) -> int:
    from monitor.store.open import open_store

    if args.channel is not None and args.channel not in config.channels:
        raise MonitorError(f"unknown channel {args.channel!r}; the config has: "
                           f"{', '.join(sorted(config.channels)) or 'none'}")
    now = datetime.now(UTC)
    channels = [args.channel] if args.channel is not None else sorted(config.channels)
    ids: list[int] = []
    async with open_store(config.store_url) as store:
        for channel in channels:  # not those of channels no longer in the config
            ids += await store.requeue_failed(now, channel=channel, ids=args.ids)
        orphans = Counter(d.channel for d in await store.deliveries(state="failed", limit=10**6)
                          if d.channel not in config.channels)
    missing = sorted(set(args.ids) - set(ids))
    if args.json:
        _print_json({"requeued": sorted(ids), "not_failed": missing,
                     "left_for_removed_channels": dict(orphans)})
    else:
        print(f"{len(ids)} failed deliver{'y' if len(ids) == 1 else 'ies'} back in the outbox"
              + (" (a running daemon sends them on its next round)" if ids else ""))
        if missing:
            print(f"not requeued (sent, pending, unknown, or of another channel): "
                  f"{', '.join(map(str, missing))}")
        if orphans:
            print("left failed, their channel is no longer in the config: "
                  + ", ".join(f"{n} for {ch!r}" for ch, n in sorted(orphans.items())))
    return 0


def _t(d: Any) -> str:
    return d.strftime("%Y-%m-%d %H:%M:%S") if d else "-"


# -- rules test / backtest --------------------------------------------------------------
def _load_rules_for(args: argparse.Namespace) -> RuleSet:
    """``--rules PATH`` (channels unchecked when there is no config) or the config's rules."""
    from monitor.shell.rulefiles import load_rules

    config: Config | None = None
    try:
        config = _config(args)
    except ConfigError:
        if not args.rules:
            raise
    if args.rules:
        if config is None:
            return load_rules(Path(args.rules), channels=None)
        return load_rules(Path(args.rules), channels=list(config.channels),
                          default_channels=config.defaults.channels,
                          default_digest_tz=config.digest.tz)
    assert config is not None
    return load_rules(config.rules_path, channels=list(config.channels),
                      default_channels=config.defaults.channels,
                      default_digest_tz=config.digest.tz)


def cmd_rules_test(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from monitor.cli.explain import format_explanation
    from monitor.core.model import Story
    from monitor.core.rules.match import compile_rules

    ruleset = _load_rules_for(args)
    matcher = compile_rules(ruleset)
    now = datetime.now(UTC)
    stories: list[Story] = []
    from_feed = bool(args.feed)
    if args.feed:
        stories = _stories_from_feed(args.feed, now)
    elif args.title or args.text:
        stories = [Story(id="cli", feed="cli", title=args.title or "", link="",
                         summary=args.text or "", published=now, first_seen=now)]
    elif args.file:
        p = Path(args.file)
        raw = p.read_bytes()
        if raw.lstrip()[:1] == b"<":
            from_feed = True
            stories = _stories_from_feed(args.file, now)
        else:
            text = raw.decode("utf-8", errors="replace")
            title, _, body = text.partition("\n")
            stories = [Story(id=p.name, feed="file", title=title.strip(), link="",
                             summary=body.strip(), published=now, first_seen=now)]
    else:
        say_error("give a story: --title/--text, a text file, or --feed FILE_OR_URL",
                  as_json=args.log_format == "json")
        return 2
    out: list[dict[str, Any]] = []
    any_match = False
    for s in stories:
        expls = matcher.explain(s)
        any_match = any_match or any(e.matched for e in expls)
        # as in text mode: a single story shows every rule; a feed only its matches
        # (``--all``: every story and every rule)
        shown = expls if args.all or len(stories) == 1 else [e for e in expls if e.matched]
        shown = sorted(shown, key=lambda e: not e.matched)  # matches first
        if not shown:
            continue
        if args.json:
            out.append({"story": {"id": s.id, "title": s.title},
                        "rules": [e.to_dict() for e in shown]})
        else:
            print(f"== {s.title[:120]}")
            print(format_explanation(shown, color=sys.stdout.isatty()))
    if args.json:
        # one story given: its object; a feed: the list of its matching stories
        _print_json(out if from_feed or len(out) != 1 else out[0])
    return 0 if any_match else 1


def _stories_from_feed(source: str, now: Any) -> list[Any]:
    from monitor.core.parse import parse_feed

    if source.startswith(("http://", "https://")):
        from monitor.core.model import Fetched
        from monitor.redact import display_url
        from monitor.shell.fetch import Fetcher

        async def get() -> Fetched:
            async with Fetcher(user_agent="", connect_timeout=10, timeout=30,
                               max_bytes=10 * 2**20, max_redirects=5, concurrency=1,
                               per_host=1) as f:
                r = await f.fetch(source, etag=None, last_modified=None)
            if not isinstance(r, Fetched):
                raise MonitorError(f"cannot fetch {display_url(source)}: {getattr(r, 'reason', r)}")
            return r

        r = loop.run(get())
        parsed = parse_feed(r.body, r.headers, feed="cli", url=source, now=now)
    else:
        parsed = parse_feed(Path(source).read_bytes(), {}, feed=Path(source).stem, now=now)
    if parsed.failed:
        raise MonitorError(f"cannot parse {source}: {parsed.problem}")
    return list(parsed.stories)


async def cmd_backtest(config: Config, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from monitor.core.rules.match import compile_rules
    from monitor.store.open import open_store

    ruleset = _load_rules_for(args)
    matcher = compile_rules(ruleset)
    since = datetime.now(UTC) - timedelta(seconds=parse_duration(args.since))
    async with open_store(config.store_url) as store:
        stored = await store.recent_stories(since)
    sources: dict[str, set[str]] = defaultdict(set)
    for s in stored:
        sources[s.cluster].add(s.story.feed)
    fired: dict[str, list[dict[str, Any]]] = defaultdict(list)
    alerted: set[tuple[str, str]] = set()
    for s in stored:
        srcs = tuple(sorted(sources[s.cluster]))
        for m in matcher.match(s.story, sources=len(srcs), source_names=srcs):
            if (s.cluster, m.rule) in alerted:
                continue  # the daemon alerts once per story cluster and rule
            alerted.add((s.cluster, m.rule))
            fired[m.rule].append({
                "story": s.story.id, "title": s.story.title, "feed": s.story.feed,
                "published": s.story.published.isoformat(), "cluster": s.cluster,
                "terms": list(m.terms), "actors": list(m.actors), "channels": list(m.channels),
            })
    counts = Counter({r.name: len(fired.get(r.name, [])) for r in ruleset.rules if r.enabled})
    if args.json:
        _print_json({"since": since.isoformat(), "stories": len(stored),
                     "rules": {name: {"alerts": n, "fired": fired.get(name, [])}
                               for name, n in counts.items()}})
        return 0
    print(f"replayed {len(stored)} stories since {since:%Y-%m-%d %H:%M} UTC "
          f"through {len(counts)} rules (nothing sent)")
    for name, n in counts.most_common():
        print(f"  {name:<32} {n} alert(s)")
        for a in fired.get(name, [])[:10]:
            print(f"      {a['published'][:16]}  [{a['feed']}] {a['title'][:90]}")
        if n > 10:
            print(f"      ... and {n - 10} more")
    return 0


# -- stories ----------------------------------------------------------------------------
def cmd_cluster(args: argparse.Namespace) -> int:
    from monitor.cli.cluster import cluster_stream
    from monitor.core.dedup.features import DedupSettings

    kw: dict[str, Any] = {}
    config: Config | None = None
    try:
        config = _config(args)
    except ConfigError:
        config = None  # offline evaluation works without a config
    if config is not None:
        kw["window"] = config.dedup.window
        if config.dedup.threshold is not None:
            kw["threshold"] = config.dedup.threshold
    if args.window:
        kw["window"] = parse_duration(args.window)
    if args.threshold is not None:
        kw["threshold"] = args.threshold
    settings = DedupSettings(**kw)

    def lines() -> Any:
        for n, line in enumerate(sys.stdin, 1):
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise MonitorError(f"stdin line {n}: not JSON: {e}") from e

    for row in cluster_stream(lines(), settings):
        sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
    return 0


def _json_object(text: str) -> bool:
    """Whether a command-line argument is a JSON object (a story given inline) rather
    than a stored story's id or link; an id such as ``{3F2504E0-…}`` is not JSON."""
    if not text.lstrip().startswith("{"):
        return False
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False


async def cmd_stories_explain(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from monitor.cli.cluster import explain_pair, story_from_record
    from monitor.core.dedup.index import StoryIndex
    from monitor.shell.daemon import dedup_settings
    from monitor.store.open import open_store

    now = datetime.now(UTC)
    literal = [_json_object(x) for x in (args.a, args.b)]
    try:
        config: Config | None = _config(args)
    except ConfigError:
        if not all(literal):
            raise
        config = None  # two JSON lines: the background word table alone
    index = StoryIndex(dedup_settings(config) if config else None)
    stored: dict[str, str] = {}
    pair = []
    if config is None:
        pair = [story_from_record(x, now=now) for x in (args.a, args.b)]
    else:
        async with open_store(config.store_url) as store:
            window = await store.recent_stories(now - timedelta(seconds=config.dedup.window))
            for x, is_json in zip((args.a, args.b), literal, strict=True):
                if is_json:
                    pair.append(story_from_record(x, now=now))
                    continue
                hit = await store.get_story(x) or next(
                    (s for s in window if s.story.link == x), None)
                if hit is None:
                    say_error(f"no stored story with id {x!r}, nor with that link in the "
                              f"last {config.dedup.window / 3600:g} h",
                              as_json=args.log_format == "json")
                    return 1
                pair.append(hit.story)
                stored[hit.story.id] = hit.cluster
            ids = {s.id for s in pair}
            index.restore((s.story, s.cluster) for s in window if s.story.id not in ids)
    a, b = pair
    out = explain_pair(index, a, b)
    out["a"] = {"id": a.id, "feed": a.feed, "title": a.title, "cluster": stored.get(a.id)}
    out["b"] = {"id": b.id, "feed": b.feed, "title": b.title, "cluster": stored.get(b.id)}
    out["window_stories"] = len(index)
    if args.json:
        _print_json(out)
        return 0
    verdict = "yes" if out["same_story"] else "no"
    cmp = ">=" if out["same_story"] else "<"
    print(f"A  [{a.feed or '-'}] {a.title}")
    print(f"B  [{b.feed or '-'}] {b.title}")
    weights = (f"word weights from {len(index)} stories in the window" if len(index)
               else "word weights from the background table alone")
    print(f"same story: {verdict}  (score {out['score']:.2f} {cmp} threshold "
          f"{out['threshold']:.2f}; {weights})")
    g = out["groups"]
    print(f"  titles alone   {g['title']:.3f}  (cosine)")
    print(f"  title + lead   {g['title_and_lead']:.3f}  (cosine)")
    print(f"  starts from    {out['cosine']:.3f}")
    name = f"  ({out['rare_name']})" if out["rare_name"] else ""
    print(f"  rare name      {g['rare_name']:+.3f}{name}")
    print(f"  time           {g['time']:+.3f}")
    print(f"  young cluster  {g['young_cluster']:+.3f}")
    if out["blocked"]:
        print(f"  cannot join: {out['blocked']}")
    if out["words"]:
        print("  carried by: " + ", ".join(f"{w['word']} {w['share']:.2f}"
                                          for w in out["words"]))
    if stored:
        ca, cb = stored.get(a.id), stored.get(b.id)
        if ca and cb:
            print(f"  stored: {'the same cluster' if ca == cb else 'different clusters'}"
                  f" ({ca}{'' if ca == cb else ', ' + cb})")
    return 0


async def cmd_stories(config: Config, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from monitor.store.open import open_store

    async with open_store(config.store_url) as store:
        if args.stories_cmd == "list":
            since = datetime.now(UTC) - timedelta(seconds=parse_duration(args.since))
            clusters = await store.list_clusters(since=since, limit=args.limit)
            if args.json:
                _print_json([_cluster_dict(c) for c in clusters])
            else:
                for cl in clusters:
                    print(f"{cl.last_seen:%m-%d %H:%M}  {len(cl.sources):>2} src  "
                          f"{len(cl.members):>3} stories  {cl.title[:80]}  [{cl.id}]")
            return 0
        c = await store.get_cluster(args.cluster)
        if c is None:
            say_error(f"no cluster {args.cluster!r}", as_json=args.log_format == "json")
            return 1
        stories = [await store.get_story(m) for m in c.members]
        if args.json:
            d = _cluster_dict(c)
            d["stories"] = [
                {"id": s.story.id, "feed": s.story.feed, "title": s.story.title,
                 "link": s.story.link, "published": s.story.published.isoformat()}
                for s in stories if s is not None
            ]
            _print_json(d)
        else:
            print(f"cluster {c.id}: {c.title}")
            print(f"  first seen {c.first_seen:%Y-%m-%d %H:%M}, last {c.last_seen:%Y-%m-%d %H:%M}"
                  f", {len(c.sources)} source{'' if len(c.sources) == 1 else 's'}: "
                  f"{', '.join(c.sources)}")
            for s in stories:
                if s is not None:
                    print(f"  [{s.story.feed}] {s.story.title}\n      {s.story.link}")
        return 0


def _cluster_dict(c: Any) -> dict[str, Any]:
    return {"id": c.id, "title": c.title, "first_seen": c.first_seen.isoformat(),
            "last_seen": c.last_seen.isoformat(), "sources": list(c.sources),
            "members": list(c.members)}
