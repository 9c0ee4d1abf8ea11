"""The policy enforcement point: the mutual-TLS gateway in front of the SuperLink."""
