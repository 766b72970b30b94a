"""Conformance of the lab API server (tools/kubeapi: kmock's KubernetesEmulator and our layer)
with what its users need from a Kubernetes API: the real kubectl (/usr/bin/kubectl, 1.32 on the
machine image; tools/install.sh makes sure one exists) and the official Python client.

The server runs as a subprocess on a free port of 127.0.0.1 (one for the module; two tests
start their own), always torn down. A kmock upgrade that breaks the layer fails here.
KUBECTL=/path/to/kubectl runs the kubectl tests with another version (1.20 and 1.27-1.33 pass).
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from tools.kubeapi.emulator import LabUser
from tools.kubeapi.server import ApiServerProcess, kubeconfig, parse_tokens, spawn

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "manifests" / "multicastgroup-crd.yaml"
GROUP, VERSION, PLURAL = "multicast.kube-mcast.io", "v1alpha1", "multicastgroups"
TOKENS = {"admin": "admin-token", "system:node:node1": "node1-token"}
AGENT_SA = "system:serviceaccount:kube-mcast:kube-mcast-agent"
# service-account tokens bound to a pod on a node (what a projected token is from 1.30 on)
BOUND_TOKENS = [f"{AGENT_SA}=agent-node1-token;node=node1",
                f"{AGENT_SA}=agent-node2-token;node=node2"]


def _kubectl_binary() -> str:
    """$KUBECTL (to try another version), else /usr/bin/kubectl, else the one on PATH."""
    found = os.environ.get("KUBECTL") or (
        "/usr/bin/kubectl" if os.access("/usr/bin/kubectl", os.X_OK) else shutil.which("kubectl"))
    if not found:
        pytest.fail("no kubectl: run tools/install.sh", pytrace=False)
    return found


@dataclass
class Api:
    server: ApiServerProcess
    work: Path

    @property
    def url(self) -> str:
        return self.server.url

    def kubeconfig(self, token: str | None = "admin-token", name: str = "admin") -> Path:
        return kubeconfig(self.url, token, self.work / f"{name}.kubeconfig")

    def kubectl(self, *args: str, check: bool = True, token: str | None = "admin-token",
                stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.work / "home"),
               "KUBECONFIG": str(self.kubeconfig(token, f"kubectl-{token}"))}
        done = subprocess.run([_kubectl_binary(), "--cache-dir", str(self.work / "cache"), *args],
                              env=env, input=stdin, capture_output=True, text=True, timeout=30)
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {done.stderr}")
        return done

    def patch_status(self, name: str, status: dict[str, Any]) -> None:
        """A MulticastGroup's status: `kubectl patch --subresource=status` (kubectl >= 1.24);
        with an older kubectl (Debian's is 1.20), through the official client."""
        version = json.loads(self.kubectl("version", "--client", "-o", "json").stdout)
        if int("".join(c for c in version["clientVersion"]["minor"] if c.isdigit())) >= 24:
            out = self.kubectl("patch", "mcg", name, "--subresource=status", "--type=merge",
                               "-p", json.dumps({"status": status})).stdout
            assert "patched" in out
        else:
            client.CustomObjectsApi(self.client()).patch_cluster_custom_object_status(
                GROUP, VERSION, PLURAL, name, {"status": status})

    def client(self, token: str | None = "admin-token") -> client.ApiClient:
        return config.new_client_from_config(config_file=str(self.kubeconfig(token, "py")))

    def http(self, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(
            self.url + path, method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": "Bearer admin-token", "Content-Type": "application/json",
                     **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    work = tmp_path_factory.mktemp("kubeapi")
    server = spawn(work, tokens=TOKENS, token_lines=BOUND_TOKENS)
    try:
        yield Api(server, work)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def crd(api: Api) -> tuple[str, str]:
    applied = api.kubectl("apply", "-f", str(CRD_FILE)).stdout
    waited = api.kubectl("wait", "--for", "condition=established", "--timeout=10s",
                         f"crd/{PLURAL}.{GROUP}").stdout
    return applied, waited


def _namespace(api: Api, name: str) -> str:
    api.kubectl("create", "namespace", name)
    return name


def _pod(name: str, ns: str, node: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}}


def _rows(out: str) -> list[list[str]]:
    return [line.split() for line in out.strip().splitlines()]


# -- kubectl ----------------------------------------------------------------------------------


def test_kubectl_applies_the_crd_and_waits_until_established(api: Api,
                                                             crd: tuple[str, str]) -> None:
    applied, waited = crd
    assert f"customresourcedefinition.apiextensions.k8s.io/{PLURAL}.{GROUP} created" in applied
    assert "condition met" in waited
    assert f"{PLURAL}.{GROUP}" in api.kubectl("get", "crd").stdout
    resources = api.kubectl("api-resources", "--api-group", GROUP).stdout
    assert _rows(resources)[1] == [PLURAL, "mcg", f"{GROUP}/{VERSION}", "false", "MulticastGroup"]


def test_kubectl_namespaces_nodes_pods_and_selectors(api: Api) -> None:
    _namespace(api, "prod")
    assert "namespace/prod labeled" in api.kubectl("label", "namespace", "prod", "team=blue").stdout
    assert api.kubectl("get", "ns", "-l", "team=blue", "-o", "name").stdout.split() == [
        "namespace/prod"]
    nodes = [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}, "status": {
        "addresses": [{"type": "InternalIP", "address": ip}],
        "conditions": [{"type": "Ready", "status": "True"}]}}
        for n, ip in (("node1", "192.168.77.1"), ("node2", "192.168.77.2"))]
    pods = [_pod("reader", "prod", "node1", app="mc", role="reader"),
            _pod("mcjoin", "default", "node2", app="mc", role="sender"),
            _pod("other", "prod", "node2", app="web")]
    manifest = yaml.safe_dump_all(nodes + pods)
    out = api.kubectl("apply", "-f", "-", stdin=manifest).stdout
    assert "node/node1 created" in out and "pod/reader created" in out
    wide = _rows(api.kubectl("get", "nodes", "-o", "wide").stdout)
    assert wide[0][:6] == ["NAME", "STATUS", "ROLES", "AGE", "VERSION", "INTERNAL-IP"]
    assert [r[0] for r in wide[1:]] == ["node1", "node2"] and wide[1][1] == "Ready"
    assert "192.168.77.1" in wide[1]
    labelled = _rows(api.kubectl("get", "pods", "-A", "-l", "app=mc").stdout)
    assert labelled[0][:3] == ["NAMESPACE", "NAME", "READY"]
    assert [(r[0], r[1]) for r in labelled[1:]] == [("default", "mcjoin"), ("prod", "reader")]
    assert [r[1] for r in _rows(api.kubectl("get", "pods", "-A", "-l", "app=mc,role!=reader")
                                .stdout)[1:]] == ["mcjoin"]
    on_node1 = _rows(api.kubectl("get", "pods", "-A", "--field-selector", "spec.nodeName=node1",
                                 "-o", "wide").stdout)
    assert on_node1[0] == ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP",
                           "NODE", "NOMINATED", "NODE", "READINESS", "GATES"]
    assert len(on_node1) == 2
    assert on_node1[1][:5] + on_node1[1][6:] == ["prod", "reader", "0/1", "Pending", "0",
                                                 "<none>", "node1", "<none>", "<none>"]
    bad = api.kubectl("get", "pods", "--field-selector", "spec.bogus=1", check=False)
    assert bad.returncode != 0 and "field label not supported" in bad.stderr
    # `kubectl create <kind>` sends protobuf (kubectl >= 1.2x; 1.20 sends JSON): understood for
    # metadata-only objects (namespaces, above), refused rather than cut short for anything more
    made = api.kubectl("create", "configmap", "cm", "--from-literal=a=b", check=False)
    if made.returncode == 0:
        assert api.kubectl("get", "configmap", "cm", "-o", "jsonpath={.data.a}").stdout == "b"
    else:
        assert "protobuf bodies are understood only" in made.stderr


def test_kubectl_multicastgroups_print_group_and_pods(api: Api, crd: tuple[str, str]) -> None:
    group = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "MulticastGroup",
             "metadata": {"name": "225.1.2.3"}, "status": {"group": "ignored on create"}}
    api.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(group))
    assert api.kubectl("get", "mcg", "225.1.2.3", "-o", "jsonpath={.status}").stdout == ""
    status = {"status": {"group": "225.1.2.3", "podsSummary": "default/mcjoin, prod/reader"}}
    api.patch_status("225.1.2.3", status["status"])
    lines = api.kubectl("get", "multicastgroups").stdout.splitlines()
    assert lines[0].split() == ["NAME", "GROUP", "PODS", "AGE"]
    name, grp, rest = lines[1].split(None, 2)
    assert (name, grp) == ("225.1.2.3", "225.1.2.3")
    assert re.fullmatch(r"default/mcjoin, prod/reader\s+\d+s", rest), rest
    api.kubectl("label", "mcg", "225.1.2.3", "owner=test")  # a main-resource write...
    got = json.loads(api.kubectl("get", "mcg", "225.1.2.3", "-o", "json").stdout)
    assert got["status"] == status["status"]  # ...leaves the status alone
    assert got["metadata"]["labels"] == {"owner": "test"}
    wide = api.kubectl("get", "mcg", "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "GROUP", "PODS", "AGE"]


def test_kubectl_get_watch_sees_a_live_update(api: Api, crd: tuple[str, str]) -> None:
    group = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "MulticastGroup",
             "metadata": {"name": "224.5.6.4"}}
    api.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(group))
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(api.work / "home"),
           "KUBECONFIG": str(api.kubeconfig())}
    proc = subprocess.Popen([_kubectl_binary(), "--cache-dir", str(api.work / "cache"), "get",
                             "mcg", "224.5.6.4", "-w"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout],  # type: ignore[union-attr]
                     daemon=True).start()
    try:
        assert lines.get(timeout=10).split() == ["NAME", "GROUP", "PODS", "AGE"]
        assert lines.get(timeout=10).split()[:1] == ["224.5.6.4"]  # no status yet: empty cells
        api.patch_status("224.5.6.4", {"group": "224.5.6.4", "podsSummary": "default/a"})
        assert lines.get(timeout=10).split()[:3] == ["224.5.6.4", "224.5.6.4", "default/a"]
    finally:
        proc.terminate()
        proc.wait(5)


def test_kubectl_replace_conflicts_on_a_stale_resource_version(api: Api,
                                                               crd: tuple[str, str]) -> None:
    group = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "MulticastGroup",
             "metadata": {"name": "239.0.0.1"}}
    api.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(group))
    stale = api.kubectl("get", "mcg", "239.0.0.1", "-o", "yaml").stdout
    api.kubectl("label", "mcg", "239.0.0.1", "changed=yes")
    refused = api.kubectl("replace", "-f", "-", stdin=stale, check=False)
    assert refused.returncode != 0
    assert "Conflict" in refused.stderr and "the object has been modified" in refused.stderr
    fresh = api.kubectl("get", "mcg", "239.0.0.1", "-o", "yaml").stdout
    assert "replaced" in api.kubectl("replace", "-f", "-", stdin=fresh).stdout


def test_kubectl_delete(api: Api) -> None:
    _namespace(api, "doomed")
    api.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(
        [_pod("p1", "doomed", "node1"), _pod("p2", "doomed", "node1")]))
    assert 'pod "p1" deleted' in api.kubectl("delete", "pod", "-n", "doomed", "p1").stdout
    gone = api.kubectl("get", "pod", "-n", "doomed", "p1", check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr
    assert 'namespace "doomed" deleted' in api.kubectl("delete", "namespace", "doomed").stdout
    assert api.kubectl("get", "pods", "-A", "--field-selector",
                       "metadata.namespace=doomed", "-o", "name").stdout.strip() == ""


def test_kubectl_sends_no_token_over_plain_http_and_is_anonymous(api: Api) -> None:
    # client-go reads credentials only for TLS: over plain HTTP kubectl is anonymous, allowed
    # as by kube-apiserver's default --anonymous-auth=true (a wrong token: see the TLS test)
    assert "namespace/default" in api.kubectl("get", "namespaces", "-o", "name",
                                              token="not-a-token").stdout


# -- the official Python client ---------------------------------------------------------------


def _names(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["type"], e["object"].metadata.name) for e in events]


def _take(stream: Iterator[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    return [next(stream) for _ in range(count)]


def test_client_watch_from_the_list_version_neither_replays_nor_loses(api: Api) -> None:
    v1 = client.CoreV1Api(api.client())
    _namespace(api, "w1")
    for name in ("old1", "old2"):
        v1.create_namespaced_pod("w1", _pod(name, "w1", "node1"))
    listed = v1.list_namespaced_pod("w1")
    assert listed.kind == "PodList" and int(listed.metadata.resource_version) > 0
    assert {p.metadata.name for p in listed.items} == {"old1", "old2"}
    v1.create_namespaced_pod("w1", _pod("new1", "w1", "node1"))  # after the list, before watch
    w = watch.Watch()
    stream = w.stream(v1.list_namespaced_pod, "w1", timeout_seconds=10,
                      resource_version=listed.metadata.resource_version)
    assert _names(_take(stream, 1)) == [("ADDED", "new1")]
    v1.patch_namespaced_pod("old1", "w1", {"metadata": {"labels": {"x": "1"}}})
    v1.delete_namespaced_pod("old2", "w1")
    events = _take(stream, 2)
    assert _names(events) == [("MODIFIED", "old1"), ("DELETED", "old2")]
    versions = [int(e["object"].metadata.resource_version) for e in events]
    assert versions == sorted(versions) and versions[0] > int(listed.metadata.resource_version)
    w.stop()


def test_client_watch_resumes_after_a_dropped_connection(api: Api) -> None:
    v1 = client.CoreV1Api(api.client())
    _namespace(api, "w2")
    v1.create_namespaced_pod("w2", _pod("a", "w2", "node1"))
    start = v1.list_namespaced_pod("w2").metadata.resource_version
    w = watch.Watch()
    stream = w.stream(v1.list_namespaced_pod, "w2", resource_version=start, timeout_seconds=10)
    v1.create_namespaced_pod("w2", _pod("b", "w2", "node1"))
    seen = _take(stream, 1)
    assert api.http("POST", "/kubeapi/drop-watches")[0] == 200
    v1.create_namespaced_pod("w2", _pod("c", "w2", "node1"))  # while nobody watches
    v1.delete_namespaced_pod("a", "w2")
    with pytest.raises(Exception):  # noqa: B017 - urllib3 says ProtocolError, or an IncompleteRead
        while True:
            seen.append(next(stream))
    resumed = watch.Watch()
    seen += _take(resumed.stream(v1.list_namespaced_pod, "w2", timeout_seconds=10,
                                 resource_version=w.resource_version), 3 - len(seen))
    resumed.stop()
    assert _names(seen) == [("ADDED", "b"), ("ADDED", "c"), ("DELETED", "a")]


def test_client_gets_410_after_compaction_and_relists(api: Api) -> None:
    v1 = client.CoreV1Api(api.client())
    _namespace(api, "w3")
    old = v1.list_namespaced_pod("w3").metadata.resource_version
    v1.create_namespaced_pod("w3", _pod("x", "w3", "node1"))
    status, _, body = api.http("POST", "/kubeapi/compact")
    assert status == 200 and int(json.loads(body)["compactedResourceVersion"]) > int(old)
    with pytest.raises(ApiException) as gone:  # as the ERROR event of a watch, like a real one
        next(watch.Watch().stream(v1.list_namespaced_pod, "w3", resource_version=old,
                                  timeout_seconds=5))
    assert gone.value.status == 410 and "Expired" in str(gone.value.reason)
    with pytest.raises(ApiException) as again:  # the client retries once by itself: 410 again
        next(watch.Watch().stream(v1.list_namespaced_pod, "w3", resource_version=old))
    assert again.value.status == 410
    relisted = v1.list_namespaced_pod("w3")
    assert [p.metadata.name for p in relisted.items] == ["x"]
    w = watch.Watch()
    stream = w.stream(v1.list_namespaced_pod, "w3", timeout_seconds=10,
                      resource_version=relisted.metadata.resource_version)
    v1.create_namespaced_pod("w3", _pod("y", "w3", "node1"))
    assert _names(_take(stream, 1)) == [("ADDED", "y")]
    w.stop()


def test_client_label_and_field_selectors(api: Api) -> None:
    v1 = client.CoreV1Api(api.client())
    _namespace(api, "sel")
    for pod in (_pod("sa", "sel", "node1", app="web", tier="x"),
                _pod("sb", "sel", "node2", app="web", tier="y"),
                _pod("sc", "sel", "node1", app="db")):
        v1.create_namespaced_pod("sel", pod)

    def names(**kwargs: str) -> list[str]:
        return [p.metadata.name for p in v1.list_namespaced_pod("sel", **kwargs).items]

    assert names(label_selector="app=web") == ["sa", "sb"]
    assert names(label_selector="app=web,tier in (y,z)") == ["sb"]
    assert names(label_selector="app!=web") == ["sc"]
    assert names(label_selector="tier") == ["sa", "sb"]
    assert names(label_selector="!tier") == ["sc"]
    assert names(label_selector="tier notin (x)") == ["sb", "sc"]
    assert names(field_selector="spec.nodeName=node1") == ["sa", "sc"]
    assert names(field_selector="spec.nodeName=node1,metadata.name!=sa") == ["sc"]
    assert names(field_selector="metadata.namespace=sel", label_selector="app=db") == ["sc"]
    everywhere = v1.list_pod_for_all_namespaces(field_selector="metadata.name=sc").items
    assert [(p.metadata.namespace, p.metadata.name) for p in everywhere] == [("sel", "sc")]
    with pytest.raises(ApiException) as bad:
        names(field_selector="spec.image=busybox")
    assert bad.value.status == 400
    listed = v1.list_namespaced_pod("sel", label_selector="app=web")
    w = watch.Watch()
    stream = w.stream(v1.list_namespaced_pod, "sel", label_selector="app=web", timeout_seconds=10,
                      resource_version=listed.metadata.resource_version)
    v1.patch_namespaced_pod("sc", "sel", {"metadata": {"labels": {"app": "web"}}})  # enters
    v1.patch_namespaced_pod("sa", "sel", {"metadata": {"labels": {"app": "db"}}})  # leaves
    v1.patch_namespaced_pod("sb", "sel", {"metadata": {"labels": {"tier": "z"}}})  # stays
    assert _names(_take(stream, 3)) == [("ADDED", "sc"), ("DELETED", "sa"), ("MODIFIED", "sb")]
    w.stop()


def test_client_token_review(api: Api) -> None:
    auth = client.AuthenticationV1Api(api.client())

    def review(token: str) -> Any:
        return auth.create_token_review(
            client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token))).status

    node = review("node1-token")
    assert node.authenticated and node.user.username == "system:node:node1"
    assert "system:nodes" in node.user.groups
    assert review("admin-token").user.username == "admin"
    assert not review("admin-token").user.extra
    assert not review("forged-token").authenticated
    # a service account's token bound to a pod: its node in extra, as Kubernetes >= 1.30
    for n in ("node1", "node2"):
        bound = review(f"agent-{n}-token")
        assert bound.authenticated and bound.user.username == AGENT_SA
        assert bound.user.extra == {"authentication.kubernetes.io/node-name": [n]}
        assert bound.user.groups == ["system:serviceaccounts",
                                     "system:serviceaccounts:kube-mcast", "system:authenticated"]


def test_bound_tokens_authenticate_requests_and_their_syntax_is_checked(api: Api) -> None:
    v1 = client.CoreV1Api(api.client("agent-node2-token"))
    assert "default" in [n.metadata.name for n in v1.list_namespace().items]
    assert parse_tokens(["a=t1", "sa=t2;node=n1", " sa = t3 ; node = n2 "]) == {
        "t1": LabUser("a"), "t2": LabUser("sa", "n1"), "t3": LabUser("sa", "n2")}
    for bad in ("a=t;nod=n1", "a=t;node=", "a=t;node", "=t;node=n", "a=;node=n"):
        with pytest.raises(ValueError, match="NAME=TOKEN"):
            parse_tokens([bad])


def test_client_with_a_wrong_token_is_401(api: Api) -> None:
    with pytest.raises(ApiException) as refused:
        client.CoreV1Api(api.client("forged-token")).list_namespace()
    assert refused.value.status == 401
    for token in (None, "node1-token"):  # anonymous, or a node's own token
        v1 = client.CoreV1Api(api.client(token))
        names = [n.metadata.name for n in v1.list_namespace().items]
        assert "default" in names
    with urllib.request.urlopen(api.url + "/healthz", timeout=5) as health:
        assert health.read() == b"ok"


def test_client_status_subresource_put_conflicts_and_patches(api: Api,
                                                             crd: tuple[str, str]) -> None:
    custom = client.CustomObjectsApi(api.client())
    args = (GROUP, VERSION, PLURAL)
    made = custom.create_cluster_custom_object(*args, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "MulticastGroup",
        "metadata": {"name": "239.1.1.1"}, "status": {"group": "dropped"}})
    assert "status" not in made and made["metadata"]["generation"] == 1 and made["metadata"]["uid"]
    rv = int(made["metadata"]["resourceVersion"])
    status = custom.patch_cluster_custom_object_status(*args, "239.1.1.1", {
        "status": {"group": "239.1.1.1"}, "metadata": {"labels": {"ignored": "yes"}}})
    assert status["status"] == {"group": "239.1.1.1"} and "labels" not in status["metadata"]
    assert int(status["metadata"]["resourceVersion"]) > rv
    main = custom.patch_cluster_custom_object(*args, "239.1.1.1", {
        "metadata": {"labels": {"k": "v"}}, "status": {"group": "ignored"}})
    assert main["status"] == {"group": "239.1.1.1"} and main["metadata"]["labels"] == {"k": "v"}
    same = custom.patch_cluster_custom_object(*args, "239.1.1.1", {"metadata": {"labels": {}}})
    assert same["metadata"]["resourceVersion"] == main["metadata"]["resourceVersion"]  # no-op
    stale = dict(made, spec={"note": "stale"})
    with pytest.raises(ApiException) as conflict:
        custom.replace_cluster_custom_object(*args, "239.1.1.1", stale)
    assert conflict.value.status == 409 and "Conflict" in conflict.value.body
    fresh = dict(main, spec={"note": "fresh"})
    replaced = custom.replace_cluster_custom_object(*args, "239.1.1.1", fresh)
    assert replaced["spec"] == {"note": "fresh"} and replaced["metadata"]["generation"] == 2
    assert replaced["status"] == {"group": "239.1.1.1"}
    with pytest.raises(ApiException) as unsupported:  # as on a real server: no SMP for CRs
        custom.patch_cluster_custom_object(*args, "239.1.1.1", {"spec": {}},
                                           _content_type="application/strategic-merge-patch+json")
    assert unsupported.value.status == 415
    patched = custom.patch_cluster_custom_object(*args, "239.1.1.1", [
        {"op": "add", "path": "/spec/extra", "value": 1}],
        _content_type="application/json-patch+json")
    assert patched["spec"] == {"note": "fresh", "extra": 1}
    v1 = client.CoreV1Api(api.client())
    _namespace(api, "smp")
    pod = _pod("two", "smp", "node1")
    pod["spec"]["containers"].append({"name": "d", "image": "busybox"})
    v1.create_namespaced_pod("smp", pod)
    merged = v1.patch_namespaced_pod("two", "smp", {"spec": {"containers": [
        {"name": "d", "image": "alpine"}]}})  # strategic: merged by name, "c" stays
    assert [(c.name, c.image) for c in merged.spec.containers] == [("c", "busybox"),
                                                                   ("d", "alpine")]


def test_discovery_and_openapi(api: Api, crd: tuple[str, str]) -> None:
    core = json.loads(api.http("GET", "/api/v1")[2])
    assert core["groupVersion"] == "v1"
    entries = {r["name"]: r for r in core["resources"]}
    assert entries["pods"]["shortNames"] == ["po"] and entries["pods/status"]["shortNames"] == []
    assert entries["namespaces"]["namespaced"] is False
    groups = {g["name"]: g for g in json.loads(api.http("GET", "/apis")[2])["groups"]}
    assert groups[GROUP]["preferredVersion"]["version"] == VERSION
    assert groups["autoscaling"]["preferredVersion"]["version"] == "v2"
    mine = json.loads(api.http("GET", f"/apis/{GROUP}/{VERSION}")[2])["resources"]
    assert [(r["name"], r["kind"]) for r in mine] == [(PLURAL, "MulticastGroup"),
                                                      (f"{PLURAL}/status", "MulticastGroup")]
    root = json.loads(api.http("GET", "/openapi/v3")[2])["paths"]
    doc = json.loads(api.http("GET", root[f"apis/{GROUP}/{VERSION}"]["serverRelativeURL"])[2])
    (path, ops), = doc["paths"].items()
    assert path == f"/apis/{GROUP}/{VERSION}/{PLURAL}/{{name}}"
    assert "fieldValidation" in [p["name"] for p in ops["patch"]["parameters"]]
    status, headers, body = api.http("GET", "/openapi/v2", headers={
        "Accept": "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"})
    assert status == 200 and "protobuf" in headers["Content-Type"] and body[:5] == b"\n\x032.0"
    assert json.loads(api.http("GET", "/version")[2])["minor"] == "32"


def test_watch_ends_after_timeout_seconds(api: Api) -> None:
    rv = json.loads(api.http("GET", "/api/v1/namespaces")[2])["metadata"]["resourceVersion"]
    started = time.monotonic()
    status, headers, body = api.http(
        "GET", f"/api/v1/namespaces?watch=true&timeoutSeconds=1&resourceVersion={rv}")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert body == b"" and 0.9 <= time.monotonic() - started < 5


def test_sigterm_stops_the_server_with_a_watch_open(tmp_path: Path) -> None:
    server = spawn(tmp_path)
    opened = urllib.request.urlopen(server.url + "/api/v1/pods?watch=true", timeout=10)
    first = threading.Thread(target=opened.read, daemon=True)  # blocks until the stream ends
    first.start()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(10) == 0
    first.join(5)
    assert not first.is_alive() and not (tmp_path / "kubeapi.ready.json").exists()


def test_tls_tokens_and_no_anonymous(tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout",
                    str(key), "-out", str(cert)], check=True, capture_output=True)
    server = spawn(tmp_path, tls=(cert, key), tokens={"admin": "t"}, anonymous=False)

    def kubectl(token: str | None) -> subprocess.CompletedProcess[str]:
        path = kubeconfig(server.url, token, tmp_path / f"{token}.kubeconfig", ca_file=cert)
        return subprocess.run([_kubectl_binary(), "--kubeconfig", str(path), "--cache-dir",
                               str(tmp_path / "cache"), "get", "ns", "default", "-o", "name"],
                              capture_output=True, text=True, timeout=30,
                              env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)})

    try:
        assert server.url.startswith("https://127.0.0.1:")
        path = kubeconfig(server.url, "t", tmp_path / "py.kubeconfig", ca_file=cert)
        v1 = client.CoreV1Api(config.new_client_from_config(config_file=str(path)))
        assert "default" in [n.metadata.name for n in v1.list_namespace().items]
        good = kubectl("t")
        assert good.stdout.strip() == "namespace/default", good.stderr
        refused = kubectl("wrong")
        assert refused.returncode != 0 and "Unauthorized" in refused.stderr
        anonymous = kubeconfig(server.url, None, tmp_path / "anonymous.kubeconfig", ca_file=cert)
        with pytest.raises(ApiException) as unauthorized:
            client.CoreV1Api(config.new_client_from_config(config_file=str(anonymous))
                             ).list_namespace()
        assert unauthorized.value.status == 401
    finally:
        server.stop()
