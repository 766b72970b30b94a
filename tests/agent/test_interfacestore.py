"""agent.interfacestore: attached pods by container id and by port, listed as operators sort;
which detach means which attachment."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from agent.interfacestore import InterfaceStore, PodAttach, PodInfo


def _pod(ns: str, name: str, cid: str, port: int) -> PodInfo:
    return PodInfo(ns, name, cid, f"mc{port}", f"10.0.0.{port}", "0a:00:00:00:00:01", port)


def test_both_indexes_follow_adds_and_removes() -> None:
    store = InterfaceStore()
    a, b, c = _pod("ns2", "a", "c1", 3), _pod("ns1", "z", "c2", 1), _pod("ns1", "b", "c3", 2)
    for p in (a, b, c):
        store.add(p)
    assert [p.ref for p in store.sorted()] == ["ns1/b", "ns1/z", "ns2/a"]
    assert store.ports() == [1, 2, 3] and store.by_port(3) == a and store.get("c2") == b
    assert store.remove("c1") == a and store.remove("c1") is None
    assert store.by_port(3) is None and store.get("c1") is None and len(store) == 2


def test_interface_name_and_primary_ip_are_optional_keywords() -> None:
    old = _pod("ns", "a", "c1", 7)  # positional, as before: ofport is still the 7th
    assert (old.ofport, old.ifname, old.primary_ip) == (7, "", "")
    new = PodInfo(
        "ns", "a", "c1", "mc7", "10.0.0.7", "0a:00:00:00:00:01", 7, ifname="mc0",
        primary_ip="10.0.0.7",
    )
    assert asdict(new) == {**asdict(old), "ifname": "mc0", "primary_ip": "10.0.0.7"}
    with pytest.raises(TypeError):
        PodAttach("ns", "a", "c1", "mc7", "", "", "mc0")  # type: ignore[misc]


@pytest.mark.parametrize(
    ("attached_as", "detach", "matches"),
    [
        ("mc0", "mc0", True),
        ("mc0", "net1", False),  # another network's DEL: not ours
        ("mc0", "", True),  # a detach that names nothing (an older plugin)
        ("", "net1", True),  # an attachment made without a name (an older plugin)
    ],
)
def test_which_detach_means_this_attachment(attached_as: str, detach: str, matches: bool) -> None:
    pod = PodAttach("ns", "a", "c1", "mc7", "", "", ifname=attached_as)
    assert pod.answers_to(detach) is matches
