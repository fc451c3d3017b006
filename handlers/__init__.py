"""Request handlers: ``api`` (JSON) and ``pages`` (HTML)."""
