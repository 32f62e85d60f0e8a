"""Who may call what, and how much: route access, model allowlists, per-key RPM/TPM, usage, exposure."""
