"""The test suite (tiers: unit, service, e2e). A package, so that ``tests.*`` imports find
this folder before any ``tests`` package a dependency installs (deepstack-python does)."""
