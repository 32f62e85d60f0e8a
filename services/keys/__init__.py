"""API keys: the keys file (hashes only), the reloading key ring the API reads, and the CLI that edits it."""
