"""``moe-operator`` flags: a scope is required, bad values are one error line with exit 2."""
from __future__ import annotations

from moe_operator.operator_main import build_parser, main


def test_scope_is_required(capsys):
    assert main([]) == 2
    assert capsys.readouterr().err.startswith("error: give --namespace")


def test_namespaces_repeat_and_exclude_all_namespaces():
    args = build_parser().parse_args(["-n", "a", "--namespace", "b", "--liveness", "http://0.0.0.0:8081/healthz"])
    assert args.namespace == ["a", "b"] and not args.all_namespaces and args.liveness.endswith("/healthz")
    try:
        build_parser().parse_args(["-n", "a", "--all-namespaces"])
    except SystemExit as exc:
        assert exc.code == 2
    else:
        raise AssertionError("--namespace with --all-namespaces must be refused")


def test_bad_catalog_ref_and_images_file(tmp_path, capsys):
    assert main(["-A", "--catalog-configmap", "just-a-name"]) == 2
    assert "NAMESPACE/NAME" in capsys.readouterr().err
    bad = tmp_path / "images.yaml"
    bad.write_text("vllm_amd: rocm:latest\n")
    assert main(["-A", "--images", str(bad)]) == 2
    assert "unknown image keys" in capsys.readouterr().err


def test_workers_must_be_positive(capsys):
    assert main(["-A", "--workers", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: --workers must be at least 1")
    assert build_parser().parse_args(["-A"]).workers == 32


def test_no_cluster_configuration_is_one_error_line_and_exit_2(tmp_path, monkeypatch, capsys):
    """Outside a cluster and without a kubeconfig the operator says so in one line and exits 2, instead of starting
    kopf and logging a ConfigException traceback on every retry, forever."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["-n", "default"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no Kubernetes configuration") and err.count("\n") == 1 and "Traceback" not in err
    bad = tmp_path / "bad-kubeconfig"
    bad.write_text("not: [a kubeconfig")
    monkeypatch.setenv("KUBECONFIG", str(bad))
    assert main(["-n", "default"]) == 2
    assert capsys.readouterr().err.startswith("error: no Kubernetes configuration")


def test_an_operator_peer_without_pod_labels_is_one_error_line_and_exit_2(capsys, monkeypatch):
    """An empty selector would admit every pod of the namespace to the Ray dashboard (render/networkpolicy.py)."""
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    assert main(["-A", "--operator-namespace", "moe-system"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --operator-pod-labels: needed with --operator-namespace") and err.count("\n") == 1
