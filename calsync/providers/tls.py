"""The process's one verifying TLS context, shared by every provider client.

Building a context reads the CA bundle (about 20 ms) and keeps it in OpenSSL's memory (about
0.8 MiB), outside what Python's garbage collector sees. A client built per sync with a context
of its own therefore grew a worker's RSS by megabytes a minute under steady Google and Graph
traffic: the closed clients' contexts waited for a full collection, which that invisible memory
never prompts. One context for all of them costs the bundle once.
"""

from __future__ import annotations

import functools
import ssl

import httpx


@functools.cache
def ssl_context() -> ssl.SSLContext:
    """The shared verifying context (httpx's defaults: certifi's bundle, TLS 1.2 and up)."""
    return httpx.create_ssl_context()
