"""What is secret in a URL, and the one function that hides it before a URL is shown or stored.

A sink URL can carry a credential in several places, and a receiver may name its token
anything, so masking goes by *where* a value sits, not only by its name:

* userinfo, all of it: ``https://user:pw@h`` and ``https://TOKEN@h`` → ``https://****@h``
  (a lone "user name" is often the token itself);
* every query value: ``?token=S&vo=lhcb`` → ``?token=****&vo=****`` (a bare ``?S`` → ``?****``);
* the fragment: ``#S`` → ``#****``;
* in the path, the value of a ``name=value`` segment or ``;name=value`` parameter, and the
  segment after one named like a key (``/token/S``, ``/api-key/S``: see :func:`is_secret_name`).

Scheme, host, port and the rest of the path stay readable: they are what an operator needs
to find the service.  A secret written as a bare path segment with no key name before it
cannot be told from a path and is not masked: put it in a query parameter.

A leaf module (it imports nothing of ours), cheap to import: its patterns are compiled on
first use, so that a one-shot ``emit``, which masks nothing, never imports :mod:`re` (4 ms of
a 7 ms interpreter start on Python 3.13).
"""

MASK = "****"

#: Names of values that are secret wherever they appear (compared lower-case, ``-`` as ``_``).
SECRET_NAMES = frozenset(
    (
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "auth",
        "authorization",
        "key",
        "apikey",
        "api_key",
        "password",
        "passwd",
        "pass",
        "passcode",
        "pwd",
        "secret",
        "client_secret",
        "sig",
        "signature",
        "credential",
        "credentials",
        "session",
        "sessionid",
        "jsessionid",
    )
)
_SECRET_ENDINGS = ("token", "secret", "password", "passwd", "passcode", "apikey", "_key", "signature")

_URL_PARTS = r"(?s)([^/?#]*)([^?#]*)(?:\?([^#]*))?(?:#(.*))?\Z"
_URL_IN_TEXT = r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]*[^\s'\"<>:;,.)]"  # not the sentence's ":"
_DELIMITERS = r"([/?&;=#@])"
_compiled: dict = {}


def _regex(pattern: str):
    """``pattern`` compiled, once per process (re is imported only when something is masked)."""
    regex = _compiled.get(pattern)
    if regex is None:
        import re

        regex = _compiled[pattern] = re.compile(pattern)
    return regex


def is_secret_name(name: str) -> bool:
    """True for a key name such as token, access_token, X-Api-Key, password, sig, signature."""
    from urllib.parse import unquote

    name = unquote(name).strip().lower().replace("-", "_")
    return name in SECRET_NAMES or name.endswith(_SECRET_ENDINGS)


def mask_url(url: str) -> str:
    """``url`` with every secret part (see the module's docstring) replaced by ``****``.

    Idempotent, total (any string goes in, nothing raises) and the identity on a URL with
    nothing secret in it.  A string without ``scheme://`` is read as ``host/path?query``,
    so a mistyped sink (``user:pw@host/p``) is masked too.
    """
    if not isinstance(url, str):
        return url
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    parts = _regex(_URL_PARTS).match(rest)  # it matches any string; the fallback is for the type checker
    netloc, path, query, fragment = parts.groups() if parts else (rest, "", None, None)
    _, at, hostport = netloc.rpartition("@")
    masked = scheme + sep + (MASK + "@" if at else "") + hostport + _mask_path(path)
    if query is not None:
        masked += "?" + "&".join(_mask_pair(pair) for pair in query.split("&"))
    if fragment is not None:
        masked += "#" + (MASK if fragment else "")
    return masked


def hidden_parts(url: str) -> list:
    """The pieces of ``url`` that :func:`mask_url` hides (query values, key-like path segments,
    user info), so that they can be masked where a peer echoes them back — an error page
    quoting the request path.  Longest first; pieces under 3 characters are left out."""
    if not isinstance(url, str):
        return []
    masked = mask_url(url)
    if masked == url:
        return []
    ours, theirs = _regex(_DELIMITERS).split(url), _regex(_DELIMITERS).split(masked)
    if len(ours) == len(theirs):
        found = {a for a, b in zip(ours, theirs) if a != b}
    else:  # the masking took delimiters with it (a fragment, user info): hide the whole of each part
        scheme, sep, rest = url.partition("://")
        found = {rest if sep else url}
    return sorted((p for p in found if len(p) >= 3), key=len, reverse=True)


def mask_parts(text: str, parts) -> str:
    """``text`` with each of ``parts`` (see hidden_parts), raw or percent-decoded, replaced by ``****``."""
    if not parts:
        return text
    from urllib.parse import unquote

    for part in parts:
        for form in {part, unquote(part)}:
            if len(form) >= 3:
                text = text.replace(form, MASK)
    return text


def mask_text(text: str) -> str:
    """Every ``scheme://…`` in a free text (an error message) masked with :func:`mask_url`."""
    if not isinstance(text, str) or "://" not in text:
        return text
    return _regex(_URL_IN_TEXT).sub(lambda m: mask_url(m.group(0)), text)


def _mask_pair(pair: str) -> str:
    name, eq, value = pair.partition("=")
    if eq:
        return name + "=" + (MASK if value else "")
    return MASK if pair else ""


def _mask_path(path: str) -> str:
    segments, after_key = [], False
    for segment in path.split("/"):
        name, *params = segment.split(";")
        if after_key and name:
            name = MASK
        elif "=" in name:
            name = _mask_pair(name)
        after_key = "=" not in name and name != MASK and is_secret_name(name)
        segments.append(";".join([name] + [_mask_pair(p) for p in params]))
    return "/".join(segments)
