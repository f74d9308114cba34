"""The Kopf entry point: settings, startup checks and handler registration."""
