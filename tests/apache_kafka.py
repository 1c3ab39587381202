"""Apache Kafka for the tests, benchmarks and fault runs: KRaft nodes (combined broker and controller) on
this machine, from jars Maven fetches once from Maven Central into ``.cache/`` (``tests/kafka/pom.xml``).

One node for the pipeline suite; three (replication 3, ``min.insync.replicas=2``) for the broker-kill
scenario, each on its own ports and data directory so one can be killed and started again.  The topic
settings a deployment would give (``IPAM_KAFKA_REPLICATION``, ``IPAM_KAFKA_MIN_INSYNC_REPLICAS``) come from
``cluster.topic_settings``, so tests and compose.yaml make topics the same way.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from ipam.devenv import free_port, wait_port
from ipam.devenv.processes import die_with_parent

ROOT = Path(__file__).resolve().parent.parent
POM = ROOT / "tests" / "kafka" / "pom.xml"
CACHE = ROOT / ".cache"
LOG4J2 = """status = error
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = file
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = INFO
logger.quorum.name = org.apache.kafka.raft.QuorumState
logger.quorum.level = INFO
"""


class KafkaUnavailable(RuntimeError):
    """No Java or Maven here (or the jars could not be fetched): the suite says so and runs on the local broker."""


def unavailable() -> str | None:
    """Why Apache Kafka cannot be started here (no Java, no Maven and no cached jars), or None."""
    try:
        java()
        classpath()
    except KafkaUnavailable as e:
        return str(e)
    return None


def kafka_version() -> str:
    text = POM.read_text()
    return text.split("<kafka.version>", 1)[1].split("<", 1)[0]


def java() -> str:
    home = os.environ.get("JAVA_HOME")
    found = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not found or not os.access(found, os.X_OK):
        raise KafkaUnavailable("no java on PATH (nor JAVA_HOME): Apache Kafka needs Java 17 or newer")
    return found


def classpath() -> str:
    """The broker's jars, fetched by Maven on first use; once cached, no network is needed."""
    version = kafka_version()
    libs = CACHE / "kafka" / version / "libs"
    stamp = libs / ".complete"
    if not stamp.exists():
        mvn = shutil.which("mvn")
        if mvn is None:
            raise KafkaUnavailable(f"no mvn on PATH to fetch Apache Kafka {version} (and no jars in {libs})")
        done = subprocess.run([mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies", "-DincludeScope=runtime",
                               f"-DoutputDirectory={libs}", f"-Dmaven.repo.local={CACHE / 'm2'}"],
                              capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise KafkaUnavailable(f"mvn could not fetch Apache Kafka {version}: {(done.stdout + done.stderr)[-2000:]}")
        stamp.touch()
    return os.pathsep.join(sorted(str(jar) for jar in libs.glob("*.jar")))


@dataclass
class Node:
    node_id: int
    port: int
    controller_port: int
    data: Path
    host: str = "127.0.0.1"
    proc: subprocess.Popen | None = None
    wrap: tuple[str, ...] = ()  # what the JVM is run through (``ip netns exec <ns>``: a node in a namespace)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class KafkaCluster:
    """``nodes`` KRaft nodes on loopback, each a broker and a controller, in a temporary directory."""

    def __init__(self, nodes: int = 1, heap_mb: int = 384, host: str = "127.0.0.1",
                 settings: tuple[str, ...] = (), places: list[tuple[str, tuple[str, ...]]] | None = None) -> None:
        """``host``: the address the nodes listen on and advertise (a test's own, reachable from its namespaces);
        ``settings``: ``key=value`` broker properties over the ones below (the last one of a key counts);
        ``places``: per node, its own address and the command prefix that runs it there (a network namespace
        of its own, ``tests/netns.Segment``), so the network between nodes can be cut apart from clients'."""
        self.host = host
        self.settings = settings
        self.dir = Path(tempfile.mkdtemp(prefix="ipam-kafka-"))
        self.heap_mb = heap_mb
        self.version = kafka_version()
        self.cluster_id = str(uuid.UUID(int=uuid.uuid4().int))
        places = places or [(host, ())] * nodes
        self.nodes = [Node(i + 1, free_port(), free_port(), self.dir / f"node-{i + 1}", host=places[i][0], wrap=places[i][1])
                      for i in range(nodes)]
        self.replication = min(3, nodes)
        self.min_insync = min(2, nodes)

    @property
    def bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.nodes)

    @property
    def topic_settings(self) -> dict[str, int]:
        """What ipam's own settings must say for its topics on this cluster (make_config keywords)."""
        return {"kafka_replication": self.replication, "kafka_min_insync_replicas": self.min_insync}

    def describe(self) -> str:
        return f"Apache Kafka {self.version} (KRaft, {len(self.nodes)} node{'s' if len(self.nodes) > 1 else ''})"

    def _properties(self, node: Node) -> str:
        own = [n.host != self.host for n in self.nodes]  # nodes on addresses of their own talk to each other there
        voters = ",".join(f"{n.node_id}@{n.host if any(own) else '127.0.0.1'}:{n.controller_port}" for n in self.nodes)
        controller = node.host if any(own) else "127.0.0.1"
        return "\n".join([
            "process.roles=broker,controller", f"node.id={node.node_id}", f"controller.quorum.voters={voters}",
            f"listeners=PLAINTEXT://{node.host}:{node.port},CONTROLLER://{controller}:{node.controller_port}",
            f"advertised.listeners=PLAINTEXT://{node.host}:{node.port}", "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name=PLAINTEXT", f"log.dirs={node.data / 'logs'}",
            f"offsets.topic.replication.factor={self.replication}",
            f"transaction.state.log.replication.factor={self.replication}",
            f"transaction.state.log.min.isr={self.min_insync}", f"min.insync.replicas={self.min_insync}",
            f"default.replication.factor={self.replication}", "auto.create.topics.enable=false",
            "group.initial.rebalance.delay.ms=0", "offsets.topic.num.partitions=8",
            "unclean.leader.election.enable=false", "log.flush.interval.messages=9223372036854775807",
            *self._fencing(), *self.settings,
            "", ])

    def _fencing(self) -> list[str]:
        """A broker killed is fenced (its leaderships moved, it leaves every ISR) once its heartbeats stop for
        ``broker.session.timeout.ms``: 9 s by default, which alone would hold writes past ipam's 10 s deadline
        (operations.md), so a cluster's is 3 s.  A single node has no one to move leaderships to: fencing it
        only makes a CPU-starved machine (200 CNI plugins starting at once on 2 cores) lose its only broker for
        a while, so it keeps the default."""
        if len(self.nodes) == 1:
            return []
        return ["broker.session.timeout.ms=3000", "broker.heartbeat.interval.ms=500"]

    def _heap(self) -> list[str]:
        """The heap is committed and touched at start (``-Xms`` equal to ``-Xmx``), as production brokers run:
        with ``-Xms`` at half, the JVM grew its heap by 88 MiB half an hour into a soak, which read as the
        broker's memory growing (docs/performance.md)."""
        return [f"-Xms{self.heap_mb}m", f"-Xmx{self.heap_mb}m", "-XX:+AlwaysPreTouch"]

    def _java(self, node: Node, main: str, *args: str) -> list[str]:
        (node.data / "log4j2.properties").write_text(LOG4J2.format(log=node.data / "server.log"))
        return [*node.wrap, java(), *self._heap(), "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={node.data / 'log4j2.properties'}", "-cp", classpath(), main, *args]

    def start(self) -> KafkaCluster:
        for node in self.nodes:
            node.data.mkdir(parents=True, exist_ok=True)
            (node.data / "server.properties").write_text(self._properties(node))
            subprocess.run(self._java(node, "kafka.tools.StorageTool", "format", "-t", self.cluster_id, "-c",
                                      str(node.data / "server.properties")),
                           check=True, capture_output=True, timeout=120)
        for node in self.nodes:
            self.start_node(node, wait=False)
        for node in self.nodes:
            wait_port(node.host, node.port, 120, node.proc, what=f"Apache Kafka node {node.node_id}")
        return self

    def start_node(self, node: Node, wait: bool = True) -> None:
        with open(node.data / "stdout.log", "ab") as out:
            node.proc = subprocess.Popen(self._java(node, "kafka.Kafka", str(node.data / "server.properties")),
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, preexec_fn=die_with_parent(signal.SIGKILL))
        if wait:
            wait_port(node.host, node.port, 120, node.proc, what=f"Apache Kafka node {node.node_id}")

    def quorum_leader(self) -> int | None:
        """The node that last became the KRaft quorum's leader (the active controller), from the nodes' logs."""
        latest: tuple[str, int] | None = None
        for node in self.nodes:
            log = node.data / "server.log"
            lines = log.read_text(errors="replace").splitlines() if log.exists() else []
            became = [line for line in lines if "transition to Leader(" in line]
            if became and (latest is None or became[-1][:25] > latest[0]):
                latest = (became[-1][:25], node.node_id)
        return None if latest is None else latest[1]

    def kill_node(self, node: Node) -> None:
        """kill -9: no controlled shutdown, leadership moves when the controller sees the session expire."""
        if node.alive:
            node.proc.kill()
            node.proc.wait()

    def stop(self) -> None:
        for node in self.nodes:
            if node.alive:
                node.proc.terminate()
        for node in self.nodes:
            if node.proc is not None:
                try:
                    node.proc.wait(30)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait()

    def destroy(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
