"""mlrkit.vl: the open_clip vision-language backends (CPU, tiny random models, no network)."""

from __future__ import annotations

import socket
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

pytest.importorskip("open_clip")

from mlrkit import vl  # noqa: E402
from mlrkit.engine.checkpoint import trainable_state_dict  # noqa: E402
from mlrkit.errors import MlrkitError  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tiny() -> vl.VisionLanguageModel:
    return vl.load("tiny")


@pytest.fixture(scope="module")
def tiny_rn() -> vl.VisionLanguageModel:
    return vl.load("tiny:rn")


def _images(model: vl.VisionLanguageModel, n: int = 2, size: int | None = None, seed: int = 0) -> torch.Tensor:
    s = size or model.image_size
    return torch.randn(n, 3, s, s, generator=torch.Generator().manual_seed(seed))


def _outputs(model: vl.VisionLanguageModel) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        x = _images(model)
        return {"image": model.encode_image(x), "dense": model.encode_dense(x),
                "text": model.encode_text(["a photo of a dog.", "a cat"])}


# --------------------------------------------------------------------------- registry / specs
def test_registry_lists_the_backends():
    assert vl.VL_BACKENDS.names() == ["openclip", "tiny", "mosaic-clip", "mosaic-clip-heldout"]
    assert all(e.description and "\n" not in e.description for e in vl.VL_BACKENDS.list())


@pytest.mark.parametrize("spec, words", [
    ("", "non-empty"), ("nope", "unknown vl-backend"), ("openclip", "needs an architecture"),
    ("openclip:RN50@", "nothing after"), ("openclip:custom", "custom@<file>"), ("tiny:xl", "tiny:rn"),
    ("openclip:hf-hub:org/repo", "not supported"),
])
def test_bad_specs_are_clear_errors(spec, words):
    with pytest.raises(MlrkitError, match=words):
        vl.load(spec)


# --------------------------------------------------------------------------- tiny: shapes, determinism
def test_tiny_shapes_and_determinism(tiny):
    assert tiny.embed_dim == 64 and tiny.image_size == 32 and tiny.spec == "tiny"
    assert not tiny.training
    out = _outputs(tiny)
    assert out["image"].shape == (2, 64)
    assert out["dense"].shape == (2, 16, 64) and tiny.dense_grid() == (4, 4)
    assert out["text"].shape == (2, 64)
    assert tiny.tokenize(["a dog"]).shape == (1, 32) and tiny.tokenize("a dog").dtype == torch.int64
    assert tiny.logit_scale.exp().item() == pytest.approx(1 / 0.07, rel=1e-5)

    rng = torch.get_rng_state()
    again = vl.load("tiny")
    assert torch.equal(torch.get_rng_state(), rng), "building must not consume the global RNG"
    for a, b in zip(tiny.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    other = vl.load("tiny", seed=1)
    assert not torch.equal(other.clip.visual.proj, tiny.clip.visual.proj)


def test_encode_image_is_open_clip_encode_image(tiny, tiny_rn):
    for model in (tiny, tiny_rn):
        x = _images(model)
        with torch.no_grad():
            assert torch.equal(model.encode_image(x), model.clip.encode_image(x))
            pooled, dense = model.encode_image_and_dense(x)
            assert torch.equal(pooled, model.encode_image(x))
            assert torch.equal(dense, model.encode_dense(x))
            n = model.encode_image(x, normalize=True)
            assert torch.allclose(n.norm(dim=-1), torch.ones(2))


@pytest.mark.parametrize("fixture", ["tiny", "tiny_rn"])
def test_text_from_embeddings_equals_encode_text(fixture, request):
    model = request.getfixturevalue(fixture)
    tok = model.tokenize(["a photo of a dog.", "a cat on a mat", "x"])
    with torch.no_grad():
        ref = model.encode_text(tok)
        got = model.encode_text_from_embeddings(model.token_embedding(tok), tok)
    assert torch.allclose(got, ref, atol=1e-5)
    # CoOp: learned context vectors replace the placeholder tokens' rows and receive gradients
    ctx = nn.Parameter(torch.zeros(4, model.token_embedding.embedding_dim))
    prompt_tok = model.tokenize(["X X X X dog."])
    emb = model.token_embedding(prompt_tok).detach()
    emb = torch.cat([emb[:, :1], ctx[None], emb[:, 5:]], dim=1)
    model.encode_text_from_embeddings(emb, prompt_tok).sum().backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0


# --------------------------------------------------------------------------- dense features
def test_vit_dense_is_patch_tokens_through_ln_post_and_proj(tiny):
    v = tiny.clip.visual
    x = _images(tiny)
    with torch.no_grad():
        tokens = v.transformer(v._embeds(x))  # open_clip's own embedding + transformer
        cls_manual = v.ln_post(tokens[:, 0]) @ v.proj
        dense_manual = v.ln_post(tokens[:, 1:]) @ v.proj
        assert torch.allclose(tiny.encode_image(x), cls_manual, atol=1e-6)
        assert torch.allclose(tiny.encode_dense(x), dense_manual, atol=1e-6)
        # mean-pooled patches are a different summary than the CLS token
        assert not torch.allclose(dense_manual.mean(1), cls_manual, atol=1e-3)


def test_resnet_dense_is_value_and_output_projection(tiny_rn):
    v = tiny_rn.clip.visual
    x = _images(tiny_rn)
    with torch.no_grad():
        feats = v.layer4(v.layer3(v.layer2(v.layer1(v.stem(x)))))  # [B, C, 2, 2]
        b, c, h, w = feats.shape
        pos = v.attnpool.positional_embedding[1:]
        f = feats.reshape(b, c, h * w).permute(0, 2, 1)
        manual = v.attnpool.c_proj(v.attnpool.v_proj(f + pos))
        dense = tiny_rn.encode_dense(x)
        assert dense.shape == (2, h * w, 64) and tiny_rn.dense_grid() == (h, w)
        assert torch.allclose(dense, manual, atol=1e-6)
        no_pos = tiny_rn.encode_dense(x, pos_embed=False)
        assert torch.allclose(no_pos, v.attnpool.c_proj(v.attnpool.v_proj(f)), atol=1e-6)


def test_resnet_attention_pool_is_mean_of_dense_under_uniform_attention():
    """With q_proj = 0 every head attends uniformly over the HW+1 tokens; v_proj and c_proj are affine,
    so the pooled output is c_proj(v_proj(mean of the HW+1 inputs)). If the class slot's positional
    embedding is the mean of the spatial ones, that mean equals the spatial mean, hence
    encode_image == encode_dense.mean(1): the dense features are exactly the pool's value path."""
    model = vl.load("tiny:rn")
    pool = model.clip.visual.attnpool
    with torch.no_grad():
        pool.q_proj.weight.zero_()
        pool.q_proj.bias.zero_()
        pool.positional_embedding[0] = pool.positional_embedding[1:].mean(0)
        x = _images(model)
        assert torch.allclose(model.encode_image(x), model.encode_dense(x).mean(1), atol=1e-5)


def test_other_resolutions(tiny, tiny_rn):
    with torch.no_grad():
        assert tiny.encode_dense(_images(tiny, 1, 48)).shape == (1, 36, 64) and tiny.dense_grid(48) == (6, 6)
        assert tiny.encode_image(_images(tiny, 1, 48)).shape == (1, 64)
        assert tiny_rn.encode_dense(_images(tiny_rn, 1, 96)).shape == (1, 9, 64)
        assert tiny_rn.encode_image(_images(tiny_rn, 1, 96)).shape == (1, 64)
    img = Image.new("RGB", (70, 50), (10, 200, 30))
    assert tiny.transform(train=False, image_size=48)(img).shape == (3, 48, 48)
    assert tiny.transform(train=True, image_size=48)(img).shape == (3, 48, 48)
    with pytest.raises(MlrkitError, match=r"\[B, 3, H, W\]"):
        tiny.encode_image(torch.zeros(3, 32, 32))


# --------------------------------------------------------------------------- checkpoints
def test_custom_checkpoint_round_trip_is_exact(tiny, tmp_path):
    path = vl.save_vl_checkpoint(tiny, tmp_path / "tiny.pt", half=False, metadata={"note": "test"})
    assert vl.sidecar_path(path).is_file()
    loaded = vl.load(f"openclip:custom@{path}")
    assert loaded.model_cfg == vl.tiny_config("vit") and loaded.spec == f"openclip:custom@{path}"
    for key, ref in _outputs(tiny).items():
        assert torch.equal(_outputs(loaded)[key], ref), key


def test_fp16_checkpoint_equals_fp16_rounded_model(tiny_rn, tmp_path):
    path = vl.save_vl_checkpoint(tiny_rn, tmp_path / "rn.pt")  # default: fp16 weights
    assert all(t.dtype != torch.float32 for t in torch.load(path, weights_only=True)["state_dict"].values())
    loaded = vl.load(f"openclip:custom@{path}")
    rounded = vl.load("tiny:rn")
    with torch.no_grad():
        for p in rounded.clip.state_dict().values():
            if p.is_floating_point():
                p.copy_(p.half().float())
    for key, ref in _outputs(rounded).items():
        assert torch.equal(_outputs(loaded)[key], ref), key


def test_plain_state_dict_and_torchscript_with_a_config_file(tiny, tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save(tiny.state_dict(), plain)  # "clip."-prefixed keys of the wrapper
    with pytest.raises(MlrkitError, match="does not store its architecture"):
        vl.load(f"openclip:custom@{plain}")
    vl.write_vl_config(plain, vl.tiny_config("vit"))
    assert torch.equal(_outputs(vl.load(f"openclip:custom@{plain}"))["image"], _outputs(tiny)["image"])

    scripted = tmp_path / "scripted.pt"  # the OpenAI release format: a traced TorchScript module
    x, t = _images(tiny), torch.zeros(2, 32, dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace_module(tiny.clip, {"encode_image": (x,), "encode_text": (t,)}, check_trace=False)
        torch.jit.save(traced, str(scripted))
    assert vl.read_weights(scripted).torchscript
    vl.write_vl_config(scripted, vl.tiny_config("vit"))
    for key, ref in _outputs(tiny).items():
        assert torch.equal(_outputs(vl.load(f"openclip:custom@{scripted}"))[key], ref), key


def test_bad_checkpoints_are_clear_errors(tiny, tmp_path):
    with pytest.raises(MlrkitError, match="not found.*nope.pt"):
        vl.load(f"openclip:RN50@{tmp_path / 'nope.pt'}")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(MlrkitError, match="cannot read checkpoint .*corrupt.pt"):
        vl.load(f"openclip:RN50@{corrupt}")
    with pytest.raises(MlrkitError, match="unknown open_clip architecture 'ViT-Q-99'.*close names: ViT-"):
        vl.load("openclip:ViT-Q-99")
    with pytest.raises(MlrkitError, match="neither a pretrained tag of RN50 .*openai"):
        vl.load("openclip:RN50@no_such_tag")
    # a state dict of another architecture
    mismatched = tmp_path / "vit_weights.pt"
    torch.save(tiny.clip.state_dict(), mismatched)
    vl.write_vl_config(mismatched, vl.tiny_config("rn"))
    with pytest.raises(MlrkitError, match="do not fit"):
        vl.load(f"openclip:custom@{mismatched}")


def test_weights_of_another_architecture_for_a_named_arch(tmp_path, tiny):
    """The common user error: openclip:RN50@<file of another model> (builds RN50 with random weights once)."""
    path = tmp_path / "tiny_sd.pt"
    torch.save(tiny.clip.state_dict(), path)
    with pytest.raises(MlrkitError, match=r"do not fit RN50.*openclip:custom@FILE"):
        vl.load(f"openclip:RN50@{path}")


def test_random_weights_arch_warns():
    with pytest.warns(UserWarning, match="RANDOM weights"):
        model = vl.load("openclip:RN50")
    assert model.embed_dim == 1024 and model.image_size == 224
    with torch.no_grad():  # 64 px keeps the CPU test fast (positional embedding resized to 2x2)
        assert model.encode_dense(torch.zeros(1, 3, 64, 64)).shape == (1, 4, 1024)


@pytest.mark.parametrize("offline", [True, False])
def test_pretrained_tag_without_network_is_a_fast_clear_error(monkeypatch, offline):
    """HF_HUB_OFFLINE=1: no network access at all. Online but no DNS: one lookup, then the same error
    (instead of huggingface_hub's minute of retries). Sockets are blocked so the test can never hang."""
    import open_clip

    from mlrkit.vl.backends import _cached_tag_weights

    if _cached_tag_weights(open_clip.get_pretrained_cfg("RN50", "openai")) is not None:
        pytest.skip("RN50/openai weights are cached on this machine")
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls: list[str] = []

    def no_network(name: str):
        def refuse(*args, **kwargs):
            calls.append(name)
            raise socket.gaierror(-2, "Name or service not known (blocked by the test)")
        return refuse

    monkeypatch.setattr(socket.socket, "connect", no_network("connect"))
    monkeypatch.setattr(socket, "create_connection", no_network("create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", no_network("getaddrinfo"))
    start = time.perf_counter()
    with pytest.raises(MlrkitError) as err:
        vl.load("openclip:RN50@openai")
    assert time.perf_counter() - start < 5
    msg = str(err.value)
    assert "pretrained weights cannot be downloaded" in msg and "\n" not in msg
    assert "openclip:RN50@/path/to/weights" in msg and "timm/resnet50_clip.openai" in msg
    if offline:
        assert "HF_HUB_OFFLINE" in msg and not calls
    else:
        assert "cannot resolve huggingface.co" in msg and calls == ["getaddrinfo"]


# --------------------------------------------------------------------------- mosaic-clip
def test_mosaic_clip_absent_then_present(tiny, tmp_path):
    with pytest.raises(MlrkitError, match="mosaic-clip weights not built yet: run `mlrkit vl pretrain`"):
        vl.load_mosaic_clip(tmp_path)
    if not (vl.builtin_dir() / "mosaic_clip.pt").exists():
        with pytest.raises(MlrkitError, match="mlrkit vl pretrain"):
            vl.load("mosaic-clip")
    path = vl.save_vl_checkpoint(tiny, tmp_path / "mosaic_clip.pt", metadata={"data": "fashion-mosaic"})
    model = vl.load_mosaic_clip(tmp_path)
    assert model.spec == "mosaic-clip" and model.embed_dim == 64
    assert torch.equal(_outputs(model)["image"], _outputs(vl.load(f"openclip:custom@{path}"))["image"])
    # weights replaced without their config: refused
    vl.save_vl_checkpoint(vl.load("tiny", seed=3), path, write_config=False)
    with pytest.raises(MlrkitError, match="does not match"):
        vl.load_mosaic_clip(tmp_path)


# --------------------------------------------------------------------------- preprocessing, text, scores
def test_preprocess_uses_the_models_own_mean_and_std(tiny, tmp_path):
    img = Image.new("RGB", (40, 56), (255, 128, 0))
    rgb = torch.tensor([255, 128, 0]) / 255.0
    for model, mean, std in [
        (tiny, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
        (None, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0)),
    ]:
        if model is None:  # a checkpoint that carries its own normalisation
            cfg = {**tiny.preprocess_cfg, "mean": mean, "std": std}
            path = vl.save_vl_checkpoint(tiny, tmp_path / "norm.pt", preprocess_cfg=cfg)
            model = vl.load(f"openclip:custom@{path}")
        out = model.preprocess_val(img)
        assert out.shape == (3, 32, 32)
        expected = (rgb - torch.tensor(mean)) / torch.tensor(std)
        assert torch.allclose(out, expected[:, None, None].expand_as(out), atol=1e-5)
        assert model.preprocess_train(img).shape == (3, 32, 32)


def test_class_text_embeddings(tiny):
    names = ["dog", "cat", "traffic light"]
    single = tiny.class_text_embeddings(names)
    ens = tiny.class_text_embeddings(names, vl.TEMPLATES["ensemble"])
    assert single.shape == ens.shape == (3, 64) and not single.requires_grad
    assert torch.allclose(ens.norm(dim=-1), torch.ones(3), atol=1e-6)
    assert not torch.allclose(single, ens, atol=1e-4)
    assert torch.allclose(single, tiny.encode_text([f"a photo of a {n}." for n in names], normalize=True), atol=1e-6)
    small_batches = tiny.class_text_embeddings(names, vl.TEMPLATES["ensemble"], batch_size=4)
    assert torch.allclose(small_batches, ens, atol=1e-5)
    with pytest.raises(MlrkitError, match="exactly one"):
        tiny.class_text_embeddings(names, ("no placeholder",))


def test_zeroshot_scores(tiny):
    x = _images(tiny, 3)
    cls = tiny.class_text_embeddings(["dog", "cat"])
    with torch.no_grad():
        scores = vl.zeroshot_scores(tiny, x, cls)
        expected = tiny.logit_scale.exp() * tiny.encode_image(x, normalize=True) @ cls.t()
    assert scores.shape == (3, 2) and torch.allclose(scores, expected, atol=1e-5)


def test_freeze_marks_frozen_and_checkpoints_skip_it():
    model = vl.load("tiny").freeze()
    assert model.frozen and not model.training and not any(p.requires_grad for p in model.parameters())

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vl = model
            self.fc = nn.Linear(64, 3)

    head = Head().train()
    assert head.training and not model.training, "a frozen encoder stays in eval mode"
    assert set(trainable_state_dict(head)) == {"fc.weight", "fc.bias"}
