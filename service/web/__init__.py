"""The HTTP layer: typed app keys (:mod:`.keys`), handlers (:mod:`.handlers`), request
parameters (:mod:`.params`) and uploads (:mod:`.uploads`), access control (:mod:`.auth`,
:mod:`.tokens`), middlewares (:mod:`.middlewares`) and the one table from domain errors
to HTTP (:mod:`.errors`)."""
