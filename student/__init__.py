"""The student: Audio Spectrogram Transformer (AST) with token merging (ToMe), its kaldi fbank
features and the knowledge-distillation loss. Pure torch + timm; never imports `pipeline`.

    from student import create_ast
    from student.tome import set_tome_r
    model = create_ast("base384", ast_checkpoint="audioset_10_10_0.4593.pth")
    set_tome_r(model, 16)            # r = 0 restores the plain model
    logits = model(fbank)            # (B, 1024, 128) → (B, 527)
"""

from student.ast import MODEL_SIZES, ASTModel
from student.errors import StudentError
from student.weights import create_ast

__all__ = ["MODEL_SIZES", "ASTModel", "StudentError", "create_ast"]
