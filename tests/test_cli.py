"""The commands, run as a user runs them: `python -m monitor ...` in a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from datetime import datetime
from pathlib import Path

import pytest

from tests.feeds import BACKLOG, UNRELATED, rss, seed_item
from tests.peers.feedserver import FeedServer
from tests.peers.slackserver import SlackServer

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT.parent / "shared" / "seeds" / "sanctions-deadline-article.txt"


async def monitor(*args: str, cwd: Path, stdin: bytes | None = None,
                  env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "monitor", *args, cwd=str(cwd),
        env={**os.environ, **env} if env else None,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
def workdir(tmp_path: Path, feed_server: FeedServer) -> Path:
    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    feed_server.serve("/a.rss", rss(BACKLOG))
    (tmp_path / "config.yaml").write_text(f"""
feeds:
  - {{name: a, url: '{feed_server.url('/a.rss')}'}}
  - {{name: dead, url: '{feed_server.url('/missing.rss')}'}}
defaults: {{alert_on_first_poll: true}}
channels:
  slack-news: {{type: file, path: slack.jsonl}}
  email-oncall: {{type: file, path: email.jsonl}}
  audit-file: {{type: file, path: audit.jsonl}}
fetch: {{parse_in: thread}}
""", encoding="utf-8")
    return tmp_path


async def test_check_ok_and_every_problem(workdir: Path) -> None:
    rc, out, _ = await monitor("check", cwd=workdir)
    assert rc == 0 and "OK" in out and "2 feeds" in out
    (workdir / "rules" / "bad.yaml").write_text(
        "rules:\n  - name: bad\n    any: [x]\n    actors: [nobody]\n    channels: [pager]\n")
    rc, _, err = await monitor("check", cwd=workdir)
    assert rc == 1
    assert 'bad.yaml:4:14: rule "bad": unknown actor "nobody"' in err, err
    assert 'bad.yaml:5:16: rule "bad": unknown channel "pager"' in err, err
    rc, out, _ = await monitor("check", "--json", cwd=workdir)
    data = json.loads(out)
    assert rc == 1 and data["ok"] is False and len(data["problems"]) == 2


async def test_help_says_what_it_does_and_lists_the_commands(tmp_path: Path) -> None:
    rc, out, _ = await monitor("--help", cwd=tmp_path)
    assert rc == 0 and out.splitlines()[2].startswith("Watch news feeds"), out
    for cmd in ("run", "once", "check", "demo", "status", "rules", "backtest", "stories"):
        assert f"\n    {cmd} " in out, cmd


async def test_failed_deliveries_go_out_after_the_cause_is_fixed(
    workdir: Path, feed_server: FeedServer, slack_server: SlackServer
) -> None:
    # Slack with a wrong token: a permanent refusal, marked failed
    config = (workdir / "config.yaml").read_text()
    slack = (f"  slack-news: {{type: slack, token: xoxb-wrong, channel: '#news', "
             f"base_url: '{slack_server.api_base_url}'}}")
    (workdir / "config.yaml").write_text(config.replace(
        "  slack-news: {type: file, path: slack.jsonl}", slack))
    feed_server.set("/a.rss", rss([seed_item(), *BACKLOG]))
    rc, out, _ = await monitor("once", "--json", cwd=workdir)
    assert rc == 0 and json.loads(out)["deliveries"]["failed"] == 1
    rc, out, _ = await monitor("status", "--json", cwd=workdir)
    [failed] = json.loads(out)["outbox"]["failed"]
    assert failed["channel"] == "slack-news" and "invalid_auth" in failed["error"]
    rc, out, _ = await monitor("status", cwd=workdir)
    assert f"failed #{failed['id']} slack-news" in out and "monitor outbox retry" in out

    rc, _, err = await monitor("outbox", "retry", "--channel", "pager", cwd=workdir)
    assert rc == 1 and "unknown channel 'pager'" in err and "slack-news" in err
    rc, _, err = await monitor("outbox", "retry", "--id", "99999999999999999999", cwd=workdir)
    assert rc == 2 and "not a delivery id" in err
    # while the channel is out of the config, its failed deliveries stay failed (said so)
    (workdir / "config.yaml").write_text(config.replace(
        "  slack-news: {type: file, path: slack.jsonl}\n", ""))
    rc, out, _ = await monitor("outbox", "retry", "--json", cwd=workdir)
    assert rc == 0 and json.loads(out) == {
        "requeued": [], "not_failed": [], "left_for_removed_channels": {"slack-news": 1}}
    # the token is fixed; the failed delivery goes back to the outbox and out
    (workdir / "config.yaml").write_text(config.replace(
        "  slack-news: {type: file, path: slack.jsonl}",
        slack.replace("xoxb-wrong", slack_server.token)))
    rc, out, _ = await monitor("outbox", "retry", "--id", str(failed["id"]), "--id", "999",
                               "--json", cwd=workdir)
    assert rc == 0 and json.loads(out) == {"requeued": [failed["id"]], "not_failed": [999],
                                           "left_for_removed_channels": {}}
    assert slack_server.messages == []
    rc, out, _ = await monitor("once", "--json", cwd=workdir)
    assert rc == 0 and json.loads(out)["deliveries"]["sent"] == 1
    assert [m["channel"] for m in slack_server.messages] == ["#news"]
    rc, out, _ = await monitor("outbox", "retry", cwd=workdir)
    assert rc == 0 and out.startswith("0 failed deliveries back in the outbox")


async def test_missing_config_is_a_helpful_error(tmp_path: Path) -> None:
    rc, _, err = await monitor("once", cwd=tmp_path)
    assert rc == 1 and "config.yaml" in err and "not found" in err


async def test_once_status_stories_and_backtest(workdir: Path, feed_server: FeedServer) -> None:
    feed_server.set("/a.rss", rss([seed_item(), UNRELATED, *BACKLOG]))
    rc, out, _ = await monitor("once", "--json", cwd=workdir)
    data = json.loads(out)
    feeds = {f["feed"]: f for f in data["feeds"]}
    assert feeds["a"]["new"] == 5 and feeds["a"]["alerts"] >= 1
    assert feeds["dead"]["result"] == "failed" and "404" in feeds["dead"]["error"]
    assert data["deliveries"]["failed"] == 0 and data["deliveries"]["sent"] >= 1
    slack = [json.loads(x) for x in (workdir / "slack.jsonl").read_text().splitlines()]
    assert [a["rule"] for a in slack] == ["sanctions-deadline"]
    assert rc == 0  # one feed of two failed: listed, not an error
    rc, out, _ = await monitor("once", "--strict", cwd=workdir)
    assert rc == 3 and "dead" in out  # for cron: any failed feed is an error

    rc, out, _ = await monitor("status", "--json", cwd=workdir)
    st = {f["name"]: f for f in json.loads(out)["feeds"]}
    assert st["dead"]["failures"] == 2 and st["a"]["stories_seen"] == 5  # polled twice
    assert datetime.fromisoformat(st["a"]["last_polled"]).tzinfo is not None
    assert "T" in st["a"]["last_polled"]  # ISO 8601, as /healthz has it
    # the interval decided at the last successful poll, and why (#13)
    assert st["a"]["interval"] > 0 and st["a"]["interval_why"]
    assert st["dead"]["interval"] is None  # never polled successfully
    rc, out, _ = await monitor("status", cwd=workdir)
    assert f"({st['a']['interval_why']})" in out

    rc, out, _ = await monitor("stories", "list", "--json", cwd=workdir)
    clusters = json.loads(out)
    assert rc == 0 and len(clusters) == 5
    seed_cluster = next(c for c in clusters if "Witkoff" in c["title"])
    rc, out, _ = await monitor("stories", "show", seed_cluster["id"], cwd=workdir)
    assert rc == 0 and "Witkoff" in out and "1 source: a" in out

    # an edited copy of the rules, replayed over what is stored: nothing is sent
    edited = workdir / "edited"
    shutil.copytree(workdir / "rules", edited)
    (edited / "robots.yaml").write_text(
        "rules:\n  - name: robots\n    any: [robot]\n    channels: [audit-file]\n")
    rc, out, _ = await monitor("backtest", "--since", "30d", "--rules", str(edited), "--json",
                               cwd=workdir)
    bt = json.loads(out)
    assert rc == 0 and bt["stories"] == 5
    assert bt["rules"]["robots"]["alerts"] == 1
    assert bt["rules"]["sanctions-deadline"]["alerts"] == 1
    assert "Humanoid" in bt["rules"]["robots"]["fired"][0]["title"]
    assert len((workdir / "audit.jsonl").read_text().splitlines()) == 1  # unchanged


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
async def test_once_on_either_event_loop(workdir: Path, feed_server: FeedServer, event_loop: str) -> None:
    if event_loop == "uvloop":
        pytest.importorskip("uvloop", reason="uvloop is not installed on this platform")
    feed_server.set("/a.rss", rss([seed_item(), UNRELATED, *BACKLOG]))
    rc, out, err = await monitor("once", "--json", cwd=workdir,
                                 env={"MONITOR_EVENT_LOOP": event_loop})
    assert rc == 0, err  # one feed of two failed: not all
    data = json.loads(out)
    assert {f["feed"]: f["new"] for f in data["feeds"]} == {"a": 5, "dead": 0}
    assert data["deliveries"]["sent"] >= 1
    rc, _, err = await monitor("status", cwd=workdir, env={"MONITOR_EVENT_LOOP": "nope"})
    assert rc == 1 and "MONITOR_EVENT_LOOP='nope'" in err


async def test_rules_test_explains(workdir: Path) -> None:
    if not SEED.exists():
        pytest.skip(f"{SEED} is absent: needs ../shared")
    rc, out, _ = await monitor("rules", "test", str(SEED), cwd=workdir)
    assert rc == 0
    assert "sanctions-deadline" in out and "«" in out
    rc, out, _ = await monitor("rules", "test", "--json", "--title", "Robots dance at gala",
                               cwd=workdir)
    data = json.loads(out)
    assert rc == 1 and not any(r["matched"] for r in data["rules"])
    rc, out, _ = await monitor("rules", "test", "--json", str(SEED), cwd=workdir)
    fired = [r["rule"] for r in json.loads(out)["rules"] if r["matched"]]
    assert fired == ["sanctions-deadline"]


async def test_stories_cluster_from_stdin(tmp_path: Path) -> None:
    lines = [
        {"id": "1", "title": "Jesse Jackson dies aged 84", "source": "bbc",
         "published": "2026-02-17T18:00:00Z"},
        {"id": "2", "title": "US civil rights leader Jesse Jackson dies at 84 - Reuters",
         "source": "reuters", "published": "2026-02-17T18:20:00Z"},
        {"id": "3", "title": "Rescuers search for missing skiers after avalanche",
         "source": "bbc", "published": "2026-02-17T18:30:00Z"},
    ]
    stdin = "".join(json.dumps(x) + "\n" for x in lines).encode()
    rc, out, err = await monitor("stories", "cluster", cwd=tmp_path, stdin=stdin)
    assert rc == 0, err
    got = {r["id"]: r["cluster"] for r in map(json.loads, out.splitlines())}
    assert got["1"] == got["2"] != got["3"]
    rc, _, err = await monitor("stories", "cluster", cwd=tmp_path, stdin=b"not json\n")
    assert rc == 1 and "line 1" in err
    # a record without an id, or with a time that is not one: an error naming it, no traceback
    rc, _, err = await monitor("stories", "cluster", cwd=tmp_path,
                               stdin=b'{"title": "x", "published": 0}\n')
    assert rc == 1 and 'record 1: expected a JSON object with "id"' in err
    assert "Traceback" not in err
    rc, _, err = await monitor("stories", "cluster", cwd=tmp_path,
                               stdin=b'{"id": "a", "published": "yesterday"}\n')
    assert rc == 1 and "record 1 (a): Invalid isoformat string" in err
    assert "Traceback" not in err


async def test_rules_test_on_a_feed_url(workdir: Path, feed_server: FeedServer) -> None:
    feed_server.set("/a.rss", rss([seed_item(), UNRELATED, *BACKLOG]))
    rc, out, err = await monitor("rules", "test", "--feed", feed_server.url("/a.rss"), "--json",
                                 cwd=workdir)
    assert rc == 0, err
    data = json.loads(out)
    # only the matches, as in text mode: one story, and only the rule that fired
    assert [d["story"]["title"] for d in data] == [seed_item().title]
    assert [r["rule"] for r in data[0]["rules"]] == ["sanctions-deadline"]
    assert all(r["matched"] for r in data[0]["rules"])
    # --all: every story and every rule
    rc, out, err = await monitor("rules", "test", "--feed", feed_server.url("/a.rss"), "--json",
                                 "--all", cwd=workdir)
    assert rc == 0, err
    data = json.loads(out)
    assert len(data) == 5
    fired = {d["story"]["title"]: [r["rule"] for r in d["rules"] if r["matched"]] for d in data}
    assert [t for t, rules in fired.items() if rules] == [seed_item().title]
    assert all(len(d["rules"]) > 1 for d in data)
    # a feed where nothing matches: an empty list, exit 1
    feed_server.serve("/b.rss", rss([UNRELATED, *BACKLOG]))
    rc, out, err = await monitor("rules", "test", "--feed", feed_server.url("/b.rss"), "--json",
                                 cwd=workdir)
    assert rc == 1 and json.loads(out) == []
    rc, _, err = await monitor("rules", "test", "--feed", feed_server.url("/missing.rss"),
                               cwd=workdir)
    assert rc == 1 and "404" in err


WIRE_JSON = json.dumps({
    "title": "Witkoff heads to Moscow as Trump's sanctions deadline for Russia looms",
    "summary": "Steve Witkoff travels to Moscow for talks with Vladimir Putin, days before "
               "Trump's Friday deadline for secondary sanctions.",
    "source": "wire"})


async def test_stories_explain_two_json_lines_without_a_config(tmp_path: Path) -> None:
    post = json.dumps({"title": "Trump envoy Witkoff urged to take tough approach with Putin "
                                "in make-or-break meeting to end Ukraine war before sanctions",
                       "source": "post"})
    rc, out, err = await monitor("stories", "explain", post, WIRE_JSON, "--json", cwd=tmp_path)
    assert rc == 0, err
    got = json.loads(out)
    assert got["same_story"] is True and got["score"] >= got["threshold"]
    assert got["rare_name"] == "witkoff"
    assert got["words"][0]["word"] == "witkoff"
    g = got["groups"]
    assert got["cosine"] >= max(g["title"] - 0.2, g["title_and_lead"] - 0.05) - 1e-3
    assert got["score"] == pytest.approx(got["cosine"] + g["rare_name"] + g["time"]
                                         + g["young_cluster"], abs=2e-3)
    assert got["blocked"] is None and got["shared_words"] >= 2
    # one word in common that is no rare name: the daemon would not join them, nor does explain
    one = json.dumps({"title": "Apple recall widens"})
    rc, out, _ = await monitor("stories", "explain", one,
                               json.dumps({"title": "Apple earnings beat forecasts"}), "--json",
                               cwd=tmp_path)
    assert rc == 0 and json.loads(out)["same_story"] is False
    assert json.loads(out)["blocked"]
    other = json.dumps({"title": "Humanoid robots perform martial arts at Chinese New Year gala"})
    rc, out, _ = await monitor("stories", "explain", post, other, cwd=tmp_path)
    assert rc == 0 and "same story: no" in out
    # not JSON: a stored story's id, which needs a config and its store
    rc, _, err = await monitor("stories", "explain", "{3F2504E0-4F89}", WIRE_JSON, cwd=tmp_path)
    assert rc == 1 and "config" in err


async def test_stories_explain_stored_stories_by_id_and_link(workdir: Path,
                                                             feed_server: FeedServer) -> None:
    feed_server.set("/a.rss", rss([seed_item(), UNRELATED, *BACKLOG]))
    rc, _, err = await monitor("once", cwd=workdir)
    assert rc == 0, err
    seed = seed_item()
    rc, out, err = await monitor("stories", "explain", seed.link, WIRE_JSON, "--json",
                                 cwd=workdir)
    assert rc == 0, err
    got = json.loads(out)
    assert got["same_story"] is True and got["a"]["cluster"] is not None
    assert got["window_stories"] == 4  # the other stored stories weigh the words
    rc, out, err = await monitor("stories", "explain", seed.link, UNRELATED.link, cwd=workdir)
    assert rc == 0, err
    assert "same story: no" in out and "stored: different clusters" in out
    rc, _, err = await monitor("stories", "explain", "https://nowhere.example/x", WIRE_JSON,
                               cwd=workdir)
    assert rc == 1 and "no stored story" in err


async def test_a_poll_without_problem_logs_no_problem_field(workdir: Path,
                                                            feed_server: FeedServer) -> None:
    feed_server.set("/a.rss", rss([seed_item(), *BACKLOG]))
    _, _, err = await monitor("once", "--log-level", "info", cwd=workdir)
    polled = [line for line in err.splitlines() if "feed.polled" in line and "feed=a" in line]
    assert polled, err
    assert not any("problem" in line for line in polled)
    assert "problem=None" not in err


async def test_global_options_before_the_command_and_config_precedence(workdir: Path) -> None:
    other = workdir / "other"
    other.mkdir()
    rc, out, err = await monitor("--config", str(workdir / "config.yaml"), "--log-level",
                                 "warning", "check", cwd=other)
    assert rc == 0, err
    assert out.startswith(f"{workdir / 'config.yaml'}: OK")
    rc, out, _ = await monitor("--config", str(workdir / "config.yaml"), "status", "--json",
                               cwd=other)
    assert rc == 0 and "feeds" in json.loads(out)
    # $MONITOR_CONFIG wins over ./config.yaml, and check says which file it read
    (other / "config.yaml").write_text("feeds: [\n", encoding="utf-8")
    rc, out, err = await monitor("check", cwd=other,
                                 env={"MONITOR_CONFIG": str(workdir / "config.yaml")})
    assert rc == 0 and out.startswith(f"{workdir / 'config.yaml'}: OK"), err
    rc, _, err = await monitor("check", cwd=other)
    assert rc == 1 and err.startswith("config.yaml: 1 problem(s):"), err


async def test_check_reports_a_regex_the_linear_engine_cannot_run(workdir: Path) -> None:
    """What RE2 cannot do is a located `monitor check` error with the fix; a ReDoS pattern
    passes (it is harmless on RE2) and `rules test` answers at once on the killer title."""
    (workdir / "rules" / "regex.yaml").write_text(
        "rules:\n"
        "  - name: backref\n    any: ['/(sanction)s? \\1/']\n    channels: [audit-file]\n"
        "  - name: lookahead\n    expr: 'Iran AND /deal(?! off)/i'\n    channels: [audit-file]\n",
        encoding="utf-8")
    rc, _, err = await monitor("check", cwd=workdir)
    assert rc == 1
    assert ('regex.yaml:3:26: rule "backref": bad regular expression /(sanction)s? \\1/: '
            "backreferences (\\1) are not supported by the linear-time regex engine (RE2); "
            "rewrite without them") in err, err
    assert ('regex.yaml:6:26: rule "lookahead": expr: bad regular expression /deal(?! off)/i: '
            "negative lookahead (?!...) is not supported") in err, err

    (workdir / "rules" / "regex.yaml").write_text(
        "rules:\n  - name: evil\n    any: ['/(a+)+$/']\n    channels: [audit-file]\n",
        encoding="utf-8")
    rc, out, err = await monitor("check", cwd=workdir)
    assert rc == 0, err
    rc, out, _ = await monitor("rules", "test", "--json", "--title", "a" * 26 + "!", cwd=workdir)
    assert rc == 1 and not any(r["matched"] for r in json.loads(out)["rules"])
    rc, out, _ = await monitor("rules", "test", "--json", "--title", "a" * 30_000, cwd=workdir)
    assert rc == 0 and [r["rule"] for r in json.loads(out)["rules"] if r["matched"]] == ["evil"]


async def _python(code: str, cwd: Path) -> tuple[str, str]:
    """``python -c code`` in ``cwd`` with this checkout first on the path: (stdout,
    stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, cwd=cwd, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    out, err = await proc.communicate()
    return out.decode(), err.decode()


def _one_feed_with_an_etag(tmp_path: Path, feed_server: FeedServer) -> None:
    """The example rules, their channels as files, and one feed that answers 304 to its
    ETag (parsed in a thread, so a subprocess's imports show the parser's)."""
    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    feed_server.serve("/a.rss", rss(BACKLOG), etag=True)
    (tmp_path / "config.yaml").write_text(f"""
feeds:
  - {{name: a, url: '{feed_server.url('/a.rss')}'}}
channels:
  slack-news: {{type: file, path: slack.jsonl}}
  email-oncall: {{type: file, path: email.jsonl}}
  audit-file: {{type: file, path: audit.jsonl}}
fetch: {{parse_in: thread}}
""", encoding="utf-8")


async def test_a_cycle_of_304s_imports_nothing_it_does_not_use(
    tmp_path: Path, feed_server: FeedServer
) -> None:
    """``monitor once`` when every feed answers 304: no parser, no dedup index, no
    metrics library, no notifier library are imported (they are a good part of its
    CPU); the cycle that had a body to parse did import the parser. (APScheduler is:
    these rules have a digest, whose cron expression is validated at load.)"""
    _one_feed_with_an_etag(tmp_path, feed_server)
    unused = ("feedparser", "rapidfuzz", "prometheus_client", "monitor.core.dedup.background",
              "monitor.core.parse", "slack_sdk", "aiosmtplib", "jinja2")

    def imported(err: str) -> set[str]:
        return {line.rsplit("|", 1)[-1].strip() for line in err.splitlines()
                if line.startswith("import time:")}

    rc, out, err = await monitor("-c", "config.yaml", "once", cwd=tmp_path,
                                 env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert rc == 0 and "entries=" in out, out + err
    assert "feedparser" in imported(err)  # (with parse_in: thread it parses here)
    rc, out, err = await monitor("-c", "config.yaml", "once", cwd=tmp_path,
                                 env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert rc == 0 and "not_modified" in out.replace("-", "_").lower(), out
    assert imported(err) and not imported(err) & set(unused), imported(err) & set(unused)


async def test_once_run_as_the_process_starts_without_collections_then_resumes_them(
        tmp_path: Path, feed_server: FeedServer) -> None:
    """``monitor once`` as the process: the collector is off while it starts, on again
    (young generation every ``ONE_SHOT_THRESHOLD[0]`` allocations, the start's objects
    frozen) for the cycle; in-process, the caller's collector is left as it was."""
    import gc

    from monitor.cli.main import main
    from monitor.shell.gcpolicy import ONE_SHOT_THRESHOLD

    _one_feed_with_an_etag(tmp_path, feed_server)
    code = ("import gc, sys\nfrom monitor.cli import main as m\nfrom monitor.shell import daemon\n"
            "seen = []\nopen_ = daemon.Runtime.__aenter__\n"
            "async def spy(self):\n    seen.append(gc.isenabled())\n"
            "    return await open_(self)\n"
            "daemon.Runtime.__aenter__ = spy\n"
            "sys.argv = ['monitor', '-c', 'config.yaml', 'once']\nrc = m.main()\n"
            "print(rc, seen, gc.isenabled(), list(gc.get_threshold()))\n")
    out, err = await _python(code, tmp_path)
    assert out.splitlines()[-1] == f"0 [False] True {list(ONE_SHOT_THRESHOLD)}", out + err
    before = gc.get_threshold(), gc.isenabled()
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)  # (in a thread: this test's loop is running here)
        assert await asyncio.to_thread(main, ["-c", "config.yaml", "once"]) == 0
    finally:
        os.chdir(cwd)
    assert (gc.get_threshold(), gc.isenabled()) == before


async def test_the_entry_imports_without_collections_and_other_commands_turn_them_on(
        workdir: Path) -> None:
    """``monitor`` / ``python -m monitor`` (``monitor.cli.entry``): nothing is collected
    while the modules are imported; a command other than ``once`` (here ``check``) runs
    with the collector on again, with CPython's thresholds."""
    async def python(code: str) -> str:
        out, err = await _python("import gc, sys\nseen = []\n" + code + "sys.argv = "
                                 "['monitor', 'check']\nrc = entry.run()\nprint(rc, seen)\n",
                                 workdir)
        return (out.splitlines() or [""])[-1] + err

    importing = await python(
        "class Spy:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'monitor.config':\n"
        "            seen.append(gc.isenabled())\n"
        "sys.meta_path.insert(0, Spy())\n"
        "from monitor.cli import entry\n")
    assert importing == "0 [False]", importing
    running = await python(
        "from monitor.cli import entry, main as m\n"
        "threshold = gc.get_threshold()\n"
        "check = m.cmd_check\n"
        "def spy(args):\n"
        "    seen.append((gc.isenabled(), gc.get_threshold() == threshold))\n"
        "    return check(args)\n"
        "m.cmd_check = spy\n")
    assert running == "0 [(True, True)]", running


async def test_a_command_run_as_the_process_freezes_what_it_built_before_exiting(
        workdir: Path) -> None:
    """``main()`` as the process's own entry freezes the collector's objects at its end
    (the interpreter's shutdown does not traverse them again); called with arguments,
    as a library or a test does, it leaves the caller's collector alone."""
    import gc

    from monitor.cli.main import main

    code = ("import gc, sys\nfrom monitor.cli.main import main\n"
            "sys.argv = ['monitor', 'check']\nrc = main()\n"
            "print(rc, gc.get_freeze_count() > 0)\n")
    out, err = await _python(code, workdir)
    assert out.split()[-2:] == ["0", "True"], err
    before = gc.get_freeze_count()
    cwd = os.getcwd()
    try:
        os.chdir(workdir)
        assert main(["check"]) == 0
    finally:
        os.chdir(cwd)
    assert gc.get_freeze_count() == before
