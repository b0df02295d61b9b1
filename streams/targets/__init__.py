"""Target types: one module per `type:` of a target, registered in `streams.targets.registry`."""
