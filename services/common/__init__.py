"""Code shared by the API and the workers: settings, key names, wire formats, errors, schemas."""
