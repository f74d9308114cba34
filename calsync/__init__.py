"""calsync: Kubernetes-native calendar sync."""

__version__ = "0.1.0"
