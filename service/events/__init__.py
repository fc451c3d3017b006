"""Events: detections sent to webhooks and MQTT as they are recorded.

A rule (``events:`` in the config, or ``PUT /api/events/{name}``) names a target and
filters. :mod:`.rules` holds the rules and decides what a record sends; :mod:`.outbox`
writes events in the record's own transaction and reads them back; :mod:`.delivery`
sends them, at least once, in order per target, through :mod:`.webhook` or :mod:`.mqtt`;
:mod:`.context` opens and closes it all. Details: docs/events.md.
"""
