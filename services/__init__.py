"""Self-hosted, OpenAI-compatible inference service on a Redis job queue."""
