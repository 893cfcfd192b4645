"""Security, URL masking (issue 15, item 2): a secret in a sink URL is never shown nor stored.

What is secret is defined once, in pilotlogger/redact.py; these tests hold it to that
definition (unit and generative), then run the bundle with such URLs through every place
a URL is shown or stored: config, status, state.json's last_error, doctor, replay errors.
"""

import json
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ledger
from helpers import URL_SECRET as SECRET
from pilotlogger.redact import hidden_parts, is_secret_name, mask_parts, mask_text, mask_url


def held(attack: str, ok, what: str) -> bool:
    """One trial of an attack on URL masking, for the security table (docs/reliability.md)."""
    return ledger.attack("URLs", attack, bool(ok), what)


@pytest.mark.parametrize(
    "url, shown",
    [
        ("https://h/p?token=%s" % SECRET, "https://h/p?token=****"),
        ("https://h/p?access_token=%s&vo=lhcb" % SECRET, "https://h/p?access_token=****&vo=****"),
        ("https://%s@h" % SECRET, "https://****@h"),
        ("https://user:%s@h:8443/p" % SECRET, "https://****@h:8443/p"),
        ("https://h/p?%s" % SECRET, "https://h/p?****"),
        ("https://h/p#%s" % SECRET, "https://h/p#****"),
        ("https://h/api/token/%s/logs" % SECRET, "https://h/api/token/****/logs"),
        ("https://h/api/X-Api-Key/%s" % SECRET, "https://h/api/X-Api-Key/****"),
        ("https://h/p;jsessionid=%s/q" % SECRET, "https://h/p;jsessionid=****/q"),
        ("https://h/sig=%s/q" % SECRET, "https://h/sig=****/q"),
        ("user:%s@h/p" % SECRET, "****@h/p"),  # no scheme: still masked
        ("stomp+ssl://h1:61614,h2/queue/pilot-logs", "stomp+ssl://h1:61614,h2/queue/pilot-logs"),
        (
            "https://[::1]:8443/WorkloadManagement/TornadoPilotLogging",
            "https://[::1]:8443/WorkloadManagement/TornadoPilotLogging",
        ),
        ("stdout", "stdout"),
    ],
)
def test_what_is_secret_in_a_url(url, shown):
    assert mask_url(url) == shown
    assert mask_url(shown) == shown


def test_key_names():
    for name in (
        "token",
        "access_token",
        "TOKEN",
        "X-Api-Key",
        "password",
        "passwd",
        "secret",
        "sig",
        "signature",
        "client_secret",
        "sastoken",
        "%74oken",
    ):
        assert is_secret_name(name), name
    for name in ("queue", "WorkloadManagement", "monkey", "keys", "vo", "pilot"):
        assert not is_secret_name(name), name


def test_urls_inside_messages_are_masked_and_the_sentence_kept():
    line = "https://h:1/p?token=%s: HTTP 500; retried 'https://%s@h/x'." % (SECRET, SECRET)
    assert mask_text(line) == "https://h:1/p?token=****: HTTP 500; retried 'https://****@h/x'."
    assert mask_text("no url here") == "no url here"


_word = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~%", min_size=1, max_size=12)
_secret = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=10, max_size=24).map(lambda s: "Q" + s)


@st.composite
def _urls_with_a_secret(draw):
    """A URL with one secret placed where the definition says secrets are, and words elsewhere."""
    secret = draw(_secret)
    host = draw(st.sampled_from(["h.example.org", "h:8443", "[::1]:1", "a,b:2"]))
    path = "/".join(draw(st.lists(_word.filter(lambda w: "=" not in w and not is_secret_name(w)), max_size=3)))
    where = draw(st.sampled_from(["userinfo", "user", "query", "bare-query", "fragment", "path-key", "path-param"]))
    query = [draw(_word) + "=" + draw(_word) for _ in range(draw(st.integers(0, 2)))]
    netloc, fragment = host, None
    if where == "userinfo":
        netloc = draw(_word) + ":" + secret + "@" + host
    elif where == "user":
        netloc = secret + "@" + host
    elif where == "query":
        query.insert(draw(st.integers(0, len(query))), draw(_word) + "=" + secret)
    elif where == "bare-query":
        query.append(secret)
    elif where == "fragment":
        fragment = secret
    elif where == "path-key":
        path += "/" + draw(st.sampled_from(["token", "key", "access_token", "Signature", "api-key"])) + "/" + secret
    else:
        path += "/x;" + draw(_word.filter(lambda w: "=" not in w)) + "=" + secret
    url = draw(st.sampled_from(["https://", "stomp+ssl://", "http://", ""])) + netloc + "/" + path
    if query:
        url += "?" + "&".join(query)
    if fragment:
        url += "#" + fragment
    return url, secret, host


@settings(max_examples=ledger.trials(300, 3000), deadline=None)
@given(_urls_with_a_secret())
def test_a_secret_never_survives_masking(case):
    url, secret, host = case
    shown = mask_url(url)
    in_text = "://" not in url or secret not in mask_text("failed: %s (retrying)" % url)  # recognised by its scheme
    assert held(
        "generated URLs with a secret in userinfo, query, fragment or path (hypothesis)",
        secret not in shown and in_text and mask_url(shown) == shown and host in shown,
        "secret masked, alone or in a message; host kept; idempotent",
    ), shown


@settings(max_examples=ledger.trials(300, 3000), deadline=None)
@given(_urls_with_a_secret(), st.booleans())
def test_a_secret_a_peer_echoes_back_never_survives(case, decoded):
    """An error page quoting the request (raw or percent-decoded): what the HTTPS sink prints of it
    has the URL's hidden parts masked (hidden_parts + mask_parts, as HttpsSink._shown does)."""
    from urllib.parse import unquote

    url, secret, _ = case
    page = "<html>The requested URL %s was not found on this server</html>" % (unquote(url) if decoded else url)
    shown = mask_parts(page, hidden_parts(url))
    assert held(
        "generated URLs with a secret, echoed back by a peer, raw or percent-decoded (hypothesis)",
        secret not in shown and "was not found on this server" in shown,
        "secret masked; the peer's words kept",
    ), shown


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_masking_takes_any_string(text):
    assert isinstance(mask_url(text), str) and isinstance(mask_text(text), str)


# -- the bundle: every place a URL is shown or stored ---------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("query", ["token", "access_token", "key", "sig"])
def test_a_token_in_the_sink_url_is_shown_and_stored_nowhere(pilotlog, query):
    url = "https://127.0.0.1:%d/WorkloadManagement/TornadoPilotLogging?%s=%s" % (_closed_port(), query, SECRET)
    env = {
        "PILOTLOG_SINK": url,
        "PILOTLOG_DEADLINE": "1",
        "PILOTLOG_TIMEOUT": "1",
        "PILOTLOG_FALLBACK_SINK": url + "&x=1",
    }
    assert pilotlog("emit", "boot", env=env).returncode == 0
    outputs = []
    for args in (
        ["replay"],
        ["emit", "log", "--send"],
        ["status"],
        ["status", "--json"],
        ["config"],
        ["config", "--json"],
        ["doctor"],
        ["doctor", "--json"],
    ):
        p = pilotlog(*args, env=env)
        outputs.append(p.stdout + p.stderr)
    joined = "\n".join(outputs)
    state = (pilotlog.spool / "state.json").read_text()
    assert held(
        "token in the sink and fallback URLs (token, access_token, key, sig)",
        SECRET not in joined
        and "%s=****" % query in joined
        and "127.0.0.1" in joined
        and SECRET not in state
        and "%s=****" % query in json.loads(state)["last_error"],
        "masked in config, status, doctor, replay and emit errors, state.json",
    ), joined


@pytest.mark.parametrize(
    "sink",
    [
        "https://%s@127.0.0.1:1/p" % SECRET,
        "https://u:%s@127.0.0.1:1/p" % SECRET,
        "stomp+ssl://u:%s@127.0.0.1:1/queue/q" % SECRET,
        "ftp://%s@h/p" % SECRET,
        "u:%s@h/p" % SECRET,
    ],
)
def test_credentials_in_the_url_are_refused_without_being_echoed(pilotlog, sink):
    env = {"PILOTLOG_SINK": sink}
    pilotlog("emit", "boot", env=env)
    outputs = [pilotlog(*args, env=env) for args in (["replay"], ["status"], ["config"], ["doctor"])]
    assert held(
        "credentials in the URL's userinfo (https, stomp+ssl, unknown scheme, none)",
        outputs[0].returncode == 2
        and "****@" in outputs[0].stderr
        and not [p for p in outputs if SECRET in p.stdout + p.stderr],
        "refused as a usage error, never echoed",
    ), [p.stderr for p in outputs]


def test_status_masks_a_token_an_older_version_stored(pilotlog):
    assert pilotlog("emit", "boot").returncode == 0
    state = pilotlog.spool / "state.json"
    document = json.loads(state.read_text()) if state.exists() else {}
    document["last_error"] = "https://h/p?token=%s: HTTP 500" % SECRET
    state.write_text(json.dumps(document))
    p = pilotlog("status", "--json")
    assert held(
        "token in a state.json written by an older version",
        p.returncode == 0
        and SECRET not in p.stdout
        and json.loads(p.stdout)["last_error"] == "https://h/p?token=****: HTTP 500",
        "masked by status",
    ), p.stdout
    state.write_text(json.dumps(dict(document, last_error="gone")))  # the spool is scanned for secrets at the end


def test_a_token_in_a_dirac_pilot_json_url_is_masked(pilotlog, tmp_path):
    pilot_json = tmp_path / "pilot.json"
    pilot_json.write_text(
        json.dumps(
            {
                "DefaultSetup": "S",
                "Defaults": {
                    "Pilot": {
                        "RemoteLogging": "True",
                        "RemoteLoggerURL": "https://127.0.0.1:%d/p?token=%s" % (_closed_port(), SECRET),
                    }
                },
            }
        )
    )
    env = {"PILOTLOG_CONFIG": str(pilot_json), "PILOTLOG_DEADLINE": "1"}
    outputs = [pilotlog(*args, env=env) for args in (["emit", "boot", "--send"], ["config"], ["status"], ["doctor"])]
    assert held(
        "token in a DIRAC pilot.json RemoteLoggerURL",
        not [p for p in outputs if SECRET in p.stdout + p.stderr]
        and "token=****" in outputs[1].stdout
        and SECRET not in (pilotlog.spool / "state.json").read_text(),
        "masked in every output and in state.json",
    ), [p.stdout + p.stderr for p in outputs]
