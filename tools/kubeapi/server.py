"""The lab API server as a process, and what its users need around it.

    python -m tools.kubeapi serve [--host 127.0.0.1] [--port N] [--ready-file F]
                                  [--tls-cert CRT --tls-key KEY]
                                  [--token NAME=TOKEN[;node=NODE] ...] [--token-file F]
                                  [--anonymous-auth true|false] [--watch-cache N]
    python -m tools.kubeapi kubeconfig --server URL --out PATH [--token T] [--ca CRT]

`serve` runs `LabEmulator` in its own event loop (never one shared with blocking clients),
plain HTTP unless given a certificate. With tokens configured, a request that carries a token
(`Authorization: Bearer`) must carry one of them (else 401) and TokenReview names its user (and,
for `NAME=TOKEN;node=NODE`, a service-account token bound to a pod on NODE, the node as
Kubernetes >= 1.30 does: `user.extra["authentication.kubernetes.io/node-name"]`); one
without a token is anonymous, allowed as by kube-apiserver's default (kubectl sends no
credentials over plain HTTP) unless `--anonymous-auth false`. Once listening it prints
`kubeapi: serving on URL` and writes the ready file (JSON: url, host, port, pid) atomically;
SIGTERM or SIGINT end every watch and stop it (exit 0); the ready file is removed.

Owns: the process (CLI, TLS, signals, ready file), `kubeconfig()` and `spawn()` (start the
server as a subprocess and wait until it is ready). May import: `tools.kubeapi.emulator`,
kmock, aiohttp, PyYAML and the standard library.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kmock
import yaml
from aiohttp.test_utils import RawTestServer

from tools.kubeapi.emulator import LabEmulator, LabUser

REPO = Path(__file__).resolve().parents[2]


def parse_tokens(pairs: Sequence[str], files: Sequence[Path] = ()) -> dict[str, LabUser]:
    """`NAME=TOKEN` or `NAME=TOKEN;node=NODE` pairs (and files of such lines; `#` comments) as
    {token: user}. `;node=NODE`: a service account's token bound to a pod on NODE."""
    lines = list(pairs)
    for f in files:
        lines += [ln.strip() for ln in f.read_text().splitlines()
                  if ln.strip() and not ln.strip().startswith("#")]
    tokens: dict[str, LabUser] = {}
    for line in lines:
        name, sep, rest = line.partition("=")
        token, _, attrs = rest.partition(";")
        if not sep or not name.strip() or not token.strip():
            raise ValueError(f"a token must be given as NAME=TOKEN[;node=NODE], not {line!r}")
        node = None
        if attrs:
            key, eq, node = attrs.partition("=")
            if key.strip() != "node" or not eq or not node.strip():
                raise ValueError(f"after NAME=TOKEN only ';node=NODE' may follow, not {line!r}")
            node = node.strip()
        tokens[token.strip()] = LabUser(name.strip(), node)
    return tokens


def _tls_server(context: ssl.SSLContext) -> type[RawTestServer]:
    class TLSServer(RawTestServer):  # kmock's Server takes the class; aiohttp takes ssl here
        async def start_server(self, loop: asyncio.AbstractEventLoop | None = None,
                               **kwargs: Any) -> None:
            await super().start_server(loop=loop, ssl=context, **kwargs)
    return TLSServer


def _write_atomically(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


async def serve(host: str, port: int, *, tokens: Mapping[str, str | LabUser] | None = None,
                anonymous: bool = True, tls: tuple[Path, Path] | None = None,
                ready_file: Path | None = None, watch_cache: int = 10_000,
                stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(sig, stop.set)
    server_cls: type[RawTestServer] = RawTestServer
    if tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(tls[0]), str(tls[1]))
        server_cls = _tls_server(context)
    emulator = LabEmulator(tokens=tokens, anonymous=anonymous, watch_cache=watch_cache)
    async with emulator, kmock.Server(emulator, host=host, port=port,
                                      server_cls=server_cls) as server:
        shown = f"[{host}]" if ":" in host else host
        url = f"{'https' if tls else 'http'}://{shown}:{server.port}"
        if ready_file:
            _write_atomically(ready_file, json.dumps({"url": url, "host": host,
                                                      "port": server.port, "pid": os.getpid()}))
        print(f"kubeapi: serving on {url}", flush=True)
        try:
            await stop.wait()
        finally:
            emulator.close()
            if ready_file:
                ready_file.unlink(missing_ok=True)


def kubeconfig(server_url: str, token: str | None, path: Path | str, *,
               ca_file: Path | str | None = None, name: str = "kube-mcast-lab",
               namespace: str | None = None) -> Path:
    """Write a kubeconfig (mode 0600: it holds a token) for kubectl and the official client."""
    cluster: dict[str, Any] = {"server": server_url}
    if ca_file:
        cluster["certificate-authority"] = str(Path(ca_file).resolve())
    context: dict[str, Any] = {"cluster": name, "user": name}
    if namespace:
        context["namespace"] = namespace
    config = {"apiVersion": "v1", "kind": "Config", "preferences": {},
              "clusters": [{"name": name, "cluster": cluster}],
              "users": [{"name": name, "user": {"token": token} if token else {}}],
              "contexts": [{"name": name, "context": context}], "current-context": name}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, yaml.safe_dump(config, sort_keys=False), mode=0o600)
    return path


@dataclass
class ApiServerProcess:
    url: str
    process: subprocess.Popen[bytes]
    workdir: Path

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()


def spawn(workdir: Path, *, host: str = "127.0.0.1", port: int = 0,
          tokens: Mapping[str, str] | None = None, token_lines: Sequence[str] = (),
          anonymous: bool = True, tls: tuple[Path, Path] | None = None,
          timeout: float = 30.0, python: str = sys.executable) -> ApiServerProcess:
    """Start `python -m tools.kubeapi serve` (tokens as {name: token}; `token_lines`: more lines
    of its token file, `NAME=TOKEN[;node=NODE]`, e.g. several of one service account), wait
    until it listens; its output goes to `workdir/kubeapi.log`."""
    workdir.mkdir(parents=True, exist_ok=True)
    ready = workdir / "kubeapi.ready.json"
    ready.unlink(missing_ok=True)
    cmd = [python, "-m", "tools.kubeapi", "serve", "--host", host, "--port", str(port),
           "--ready-file", str(ready)]
    lines = [f"{n}={t}" for n, t in (tokens or {}).items()] + list(token_lines)
    if lines:
        token_file = workdir / "kubeapi.tokens"
        _write_atomically(token_file, "".join(f"{line}\n" for line in lines), 0o600)
        cmd += ["--token-file", str(token_file)]
    if tls:
        cmd += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    if not anonymous:
        cmd += ["--anonymous-auth", "false"]
    with open(workdir / "kubeapi.log", "ab") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            ApiServerProcess("", proc, workdir).stop(1)
            tail = (workdir / "kubeapi.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the lab API server did not start: {tail}")
        time.sleep(0.05)
    return ApiServerProcess(json.loads(ready.read_text())["url"], proc, workdir)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.kubeapi",
                                     description="The lab's stand-in for a Kubernetes API.")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve the API until SIGTERM")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=0, help="0: any free port (see --ready-file)")
    s.add_argument("--ready-file", type=Path)
    s.add_argument("--tls-cert", type=Path)
    s.add_argument("--tls-key", type=Path)
    s.add_argument("--token", action="append", default=[], metavar="NAME=TOKEN[;node=NODE]")
    s.add_argument("--token-file", action="append", default=[], type=Path,
                   help="lines of NAME=TOKEN[;node=NODE]")
    s.add_argument("--anonymous-auth", choices=("true", "false"), default="true",
                   help="allow requests without a token when tokens are configured")
    s.add_argument("--watch-cache", type=int, default=10_000,
                   help="changes kept for watches to resume from (older ones: 410 Gone)")
    s.add_argument("--log-level", default="WARNING")
    k = sub.add_parser("kubeconfig", help="write a kubeconfig for a running server")
    k.add_argument("--server", required=True)
    k.add_argument("--out", required=True, type=Path)
    k.add_argument("--token")
    k.add_argument("--ca", type=Path)
    args = parser.parse_args(argv)
    if args.command == "kubeconfig":
        print(kubeconfig(args.server, args.token, args.out, ca_file=args.ca))
        return 0
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    try:
        tokens = parse_tokens(args.token, args.token_file)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tls = (args.tls_cert, args.tls_key) if args.tls_cert else None
    asyncio.run(serve(args.host, args.port, tokens=tokens, tls=tls, ready_file=args.ready_file,
                      anonymous=args.anonymous_auth == "true", watch_cache=args.watch_cache))
    return 0
