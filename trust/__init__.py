"""Identities and evidence shared by coordinator and clients: signed models, the audit log."""
