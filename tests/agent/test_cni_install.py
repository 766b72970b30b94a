"""mcast-cni-install: choosing and patching the node's CNI config, and the plugin executable.

The pure parts (``agent.cni.conflist``, the import walk of ``agent.cni.bundle``) are tested on
values; the rest on real files in tmp dirs laid out like a node's /etc/cni/net.d and
/opt/cni/bin. The built executable is run with the machine's /usr/bin/python3, not the venv's.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from agent.cni import conflist as cl
from agent.cni.bundle import build_plugin, imported_names, plugin_closure
from agent.cni.install import EXIT_ERROR, EXIT_NOT_YET, EXIT_OK, build_parser, main
from agent.cni.spec import SUPPORTED_VERSIONS, NetConf

ENTRY = cl.plugin_entry("/var/run/kube-mcast/agent.sock", "mc0", True)

CALICO: dict[str, Any] = {
    "name": "k8s-pod-network",
    "cniVersion": "1.0.0",
    "plugins": [
        {"type": "calico", "datastore_type": "kubernetes", "mtu": 0, "nodename": "worker-1",
         "ipam": {"type": "calico-ipam"}, "policy": {"type": "k8s"},
         "kubernetes": {"kubeconfig": "/etc/cni/net.d/calico-kubeconfig"}},
        {"type": "bandwidth", "capabilities": {"bandwidth": True}},
        {"type": "portmap", "snat": True, "capabilities": {"portMappings": True}},
    ],
}
FLANNEL_CONF: dict[str, Any] = {
    "name": "cbr0",
    "cniVersion": "0.4.0",
    "type": "flannel",
    "delegate": {"hairpinMode": True, "isDefaultGateway": True},
}


@pytest.fixture
def node(tmp_path: Path) -> tuple[Path, Path]:
    conf, bin_ = tmp_path / "etc/cni/net.d", tmp_path / "opt/cni/bin"
    conf.mkdir(parents=True)
    bin_.mkdir(parents=True)
    return conf, bin_


def run(conf: Path, bin_: Path, *args: str) -> int:
    cmd, *rest = args
    return main([cmd, "--cni-conf-dir", str(conf), "--cni-bin-dir", str(bin_), *rest])


def write(path: Path, obj: Any, mode: int = 0o644) -> bytes:
    data = json.dumps(obj, indent=2).encode() + b"\n"
    path.write_bytes(data)
    path.chmod(mode)
    return data


def load(path: Path) -> Any:
    return json.loads(path.read_bytes())


def types(path: Path) -> list[str]:
    return [p["type"] for p in load(path)["plugins"]]


# -- pure: which file, and the entry ----------------------------------------------------------


def test_active_config_is_the_first_config_name_like_libcni() -> None:
    names = ["99-loopback.conf", "10-calico.conflist", "calico-kubeconfig", "05-x.json",
             "README", "00-bad.conf.bak", ".mcast-cni-install.abc.tmp", "10-calico.conflist.tmp"]
    assert cl.active_config(names) == "05-x.json"
    assert cl.config_candidates(names) == ["05-x.json", "10-calico.conflist", "99-loopback.conf"]
    assert cl.active_config(["README", "x.yaml"]) is None
    # byte order, as Go sorts: upper case before lower case, digits first
    assert cl.active_config(["a.conf", "B.conf", "1.conflist"]) == "1.conflist"


def test_conf_becomes_a_conflist_of_the_same_base_name() -> None:
    assert cl.conflist_name("10-flannel.conf") == "10-flannel.conflist"
    assert cl.conflist_name("10-x.json") == "10-x.conflist"
    assert sorted(["10-flannel.conf", "10-flannel.conflist", "10-flannelz.conf"])[:2] == [
        "10-flannel.conf", "10-flannel.conflist"]
    as_list = cl.as_conflist("10-flannel.conf", FLANNEL_CONF)
    assert as_list == {"cniVersion": "0.4.0", "name": "cbr0", "plugins": [FLANNEL_CONF]}


@pytest.mark.parametrize(("name", "obj", "problem"), [
    ("a.conflist", {"name": "n", "cniVersion": "1.0.0"}, "has no plugins"),
    ("a.conflist", {"name": "n", "cniVersion": "1.0.0", "plugins": []}, "has no plugins"),
    ("a.conflist", {"name": "n", "plugins": [{"ipam": {}}]}, "plugins[0] is not an object"),
    ("a.conflist", {"cniVersion": "1.0.0", "plugins": [{"type": "x"}]}, "no network 'name'"),
    ("a.conf", {"name": "n", "cniVersion": "1.0.0"}, "has no plugin 'type'"),
    ("a.conf", {"name": "n", "plugins": [{"type": "x"}]}, "rename it to .conflist"),
])
def test_malformed_configs_are_refused_naming_the_file(
    name: str, obj: dict[str, Any], problem: str
) -> None:
    with pytest.raises(cl.ConfigError, match=rf"^{re.escape(name)}: .*{re.escape(problem)}"):
        cl.as_conflist(name, obj)


def test_parse_names_the_file() -> None:
    with pytest.raises(cl.ConfigError, match=r"^/x/10-a.conflist: is not valid JSON"):
        cl.parse("/x/10-a.conflist", b"{\"plugins\": [")
    with pytest.raises(cl.ConfigError, match="is not a JSON object"):
        cl.parse("/x/10-a.conflist", b"[]")


def test_unsupported_cni_version_is_refused() -> None:
    old = {**CALICO, "cniVersion": "0.2.0"}
    with pytest.raises(cl.ConfigError, match=r"^f: cniVersion '0.2.0' is not supported"):
        cl.check_version("f", old)
    cl.check_version("f", CALICO)


def test_entry_is_appended_last_once() -> None:
    once = cl.with_entry(CALICO, ENTRY)
    assert [p["type"] for p in once["plugins"]] == ["calico", "bandwidth", "portmap", "mcast-cni"]
    assert once["plugins"][-1] == ENTRY
    assert cl.with_entry(once, ENTRY) == once
    assert CALICO["plugins"][-1]["type"] == "portmap"  # the input is not changed


def test_present_entry_is_updated_in_place_keeping_foreign_keys() -> None:
    stale = {"type": "mcast-cni", "agentSocket": "/old.sock", "logFile": "/var/log/mc.log"}
    conf = {**CALICO, "plugins": [CALICO["plugins"][0], stale, CALICO["plugins"][1],
                                  {"type": "mcast-cni", "agentSocket": "/dup.sock"}]}
    out = cl.with_entry(conf, ENTRY)
    assert [p["type"] for p in out["plugins"]] == ["calico", "mcast-cni", "bandwidth"]
    assert out["plugins"][1] == {**ENTRY, "logFile": "/var/log/mc.log"}
    assert cl.without_entry(out)["plugins"] == CALICO["plugins"][:2]
    assert not cl.has_entry(cl.without_entry(out)) and cl.has_entry(out)


def test_imported_names_resolve_relative_imports_and_skip_type_checking() -> None:
    src = ("from __future__ import annotations\nimport os.path\nfrom . import spec\n"
           "from ..api.client import AgentClient\nfrom typing import TYPE_CHECKING\n"
           "if TYPE_CHECKING:\n    import agent.main\nelse:\n    import json\n"
           "def f():\n    import pyroute2\n")
    names = imported_names(src, "agent.cni.plugin", is_package=False)
    assert {"os.path", "agent.cni", "agent.cni.spec", "agent.api.client",
            "agent.api.client.AgentClient", "json", "pyroute2"} <= names
    assert "agent.main" not in names
    assert "agent.cni.x" in imported_names("from .x import y", "agent.cni", is_package=True)


def test_plugin_closure_is_the_small_side_of_the_agent() -> None:
    files, third_party = plugin_closure()
    assert {"agent", "agent.cni", "agent.cni.plugin", "agent.cni.spec", "agent.api.client",
            "agent.api.types", "agent.interfacestore", "wire", "wire.nodes"} <= set(files)
    heavy = {"agent.main", "agent.api.server", "agent.api.service", "agent.cni.install"}
    assert not heavy & set(files)
    assert not [m for m in files if m.startswith(("agent.multicast", "agent.ovs", "pipeline"))]
    assert third_party == {"pyroute2"}


# -- files: install ----------------------------------------------------------------------------


def test_first_install_on_a_calico_like_conflist(node: tuple[Path, Path]) -> None:
    conf, bin_ = node
    path = conf / "10-calico.conflist"
    write(path, CALICO, mode=0o600)
    write(conf / "99-loopback.conf", {"cniVersion": "1.0.0", "name": "lo", "type": "loopback"})
    assert run(conf, bin_, "install", "--mode", "chained") == EXIT_OK
    out = load(path)
    assert out["cniVersion"] == "1.0.0" and out["name"] == "k8s-pod-network"
    assert out["plugins"] == [*CALICO["plugins"], ENTRY]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load(conf / "99-loopback.conf")["type"] == "loopback"
    exe = bin_ / "mcast-cni"
    assert exe.stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in conf.iterdir()) == ["10-calico.conflist", "99-loopback.conf"]
    assert [p.name for p in bin_.iterdir()] == ["mcast-cni"]  # no temp files left


def test_first_install_on_a_flannel_like_single_conf(node: tuple[Path, Path]) -> None:
    conf, bin_ = node
    write(conf / "10-flannel.conf", FLANNEL_CONF)
    write(conf / "10-flannelz.conflist", CALICO)  # sorts after: must stay second
    assert run(conf, bin_, "install") == EXIT_OK
    assert not (conf / "10-flannel.conf").exists()
    new = conf / "10-flannel.conflist"
    assert cl.active_config(os.listdir(conf)) == new.name
    assert load(new) == {"cniVersion": "0.4.0", "name": "cbr0", "plugins": [FLANNEL_CONF, ENTRY]}
    assert "mcast-cni" not in types(conf / "10-flannelz.conflist")


def test_second_install_changes_nothing(node: tuple[Path, Path]) -> None:
    conf, bin_ = node
    path = conf / "10-calico.conflist"
    write(path, CALICO)
    assert run(conf, bin_, "install") == EXIT_OK
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino)
              for p in (path, bin_ / "mcast-cni")}
    assert run(conf, bin_, "install", "--mode", "chained") == EXIT_OK
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino) for p in before}
    assert after == before


def test_a_changed_entry_is_updated(node: tuple[Path, Path]) -> None:
    conf, bin_ = node
    path = conf / "10-calico.conflist"
    old = {"type": "mcast-cni", "agentSocket": "/run/old.sock", "interfaceName": "mc0",
           "txChecksumOffload": True, "logFile": "/var/log/mcast-cni.log"}
    write(path, {**CALICO, "plugins": [*CALICO["plugins"], old]})
    assert run(conf, bin_, "install", "--agent-socket", "/run/new.sock",
               "--interface-name", "mcast1", "--no-tx-checksum-offload") == EXIT_OK
    entry = load(path)["plugins"][-1]
    assert entry == {"type": "mcast-cni", "agentSocket": "/run/new.sock",
                     "interfaceName": "mcast1", "txChecksumOffload": False,
                     "logFile": "/var/log/mcast-cni.log"}
    assert len(load(path)["plugins"]) == 4


def test_conflist_option_names_the_file_to_patch(node: tuple[Path, Path]) -> None:
    conf, bin_ = node
    write(conf / "00-multus.conf", {"cniVersion": "1.0.0", "name": "multus-cni-network",
                                    "type": "multus", "kubeconfig": "/x"})
    write(conf / "10-calico.conflist", CALICO)
    assert run(conf, bin_, "install") == EXIT_ERROR  # refuses to chain onto Multus's file
    assert run(conf, bin_, "install", "--conflist", "10-calico.conflist") == EXIT_OK
    assert types(conf / "10-calico.conflist")[-1] == "mcast-cni"
    assert load(conf / "00-multus.conf")["type"] == "multus"


def test_netconf_written_is_what_the_plugin_parses(node: tuple[Path, Path]) -> None:
    """The runtime gives each plugin of a list the list's name and cniVersion, and prevResult."""
    conf, bin_ = node
    write(conf / "10-calico.conflist", CALICO)
    assert run(conf, bin_, "install") == EXIT_OK
    out = load(conf / "10-calico.conflist")
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/x"}],
            "ips": [{"address": "10.244.1.5/24", "interface": 0}]}
    stdin = {**out["plugins"][-1], "name": out["name"], "cniVersion": out["cniVersion"],
             "prevResult": prev}
    parsed = NetConf.parse(json.dumps(stdin).encode())
    assert parsed.agent_socket == "/var/run/kube-mcast/agent.sock"
    assert parsed.tx_checksum_offload is True and parsed.prev_result == prev
    assert parsed.interface_name == "mc0"
    assert parsed.ipam is None


# -- files: errors and retries -----------------------------------------------------------------


def test_missing_conf_dir_or_config_is_not_yet(
    tmp_path: Path, node: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    conf, bin_ = node
    assert run(tmp_path / "nope", bin_, "install") == EXIT_NOT_YET
    assert f"CNI conf dir {tmp_path / 'nope'} does not exist yet" in capsys.readouterr().err
    (conf / "calico-kubeconfig").write_text("x")
    assert run(conf, bin_, "install") == EXIT_NOT_YET
    err = capsys.readouterr().err
    assert f"no CNI config in {conf} yet" in err and "exit 75" in err
    assert run(conf, bin_, "install", "--conflist", "10-calico.conflist") == EXIT_NOT_YET
    assert EXIT_NOT_YET not in (EXIT_OK, EXIT_ERROR, 2)
    assert (bin_ / "mcast-cni").exists()  # the executable goes in first anyway
    assert run(tmp_path / "nope", bin_, "install", "--mode", "multus") == EXIT_OK


def test_wait_polls_until_the_primary_writes_its_config(node: tuple[Path, Path]) -> None:
    conf, bin_ = node
    later = threading.Timer(0.3, lambda: write(conf / "10-calico.conflist", CALICO))
    later.start()
    t0 = time.monotonic()
    assert run(conf, bin_, "install", "--wait", "20") == EXIT_OK
    assert time.monotonic() - t0 < 10
    assert types(conf / "10-calico.conflist")[-1] == "mcast-cni"


@pytest.mark.parametrize(("raw", "problem"), [
    (b'{"name": "k8s-pod-network", "plugins": [', "is not valid JSON"),
    (b'{"name": "k8s-pod-network", "cniVersion": "1.0.0"}', "has no plugins"),
    (json.dumps({**CALICO, "cniVersion": "0.2.0"}).encode(), "cniVersion '0.2.0'"),
])
def test_bad_config_is_an_error_naming_the_file(
    node: tuple[Path, Path], capsys: pytest.CaptureFixture[str], raw: bytes, problem: str
) -> None:
    conf, bin_ = node
    path = conf / "10-calico.conflist"
    path.write_bytes(raw)
    assert run(conf, bin_, "install") == EXIT_ERROR
    err = capsys.readouterr().err
    assert f"error: {path}: " in err and problem in err
    assert path.read_bytes() == raw


def test_bad_arguments_are_usage_errors(node: tuple[Path, Path]) -> None:
    conf, bin_ = node
    for bad in (["--mode", "bridge"], ["--interface-name", "a/b"], ["--wait", "-1"],
                ["--interface-name", "x" * 16], ["--interpreter", "python3"]):
        with pytest.raises(SystemExit) as exc:
            run(conf, bin_, "install", *bad)
        assert exc.value.code == 2
    args = build_parser().parse_args(["install"])
    assert (args.mode, args.interface_name, args.tx_checksum_offload) == ("chained", "mc0", True)


# -- files: uninstall, multus, watch -----------------------------------------------------------


def test_uninstall_restores_the_original_plugin_list(node: tuple[Path, Path]) -> None:
    conf, bin_ = node
    path = conf / "10-calico.conflist"
    original = write(path, CALICO)
    assert run(conf, bin_, "install") == EXIT_OK
    assert run(conf, bin_, "uninstall") == EXIT_OK
    assert load(path) == CALICO and path.read_bytes() == original
    assert not (bin_ / "mcast-cni").exists()
    assert run(conf, bin_, "uninstall") == EXIT_OK  # idempotent
    assert path.read_bytes() == original


def test_uninstall_after_a_conf_was_converted_keeps_the_primary(node: tuple[Path, Path]) -> None:
    conf, bin_ = node
    write(conf / "10-flannel.conf", FLANNEL_CONF)
    (conf / "20-broken.conflist").write_bytes(b"not json")  # someone else's: skipped
    assert run(conf, bin_, "install") == EXIT_OK
    assert run(conf, bin_, "uninstall") == EXIT_OK
    assert load(conf / "10-flannel.conflist")["plugins"] == [FLANNEL_CONF]
    assert run(conf.parent / "missing", bin_, "uninstall") == EXIT_OK


def test_multus_mode_installs_the_executable_only(node: tuple[Path, Path]) -> None:
    conf, bin_ = node
    path = conf / "10-calico.conflist"
    original = write(path, CALICO)
    assert run(conf, bin_, "install", "--mode", "chained") == EXIT_OK
    assert run(conf, bin_, "install", "--mode", "multus") == EXIT_OK  # drops the chained entry
    assert path.read_bytes() == original
    assert run(conf, bin_, "install", "--mode", "multus") == EXIT_OK
    assert path.read_bytes() == original and (bin_ / "mcast-cni").exists()


def test_watch_puts_the_entry_back_after_the_primary_rewrites_its_config(
    node: tuple[Path, Path]
) -> None:
    conf, bin_ = node
    path = conf / "10-calico.conflist"
    write(path, CALICO)
    stop = threading.Event()
    rcs: list[int] = []
    args = ["install", "--cni-conf-dir", str(conf), "--cni-bin-dir", str(bin_), "--watch", "0.1"]
    t = threading.Thread(target=lambda: rcs.append(main(args, stop)))
    t.start()
    try:
        deadline = time.monotonic() + 10
        while "mcast-cni" not in types(path) and time.monotonic() < deadline:
            time.sleep(0.05)
        write(path, CALICO)  # what Calico's install-cni does when calico-node restarts
        time.sleep(0.05)
        while "mcast-cni" not in types(path) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert types(path)[-1] == "mcast-cni"
    finally:
        stop.set()
        t.join(10)
    assert rcs == [EXIT_OK]


# -- the executable ---------------------------------------------------------------------------

HOST_PYTHON = Path("/usr/bin/python3")


def test_build_is_deterministic() -> None:
    assert build_plugin() == build_plugin()
    assert build_plugin("/usr/bin/python3.11").startswith(b"#!/usr/bin/python3.11\n")


def test_installed_executable_runs_with_the_hosts_python(node: tuple[Path, Path]) -> None:
    """What the kubelet does on a node; tools/install.sh brings python3 (python3-venv)."""
    assert HOST_PYTHON.exists(), "no /usr/bin/python3: run tools/install.sh"
    conf, bin_ = node
    assert run(conf, bin_, "install", "--mode", "multus") == EXIT_OK
    exe = bin_ / "mcast-cni"
    assert exe.read_bytes().startswith(b"#!/usr/bin/env python3\n")
    assert not str(HOST_PYTHON.resolve()).startswith(sys.prefix)
    env = {"PATH": "/usr/bin:/bin", "CNI_COMMAND": "VERSION"}
    # -S -E: no site-packages, no PYTHON* variables: everything comes from the zip
    for cmd in ([str(HOST_PYTHON), "-S", "-E", str(exe)], [str(exe)]):
        done = subprocess.run(cmd, env=env, input=b"", capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr.decode()
        assert json.loads(done.stdout)["supportedVersions"] == list(SUPPORTED_VERSIONS)
    # an ADD without its environment: a CNI error on stdout, from the zip's spec module
    done = subprocess.run([str(HOST_PYTHON), "-S", "-E", str(exe)], input=b"{}",
                          env={**env, "CNI_COMMAND": "ADD"}, capture_output=True, timeout=60)
    assert done.returncode == 1 and json.loads(done.stdout)["code"] == 4


def test_an_old_python_gets_a_cni_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    main_py = zipfile.ZipFile(io.BytesIO(build_plugin())).read("__main__.py")
    monkeypatch.setattr(sys, "version_info", (3, 9, 18, "final", 0))
    with pytest.raises(SystemExit) as exc:
        exec(compile(main_py, "__main__.py", "exec"), {"__name__": "__main__"})
    assert exc.value.code == 1
    err = json.loads(capsys.readouterr().out)
    assert err["code"] == 100 and "python3 >= 3.10" in err["msg"]


def test_watch_prints_a_standing_problem_once(
    node: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    conf, bin_ = node
    stop = threading.Event()
    args = ["install", "--cni-conf-dir", str(conf), "--cni-bin-dir", str(bin_), "--watch", "0.05"]
    t = threading.Thread(target=main, args=(args, stop))
    t.start()
    time.sleep(0.5)
    write(conf / "10-calico.conflist", CALICO)
    deadline = time.monotonic() + 10
    while "mcast-cni" not in types(conf / "10-calico.conflist") and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    t.join(10)
    err = capsys.readouterr().err
    assert err.count("not yet: no CNI config") == 1
    assert err.count("appended the mcast-cni entry") == 1


def test_our_entry_first_is_refused(node: tuple[Path, Path]) -> None:
    conf, bin_ = node
    path = conf / "10-x.conflist"
    raw = write(path, {**CALICO, "plugins": [ENTRY, *CALICO["plugins"]]})
    assert run(conf, bin_, "install") == EXIT_ERROR
    assert path.read_bytes() == raw
