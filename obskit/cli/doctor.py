"""``obskit doctor``: the effective configuration, where each value came from, and checks.

Each check is a function ``(config, timeout) -> CheckResult | None`` (None: not applicable) in
:data:`CHECKS`; add new checks there. A check that raises is reported as FAIL, never a crash, and
every network check is bounded by ``--timeout`` even when the peer accepts and never answers.
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import tempfile
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, TextIO

from obskit.cli._output import safe_output
from obskit.config import (
    MASK,
    Config,
    ConfigError,
    describe,
    load_config,
    masked_url,
    sampler_arg_default,
    unknown_variables,
)
from obskit.exporters.otlp import Tls, grpc_target

__all__ = ["CHECKS", "CheckResult", "run"]

Level = Literal["OK", "WARN", "FAIL"]
_EXPORT = {
    "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    "logs": "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
}
#: The OTLP ports of each protocol: an endpoint on the other one's port is the usual mistake.
_PORTS = {"grpc": 4317, "http/protobuf": 4318}


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: OK, WARN or FAIL, what was checked and why."""

    level: Level
    name: str
    reason: str


Check = Callable[[Config, float], CheckResult | None]


# -- configuration table ------------------------------------------------------------------------


def format_value(option: str, value: object) -> str:
    """A config value as shown by doctor; header values and URL passwords masked."""
    if value is None:
        return "-"
    if isinstance(value, Mapping):
        masked = option.endswith("headers")
        return ",".join(f"{k}={MASK if masked else v}" for k, v in value.items()) or "-"
    if isinstance(value, str) and "://" in value:
        return masked_url(value)
    return str(value)


def config_rows(config: Config) -> list[tuple[str, str, str]]:
    """(option, shown value, source) for every option; an unset ``sampler_arg`` shows what the
    sampler takes instead."""
    rows = []
    for name, value, source in describe(config):
        shown = format_value(name, value)
        if name == "sampler_arg" and value is None:
            default = sampler_arg_default(config.sampler)
            if default is not None:
                shown = f"{default:g} (the sampler's default)"
        rows.append((name, shown, source))
    return rows


def _table(rows: list[tuple[str, str, str]], out: TextIO) -> None:
    header = ("option", "value", "source")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    for row in [header, *rows]:
        print(
            "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(),
            file=out,
        )


# -- helpers ------------------------------------------------------------------------------------


def _within(timeout: float, name: str, probe: Callable[[], CheckResult]) -> CheckResult:
    """Run ``probe`` in a daemon thread; FAIL if it has not finished after ``timeout`` (+ slack).

    Socket timeouts bound each operation, this bounds the whole check, name resolution included.
    """
    box: list[CheckResult] = []

    def target() -> None:
        try:
            box.append(probe())
        except Exception as exc:  # a check must report, not crash doctor
            box.append(CheckResult("FAIL", name, f"{type(exc).__name__}: {exc}"))

    thread = threading.Thread(target=target, name=f"obskit-doctor-{name}", daemon=True)
    thread.start()
    thread.join(timeout + 0.25)
    if box:
        return box[0]
    return CheckResult("FAIL", name, f"no answer within {timeout:g}s")


def _error_reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"no answer within {timeout:g}s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the collector running?)"
    if isinstance(exc, http.client.InvalidURL):
        # Its text quotes the request target, query (a token) included: not shown.
        return "invalid URL: http.client refuses it (a space or a control character in it?)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host: {exc.strerror or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}"


def _tls_problem(exc: BaseException) -> str:
    """What is wrong with the TLS files a signal is sent with (from a variable of the signal's
    own as often as from the option a ConfigError names)."""
    if isinstance(exc, ConfigError):
        if exc.value is None:
            return exc.allowed
        return f"{exc.value} is not {exc.allowed}"
    return str(exc)


def _probe_dir(directory: str) -> str | None:
    """None if a file can be created in ``directory``, else why not."""
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".obskit-doctor-"):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _existing_ancestor(path: str) -> str:
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


# -- checks -------------------------------------------------------------------------------------


def check_traces(config: Config, timeout: float) -> CheckResult | None:
    """Can spans reach their destination (the local file or the OTLP endpoint)?"""
    if config.disabled:
        return CheckResult("WARN", "traces", "the SDK is disabled (OTEL_SDK_DISABLED): no spans")
    if config.traces_exporter == "none":
        return CheckResult("WARN", "traces", "traces_exporter=none: spans are not exported")
    if config.traces_exporter == "jsonl":
        return check_traces_file(config.traces_file)
    url = config.traces_endpoint
    if not url:
        return CheckResult("FAIL", "traces", "traces_exporter=otlp but no endpoint is set")
    return _check_otlp(config, "traces", url, config.otlp_protocol, config.otlp_headers, timeout)


def _check_otlp(
    config: Config,
    signal: str,
    url: str,
    protocol: str,
    headers: Mapping[str, str],
    timeout: float,
) -> CheckResult:
    from obskit._otlp_signals import tls_files

    tls = Tls(*tls_files(config, signal))
    if protocol == "grpc":
        result = _within(timeout, signal, lambda: check_grpc(url, headers, timeout, signal, tls))
    else:
        result = _within(timeout, signal, lambda: check_http(url, headers, timeout, signal, tls))
    port = urllib.parse.urlsplit(url).port
    other = next((p for p, n in _PORTS.items() if n == port and p != protocol), None)
    if result.level == "FAIL" and other is not None:
        hint = f" ({port} is OTLP's {other} port; {protocol} listens on {_PORTS[protocol]})"
        return CheckResult(result.level, result.name, result.reason + hint)
    return result


def check_metrics(config: Config, timeout: float) -> CheckResult | None:
    """With OTLP metrics on: can they reach their endpoint?"""
    if "otlp" not in config.metrics_exporter or config.disabled:
        return None
    return _check_signal(config, "metrics", timeout)


def check_logs(config: Config, timeout: float) -> CheckResult | None:
    """With OTLP logs on: can they reach their endpoint?"""
    if config.logs_exporter != "otlp" or config.disabled:
        return None
    return _check_signal(config, "logs", timeout)


def _check_signal(config: Config, signal: str, timeout: float) -> CheckResult:
    from obskit._otlp_signals import destination

    url, protocol, headers = destination(config, signal)
    return _check_otlp(config, signal, url, protocol, headers, timeout)


def check_variables(config: Config, timeout: float) -> CheckResult | None:
    """Are ``OBSKIT_*`` variables set that obskit does not read (a typo)?"""
    unknown = unknown_variables()
    if not unknown:
        return None
    return CheckResult("WARN", "variables", "not read by obskit: " + "; ".join(unknown))


def check_traces_file(path: str) -> CheckResult:
    """Is the JSON-lines traces file (and its directory, for rotation) writable?"""
    full = os.path.abspath(path)
    directory = os.path.dirname(full)
    if os.path.isdir(full):
        return CheckResult("FAIL", "traces", f"{full} is a directory, not a file")
    if not os.path.isdir(directory):
        ancestor = _existing_ancestor(directory)
        problem = _probe_dir(ancestor) if os.path.isdir(ancestor) else "not a directory"
        if problem:
            return CheckResult(
                "FAIL", "traces", f"cannot create {directory}: {ancestor}: {problem}"
            )
        return CheckResult("OK", "traces", f"file {full} (its directory will be created)")
    problem = _probe_dir(directory)
    if problem:
        return CheckResult("FAIL", "traces", f"directory {directory} is not writable: {problem}")
    if os.path.exists(full) and not os.access(full, os.W_OK):
        return CheckResult("FAIL", "traces", f"file {full} is not writable")
    return CheckResult("OK", "traces", f"file {full} is writable")


def check_http(
    url: str,
    headers: Mapping[str, str],
    timeout: float,
    signal: str = "traces",
    tls: Tls | None = None,
) -> CheckResult:
    """POST an empty export request to the signal's OTLP/HTTP URL; OK on 2xx. ``tls``: the
    CA and client certificate files an ``https`` URL is reached with (the system's CAs)."""
    shown = masked_url(url)
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "localhost"
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        try:
            context = (tls or Tls()).ssl_context()
        except (OSError, ValueError) as exc:  # ValueError: ConfigError, a file of the wrong kind
            return CheckResult("FAIL", signal, f"{shown}: TLS files: {_tls_problem(exc)}")
        conn = http.client.HTTPSConnection(host, parts.port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(host, parts.port, timeout=timeout)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    sent = {"Content-Type": "application/x-protobuf", **headers}
    try:
        conn.request("POST", path, body=b"", headers=sent)
        response = conn.getresponse()
        response.read()
    except (OSError, http.client.HTTPException) as exc:
        return CheckResult("FAIL", signal, f"{shown}: {_error_reason(exc, timeout)}")
    finally:
        conn.close()
    if 200 <= response.status < 300:
        return CheckResult("OK", signal, f"{shown} answered {response.status}")
    why = f"HTTP {response.status} {response.reason}".rstrip()
    return CheckResult("FAIL", signal, f"{shown} answered {why}")


def check_grpc(
    url: str,
    headers: Mapping[str, str],
    timeout: float,
    signal: str = "traces",
    tls: Tls | None = None,
) -> CheckResult:
    """Connect to the OTLP/gRPC endpoint; with grpcio, also call the signal's Export with an
    empty request (over TLS for an ``https`` URL, with ``tls``' files)."""
    shown = masked_url(url)
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "localhost", parts.port or 4317
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return CheckResult("FAIL", signal, f"{shown}: {_error_reason(exc, timeout)}")
    try:
        import grpc
    except ImportError:
        return CheckResult("OK", signal, f"{shown} accepts connections (grpcio not installed)")
    target = grpc_target(parts)
    if parts.scheme == "https":
        try:
            credentials = (tls or Tls()).grpc_credentials()
        except (OSError, ValueError) as exc:  # ValueError: ConfigError, a certificate alone
            return CheckResult("FAIL", signal, f"{shown}: TLS files: {_tls_problem(exc)}")
        channel = grpc.secure_channel(target, credentials)
    else:
        channel = grpc.insecure_channel(target)
    try:
        metadata = tuple((k.lower(), v) for k, v in headers.items())
        channel.unary_unary(_EXPORT[signal])(b"", timeout=timeout, metadata=metadata)
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        detail = exc.details() if hasattr(exc, "details") else str(exc)
        name = code.name if code is not None else "error"
        return CheckResult("FAIL", signal, f"{shown}: Export failed: {name} {detail}".rstrip())
    finally:
        channel.close()
    return CheckResult("OK", signal, f"{shown} accepted an empty Export")


def check_multiproc_dir(config: Config, timeout: float) -> CheckResult | None:
    """Does PROMETHEUS_MULTIPROC_DIR exist and is it writable (when set)?"""
    directory = config.multiproc_dir
    if not directory:
        return None
    if not os.path.isdir(directory):
        return CheckResult("FAIL", "multiproc_dir", f"{directory} does not exist")
    problem = _probe_dir(directory)
    if problem:
        return CheckResult("FAIL", "multiproc_dir", f"{directory} is not writable: {problem}")
    return CheckResult("OK", "multiproc_dir", f"{directory} is writable")


#: Checks run in order; cardinality and health checks go here.
CHECKS: list[Check] = [
    check_traces,
    check_metrics,
    check_logs,
    check_multiproc_dir,
    check_variables,
]


def run_checks(
    config: Config, timeout: float, checks: list[Check] | None = None
) -> list[CheckResult]:
    """Results of the applicable checks; a check that raises gives FAIL."""
    results: list[CheckResult] = []
    for check in CHECKS if checks is None else checks:
        name = check.__name__.removeprefix("check_")
        try:
            result = check(config, timeout)
        except Exception as exc:  # report, do not crash
            result = CheckResult("FAIL", name, f"check crashed: {type(exc).__name__}: {exc}")
        if result is not None:
            results.append(result)
    return results


def run(args: argparse.Namespace, out: TextIO) -> int:
    """``obskit doctor [--timeout S]``: 0 when no check fails, 1 otherwise, 2 on bad config."""
    out = safe_output(out)
    try:
        config = load_config()
    except ConfigError as exc:
        print(str(exc), file=out)
        return 2
    timeout = float(getattr(args, "timeout", 2.0))
    print("Effective configuration", file=out)
    _table(config_rows(config), out)
    if config.traces_exporter == "otlp" and config.traces_endpoint:
        where = f"{masked_url(config.traces_endpoint)} ({config.otlp_protocol})"
    else:
        where = os.path.abspath(config.traces_file)
    print(f"\nSpans go to: {where if config.traces_exporter != 'none' else 'nowhere'}", file=out)
    if not config.disabled:
        from obskit._otlp_signals import destination

        for signal, on in (
            ("Metrics", "otlp" in config.metrics_exporter),
            ("Logs", config.logs_exporter == "otlp"),
        ):
            if on:
                url, protocol, _ = destination(config, signal.lower())
                print(f"{signal} go to: {masked_url(url)} ({protocol})", file=out)
    print("\nChecks", file=out)
    results = run_checks(config, timeout)
    for r in results:
        print(f"  {r.level:<4}  {r.name}: {r.reason}", file=out)
    failed = sum(1 for r in results if r.level == "FAIL")
    print(f"\n{failed} check(s) failed" if failed else "\nNo problems found", file=out)
    return 1 if failed else 0
