"""`python -m services.models`: put a model in the catalog (from Hugging Face or a local file) in one command."""
