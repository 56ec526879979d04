"""Text: tokenizers (:mod:`chainrule.text.tokenizers`): character, byte, word and BPE with one
protocol. The n-gram language models live in :mod:`chainrule.lm.ngram`."""
