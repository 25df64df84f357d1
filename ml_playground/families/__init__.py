"""Model families: one module per ``train.model.kind``, all implementing ``base.ModelFamily``.

The commands (``train``, ``sample``, ``eval``, ``export``, ``serve``) ask ``registry.family_of`` for
the family of an experiment and call its protocol; none of them branches on the kind.
"""
