"""A request's life between its route and the queue: read the body, admit, enqueue, relay the job's events, release."""
