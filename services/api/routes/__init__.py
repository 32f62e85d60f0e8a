"""The HTTP routes: one Falcon resource per OpenAI endpoint (or family), thin adapters over the pipeline."""
