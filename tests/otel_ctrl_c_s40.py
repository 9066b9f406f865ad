"""A run whose span processor raises ``KeyboardInterrupt`` as the first call's span ends.

``python -m tests.otel_ctrl_c_s40 STORE``: a plan of a short call and a long one, journaled in
STORE; a span processor raises ``KeyboardInterrupt`` (a user's, or Ctrl-C arriving while it
runs) when the short call's span ends. Prints what the run's caller got, as JSON.
"""

from __future__ import annotations

import json
import sys

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

import shoal
from tests.test_otel import nap


class CtrlCOnEnd(SpanProcessor):
    """Raises ``KeyboardInterrupt`` as the span of the call tagged ``a`` ends."""

    def on_end(self, span: ReadableSpan) -> None:
        if (span.attributes or {}).get("shoal.node.id") == "a":
            raise KeyboardInterrupt


def main() -> None:
    """Run the plan; say how it ended."""
    provider = TracerProvider()
    provider.add_span_processor(CtrlCOnEnd())
    shoal.otel.instrument(provider)
    plan = shoal.Plan(name="p")
    plan.call(nap, seconds=0.2, tag="a", node_id="a")
    plan.call(nap, seconds=30.0, tag="b", node_id="b")
    runtime = shoal.Runtime(store=f"sqlite:///{sys.argv[1]}")
    try:
        runtime.run_sync(plan, run_id="r1")
    except KeyboardInterrupt:
        print(json.dumps({"caller": "KeyboardInterrupt"}), flush=True)
    else:
        print(json.dumps({"caller": "returned"}), flush=True)


if __name__ == "__main__":
    main()
