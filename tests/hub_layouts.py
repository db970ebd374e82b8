"""Builders of tiny local checkpoints in the exact on-disk layouts of the hub models
(BioGPT, GPT-2, OPT, Llama, open_clip BiomedCLIP, HF CLIP), so the real loading code runs offline."""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

from flamingo_lib.modeling.backbones.language import build_tiny_tokenizer


def _seeded(seed: int):
    torch.manual_seed(seed)


def make_biogpt_dir(path: Path) -> Path:
    """A BioGptForCausalLM save_pretrained dir with BioGptTokenizer files (vocab.json, merges.txt)."""
    from transformers import BioGptConfig, BioGptForCausalLM, BioGptTokenizer

    symbols = string.ascii_letters + string.digits + string.punctuation
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for ch in symbols:
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\nh e</w>\n")
    tokenizer = BioGptTokenizer(vocab_file=str(path / "vocab.json"), merges_file=str(path / "merges.txt"))
    tokenizer.save_pretrained(path)
    _seeded(11)
    config = BioGptConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=256)
    BioGptForCausalLM(config).save_pretrained(path)
    return path


def make_gpt2_dir(path: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = build_tiny_tokenizer()
    tokenizer.save_pretrained(path)
    _seeded(12)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=256,
                        bos_token_id=0, eos_token_id=2)
    GPT2LMHeadModel(config).save_pretrained(path)
    return path


def make_opt_dir(path: Path) -> Path:
    """OPT pads its embedding matrix beyond the tokenizer (50272 rows for 50265 tokens): so here."""
    from transformers import OPTConfig, OPTForCausalLM

    tokenizer = build_tiny_tokenizer()
    tokenizer.save_pretrained(path)
    _seeded(13)
    config = OPTConfig(vocab_size=len(tokenizer) + 8, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                       num_attention_heads=2, word_embed_proj_dim=32, max_position_embeddings=256,
                       bos_token_id=0, pad_token_id=1, eos_token_id=2)
    OPTForCausalLM(config).save_pretrained(path)
    return path


def make_llama_dir(path: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    tokenizer.save_pretrained(path)
    _seeded(14)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=0, eos_token_id=2, pad_token_id=1, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def make_bert_dir(path: Path) -> Path:
    """A tiny HF BERT (BiomedCLIP's text tower is PubMedBERT) with its tokenizer files."""
    from transformers import BertConfig, BertModel, BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.ascii_lowercase, "heart", "lung", "effusion"]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    tokenizer.save_pretrained(path)
    _seeded(15)
    BertModel(BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(path)
    return path


# BiomedCLIP's layout: timm ViT trunk without pooling + linear proj, HF BERT text tower with an MLP
# projection and CLS pooling. `vit_tiny_patch16_224` keeps BiomedCLIP's 224 px / 197 tokens at toy width.
BIOMEDCLIP_LIKE_PREPROCESS = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "size": 224,
                              "interpolation": "bicubic", "resize_mode": "shortest"}


def make_biomedclip_like_dir(path: Path, bert_dir: Path) -> Path:
    """An open_clip ``local-dir:`` directory: open_clip_config.json + open_clip_model.safetensors."""
    import open_clip
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    config = {
        "model_cfg": {
            "embed_dim": 32,
            "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False,
                           "timm_pool": "", "timm_proj": "linear", "image_size": 224},
            "text_cfg": {"hf_model_name": str(bert_dir), "hf_tokenizer_name": str(bert_dir),
                         "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                         "context_length": 32},
        },
        "preprocess_cfg": BIOMEDCLIP_LIKE_PREPROCESS,
    }
    (path / "open_clip_config.json").write_text(json.dumps(config))
    _seeded(16)
    model = open_clip.create_model(f"local-dir:{path}", pretrained_text=False)  # no weights yet
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path / "open_clip_model.safetensors")
    return path


def make_hf_clip_dir(path: Path) -> Path:
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    _seeded(17)
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=2, image_size=32, patch_size=8)).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path


#: One directory builder per LM family the injection supports.
FAMILIES = {
    "biogpt": make_biogpt_dir,
    "gpt2": make_gpt2_dir,
    "opt": make_opt_dir,
    "llama": make_llama_dir,
}
