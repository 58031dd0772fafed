"""Grouping per rule (``group_by``, Alertmanager's semantics): pure routing decisions,
then the whole path (route → store → dispatch) on a fake clock against the local
Slack-compatible server and SMTP server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from monitor.config import DeliveryConfig, EmailChannel, SlackChannel
from monitor.core.model import Alert, FeedState, Grouping, GroupState, Match, Story
from monitor.core.route import (
    Candidate,
    ClusterFacts,
    group_key,
    group_label,
    group_slot,
    group_thread,
    plan,
    schedule_groups,
    updates,
)
from monitor.metrics import Metrics
from monitor.notify.base import Notifier
from monitor.notify.email import EmailNotifier
from monitor.notify.slack import SlackNotifier
from monitor.shell.dispatch import Dispatcher
from monitor.store.base import StoredStory
from monitor.store.sqlite import SQLiteStore
from tests.clock import T0, Clock
from tests.peers.slackserver import SlackServer
from tests.peers.smtpserver import SMTPServer

GROUPING = Grouping(by=("actors",), wait=30.0, interval=300.0, repeat=4 * 3600.0)


def match(actors: tuple[str, ...] = ("snowden",), *, channels: tuple[str, ...] = ("slack",),
          grouping: Grouping | None = GROUPING, rule: str = "leaks") -> Match:
    return Match(rule=rule, severity="high", channels=channels, actors=actors, group=grouping)


def story(i: int, at: datetime, *, feed: str = "bbc") -> Story:
    return Story(id=f"s{i}", feed=feed, title=f"Headline number {i}",
                 link=f"https://example.org/s{i}", published=at, first_seen=at,
                 feed_tags=("world",))


def alert(m: Match, i: int = 1, at: datetime = T0) -> Alert:
    return Alert(story=story(i, at), match=m, cluster=f"s{i}")


# -- pure -----------------------------------------------------------------------------------


def test_group_key_and_label_follow_group_by() -> None:
    a = alert(match(("snowden", "assange"),
                    grouping=Grouping(by=("rule", "actors", "feed", "tags"))))
    assert group_key(a, "slack") == "g:leaks:slack:actors=assange, snowden&feed=bbc&tags=world"
    assert group_label(a) == "assange, snowden · bbc · world"
    whole = alert(match(grouping=Grouping(by=("rule",))))
    assert group_key(whole, "slack") == "g:leaks:slack:" and group_label(whole) == ""
    # another channel, another group (each channel threads its own messages)
    assert group_key(a, "mail") != group_key(a, "slack")
    assert group_label(alert(match((), grouping=Grouping(by=("actors",))))) == "no actors"


def test_group_slot_wait_then_ticks_then_a_new_group_after_repeat() -> None:
    g = GROUPING
    s = timedelta(seconds=1)
    assert group_slot(g, None, T0) == T0 + 30 * s  # a new group waits group_wait
    waiting = GroupState(group="k", pending_since=T0)
    assert group_slot(g, waiting, T0 + 10 * s) == T0 + 30 * s  # joins the first message
    sent = GroupState(group="k", last_sent=T0 + 30 * s, ref="1.0")
    # the next tick after the match: last message + k × group_interval
    assert group_slot(g, sent, T0 + 60 * s) == T0 + 330 * s
    assert group_slot(g, sent, T0 + 330 * s) == T0 + 330 * s
    assert group_slot(g, sent, T0 + 331 * s) == T0 + 630 * s
    # quiet for longer than repeat_interval: a new group, group_wait again
    later = T0 + 30 * s + timedelta(hours=4) + s
    assert group_slot(g, sent, later) == later + 30 * s
    assert group_thread(g, sent, T0 + 60 * s) == (True, "1.0")
    assert group_thread(g, sent, later) == (False, None)
    assert group_thread(g, None, T0) == (False, None)


def test_plan_marks_grouped_deliveries_and_schedule_places_them() -> None:
    cands = [Candidate(story=story(i, T0), matches=(match(actors),),
                       facts=ClusterFacts(cluster=f"s{i}", sources=("bbc",), new=True))
             for i, actors in enumerate([("snowden",), ("snowden",), ("assange",)])]
    plain = Candidate(story=story(9, T0), matches=(match(grouping=None, rule="other"),),
                      facts=ClusterFacts(cluster="s9", sources=("bbc",), new=True))
    out = plan(candidates=[*cands, plain], earlier={}, enabled={"leaks", "other"}, now=T0)
    assert [d.group for d in out] == ["g:leaks:slack:actors=snowden"] * 2 + [
        "g:leaks:slack:actors=assange", None]
    states = {"g:leaks:slack:actors=snowden": GroupState(group="x", last_sent=T0 - timedelta(
        seconds=100), ref="1.0")}
    placed = schedule_groups(out, states, now=T0)
    assert [d.next_attempt for d in placed] == [
        T0 + timedelta(seconds=200), T0 + timedelta(seconds=200),
        T0 + timedelta(seconds=30), None]


def test_grouped_rules_get_no_carried_by_updates() -> None:
    first = alert(match())
    facts = ClusterFacts(cluster="s1", sources=("bbc", "ap"))
    assert updates(story(2, T0), [first], facts, now=T0) == []
    assert len(updates(story(2, T0), [alert(match(grouping=None))], facts, now=T0)) == 1


# -- route → store → dispatch, on a fake clock ----------------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    async with SQLiteStore(tmp_path / "s.db") as s:
        yield s


class Poller:
    """What the pipeline does with a poll's matches: plan, place grouped deliveries
    with their groups' stored state, save; the stories' numbers are unique."""

    def __init__(self, store: SQLiteStore, clock: Clock) -> None:
        self.store, self.clock, self.n = store, clock, 0

    async def poll(self, *matches: Match, feed: str = "bbc") -> None:
        now = self.clock()
        cands = []
        for m in matches:
            self.n += 1
            cands.append(Candidate(story=story(self.n, now, feed=feed), matches=(m,),
                                   facts=ClusterFacts(cluster=f"s{self.n}", sources=(feed,),
                                                      new=True)))
        out = plan(candidates=cands, earlier={}, enabled={m.rule for m in matches}, now=now)
        states = await self.store.group_states({d.group for d in out if d.group})
        out = schedule_groups(out, states, now=now)
        await self.store.save_poll(
            FeedState(name=feed, url="http://x", configured_url="http://x"),
            [StoredStory(story=c.story, cluster=c.facts.cluster) for c in cands], out)


def dispatcher(store: SQLiteStore, notifiers: dict[str, Notifier], clock: Clock) -> Dispatcher:
    return Dispatcher(store, notifiers, DeliveryConfig(retry_min=10, retry_max=60), Metrics(),
                      clock, rates={ch: 100.0 for ch in notifiers})


def bot(server: SlackServer) -> SlackNotifier:
    return SlackNotifier("slack", SlackChannel(
        type="slack", token=server.token, channel=next(iter(server.channels)),
        base_url=server.api_base_url, rate=100))


async def test_a_burst_is_one_message_then_one_threaded_follow_up_per_interval(
    store: SQLiteStore, slack_server: SlackServer
) -> None:
    clock = Clock()
    polls = Poller(store, clock)
    dsp = dispatcher(store, {"slack": bot(slack_server)}, clock)
    snowden, assange = match(("snowden",)), match(("assange",))

    await polls.poll(snowden, snowden, snowden)  # a burst of headlines
    assert (await dsp.run_once()).sent == 0  # group_wait: nothing yet
    clock.advance(seconds=10)
    await polls.poll(snowden, assange)  # joins the waiting group; another group starts
    clock.advance(seconds=19)
    assert (await dsp.run_once()).sent == 0
    clock.advance(seconds=1)  # T0 + 30 s: the Snowden group's first message
    r = await dsp.run_once()
    assert (r.sent, r.grouped) == (4, 4)
    [first] = slack_server.messages
    assert "leaks · snowden: 4 stories" in first["text"] and first["thread_ts"] is None
    clock.advance(seconds=10)  # T0 + 40 s: the Assange group's own first message
    assert (await dsp.run_once()).sent == 1
    assert "leaks · assange: 1 story" in slack_server.messages[-1]["text"]
    assert slack_server.messages[-1]["thread_ts"] is None

    clock.advance(seconds=20)  # T0 + 60 s: later matches wait for the next interval
    await polls.poll(snowden)
    clock.advance(seconds=100)
    await polls.poll(snowden)
    clock.advance(seconds=139)  # T0 + 299 s
    assert (await dsp.run_once()).sent == 0
    clock.advance(seconds=31)  # T0 + 330 s = first message + group_interval
    assert (await dsp.run_once()).sent == 2
    follow = slack_server.messages[-1]
    assert "leaks · snowden: 2 more" in follow["text"]
    assert follow["thread_ts"] == first["ts"]  # in the group's thread

    clock.advance(seconds=70)  # T0 + 400 s: due at the next tick, T0 + 630 s
    await polls.poll(snowden)
    clock.advance(seconds=229)
    assert (await dsp.run_once()).sent == 0
    clock.advance(seconds=1)
    assert (await dsp.run_once()).sent == 1
    assert "snowden: 1 more" in slack_server.messages[-1]["text"]
    assert slack_server.messages[-1]["thread_ts"] == first["ts"]

    # quiet for longer than repeat_interval: the story line starts a new group
    clock.advance(hours=4, seconds=1)
    await polls.poll(snowden, snowden)
    clock.advance(seconds=30)
    assert (await dsp.run_once()).sent == 2
    fresh = slack_server.messages[-1]
    assert "leaks · snowden: 2 stories" in fresh["text"] and fresh["thread_ts"] is None
    assert len(slack_server.messages) == 5  # 11 headlines, 5 messages
    assert {r.state for r in await store.deliveries(limit=100)} == {"sent"}
    await dsp.close()


async def test_a_group_follow_up_by_email_replies_to_the_first_message(
    store: SQLiteStore, smtp_server: SMTPServer
) -> None:
    clock = Clock()
    polls = Poller(store, clock)
    mail = EmailNotifier("mail", EmailChannel.model_validate({
        "type": "email", "host": smtp_server.host, "port": smtp_server.port,
        "security": "none", "from": "monitor@example.org", "to": ["ops@example.org"],
        "rate": 100}))
    dsp = dispatcher(store, {"mail": mail}, clock)
    m = match(channels=("mail",), grouping=Grouping(by=("feed",), wait=5, interval=60,
                                                     repeat=3600))
    await polls.poll(m, m)
    clock.advance(seconds=5)
    assert (await dsp.run_once()).sent == 2
    clock.advance(seconds=10)
    await polls.poll(m)
    clock.advance(seconds=50)  # first message + group_interval
    assert (await dsp.run_once()).sent == 1
    first, follow = (x.message for x in smtp_server.messages)
    assert "leaks · bbc: 2 stories" in str(first["Subject"])
    assert "leaks · bbc: 1 more" in str(follow["Subject"])
    assert follow["In-Reply-To"] == first["Message-ID"]
    assert first["In-Reply-To"] is None
    await dsp.close()


async def test_a_failed_group_message_is_retried_as_one_message(
    store: SQLiteStore, slack_server: SlackServer
) -> None:
    clock = Clock()
    polls = Poller(store, clock)
    dsp = dispatcher(store, {"slack": bot(slack_server)}, clock)
    await polls.poll(match(), match(), match())
    clock.advance(seconds=30)
    slack_server.fail_next(1, status=500)
    r = await dsp.run_once()
    assert (r.sent, r.retrying) == (0, 3)
    rows = await store.deliveries()
    assert len({row.next_attempt for row in rows}) == 1  # one retry time for the group
    when = rows[0].next_attempt
    assert when is not None
    clock.now = when
    assert (await dsp.run_once()).sent == 3
    assert len(slack_server.messages) == 1
    assert "snowden: 3 stories" in slack_server.messages[0]["text"]
    await dsp.close()


# -- rule keys --------------------------------------------------------------------------


def _problems(tmp_path: Path, rule: str) -> list[str]:
    from monitor.errors import RulesError
    from monitor.shell.rulefiles import load_rules

    (tmp_path / "r.yaml").write_text(rule, encoding="utf-8")
    with pytest.raises(RulesError) as info:
        load_rules(tmp_path, channels={"slack"}, default_channels=("slack",))
    return [str(p).replace(f"{tmp_path}/", "") for p in info.value.problems]


def test_group_keys_load_with_defaults(tmp_path: Path) -> None:
    from monitor.shell.rulefiles import load_rules

    (tmp_path / "r.yaml").write_text(
        "rules:\n"
        "  - name: leaks\n    any: [Snowden]\n    group_by: [actors, feed]\n"
        "    group_wait: 1m\n"
        "  - name: plain\n    any: [Assange]\n", encoding="utf-8")
    rules = load_rules(tmp_path, channels={"slack"}, default_channels=("slack",))
    assert rules.rule("leaks").group == Grouping(by=("actors", "feed"), wait=60.0,
                                                 interval=300.0, repeat=14400.0)
    assert rules.rule("plain").group is None


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ("    group_by: [actor]\n",
         "r.yaml:4:16: rule \"x\": group_by.0: Input should be 'rule', 'actors', 'tags' or "
         "'feed' (got 'actor')"),
        ("    group_wait: 30s\n",
         'r.yaml:4:5: rule "x": group_wait: only makes sense with group_by'),
        ("    group_by: [feed, feed]\n",
         'r.yaml:4:22: rule "x": group_by: "feed" is listed twice'),
        ("    group_by: [feed]\n    group_interval: soon\n",
         'r.yaml:5:21: rule "x": group_interval: expected a duration'),
        ("    group_by: [feed]\n    group_interval: 1h\n    repeat_interval: 10m\n",
         'r.yaml:6:22: rule "x": repeat_interval: repeat_interval (600s) must not be shorter '
         "than group_interval (3600s)"),
        ("    group_by: []\n",
         'r.yaml:4:15: rule "x": group_by: give at least one of rule, actors, tags, feed'),
        ("    group_by: rule\n    digest: '0 8 * * *'\n",
         'r.yaml:4:5: rule "x": group_by: a digest rule already sends its alerts together'),
    ],
)
def test_group_keys_are_validated_with_a_location(tmp_path: Path, keys: str,
                                                  expected: str) -> None:
    [got] = _problems(tmp_path, "rules:\n  - name: x\n    any: [Snowden]\n" + keys)
    assert got.startswith(expected), got
