"""Bridges to other tools, each behind an extra: ``shoal.otel`` (OpenTelemetry, extra ``otel``)."""
