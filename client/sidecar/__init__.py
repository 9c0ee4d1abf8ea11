"""The client sidecar: presents the client certificate to the gateway and enforces the app-bundle allow-list."""
