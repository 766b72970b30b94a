"""agent.interfacestore: attached pods by container id and by port, listed as operators sort."""

from __future__ import annotations

from agent.interfacestore import InterfaceStore, PodInfo


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
