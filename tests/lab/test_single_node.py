"""End-to-end tests of issue 3 on a one-node lab: real agent, real OVS, pods through the CNI.

One lab (``mclab up --nodes 1 --query-interval 10s``) is shared by the module; every test makes
its own pods and uses its own groups and ports, so tests do not see each other's traffic.
With a 10 s query interval a membership times out after 2 x 10 + 5 = 25 s without a report.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

import pytest
from conftest import MCPROBE, PYTHON

if TYPE_CHECKING:
    from collections.abc import Callable
    from subprocess import CompletedProcess

    from conftest import Lab

pytestmark = pytest.mark.lab

LAB_OPTIONS = {"nodes": 1, "mode": "encap", "query_interval": "10s"}
NODE = "node1"
N = 20
PPS = 200.0
QUIET_S = 1.0  # after the expected count arrived: how long we watch for extra copies
MEMBERSHIP_TIMEOUT_S = 2 * 10 + 5


def _quiet() -> None:
    time.sleep(QUIET_S)  # absence of traffic can only be watched, not polled


def test_down_with_nothing_up_is_a_noop(
        no_lab: Callable[..., CompletedProcess[str]]) -> None:
    """Runs before the module's lab exists (tests run in file order)."""
    for _ in range(2):
        res = no_lab("down")
        assert res.returncode == 0, res.stderr
        assert res.stderr == "", res.stderr
    assert not no_lab.lab_dir.exists()  # type: ignore[attr-defined]
    status = no_lab("status")
    assert status.returncode == 0 and "no lab is up" in status.stdout


def test_members_receive_exactly_n_others_nothing(lab: Lab) -> None:
    g, g2, port = "239.10.1.1", "239.10.1.2", 5101
    snd = lab.create_pod("t1-snd", NODE)
    r_socat = lab.create_pod("t1-socat", NODE)
    r_py = lab.create_pod("t1-py", NODE)
    non = lab.create_pod("t1-non", NODE)
    other = lab.create_pod("t1-other", NODE)

    socat = lab.start_socat(r_socat, g, port)
    py = lab.start_receiver(r_py, g, port)
    other_rx = lab.start_receiver(other, g2, port)
    sniff_non = lab.start_sniffer(non, g, port)
    sniff_other = lab.start_sniffer(other, g, port)
    sniff_member = lab.start_sniffer(r_py, g, port)  # positive control of the sniffer
    for r in (py, other_rx, sniff_non, sniff_other, sniff_member):
        r.wait_ready()
    lab.wait_members(NODE, g, [r_socat, r_py], exact=True)
    lab.wait_members(NODE, g2, [other], exact=True)

    lab.send(snd, g, port, N, PPS)
    py.wait_count(N)
    socat.wait_count(N)
    _quiet()

    got_py, got_socat = py.stop(), socat.stop()
    got_non, got_other, got_other_g = sniff_non.stop(), sniff_other.stop(), other_rx.stop()
    got_member_l2 = sniff_member.stop()
    assert got_member_l2["n"] == N, f"frames on the member's interface: {got_member_l2}"
    assert got_py["n"] == N and got_py["distinct"] == N, got_py
    assert got_py["sources"] == {snd.ip: N}, got_py
    assert got_socat["n"] == N, got_socat
    assert got_non["n"] == 0, f"non-member got {got_non}"
    assert got_other["n"] == 0, f"member of {g2} got traffic of {g}: {got_other}"
    assert got_other_g["n"] == 0, got_other_g


def test_leave_stops_delivery_and_last_leave_removes_group(lab: Lab) -> None:
    g, port = "239.10.2.1", 5201
    snd = lab.create_pod("t2-snd", NODE)
    a = lab.create_pod("t2-a", NODE)
    b = lab.create_pod("t2-b", NODE)
    rx_a = lab.start_receiver(a, g, port).wait_ready()
    rx_b = lab.start_receiver(b, g, port).wait_ready()
    lab.wait_members(NODE, g, [a, b], exact=True)
    gid = lab.route_group(NODE, g)
    assert gid is not None, f"no route flow nw_dst={g}\n{lab.debug()}"
    assert gid in lab.groups(NODE)

    lab.send(snd, g, port, N, PPS)
    rx_a.wait_count(N)
    rx_b.wait_count(N)

    # a's receiver exits: its kernel sends a leave
    assert rx_a.stop()["n"] == N
    lab.wait_not_members(NODE, g, [a])
    lab.wait_members(NODE, g, [b], exact=True)
    sniff_a = lab.start_sniffer(a, g, port).wait_ready()
    lab.send(snd, g, port, N, PPS)
    rx_b.wait_count(2 * N)
    _quiet()
    assert sniff_a.stop()["n"] == 0, "the pod that left still gets the group's traffic"
    assert rx_b.count() == 2 * N

    # the last member leaves: after the group-specific query (~2 s) flow and group go
    assert rx_b.stop()["n"] == 2 * N
    started = time.monotonic()

    def gone() -> bool:
        return not lab.route_flows(NODE, g) and gid not in lab.groups(NODE)

    lab.wait_for(gone, 10.0, f"flow nw_dst={g} and group {gid} to be removed")
    took = time.monotonic() - started
    assert g not in {k for k, v in lab.members(NODE).items() if v}, lab.members(NODE)
    print(f"last leave -> flow and group removed after {took:.2f}s")


def test_deleted_pod_leaves_no_bucket(lab: Lab) -> None:
    g, port = "239.10.3.1", 5301
    gone_pod = lab.create_pod("t3-gone", NODE)
    stays = lab.create_pod("t3-stays", NODE)
    lab.start_receiver(gone_pod, g, port).wait_ready()
    lab.start_receiver(stays, g, port).wait_ready()
    lab.wait_members(NODE, g, [gone_pod, stays], exact=True)
    ports = lab.pod_ports(NODE)
    p_gone, p_stays = ports[gone_pod.ref], ports[stays.ref]

    gid = lab.route_group(NODE, g)
    assert gid is not None, lab.debug()
    in_group = lab.group_ports(NODE, gid)
    assert {p_gone, p_stays} <= in_group, f"ports {p_gone},{p_stays} not in group {gid}"

    # Deleted while its receiver is still joined (the runtime kills containers and calls
    # CNI DEL; the interface goes away with the pod, so no leave reaches the switch).
    lab.delete_pod(gone_pod)

    def no_bucket() -> bool:
        groups = lab.groups(NODE)
        used = {p for gid in groups for p in lab.group_ports(NODE, gid, groups)}
        return p_gone not in used and gone_pod.ref not in lab.members(NODE).get(g, [])

    lab.wait_for(no_bucket, 10.0, f"port {p_gone} of the deleted pod to leave every bucket")
    lab.wait_members(NODE, g, [stays], exact=True)
    gid_after = lab.route_group(NODE, g)
    assert gid_after is not None
    assert p_stays in lab.group_ports(NODE, gid_after)


def test_igmp_v1_v2_v3_reports_make_members(lab: Lab) -> None:
    g, port = "239.10.4.1", 5401
    snd = lab.create_pod("t4-snd", NODE)
    pods = {v: lab.create_pod(f"t4-v{v}", NODE) for v in (1, 2, 3)}
    for v, pod in pods.items():
        lab.exec(pod, "sysctl", "-w", f"net.ipv4.conf.{pod.iface}.force_igmp_version={v}")
    rxs = {v: lab.start_receiver(pod, g, port).wait_ready() for v, pod in pods.items()}
    for v, pod in pods.items():
        igmp = lab.exec(pod, "cat", "/proc/net/igmp").stdout
        assert re.search(rf"\b{pod.iface}\s*:\s*\d+\s+V{v}\b", igmp), f"v{v} not forced:\n{igmp}"
    lab.wait_members(NODE, g, list(pods.values()), exact=True)

    lab.send(snd, g, port, N, PPS)
    for rx in rxs.values():
        rx.wait_count(N)
    _quiet()
    for v, rx in rxs.items():
        got = rx.stop()
        assert got["n"] == N, f"IGMPv{v} member: {got}"


@pytest.mark.timeout(150)
def test_queries_refresh_members_and_silent_member_ages_out(lab: Lab) -> None:
    g_live, g_silent, port = "239.10.5.1", "239.10.5.2", 5501
    snd = lab.create_pod("t5-snd", NODE)
    live = lab.create_pod("t5-live", NODE)
    silent = lab.create_pod("t5-silent", NODE)
    watcher = lab.create_pod("t5-tcpdump", NODE)

    tcpdump = lab.popen(watcher, "timeout", "30", "tcpdump", "-i", watcher.iface, "-n", "-l",
                        "-c", "1", "igmp and dst 224.0.0.1")
    rx = lab.start_receiver(live, g_live, port).wait_ready()
    joined = time.monotonic()
    lab.wait_members(NODE, g_live, [live], exact=True)

    lab.forge_v2_report(silent, g_silent)
    forged = time.monotonic()
    lab.wait_members(NODE, g_silent, [silent], exact=True, timeout=5.0)
    # the pod's kernel is not joined: it must not answer queries for g_silent
    assert "02050AEF" not in lab.exec(silent, "cat", "/proc/net/igmp").stdout.upper()

    # Until the silent member ages out and 35 s have passed, the live member must stay listed.
    gone_after: float | None = None
    deadline = max(joined + 35.0, forged + MEMBERSHIP_TIMEOUT_S + 12.0)
    while time.monotonic() < deadline:
        members = lab.members(NODE)
        assert live.ref in members.get(g_live, []), (
            f"live member dropped after {time.monotonic() - joined:.1f}s\n{lab.debug()}")
        if gone_after is None and silent.ref not in members.get(g_silent, []):
            gone_after = time.monotonic() - forged
        time.sleep(0.5)
    assert time.monotonic() - joined >= 35.0

    out, err = tcpdump.communicate(timeout=35)
    assert tcpdump.returncode == 0 and "igmp query" in out, (
        f"no general query seen in a pod within 30 s: rc {tcpdump.returncode} {out!r} {err!r}")

    assert gone_after is not None, f"silent member still listed {deadline - forged:.0f}s later"
    assert MEMBERSHIP_TIMEOUT_S - 1.0 <= gone_after <= MEMBERSHIP_TIMEOUT_S + 10.0, (
        f"silent member aged out after {gone_after:.1f}s, expected 25-35 s")
    print(f"silent member aged out after {gone_after:.1f}s")

    lab.send(snd, g_live, port, N, PPS)
    rx.wait_count(N)
    assert rx.stop()["n"] == N


def test_dump_flows_names_tables_and_group_flow(lab: Lab) -> None:
    g, port = "239.10.6.1", 5601
    pod = lab.create_pod("t6-rx", NODE)
    lab.start_receiver(pod, g, port).wait_ready()
    lab.wait_members(NODE, g, [pod], exact=True)
    dump = lab.ofctl(NODE, "dump-flows", "--names", "br-int")
    flows = [ln for ln in dump.splitlines() if "table=" in ln or "actions=" in ln]
    assert flows, dump
    numbered = [ln for ln in flows if re.search(r"\btable=\d+", ln)]
    assert not numbered, "tables without a name:\n" + "\n".join(numbered)
    assert "table=MulticastRouting" in dump, dump
    per_group = [ln for ln in flows if re.search(rf"nw_dst={re.escape(g)}(?![\d/])", ln)]
    assert len(per_group) == 1, dump
    assert "table=MulticastRouting" in per_group[0] and "group:" in per_group[0], per_group


def test_podmulticaststats(lab: Lab) -> None:
    g, port = "239.10.7.1", 5701
    snd = lab.create_pod("t7-snd", NODE)
    rcv = lab.create_pod("t7-rcv", NODE)
    rx = lab.start_receiver(rcv, g, port).wait_ready()
    lab.wait_members(NODE, g, [rcv], exact=True)
    lab.send(snd, g, port, N, PPS)
    rx.wait_count(N)

    def counts() -> dict[str, dict[str, int]] | None:
        rows = {f"{r['namespace']}/{r['name']}": r
                for r in lab.mcctl_json(NODE, "podmulticaststats")}
        ok = (rows.get(snd.ref, {}).get("outbound", 0) >= N
              and rows.get(rcv.ref, {}).get("inbound", 0) >= N)
        return rows if ok else None

    rows = lab.wait_for(counts, 10.0, "sender OUTBOUND and receiver INBOUND to reach N "
                    "(OVS pushes flow stats about once a second)")
    assert rows[snd.ref]["inbound"] == 0 and rows[rcv.ref]["outbound"] == 0, rows

    table = lab.mcctl("--node", NODE, "get", "podmulticaststats").stdout.splitlines()
    assert table[0].split() == ["NAMESPACE", "NAME", "INBOUND", "OUTBOUND"], table[0]
    listed = {tuple(ln.split()[:2]) for ln in table[1:] if ln.strip()}
    ours = {(p["namespace"], p["name"]) for p in lab.state()["pods"] if p["node"] == NODE}
    assert ours <= listed, f"pods missing from podmulticaststats: {ours - listed}"
    by_name = {tuple(ln.split()[:2]): ln.split() for ln in table[1:] if ln.strip()}
    assert int(by_name[("default", "t7-snd")][3]) >= N
    assert int(by_name[("default", "t7-rcv")][2]) >= N

    one = lab.mcctl("--node", NODE, "get", "podmulticaststats", "t7-snd", "-n", "default")
    assert [ln.split()[:2] for ln in one.stdout.splitlines()[1:]] == [["default", "t7-snd"]]
    no_ns = lab.mcctl("--node", NODE, "get", "podmulticaststats", "t7-snd", check=False)
    assert no_ns.returncode != 0 and "namespace" in no_ns.stderr.lower(), no_ns
    unknown = lab.mcctl("--node", NODE, "get", "podmulticaststats", "nosuchpod", "-n",
                        "default", check=False)
    assert unknown.returncode != 0 and "not found" in unknown.stderr, unknown
    rx.stop()


def test_up_twice_is_an_error(lab: Lab) -> None:
    again = lab.mclab("up", "--nodes", "1", check=False)
    assert again.returncode != 0 and "already up" in again.stderr, again
    elsewhere = lab.mclab("up", "--nodes", "1", check=False,
                          env={"MCLAB_DIR": f"{lab.dir}-other"})
    assert elsewhere.returncode != 0 and "already up" in elsewhere.stderr, elsewhere
    # the lab that is up is untouched
    status = lab.mclab("status").stdout
    assert re.search(rf"^{NODE}\s+\S+\s+\d+\s+ok", status, re.M), status


def test_exec_passes_exit_code_through(lab: Lab) -> None:
    pod = lab.create_pod("t9-exec", NODE)
    assert lab.exec(pod, "sh", "-c", "exit 7", check=False).returncode == 7
    assert lab.exec(pod, "true").returncode == 0
    ip = lab.exec(pod, "ip", "-4", "-o", "addr", "show", pod.iface).stdout
    assert pod.ip in ip, ip  # it really runs inside the pod


def test_agent_restart_swaps_rounds_without_a_traffic_gap(lab: Lab) -> None:
    """A new agent installs its round over the old one's flows and deletes the old round:
    a stream that runs through the restart loses nothing, and pods stay members."""
    g, port, count, pps = "239.10.9.1", 5109, 1200, 200.0
    snd = lab.create_pod("t9-snd", NODE)
    rcv = lab.create_pod("t9-rcv", NODE)
    rx = lab.start_receiver(rcv, g, port)
    rx.wait_ready()
    lab.wait_members(NODE, g, [rcv], exact=True)

    def rounds() -> set[int]:
        dump = lab.ofctl(NODE, "dump-flows", "br-int")
        return {int(c, 16) >> 48 for c in re.findall(r"cookie=(0x[0-9a-f]+)", dump)}

    (before,) = rounds()
    sender = lab.popen(snd, PYTHON, MCPROBE, "send", g, str(port), "--count",
                       str(count), "--pps", str(pps))
    time.sleep(1.0)  # the stream is flowing when the agent goes away
    lab.mclab("agent", "restart", NODE)
    assert sender.wait(timeout=count / pps + 30) == 0, sender.stderr.read()
    rx.wait_count(count, timeout=15)
    _quiet()
    got = rx.stop()
    assert got["n"] == count and got["distinct"] == count, got
    assert rounds() == {before + 1}  # new round in, old round out
    lab.wait_members(NODE, g, [rcv], exact=True)


def test_igmpv3_source_specific_join_filters_on_the_wire(lab: Lab) -> None:
    """A pod that joins (S1, G) gets no frame from S2 on its interface; a (*, G) member gets
    both. (The sniffer counts at the interface, below the pod kernel's own socket filter.)"""
    g, port = "239.10.10.1", 5110
    s1 = lab.create_pod("t10-s1", NODE)
    s2 = lab.create_pod("t10-s2", NODE)
    ssm = lab.create_pod("t10-ssm", NODE)
    anysrc = lab.create_pod("t10-any", NODE)
    rx_ssm = lab.start_receiver(ssm, g, port, source=s1.ip)
    rx_any = lab.start_receiver(anysrc, g, port)
    wire = lab.start_sniffer(ssm, g, port)
    for r in (rx_ssm, rx_any, wire):
        r.wait_ready()
    lab.wait_members(NODE, g, [ssm, anysrc], exact=True)
    lab.send(s1, g, port, N, PPS)
    lab.send(s2, g, port, N, PPS)
    rx_any.wait_count(2 * N)
    _quiet()
    got_wire, got_ssm, got_any = wire.stop(), rx_ssm.stop(), rx_any.stop()
    assert got_any["sources"] == {s1.ip: N, s2.ip: N}, got_any
    assert got_ssm["sources"] == {s1.ip: N}, got_ssm
    assert got_wire["n"] == N and got_wire["sources"] == {s1.ip: N}, got_wire
