"""DIRAC's pilot-logging form, read and accepted as DIRAC 9.1.22 takes it: one home for both receivers.

``pilotlog serve`` (which stores what it accepts) and ``pilotlog relay`` (which spools it
for forwarding) read a request with :func:`read_form` and accept it by the rules below;
``tests/test_dirac.py`` runs them against DIRAC's own ``TornadoPilotLoggingHandler``.

The request (``POST``, urlencoded, as DIRACGrid/Pilot's ``pilotTools.sendMessage`` sends it):
    method            ``sendMessage`` | ``finaliseLogs``
    args              JSON of a list of exactly three strings: the JSON of the payload, the
                      pilot id, the VO (``""`` when none); two fail in DIRAC with a TypeError
    extraCredentials  optional, JSON (``"hosts"`` with the quotes; a bare word is a 401 there)
A field given twice counts with its last value, as Tornado's ``get_argument`` takes it;
percent-escapes must decode as UTF-8 (Tornado refuses the request otherwise).

Acceptance (each rule raises :class:`~pilotlogger.httpd.Reject` with the words to answer):
* pilot ids: a lowercase UUID or a stamp ``[0-9a-z]{32}`` (``FileCacheLoggingPlugin``;
  the rule itself is :func:`pilotlogger.events.dirac_accepts`);
* VO names: ``[A-Za-z0-9-]+(\\.[A-Za-z0-9-]+)*`` (the handler's ``__verifyVOPattern``),
  checked where the receiver knows the VO DIRAC would choose;
* the payload: for ``sendMessage`` the JSON of a string or a list of strings, stored as
  :func:`message_bytes` says; for ``finaliseLogs`` the JSON of an object (``{"retCode": …}``).
"""

import json
import re

from .events import dirac_accepts
from .httpd import Reject

VO_RE = re.compile(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\Z")
METHODS = ("sendMessage", "finaliseLogs")
#: DIRAC's methods that read logs back from its service: nothing a receiver here keeps.
READING_METHODS = ("getMetadata", "getLogs")
FORM_TYPE = "application/x-www-form-urlencoded"


class Form:
    """One request of DIRAC's form: ``method``; ``args`` as it came (the string forwarded
    unchanged); its three parts ``payload`` (still JSON), ``pilot``, ``vo``; and
    ``extra_credentials`` (the field as sent, or None)."""

    __slots__ = ("method", "args", "payload", "pilot", "vo", "extra_credentials")

    def __init__(self, method: str, args: str, payload: str, pilot: str, vo: str, extra_credentials=None):
        self.method, self.args, self.payload, self.pilot, self.vo = method, args, payload, pilot, vo
        self.extra_credentials = extra_credentials

    def content(self):
        """The payload decoded and checked: a string or a list of strings (``sendMessage``),
        an object (``finaliseLogs``)."""
        if self.method == "sendMessage":
            content = decode_json(self.payload, "message")
            if isinstance(content, list) and all(isinstance(x, str) for x in content) or isinstance(content, str):
                return content
            raise Reject(400, "message must be JSON of a string or a list of lines")
        info = decode_json(self.payload, "payload")
        if not isinstance(info, dict):
            raise Reject(400, 'finaliseLogs payload must be JSON of an object such as {"retCode": 0}')
        return info


def decode_json(text: str, what: str):
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than the parser goes
        reason = exc if isinstance(exc, ValueError) else "nested too deeply"
        raise Reject(400, "%s is not valid JSON (%s)" % (what, reason)) from None


def read_form(body: bytes) -> Form:
    """A request body → :class:`Form`; Reject (400, or 401 for extraCredentials as DIRAC) when it is not one."""
    from urllib.parse import parse_qs

    try:
        form = parse_qs(body.decode("ascii"), strict_parsing=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise Reject(400, "body is not a urlencoded form (of UTF-8 text)") from None
    extra = form["extraCredentials"][-1] if "extraCredentials" in form else None
    if extra is not None:  # DIRAC JSON-decodes it; a bare word is a 401 there
        try:
            json.loads(extra)
        except (ValueError, RecursionError):
            raise Reject(401, 'extraCredentials must be JSON, e.g. "hosts" with the quotes') from None
    method = form.get("method", [""])[-1]
    if method not in METHODS:
        if method in READING_METHODS:
            raise Reject(400, "%s reads logs from DIRAC's service; here only %s are taken" % (method, _methods()))
        raise Reject(400, "unknown method %r (%s)" % (method[:40], _methods()))
    text = form.get("args", [""])[-1]
    args = decode_json(text, "args")
    if not isinstance(args, list) or len(args) != 3 or not all(isinstance(a, str) for a in args):
        raise Reject(400, 'args must be a JSON list of three strings [payload, pilot id, vo or ""]')
    return Form(method, text, args[0], args[1], args[2], extra)


def _methods() -> str:
    return " and ".join(METHODS)


def check_ids(pilot: str, vo=None) -> None:
    """DIRAC's pilot-id rule, and its VO rule when ``vo`` is given (None: DIRAC will choose it)."""
    if not dirac_accepts(pilot):
        raise Reject(400, "Pilot UUID is invalid: %r is neither a UUID nor a stamp of 32 [0-9a-z]" % pilot[:80])
    if vo is not None and (not VO_RE.match(vo) or len(vo) > 64):
        raise Reject(400, "VO name %r is invalid" % vo[:80])


def encode_args(payload, pilot: str, vo) -> str:
    """``args`` as the Pilot encodes it: JSON of [JSON of payload, pilot, vo or ""] (DIRAC
    JSON-decodes ``args`` into its method's three arguments, its plugin the payload again)."""
    return json.dumps([json.dumps(payload), pilot, vo or ""])


def message_bytes(content) -> bytes:
    """What FileCacheLoggingPlugin writes for a decoded message: each line of a list + "\n",
    a string as it is (line endings, U+2028, a missing final newline all kept).  A lone
    surrogate cannot be stored (400)."""
    if isinstance(content, list) and all(isinstance(x, str) for x in content):
        text = "".join(line + "\n" for line in content)
    elif isinstance(content, str):
        text = content
    else:
        raise Reject(400, "message must be JSON of a string or a list of lines")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise Reject(400, "a line holds %r, which is not valid Unicode" % exc.object[exc.start : exc.end]) from None
