"""Security building blocks shared by the operator, the workers and the gateway.

Outbound URL checks against server-side request forgery (`urlguard`), and the other guards the
design names (token keyring, webhook verification) as they are added. Nothing here imports
kopf or a Kubernetes client.
"""
