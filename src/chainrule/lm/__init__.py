"""Count-based language models: n-grams with the classic smoothers, ARPA import/export (:mod:`.ngram`)."""
