"""Other libraries' files, read and written without their code: :mod:`.huggingface` (GPT-2
checkpoints as ``save_pretrained`` writes them). Sits above the models (it builds them) and below
the apps and the command line."""
