"""The detection service around the engine: the ``/detect`` work (:mod:`.detect`), the
record writer (:mod:`.recorder`), metrics (:mod:`.metrics`), the worker processes
(:mod:`.workers`) and the HTTP layer (:mod:`.web`)."""
