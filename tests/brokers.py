"""Throwaway brokers for the tests: a test PKI, RabbitMQ and ActiveMQ on loopback, STOMP over TLS.

Each broker is a private process with its own data directory and ports, started and
stopped by pid (never the system service).  Facts behind the choices: ../shared/brokers.md.

Listeners (all on 127.0.0.1):
    plain      STOMP over TCP, for the stomp.py consumer that checks what arrived
    tls        STOMP over TLS, server certificate for DNS:localhost only (so 127.0.0.1
               is a real host-name mismatch), client certificate requested, not required
    tls_cert   (ActiveMQ) STOMP over TLS requiring a client certificate
Users: ``pilot`` / PASSWORD; on RabbitMQ also the client certificate's CN for
certificate login (``stomp.ssl_cert_login``); ActiveMQ lets certificate holders in
anonymously on its ``tls_cert`` listener.
"""

import base64
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time

USER, PASSWORD = "pilot", "s3cret-Passc0de"
#: RabbitMQ's CLI itself: the /usr/sbin wrapper would switch to the rabbitmq user (another HOME, another cookie).
RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
CLIENT_CN = "pilot-client"
HOST_CN = "pilot-host.example.org"
STORE_PASSWORD = "changeit-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*cmd, cwd=None):
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


class BrokerError(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# PKI


class PKI:
    """A test CA, a second (untrusted) CA, server and client certificates, a proxy-style PEM,
    and a host-certificate directory (``hostcreds/hostcert.pem``, ``hostkey.pem``)."""

    def __init__(self, directory: str):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        p = self.path
        self._ca("ca", "pilotlogger test CA")
        self._ca("other-ca", "some other CA")
        self._leaf("server", "localhost", "ca", ext="subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth")
        self._leaf("client", CLIENT_CN, "ca", ext="extendedKeyUsage=clientAuth")
        self._leaf("rogue-client", CLIENT_CN, "other-ca", ext="extendedKeyUsage=clientAuth")
        self._leaf("host", HOST_CN, "ca", ext="subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth,clientAuth" % HOST_CN)
        # Valid for zero days: expired a second after they are made.
        self._leaf(
            "expired-server", "localhost", "ca", ext="subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth", days=0
        )
        self._leaf("expired-client", CLIENT_CN, "ca", ext="extendedKeyUsage=clientAuth", days=0)
        # A grid proxy keeps certificate, key and chain in one file.
        with open(p("proxy.pem"), "w") as out:
            for part in ("client.pem", "client.key", "ca.pem"):
                out.write(open(p(part)).read())
        os.chmod(p("proxy.pem"), 0o600)
        # A host-certificate directory, as DIRAC's pilot accepts in X509_USER_PROXY.
        os.makedirs(p("hostcreds"), exist_ok=True)
        shutil.copy(p("host.pem"), p("hostcreds/hostcert.pem"))
        shutil.copy(p("host.key"), p("hostcreds/hostkey.pem"))
        # A hashed CA directory, as in X509_CERT_DIR / /etc/grid-security/certificates.
        os.makedirs(p("certificates"), exist_ok=True)
        shutil.copy(p("ca.pem"), p("certificates/test-ca.pem"))
        run("openssl", "rehash", p("certificates"))
        # Java stores for ActiveMQ.
        run(
            "openssl",
            "pkcs12",
            "-export",
            "-in",
            p("server.pem"),
            "-inkey",
            p("server.key"),
            "-name",
            "broker",
            "-out",
            p("broker.p12"),
            "-passout",
            "pass:" + STORE_PASSWORD,
        )
        run(
            "keytool",
            "-importcert",
            "-noprompt",
            "-alias",
            "ca",
            "-file",
            p("ca.pem"),
            "-keystore",
            p("trust.p12"),
            "-storetype",
            "PKCS12",
            "-storepass",
            STORE_PASSWORD,
        )
        for name in os.listdir(directory):
            os.chmod(p(name), 0o755 if os.path.isdir(p(name)) else 0o644)
        os.chmod(p("proxy.pem"), 0o600)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def _ca(self, name, cn):
        run(
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-sha256",
            "-days",
            "3",
            "-subj",
            "/CN=%s" % cn,
            "-keyout",
            self.path(name + ".key"),
            "-out",
            self.path(name + ".pem"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        )

    def _leaf(self, name, cn, ca, ext, days=3):
        p = self.path
        with open(p(name + ".ext"), "w") as f:
            f.write(ext + "\n")
        run(
            "openssl",
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=%s" % cn,
            "-keyout",
            p(name + ".key"),
            "-out",
            p(name + ".csr"),
        )
        run(
            "openssl",
            "x509",
            "-req",
            "-in",
            p(name + ".csr"),
            "-CA",
            p(ca + ".pem"),
            "-CAkey",
            p(ca + ".key"),
            "-CAcreateserial",
            "-days",
            str(days),
            "-sha256",
            "-extfile",
            p(name + ".ext"),
            "-out",
            p(name + ".pem"),
        )


# ---------------------------------------------------------------------------------------------
# Brokers


class Broker:
    """Common lifecycle: start (wait for the TLS port), stop by pid, restart on the same data."""

    name = "broker"
    start_timeout = 60.0

    def __init__(self, base: str, pki: PKI):
        self.base, self.pki = base, pki
        os.makedirs(base, exist_ok=True)
        self.plain, self.tls = free_port(), free_port()
        self.proc = None
        self.log_path = os.path.join(base, "console.log")

    def url(self, destination: str, host: str = "localhost", tls: bool = True) -> str:
        if tls:
            return "stomp+ssl://%s:%d%s" % (host, self.tls, destination)
        return "stomp://%s:%d%s" % (host, self.plain, destination)

    def command(self) -> list:
        raise NotImplementedError

    def environment(self) -> dict:
        return dict(os.environ)

    def start(self) -> "Broker":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.command(),
            env=self.environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.base,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(
                    "%s exited with %s while starting; log: %s" % (self.name, self.proc.returncode, self.tail())
                )
            if all(self._listening(p) for p in (self.plain, self.tls)) and self._accepts_login():
                return self
            time.sleep(0.2)
        self.stop()
        raise BrokerError("%s did not listen within %g s; log: %s" % (self.name, self.start_timeout, self.tail()))

    @staticmethod
    def _listening(port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    def _accepts_login(self) -> bool:
        """A listening port is not yet a broker that answers: RabbitMQ accepts TCP before its
        STOMP plugin can log users in, and a client connecting then fails.  Ready means CONNECTED."""
        from pilotlogger.stompcodec import FrameParser, ProtocolError, encode_frame

        try:
            with socket.create_connection(("127.0.0.1", self.plain), timeout=2) as sock:
                sock.sendall(
                    encode_frame(
                        "CONNECT", [("accept-version", "1.2"), ("host", "/"), ("login", USER), ("passcode", PASSWORD)]
                    )
                )
                parser = FrameParser()
                while True:
                    data = sock.recv(4096)
                    if not data:
                        return False
                    parser.feed(data)
                    frame = parser.next_frame()
                    if frame is not None:
                        return frame.command == "CONNECTED"
        except (OSError, ProtocolError):
            return False

    def stop(self, kill: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
            self.proc.wait(30)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)

    def restart(self, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()

    def write_down_queues(self) -> None:
        """Make the broker's record of the queues declared so far survive a crash of the broker.

        What a queue a site has had for a while has, and a queue created a moment ago may not:
        see RabbitMQ.write_down_queues.  ActiveMQ's KahaDB syncs its journal on every write
        (``enableJournalDiskSyncs``, on by default), so there is nothing to do.
        """

    def tail(self, n: int = 2000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return "(no log)"


def rabbit_password_hash(password: str) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    salt = os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


class RabbitMQ(Broker):
    name = "RabbitMQ"

    def __init__(self, base, pki):
        super().__init__(base, pki)
        self.amqp, self.dist, self.epmd_port = free_port(), free_port(), free_port()
        self.node = "pltest%d@localhost" % self.amqp
        self.epmd = None
        import json

        p = pki.path
        definitions = {
            "vhosts": [{"name": "/"}],
            "users": [
                {
                    "name": u,
                    "password_hash": rabbit_password_hash(pw),
                    "hashing_algorithm": "rabbit_password_hashing_sha256",
                    "tags": "",
                }
                for u, pw in ((USER, PASSWORD), (CLIENT_CN, os.urandom(8).hex()))
            ],
            "permissions": [
                {"user": u, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"} for u in (USER, CLIENT_CN)
            ],
        }
        with open(os.path.join(base, "definitions.json"), "w") as f:
            json.dump(definitions, f)
        with open(os.path.join(base, "rabbitmq.conf"), "w") as f:
            f.write(
                "\n".join(
                    [
                        "listeners.tcp.default = 127.0.0.1:%d" % self.amqp,
                        "loopback_users = none",
                        "load_definitions = %s" % os.path.join(base, "definitions.json"),
                        "stomp.listeners.tcp.1 = 127.0.0.1:%d" % self.plain,
                        "stomp.listeners.ssl.1 = 127.0.0.1:%d" % self.tls,
                        "stomp.ssl_cert_login = true",
                        "ssl_cert_login_from = common_name",
                        "ssl_options.cacertfile = %s" % p("ca.pem"),
                        "ssl_options.certfile = %s" % p("server.pem"),
                        "ssl_options.keyfile = %s" % p("server.key"),
                        "ssl_options.verify = verify_peer",
                        "ssl_options.fail_if_no_peer_cert = false",
                        "log.console = true",
                        "log.console.level = warning",
                        "log.file = false",
                        "",
                    ]
                )
            )
        with open(os.path.join(base, "enabled_plugins"), "w") as f:
            f.write("[rabbitmq_stomp].\n")

    def environment(self):
        env = dict(os.environ)
        env.update(
            HOME=self.base,  # the Erlang cookie lives here
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.amqp),
            RABBITMQ_DIST_PORT=str(self.dist),
            ERL_EPMD_PORT=str(self.epmd_port),
            RABBITMQ_MNESIA_BASE=os.path.join(self.base, "mnesia"),
            RABBITMQ_LOG_BASE=os.path.join(self.base, "log"),
            RABBITMQ_CONFIG_FILE=os.path.join(self.base, "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(self.base, "enabled_plugins"),
            RABBITMQ_PID_FILE=os.path.join(self.base, "rabbit.pid"),
            RABBITMQ_CONF_ENV_FILE=os.path.join(self.base, "no-env.conf"),
        )
        return env

    def command(self):
        # The lib script runs the node as the calling user (the /usr/sbin wrapper would
        # switch to the rabbitmq user and need chowned directories).
        return ["/usr/lib/rabbitmq/bin/rabbitmq-server"]

    def start(self):
        if self.epmd is None or self.epmd.poll() is not None:
            # Our own epmd in the foreground, so it is stopped with us (not a stray daemon).
            self.epmd = subprocess.Popen(
                ["epmd", "-port", str(self.epmd_port)],
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        return super().start()

    def ctl(self, *args, timeout: float = 120) -> str:
        p = subprocess.run(
            [RABBITMQCTL, "-n", self.node] + list(args),
            env=self.environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            universal_newlines=True,
            timeout=timeout,
        )
        if p.returncode:
            raise BrokerError("rabbitmqctl %s on %s: %s" % (" ".join(args), self.node, p.stdout[-1000:]))
        return p.stdout

    def write_down_queues(self) -> None:
        """RabbitMQ 3.x commits a queue's Mnesia record in two log entries, and the second can wait
        up to ~2 s in the node's memory: a node killed in that window comes back without the
        queue, and drops every message it had receipted (docs/events.md, "Destinations": 5 kills
        in 25 on a broker holding thousands of queues).  Waiting 2 s closes the window for a
        kill -9; syncing the log closes it for a power loss too, and without guessing a delay."""
        self.ctl("eval", "mnesia:sync_log().")

    def shutdown(self):
        self.stop()
        if self.epmd is not None:
            self.epmd.kill()
            self.epmd.wait(10)


ACTIVEMQ_XML = """<beans xmlns="http://www.springframework.org/schema/beans"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xsi:schemaLocation="http://www.springframework.org/schema/beans http://www.springframework.org/schema/beans/spring-beans.xsd
                      http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">
  <broker xmlns="http://activemq.apache.org/schema/core" brokerName="pltest" dataDirectory="{data}"
          useJmx="false" persistent="true" schedulerSupport="false" advisorySupport="false">
    <plugins>
      <simpleAuthenticationPlugin anonymousAccessAllowed="true">
        <users>
          <authenticationUser username="{user}" password="{password}" groups="users,admins"/>
        </users>
      </simpleAuthenticationPlugin>
    </plugins>
    <sslContext>
      <sslContext keyStore="file:{keystore}" keyStorePassword="{store_password}" keyStoreType="PKCS12"
                  trustStore="file:{truststore}" trustStorePassword="{store_password}" trustStoreType="PKCS12"/>
    </sslContext>
    <transportConnectors>
      <transportConnector name="stomp" uri="stomp://127.0.0.1:{plain}"/>
      <transportConnector name="stompssl" uri="stomp+ssl://127.0.0.1:{tls}?transport.needClientAuth=false&amp;transport.wantClientAuth=true"/>
      <transportConnector name="stompsslcert" uri="stomp+ssl://127.0.0.1:{tls_cert}?transport.needClientAuth=true"/>
    </transportConnectors>
  </broker>
</beans>
"""


class ActiveMQ(Broker):
    name = "ActiveMQ"

    def __init__(self, base, pki):
        super().__init__(base, pki)
        self.tls_cert = free_port()
        conf = os.path.join(base, "conf")
        os.makedirs(conf, exist_ok=True)
        with open(os.path.join(conf, "activemq.xml"), "w") as f:
            f.write(
                ACTIVEMQ_XML.format(
                    data=os.path.join(base, "data"),
                    user=USER,
                    password=PASSWORD,
                    keystore=pki.path("broker.p12"),
                    truststore=pki.path("trust.p12"),
                    store_password=STORE_PASSWORD,
                    plain=self.plain,
                    tls=self.tls,
                    tls_cert=self.tls_cert,
                )
            )
        with open(os.path.join(conf, "log4j2.properties"), "w") as f:
            f.write(
                "rootLogger.level=WARN\nrootLogger.appenderRef.console.ref=Console\n"
                "appender.console.type=Console\nappender.console.name=Console\n"
                "appender.console.layout.type=PatternLayout\nappender.console.layout.pattern=%5p | %m%n\n"
            )

    def cert_url(self, destination: str) -> str:
        return "stomp+ssl://localhost:%d%s" % (self.tls_cert, destination)

    def command(self):
        conf = os.path.join(self.base, "conf")
        return [
            "java",
            "-Xms64M",
            "-Xmx256M",
            "-Dactivemq.base=" + self.base,
            "-Dactivemq.home=/usr/share/activemq",
            "-Dactivemq.conf=" + conf,
            "-Dactivemq.data=" + os.path.join(self.base, "data"),
            "-Dlog4j2.configurationFile=" + os.path.join(conf, "log4j2.properties"),
            "-cp",
            "/usr/share/activemq/bin/activemq.jar",
            "org.apache.activemq.console.Main",
            "start",
            "xbean:file:" + os.path.join(conf, "activemq.xml"),
        ]

    def start(self):
        super().start()
        deadline = time.monotonic() + 30
        while not self._listening(self.tls_cert) and time.monotonic() < deadline:
            time.sleep(0.1)
        return self

    def shutdown(self):
        self.stop()
