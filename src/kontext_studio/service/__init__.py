"""The HTTP service: predictions API (Replicate envelope + BFL shim), jobs, accounts and credits, webhooks."""
