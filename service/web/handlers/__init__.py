"""Request handlers: ``api`` (JSON), ``pages`` (HTML) and ``login`` (sessions)."""
