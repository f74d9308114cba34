"""The HTTP entry point of calsync: OAuth consent, health, metrics (provider webhooks later)."""
