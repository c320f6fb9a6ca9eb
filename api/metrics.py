"""Prometheus metrics. One registry per app, so that several apps (tests) never collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "robopt_http_requests_total",
            "HTTP requests by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "robopt_http_request_duration_seconds",
            "HTTP request latency by method and route template.",
            ["method", "route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "robopt_http_requests_in_flight", "Requests being served.", registry=self.registry
        )
        self.uploads = Counter(
            "robopt_uploads_total",
            "Uploads by kind (model, eval_data) and result.",
            ["kind", "result"],
            registry=self.registry,
        )
        self.upload_bytes = Counter(
            "robopt_upload_bytes_total", "Bytes received in accepted uploads.", registry=self.registry
        )
        self.logins = Counter(
            "robopt_logins_total", "Login attempts by result.", ["result"], registry=self.registry
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
