"""``python -m model.train``: the training command (:mod:`model.train.train`)."""

from model.train.train import main

main()
