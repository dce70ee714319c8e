"""mlrkit.negation: negated captions, the chat client (against a loopback server), fine-tuning, benchmarks.

Everything runs on the ``tiny`` CLIP and a few real fashion-mosaic images; the only network traffic
goes to an HTTP server this file starts on 127.0.0.1.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip")

from mlrkit import vl  # noqa: E402
from mlrkit.errors import DataError, MlrkitError  # noqa: E402
from mlrkit.negation import bench, captions  # noqa: E402
from mlrkit.negation.finetune import FinetuneConfig, finetune_negation, split_by_image  # noqa: E402
from mlrkit.negation.llm import ChatClient, LLMConfig  # noqa: E402
from tests.conftest import run_cli  # noqa: E402

NAMES = ["Cat", "Dog", "Leash", "Car", "Ankle boot"]


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tiny() -> vl.VisionLanguageModel:
    return vl.load("tiny")


@pytest.fixture(scope="module")
def mosaic():
    from mlrkit.data import load_dataset

    return load_dataset("fashion-mosaic", limit_train=48, limit_test=24)


# ---------------------------------------------------------------------------- P1 proposals
def _structured_targets() -> np.ndarray:
    """Training annotations: cat co-occurs with dog (30x) and leash (10x), never with car / ankle boot."""
    rows = [[1, 1, 0, 0, 0]] * 30 + [[1, 0, 1, 0, 0]] * 10 + [[0, 0, 0, 1, 1]] * 20 + [[0, 1, 1, 0, 0]] * 5
    return np.array(rows, dtype=np.uint8)


def test_context_proposals_are_absent_and_cooccurrence_weighted():
    train = _structured_targets()
    cooc = captions.cooccurrence(train)
    assert cooc[0, 1] == 30 and cooc[0, 2] == 10 and cooc[0, 3] == 0 and np.all(np.diag(cooc) == 0)
    rng = np.random.default_rng(0)
    present = np.array([0])  # an image with only a cat
    absent_ok = captions.verified_absent(np.array([1, 0, 0, 0, 0]))
    draws = [captions.propose_context(present, absent_ok, cooc, rng)[0] for _ in range(2000)]
    counts = np.bincount(draws, minlength=5)
    assert counts[0] == 0  # never the present class
    assert counts[3] == 0 and counts[4] == 0  # never a class that does not co-occur with the present ones
    assert abs(counts[1] / 2000 - 0.75) < 0.04  # proportional to co-occurrence: 30 / (30 + 10)
    rand = [captions.propose_random(absent_ok, rng)[0] for _ in range(2000)]
    rc = np.bincount(rand, minlength=5)
    assert rc[0] == 0 and rc[3] > 300 and rc[4] > 300  # Rand-P1 differs: uniform over the absent classes
    # no co-occurring absent class -> no context proposal (the caller skips or falls back, counted)
    assert captions.propose_context(np.array([3, 4]), captions.verified_absent(np.array([0, 0, 0, 1, 1])),
                                    cooc, rng) is None


def test_generate_p1_verifies_against_annotations_and_counts():
    train = _structured_targets()
    targets = np.array([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 0, 1, 1], [0, 1, 0, 0, 0]], np.uint8)
    known = np.ones_like(targets, bool)
    known[3, 0] = False  # image 3: "cat" is unknown -> may not be proposed as absent
    ids = ["a", "b", "c", "d"]
    caps = ["a photo of a cat.", "a cat and a dog.", "a car and an ankle boot.", "a dog."]
    rows, rep = captions.generate_p1(class_names=NAMES, targets=targets, ids=ids, captions=caps, known=known,
                                     cooc_targets=train, per_image=20, seed=1)
    lookup = captions.class_lookup(NAMES)
    for r in rows:
        i = ids.index(r["image_id"])
        for o in r["absent_objects"]:
            c = lookup[o]
            assert targets[i, c] == 0 and known[i, c]
        assert r["kind"] == "P1" and r["proposer"] == "context" and r["absent_objects"][0] in r["negated_caption"]
        assert r["caption"] == caps[i]
    by_image = {i: {o for r in rows if r["image_id"] == i for o in r["absent_objects"]} for i in ids}
    assert by_image["a"] <= {"dog", "leash"} and by_image["b"] == {"leash"}
    assert "cat" not in by_image["d"]  # unknown entries are never "verified absent"
    assert rep.counts["no_context_candidate"] == 20 and rep.examples_skipped["no_context_candidate"][0] == "c"
    assert rep.rows == len(rows) and rep.counts["verified_by_annotations"] == len(rows)
    # the random ablation proposes classes the context proposer never does, and fallback is labelled
    rrows, _ = captions.generate_p1(class_names=NAMES, targets=targets, ids=ids, captions=caps, known=known,
                                    cooc_targets=train, per_image=20, seed=1, proposer="random")
    assert {o for r in rrows if r["image_id"] == "a" for o in r["absent_objects"]} > by_image["a"]
    assert all(r["proposer"] == "random" for r in rrows)
    frows, frep = captions.generate_p1(class_names=NAMES, targets=targets, ids=ids, captions=caps,
                                       cooc_targets=train, per_image=2, seed=1, context_fallback="random")
    assert {r["proposer"] for r in frows if r["image_id"] == "c"} == {"random"}
    assert frep.counts["context_fallback_random"] == 2


def test_templates_and_synthesised_captions():
    assert captions.negate_with_template("a photo of a bag.", ["shirt"], "{caption} with no {obj}.") == \
        "a photo of a bag with no shirt."
    assert captions.negate_with_template("a bag", ["ankle boot", "coat"], "{caption} without {a_obj}.") == \
        "a bag without an ankle boot or a coat."
    t = np.array([[1, 0, 0, 0, 1]], np.uint8)
    rows, _ = captions.generate_p1(class_names=NAMES, targets=t, ids=["x"], cooc_targets=_structured_targets(),
                                   proposer="random", per_image=3, seed=0)
    for r in rows:  # captions made from the labels, as mosaic-clip's training captions
        assert "cat" in r["caption"] and "ankle boot" in r["caption"]
        assert r["negated_caption"] != r["caption"]


# ---------------------------------------------------------------------------- P2
@pytest.mark.parametrize("question, statement, objects", [
    ("Is there a dog?", "there is no dog.", ["dog"]),
    ("Is there a dog on the bed?", "there is no dog on the bed.", ["dog"]),
    ("Are there any people in the water?", "there are no people in the water.", ["people"]),
    ("Is the man wearing a hat?", "the man is not wearing a hat.", []),
    ("Is the tennis player holding a racket?", "the tennis player is not holding a racket.", []),
    ("Is the door open?", "the door is not open.", []),
    ("Does the cat have a collar?", "the cat does not have a collar.", []),
    ("Is it raining?", "it is not raining.", []),
    ("Can you see the sky?", "you cannot see the sky.", []),
])
def test_p2_rewrites_yes_no_questions(question, statement, objects):
    assert captions.rewrite_yes_no(question) == (statement, objects)


def test_generate_p2_counts_everything(tmp_path):
    vqa = [{"image": "1.jpg", "question": "Is there a dog?", "answer": "no"},
           {"image": "1.jpg", "question": "Is there a cat?", "answer": "Yes"},
           {"image": "2.jpg", "question": "What color is the car?", "answer": "red"},
           {"image": "2.jpg", "question": "Why?", "answer": "no"},
           {"image": "3.jpg", "question": "Is the bus red?", "answer": "No."}]
    path = tmp_path / "vqa.json"
    path.write_text(json.dumps(vqa))
    rows, rep = captions.generate_p2(captions.read_vqa(path), captions={"1.jpg": "a living room."},
                                     form="statement")
    assert [r["negated_caption"] for r in rows] == ["there is no dog.", "the bus is not red."]
    assert rows[0]["caption"] == "a living room." and rows[1]["caption"] is None
    assert all(r["kind"] == "P2" and r["p2_form"] == "statement" for r in rows)
    assert rep.counts == {"answer_yes": 1, "not_yes_no": 1, "unparsed_question": 1}
    assert rep.examples_skipped["unparsed_question"] == ["2.jpg: Why?"]
    # the default (the paper's P2): the image's caption augmented; an image without a caption is counted
    rows, rep = captions.generate_p2(captions.read_vqa(path), captions={"1.jpg": "a living room.",
                                                                        "2.jpg": "a street."})
    assert [(r["image_id"], r["p2_form"]) for r in rows] == [("1.jpg", "caption")]
    assert rows[0]["negated_caption"].startswith("a living room") and "no dog" in rows[0]["negated_caption"]
    assert rep.counts == {"answer_yes": 1, "not_yes_no": 1, "unparsed_question": 1, "no_caption": 1}
    assert rep.examples_skipped["no_caption"] == ["3.jpg"]
    with pytest.raises(MlrkitError, match="--captions"):
        captions.generate_p2(captions.read_vqa(path))
    (tmp_path / "bad.json").write_text(json.dumps([{"image": "x", "question": "Is it?"}]))
    with pytest.raises(DataError, match="entry 0"):
        captions.read_vqa(tmp_path / "bad.json")


# A COCO-style caption and VQA-v2-style yes/no questions about the same photo (a surfer on a wave).
SURF_CAPTION = "A man riding a wave on top of a surfboard."
SURF_QUESTIONS = {
    "Is there a boat in the water?": ("there", ["boat"], "no boat in the water"),
    "Is the man wearing a wetsuit?": ("subject", [], "the man is not wearing a wetsuit"),
    "Does the surfboard have a leash?": ("subject", [], "the surfboard does not have a leash"),
}


@pytest.mark.parametrize("question", sorted(SURF_QUESTIONS))
def test_p2_caption_augmentation_keeps_the_caption_and_adds_the_negation(question):
    """The paper's P2: the image's own caption, augmented with the negated content of the 'no' answer."""
    kind, objects, negation = SURF_QUESTIONS[question]
    parsed = captions.parse_yes_no(question)
    assert parsed is not None and parsed.kind == kind and parsed.objects() == objects
    n_templates = len(captions.P2_THERE_TEMPLATES if kind == "there" else captions.P2_CLAUSE_TEMPLATES)
    texts = {captions.augment_caption_with_answer(SURF_CAPTION, parsed, t) for t in range(n_templates)}
    assert len(texts) == n_templates
    for text in texts:
        assert text.startswith("A man riding a wave on top of a surfboard")  # the caption's content, intact
        assert negation in text and captions.NEGATION_WORDS.search(text)
        assert text.endswith(".") and ".," not in text and ". " not in text  # one sentence
    assert captions.augment_caption_with_answer(SURF_CAPTION, captions.parse_yes_no(
        "Is there a boat in the water?"), 0) == "A man riding a wave on top of a surfboard with no boat in the water."
    assert captions.augment_caption_with_answer(SURF_CAPTION, captions.parse_yes_no(
        "Is the man wearing a wetsuit?"), 0) == "A man riding a wave on top of a surfboard, but the man is not " \
        "wearing a wetsuit."


def test_p2_caption_rows_are_seeded_and_keep_the_statement_form_apart():
    vqa = [{"image": "surf.jpg", "question": q, "answer": "no"} for q in sorted(SURF_QUESTIONS)]
    caps = {"surf.jpg": SURF_CAPTION}
    a, rep = captions.generate_p2(vqa, captions=caps, seed=0)
    b, _ = captions.generate_p2(vqa, captions=caps, seed=0)
    assert a == b and rep.rows == 3 and rep.counts == {}
    assert all(r["caption"] == SURF_CAPTION and r["negated_caption"].startswith(SURF_CAPTION[:-1]) for r in a)
    assert a[0]["absent_objects"] == [] and [r["absent_objects"] for r in a if "boat" in r["question"]] == [["boat"]]
    statements, _ = captions.generate_p2(vqa, captions=caps, form="statement")
    assert [r["negated_caption"] for r in statements] == [captions.rewrite_yes_no(q)[0] for q in sorted(SURF_QUESTIONS)]
    with pytest.raises(MlrkitError, match="P2 form"):
        captions.generate_p2(vqa, captions=caps, form="sentence")


def test_p2_llm_caption_augmentation_checks_the_reply(server):
    llm, _ = _client(server)
    vqa = [{"image": "surf.jpg", "question": "Is the man wearing a wetsuit?", "answer": "no"}] * 3
    server.script += [("ok", "a man not wearing a wetsuit riding a wave on top of a surfboard"),
                      ("ok", "there is no wetsuit"),  # the caption's content is lost: rejected
                      ("ok", "a man riding a wave on top of a surfboard in a wetsuit")]  # no negation: rejected
    rows, rep = captions.generate_p2(vqa, captions={"surf.jpg": SURF_CAPTION}, rewriter="llm", llm=llm)
    assert [r["negated_caption"] for r in rows] == ["a man not wearing a wetsuit riding a wave on top of a surfboard"]
    assert rep.counts == {"llm_rejected": 2}
    prompt = server.requests[0]["messages"][-1]["content"]
    assert SURF_CAPTION in prompt and "Is the man wearing a wetsuit?" in prompt


def test_reference_recipe_selects_p2_caption_augmentation(tmp_path):
    from pathlib import Path

    from mlrkit.cli.main import build_parser
    from mlrkit.cli.negation import apply_recipe

    recipe = str(Path(__file__).resolve().parents[1] / "configs" / "negation" / "reference.yaml")
    args = apply_recipe(build_parser().parse_args(["negation", "captions", "--config", recipe, "--out", "x.jsonl"]))
    assert (args.p2_form, args.p2_rewriter, args.caption_rows, args.proposer, args.verify, args.rewriter) == \
        ("caption", "llm", "all", "llm", "mllm", "llm")
    vqa, caps, out = tmp_path / "vqa.json", tmp_path / "caps.json", tmp_path / "neg.jsonl"
    vqa.write_text(json.dumps([{"image": "surf.jpg", "question": "Is there a boat in the water?", "answer": "no"}]))
    caps.write_text(json.dumps([{"image_id": "surf.jpg", "caption": SURF_CAPTION}]))
    r = run_cli("negation", "captions", "--config", recipe, "--vqa", str(vqa), "--p2-rewriter", "template",
                "--captions", str(caps), "--out", str(out))  # the preset's LLM rewriter needs a server
    assert r.returncode == 0, r.stderr
    (row,) = captions.read_jsonl(out)
    assert row["p2_form"] == "caption" and row["negated_caption"].startswith(SURF_CAPTION[:-1])
    assert "no boat in the water" in row["negated_caption"]
    r = run_cli("negation", "captions", "--vqa", str(vqa), "--out", str(out))  # no captions to augment
    assert r.returncode != 0 and "--captions" in r.stderr


def test_caption_rows_all_takes_every_caption_of_every_image(tmp_path):
    """--caption-rows all: one P1 attempt per caption of an image (the reference loops over COCO's caption rows)."""
    from mlrkit.cli.main import main
    from mlrkit.data import load_dataset

    ids = load_dataset("fashion-mosaic").trainval.ids[:3]
    caps = tmp_path / "caps.jsonl"
    lines = [{"image_id": ids[0], "caption": "a bag."}, {"image_id": ids[0], "caption": "a photo of a bag."},
             {"image_id": ids[1], "caption": "a coat."}, {"image_id": ids[2], "caption": "a shirt."},
             {"image_id": ids[2], "caption": "two shirts."}, {"image_id": ids[2], "caption": "shirts."}]
    caps.write_text("".join(json.dumps(x) + "\n" for x in lines))
    got = {}
    for mode in ("first", "all"):
        out = tmp_path / f"{mode}.jsonl"
        assert main(["negation", "captions", "--dataset", "fashion-mosaic", "--limit", "3", "--captions", str(caps),
                     "--caption-rows", mode, "--proposer", "random", "--out", str(out)]) == 0
        got[mode] = [(row["image_id"], row["caption"]) for row in captions.read_jsonl(out)]
    assert got["first"] == [(ids[0], "a bag."), (ids[1], "a coat."), (ids[2], "a shirt.")]
    assert got["all"] == [(x["image_id"], x["caption"]) for x in lines]


def test_jsonl_roundtrip_and_errors(tmp_path):
    rows = [{"image_id": "a", "caption": "c", "negated_caption": "c with no x.", "absent_objects": ["x"],
             "kind": "P1", "proposer": "context"}]
    p = captions.write_jsonl(tmp_path / "r.jsonl", rows)
    assert captions.read_jsonl(p) == rows
    p.write_text(p.read_text() + "{not json\n")
    with pytest.raises(DataError, match=r"r.jsonl:2"):
        captions.read_jsonl(p)


# ---------------------------------------------------------------------------- chat client, loopback server
class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.requests.append(json.loads(body))  # type: ignore[attr-defined]
        script = self.server.script  # type: ignore[attr-defined]
        kind, arg = script.pop(0) if script else ("ok", "default")
        if kind == "slow":
            time.sleep(arg)
            kind, arg = "ok", "late"
        if kind == "ok":
            payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": arg}}]}).encode()
            status = 200
        elif kind == "malformed":
            payload, status = b"{this is not json", 200
        elif kind == "nochoices":
            payload, status = b'{"error": "oops"}', 200
        else:
            payload, status = b"server error", int(arg)
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            return

    def log_message(self, *args) -> None:
        return


@pytest.fixture()
def server():
    """A chat-completions server on 127.0.0.1 (random port); it shuts itself down after 60 s at most."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.script, srv.requests = [], []  # type: ignore[attr-defined]
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    watchdog = threading.Timer(60, srv.shutdown)
    watchdog.daemon = True
    watchdog.start()
    yield srv
    watchdog.cancel()
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


def _client(srv, **kw) -> tuple[ChatClient, list[float]]:
    sleeps: list[float] = []
    cfg = LLMConfig(base_url=f"http://127.0.0.1:{srv.server_address[1]}/v1", model="m", api_key="k",
                    use_env_proxy=False, **{"timeout": 2.0, "max_retries": 2, "backoff": 0.5, **kw})
    return ChatClient(cfg, sleep=sleeps.append), sleeps


def test_chat_client_success_and_retry_after_500(server):
    client, sleeps = _client(server)
    server.script += [("ok", "hello")]
    assert client.complete([{"role": "user", "content": "hi"}]) == "hello"
    req = server.requests[-1]
    assert req["model"] == "m" and req["messages"][0]["content"] == "hi"
    server.script += [("status", 500), ("ok", "second time")]
    assert client.complete([{"role": "user", "content": "again"}]) == "second time"
    s = client.stats
    assert (s.calls, s.ok, s.attempts, s.retries, s.http_errors, s.failed) == (2, 2, 3, 1, {"500": 1}, 0)
    assert sleeps == [0.5]  # one back-off
    server.script += [("status", 404)]  # not retried
    assert client.complete([{"role": "user", "content": "x"}]) is None
    assert client.stats.http_errors["404"] == 1 and client.stats.failed == 1 and client.stats.attempts == 4


def test_chat_client_counts_timeouts_and_malformed_replies(server):
    client, sleeps = _client(server, timeout=0.3, max_retries=1)
    server.script += [("slow", 1.5), ("ok", "fine")]
    t0 = time.perf_counter()
    assert client.complete([{"role": "user", "content": "slow"}]) == "fine"
    assert time.perf_counter() - t0 < 5
    assert client.stats.timeouts == 1 and client.stats.retries == 1
    server.script += [("malformed", None), ("nochoices", None)]
    assert client.complete([{"role": "user", "content": "bad"}]) is None
    s = client.stats
    assert s.malformed == 2 and s.failed == 1 and "malformed" in s.last_error
    assert sleeps == [0.5, 0.5]


def test_llm_proposals_verified_by_annotations_and_mllm(server):
    llm, _ = _client(server)
    mllm, _ = _client(server)
    targets = np.array([[1, 0, 0, 0, 0]] * 4, np.uint8)
    ids = ["p", "q", "r", "s"]
    # p: LLM names a present class -> rejected by the annotations; q: an absent class -> accepted and rewritten
    # by the LLM; r: an object outside the vocabulary -> the multimodal LLM says "no" -> accepted;
    # s: the LLM call fails (malformed twice + 500) -> counted
    server.script += [("ok", "Cat."), ("ok", "a Leash"), ("ok", "the cat has no leash"),
                      ("ok", "sofa"), ("ok", "No."), ("ok", "a cat with no sofa"),
                      ("malformed", None), ("malformed", None), ("status", 500)]
    from PIL import Image

    rows, rep = captions.generate_p1(class_names=NAMES, targets=targets, ids=ids, captions=["a cat."] * 4,
                                     proposer="llm", rewriter="llm", verify="mllm", llm=llm, mllm=mllm,
                                     image_fn=lambda i: Image.new("RGB", (8, 8)))
    assert [(r["image_id"], r["absent_objects"], r["proposer"]) for r in rows] == \
        [("q", ["leash"], "llm"), ("r", ["sofa"], "llm")]
    assert rows[0]["negated_caption"] == "the cat has no leash"
    assert rep.counts["rejected_present_by_annotations"] == 1 and rep.counts["verified_by_mllm"] == 1
    assert rep.counts["llm_failed"] == 1 and rep.examples_skipped["llm_failed"] == ["s"]
    assert rep.llm["malformed"] == 2 and rep.llm["failed"] == 1
    img_msg = server.requests[4]["messages"][0]["content"]
    assert img_msg[1]["image_url"]["url"].startswith("data:image/png;base64,")


def test_llm_config_resolution(tmp_path):
    p = tmp_path / "llm.yaml"
    p.write_text("llm:\n  base_url: http://127.0.0.1:9/v1\n  model: from-file\n  timeout: 5\n")
    cfg = LLMConfig.resolve(p, {"model": "override"}, env={"MLRKIT_LLM_API_KEY": "secret"})
    assert (cfg.base_url, cfg.model, cfg.timeout, cfg.api_key) == ("http://127.0.0.1:9/v1", "override", 5, "secret")
    assert cfg.public()["api_key"] == "***"
    from mlrkit.errors import ConfigError

    with pytest.raises(ConfigError, match="base_url"):
        LLMConfig.resolve(None, {"model": "m"}, env={})


# ---------------------------------------------------------------------------- fine-tuning
def test_split_by_image_is_disjoint():
    ids = [f"img{i // 3}" for i in range(300)]  # 100 images, 3 rows each
    train, val = split_by_image(ids, 0.2, seed=0)
    assert not set(train) & set(val) and len(val) == 20 and set(train) | set(val) == set(ids)
    assert split_by_image(ids, 0.2, seed=0) == (train, val) and split_by_image(ids, 0.2, seed=1) != (train, val)


def test_finetune_one_step_save_reload(tiny, mosaic, tmp_path):
    sp = mosaic.trainval
    rows, _ = captions.generate_p1(class_names=mosaic.class_names, targets=sp.targets, ids=sp.ids, per_image=2,
                                   seed=0)
    model = vl.load("tiny")
    before = {k: v.clone() for k, v in model.clip.state_dict().items()}
    cfg = FinetuneConfig(lr=1e-3, epochs=1, batch_size=8, max_steps=1, seed=0)
    res = finetune_negation(model, rows, sp.images, sp.ids, cfg, progress=False)
    assert res.steps == 1 and res.n_train_images + res.n_val_images == len(sp)
    val = set(res.val_image_ids)
    assert val and not val & {i for i in sp.ids if i not in val} - val  # sanity
    after = model.clip.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(not k.startswith("visual.") and k != "logit_scale" for k in changed)
    assert any(k.startswith("transformer.") for k in changed)
    path = tmp_path / "neg.pt"
    vl.save_vl_checkpoint(model, path, metadata={"test": True}, half=False)
    again = vl.load(f"openclip:custom@{path}")
    texts = ["a photo of a bag with no shirt.", "a photo of a bag."]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.encode_text(texts), again.encode_text(texts), atol=1e-6)
        assert torch.allclose(model.encode_image(x), again.encode_image(x), atol=1e-6)
        assert not torch.allclose(tiny.encode_text(texts), again.encode_text(texts), atol=1e-4)


def test_multi_positive_match_matrix_and_mentioned_classes(mosaic):
    from mlrkit.negation.finetune import _Text, match_matrix

    labels = np.array([[1, 0, 1], [1, 1, 0], [0, 0, 1]], bool)
    m = lambda *c: np.isin(np.arange(3), c)  # noqa: E731
    texts = [_Text("a cat with no dog.", m(0), m(1)),  # fits images 0 (cat, leash) but not 1 (cat and dog)
             _Text("a dog.", m(1), m()),
             _Text("free text", None, None)]  # no class information: its own image only
    assert match_matrix(labels, texts).numpy().tolist() == [[True, False, False], [False, True, False],
                                                             [False, False, True]]
    labels[2] = [1, 0, 0]
    assert match_matrix(labels, texts)[:, 0].tolist() == [True, False, True]
    sp = mosaic.trainval
    rows, _ = captions.generate_p1(class_names=mosaic.class_names, targets=sp.targets, ids=sp.ids, seed=0,
                                   subset_prob=1.0)
    lookup = captions.class_lookup(mosaic.class_names)
    for r, t in zip(rows, sp.targets):
        named = {lookup[n] for n in r["mentioned"]}
        assert named and all(t[c] == 1 for c in named) and (len(named) < t.sum() or t.sum() == 1)
    res = finetune_negation(vl.load("tiny"), rows, sp.images, sp.ids,
                            FinetuneConfig(lr=1e-3, epochs=1, batch_size=8, max_steps=1, multi_positive=True),
                            progress=False, targets=sp.targets, class_names=mosaic.class_names)
    assert res.steps == 1 and np.isfinite(res.best_val_loss)


def test_finetune_rejects_unknown_images(mosaic):
    rows = [{"image_id": "nope/1", "caption": "c", "negated_caption": "n"}]
    with pytest.raises(DataError, match="nope/1"):
        finetune_negation(vl.load("tiny"), rows, mosaic.trainval.images, mosaic.trainval.ids,
                          FinetuneConfig(max_steps=1), progress=False)


# ---------------------------------------------------------------------------- benchmarks
def test_mosaic_builder_positive_matches_text_negatives_hold_negated_object():
    tl = np.array([[0, 1, 2, 3], [5, 5, 8, 9], [1, 1, 1, 1]])
    objs = bench.mosaic_objects(tl)
    assert objs[0][3] == ([28.0, 28.0, 28.0, 28.0], 3)
    regions = bench.candidate_regions(objs[0])
    assert sorted(tuple(r[0]) for r in regions) == sorted([(0.0, 0.0, 56.0, 28.0), (0.0, 28.0, 56.0, 28.0),
                                                          (0.0, 0.0, 28.0, 56.0), (28.0, 0.0, 28.0, 56.0)])
    items = bench.build_referring(objs, ["m0", "m1", "m2"], NAMES * 2, per_image=4, seed=0)
    assert items and {it.kind for it in items} == {"negated", "affirmative"}
    assert not [it for it in items if it.image == "m2"]  # one class only: nothing to negate
    for it in items:
        a, b = it.extra["target_class"], it.extra["other_class"]
        cls = dict(zip(map(tuple, it.bbox_list), it.extra["bbox_classes"]))
        pos = cls[tuple(it.ref_bbox)]
        negs = [cls[tuple(n)] for n in it.negatives]
        assert a in pos and all(a in n for n in negs) and it.ref_bbox in it.bbox_list
        if it.kind == "negated":
            assert b not in pos and all(b in n for n in negs)
            assert "no" in it.phrase.split() or "without" in it.phrase
        else:
            assert b in pos and all(b not in n for n in negs)


def test_referring_and_caption_scorers_on_hand_made_embeddings():
    e = torch.eye(4)
    text = torch.stack([e[0], e[1]])  # two texts
    regions = torch.stack([e[0] + 0.1 * e[1], e[1], e[2],  # item 0 (text 0): positive wins against 2 negatives
                           e[1] + e[0], 3 * e[1],  # item 1 (text 1): the positive (first) loses (cosine, not dot)
                           e[2], e[2]])  # item 2 (text 0): a tie is a miss
    owner = np.array([0, 0, 0, 1, 1, 2, 2])
    positive = np.array([1, 0, 0, 1, 0, 1, 0], bool)
    pts = bench.referring_points(text, regions, owner, positive, np.array([0, 1, 0]))
    assert pts.tolist() == [True, False, False]
    img = torch.stack([e[0], e[1]])
    assert bench.caption_points(img, torch.stack([e[0], e[2]]), torch.stack([e[1], e[1]])).tolist() == [True, False]
    pairs = bench.build_caption_pairs(np.array([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], np.uint8), NAMES, seed=0)
    assert {p["kind"] for p in pairs} == {"affirmative", "negated"} and all(p["index"] == 0 for p in pairs)
    neg = next(p for p in pairs if p["kind"] == "negated")
    assert "with no" in neg["true"] and "with no" in neg["distractor"] and neg["true"] != neg["distractor"]


NEGREF_FIXTURE = [  # the published NegRefCOCOg layout: image, phrase, ref_bbox, bbox_list ([x, y, w, h])
    {"image": "img_a.png", "phrase": "a red square with no blue bar",
     "ref_bbox": [0, 0, 16, 32], "bbox_list": [[0, 0, 16, 32], [8.5, 0, 23.5, 32]]},
    {"image": "img_b.png", "phrase": "the left half that is not striped",
     "ref_bbox": [0, 0, 16, 32], "bbox_list": [[16, 0, 16, 32], [0, 0, 16, 32], [4, 4, 10, 10]]},
]


def test_negrefcocog_fixture_parsing_and_eval(tiny, tmp_path):
    from PIL import Image

    path = tmp_path / "NegRef.json"
    path.write_text(json.dumps(NEGREF_FIXTURE))
    header, items = bench.load_referring(path)
    assert len(items) == 2 and items[1].ref_bbox == [0.0, 0.0, 16.0, 16.0 * 2]
    assert items[1].negatives == [[16.0, 0.0, 16.0, 32.0], [4.0, 4.0, 10.0, 10.0]]
    for name, color in (("img_a.png", (200, 0, 0)), ("img_b.png", (0, 0, 200))):
        Image.new("RGB", (32, 32), color).save(tmp_path / name)
    res = bench.evaluate_referring(tiny, items, lambda n: Image.open(tmp_path / n).convert("RGB"), mode="crop")
    assert res["total"] == 2 and 0 <= res["correct"] <= 2 and res["chance"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    masked = bench.region_image(Image.new("RGB", (32, 32), (255, 255, 255)), [16, 0, 16, 32], "mask")
    a = np.asarray(masked)
    assert a.shape == (32, 32, 3) and a[:, :16].max() == 0 and a[:, 16:].min() == 255
    bad = json.loads(json.dumps(NEGREF_FIXTURE))
    bad[1]["ref_bbox"] = [1, 2, 3, 4]
    with pytest.raises(DataError, match="item 1: ref_bbox"):
        bench.parse_referring(bad, "bad.json")
    with pytest.raises(DataError, match="no area"):
        bench.parse_referring([{**NEGREF_FIXTURE[0], "ref_bbox": [0, 0, 0, 5]}], "x")
    # the builder's file round-trips through the same reader
    items2 = bench.build_referring(bench.mosaic_objects(np.array([[0, 1, 2, 3]])), ["m"], NAMES, per_image=1)
    out = bench.save_referring(tmp_path / "built.json", {"dataset": "fashion-mosaic", "region_mode": "mask"}, items2)
    h2, back = bench.load_referring(out)
    assert h2["region_mode"] == "mask" and [b.as_json() for b in back] == [i.as_json() for i in items2]


def test_eval_on_mosaic_with_tiny(tiny, mosaic):
    header, items = bench.build_mosaic_benchmark(mosaic, split="test", seed=0)
    assert header["region_mode"] == "mask" and all(it.image.startswith("test/") for it in items)
    index = {i: k for k, i in enumerate(mosaic.test.ids)}
    res = bench.evaluate_referring(tiny, items, lambda i: mosaic.test.images.load(index[i]), mode="mask")
    assert res["total"] == len(items) and set(res["per_kind"]) == {"negated", "affirmative"}
    cap = bench.evaluate_caption_pairs(tiny, mosaic.test, mosaic.class_names, seed=0)
    assert cap["total"] > 0 and 0 <= cap["accuracy"] <= 1
    zs = bench.zeroshot_map(tiny, mosaic.test, mosaic.class_names)
    assert 0 < zs <= 1


@pytest.mark.parametrize("command", ["captions", "finetune", "build-benchmark", "eval"])
def test_negation_commands_have_help_with_example(command, capsys):
    from mlrkit.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["negation", command, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "example:" in out and f"mlrkit negation {command}" in out


def test_cli_help_and_captions_with_recipe(tmp_path, capsys):
    from mlrkit.cli.main import main

    with pytest.raises(SystemExit):
        main(["negation", "--help"])
    out = capsys.readouterr().out
    assert "captions" in out and "examples:" in out
    recipe = tmp_path / "r.yaml"
    recipe.write_text("captions:\n  dataset: fashion-mosaic\n  proposer: random\n  per_image: 2\n  limit: 10\n")
    out = tmp_path / "neg.jsonl"
    r = run_cli("negation", "captions", "--config", str(recipe), "--per-image", "1", "--out", str(out))
    assert r.returncode == 0, r.stderr
    rows = captions.read_jsonl(out)
    assert len(rows) == 10 and {r["proposer"] for r in rows} == {"random"}  # flag beat the recipe's per_image
    report = json.loads((tmp_path / "neg.report.json").read_text())
    assert report["rows"] == 10 and report["reports"][0]["counts"]["verified_by_annotations"] == 10
    recipe.write_text("captions:\n  bogus: 1\n")
    assert main(["negation", "captions", "--config", str(recipe), "--out", str(out)]) == 2
    assert "unknown config key 'captions.bogus'" in capsys.readouterr().err


def test_negation_flags_layer_like_run_configs(tmp_path):
    """defaults -> recipe section (with base: chains, as mlrkit train) -> command line; no argparse internals."""
    from pathlib import Path

    import mlrkit
    from mlrkit.cli.main import build_parser
    from mlrkit.errors import ConfigError

    base = tmp_path / "base.yaml"
    base.write_text("build-benchmark:\n  dataset: fashion-mosaic\n  per_image: 2\n  seed: 3\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\nbuild-benchmark:\n  per-image: 4\n")
    parser = build_parser()
    args = parser.parse_args(["negation", "build-benchmark", "--config", str(child), "--seed", "7"])
    got = args.layered_flags.resolve(args)
    assert (got.dataset, got.per_image, got.seed, got.split, got.limit) == ("fashion-mosaic", 4, 7, "test", None)
    args = parser.parse_args(["negation", "eval"])  # no recipe: the declared defaults
    got = args.layered_flags.resolve(args)
    assert (got.vl_model, got.tasks, got.seed) == ([], "referring,captions,zeroshot", 0)
    child.write_text("base: base.yaml\nbuild-benchmark:\n  per_imgae: 4\n")
    args = parser.parse_args(["negation", "build-benchmark", "--config", str(child)])
    with pytest.raises(ConfigError, match=r"'build-benchmark.per_imgae' \(did you mean per_image"):
        args.layered_flags.resolve(args)
    src = Path(mlrkit.__file__).parent
    assert not [p for p in src.rglob("*.py") if "argparse._" in p.read_text()]  # public argparse only


def test_finetune_rejects_bad_config():
    with pytest.raises(MlrkitError, match="towers"):
        FinetuneConfig(train=("audio",)).validate()
