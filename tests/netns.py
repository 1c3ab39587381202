"""Network namespaces of a test's own, to cut a role off from Postgres or the broker with the kernel's routing.

One namespace, one veth pair: the host end carries one address per service the test starts (Postgres on one,
Apache Kafka on another), the namespace end one address for the role inside.  A cut drops packets: a
blackhole route in the namespace (what the role sends to that service), a blackhole rule on the host (what
that service's address sends to the role), or both; the role's sockets stay open and its packets vanish, as
on a real partition.  Only addresses and devices the test
made are touched.  (tc netem, for latency and loss, needs a kernel with sch_netem; this one has none.)
"""

from __future__ import annotations

import random
import shutil
import subprocess
from dataclasses import dataclass, field


class NamespacesUnavailable(RuntimeError):
    pass


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", *(("-n", ns) if ns else ()), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")


def unavailable() -> str | None:
    """Why namespaces cannot be made here (not root, no iproute2), or None."""
    if shutil.which("ip") is None:
        return "no ip command (iproute2)"
    probe = subprocess.run(["ip", "netns", "add", "ipam-probe-ns"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create a network namespace: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", "ipam-probe-ns"], capture_output=True)
    return None


@dataclass
class Namespace:
    """``services``: names of the host-side addresses (``host["postgres"]``); the role inside is ``inside``."""

    services: tuple[str, ...] = ("postgres", "kafka")
    name: str = field(default_factory=lambda: f"ipam-t{random.randrange(16**6):06x}")
    host: dict[str, str] = field(default_factory=dict)
    inside: str = ""
    cuts: list[tuple[str | None, str]] = field(default_factory=list)  # (namespace or None for the host, address)

    def __post_init__(self) -> None:
        net = random.randrange(1, 250)
        self.inside = f"10.231.{net}.250"
        self.host = {s: f"10.231.{net}.{i + 1}" for i, s in enumerate(self.services)}
        self.veth = f"v{self.name[-6:]}h", f"v{self.name[-6:]}n"

    def __enter__(self) -> Namespace:
        _ip("netns", "add", self.name)
        try:
            host_end, ns_end = self.veth
            _ip("link", "add", host_end, "type", "veth", "peer", "name", ns_end)
            _ip("link", "set", ns_end, "netns", self.name)
            for address in self.host.values():
                _ip("addr", "add", f"{address}/24", "dev", host_end)
            _ip("link", "set", host_end, "up")
            _ip("addr", "add", f"{self.inside}/24", "dev", ns_end, ns=self.name)
            _ip("link", "set", ns_end, "up", ns=self.name)
            _ip("link", "set", "lo", "up", ns=self.name)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        subprocess.run(["ip", "link", "del", self.veth[0]], capture_output=True)

    @property
    def run(self) -> tuple[str, ...]:
        """The wrapper that runs a command inside."""
        return ("ip", "netns", "exec", self.name)

    def cut(self, service: str, direction: str = "both") -> None:
        """Drop packets between the role inside and ``service``: ``out`` (what the role sends), ``in`` (what
        it would receive) or ``both``."""
        if direction in ("out", "both"):
            _ip("route", "add", "blackhole", f"{self.host[service]}/32", ns=self.name)
            self.cuts.append((self.name, self.host[service]))
        if direction in ("in", "both"):  # on the host, only what comes from that service's address
            _ip("rule", "add", "from", self.host[service], "to", self.inside, "blackhole")
            self.cuts.append((None, self.host[service]))

    def heal(self) -> None:
        for ns, address in self.cuts:
            if ns is None:
                _ip("rule", "del", "from", address, "to", self.inside, "blackhole")
            else:
                _ip("route", "del", "blackhole", f"{address}/32", ns=ns)
        self.cuts.clear()


@dataclass
class Segment:
    """``count`` namespaces on one bridge of the test's own, one address each; the host keeps one on the bridge
    (``gateway``), so it reaches every namespace while the namespaces can be cut from each other alone.

    ``isolate(i)``: blackhole routes in namespace *i* to every other member and in every other member to *i*:
    *i* still talks to the host (clients) and the others to the host and each other, as when one broker of a
    cluster loses the network to its peers but not to its clients."""

    count: int
    name: str = field(default_factory=lambda: f"ipb{random.randrange(16**5):05x}")
    gateway: str = ""
    addresses: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    cut: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        net = random.randrange(1, 250)
        self.gateway = f"10.232.{net}.254"
        self.addresses = [f"10.232.{net}.{i + 1}" for i in range(self.count)]
        self.namespaces = [f"{self.name}-{i + 1}" for i in range(self.count)]

    def _veth(self, i: int) -> tuple[str, str]:
        return f"{self.name}h{i + 1}", f"{self.name}n{i + 1}"

    def __enter__(self) -> Segment:
        try:
            _ip("link", "add", "name", self.name, "type", "bridge")
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.name)
            _ip("link", "set", self.name, "up")
            for i, (ns, address) in enumerate(zip(self.namespaces, self.addresses, strict=True)):
                host_end, ns_end = self._veth(i)
                _ip("netns", "add", ns)
                _ip("link", "add", host_end, "type", "veth", "peer", "name", ns_end)
                _ip("link", "set", host_end, "master", self.name)
                _ip("link", "set", host_end, "up")
                _ip("link", "set", ns_end, "netns", ns)
                _ip("addr", "add", f"{address}/24", "dev", ns_end, ns=ns)
                _ip("link", "set", ns_end, "up", ns=ns)
                _ip("link", "set", "lo", "up", ns=ns)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for i, ns in enumerate(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            subprocess.run(["ip", "link", "del", self._veth(i)[0]], capture_output=True)
        subprocess.run(["ip", "link", "del", self.name], capture_output=True)

    def run(self, i: int) -> tuple[str, ...]:
        """The wrapper that runs a command in member *i*'s namespace."""
        return ("ip", "netns", "exec", self.namespaces[i])

    def isolate(self, i: int) -> None:
        """Cut member *i* from every other member, both ways (the host still reaches all)."""
        self._blackholes("add", i)
        self.cut.add(i)

    def rejoin(self, i: int) -> None:
        self._blackholes("del", i)
        self.cut.discard(i)

    def _blackholes(self, verb: str, i: int) -> None:
        """``add`` or ``del`` the routes that drop what *i* sends to the others and what they send to *i*."""
        for j in (j for j in range(self.count) if j != i):
            _ip("route", verb, "blackhole", f"{self.addresses[j]}/32", ns=self.namespaces[i])
            _ip("route", verb, "blackhole", f"{self.addresses[i]}/32", ns=self.namespaces[j])
