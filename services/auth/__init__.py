"""The auth service: the OAuth2 authorization server whose tokens every API checks."""

SERVICE = "auth"
"""Its one name: the app's (logs, metrics, health); it consumes and publishes no events."""
