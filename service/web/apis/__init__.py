"""The HTTP APIs that detect, each a codec (decode/encode) around
:func:`service.web.detecting.detect_with`: ``native`` (POST /detect) and ``deepstack``
(its own sub-app)."""
