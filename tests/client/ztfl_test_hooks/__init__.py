"""Dataset hooks for the client tests, referenced by ``package.module:function`` strings."""
