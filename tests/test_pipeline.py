"""The pipeline in-process: real feed server, real SQLite, file channels, fixed clock."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from monitor.config import Config, load_config
from monitor.shell.daemon import Runtime
from tests.clock import T0, Clock
from tests.feeds import BACKLOG, UNRELATED, Item, rss, seed_item
from tests.peers.feedserver import FeedServer

MakeConfig = Callable[..., Config]  # (feeds: {name: path}, extra='', feed_opts=...) -> Config

ROOT = Path(__file__).resolve().parent.parent

def alerts(tmp: Path, name: str = "alerts.jsonl") -> list[dict[str, Any]]:
    p = tmp / name
    if not p.exists():
        return []
    return [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines() if x]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_config(tmp_path: Path, feed_server: FeedServer) -> MakeConfig:
    shutil.copytree(ROOT / "rules", tmp_path / "rules")

    def make(feeds: dict[str, str], extra: str = "", feed_opts: str = "interval: 60s") -> Config:
        lines = "\n".join(
            f"  - {{name: {n}, url: '{feed_server.url(p)}'{', ' + feed_opts if feed_opts else ''}}}"
            for n, p in feeds.items()
        )
        path = tmp_path / "config.yaml"
        path.write_text(f"""
feeds:
{lines}
rules: rules
store: sqlite:///state.db
channels:
  slack-news: {{type: file, path: alerts.jsonl}}
  email-oncall: {{type: file, path: email.jsonl}}
  audit-file: {{type: file, path: audit.jsonl}}
fetch: {{parse_in: thread, per_host: 4}}
server: {{enabled: false}}
{extra}
""", encoding="utf-8")
        return load_config(path)

    return make


@pytest.fixture
async def rt(make_config: MakeConfig, feed_server: FeedServer, clock: Clock) -> AsyncIterator[Runtime]:
    feed_server.serve("/a.rss", rss(BACKLOG, now=T0))
    feed_server.serve("/b.rss", rss([], now=T0))
    config = make_config({"a": "/a.rss", "b": "/b.rss"})
    async with Runtime(config, clock=clock) as runtime:
        yield runtime


async def poll(rt: Runtime) -> dict[str, Any]:
    out = {o.feed: o for o in await rt.poll_all()}
    await rt.drain()
    return out


async def test_baseline_then_one_alert_per_story(rt: Runtime, feed_server: FeedServer, clock: Clock,
                                                 tmp_path: Path) -> None:
    first = await poll(rt)
    assert first["a"].result == "baseline" and first["a"].new == 3 and first["a"].alerts == 0
    assert alerts(tmp_path) == []
    assert rt.metrics.registry.get_sample_value("monitor_fetch_seconds_count") == 2  # a, b

    clock.advance(minutes=5)
    feed_server.set("/a.rss", rss([seed_item(), UNRELATED, *BACKLOG], now=clock.now))
    second = await poll(rt)
    assert second["a"].result == "new" and second["a"].new == 2 and second["a"].alerts >= 1
    got = alerts(tmp_path)
    assert [a["rule"] for a in got] == ["sanctions-deadline"]
    assert "Witkoff" in got[0]["title"]
    assert alerts(tmp_path, "email.jsonl")  # the rule's other channel too

    clock.advance(minutes=5)
    third = await poll(rt)
    assert third["a"].result == "not-modified"
    assert len(alerts(tmp_path)) == 1


@pytest.mark.parametrize("parse_in", ["thread", "process"])
async def test_a_rule_without_channels_alerts_on_the_default_ones(
    make_config: MakeConfig, feed_server: FeedServer, clock: Clock, tmp_path: Path, parse_in: str
) -> None:
    # the parse pool compiles the rule files without the config; the rule's channels
    # come from the config's defaults all the same
    (tmp_path / "rules" / "robots.yaml").write_text(
        "rules:\n  - name: robots\n    any: [robot]\n", encoding="utf-8")
    feed_server.serve("/a.rss", rss(BACKLOG, now=T0))
    cfg = make_config({"a": "/a.rss"}, extra="defaults: {channels: [audit-file]}")
    config = cfg.model_copy(update={"fetch": cfg.fetch.model_copy(update={"parse_in": parse_in})})
    async with Runtime(config, clock=clock) as runtime:
        await poll(runtime)
        clock.advance(minutes=5)
        feed_server.set("/a.rss", rss([UNRELATED, *BACKLOG], now=clock.now))
        second = await poll(runtime)
    assert second["a"].alerts == 1
    assert [a["rule"] for a in alerts(tmp_path, "audit.jsonl")] == ["robots"]


async def test_updates_keep_the_subject_of_the_very_first_alert(
    make_config: MakeConfig, feed_server: FeedServer, clock: Clock, tmp_path: Path
) -> None:
    # a rule with a cooldown alerts again on a later copy; the next update still threads
    # under the first alert: its headline, not the re-alert's
    (tmp_path / "rules" / "robots.yaml").write_text(
        "rules:\n  - name: robots\n    any: [robot]\n    cooldown: 8m\n"
        "    channels: [audit-file]\n", encoding="utf-8")
    for f in ("a", "b", "c"):
        feed_server.serve(f"/{f}.rss", rss(BACKLOG, now=T0))
    config = make_config({f: f"/{f}.rss" for f in ("a", "b", "c")})
    copies = {
        "a": "Humanoid robots perform advanced martial arts at Chinese New Year gala",
        "b": "Humanoid robots perform martial arts at China's New Year gala",
        "c": "Robots perform advanced martial arts at Chinese New Year gala show",
    }
    async with Runtime(config, clock=clock) as runtime:
        await poll(runtime)
        # one outlet after the other: b after the cooldown (a re-alert), c within it
        for f, minutes in (("a", 5), ("b", 10), ("c", 5)):
            clock.advance(minutes=minutes)
            item = replace(UNRELATED, title=copies[f], link=f"https://{f}.example/robots",
                           guid=f"https://{f}.example/robots")
            feed_server.set(f"/{f}.rss", rss([item, *BACKLOG], now=clock.now))
            await poll(runtime)
    got = alerts(tmp_path, "audit.jsonl")
    firsts = [a for a in got if not a["update"]]
    ups = [a for a in got if a["update"]]
    assert [a["title"] for a in firsts] == [copies["a"], copies["b"]]  # the re-alert
    assert ups and all(a["first_title"] == copies["a"] for a in ups), ups


async def test_same_story_on_another_feed_updates_instead_of_alerting(
        rt: Runtime, feed_server: FeedServer, clock: Clock, tmp_path: Path) -> None:
    await poll(rt)
    clock.advance(minutes=5)
    feed_server.set("/a.rss", rss([seed_item(), *BACKLOG], now=clock.now))
    await poll(rt)
    # the same link under another guid from another feed (an exact repeat) is a new
    # source of the cluster
    clock.advance(minutes=5)
    s = seed_item()
    feed_server.set("/b.rss", rss([Item(title=s.title, link=s.link + "?utm_source=b",
                                        guid="b-1", description=s.description)], now=clock.now))
    await poll(rt)
    got = alerts(tmp_path)
    firsts = [a for a in got if not a["update"]]
    updates = [a for a in got if a["update"]]
    assert len(firsts) == 1
    assert len(updates) == 1 and updates[0]["sources"] == 2


async def test_restart_resumes_without_repeats(make_config: MakeConfig, feed_server: FeedServer,
                                               clock: Clock, tmp_path: Path) -> None:
    feed_server.serve("/a.rss", rss(BACKLOG, now=T0), etag=False)
    config = make_config({"a": "/a.rss"})
    async with Runtime(config, clock=clock) as rt:
        await poll(rt)
        clock.advance(minutes=5)
        feed_server.set("/a.rss", rss([seed_item(), *BACKLOG], now=clock.now))
        await poll(rt)
    assert len(alerts(tmp_path)) == 1
    # a new process: the feed reorders its items and serves them again without validators
    feed_server.set("/a.rss", rss([*reversed(BACKLOG), seed_item()], now=clock.now))
    clock.advance(minutes=5)
    async with Runtime(config, clock=clock) as rt:
        (st,) = await rt.store.get_feeds()
        assert st.baselined and st.next_poll is not None
        out = await poll(rt)
        assert out["a"].new == 0 and out["a"].alerts == 0
    assert len(alerts(tmp_path)) == 1


async def test_unchanged_body_skips_parsing(make_config: MakeConfig, feed_server: FeedServer, clock: Clock
                                            ) -> None:
    feed_server.serve("/a.rss", rss(BACKLOG, now=T0), etag=False)
    async with Runtime(make_config({"a": "/a.rss"}), clock=clock) as rt:
        await poll(rt)
        out = await poll(rt)
        assert out["a"].result == "unchanged" and out["a"].status == 200


async def test_failures_are_recorded_with_backoff(make_config: MakeConfig, feed_server: FeedServer,
                                                  clock: Clock) -> None:
    feed_server.status("/err.rss", 500)
    feed_server.status("/gone.rss", 410)
    feed_server.serve("/junk.rss", b"this is not a feed at all <<<")
    feed_server.status("/busy.rss", 429, headers={"Retry-After": "7200"})
    config = make_config({"err": "/err.rss", "gone": "/gone.rss", "junk": "/junk.rss",
                          "busy": "/busy.rss"})
    async with Runtime(config, clock=clock) as rt:
        out = await poll(rt)
        assert out["err"].result == "failed" and "500" in (out["err"].error or "")
        assert out["gone"].result == "gone"
        assert out["junk"].result == "failed" and out["junk"].error
        feeds = {f.name: f for f in await rt.store.get_feeds()}
        assert feeds["err"].failures == 1 and feeds["gone"].gone
        assert feeds["busy"].next_poll is not None
        assert feeds["busy"].next_poll >= clock.now + timedelta(seconds=7200)
        clock.advance(minutes=5)
        await poll(rt)
        feeds = {f.name: f for f in await rt.store.get_feeds()}
        assert feeds["err"].failures == 2
        assert feeds["err"].next_poll is not None
        assert feeds["err"].next_poll > clock.now + timedelta(seconds=60)  # backing off
        health = await rt.health()
        assert health["status"] == "degraded" and "gone" in health["feeds"]["gone"]


async def test_permanent_redirect_updates_url(make_config: MakeConfig, feed_server: FeedServer,
                                              clock: Clock) -> None:
    feed_server.redirect("/old.rss", "/new.rss", status=301)
    feed_server.serve("/new.rss", rss(BACKLOG, now=T0))
    async with Runtime(make_config({"a": "/old.rss"}), clock=clock) as rt:
        await poll(rt)
        (st,) = await rt.store.get_feeds()
        assert st.url == feed_server.url("/new.rss")
        assert st.configured_url == feed_server.url("/old.rss")


async def test_guid_churn_flags_the_feed_and_stays_silent(make_config: MakeConfig, feed_server: FeedServer,
                                                          clock: Clock, tmp_path: Path) -> None:
    items = [seed_item(f"https://x.example/{i}") for i in range(1)] + [
        Item(title=f"Story number {i} about sanctions and Putin's deadline talks {i}",
             link=f"https://x.example/s{i}", guid=f"g{i}") for i in range(6)]
    feed_server.serve("/a.rss", rss(items, now=T0))
    async with Runtime(make_config({"a": "/a.rss"}), clock=clock) as rt:
        await poll(rt)
        churned = [Item(title=i.title, link=i.link, guid=f"new-{i.guid}",
                        description=i.description) for i in items]
        clock.advance(minutes=5)
        feed_server.set("/a.rss", rss(churned, now=clock.now))
        out = await poll(rt)
        assert out["a"].alerts == 0
        (st,) = await rt.store.get_feeds()
        assert st.problem and "churn" in st.problem.lower()
    assert alerts(tmp_path) == []


async def test_old_items_are_remembered_not_alerted(rt: Runtime, feed_server: FeedServer,
                                                    clock: Clock, tmp_path: Path) -> None:
    await poll(rt)
    old = seed_item()
    old = Item(title=old.title, link=old.link, guid=old.guid, description=old.description,
               published=clock.now - timedelta(days=10))
    feed_server.set("/a.rss", rss([old, *BACKLOG], now=clock.now))
    out = await poll(rt)
    assert out["a"].new == 1 and out["a"].alerts == 0
    assert alerts(tmp_path) == []


async def test_reload_rules_keeps_old_set_on_error(rt: Runtime, tmp_path: Path) -> None:
    before = len(rt.pipeline.rules.ruleset.rules)
    (tmp_path / "rules" / "bad.yaml").write_text("rules:\n  - name: x\n    any: [\n")
    assert rt.reload_rules() is False
    assert len(rt.pipeline.rules.ruleset.rules) == before
    assert rt.pipeline.rules.error and "bad.yaml" in rt.pipeline.rules.error
    (tmp_path / "rules" / "bad.yaml").write_text(
        "rules:\n  - name: x\n    any: [robots]\n    channels: [audit-file]\n")
    assert rt.reload_rules() is True
    assert len(rt.pipeline.rules.ruleset.rules) == before + 1


async def test_digest_rule_collects_and_sends_on_its_schedule(rt: Runtime, feed_server: FeedServer,
                                                              clock: Clock,
                                                              tmp_path: Path) -> None:
    (tmp_path / "rules" / "robots.yaml").write_text(
        "rules:\n  - name: robots\n    any: [robot, humanoid]\n    channels: [slack-news]\n"
        "    digest: '0 * * * *'\n", encoding="utf-8")
    assert rt.reload_rules()
    await poll(rt)
    clock.advance(minutes=5)  # 12:05
    robots2 = Item(title="Robot dogs patrol the border in a humanoid future",
                   link="https://x.example/robots2", guid="r2")
    feed_server.set("/a.rss", rss([UNRELATED, robots2, *BACKLOG], now=clock.now))
    out = await poll(rt)
    assert out["a"].alerts == 2
    assert alerts(tmp_path) == []  # collected, not sent
    clock.advance(minutes=56)  # 13:01: the digest's hour has struck
    sent = await rt.drain()
    assert sent.sent == 2
    got = alerts(tmp_path)
    assert sorted(a["title"] for a in got) == sorted([UNRELATED.title, robots2.title])
    assert {a["rule"] for a in got} == {"robots"}
    assert await rt.drain() == type(sent)()  # nothing left


async def test_a_grouped_rule_waits_for_its_group_then_follows_up_per_interval(
        rt: Runtime, feed_server: FeedServer, clock: Clock, tmp_path: Path) -> None:
    (tmp_path / "rules" / "robots.yaml").write_text(
        "rules:\n  - name: robots\n    any: [robot, humanoid]\n    channels: [slack-news]\n"
        "    group_by: [rule]\n    group_wait: 1m\n    group_interval: 10m\n",
        encoding="utf-8")
    assert rt.reload_rules()
    await poll(rt)
    clock.advance(minutes=5)  # 12:05
    robots2 = Item(title="Robot dogs patrol the border in a humanoid future",
                   link="https://x.example/robots2", guid="r2")
    feed_server.set("/a.rss", rss([UNRELATED, robots2, *BACKLOG], now=clock.now))
    out = await poll(rt)
    assert out["a"].alerts == 2
    assert alerts(tmp_path) == []  # the group waits group_wait
    clock.advance(minutes=1)
    assert (await rt.drain()).grouped == 2
    assert len(alerts(tmp_path)) == 2
    clock.advance(minutes=1)  # 12:07: the next match waits for 12:16
    robots3 = Item(title="A humanoid robot opens parliament", link="https://x.example/robots3",
                   guid="r3")
    feed_server.set("/a.rss", rss([robots3, UNRELATED, robots2, *BACKLOG], now=clock.now))
    await poll(rt)
    clock.advance(minutes=8)
    assert (await rt.drain()).sent == 0
    clock.advance(minutes=1)
    assert (await rt.drain()).grouped == 1
    assert [a["title"] for a in alerts(tmp_path)][-1] == robots3.title


async def test_corroboration_counts_sources_within_the_rule_window(
        make_config: MakeConfig, feed_server: FeedServer, clock: Clock, tmp_path: Path) -> None:
    (tmp_path / "rules" / "corroborated.yaml").write_text(
        "rules:\n  - name: corroborated\n    any: [avalanche]\n    min_sources: 2\n"
        "    window: 1h\n    channels: [audit-file]\n", encoding="utf-8")
    for p in ("/a.rss", "/b.rss", "/c.rss"):
        feed_server.serve(p, rss([], now=T0))
    config = make_config({"a": "/a.rss", "b": "/b.rss", "c": "/c.rss"})
    story = Item(title="Rescuers search for 10 missing skiers after California avalanche",
                 link="https://news.example/avalanche", guid="av-a")
    async with Runtime(config, clock=clock) as rt:
        await poll(rt)  # baselines
        clock.advance(minutes=5)
        feed_server.set("/a.rss", rss([story], now=clock.now))
        await poll(rt)
        clock.advance(hours=2)  # a second source, but two hours later: not corroboration
        feed_server.set("/b.rss", rss([Item(title=story.title, link=story.link, guid="av-b")],
                                      now=clock.now))
        await poll(rt)
        assert alerts(tmp_path, "audit.jsonl") == []
        clock.advance(minutes=10)  # a third source within the hour of the second: fires
        feed_server.set("/c.rss", rss([Item(title=story.title, link=story.link, guid="av-c")],
                                      now=clock.now))
        await poll(rt)
    got = [a for a in alerts(tmp_path, "audit.jsonl") if a["rule"] == "corroborated"]
    assert len(got) == 1 and got[0]["sources"] == 3 and not got[0]["update"]


async def test_a_story_whose_id_is_a_known_link_still_counts_as_a_source(
        rt: Runtime, feed_server: FeedServer, clock: Clock, tmp_path: Path) -> None:
    await poll(rt)
    clock.advance(minutes=5)
    s = seed_item("https://news.example.org/witkoff")
    feed_server.set("/a.rss", rss([Item(title=s.title, link=s.link, guid="tag:agg,2026:1",
                                        description=s.description), *BACKLOG], now=clock.now))
    await poll(rt)
    clock.advance(minutes=5)
    # the original publisher: no guid, so its id is the canonical link stored above
    feed_server.set("/b.rss", rss([Item(title=s.title, link=s.link, guid=None,
                                        description=s.description)], now=clock.now))
    out = await poll(rt)
    assert out["b"].new == 1
    updates = [a for a in alerts(tmp_path) if a["update"]]
    assert len(updates) == 1 and updates[0]["sources"] == 2


async def test_poll_and_deliver_sends_while_other_polls_are_in_flight(
        make_config: MakeConfig, feed_server: FeedServer, clock: Clock, tmp_path: Path) -> None:
    """`monitor once` delivers like the daemon: an alert goes out as soon as its poll
    queued it, not after the slowest feed; what is queued last is delivered at the end."""
    import asyncio

    feed_server.serve("/a.rss", rss([seed_item()], now=T0))
    held = feed_server.gate("/held.rss", rss([], now=T0))
    config = make_config({"a": "/a.rss", "held": "/held.rss"},
                         "defaults: {alert_on_first_poll: true}")
    async with Runtime(config, clock=clock) as rt:
        task = asyncio.ensure_future(rt.poll_and_deliver())
        for _ in range(500):  # the alert is written while "held" is still being fetched
            if alerts(tmp_path):
                break
            await asyncio.sleep(0.01)
        assert [a["rule"] for a in alerts(tmp_path)] == ["sanctions-deadline"]
        assert not task.done()
        held.set()
        outcomes, sent = await task
    assert {o.feed: o.result for o in outcomes} == {"a": "new", "held": "unchanged"}
    assert sent.sent >= 2 and sent.failed == 0  # slack-news and email-oncall at least
    assert len(alerts(tmp_path)) == 1


async def test_a_story_whose_work_was_skipped_is_still_matched_when_new(
        rt: Runtime, feed_server: FeedServer, clock: Clock, tmp_path: Path) -> None:
    """The pool skips dedup features and rule text matching for ids the feed carried at
    its last poll; one of them that is not stored after all is done by the pipeline."""
    first = await poll(rt)
    assert first["a"].result == "baseline"
    seed = seed_item()
    # as if the last poll had carried the seed story (e.g. a write lost with a crash)
    rt.pipeline._last_ids["a"] = rt.pipeline._last_ids["a"] | {seed.guid or ""}
    clock.advance(minutes=5)
    feed_server.set("/a.rss", rss([seed, *BACKLOG], now=clock.now))
    second = await poll(rt)
    assert second["a"].new == 1
    assert [a["rule"] for a in alerts(tmp_path)] == ["sanctions-deadline"]


async def test_poll_and_deliver_leaves_no_poll_running_when_it_fails(
        make_config: MakeConfig, feed_server: FeedServer, clock: Clock) -> None:
    """A delivery round that fails with a bug while a poll is in flight: the error
    reaches the caller only once the polls are over, so closing the runtime is safe."""
    import asyncio

    feed_server.serve("/a.rss", rss([seed_item()], now=T0))
    feed_server.gate("/held.rss", rss([], now=T0))  # never answers
    config = make_config({"a": "/a.rss", "held": "/held.rss"},
                         "defaults: {alert_on_first_poll: true}")
    async with Runtime(config, clock=clock) as rt:
        async def broken() -> Any:
            raise RuntimeError("bug in a delivery round")

        rt.drain = broken  # type: ignore[method-assign]
        with pytest.raises(RuntimeError, match="bug in a delivery round"):
            await asyncio.wait_for(rt.poll_and_deliver(), 10)
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not [t for t in others if "poll" in repr(t.get_coro())], others


async def test_an_id_given_twice_is_its_first_entry_matched_on_its_own_text(
        rt: Runtime, feed_server: FeedServer, clock: Clock, tmp_path: Path) -> None:
    """The pool's per-story work stays with its entry: of two entries under one id, the
    first is the story, and the rules see its text, not the other entry's."""
    await poll(rt)
    clock.advance(minutes=5)
    same_id = UNRELATED.guid
    seed = seed_item()
    feed_server.set("/a.rss", rss([UNRELATED, replace(seed, guid=same_id), *BACKLOG],
                                  now=clock.now))
    out = await poll(rt)
    assert out["a"].new == 1 and out["a"].alerts == 0
    assert alerts(tmp_path) == []


async def test_no_enabled_rule_turns_health_degraded(rt: Runtime, tmp_path: Path) -> None:
    """An emptied rules directory (or every rule disabled) is valid YAML and alerts
    nothing: /healthz says so instead of "ok"."""
    assert (await rt.health())["status"] == "ok"
    for f in (tmp_path / "rules").glob("*.yaml"):
        if f.name != "actors.yaml":
            f.write_text("rules: []\n", encoding="utf-8")
    assert rt.reload_rules() is True
    h = await rt.health()
    assert h["status"] == "degraded" and h["rules"]["enabled"] == 0
    assert "no rule is enabled: nothing can alert" in h["reasons"]


def test_a_rules_reload_says_what_changed_and_caps_the_names() -> None:
    from monitor.core.rules.load import RuleFile, parse_rules
    from monitor.shell.daemon import reload_summary

    def ruleset(names: list[str], term: str = "robots") -> Any:
        text = "rules:\n" + "".join(
            f"  - name: {n}\n    any: [{term}]\n    channels: [audit-file]\n" for n in names)
        return parse_rules(Path("rules"), [RuleFile(path=Path("rules/r.yaml"), text=text)],
                           channels=["audit-file"])

    old = ruleset(["a", "b", "c"])
    new = ruleset(["b", "c"] + [f"n{i:02d}" for i in range(15)])
    out = reload_summary(old, new)
    assert out["rules"] == 17 and out["added"] == 15 and out["removed"] == 1
    assert out["removed_names"] == "a"
    assert out["added_names"].endswith("(+5 more)") and out["added_names"].count(",") == 9
    changed = reload_summary(old, ruleset(["a", "b", "c"], term="drones"))
    assert changed["changed"] == 3 and "added" not in changed
    assert reload_summary(old, ruleset(["a", "b", "c"])) == {"rules": 3, "unchanged": True}


async def test_a_story_over_the_regex_budget_is_logged_and_what_is_decided_still_alerts(
        make_config: MakeConfig, feed_server: FeedServer, clock: Clock, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A budget of 60 characters: both regexes scan the 12-character title, the summary is
    not scanned. The rule the title decides alerts; the one that needed the summary does
    not, and a warning names the feed, the story and the rule."""
    import logging

    monkeypatch.setattr("monitor.core.rules.regex.REGEX_BUDGET", 60)
    (tmp_path / "rules" / "budget.yaml").write_text(
        "rules:\n"
        "  - name: dance\n    any: ['/dance/']\n    channels: [audit-file]\n"
        "  - name: gala\n    all: ['/dance/', '/gala/']\n    channels: [audit-file]\n",
        encoding="utf-8")
    item = Item(title="Robots dance", link="https://a.example/1", guid="https://a.example/1",
                description="A gala evening " * 20)
    feed_server.serve("/a.rss", rss([item], now=T0))
    config = make_config({"a": "/a.rss"}, "defaults: {alert_on_first_poll: true}")
    with caplog.at_level(logging.WARNING, logger="monitor.shell.pipeline"):
        async with Runtime(config, clock=clock) as rt:
            out = await poll(rt)
    assert out["a"].new == 1
    (rec,) = [r for r in caplog.records if r.getMessage() == "rules.budget_exceeded"]
    fields = rec.fields  # type: ignore[attr-defined]
    assert fields["feed"] == "a" and fields["story"] and fields["title"] == "Robots dance"
    assert fields["rules"] == ["gala"] and fields["terms"] == ["/dance/", "/gala/"]
    assert fields["budget"] == 60 and fields["wanted"] > 60
    assert [a["rule"] for a in alerts(tmp_path, "audit.jsonl")] == ["dance"]


# -- adaptive polling (#13) ------------------------------------------------------------------

def _with_ttl(body: bytes, minutes: str) -> bytes:
    return body.replace(b"<description>test</description>",
                        b"<description>test</description><ttl>" + minutes.encode() + b"</ttl>", 1)


async def _next_in(rt: Runtime, name: str, clock: Clock) -> float:
    st = await rt.store.get_feed(name)
    assert st is not None and st.next_poll is not None
    return (st.next_poll - clock.now).total_seconds()


async def test_a_feed_with_ttl_60_is_polled_an_hour_later(
        make_config: MakeConfig, feed_server: FeedServer, clock: Clock,
        caplog: pytest.LogCaptureFixture) -> None:
    """The issue's feed: ``<ttl>60</ttl>`` with a configured interval of 60 s. The next
    poll is an hour away (the jitter only lengthens it), after the 200 and after a 304,
    whose ttl is the one kept from the last parsed document; the poll's log line and
    ``monitor status --json`` say why."""
    import logging

    feed_server.serve("/a.rss", _with_ttl(rss(BACKLOG, now=T0), "60"))
    config = make_config({"a": "/a.rss"})
    caplog.set_level(logging.DEBUG, logger="monitor.shell.pipeline")
    async with Runtime(config, clock=clock) as rt:
        first = await poll(rt)
        assert first["a"].result == "baseline"
        assert 3600 <= await _next_in(rt, "a", clock) <= 3600 * 1.1
        st = await rt.store.get_feed("a")
        assert st is not None and (st.ttl, st.poll_interval, st.poll_reason) == (
            3600.0, 3600.0, "ttl 60m")
        clock.advance(hours=1, minutes=6)
        second = await poll(rt)
        assert second["a"].result == "not-modified"
        assert 3600 <= await _next_in(rt, "a", clock) <= 3600 * 1.1
    polled = [dict(r.fields) for r in caplog.records  # type: ignore[attr-defined]
              if r.getMessage() == "feed.polled"]
    assert [(f["status"], f["why"]) for f in polled] == [(200, "ttl 60m"), (304, "ttl 60m")]
    assert all(3600 <= float(f["next_in"]) <= 3960 for f in polled)  # type: ignore[arg-type]


async def test_ttl_is_clamped_by_max_interval(
        make_config: MakeConfig, feed_server: FeedServer, clock: Clock) -> None:
    feed_server.serve("/a.rss", _with_ttl(rss(BACKLOG, now=T0), "60"))
    config = make_config({"a": "/a.rss"}, "defaults: {max_interval: 20m}")
    async with Runtime(config, clock=clock) as rt:
        await poll(rt)
        assert 1200 <= await _next_in(rt, "a", clock) <= 1200 * 1.1
        st = await rt.store.get_feed("a")
        assert st is not None and st.poll_reason == "ttl 60m, capped at max_interval 20m"


async def test_cache_control_max_age_times_the_next_poll(
        make_config: MakeConfig, feed_server: FeedServer, clock: Clock) -> None:
    """``Cache-Control: max-age=900`` on the 200 and on the 304s: 15 minutes, not the
    configured minute; ``no-cache`` says nothing: back to the minute."""
    feed_server.serve("/a.rss", rss(BACKLOG, now=T0), headers={"Cache-Control": "max-age=900"})
    config = make_config({"a": "/a.rss"})
    async with Runtime(config, clock=clock) as rt:
        await poll(rt)
        assert 900 <= await _next_in(rt, "a", clock) <= 990
        clock.advance(minutes=16)
        assert (await poll(rt))["a"].result == "not-modified"
        assert 900 <= await _next_in(rt, "a", clock) <= 990
        st = await rt.store.get_feed("a")
        assert st is not None and st.poll_reason == "Cache-Control max-age=900"
        feed_server.serve("/a.rss", rss(BACKLOG, now=T0),
                          headers={"Cache-Control": "no-cache, max-age=900"})
        clock.advance(minutes=16)
        await poll(rt)
        assert 54 <= await _next_in(rt, "a", clock) <= 66
        st = await rt.store.get_feed("a")
        assert st is not None and st.poll_reason == "interval 1m"


async def test_the_learned_cadence_times_an_adaptive_feed(
        make_config: MakeConfig, feed_server: FeedServer, clock: Clock) -> None:
    """Feeds without their own interval adapt: one that posts every 4 minutes is polled
    every 2 (its WordPress-style ``sy:updatePeriod hourly`` notwithstanding), one that
    posts every 6 hours is polled hourly (max_interval), and the cadence stays known
    through the 304s."""
    fast = [Item(title=f"Fast {i}", link=f"https://f.example/{i}", guid=f"https://f.example/{i}",
                 published=T0 - timedelta(minutes=4 * i + 1)) for i in range(20)]
    slow = [Item(title=f"Slow {i}", link=f"https://s.example/{i}", guid=f"https://s.example/{i}",
                 published=T0 - timedelta(hours=6 * i + 1)) for i in range(20)]
    wordpress = (b"<description>test</description><sy:updatePeriod xmlns:sy="
                 b"\"http://purl.org/rss/1.0/modules/syndication/\">hourly</sy:updatePeriod>")
    feed_server.serve("/fast.rss", rss(fast, now=T0).replace(
        b"<description>test</description>", wordpress, 1))
    feed_server.serve("/slow.rss", rss(slow, now=T0))
    config = make_config({"fast": "/fast.rss", "slow": "/slow.rss"}, feed_opts="")
    async with Runtime(config, clock=clock) as rt:
        await poll(rt)
        fast_in, slow_in = await _next_in(rt, "fast", clock), await _next_in(rt, "slow", clock)
        assert 100 <= fast_in <= 140, fast_in
        assert 3240 <= slow_in <= 3960, slow_in
        f, s = await rt.store.get_feed("fast"), await rt.store.get_feed("slow")
        assert f is not None and s is not None
        assert f.update_period == 3600.0 and f.cadence is not None
        assert f.poll_reason == "cadence ~4m (publishes more often than its sy:updatePeriod every 1h)"
        assert s.poll_reason == "cadence ~6h, capped at max_interval 1h"
        clock.advance(minutes=3)
        assert (await poll(rt))["fast"].result == "not-modified"
        assert 100 <= await _next_in(rt, "fast", clock) <= 140


async def test_the_index_loads_when_a_story_is_new_and_restarts_from_its_snapshot(
        make_config: MakeConfig, feed_server: FeedServer, clock: Clock,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from monitor.shell import dedupstate

    monkeypatch.setattr(dedupstate, "STALE_MIN", 1)  # a snapshot even of a few stories
    feed_server.serve("/a.rss", rss(BACKLOG, now=T0))
    config = make_config({"a": "/a.rss"})
    async with Runtime(config, clock=clock) as rt:
        assert not rt.dedup.loaded
        await poll(rt)  # the baseline: new stories, so the index is loaded (rebuilt)
        assert rt.dedup.loaded and rt.dedup.from_snapshot is None
        held = len(rt.pipeline.index)
        assert held == len(BACKLOG)
    # the end saved a snapshot; a start where every feed answers 304 never reads it
    clock.advance(minutes=5)
    async with Runtime(config, clock=clock) as rt:
        out = await poll(rt)
        assert out["a"].status == 304 and not rt.dedup.loaded
    # a new story: the index is the snapshot, and the story joins the index
    clock.advance(minutes=5)
    feed_server.set("/a.rss", rss([seed_item(), *BACKLOG], now=clock.now))
    async with Runtime(config, clock=clock) as rt:
        out = await poll(rt)
        assert out["a"].new == 1 and out["a"].alerts >= 1
        assert (rt.dedup.from_snapshot, rt.dedup.caught_up) == (held, 0)
        assert len(rt.pipeline.index) == held + 1
    assert len(alerts(tmp_path)) == 1


async def test_a_reworded_copy_joins_a_story_another_feed_baselined(
        rt: Runtime, feed_server: FeedServer, clock: Clock) -> None:
    """A baseline's stories get the index's quick search (the cost of a fresh instance's
    first pass), and a later copy from another outlet, worded otherwise, is scored
    against them and joins the baselined story's cluster: one story, two sources."""
    avalanche = BACKLOG[1]
    first = await poll(rt)
    assert first["a"].result == "baseline"
    clock.advance(minutes=5)
    copy = Item(title="Search under way for ten skiers missing after avalanche in California",
                link="https://news.example/skiers", guid="b-skiers")
    feed_server.set("/b.rss", rss([copy], now=clock.now))
    await poll(rt)
    stored = {s.story.title: s for s in await rt.store.recent_stories(T0 - timedelta(days=1))}
    theirs, ours = stored[avalanche.title], stored[copy.title]
    assert (theirs.story.feed, ours.story.feed) == ("a", "b")
    assert ours.cluster == theirs.cluster
    cluster = await rt.store.get_cluster(theirs.cluster)
    assert cluster is not None and set(cluster.sources) == {"a", "b"}
