"""The client sidecar: presents the client certificate to the gateway, enforces the app-bundle
allow-list."""
