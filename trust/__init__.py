"""Identities and evidence shared by coordinator and clients: signed model manifests, the audit log."""
