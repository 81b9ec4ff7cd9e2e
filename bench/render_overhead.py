"""What bounded rendering costs: a catalogue-sized template rendered in-process (unbounded, on the caller's
thread) and through ``bounded_render`` (a child process forked from the forkserver, with rlimits).

    .venv/bin/python bench/render_overhead.py [--runs 50]

Prints the median and p95 of both, their difference and ratio. The child process is the price of being able
to stop a hostile template; the difference should stay in the low milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time

os.environ.setdefault("DEBUG", "true")  # the bench needs no SECRET_KEY

TEMPLATE = """services:
{% for n in range(services) %}
  app{{ n }}:
    image: nginx:1.27-alpine
    environment:
      PASSWORD: "{{ password }}"
      INDEX: "{{ n }}"
    ports: ["{{ 20000 + n }}:80"]
    labels: {a: "1", b: "2"}
{% endfor %}
"""


def _summary(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[max(0, int(len(ordered) * 0.95) - 1)] * 1000


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--services", type=int, default=20)
    args = parser.parse_args()

    from backend.app.services.stacks import bounded_render, templating

    specs = templating.parse_variables([{"name": "password", "type": "secret"}, {"name": "services", "type": "integer"}])
    values = {"password": "p" * 24, "services": args.services}
    await bounded_render.render_stack(TEMPLATE, specs, values)  # start the forkserver (once per process)
    inline, bounded = [], []
    for _ in range(args.runs):
        started = time.perf_counter()
        templating.render_stack(TEMPLATE, specs, values)
        inline.append(time.perf_counter() - started)
        started = time.perf_counter()
        await bounded_render.render_stack(TEMPLATE, specs, values)
        bounded.append(time.perf_counter() - started)
    (im, ip), (bm, bp) = _summary(inline), _summary(bounded)
    print(f"{args.runs} renders of a {args.services}-service template")
    print(f"{'':12}{'median ms':>12}{'p95 ms':>10}")
    print(f"{'in-process':12}{im:12.2f}{ip:10.2f}")
    print(f"{'bounded':12}{bm:12.2f}{bp:10.2f}")
    print(f"difference of medians: {bm - im:.2f} ms, ratio {bm / im:.1f}x")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    asyncio.run(main())
