"""Pieces of hack/k8s_stack.py that need no running cluster: PKI, fake node manifests, binary lookup."""
from __future__ import annotations

import ssl
import threading
import socket

import pytest

import k8s_stack


def test_pki_chain_passes_strict_x509_and_admin_is_system_masters(tmp_path):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    k8s_stack.write_pki(tmp_path)
    admin = x509.load_pem_x509_certificate((tmp_path / "admin.crt").read_bytes())
    assert admin.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"

    # A real TLS handshake 127.0.0.1 <-> 127.0.0.1 with Python's default (strict) verification on both sides.
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")
    server_ctx.load_verify_locations(tmp_path / "ca.crt")
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    client_ctx.load_cert_chain(tmp_path / "admin.crt", tmp_path / "admin.key")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    peer = {}

    def serve():
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            peer["subject"] = tls.getpeercert()["subject"]

    t = threading.Thread(target=serve)
    t.start()
    with socket.create_connection(("127.0.0.1", port)) as raw, \
            client_ctx.wrap_socket(raw, server_hostname="127.0.0.1"):
        pass
    t.join(5)
    listener.close()
    assert (("organizationName", "system:masters"),) in peer["subject"]


def test_node_groups_carry_vendor_labels_and_devices():
    nodes = {n["metadata"]["name"]: n for n in k8s_stack.node_manifests()}
    h800 = [n for n in nodes.values() if n["metadata"]["labels"].get("nvidia.com/gpu.product") == "NVIDIA-H800"]
    ascend = [n for n in nodes.values() if n["metadata"]["labels"].get("accelerator") == "huawei-Ascend910"]
    assert len(h800) >= 2 and len(ascend) >= 1
    assert all(n["status"]["allocatable"]["nvidia.com/gpu"] == "8" for n in h800)
    assert all(n["status"]["allocatable"]["huawei.com/Ascend910"] == "8" for n in ascend)
    assert all(n["metadata"]["labels"]["kubernetes.io/arch"] == "arm64" for n in ascend)
    for n in nodes.values():
        assert n["metadata"]["annotations"][k8s_stack.FAKE_NODE_ANNOTATION] == "fake"
        cap, alloc = n["status"]["capacity"], n["status"]["allocatable"]
        assert int(alloc["cpu"].rstrip("m")) < int(cap["cpu"]) * 1000  # room left for the system
        assert alloc["pods"] == "110"


def test_missing_binaries_name_the_build_command(tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_TEST_BIN_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("MOE_TEST_BINARIES", str(tmp_path))
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    (tmp_path / "etcd").write_text("#!/bin/sh\n")
    (tmp_path / "etcd").chmod(0o755)
    with pytest.raises(k8s_stack.MissingBinaries) as err:
        k8s_stack.find_binaries()
    assert "kube-apiserver" in str(err.value) and "etcd," not in str(err.value)
    assert "hack/test-binaries.sh" in str(err.value)


def test_down_ignores_a_recycled_pid(tmp_path):
    """A PID recorded with another start time is not ours any more: down must not signal it."""
    import os

    stack = k8s_stack.Stack(tmp_path)
    stack.state = {"pids": {"etcd": {"pid": os.getpid(), "start": "1"}}}
    assert stack.running() == {}
    assert stack.down() == []


def test_ports_avoid_the_ephemeral_range_and_bind():
    lo, hi = k8s_stack._ephemeral_range()
    ports = [k8s_stack.free_port() for _ in range(20)]
    if lo > 12000:
        assert all(10000 <= p < lo for p in ports), (lo, ports)
    for p in ports[:3]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_a_start_that_lost_its_port_is_retried_and_other_failures_are_not(tmp_path, monkeypatch):
    stack = k8s_stack.Stack(tmp_path / "s")
    calls = []

    def lost_port_once(timeout, progress):
        calls.append(1)
        if len(calls) == 1:
            raise k8s_stack.StackError('kube-controller-manager exited during start-up; log x:\n"failed to listen on '
                                       '127.0.0.1:49953: bind: address already in use"')
        return tmp_path / "kubeconfig"

    monkeypatch.setattr(stack, "_up_once", lost_port_once)
    assert stack.up() == tmp_path / "kubeconfig" and len(calls) == 2

    def broken(timeout, progress):
        calls.append(1)
        raise k8s_stack.StackError("etcd exited during start-up: bad flag")

    calls.clear()
    monkeypatch.setattr(stack, "_up_once", broken)
    with pytest.raises(k8s_stack.StackError, match="bad flag"):
        stack.up()
    assert len(calls) == 1
