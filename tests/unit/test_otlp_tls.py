"""OTLP export over TLS with a private CA and mutual TLS: OTEL_EXPORTER_OTLP_CERTIFICATE,
..._CLIENT_KEY and ..._CLIENT_CERTIFICATE or obskit's options (the OTLP exporter specification's
configuration options, which obskit's span sinks ignored: a review of 2026-11-25), for spans,
metrics and logs, over HTTP and gRPC."""

from __future__ import annotations

import http.server
import logging
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import certifi
import pytest

import obskit
from obskit.config import ConfigError
from obskit.testing import get_sample_value
from tests.child_process import run_python
from tests.otlp_receiver import OtlpGrpcReceiver


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private CA, a server certificate for 127.0.0.1 and a client certificate it signed,
    with the extensions Python 3.13's strict verification (``VERIFY_X509_STRICT``) asks for:
    the CA's key usage, the leaves' authority key identifier."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test certificates")
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             "/CN=obskit test CA", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=d)  # fmt: skip
    leaf = "basicConstraints=CA:FALSE\nauthorityKeyIdentifier=keyid,issuer\n"
    (d / "server.cnf").write_text(leaf + "subjectAltName=IP:127.0.0.1\n")
    (d / "client.cnf").write_text(leaf + "extendedKeyUsage=clientAuth\n")
    for name, extra in (
        ("server", ["-extfile", "server.cnf"]),
        ("client", ["-extfile", "client.cnf"]),
    ):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", *extra, cwd=d)  # fmt: skip
    return d


@pytest.fixture
def collector(pki: Path) -> Iterator[tuple[str, list[str]]]:
    """An HTTPS OTLP receiver with the private CA's certificate, requiring a client
    certificate that CA signed (mutual TLS)."""
    paths: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            paths.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki / "server.pem", pki / "server.key")
    context.load_verify_locations(pki / "ca.pem")
    context.verify_mode = ssl.CERT_REQUIRED
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", paths
    finally:
        server.shutdown()
        server.server_close()
        obskit.shutdown(2)


def test_spans_reach_a_collector_of_a_private_ca_over_mutual_tls(
    pki: Path, collector: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, paths = collector
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(pki / "ca.pem"))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", str(pki / "client.key"))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", str(pki / "client.pem"))
    obskit.configure(service_name="tls", otlp_endpoint=endpoint, otlp_timeout=3)
    with obskit.tracer_provider().get_tracer("t").start_as_current_span("over mutual TLS"):
        pass
    assert obskit.force_flush(5)
    assert ["/v1/traces"] == paths
    assert 1.0 == get_sample_value("obskit_spans_exported_total", {"exporter": "otlp_http"})


def test_without_the_client_certificate_the_collector_refuses_and_it_is_counted(
    pki: Path, collector: tuple[str, list[str]]
) -> None:
    endpoint, paths = collector
    obskit.configure(
        service_name="tls",
        otlp_endpoint=endpoint,
        otlp_certificate=str(pki / "ca.pem"),
        otlp_timeout=1,
    )
    with obskit.tracer_provider().get_tracer("t").start_as_current_span("no client cert"):
        pass
    obskit.force_flush(5)
    assert [] == paths
    failures = {"signal": "traces", "exporter": "otlp_http"}
    assert 1.0 <= (get_sample_value("obskit_export_failures_total", failures) or 0.0)


def test_a_grpc_sink_takes_the_same_files(pki: Path) -> None:
    from obskit.exporters.otlp import GrpcSpanSink, Tls

    tls = Tls(str(pki / "ca.pem"), str(pki / "client.key"), str(pki / "client.pem"))
    sink = GrpcSpanSink("https://127.0.0.1:4317", tls=tls)
    sink.shutdown()


def test_a_certificate_file_that_cannot_be_read_fails_configure(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="otlp_certificate"):
        obskit.configure(otlp_certificate=str(tmp_path / "missing.pem"))


#: How a test gives the CA, client key and client certificate files (see tls_files_given).
TLS_WAYS = ["variables", "options", "mixed", "combined"]


def tls_files_given(how: str, pki: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """The CA, client key and client certificate, given ``how``: the generic variables, obskit's
    options, options with the key in each signal's own variable (``mixed``), or options with the
    certificate and its key in one file (``combined``). Returns the options to configure with."""
    files = {
        "certificate": str(pki / "ca.pem"),
        "client_key": str(pki / "client.key"),
        "client_certificate": str(pki / "client.pem"),
    }
    options: dict[str, object] = {}
    for name, path in files.items():
        if how == "variables":
            monkeypatch.setenv(f"OTEL_EXPORTER_OTLP_{name.upper()}", path)
        elif how == "mixed" and name == "client_key":
            for signal in ("TRACES", "METRICS", "LOGS"):
                monkeypatch.setenv(f"OTEL_EXPORTER_OTLP_{signal}_CLIENT_KEY", path)
        elif how == "combined" and name == "client_key":
            combined = pki / "client-with-key.pem"
            combined.write_bytes((pki / "client.pem").read_bytes() + Path(path).read_bytes())
            options["otlp_client_certificate"] = str(combined)
        elif how != "combined" or name != "client_certificate":
            options[f"otlp_{name}"] = path
    return options


@pytest.mark.parametrize("how", TLS_WAYS)
def test_metrics_and_logs_reach_the_same_collector_over_mutual_tls(
    how: str, pki: Path, collector: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK's metric and log exporters, on obskit's session (whose watcher ends an exchange
    at otlp_timeout), take the CA and the client certificate as the span sink does."""
    endpoint, paths = collector
    options = tls_files_given(how, pki, monkeypatch)
    # Set in many container images; requests would let it take the OTLP certificate's place.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    obskit.configure(
        service_name="tls",
        otlp_endpoint=endpoint,
        otlp_timeout=3,
        traces_exporter="none",
        metrics_exporter="otlp",
        metric_export_interval=3600,
        logs_exporter="otlp",
        **options,  # type: ignore[arg-type]
    )
    obskit.counter("tls_jobs", "Jobs.").inc()
    logging.getLogger("tls").warning("over mutual TLS")
    assert obskit.force_flush(5)
    assert {"/v1/metrics", "/v1/logs"} == set(paths)
    for signal in ("metrics", "logs"):
        failures = {"signal": signal, "exporter": "otlp_http"}
        assert None is get_sample_value("obskit_export_failures_total", failures)


# Found by a review, since fixed: obskit._otlp_signals._tls gave the SDK's gRPC exporters
# credentials made from obskit's options alone, leaving out a key named by the signal's own
# variable ("mixed"), and obskit.exporters.otlp.Tls.grpc_credentials passed a certificate without
# its key ("combined": both in one file, as requests takes them): grpc aborts the whole process
@pytest.mark.parametrize("how", TLS_WAYS)
def test_every_signal_reaches_a_grpc_collector_over_mutual_tls(
    how: str, pki: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spans (obskit's gRPC sink), metrics and logs (the SDK's gRPC exporters) to a collector
    of the private CA that requires a client certificate, with the files given each way."""
    options = tls_files_given(how, pki, monkeypatch)
    tls = tuple((pki / name).read_bytes() for name in ("server.key", "server.pem", "ca.pem"))
    with OtlpGrpcReceiver(tls=tls) as receiver:  # type: ignore[arg-type]
        try:
            obskit.configure(
                service_name="tls",
                otlp_endpoint=receiver.endpoint,
                otlp_protocol="grpc",
                otlp_timeout=3,
                metrics_exporter="otlp",
                metric_export_interval=3600,
                logs_exporter="otlp",
                **options,  # type: ignore[arg-type]
            )
            with obskit.tracer_provider().get_tracer("t").start_as_current_span("over TLS"):
                logging.getLogger("tls").warning("over mutual TLS")
            obskit.counter("tls_jobs", "Jobs.").inc()
            assert obskit.force_flush(5)
        finally:
            obskit.shutdown(2)
        assert ["over TLS"] == [s.span.name for s in receiver.spans()]
        assert receiver.requests("metrics")
        assert receiver.requests("logs")


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_doctor_reaches_a_private_ca_collector_with_the_configured_files(
    protocol: str, pki: Path, collector: tuple[str, list[str]]
) -> None:
    """``obskit doctor`` checks each signal's endpoint with the TLS files its exporter uses;
    it used the system's CAs and no client certificate, and failed where export worked."""
    from obskit.cli.doctor import run_checks
    from obskit.config import load_config

    files = {
        "otlp_certificate": str(pki / "ca.pem"),
        "otlp_client_key": str(pki / "client.key"),
        "otlp_client_certificate": str(pki / "client.pem"),
    }
    tls = tuple((pki / name).read_bytes() for name in ("server.key", "server.pem", "ca.pem"))
    with OtlpGrpcReceiver(tls=tls) as receiver:  # type: ignore[arg-type]
        endpoint = receiver.endpoint if protocol == "grpc" else collector[0]
        config = load_config(
            otlp_endpoint=endpoint,
            otlp_protocol=protocol,
            metrics_exporter="otlp",
            logs_exporter="otlp",
            **files,  # type: ignore[arg-type]
        )
        results = {r.name: r for r in run_checks(config, timeout=3.0)}
        without = load_config(otlp_endpoint=endpoint, otlp_protocol=protocol)
        refused = {r.name: r for r in run_checks(without, timeout=3.0)}
    assert {"OK"} == {results[s].level for s in ("traces", "metrics", "logs")}, results
    assert "FAIL" == refused["traces"].level  # the system's CAs do not know the private one


def test_a_grpc_client_certificate_without_its_key_is_a_config_error(pki: Path) -> None:
    """Not a crash: gRPC aborts the process (no exception) on a certificate without its key.
    In a child process, so that a regression cannot take the test run down with it."""
    script = f"""
import obskit
from obskit.config import ConfigError
for exporters in ({{}}, {{"traces_exporter": "none", "metrics_exporter": "otlp"}}):
    try:
        obskit.configure(otlp_protocol="grpc", otlp_endpoint="https://127.0.0.1:4317",
                         otlp_client_certificate={str(pki / "client.pem")!r}, **exporters)
    except ConfigError as exc:
        print("refused:", exc.option)
"""
    assert ["refused: otlp_client_key"] * 2 == run_python(script).splitlines()


def _encrypted_key(pki: Path) -> Path:
    path = pki / "client-encrypted.key"
    if not path.exists():
        _openssl("pkey", "-in", "client.key", "-aes256", "-passout", "pass:secret",
                 "-out", path.name, cwd=pki)  # fmt: skip
    return path


#: Files whose content is not what their option names, and the option the error names.
_UNUSABLE = {
    "a CA file with no certificate": ({"otlp_certificate": "garbage.pem"}, "otlp_certificate"),
    "a client certificate with no key anywhere": (
        {"otlp_client_certificate": "client.pem"},
        "otlp_client_key",
    ),
    "a client certificate that is not one": (
        {"otlp_client_certificate": "garbage.pem", "otlp_client_key": "client.key"},
        "otlp_client_certificate",
    ),
    "a key of another certificate": (
        {"otlp_client_certificate": "client.pem", "otlp_client_key": "server.key"},
        "otlp_client_certificate",
    ),
    "an encrypted key": (
        {"otlp_client_certificate": "client.pem", "otlp_client_key": "client-encrypted.key"},
        "otlp_client_key",
    ),
}


# A bug a review found, since fixed (2026-11-25): over HTTP an unusable PEM file raised the ssl
# module's SSLError from the middle of configure(), after the running configuration had been
# shut down (get_config() then answered None); a ConfigError, raised before anything changes,
# is what every other unusable value gets
@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
@pytest.mark.parametrize("case", list(_UNUSABLE))
def test_an_unusable_tls_file_is_a_config_error_and_the_running_configuration_stays(
    case: str, protocol: str, pki: Path
) -> None:
    (pki / "garbage.pem").write_text("not a certificate\n")
    _encrypted_key(pki)
    files, option = _UNUSABLE[case]
    obskit.configure(service_name="running", traces_exporter="none")
    with pytest.raises(ConfigError) as raised:
        obskit.configure(
            service_name="next",
            otlp_protocol=protocol,
            otlp_endpoint="https://127.0.0.1:4317",
            **{name: str(pki / file) for name, file in files.items()},
        )
    assert option == raised.value.option
    config = obskit.get_config()
    assert config is not None
    assert "running" == config.service_name


def test_doctor_names_an_unusable_file_of_a_signals_own_variable(
    pki: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal's own variable is not an obskit option, so configure() does not check it: the
    exporter meets it, and ``obskit doctor`` says which file is wrong (it raised a ConfigError
    from the middle of its checks, or named no file)."""
    from obskit.cli.doctor import run_checks
    from obskit.config import load_config

    (pki / "garbage.pem").write_text("not a certificate\n")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE", str(pki / "garbage.pem"))
    config = load_config(otlp_endpoint="https://127.0.0.1:9", metrics_exporter="otlp")
    metrics = {r.name: r for r in run_checks(config, timeout=1.0)}["metrics"]
    assert "FAIL" == metrics.level
    assert f"{pki / 'garbage.pem'} is not a PEM file of CA certificates" in metrics.reason
