"""Everything written once over the model contract: likelihoods and evaluation
(:mod:`.likelihood`), the sampling loop and text generation (:mod:`.sampling`), beam search
(:mod:`.beam`), decoding processors (:mod:`.processors`) and the determinism path for entropy coding
(:mod:`.coding`).

These functions take any object with the model contract's public face (``validate``, ``forward``,
``init_state``, ``step``, ``head``, ``groups``, ``resolve_order``, ``num_members``, ...): a model
or an ensemble. They import nothing from :mod:`chainrule.models`, which sits above them.
"""
