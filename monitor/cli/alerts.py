"""``monitor alerts``: what the outbox did, per delivery, with the peer's answer.

It only reads the store (the config is loaded without the channels' secrets). One row per
delivery (an alert for one channel): when, rule, channel, state, attempts, headline, link,
and what the peer said: the message's reference (Slack ``ts``, email Message-ID) when it
was accepted, the last error otherwise.

States as shown:

* ``sent``       the peer accepted it, on its own;
* ``rolled up``  sent inside one message with other alerts (a roll-up or a "while monitor
  could not deliver" summary): several listed deliveries of the channel share its ref;
* ``digest``     sent in its rule's digest;
* ``grouped``    sent in its group's message (a rule's ``group_by``);
* ``held``       pending and not due yet (``next_attempt`` in the future): a digest
  waiting for its time, a group waiting for its slot, an alert held by the channel's
  quiet hours, a retry waiting out its backoff (attempts > 0, with the error), a
  delivery being sent right now (claimed);
* ``pending``    due: the next dispatcher round sends it;
* ``failed``     given up (a permanent refusal, or retries given up): ``monitor outbox
  retry`` sends it again once the cause is fixed.

``--status pending`` lists the held ones too; ``--status held`` only those.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from monitor.config import Config
from monitor.core.units import parse_duration
from monitor.errors import MonitorError
from monitor.store.base import LOG_STATES, DeliveryRecord

DEFAULT_LIMIT = 500


def add_parser(sub: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "alerts", help="what was sent, held, rolled up or failed, with the peer's answer",
        description="Lists the deliveries (an alert for one channel) of the last --since, "
        "oldest first: time, state, channel, rule, attempts, headline, link and the peer's "
        "answer (the message reference when accepted, the last error otherwise). States: "
        "sent, rolled up (in one message with others), grouped, digest, held (pending, not "
        "due yet: a digest's time, a group's slot, quiet hours, a retry's backoff), pending "
        "(due), failed (given up; see "
        "`monitor outbox retry`). Reads the store only: no channel secrets are needed.")
    add_common(p)
    p.add_argument("--since", default="24h", help="how far back (default 24h)")
    p.add_argument("--rule", help="only this rule's")
    p.add_argument("--channel", help="only this channel's")
    p.add_argument("--status", choices=LOG_STATES,
                   help="only deliveries in this state (pending includes held)")
    p.add_argument("--limit", type=int, default=DEFAULT_LIMIT,
                   help=f"at most this many, the newest (default {DEFAULT_LIMIT})")


def shown_states(records: Sequence[DeliveryRecord], now: datetime) -> list[str]:
    """The state shown for each record (see the module docstring)."""
    shared = Counter((r.status.channel, r.status.ref) for r in records
                     if r.status.state == "sent" and r.status.ref)
    out: list[str] = []
    for r in records:
        st = r.status
        if st.state == "sent":
            if r.alert is not None and r.alert.match.digest:
                out.append("digest")
            elif r.alert is not None and r.alert.match.group is not None:
                out.append("grouped")
            elif st.ref and shared[(st.channel, st.ref)] > 1:
                out.append("rolled up")
            else:
                out.append("sent")
        elif st.state == "pending":
            held = st.next_attempt is not None and st.next_attempt > now
            out.append("held" if held else "pending")
        else:
            out.append(st.state)
    return out


async def cmd_alerts(config: Config, args: argparse.Namespace) -> int:
    from monitor.log import scrub
    from monitor.store.open import open_store

    if args.limit < 1:
        raise MonitorError(f"--limit must be at least 1, got {args.limit}")
    now = datetime.now(UTC)
    try:
        since = now - timedelta(seconds=parse_duration(args.since))
    except ValueError as e:
        raise MonitorError(f"--since {args.since!r}: {e}") from e
    async with open_store(config.store_url) as store:
        records = await store.delivery_log(since=since, now=now, rule=args.rule,
                                           channel=args.channel, state=args.status,
                                           limit=args.limit)
    records = records[::-1]  # oldest first: read as a log
    states = shown_states(records, now)

    def answer(r: DeliveryRecord) -> str | None:
        if r.status.state == "sent":
            return r.status.ref
        return config.redact(scrub(r.status.last_error)) if r.status.last_error else None

    rows: list[dict[str, Any]] = []
    for r, state in zip(records, states, strict=True):
        st = r.status
        rows.append({
            "id": st.id,
            "time": st.sent_at or st.created,
            "created": st.created,
            "sent_at": st.sent_at,
            "next_attempt": st.next_attempt if st.state == "pending" else None,
            "rule": r.rule,
            "channel": st.channel,
            "state": state,
            "attempts": st.attempts,
            "headline": r.alert.story.title if r.alert else None,
            "link": r.alert.story.link if r.alert else None,
            "update": r.alert.update if r.alert else False,
            "ref": st.ref,
            "error": (config.redact(scrub(st.last_error)) if st.last_error else None),
            "answer": answer(r),
            "key": st.key,
        })
    counts = Counter(states)
    if args.json:
        from monitor.cli.main import _print_json

        _print_json({"since": since, "now": now, "counts": dict(counts), "deliveries": rows})
        return 0
    if not rows:
        print(f"no deliveries since {since:%Y-%m-%d %H:%M} UTC"
              + _filters(args))
        return 0
    for row in rows:
        when = row["time"]
        headline = (row["headline"] or "(payload unreadable)")
        if row["update"]:
            headline = f"[update] {headline}"
        print(f"{when:%m-%d %H:%M:%S}  {row['state']:<9}  {row['channel']:<14} "
              f"{row['rule']:<24} ×{row['attempts']:<2} {headline[:100]}")
        tail = [row["link"] or "-"]
        if row["state"] == "held" and row["next_attempt"] is not None:
            tail.append(f"due {row['next_attempt']:%m-%d %H:%M:%S}")
        if row["answer"]:
            tail.append(f"peer: {row['answer'][:200]}")
        print("    " + "  ·  ".join(tail))
    order = ("sent", "rolled up", "grouped", "digest", "held", "pending", "failed")
    parts = [f"{counts[s]} {s}" for s in order if counts[s]]
    print(f"{len(rows)} deliver{'y' if len(rows) == 1 else 'ies'} since "
          f"{since:%Y-%m-%d %H:%M} UTC{_filters(args)}: {', '.join(parts)}"
          + (f" (the newest {args.limit}; --limit for more)" if len(rows) >= args.limit
             else ""))
    if counts["failed"]:
        print("(fix the cause, then `monitor outbox retry` sends the failed ones again)")
    return 0


def _filters(args: argparse.Namespace) -> str:
    f = [f"{k} {v}" for k, v in (("rule", args.rule), ("channel", args.channel),
                                 ("status", args.status)) if v]
    return f" ({', '.join(f)})" if f else ""
