"""Pure routing: idempotency keys, cooldown, "carried by N" updates, retry timing."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from monitor.core.model import Alert, Delivery, FeedSpec, FeedState, Match, Story
from monitor.core.route import (
    MAX_ALERT_AGE,
    Candidate,
    ClusterFacts,
    alert_key,
    is_baseline,
    needs_earlier,
    plan,
    route,
    silenced,
    updates,
)
from monitor.core.schedule import retry_at

NOW = datetime(2026, 2, 17, 12, 0, tzinfo=UTC)
STORY = Story(id="s1", feed="bbc", title="Sanctions deadline", link="https://x/1",
              published=NOW, first_seen=NOW)
M = Match(rule="r", severity="high", channels=("slack", "mail"), terms=("sanctions",))


def facts(*sources: str) -> ClusterFacts:
    return ClusterFacts(cluster="c1", sources=sources)


def test_first_alert_per_channel_with_stable_keys() -> None:
    ds = route(STORY, [M], facts("bbc"), now=NOW)
    assert [(d.channel, d.key) for d in ds] == [
        ("slack", "a:c1:r:slack"), ("mail", "a:c1:r:mail")]
    assert all(d.alert.sources == 1 and not d.alert.update for d in ds)
    # the same decision later gives the same keys: the store ignores the replay
    assert [d.key for d in route(STORY, [M], facts("bbc"), now=NOW + timedelta(hours=1))] == [
        d.key for d in ds]


def test_already_alerted_cluster_is_silent_without_cooldown() -> None:
    last = {("r", "slack"): NOW - timedelta(days=2), ("r", "mail"): NOW}
    assert route(STORY, [M], facts("bbc", "ap"), now=NOW, last_alerts=last) == []


def test_cooldown_realerts_after_the_period_only() -> None:
    m = Match(rule="r", severity="high", channels=("slack",), cooldown=3600)
    recent = {("r", "slack"): NOW - timedelta(minutes=30)}
    assert route(STORY, [m], facts("bbc"), now=NOW, last_alerts=recent) == []
    old = {("r", "slack"): NOW - timedelta(hours=2)}
    (d,) = route(STORY, [m], facts("bbc"), now=NOW, last_alerts=old)
    # the key follows the previous alert: two polls that saw it make the same key
    assert d.key == f"a:c1:r:slack:{int((NOW - timedelta(hours=2)).timestamp())}"
    (again,) = route(STORY, [m], facts("bbc"), now=NOW + timedelta(seconds=7), last_alerts=old)
    assert again.key == d.key


def test_updates_only_at_milestones_above_what_the_alert_said() -> None:
    first = Alert(story=STORY, match=M, cluster="c1", sources=1)
    u1, u2 = updates(STORY, [first], facts("bbc", "ap"), now=NOW)
    assert u1.alert.update and u1.alert.sources == 2 and u1.alert.source_names == ("bbc", "ap")
    assert u1.parent_key == alert_key("c1", "r", "slack") and u1.key == "u:c1:r:slack:2"
    assert u2.channel == "mail" and u2.parent_key == alert_key("c1", "r", "mail")
    assert u1.alert.first_title == STORY.title  # the first alert's headline, for threading
    later = replace(STORY, id="s9", title="Another outlet's headline")
    [u3, _] = updates(later, [first], facts("bbc", "ap", "afp"), now=NOW)
    assert u3.alert.story.title == later.title and u3.alert.first_title == STORY.title
    # 4 sources is not a milestone; 3 is
    assert updates(STORY, [first], facts("bbc", "ap", "afp", "dw"), now=NOW) == []
    assert len(updates(STORY, [first], facts("bbc", "ap", "afp"), now=NOW)) == 2
    # an alert that already said "2 sources" gets no "2 sources" update
    said_two = Alert(story=STORY, match=M, cluster="c1", sources=2)
    assert updates(STORY, [said_two], facts("bbc", "ap"), now=NOW) == []


def test_retry_backoff_honours_retry_after_and_gives_up() -> None:
    # (jitter off: test_schedule checks it)
    kw = {"retry_min": 30.0, "retry_max": 3600.0, "give_up_after": 86400.0, "jitter": 0.0}
    assert retry_at(now=NOW, created=NOW, attempts=1, retry_after=None, **kw) == NOW + timedelta(
        seconds=30)
    assert retry_at(now=NOW, created=NOW, attempts=4, retry_after=None, **kw) == NOW + timedelta(
        seconds=240)
    assert retry_at(now=NOW, created=NOW, attempts=20, retry_after=None, **kw) == NOW + timedelta(
        hours=1)
    assert retry_at(now=NOW, created=NOW, attempts=1, retry_after=120, **kw) == NOW + timedelta(
        seconds=120)
    assert retry_at(now=NOW, created=NOW - timedelta(days=2), attempts=3, retry_after=None,
                    **kw) is None
    # thousands of attempts (a long give_up_after) do not overflow
    assert retry_at(now=NOW, created=NOW, attempts=5000, retry_after=None, **kw) == (
        NOW + timedelta(hours=1))


# --- plan: one poll's candidates → deliveries ---------------------------------------------

ENABLED = frozenset({"r"})


def new_story(story: Story = STORY, *, matches: tuple[Match, ...] = (M,),
              sources: tuple[str, ...] = ("bbc",), link_known: bool = False) -> Candidate:
    """A story that started its cluster."""
    return Candidate(story=story, matches=matches, link_known=link_known,
                     facts=ClusterFacts(cluster="c1", sources=sources, new=True))


def joining(story: Story, *sources: str, matches: tuple[Match, ...] = ()) -> Candidate:
    """A story that joined the known cluster c1."""
    return Candidate(story=story, matches=matches,
                     facts=ClusterFacts(cluster="c1", sources=sources))


def stored(ds: list[Delivery]) -> list[Delivery]:
    """First alerts as the store gives them back (updates are not first alerts)."""
    return [d for d in ds if d.parent_key is None]


def test_plan_first_alert_of_a_new_cluster() -> None:
    ds = plan(candidates=[new_story()], earlier={}, enabled=ENABLED, now=NOW)
    assert [(d.key, d.channel, d.created, d.next_attempt, d.parent_key) for d in ds] == [
        ("a:c1:r:slack", "slack", NOW, None, None), ("a:c1:r:mail", "mail", NOW, None, None)]
    assert all(d.alert.story == STORY and d.alert.cluster == "c1" and d.alert.sources == 1
               and d.alert.source_names == ("bbc",) and not d.alert.update for d in ds)
    # the keys are route's: a replay of the same poll makes the same ones
    assert ds == route(STORY, [M], facts("bbc"), now=NOW)
    # nothing can have alerted on a cluster the story started: earlier alerts are not read
    assert plan(candidates=[new_story()], earlier={"c1": ds}, enabled=ENABLED, now=NOW) == ds


def test_plan_known_cluster_alerts_once_then_again_after_the_cooldown() -> None:
    m = replace(M, channels=("slack",), cooldown=3600)
    first = plan(candidates=[new_story(matches=(m,))], earlier={}, enabled=ENABLED,
                 now=NOW - timedelta(hours=2))
    assert [d.key for d in first] == ["a:c1:r:slack"]
    copy = replace(STORY, id="s2", feed="ap", title="Sanctions deadline nears")
    # within the cooldown: silent (4 sources is no update milestone)
    within = plan(candidates=[joining(copy, "bbc", "ap", "afp", "dw", matches=(m,))],
                  earlier={"c1": first}, enabled=ENABLED, now=NOW - timedelta(minutes=90))
    assert within == []
    (again,) = plan(candidates=[joining(copy, "bbc", "ap", "afp", "dw", matches=(m,))],
                    earlier={"c1": first}, enabled=ENABLED, now=NOW)
    assert again.key == f"a:c1:r:slack:{int((NOW - timedelta(hours=2)).timestamp())}"
    assert again.alert.story == copy and again.alert.sources == 4 and not again.alert.update
    # the next cooldown counts from the latest alert, whichever instance replays it
    later = NOW + timedelta(hours=1, minutes=1)
    (third,) = plan(candidates=[joining(copy, "bbc", "ap", "afp", "dw", matches=(m,))],
                    earlier={"c1": [*first, again]}, enabled=ENABLED, now=later)
    assert third.key == f"a:c1:r:slack:{int(NOW.timestamp())}"
    # no cooldown: once per cluster, however long after
    once = replace(m, cooldown=0.0)
    assert plan(candidates=[joining(copy, "bbc", "ap", "afp", "dw", matches=(once,))],
                earlier={"c1": first}, enabled=ENABLED, now=NOW + timedelta(days=30)) == []


def test_plan_updates_at_milestones_under_the_very_first_headline() -> None:
    m = replace(M, channels=("slack",), cooldown=3600)
    t0 = NOW - timedelta(hours=3)
    first = plan(candidates=[new_story(matches=(m,))], earlier={}, enabled=ENABLED, now=t0)
    relay = replace(STORY, id="s2", feed="ap", title="Cooldown over: the re-alert's headline")
    realert = plan(candidates=[joining(relay, "bbc", "ap", "afp", "dw", matches=(m,))],
                   earlier={"c1": first}, enabled=ENABLED, now=NOW - timedelta(hours=1))
    assert [d.alert.sources for d in realert] == [4]
    earlier = {"c1": stored(first + realert)}
    # 5 sources: a milestone above the 4 the latest alert said; it threads under the
    # first alert's key and keeps the very first headline for the mail subject
    fifth = replace(STORY, id="s5", feed="dw", title="A fifth outlet's headline")
    (u,) = plan(candidates=[joining(fifth, "bbc", "ap", "afp", "dw", "rt")],
                earlier=earlier, enabled=ENABLED, now=NOW)
    assert (u.key, u.parent_key, u.channel) == ("u:c1:r:slack:5", alert_key("c1", "r", "slack"),
                                               "slack")
    assert u.alert.update and u.alert.sources == 5 and u.alert.story == fifth
    assert u.alert.first_title == STORY.title
    assert u.alert.source_names == ("bbc", "ap", "afp", "dw", "rt")
    # 6 sources is no milestone: nothing, and plan need not read the cluster's alerts
    sixth = joining(fifth, "bbc", "ap", "afp", "dw", "rt", "dpa")
    assert not needs_earlier(sixth)
    assert plan(candidates=[sixth], earlier={}, enabled=ENABLED, now=NOW) == []
    # 3 sources is a milestone, but below what the latest alert said: nothing new to say
    assert plan(candidates=[joining(fifth, "bbc", "ap", "afp")], earlier=earlier,
                enabled=ENABLED, now=NOW) == []


def test_plan_ignores_earlier_alerts_of_disabled_rules() -> None:
    gone = Match(rule="gone", severity="low", channels=("slack",))
    first = plan(candidates=[new_story(matches=(M, gone))], earlier={},
                 enabled=frozenset({"r", "gone"}), now=NOW - timedelta(hours=1))
    assert {d.alert.match.rule for d in first} == {"r", "gone"}
    copy = replace(STORY, id="s2", feed="ap")
    # "gone" was disabled since: no update of its alert; "r" gets one per channel
    ups = plan(candidates=[joining(copy, "bbc", "ap")], earlier={"c1": first},
               enabled=ENABLED, now=NOW)
    assert [d.key for d in ups] == ["u:c1:r:slack:2", "u:c1:r:mail:2"]
    # a rule whose earlier alerts are not in force alerts as if for the first time (and
    # the rule in force gets its update)
    fresh = plan(candidates=[joining(copy, "bbc", "ap", matches=(M,))], earlier={"c1": first},
                 enabled=frozenset({"gone"}), now=NOW)
    assert [d.key for d in fresh] == ["a:c1:r:slack", "a:c1:r:mail", "u:c1:gone:slack:2"]


def test_plan_digest_deliveries_wait_for_the_next_cron_time() -> None:
    now = NOW + timedelta(minutes=5)  # 12:05
    hourly = Match(rule="d", severity="low", channels=("slack",), digest="0 * * * *")
    ds = plan(candidates=[new_story(matches=(hourly, M))], earlier={},
              enabled=frozenset({"d", "r"}), now=now)
    assert [(d.key, d.next_attempt) for d in ds] == [
        ("a:c1:d:slack", datetime(2026, 2, 17, 13, 0, tzinfo=UTC)),
        ("a:c1:r:slack", None), ("a:c1:r:mail", None)]
    assert all(d.created == now for d in ds)
    # a digest's alert is not updated when the cluster grows
    copy = replace(STORY, id="s2", feed="ap")
    ups = plan(candidates=[joining(copy, "bbc", "ap")], earlier={"c1": ds},
               enabled=frozenset({"d", "r"}), now=now)
    assert [d.key for d in ups] == ["u:c1:r:slack:2", "u:c1:r:mail:2"]


def test_plan_is_silent_on_baselines_churn_old_stories_and_forgotten_links() -> None:
    c = new_story()
    assert plan(candidates=[c], earlier={}, enabled=ENABLED, now=NOW, baseline=True) == []
    assert plan(candidates=[c], earlier={}, enabled=ENABLED, now=NOW, churn=True) == []
    assert silenced(c, now=NOW, baseline=True, churn=False) == "baseline"
    assert silenced(c, now=NOW, baseline=False, churn=True) == "guid-churn"
    # published longer ago than MAX_ALERT_AGE: remembered, never alerted on
    old = new_story(replace(STORY, published=NOW - MAX_ALERT_AGE - timedelta(seconds=1)))
    assert plan(candidates=[old], earlier={}, enabled=ENABLED, now=NOW) == []
    assert silenced(old, now=NOW, baseline=False, churn=False) == "too-old"
    edge = new_story(replace(STORY, published=NOW - MAX_ALERT_AGE))
    assert len(plan(candidates=[edge], earlier={}, enabled=ENABLED, now=NOW)) == 2
    # a "new" story whose link is stored: an old one that left the dedup window
    forgotten = new_story(link_known=True)
    assert plan(candidates=[forgotten], earlier={}, enabled=ENABLED, now=NOW) == []
    assert silenced(forgotten, now=NOW, baseline=False, churn=False) == "left-dedup-window"
    # ... while a known link joining a known cluster is one more source of it
    first = plan(candidates=[new_story()], earlier={}, enabled=ENABLED, now=NOW)
    source = replace(joining(replace(STORY, id="s2", feed="ap"), "bbc", "ap"), link_known=True)
    assert silenced(source, now=NOW, baseline=False, churn=False) is None
    assert [d.key for d in plan(candidates=[source], earlier={"c1": first}, enabled=ENABLED,
                                now=NOW)] == ["u:c1:r:slack:2", "u:c1:r:mail:2"]
    # a silent story among others silences only itself
    mixed = plan(candidates=[old, c], earlier={}, enabled=ENABLED, now=NOW)
    assert [d.alert.story.id for d in mixed] == ["s1", "s1"] and mixed == first


def test_the_first_poll_of_a_feed_is_a_baseline_unless_it_asks_to_alert() -> None:
    spec = FeedSpec(name="a", url="https://a.example/rss", interval=60)
    state = FeedState(name="a", url=spec.url, configured_url=spec.url)
    assert is_baseline(state, spec)
    assert not is_baseline(replace(state, baselined=True), spec)
    assert not is_baseline(state, replace(spec, alert_on_first_poll=True))


def test_editable_channel_is_updated_at_every_growth_and_replies_at_milestones() -> None:
    """A channel that edits its first message (Slack bot) gets an update whenever the
    cluster grows; ``reply`` marks those worth a thread reply (2, 5, 10, 20 sources, or
    a new actor / term). Other channels keep milestone updates, all replies."""
    first = plan(candidates=[new_story()], earlier={}, enabled=ENABLED, now=NOW,
                 editable={"slack"})
    srcs = ("bbc", "ap", "afp", "dw", "rt")
    got: dict[int, list[Delivery]] = {}
    for n in (2, 3, 4, 5):
        c = joining(replace(STORY, id=f"s{n}", feed=srcs[n - 1]), *srcs[:n])
        assert needs_earlier(c, edits=True)
        got[n] = plan(candidates=[c], earlier={"c1": stored(first)}, enabled=ENABLED, now=NOW,
                      editable={"slack"})
    slack = {n: [d for d in ds if d.channel == "slack"] for n, ds in got.items()}
    mail = {n: [d for d in ds if d.channel == "mail"] for n, ds in got.items()}
    assert {n: [(d.key, d.alert.reply) for d in ds] for n, ds in slack.items()} == {
        2: [("u:c1:r:slack:2", True)], 3: [("u:c1:r:slack:3", False)],
        4: [("u:c1:r:slack:4", False)], 5: [("u:c1:r:slack:5", True)]}
    assert {n: [d.key for d in ds] for n, ds in mail.items()} == {
        2: ["u:c1:r:mail:2"], 3: ["u:c1:r:mail:3"], 4: [], 5: ["u:c1:r:mail:5"]}
    assert all(d.alert.reply for ds in mail.values() for d in ds)
    u = slack[4][0]
    assert u.parent_key == "a:c1:r:slack" and u.alert.first_story == STORY
    assert u.alert.source_names == srcs[:4] and u.alert.novel == ()
    # without editable channels nothing changes: milestones only, every one a reply
    c4 = joining(replace(STORY, id="s4"), *srcs[:4])
    assert not needs_earlier(c4)
    assert plan(candidates=[c4], earlier={"c1": stored(first)}, enabled=ENABLED, now=NOW) == []


def test_a_new_actor_or_term_makes_a_reply() -> None:
    m = Match(rule="r", severity="high", channels=("slack",), terms=("sanctions",),
              actors=("Putin",))
    first = plan(candidates=[new_story(matches=(m,))], earlier={}, enabled=ENABLED, now=NOW,
                 editable={"slack"})
    same = replace(m, terms=("Sanctions",))  # what the first had, in another case
    more = replace(m, actors=("Putin", "Trump"), terms=("sanctions", "deadline"))
    for fired, novel in (((), ()), ((same,), ()), ((more,), ("Trump", "deadline"))):
        c = joining(replace(STORY, id="s3"), "bbc", "ap", "afp", matches=fired)
        (u,) = [d for d in plan(candidates=[c], earlier={"c1": stored(first)}, enabled=ENABLED,
                                now=NOW, editable={"slack"}) if d.alert.update]
        assert u.key == "u:c1:r:slack:3"
        assert (u.alert.novel, u.alert.reply) == (novel, bool(novel))
