"""Accounts: registration, login, tokens, welcome email, guest-data migration."""
