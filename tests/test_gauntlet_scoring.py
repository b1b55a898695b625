"""Scoring, exactly: a stub model whose log-likelihoods are counted by hand decides every task type, and the
batched scorer equals one sequence at a time on a real model."""

import math
import random

import pytest
import torch
from gauntlet_fixtures import SuccessorLM, lp_hit, successors, text_logprob, write_bundle
from trainer_fixtures import byte_tokenizer

from nanogpt.engine import generate
from nanogpt.gauntlet.data import final_answer, is_correct, load_task, render
from nanogpt.gauntlet.evaluate import prepare, run_gauntlet
from nanogpt.gauntlet.scoring import Request, generate_greedy, score_requests
from nanogpt.gauntlet.tasks import TASKS
from nanogpt.model import GPT, GPTConfig

LETTERS = {"a": "b", "b": "c", "c": "d", "d": "e", "e": " ", " ": "x", "x": "y", "y": "z", "z": "."}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _run(tmp_path, tasks, pairs, *, extra=None, tokenizer=None, sequence_len=64, preset=None):
    tokenizer = tokenizer or byte_tokenizer()
    bundle = write_bundle(tmp_path / "bundle", tasks)
    model = SuccessorLM(successors(pairs, extra), vocab_size=tokenizer.vocab_size, sequence_len=sequence_len)
    gauntlet = prepare(preset or ",".join(tasks), bundle, tokenizer)
    return run_gauntlet(model, gauntlet, tokenizer), model, bundle


def _by_name(result):
    return {score.name: score for score in result.scores}


# --- the log-likelihood scorer ----------------------------------------------------------------------------


def _encode(text: str) -> tuple[int, ...]:
    return tuple(text.encode())


@pytest.mark.parametrize(("max_batch_tokens", "pad_multiple"), [(1, 1), (64, 8), (10_000, 64)])
def test_scores_are_the_log_likelihoods_counted_by_hand_whatever_the_batching(max_batch_tokens, pad_multiple):
    vocab = 257
    model = SuccessorLM(successors(LETTERS), vocab_size=vocab, sequence_len=64)
    rng = random.Random(0)
    alphabet = "abcdexyz. q"
    pairs = [
        (
            "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30))),
            "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8))),
        )
        for _ in range(40)
    ]
    pairs.append(("abcde", " xyz."))  # every token the model's first choice
    requests = [Request(context=_encode(c), continuation=_encode(k)) for c, k in pairs]
    scores = score_requests(model, requests, max_batch_tokens=max_batch_tokens, pad_multiple=pad_multiple)
    for (context, continuation), score in zip(pairs, scores, strict=True):
        expected, num_tokens = text_logprob(context, continuation, LETTERS, vocab)
        assert score.logprob == pytest.approx(expected, rel=1e-6, abs=1e-5)  # float32 log-softmax
        assert score.num_tokens == num_tokens
        hits = all(
            LETTERS.get(a) == b for a, b in zip(context[-1] + continuation, continuation, strict=False)
        )
        assert score.greedy == hits
        assert not score.truncated
    assert scores[-1].greedy and scores[-1].logprob == pytest.approx(5 * lp_hit(vocab), abs=1e-5)


def test_a_long_context_loses_its_left_and_a_continuation_longer_than_the_context_is_not_scored():
    model = SuccessorLM(successors(LETTERS), vocab_size=257, sequence_len=16)
    long_context = _encode("q" * 40 + "abcde")
    scores = score_requests(
        model,
        [
            Request(context=long_context, continuation=_encode(" xyz.")),
            Request(context=_encode("a"), continuation=_encode("b" * 16)),  # 17 tokens: fits exactly
            Request(context=_encode("a"), continuation=_encode("b" * 17)),  # does not fit
        ],
    )
    assert scores[0].truncated and scores[0].greedy and scores[0].num_tokens == 5
    assert scores[0].logprob == pytest.approx(5 * lp_hit(257), abs=1e-5)
    assert scores[1] is not None and not scores[1].truncated
    assert scores[2] is None
    assert max(length for _, length in model.calls) <= 16


@torch.no_grad()
def test_batched_scores_equal_one_sequence_at_a_time_on_a_real_model():
    torch.manual_seed(0)
    model = GPT(GPTConfig(depth=2, vocab_size=100, sequence_len=48, aspect_ratio=16, head_dim=16))
    model.init_weights()
    for p in model.parameters():
        p.normal_(0.0, 0.3)
    gen = torch.Generator().manual_seed(1)
    requests = []
    for _ in range(30):
        n_ctx, n_cont = (
            torch.randint(1, 40, (1,), generator=gen).item(),
            torch.randint(1, 8, (1,), generator=gen).item(),
        )
        tokens = torch.randint(0, 100, (n_ctx + n_cont,), generator=gen).tolist()
        requests.append(Request(context=tuple(tokens[:n_ctx]), continuation=tuple(tokens[n_ctx:])))
    batched = score_requests(model, requests, max_batch_tokens=256, pad_multiple=16)
    for request, score in zip(requests, batched, strict=True):
        tokens = list((request.context + request.continuation)[-49:])
        x, y = torch.tensor([tokens[:-1]]), torch.tensor([tokens[1:]])
        y[0, : len(tokens) - 1 - len(request.continuation)] = -1
        nll = model(x, y, reduction="none")
        assert score.logprob == pytest.approx(-nll.sum().item(), abs=1e-4)
        assert score.num_tokens == len(request.continuation)
        n = len(request.continuation)
        predicted = model(x)[0, -n:].argmax(-1)
        assert score.greedy == bool((predicted == y[0, -n:]).all())


# --- each task type, end to end through prepare and run_gauntlet -----------------------------------------


def test_multiple_choice_picks_the_best_mean_log_likelihood_and_records_the_sum(tmp_path):
    rows = [
        {"query": "abcde", "choices": ["xyz.", "qrs."], "gold": 0},  # right either way
        {"query": "abcde", "choices": ["xyz.", "qrs."], "gold": 1},  # wrong either way
        # " q": 1 hit + 1 miss; " xyzq": 4 hits + 1 miss. Per token the second is likelier, in sum the first.
        {"query": "abcde", "choices": ["q", "xyzq"], "gold": 1},
    ]
    result, _, bundle = _run(tmp_path, {"copa": rows}, LETTERS)
    copa = _by_name(result)["copa"]
    assert copa.correct.tolist() == [True, False, True]
    assert copa.accuracy == pytest.approx(2 / 3)
    assert copa.extra["accuracy_sum"] == pytest.approx(1 / 3)
    assert copa.centered == pytest.approx((2 / 3 - 0.5) / 0.5)
    assert copa.centered_stderr == pytest.approx(math.sqrt(2 / 9 / 3) / 0.5)
    # The same decisions from the rendered text and the log-likelihoods counted by hand.
    loaded = load_task(TASKS["copa"], bundle)
    for index, row in enumerate(rows):
        text = render(TASKS["copa"], loaded.rows, index, [])
        means = []
        for context, continuation in zip(text.contexts, text.continuations, strict=True):
            stripped = context.rstrip(" ")
            total, n = text_logprob(stripped, context[len(stripped) :] + continuation, LETTERS, 257)
            means.append(total / n)
        assert (means.index(max(means)) == row["gold"]) == copa.correct[index]


def test_schema_scores_the_one_continuation_after_each_context_option(tmp_path):
    rows = [
        {"context_options": ["abcde", "abcdq"], "continuation": "xyz.", "gold": 0},
        {"context_options": ["abcdq", "abcde"], "continuation": "xyz.", "gold": 1},
        {"context_options": ["abcde", "abcdq"], "continuation": "xyz.", "gold": 1},
    ]
    result, model, _ = _run(tmp_path, {"winograd": rows}, LETTERS)  # 3 shots: the two other rows each
    winograd = _by_name(result)["winograd"]
    assert winograd.correct.tolist() == [True, True, False]
    assert winograd.centered == pytest.approx((2 / 3 - 0.5) / 0.5)
    assert sum(batch for batch, _ in model.calls) == 6  # one sequence per option, in one padded batch
    assert len(model.calls) == 1


def test_run_gauntlet_reports_each_task_as_its_scoring_ends(tmp_path):
    rows = {
        "copa": [{"query": "abcde", "choices": ["xyz.", "qrs."], "gold": 0}],
        "lambada_openai": [{"context": "abcde", "continuation": "xyz."}],
    }
    bundle = write_bundle(tmp_path / "bundle", rows)
    tokenizer = byte_tokenizer()
    model = SuccessorLM(successors(LETTERS), vocab_size=tokenizer.vocab_size, sequence_len=64)
    gauntlet = prepare("lambada_openai,copa", bundle, tokenizer)
    reported = []
    result = run_gauntlet(model, gauntlet, tokenizer, on_task=lambda name, s: reported.append((name, s)))
    assert [name for name, _ in reported] == [task.spec.name for task in gauntlet.tasks]
    assert sorted(name for name, _ in reported) == ["copa", "lambada_openai"]
    assert dict(reported) == {name: s for name, s in result.seconds.items() if name != "total"}


def test_language_modeling_needs_the_exact_greedy_continuation(tmp_path):
    rows = [
        {"context": "abcde", "continuation": "xyz."},  # " xyz.": each token the likeliest
        {"context": "abcde", "continuation": "xyq"},  # q is not y's successor
        {"context": "q" * 100 + "abcde", "continuation": "xyz."},  # longer than the context: left cut
    ]
    result, _, _ = _run(tmp_path, {"lambada_openai": rows}, LETTERS)
    lambada = _by_name(result)["lambada_openai"]
    assert lambada.correct.tolist() == [True, False, True]
    assert lambada.extra["num_truncated"] == 1 and lambada.extra["num_unscored"] == 0
    assert lambada.centered == pytest.approx(2 / 3)  # baseline 0


def test_generation_stops_at_the_stop_strings_normalizes_and_matches_at_a_word_boundary(tmp_path):
    trivia = [
        {"context": "6*7=", "answer": "42"},
        {"context": "6*7=", "answer": "The 42"},  # normalized: articles go
        {"context": "6*7=", "answer": "4"},  # "42" starts with "4", but not at a word boundary
        {"context": "6*7=", "answer": "x", "aliases": ["y", "42!"]},
    ]
    svamp = [  # the prompt ends in "\n\nA:"; the model writes "7\n\n" and stops at the blank line
        {"context": "3+4?", "chain_of_thought": "3+4", "answer": "7"},
        {"context": "8+9?", "chain_of_thought": "8+9", "answer": "17"},
    ]
    pairs = {"=": "4", "4": "2", "2": "\n", "\n": "\n", ":": "7", "7": "\n"}
    result, model, _ = _run(tmp_path, {"triviaqa_sm_sub": trivia, "svamp": svamp}, pairs)
    scores = _by_name(result)
    assert scores["triviaqa_sm_sub"].correct.tolist() == [True, True, False, True]
    assert scores["svamp"].correct.tolist() == [True, False]
    # Generation ended when every row had met a stop string, not after max_new_tokens (32).
    assert len(model.calls) < 10


def test_a_generation_prompt_cut_to_the_context_counts_as_truncated(tmp_path):
    """A prompt keeps its last sequence_len - max_new_tokens + 1 tokens (65 of a 128-token context here);
    one longer is truncated, counted as the log-likelihood tasks count theirs (it was always 0 here)."""
    gsm8k = [{"context": "5+7?", "answer": "12"}, {"context": "q" * 500 + "5+7?", "answer": "12"}]
    tokenizer = byte_tokenizer().with_chat_tokens()
    result, _, _ = _run(
        tmp_path, {"chat_gsm8k": gsm8k}, {}, tokenizer=tokenizer, sequence_len=128, preset="chat_gsm8k"
    )
    assert _by_name(result)["chat_gsm8k"].extra["num_truncated"] == 1


def test_chat_choice_scores_the_letters_and_chat_generation_the_number(tmp_path):
    tokenizer = byte_tokenizer().with_chat_tokens()
    im_end = tokenizer.special("<|im_end|>")
    arc = [
        {"query": "Question: which?", "choices": ["x", "y", "z"], "gold": 1},
        {"query": "Question: which?", "choices": ["x", "y", "z"], "gold": 0},
    ]
    # The assistant's turn opens with "assistant\n": after "\n" the model says B.
    result, _, _ = _run(
        tmp_path / "a",
        {"chat_arc_easy": arc},
        {"\n": "B"},
        tokenizer=tokenizer,
        sequence_len=128,
        preset="chat",
    )
    assert _by_name(result)["chat_arc_easy"].correct.tolist() == [True, False]
    (chatcore,) = result.aggregates  # over the one chat task with data; the others are missing
    assert chatcore.name == "chatcore_average" and chatcore.score == pytest.approx((0.5 - 0.25) / 0.75)
    assert chatcore.missing == ("chat_arc_challenge", "chat_mmlu", "chat_gsm8k")
    gsm8k = [{"context": "5+7?", "answer": "12"}, {"context": "6+7?", "answer": "13"}]
    pairs = {"\n": "1", "1": "2"}
    result, _, _ = _run(
        tmp_path / "g",
        {"chat_gsm8k": gsm8k},
        pairs,
        extra={ord("2"): im_end},
        tokenizer=tokenizer,
        sequence_len=128,
    )
    assert _by_name(result)["chat_gsm8k"].correct.tolist() == [True, False]


def test_chat_tasks_are_unavailable_to_a_model_without_chat_tokens(tmp_path):
    arc = [{"query": "which?", "choices": ["x", "y"], "gold": 1}] * 2
    result, _, _ = _run(tmp_path, {"chat_arc_easy": arc, "copa": arc}, LETTERS)
    assert "chat_arc_easy" in result.skipped and "no chat tokens" in result.skipped["chat_arc_easy"]
    assert [s.name for s in result.scores] == ["copa"]


def test_the_answer_is_read_after_the_chain_of_thought_and_before_the_stop():
    gsm8k = TASKS["gsm8k"]
    output = " Janet sells 16 - 3 - 4 = 9 eggs. The answer is 18.\n\nQ: Another question? The answer is 5."
    assert final_answer(gsm8k, output) == "18."
    assert is_correct(gsm8k, output, ["18"])
    assert not is_correct(gsm8k, output, ["1"])  # "18." starts with "1", not at a word boundary
    assert not is_correct(gsm8k, " 9 eggs.\n\nThe answer is 18", ["18"])  # the answer came after the stop
    chat = TASKS["chat_gsm8k"]
    assert is_correct(chat, "16 - 3 - 4 = 9, 9 * 2 = 18\n#### 18", ["18"])
    assert is_correct(chat, "She makes $1,800 in the end: 1800", ["1800"])
    assert not is_correct(chat, "#### 17", ["18"])
    # A longer number does not answer its first digits: 1.5 is not 1, 1,000 is not 1; 18.0 is 18.
    svamp = TASKS["svamp"]
    assert not is_correct(svamp, " ( 3.0 / 2.0 ) The answer is 1.5", ["1"])
    assert not is_correct(svamp, " The answer is 1,000.", ["1"])
    assert is_correct(svamp, " The answer is 18.0.", ["18"]) and is_correct(
        svamp, " The answer is 18, so", ["18"]
    )
    assert is_correct(gsm8k, " The answer is 2,125.", ["2,125"])
    trivia = TASKS["triviaqa_sm_sub"]
    assert is_correct(trivia, " The Onion skins\nQuestion", ["onion"])
    assert not is_correct(trivia, " Onionskin", ["onion"])


@torch.no_grad()
def test_batched_greedy_generation_equals_one_prompt_at_a_time_on_a_real_model():
    torch.manual_seed(0)
    model = GPT(GPTConfig(depth=2, vocab_size=100, sequence_len=48, aspect_ratio=16, head_dim=16))
    model.init_weights()
    for p in model.parameters():
        p.normal_(0.0, 0.3)
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 100, (n,), generator=gen).tolist() for n in (3, 9, 17, 30, 5)]
    batched = generate_greedy(model, prompts, max_new_tokens=6, decode=lambda ids: "", max_rows=3)
    for prompt, tokens in zip(prompts, batched, strict=True):
        alone = list(generate(model, prompt, max_new_tokens=6, temperature=0.0, top_k=None))
        assert tokens == alone


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_a_gpu_in_bf16_the_scores_and_generations_match_the_cpus():
    torch.manual_seed(0)
    config = GPTConfig(depth=2, vocab_size=100, sequence_len=48, aspect_ratio=16, head_dim=16)
    cpu = GPT(config)
    cpu.init_weights()
    with torch.no_grad():
        for p in cpu.parameters():
            p.normal_(0.0, 0.3)
    gpu = GPT(config).cuda()
    gpu.init_weights()
    gpu.load_state_dict(cpu.state_dict())
    gen = torch.Generator().manual_seed(1)
    requests = [
        Request(context=tuple(torch.randint(0, 100, (20,), generator=gen).tolist()), continuation=(5, 6, 7))
        for _ in range(20)
    ]
    expected = score_requests(cpu, requests)
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
        got = score_requests(gpu, requests)
        tokens = generate_greedy(
            gpu, [r.context for r in requests[:4]], max_new_tokens=4, decode=lambda ids: ""
        )
    pairs = [(round(a.logprob, 3), round(b.logprob, 3)) for a, b in zip(expected, got, strict=True)]
    off = [(a, b) for a, b in pairs if b != pytest.approx(a, rel=0.05, abs=0.05)]
    assert not off, f"(CPU float32, GPU bf16) log-likelihoods apart: {off} of {pairs}"
    assert [len(row) for row in tokens] == [4] * 4
