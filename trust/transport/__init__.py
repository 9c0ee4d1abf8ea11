"""Authenticated transport shared by gateway and sidecar: TLS contexts from federation PKI material and a streaming HTTP/1.1 relay."""
