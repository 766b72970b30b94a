"""The lab's stand-in for a Kubernetes API server (no kube-apiserver can be installed here):
kmock's `KubernetesEmulator` (pinned exactly in pyproject.toml) with a thin layer that makes it
faithful enough for a real kubectl (>= 1.20) and the official Python client. A dev tool: the
product (agent, pipeline, wire, controller) never imports it (an import-linter contract).

    python -m tools.kubeapi serve --host 127.0.0.1 --port N [--ready-file F] ...
    tools.kubeapi.server.kubeconfig(url, token, path)    # for kubectl and the Python client
    tools.kubeapi.server.spawn(workdir, tokens=...)      # a server subprocess, once ready

Tokens: `NAME=TOKEN` (TokenReview: user NAME), or `NAME=TOKEN;node=NODE` for a service
account's token bound to a pod on NODE (TokenReview adds
`user.extra["authentication.kubernetes.io/node-name"] = [NODE]`, as Kubernetes >= 1.30 does;
the other extras of a real pod-bound token, pod name and uid, credential id, are left out).

Modules: `emulator` (kmock's emulator subclassed: HTTP, auth, TokenReview), `store` (objects
and every change: resourceVersions, status subresource, finalizers, CRDs), `objects`
(selectors, patches, errors), `tables` (kubectl's columns), `watchlog` (the replay log and
watch streams), `discovery` (discovery fixes, what a CRD serves, OpenAPI), `server` (the
process, kubeconfig, spawn). tests/tools/test_kubeapi.py is its conformance suite (kubectl
and the official client): a kmock upgrade that breaks the layer fails it.

Lab hooks (not in a real API): `POST /kubeapi/compact[?resourceVersion=N]` forgets the watch
log up to N (watches from before answer 410), `POST /kubeapi/drop-watches` cuts every watch
connection mid-stream.

Not emulated (a test that needs these must test them another way): schema validation and
defaulting, admission, RBAC (any valid token may do anything; a request without a token is
anonymous and allowed unless --anonymous-auth false; kubectl sends none over plain HTTP),
protobuf bodies beyond metadata-only objects (`kubectl create namespace` works; `kubectl
create configmap ...` gets 415: use `apply -f`), garbage collection through
ownerReferences, namespace termination (a deleted namespace takes its objects at once),
graceful pod deletion, bookmarks (but `sendInitialEvents`), pagination (`limit` is ignored:
everything comes in one page), conversion between versions of a resource (an object is seen
only through the version it was written with), managedFields (server-side apply is a merge).
"""
