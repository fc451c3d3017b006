"""The served models: one :class:`~.server.ModelServer` per model (queue, batching,
workers, warm-up, readiness, version), found by name in :class:`~.servers.ModelServers`."""
