"""Studies built on the CT pipeline's stages (synth → preprocess → pretrain → extract → read-out)."""
