"""The warm model workers: the pool (:mod:`.pool`) and its job queue (:mod:`.queue`),
thread policy (:mod:`.threads`) and counters (:mod:`.stats`); the messages that cross
the process boundary (:mod:`.protocol`); the parent's handle on one worker
(:mod:`.process`) and the code that runs in it (:mod:`.child`)."""
