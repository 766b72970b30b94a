"""wire.members: an agent's membership report, both ways, and what it refuses."""

from __future__ import annotations

import pytest

from wire.members import GroupReport, MemberPod, groups_from_json, groups_to_json
from wire.nodes import WireError


def test_round_trip() -> None:
    groups = [GroupReport("239.1.1.1", (MemberPod("default", "a"),
                                        MemberPod("prod", "b", "include", ("10.0.0.1",
                                                                           "10.0.0.9")))),
              GroupReport("224.0.1.5", ())]
    body = groups_to_json(groups)
    assert body == {"groups": [
        {"group": "239.1.1.1", "pods": [
            {"namespace": "default", "name": "a", "mode": "exclude", "sources": []},
            {"namespace": "prod", "name": "b", "mode": "include",
             "sources": ["10.0.0.1", "10.0.0.9"]}]},
        {"group": "224.0.1.5", "pods": []}]}
    assert groups_from_json(body) == groups
    assert groups[0].pods[1].ref == "prod/b"


def test_defaults_and_normal_forms() -> None:
    parsed = groups_from_json({"groups": [{"group": "239.1.1.1", "pods": [
        {"namespace": "z", "name": "late", "sources": ["10.0.0.9", "10.0.0.1"]},
        {"namespace": "a", "name": "early"}]}]})
    assert parsed == [GroupReport("239.1.1.1", (
        MemberPod("a", "early", "exclude", ()),  # no mode: a plain any-source join
        MemberPod("z", "late", "exclude", ("10.0.0.1", "10.0.0.9"))))]  # pods, sources sorted
    assert groups_from_json({"groups": []}) == []


@pytest.mark.parametrize(("body", "where"), [
    (None, '{"groups"'),
    ({"groups": {}}, '{"groups"'),
    ({"groups": ["239.1.1.1"]}, "groups[0]: expected an object"),
    ({"groups": [{"group": "10.0.0.1", "pods": []}]},
     "groups[0].group: 10.0.0.1 is not a multicast address"),
    ({"groups": [{"group": "ff02::1", "pods": []}]}, "groups[0].group: 'ff02::1' is not"),
    ({"groups": [{"pods": []}]}, "groups[0].group: None is not an IPv4 address"),
    ({"groups": [{"group": "239.1.1.1"}]}, "groups[0].pods: expected a list"),
    ({"groups": [{"group": "239.1.1.1", "pods": ["a/b"]}]},
     "groups[0].pods[0]: expected an object"),
    ({"groups": [{"group": "239.1.1.1", "pods": [{"namespace": "a"}]}]},
     "groups[0].pods[0].name: expected a non-empty string"),
    ({"groups": [{"group": "239.1.1.1", "pods": [{"namespace": "", "name": "b"}]}]},
     "groups[0].pods[0].namespace: expected a non-empty string"),
    ({"groups": [{"group": "239.1.1.1", "pods": [
        {"namespace": "a", "name": "b"}, {"namespace": "a", "name": "c", "mode": "allow"}]}]},
     "groups[0].pods[1].mode: 'allow' is not one of include, exclude"),
    ({"groups": [{"group": "239.1.1.1", "pods": [
        {"namespace": "a", "name": "b", "sources": "10.0.0.1"}]}]},
     "groups[0].pods[0].sources: expected a list"),
    ({"groups": [{"group": "239.1.1.1", "pods": []}, {"group": "239.1.1.2", "pods": [
        {"namespace": "a", "name": "b", "sources": ["10.0.0.300"]}]}]},
     "groups[1].pods[0].sources: '10.0.0.300' is not an IPv4 address"),
])
def test_refused_with_the_field_named(body: object, where: str) -> None:
    with pytest.raises(WireError) as exc:
        groups_from_json(body)
    assert where in str(exc.value)


def test_a_wire_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        groups_from_json({"groups": [{"group": "1.2.3.4", "pods": []}]})
