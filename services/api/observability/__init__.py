"""What the API reports about itself: Prometheus metrics, request ids, overhead, recent traffic, queue views."""
