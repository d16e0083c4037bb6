"""torch.compile of the student (student.compile): one graph per r with no break inside the blocks,
logits equal to eager, and a fallback to eager with one warning where compilation fails.

The graph checks use torch._dynamo.explain and the "aot_eager" backend: the same graph capture
(dynamo + AOT autograd) as the user's default inductor, without code generation, which on this
2-core CI CPU takes minutes per r (docs/benchmarks.md has inductor's own equality and speed figures).
"""

from __future__ import annotations

import logging

import pytest
import torch

from student import StudentError, create_ast
from student.compile import compile_student, first_calls, is_compiled, unavailable_reason
from student.tome import set_tome_r

R_SETTINGS = [0, 16, 32, [16, 4]]  # 66 tokens: r = 32 hits the per-block cap (half the patches)


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return create_ast("custom", num_classes=10, input_fdim=128, input_tdim=128, fstride=16, tstride=16,
                      embed_dim=64, depth=2, num_heads=2).eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 128, 128, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("r", R_SETTINGS, ids=str)
def test_the_whole_forward_is_one_graph_at_every_r(model, x, r) -> None:
    set_tome_r(model, r)
    torch._dynamo.reset()
    with torch.inference_mode():
        explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0, [str(b.reason) for b in explained.break_reasons]
    assert explained.graph_count == 1


def test_compiled_logits_equal_eager_at_every_r_and_a_new_r_is_a_new_graph(model, x) -> None:
    torch._dynamo.reset()
    eager = {}
    with torch.inference_mode():
        for r in R_SETTINGS:
            set_tome_r(model, r)
            eager[str(r)] = model(x)
        assert compile_student(model, backend="aot_eager")
        for r in R_SETTINGS:
            set_tome_r(model, r)
            compiled = model(x)
            assert is_compiled(model)
            assert torch.allclose(compiled, eager[str(r)], atol=1e-4, rtol=0), r
    assert not torch.allclose(eager["0"], eager["16"])  # the r settings really differ


def test_a_failing_compiler_falls_back_to_eager_with_one_warning(model, x, caplog) -> None:
    def broken_backend(graph, example_inputs):
        raise RuntimeError("no code generator here")

    torch._dynamo.reset()
    set_tome_r(model, 16)
    with torch.inference_mode():
        expected = model(x)
        assert compile_student(model, backend=broken_backend)
        with caplog.at_level(logging.WARNING, logger="student.compile"):
            first, second = model(x), model(x)
    warnings = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
    assert len(warnings) == 1 and "running eager" in warnings[0] and "no code generator here" in warnings[0]
    assert not is_compiled(model)
    assert torch.equal(first, expected) and torch.equal(second, expected)


def test_an_input_the_model_refuses_is_its_own_error_and_compilation_stays_on(model) -> None:
    torch._dynamo.reset()
    assert compile_student(model, backend="aot_eager")
    with torch.inference_mode(), pytest.raises(StudentError, match="AST expects fbank input"):
        model(torch.zeros(1, 64, 128))
    assert is_compiled(model)


def test_no_cxx_compiler_means_eager_with_one_warning(model, monkeypatch, caplog) -> None:
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    assert "C++ compiler" in unavailable_reason("inductor")
    with caplog.at_level(logging.WARNING, logger="student.compile"):
        assert not compile_student(model, backend="inductor")
    assert not is_compiled(model)
    assert [rec.getMessage() for rec in caplog.records].count(
        "--compile: " + unavailable_reason("inductor") + "; running eager") == 1


def test_first_calls_time_each_setting_once(model, x) -> None:
    calls = []
    with torch.inference_mode():
        seconds = first_calls(lambda: calls.append(model(x)), [("0", lambda: set_tome_r(model, 0)),
                                                                 ("16", lambda: set_tome_r(model, 16))], "cpu")
    assert list(seconds) == ["0", "16"] and all(s > 0 for s in seconds.values()) and len(calls) == 2
