"""Real grid proxies (RFC 3820) for the tests, made with ``openssl`` at run time beside the test PKI.

A proxy is a certificate with the critical proxyCertInfo extension, signed by the user's own
certificate (or by another proxy), whose subject is its issuer's plus one CN.  A pilot's
``X509_USER_PROXY`` file holds the proxy, its key and its issuers up to (not including) the CA,
as ``voms-proxy-init`` writes it: each ``x509up-<name>`` file here is one.

    first        /CN=pilot-client/CN=1001                inheritAll, signed by the user certificate
    second       /CN=pilot-client/CN=1001/CN=proxy       a proxy of ``first`` (two levels)
    limited      /CN=pilot-client/CN=limited proxy       Globus's limited-proxy policy (DIRAC's too)
    independent  /CN=pilot-client/CN=1004                id-ppl-independent: not its issuer
    expired      /CN=pilot-client/CN=1005                valid for no time at all
    foreign      /CN=pilot-client/CN=1006                signed by another user (other-user)
    forged       /CN=pilot-client/CN=1007                names pilot-client as its issuer, signed
                                                         with other-user's key
    other-ca     /CN=pilot-client/CN=1008                a proxy of a certificate from a CA the
                                                         server does not trust
    impostor     /O=pilotlogger tests/OU=robots/CN=pilot-client
                                                         a valid proxy of a user certificate with
                                                         no CN, naming itself pilot-client
"""

import os

from brokers import CLIENT_CN, run

OTHER_CN = "other-user"
ROBOT_SUBJECT = "/O=pilotlogger tests/OU=robots"  # a user certificate with no CN at all
INHERIT_ALL, INDEPENDENT, LIMITED = "id-ppl-inheritAll", "id-ppl-independent", "1.3.6.1.4.1.3536.1.1.1.9"
#: The proxies a server accepts, each owned by the client certificate (CN pilot-client).
GOOD = ("first", "second", "limited")
#: The proxies whose chain OpenSSL refuses in the handshake, and what it says.
BAD_CHAIN = {
    "expired": "certificate has expired",
    "foreign": "proxy subject name violation",
    "forged": "unable to get local issuer certificate",
    "other-ca": "unable to get local issuer certificate",
}


class Proxies:
    """The proxies above, made in ``pki``'s directory (so the session's secrets scan sees their keys)."""

    def __init__(self, pki):
        self.pki = pki
        self.chains = {"client": ["client"], "rogue-client": ["rogue-client"]}  # issuers in an x509up file
        pki._leaf("other-user", OTHER_CN, "ca", ext="extendedKeyUsage=clientAuth")
        self.chains["other-user"] = ["other-user"]
        self._user("robot", ROBOT_SUBJECT)
        cn = "/CN=" + CLIENT_CN
        self._proxy("first", "client", cn + "/CN=1001", INHERIT_ALL, 1001)
        self._proxy("second", "proxy-first", cn + "/CN=1001/CN=proxy", INHERIT_ALL, 2002)
        self._proxy("limited", "client", cn + "/CN=limited proxy", LIMITED, 1003)
        self._proxy("independent", "client", cn + "/CN=1004", INDEPENDENT, 1004)
        self._proxy("expired", "client", cn + "/CN=1005", INHERIT_ALL, 1005, days=0)
        self._proxy("foreign", "other-user", cn + "/CN=1006", INHERIT_ALL, 1006)
        # openssl signs only with a matching key: a certificate named like the client but holding
        # other-user's key signs the forged proxy, whose file then carries the real client certificate.
        run(*"openssl req -x509 -new -days 1 -subj".split(), cn, "-key", self._p("other-user.key"), "-out",
            self._p("forger.pem"))  # fmt: skip
        self.chains["forger"] = ["client"]
        self._proxy("forged", "forger", cn + "/CN=1007", INHERIT_ALL, 1007, key="other-user")
        self._proxy("other-ca", "rogue-client", cn + "/CN=1008", INHERIT_ALL, 1008)
        self._proxy("impostor", "robot", ROBOT_SUBJECT + cn, INHERIT_ALL, 1009)

    def x509up(self, name: str) -> str:
        """The ``X509_USER_PROXY`` file of proxy ``name``: proxy, key, then its issuers (no CA)."""
        return self._p("x509up-" + name)

    def _p(self, name: str) -> str:
        return self.pki.path(name)

    def _user(self, name, subject):
        """A user certificate from the test CA with any subject (the PKI's own makes CN-only ones)."""
        p = self._p
        with open(p(name + ".ext"), "w") as f:
            f.write("extendedKeyUsage=clientAuth\n")
        run(*"openssl req -newkey rsa:2048 -nodes -subj".split(), subject, "-keyout", p(name + ".key"), "-out",
            p(name + ".csr"))  # fmt: skip
        run(*"openssl x509 -req -days 3 -sha256 -CAcreateserial -in".split(), p(name + ".csr"), "-CA", p("ca.pem"),
            "-CAkey", p("ca.key"), "-extfile", p(name + ".ext"), "-out", p(name + ".pem"))  # fmt: skip
        self.chains[name] = [name]

    def _proxy(self, name, issuer, subject, language, serial, days=1, key=None):
        """``proxy-<name>.pem``/``.key`` issued by ``<issuer>.pem`` (signed with ``<key or issuer>.key``),
        and its x509up file."""
        p, base = self._p, "proxy-" + name
        with open(p(base + ".ext"), "w") as f:  # the form of openssl's proxy_certificates documentation
            f.write(
                "proxyCertInfo=critical,language:%s\nkeyUsage=critical,digitalSignature,keyEncipherment\n" % language
            )
        run(*"openssl req -newkey rsa:2048 -nodes -subj".split(), subject, "-keyout", p(base + ".key"), "-out",
            p(base + ".csr"))  # fmt: skip
        run(*"openssl x509 -req -sha256 -in".split(), p(base + ".csr"), "-CA", p(issuer + ".pem"), "-CAkey",
            p((key or issuer) + ".key"), "-set_serial", str(serial), "-days", str(days), "-extfile", p(base + ".ext"),
            "-out", p(base + ".pem"))  # fmt: skip
        self.chains[base] = [base] + self.chains[issuer]
        with open(self.x509up(name), "w") as out:
            out.write(open(p(base + ".pem")).read() + open(p(base + ".key")).read())
            for cert in self.chains[issuer]:
                out.write(open(p(cert + ".pem")).read())
        os.chmod(self.x509up(name), 0o600)
