"""An OTLP/HTTP trace receiver on loopback, for the tests that export spans over the wire.

It decodes each export request with the real protobuf types (``ExportTraceServiceRequest``)
and keeps every span with its resource. ``receiver`` (or ``with listening()``) is the bare
receiver; ``over_otlp`` (or ``with exporting(receiver)``) also instruments shoal with a
provider that exports each span to it as the span ends.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

import shoal


@dataclass
class Receiver:
    """An OTLP/HTTP trace receiver on loopback: every span of every request, decoded."""

    port: int = 0
    spans: list[tuple[dict[str, Any], Any]] = field(default_factory=list)  # (resource, span)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"

    def take(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        with self.lock:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value
                            for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend((resource, s) for s in scope_spans.spans)

    def named(self, name: str) -> list[Any]:
        with self.lock:
            return [s for _, s in self.spans if s.name == name]


@contextmanager
def listening() -> Iterator[Receiver]:
    """A receiver listening on a free loopback port until the block ends."""
    found = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path != "/v1/traces":
                self.send_response(404)
                self.end_headers()
                return
            found.take(body)
            reply = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    found.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield found
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextmanager
def exporting(receiver: Receiver) -> Iterator[Receiver]:
    """shoal instrumented, until the block ends, with a provider exporting to ``receiver``.

    Each span is exported as it ends (``SimpleSpanProcessor``): all are there at the end.
    """
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(
        endpoint=receiver.endpoint, timeout=10)))
    shoal.otel.instrument(provider)
    try:
        yield receiver
    finally:
        shoal.otel.uninstrument()
        provider.shutdown()




@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A receiver on loopback, for the test's duration."""
    with listening() as found:
        yield found


@pytest.fixture
def over_otlp(receiver: Receiver) -> Iterator[Receiver]:
    """shoal instrumented with a provider that exports each span over OTLP/HTTP."""
    with exporting(receiver):
        yield receiver
