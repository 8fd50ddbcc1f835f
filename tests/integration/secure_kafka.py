"""A throw-away Kafka broker that only speaks SASL/SCRAM-SHA-512 over TLS (SASL_SSL).

Everything lives in one directory: a CA and a broker certificate for 127.0.0.1/localhost
made with openssl, a KRaft storage formatted with one SCRAM user whose password is drawn
per run, the rendered ``server.properties`` and the broker's logs. The broker runs from the
jars in ``infra/kafka/lib`` as one combined broker+controller: clients and the broker itself
(inter-broker) use the SASL_SSL listener; only the controller listener is PLAINTEXT, on
loopback.

Tests use ``SecureBroker.start`` / ``stop``. By hand::

    python -m tests.integration.secure_kafka DIR

starts one, writes the client settings to ``DIR/client.env`` (mode 0600) and stops the
broker on Ctrl-C.
"""

from __future__ import annotations

import base64
import ctypes
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shared.settings import KafkaSettings
from tests.integration.helpers import ROOT, free_port

__all__ = ["USERNAME", "SecureBroker", "missing_tools"]

LIB = ROOT / "infra" / "kafka" / "lib"
LOG4J = ROOT / "infra" / "kafka" / "log4j.properties"
USERNAME = "streamloop"
MECHANISM = "SCRAM-SHA-512"
HEAP = "384m"
STARTED = "Kafka Server started"

# Low CPU on small CI machines: one GC thread and no optimising JIT. A test broker carries a
# few hundred records; start-up time is what counts.
JVM_OPTS = [
    f"-Xms{HEAP}",
    f"-Xmx{HEAP}",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Djava.awt.headless=true",
]

SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
controller.listener.names=CONTROLLER
listeners=SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=SASL_SSL://127.0.0.1:{port}
listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT
inter.broker.listener.name=SASL_SSL
sasl.enabled.mechanisms={mechanism}
sasl.mechanism.inter.broker.protocol={mechanism}
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=\
org.apache.kafka.common.security.scram.ScramLoginModule required \
username="{username}" password="{password}";
ssl.keystore.type=PEM
ssl.keystore.location={keystore}
ssl.truststore.type=PEM
ssl.truststore.location={ca}
ssl.endpoint.identification.algorithm=https
ssl.client.auth=none
log.dirs={data}

num.partitions=3
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=3
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
message.max.bytes=2097152
replica.fetch.max.bytes=2097152
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
background.threads=2
log.cleaner.threads=1
"""


def missing_tools() -> list[str]:
    """The programs this machine lacks to run the broker (empty when it has them)."""
    return [tool for tool in ("java", "openssl") if shutil.which(tool) is None]


def _run(what: str, args: list[str], cwd: Path) -> None:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stdout}{done.stderr}")


def _cluster_id() -> str:
    """A KRaft cluster id as Kafka's ``Uuid.randomUuid`` makes one (URL-safe base64 of 16
    random bytes, never starting with "-"), without starting a JVM for it."""
    while True:
        text = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def _make_certificates(root: Path) -> tuple[Path, Path]:
    """A CA and a broker certificate it signed (SAN 127.0.0.1 and localhost, so clients can
    verify the host name); returns the CA certificate and the broker's PEM keystore (key,
    then certificate chain), which Kafka reads with ``ssl.keystore.type=PEM``."""
    tls = root / "tls"
    tls.mkdir(parents=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _run(
        "openssl req (CA)",
        [
            "openssl", "req", "-x509", *ec, "-days", "2",
            "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=StreamLoop test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ],
        tls,
    )  # fmt: skip
    (tls / "broker.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyAgreement\n"
        # clientAuth too: the broker is a TLS client of its own listener (inter-broker).
        "extendedKeyUsage=serverAuth,clientAuth\n"
    )
    _run(
        "openssl req (broker)",
        [
            "openssl", "req", *ec, "-keyout", "broker.key", "-out", "broker.csr",
            "-subj", "/CN=localhost",
        ],
        tls,
    )  # fmt: skip
    _run(
        "openssl x509 (broker)",
        [
            "openssl", "x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "broker.ext", "-out", "broker.pem",
        ],
        tls,
    )  # fmt: skip
    keystore = tls / "broker-keystore.pem"
    keystore.write_text(
        (tls / "broker.key").read_text()
        + (tls / "broker.pem").read_text()
        + (tls / "ca.pem").read_text()
    )
    for secret in (keystore, tls / "broker.key", tls / "ca.key"):
        secret.chmod(0o600)
    return tls / "ca.pem", keystore


def _die_with_parent() -> Callable[[], None] | None:
    """What the broker's child process runs before exec so that it gets SIGTERM when the
    test process dies, and a killed test run does not leave a JVM behind (Linux only).

    libc is loaded here, in the parent: loading a library between fork and exec can
    deadlock when other threads hold the loader's lock."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


@dataclass
class SecureBroker:
    """One running SASL_SSL broker and what a client needs to reach it."""

    root: Path
    port: int
    controller_port: int
    password: str = field(repr=False)
    ca_file: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    username: str = USERNAME

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def server_log(self) -> Path:
        return self.root / "logs" / "server.log"

    def log_text(self) -> str:
        """The broker's log so far (empty before it wrote one)."""
        try:
            return self.server_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def settings(self, **overrides: object) -> KafkaSettings:
        """Client settings for this broker; ``overrides`` replace any field (a wrong
        password, no CA, another protocol)."""
        values: dict[str, object] = {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": MECHANISM,
            "sasl_username": self.username,
            "sasl_password": self.password,
            "ssl_cafile": str(self.ca_file),
            "request_timeout_ms": 10_000,
        }
        values.update(overrides)
        return KafkaSettings(**values)

    def env(self) -> dict[str, str]:
        """The same settings as ``STREAMLOOP_KAFKA_*`` variables, for a service process."""
        return {
            "STREAMLOOP_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "STREAMLOOP_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "STREAMLOOP_KAFKA_SASL_MECHANISM": MECHANISM,
            "STREAMLOOP_KAFKA_SASL_USERNAME": self.username,
            "STREAMLOOP_KAFKA_SASL_PASSWORD": self.password,
            "STREAMLOOP_KAFKA_SSL_CAFILE": str(self.ca_file),
        }

    @classmethod
    def start(cls, root: Path, timeout_s: float = 60.0) -> SecureBroker:
        """Make certificates, format storage with the SCRAM user and start the broker in
        ``root`` (which must not hold a previous broker); return once it serves clients.

        Raises RuntimeError when a step fails or the broker does not start in time; the
        broker is stopped before the error propagates."""
        if not any(LIB.glob("kafka_2.13-*.jar")):
            raise RuntimeError(f"no Kafka jars in {LIB}; run: infra/kafka/kafka.sh jars")
        root.mkdir(parents=True, exist_ok=True)
        ca_file, keystore = _make_certificates(root)
        port = free_port()
        controller_port = free_port()
        while controller_port == port:
            controller_port = free_port()
        broker = cls(root, port, controller_port, secrets.token_hex(24), ca_file)
        (root / "logs").mkdir()
        config = root / "server.properties"
        config.write_text(
            SERVER_PROPERTIES.format(
                port=port,
                controller_port=controller_port,
                mechanism=MECHANISM,
                username=broker.username,
                password=broker.password,
                keystore=keystore,
                ca=ca_file,
                data=root / "data",
            )
        )
        config.chmod(0o600)
        java = [
            "java",
            *JVM_OPTS,
            f"-Dlog4j.configuration=file:{LOG4J}",
            f"-Dkafka.logs.dir={root / 'logs'}",
            "-cp",
            f"{LIB}/*",
        ]
        scram = f"{MECHANISM}=[name={broker.username},password={broker.password}]"
        _run(
            "kafka-storage format",
            [*java, "kafka.tools.StorageTool", "format", "-t", _cluster_id(), "-c", str(config),
             "--add-scram", scram],
            root,
        )  # fmt: skip
        with (root / "logs" / "stdout.log").open("wb") as out:
            broker.proc = subprocess.Popen(
                [*java, "kafka.Kafka", str(config)],
                cwd=root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent(),
            )
        try:
            broker._wait_started(timeout_s)
        except BaseException:
            broker.stop()
            raise
        return broker

    def _wait_started(self, timeout_s: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while STARTED not in self.log_text():
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the broker exited ({self.proc.returncode}) during start-up:\n"
                    + self.log_text()[-4000:]
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the broker did not start in {timeout_s}s; see {self.server_log}"
                )
            time.sleep(0.3)

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM (controlled shutdown), SIGKILL after ``timeout_s``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    missing = missing_tools()
    if missing:
        print("missing: " + ", ".join(missing), file=sys.stderr)
        return 1
    broker = SecureBroker.start(Path(argv[0]).resolve())
    env_file = broker.root / "client.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in broker.env().items()))
    env_file.chmod(0o600)
    print(f"SASL_SSL broker on {broker.bootstrap}; client settings in {env_file}; Ctrl-C stops")
    try:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        assert broker.proc is not None
        broker.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
