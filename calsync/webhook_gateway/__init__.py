"""The HTTP entry point of calsync: provider webhooks, OAuth consent, health, metrics."""
