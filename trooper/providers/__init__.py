"""Providers: the protocols, the error taxonomy, the entry-point registry and the built-ins."""
