"""The student: Audio Spectrogram Transformer (AST) with token merging (ToMe), its kaldi fbank
features and the knowledge-distillation loss. Pure torch + timm; never imports `pipeline`."""
