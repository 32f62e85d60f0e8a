"""Histogram buckets shared by the API's and the workers' metrics, so their quantiles line up in Grafana."""

LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
"""Seconds, from a cached instant reply to a long generation that waited in the queue."""

OVERHEAD = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
"""Seconds the gateway adds to a request (services/api/observability/overhead.py): well under the latency buckets."""

INTER_TOKEN = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Seconds between tokens: a GPU's few milliseconds to a busy CPU's fraction of a second."""
