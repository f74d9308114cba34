"""Thin Kopf handlers that translate between Kubernetes objects and the engine."""
