"""Credentials in URLs: what to hide, and the form of a URL that may be shown.

Pure string work (no I/O, no logging), shared by the config, the log formatter and every
command that prints a URL or an error that may quote one.

* ``display_url(url, secrets)``  the form to show: the user info is ``***`` (a store URL
  keeps its user name: ``postgresql://monitor:***@db/news``), and so is the value of
  every query parameter that is named like a credential (``api_key``, ``token``,
  ``sig``…) or holds a known secret; any other occurrence of a known secret is ``***``
  too. Scheme, host, port and path stay readable. The real URL is what is fetched.
* ``redact_text(text, secrets)``  the same done to every URL found in free text (an
  exception message, a log line), and every known secret replaced.
* ``url_secrets(url)``  the credential values a URL carries by its structure: the
  password of its user info (or a lone user name: a token), credential-named query
  values.
* ``template_secrets(template, values)``  the values that ``${VAR}`` put in the user
  info or the query of a URL written in the config (``?q=${Q}`` makes Q's value a
  secret, whatever the parameter is called).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus, unquote, unquote_plus

MASK = "***"

# names of query parameters whose values are credentials, compared without case and
# without ``_``/``-``/``.`` (``api_key``, ``API-Key`` and ``apikey`` alike)
CREDENTIAL_PARAMS = frozenset({
    "apikey", "key", "token", "secret", "password", "passwd", "pwd", "pass", "sig",
    "signature", "accesstoken", "auth", "authorization", "clientsecret", "accesskey",
    "sessionid", "session", "privatetoken", "authtoken", "apitoken", "xapikey",
})
_CREDENTIAL_SUFFIXES = ("token", "secret", "password", "apikey", "signature", "accesskey")

_URL = re.compile(
    r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<authority>[^/?#]*)(?P<path>[^?#]*)"
    r"(?:\?(?P<query>[^#]*))?(?:#(?P<fragment>.*))?$",
    re.DOTALL,
)
# a URL inside free text: up to a space, a quote or a bracket
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]*[^\s'\"<>`.,;:)\]]")
MIN_SECRET = 4  # shorter values are not hunted in free text (they would mask ordinary words)


def credential_name(name: str) -> bool:
    """Is a query parameter of this name a credential (``api_key``, ``accessToken``)?"""
    n = re.sub(r"[^a-z0-9]", "", unquote_plus(name).lower())
    return n in CREDENTIAL_PARAMS or (len(n) > 5 and n.endswith(_CREDENTIAL_SUFFIXES))


def looks_like_url(text: str) -> bool:
    return _URL.match(text) is not None


def variants(secret: str) -> set[str]:
    """The forms a secret may take once in a URL or a JSON line: as is, percent-encoded
    (as a URL library re-quotes it), decoded, and JSON-escaped."""
    out = {secret, quote(secret, safe=""), quote(secret), quote_plus(secret),
           unquote(secret), json.dumps(secret, ensure_ascii=False)[1:-1]}
    return {v for v in out if v}


@functools.lru_cache(maxsize=64)
def _hunted(secrets: frozenset[str]) -> tuple[str, ...]:
    # the longest first: a secret that contains another is masked whole
    return tuple(sorted({v for s in secrets if len(s) >= MIN_SECRET for v in variants(s)
                         if len(v) >= MIN_SECRET}, key=len, reverse=True))


def _replace_secrets(text: str, secrets: frozenset[str]) -> str:
    for s in _hunted(secrets):
        if s in text:
            text = text.replace(s, MASK)
    return text


def _is_secret(value: str, secrets: frozenset[str]) -> bool:
    if not value:
        return False
    plain = unquote_plus(value)
    return value in secrets or plain in secrets or any(
        len(s) >= MIN_SECRET and (s in value or s in plain) for s in secrets)


def display_url(url: str, secrets: Iterable[str] = (), *, keep_user: bool = False) -> str:
    """``url`` as it may be shown (see the module docstring). ``keep_user``: show the
    user name before ``:***`` (a database URL), unless it is a secret itself."""
    known = frozenset(secrets)
    m = _URL.match(url)
    if m is None:
        return _replace_secrets(url, known)
    authority = m.group("authority")
    userinfo, at, host = authority.rpartition("@")
    if at:
        user, colon, password = userinfo.partition(":")
        # (``user:***`` is already the shown form of a database URL)
        keep_user = keep_user or password == MASK
        if keep_user and colon and not _is_secret(user, known):
            authority = f"{user}:{MASK}@{host}"
        elif keep_user and not colon and not _is_secret(user, known):
            authority = f"{user}@{host}"
        else:
            authority = f"{MASK}@{host}"
    out = m.group("scheme") + authority + _replace_secrets(m.group("path"), known)
    query = m.group("query")
    if query is not None:
        params = []
        for param in query.split("&"):
            name, eq, value = param.partition("=")
            if eq and value and (credential_name(name) or _is_secret(value, known)):
                value = MASK
            elif not eq and _is_secret(name, known):
                name = MASK  # ``?${TOKEN}``
            params.append(f"{name}{eq}{value}")
        out += "?" + "&".join(params)
    fragment = m.group("fragment")
    if fragment is not None:
        out += "#" + _replace_secrets(fragment, known)
    return _replace_secrets(out, known) if known else out


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Every known secret in ``text`` as ``***``, and every URL in its shown form."""
    known = frozenset(secrets)
    if known:  # first: a secret may be a whole URL (a webhook)
        text = _replace_secrets(text, known)
    if "://" in text:
        text = _URL_IN_TEXT.sub(lambda m: display_url(m.group(0), known), text)
    return text


def without_userinfo(url: str) -> str:
    """``url`` without its user info: a base for the feed's relative links, so that
    the credentials of a feed never end up in a story's link (and in an alert)."""
    m = _URL.match(url)
    if m is None or "@" not in m.group("authority"):
        return url
    host = m.group("authority").rpartition("@")[2]
    return m.group("scheme") + host + url[m.end("authority"):]


def url_secrets(url: str, *, lone_user: bool = True) -> list[str]:
    """The credentials ``url`` carries by its structure (see the module docstring).
    ``lone_user=False``: a user name without a password is a name, not a token (a
    database URL: ``postgresql://monitor@db/news``)."""
    m = _URL.match(url)
    if m is None:
        return []
    out: list[str] = []
    userinfo, at, _ = m.group("authority").rpartition("@")
    if at and userinfo:
        user, colon, password = userinfo.partition(":")
        if colon:
            out.append(password)
        elif lone_user:
            out.append(user)  # ``https://TOKEN@host/``: a lone user name is a token
    for param in (m.group("query") or "").split("&"):
        name, eq, value = param.partition("=")
        if eq and value and credential_name(name):
            out.append(value)
    return [v for s in out for v in {s, unquote(s)} if v]


def template_secrets(template: str, substituted: Iterable[tuple[int, int, str]]) -> list[str]:
    """The values of the ``${VAR}`` (``substituted``: their start, end and value in
    ``template``) that fill the user info or the query (or fragment) of a URL."""
    m = _URL.match(template)
    if m is None:
        return []
    spans: list[tuple[int, int]] = []
    if "@" in m.group("authority"):
        userinfo = m.group("authority").rpartition("@")[0]
        spans.append((m.start("authority"), m.start("authority") + len(userinfo)))
    end_path = m.end("path")
    if end_path < len(template):
        spans.append((end_path, len(template)))  # ?query#fragment
    return [value for start, end, value in substituted
            if value and any(start < e and s < end for s, e in spans)]
