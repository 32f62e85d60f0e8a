"""The Falcon API: OpenAI-compatible routes in front of the Redis job queue."""
