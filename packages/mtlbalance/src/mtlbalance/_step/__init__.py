"""The balancing step as a pipeline of stages (private; the public class is
:class:`mtlbalance.Balancer`). One module per stage, each fed one per-step object
(:class:`~mtlbalance._step.context.Step`); their order is in :mod:`.pipeline`, and
docs/architecture.md draws it."""
