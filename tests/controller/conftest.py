"""Fixtures of the controller tests that run against the lab API server (tools.kubeapi), a real
HTTP server in a subprocess: no mock of the Kubernetes API anywhere.

``kube`` is one server per test module (tests keep apart by namespace, by lease name, or by
cleaning up the cluster-scoped objects they write); ``kube_factory`` starts more (a test that
stops its server). ``mcg_crd`` installs the MulticastGroup CRD from manifests/.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from tools.kubeapi.server import ApiServerProcess, kubeconfig, spawn

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "manifests" / "multicastgroup-crd.yaml"
TOKENS = {"admin": "admin-token"}


@dataclass
class Kube:
    server: ApiServerProcess
    work: Path

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def kubeconfig(self) -> Path:
        return kubeconfig(self.url, "admin-token", self.work / "admin.kubeconfig")

    def client(self) -> client.ApiClient:
        """A fresh ApiClient (each component of a test gets its own, as in separate pods)."""
        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.client())

    def hook(self, path: str) -> Any:
        """The lab's test hooks: /kubeapi/compact, /kubeapi/drop-watches."""
        request = urllib.request.Request(self.url + path, method="POST", data=b"", headers={
            "Authorization": "Bearer admin-token"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def namespace(self, name: str) -> str:
        self.core().create_namespace({"metadata": {"name": name}})
        return name

    def kubectl(self, *args: str) -> str:
        binary = ("/usr/bin/kubectl" if os.access("/usr/bin/kubectl", os.X_OK)
                  else shutil.which("kubectl"))
        if not binary:
            pytest.fail("no kubectl: run tools/install.sh", pytrace=False)
        done = subprocess.run(
            [binary, "--kubeconfig", str(self.kubeconfig), "--cache-dir",
             str(self.work / "cache"), *args], capture_output=True, text=True, timeout=30,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.work)})
        assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
        return done.stdout


@pytest.fixture(scope="module")
def kube_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], Kube]]:
    started: list[Kube] = []

    def start() -> Kube:
        work = tmp_path_factory.mktemp("kubeapi")
        kube = Kube(spawn(work, tokens=TOKENS), work)
        started.append(kube)
        return kube

    try:
        yield start
    finally:
        for kube in started:
            kube.server.stop()


@pytest.fixture(scope="module")
def kube(kube_factory: Callable[[], Kube]) -> Kube:
    return kube_factory()


@pytest.fixture(scope="module")
def mcg_crd(kube: Kube) -> None:
    crd = yaml.safe_load(CRD_FILE.read_text())
    ext = client.ApiextensionsV1Api(kube.client())
    ext.create_custom_resource_definition(crd)
    name = crd["metadata"]["name"]
    deadline = time.monotonic() + 10
    while not any(c.type == "Established" and c.status == "True" for c in
                  ext.read_custom_resource_definition(name).status.conditions or []):
        assert time.monotonic() < deadline, "the CRD was not established"
        time.sleep(0.05)


def wait_for(what: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02) -> Any:
    """Poll ``what`` until it returns something true; that value (AssertionError on timeout)."""
    deadline = time.monotonic() + timeout
    while not (value := what()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for "
                                 f"{getattr(what, '__name__', what)}")
        time.sleep(interval)
    return value


@pytest.fixture(scope="session")
def wait() -> Callable[..., Any]:
    return wait_for
