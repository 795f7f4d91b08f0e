"""Findings of a read-through review of the export side and the process lifecycle
(2026-11-25), each pinned by a test. Each runs in a child interpreter: they fork, configure OTLP
signals or shut obskit down, all process-global."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.child_process import child_env


def _run(script: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert 0 == done.returncode, done.stderr[-2000:]
    return done.stdout.strip()


# A bug this test found, since fixed: the span pipeline's fork hook re-initialised every live
# processor, closed ones included (obskit/tracing/pipeline.py _after_fork): a process forked
# after obskit.shutdown() got a new export thread and a processor that took spans again -- a
# failing request in the child was exported although obskit had been shut down.
def test_a_child_forked_after_shutdown_exports_nothing(tmp_path: object) -> None:
    out = _run(
        f"""
        import json, logging, os, threading, time
        logging.disable(logging.CRITICAL)
        import obskit
        from obskit.wsgi import ObskitMiddleware

        path = os.path.join({str(tmp_path)!r}, "t.jsonl")
        obskit.configure(service_name="s", traces_file=path)

        def app(environ, start_response):
            start_response("500 Internal Server Error", [])
            return [b"boom"]

        wrapped = ObskitMiddleware(app)

        def request(path_info):
            environ = {{"REQUEST_METHOD": "GET", "PATH_INFO": path_info, "SERVER_NAME": "x",
                        "SERVER_PORT": "80", "wsgi.url_scheme": "http", "wsgi.input": None}}
            body = wrapped(environ, lambda *a: None)
            b"".join(body)
            getattr(body, "close", lambda: None)()

        obskit.shutdown(1)
        pid = os.fork()
        if pid == 0:
            threads = [t.name for t in threading.enumerate() if "span-export" in t.name]
            request("/child-after-shutdown")
            time.sleep(1.2)  # longer than the pipeline's schedule delay
            print(threads, flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
        print(os.path.exists(path) and open(path).read().count("child-after-shutdown"))
        """
    )
    assert ["[]", "False"] == out.splitlines()


# A bug this test found, since fixed: obskit.force_flush(timeout) returned on time with OTLP
# metrics or logs on a collector that does not answer, but left the SDK provider's flush running
# in a thread of its own -- a new one per call, queued behind each other (the SDK exports one at
# a time): a worker that flushed after every job piled up threads without bound. One flush per
# provider runs at a time now; a call while it runs returns False at once.
def test_force_flush_on_a_hung_collector_leaves_no_pile_of_threads() -> None:
    out = _run(
        """
        import logging, os, socket, threading
        logging.disable(logging.CRITICAL)
        hang = socket.socket()
        hang.bind(("127.0.0.1", 0))
        hang.listen(512)
        held = []
        threading.Thread(
            target=lambda: [held.append(hang.accept()) for _ in iter(int, 1)], daemon=True
        ).start()
        import obskit

        obskit.configure(
            service_name="ff", traces_exporter="none", metrics_exporter="otlp",
            logs_exporter="otlp", otlp_endpoint=f"http://127.0.0.1:{hang.getsockname()[1]}",
            metric_export_interval=3600,
        )
        jobs = obskit.meter_provider().get_meter("job").create_counter("jobs")
        results = []
        for _ in range(100):
            jobs.add(1)
            logging.getLogger("job").warning("job done")
            results.append(obskit.force_flush(0.01))
        flushing = sum(t.name == "obskit-shutdown" for t in threading.enumerate())
        print(flushing <= 2, results.count(True))
        os._exit(0)
        """
    )
    assert "True 0" == out


# A bug this test found, since fixed: a loop-lag monitor whose loop was closed without stop()
# (run_until_complete, then close(), as a worker thread's loop is) kept its
# asyncio_event_loop_lag_seconds series at the last lag for good: only the monitor task's
# `finally` or stop() removed it, and a closed loop runs neither. Each scrape now removes the
# series of monitors whose loop is closed (obskit/metrics/runtime.py forget_closed_loops).
def test_the_lag_series_of_a_loop_closed_under_its_monitor_goes_at_the_next_scrape() -> None:
    import asyncio
    import warnings

    import obskit
    from obskit.metrics.exposition import render
    from obskit.metrics.runtime import start_loop_lag_monitor
    from obskit.testing import get_sample_value

    obskit.configure(service_name="lag", traces_exporter="none")
    loop = asyncio.new_event_loop()

    async def work() -> None:
        start_loop_lag_monitor(interval=0.01, name="review-worker")
        await asyncio.sleep(0.05)

    loop.run_until_complete(work())
    assert get_sample_value("asyncio_event_loop_lag_seconds", {"loop": "review-worker"}) is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Task was destroyed but it is pending"
        loop.close()
    render(None)  # a scrape
    assert None is get_sample_value("asyncio_event_loop_lag_seconds", {"loop": "review-worker"})


# A bug a review found, since fixed: obskit's global TracerProvider kept the SDK's default
# resource (service.name=unknown_service:python) whatever configure() said (obskit/_runtime.py):
# obskit's own exporter stamps the configured one, but a processor the application adds to
# obskit.tracer_provider(), as docs/tracing.md invites, exported under the wrong service, and
# OpenTelemetry's logging instrumentation wrote otelServiceName=unknown_service:python.
def test_spans_seen_by_an_added_processor_carry_the_configured_resource(tmp_path: object) -> None:
    out = _run(
        f"""
        import json, os
        import obskit
        from opentelemetry.sdk.trace import SpanProcessor

        seen = []

        class Recording(SpanProcessor):
            def on_end(self, span):
                attrs = span.resource.attributes
                seen.append([attrs.get("service.name"), attrs.get("service.version")])

        traces = os.path.join({str(tmp_path)!r}, "t.jsonl")
        provider = obskit.tracer_provider()
        early = provider.get_tracer("early")  # a tracer made before configure()
        provider.add_span_processor(Recording())
        obskit.configure(service_name="checkout", service_version="1.4.2", traces_file=traces)
        with early.start_as_current_span("a"):
            pass
        with provider.get_tracer("late").start_as_current_span("b"):
            pass
        obskit.configure(service_name="billing", traces_file=traces)  # replaced, not merged
        with early.start_as_current_span("c"):
            pass
        obskit.shutdown()
        print(json.dumps(seen))
        """
    )
    assert [
        ["checkout", "1.4.2"],
        ["checkout", "1.4.2"],
        ["billing", "0.0.0"],
    ] == json.loads(out.splitlines()[-1])


# Found by a review of the fix above, since fixed: in a forked worker the provider's resource
# kept the parent's process.pid (obskit/_runtime.py, _provider_resource_after_fork).
def test_a_forked_child_s_provider_resource_names_its_own_pid(tmp_path: object) -> None:
    out = _run(
        f"""
        import os
        import obskit
        from opentelemetry.sdk.trace import SpanProcessor

        seen = []

        class Recording(SpanProcessor):
            def on_end(self, span):
                seen.append(span.resource.attributes.get("process.pid"))

        obskit.configure(service_name="s", traces_file=os.path.join({str(tmp_path)!r}, "t.jsonl"))
        provider = obskit.tracer_provider()
        provider.add_span_processor(Recording())
        tracer = provider.get_tracer("t")
        pid = os.fork()
        if pid == 0:
            with tracer.start_as_current_span("child"):
                pass
            os._exit(0 if seen == [os.getpid()] else 1)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
        """
    )
    assert "0" == out.splitlines()[-1]


# Found by a review of obskit next to other setups, since fixed: the warning about a global
# TracerProvider set before obskit's was logged when obskit first touched tracing, before
# configure() had set up its JSON logging: a plain-text line on stderr, or, under
# opentelemetry-instrument, only in the agent's OTLP log stream.
def test_the_foreign_provider_warning_is_one_of_obskits_json_lines() -> None:
    out = _run(
        """
        import json, sys
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        trace.set_tracer_provider(TracerProvider())
        sys.stderr = sys.stdout  # obskit's handler writes to the stderr of setup time
        import obskit
        obskit.configure(service_name="s", traces_exporter="none", logging=True)
        """
    )
    warned = [line for line in out.splitlines() if "already set" in line]
    assert 1 == len(warned), out
    assert "WARNING" == json.loads(warned[0])["level"]
