"""Text: tokenizers and n-gram language models.

- :mod:`chainrule.text.tokenizers`: character, byte, word and BPE tokenizers with one protocol.
- :mod:`chainrule.text.ngram`: n-gram language models with the classic smoothers, ARPA import/export.
"""
