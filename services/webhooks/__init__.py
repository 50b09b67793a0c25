"""Webhooks: the verified, stored-once inbox and its processing."""
