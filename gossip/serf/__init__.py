"""Serf's layer on memberlist: tags, intents, the user-message envelope, internal queries and key operations."""
