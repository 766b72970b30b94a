"""Whether pod multicast also leaves by the uplink: decided per group, as a snooping switch
decides for one of its ports (RFC 4541).

Owns what the uplink told us: the outside hosts that reported each group there (kept per host,
in a ``Membership`` whose members are host IPs, leaves taking effect at once), and whether a
multicast router or querier is on the uplink (a router port, aged like one: its queries keep it
present for robustness x query interval + max response / 2, the querier's own values). A
group's copy goes out the uplink (the group's external bucket) when:
- the agent is configured to always forward (``multicast.externalForwarding: always``), or
- a router is present: routers take every group (RFC 4541 §2.1.2), or
- the group is link-local (224.0.0.0/24, mDNS and the like): flooded like any switch does, or
- an outside host reported it on the uplink.
Pod multicast to a group nobody has asked for follows the same rule (the pipeline's default
external flow, for every group or for link-local ones only: ``forwards_all``).

Ageing needs a querier: hosts re-report only when asked. While none is on the uplink, an outside
host's membership lasts until it leaves (nothing is aged); while one is, it ages out like any
member, with the querier's timers, learnt from its queries (and while one is, every group goes out
anyway: a host aged out by mistake costs nothing before it answers again). In encap mode the reports
other cluster nodes send upstream (we all are IGMP proxies) are not outside interest: those nodes
get our pods' traffic through the tunnel. In noEncap mode they are how the nodes find each other.

What the uplink said is kept in a file beside the API socket (as the policy view is): a
restarted agent keeps forwarding to the outside hosts that joined before, since without a
querier they would never report again. Pure apart from ``save`` / ``load``.
May import ``agent.multicast.igmp``, ``pipeline.multicast``'s constants and the standard library.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import logging
import math
import os
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from agent.multicast.igmp.membership import Membership, Timers
from agent.multicast.igmp.packets import LeaveV2, Query, ReportV1, ReportV2, ReportV3
from pipeline.multicast import LINK_LOCAL_NET

log = logging.getLogger(__name__)

LINK_LOCAL = ipaddress.IPv4Network(LINK_LOCAL_NET)
NO_QUERIER = "0.0.0.0"  # a snooping switch's proxy query: no router behind it (RFC 4541 §2.1.1)
DEFAULT_QRV, DEFAULT_QQI_S = 2, 125  # what a v1/v2 query does not say (RFC 3376 §8)


class ExternalForwarding(enum.Enum):
    """``multicast.externalForwarding``: ``auto`` follows the uplink (this module); ``always``
    sends every pod datagram out the uplink as well, as before snooping was done there."""

    AUTO = "auto"
    ALWAYS = "always"


def is_link_local(group: str) -> bool:
    return ipaddress.IPv4Address(group) in LINK_LOCAL


class UplinkListeners:
    """The uplink's side of forwarding. Methods returning ``set[str]`` return the groups whose
    external copy may have changed; ``all_changed`` flags tell the caller that every group's
    may have (a router came or went)."""

    def __init__(self, mode: ExternalForwarding, timers: Timers,
                 cluster_nodes: Callable[[], Collection[str]], node_ip: str,
                 encap: bool, max_groups: int = 65536) -> None:
        self.mode = mode
        self.max_groups = max_groups  # outside hosts cannot grow our tables without bound
        self.outside = Membership(timers, fast_leave=True)  # members: outside host IPs
        self._cluster_nodes = cluster_nodes
        self._node_ip = node_ip
        self._encap = encap
        self.router: str | None = None  # the router or querier last heard, while present
        self.router_until = -math.inf

    # -- what is forwarded ------------------------------------------------------------------

    @property
    def forwards_all(self) -> bool:
        return self.mode is ExternalForwarding.ALWAYS or self.router is not None

    def wants(self, group: str) -> bool:
        """Does pod traffic to ``group`` also go out the uplink?"""
        return self.forwards_all or is_link_local(group) or self.outside.has_group(group)

    def has_listeners(self, group: str) -> bool:
        return self.outside.has_group(group)

    def listeners(self, group: str) -> list[str]:
        return sorted((str(h) for h in self.outside.members(group)), key=_ip_int)

    # -- what the uplink says ---------------------------------------------------------------

    def query(self, now: float, q: Query) -> bool:
        """A query heard on the uplink; True when the uplink just became a router port."""
        if q.src in (NO_QUERIER, self._node_ip) or q.src in self._cluster_nodes():
            return False
        qrv, qqi = q.qrv or DEFAULT_QRV, q.qqic_s or DEFAULT_QQI_S
        if 0 < q.max_resp_s < qqi:
            # its hosts answer on its schedule: their memberships age on it too
            self.outside.timers = Timers(query_interval_s=qqi, max_response_s=q.max_resp_s,
                                         robustness=qrv)
        self.router_until = now + qrv * qqi + q.max_resp_s / 2
        became = self.router is None
        if became:
            log.info("multicast router %s heard on the uplink: every group goes out there "
                     "while it is", q.src)
        self.router = q.src
        return became and self.mode is ExternalForwarding.AUTO

    def report(self, now: float, msg: ReportV1 | ReportV2 | LeaveV2 | ReportV3
               ) -> tuple[str, set[str]]:
        """A report or leave heard on the uplink: (verdict, groups whose listeners changed)."""
        if msg.src in (NO_QUERIER, self._node_ip):
            return "ignored", set()
        if self._encap and msg.src in self._cluster_nodes():
            return "ignored", set()  # a peer's proxy report: it is served through the tunnel
        groups = _groups_of(msg)
        before = {g for g in groups if self.outside.has_group(g)}
        if len(groups - before) + self.outside.group_count() > self.max_groups \
                and not isinstance(msg, LeaveV2):
            return "over_cap", set()  # refused whole, as a pod's report over a cap is
        self.outside.apply(now, msg.src, msg)
        return "accepted", before ^ {g for g in groups if self.outside.has_group(g)}

    def expire(self, now: float) -> tuple[set[str], bool]:
        """Age the router port and, while a querier keeps hosts answering, the hosts."""
        if self.router is not None and now >= self.router_until:
            log.info("multicast router %s on the uplink not heard for a while: only groups "
                     "outside hosts asked for go out there now", self.router)
            self.router, self.router_until = None, -math.inf
            return set(), self.mode is ExternalForwarding.AUTO
        if self.router is None:
            return set(), False  # no querier: nobody asks the hosts, nothing ages
        return self.outside.expire(now), False

    def next_deadline(self) -> float | None:
        if self.router is None:
            return None
        hosts = self.outside.next_deadline()
        return self.router_until if hosts is None else min(hosts, self.router_until)

    # -- kept across restarts ---------------------------------------------------------------

    def to_json(self, now: float, wall: float) -> dict[str, Any]:
        return {"savedAt": wall,
                "router": self.router,
                "routerForSeconds": max(0.0, self.router_until - now) if self.router else 0.0,
                "listeners": {g: self.listeners(g) for g in sorted(self.outside.groups())}}

    def restore(self, now: float, wall: float, data: dict[str, Any]) -> None:
        """Take back what ``to_json`` wrote ``wall - savedAt`` seconds ago."""
        left = float(data.get("routerForSeconds", 0.0)) - max(0.0, wall - float(data["savedAt"]))
        router = data.get("router")
        if isinstance(router, str) and left > 0:
            self.router, self.router_until = router, now + left
        for group, hosts in dict(data.get("listeners", {})).items():
            ipaddress.IPv4Address(group)
            for host in hosts:
                self.outside.apply(now, str(ipaddress.IPv4Address(host)), ReportV2(group))


def _groups_of(msg: ReportV1 | ReportV2 | LeaveV2 | ReportV3) -> set[str]:
    if isinstance(msg, ReportV3):
        return {r.group for r in msg.records}
    return {msg.group}


def _ip_int(ip: str) -> int:
    return int(ipaddress.IPv4Address(ip))


def save(path: Path, uplink: UplinkListeners, now: float) -> None:
    """Write what the uplink said to ``path`` (atomically); failures are logged, not raised."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(uplink.to_json(now, time.time())))
        os.replace(tmp, path)
    except OSError as e:
        log.warning("cannot save the uplink's listeners to %s: %s", path, e)
        tmp.unlink(missing_ok=True)


def load(path: Path, uplink: UplinkListeners, now: float) -> None:
    """Restore ``uplink`` from ``path`` if there is a readable file (else logged, left empty)."""
    try:
        data = json.loads(path.read_text())
        uplink.restore(now, time.time(), data)
    except FileNotFoundError:
        return
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        log.warning("ignoring the saved uplink listeners %s: %s", path, e)
        return
    log.info("outside listeners of %d groups restored from %s%s",
             len(uplink.outside.groups()), path,
             f"; router {uplink.router} still present" if uplink.router else "")
