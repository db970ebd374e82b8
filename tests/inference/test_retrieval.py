"""Retrieval in the encoder's feature space: chunked top-k nearest training studies, RICES in-context
examples (most similar last) and the few-shot prompt they make."""

from __future__ import annotations

import pytest
import torch

from conftest import xray_like
from flamingo_lib.data.sample import CXRSample
from flamingo_lib.inference.batched import generate_in_batches
from flamingo_lib.inference.retrieval import nearest_neighbours, random_examples, rices_examples


def unit_rows(n: int, seed: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, 8, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_chunked_top_k_picks_what_a_sort_of_the_whole_matrix_picks_ties_to_the_lower_index(chunk):
    train = unit_rows(20, 0)
    train[11] = train[4]  # a tie: the lower index comes first
    queries = torch.cat([unit_rows(5, 1), train[4:5]])
    similarity = queries @ train.T
    order = sorted(range(20), key=lambda i: (-float(similarity[5, i]), i))
    got = nearest_neighbours(train, queries, chunk=chunk, k=4)
    assert got[5].tolist() == order[:4] and got[5, :2].tolist() == [4, 11]
    for q in range(5):
        expected = sorted(range(20), key=lambda i: (-float(similarity[q, i]), i))[:4]
        assert got[q].tolist() == expected
    assert torch.equal(got[:, 0], nearest_neighbours(train, queries, chunk=chunk))  # k = 1 agrees


def test_rices_puts_the_most_similar_example_last_and_can_leave_out_the_query_itself():
    train = unit_rows(12, 2)
    queries = train[[3, 7]] * 0.9 + unit_rows(2, 3) * 0.1
    nearest = nearest_neighbours(train, torch.nn.functional.normalize(queries, dim=-1), k=3)
    chosen = rices_examples(train, torch.nn.functional.normalize(queries, dim=-1), k=3)
    assert chosen == [row[::-1] for row in nearest.tolist()] and [row[-1] for row in chosen] == [3, 7]
    own = rices_examples(train, train, k=2, exclude_self=True)
    assert all(q not in row and len(row) == 2 for q, row in enumerate(own))
    with pytest.raises(ValueError, match="k must be at least 1"):
        rices_examples(train, train, k=0)


def test_random_examples_are_seeded_and_never_repeat_within_a_query():
    a, b = random_examples(30, 10, 4, seed=5), random_examples(30, 10, 4, seed=5)
    assert a == b and a != random_examples(30, 10, 4, seed=6)
    assert all(len(set(row)) == 4 for row in a)
    with pytest.raises(ValueError, match="k=5 examples of 4 training studies"):
        random_examples(4, 1, 5)


def test_in_context_examples_come_before_the_query_as_study_report_eoc(tiny, monkeypatch):
    model, processor = tiny
    query = CXRSample("q", [xray_like(0)], "Normal.")
    shots = [CXRSample("a", [xray_like(1)], "Small left pleural effusion."),
             CXRSample("b", [xray_like(2), xray_like(3)], "Cardiomegaly.")]
    asked = []
    real = model.generate_captions
    monkeypatch.setattr(model, "generate_captions", lambda processor, images, prompt, **kw: (
        asked.append((images, prompt)) or real(processor, images, prompt=prompt, **kw)))
    generate_in_batches(model, processor, [query], max_new_tokens=4, progress=False, examples=[shots])
    images, prompts = asked[0]
    assert prompts == ["<image>Findings: Small left pleural effusion.<EOC><image><image>Findings: Cardiomegaly.<EOC>"
                       "<image>Findings:"]
    assert images == [shots[0].images + shots[1].images + query.images]
    generate_in_batches(model, processor, [query], max_new_tokens=4, progress=False)
    assert asked[1] == ([query.images], ["<image>Findings:"])  # zero-shot: the plain prompt
