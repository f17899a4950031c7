"""Whisper speech recognition for a bundle: any Whisper checkpoint in the transformers
layout (`openai/whisper-*`, `distil-whisper/*`) becomes three engines and a tokenizer,
added to an existing bundle with an `asr` manifest section:

  asr-encoder.onnx   input_features [1, n_mels, 3000] -> encoder_hidden [1, 1500, D]
  asr-cross-kv.onnx  encoder_hidden -> cross_k, cross_v [L, 1, H, 1500, Dh] (once per clip)
  asr-decoder.onnx   input_ids [1, T] (float32: exact below 2^24, cast in the graph, so every
                     engine takes f32), past_k, past_v [L, 1, H, P, Dh] (P >= 0), cross_k,
                     cross_v -> logits [1, V] (the last position), present_k, present_v
  asr-tokenizer.json the checkpoint's fast tokenizer (the Rust `tokenizers` crate reads it)

The decoder is written out explicitly over the checkpoint's own modules (no cache
classes, no data-dependent Python branch): positions start at the past length, a causal
mask covers the new tokens. Synthetic mode (`synthetic`) builds the tiny test checkpoint (or, with `--dims`, one of Whisper's
real sizes for the full-size runs):
a transformers `WhisperConfig` at tiny widths, seeded random weights, the real
multilingual tokenizer converted from the `openai-whisper` package's tiktoken file, then
exports it through the same path and writes goldens from transformers'
`WhisperFeatureExtractor` (numpy path) and `generate` (greedy).
"""

import argparse
import ast
import base64
import copy
import json
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration,
                          WhisperTokenizer, WhisperTokenizerFast)
from transformers.models.whisper.tokenization_whisper import bytes_to_unicode

from .manifest import file_entry, tensor_spec
from .official_encoders import PROTOBUF_LIMIT, store_fp16
from .synthetic import PARITY_TOLERANCE, export_onnx, log, max_diff, parity_session
from .tensors import TensorStore, write_json_atomic

SEED = 1234
CHUNK_SAMPLES = 480_000  # 30 s at 16 kHz: the encoder's one window


def whisper_languages(tokenizer_py: Path) -> list:
    """openai-whisper's `LANGUAGES` codes, in token order (read as a literal, not imported)."""
    tree = ast.parse(tokenizer_py.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "LANGUAGES":
            return list(ast.literal_eval(node.value))
    raise SystemExit(f"no LANGUAGES in {tokenizer_py}")


def _bpe(ranks: dict, token: bytes, max_rank: int) -> list:
    parts = [bytes([b]) for b in token]
    while True:
        best = None
        for i, pair in enumerate(zip(parts[:-1], parts[1:])):
            rank = ranks.get(pair[0] + pair[1])
            if rank is not None and (best is None or rank < best[1]):
                best = (i, rank)
        if best is None or best[1] >= max_rank:
            return parts
        i = best[0]
        parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2:]


def tokenizer_from_tiktoken(tiktoken_file: Path, languages: list, out: Path) -> WhisperTokenizerFast:
    """Whisper's multilingual tokenizer in the transformers layout, from openai-whisper's
    tiktoken ranks, as transformers' convert_openai_to_hf.py builds it: the byte-level
    vocabulary and merges, then the special tokens in Whisper's order."""
    ranks = {}
    for line in tiktoken_file.read_text().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    to_unicode = bytes_to_unicode()
    text = lambda b: "".join(to_unicode[c] for c in b)  # noqa: E731
    vocab, merges = {}, []
    for token, rank in ranks.items():
        vocab[text(token)] = rank
        if len(token) > 1:
            merged = _bpe(ranks, token, rank)
            if len(merged) == 2:
                merges.append(" ".join(map(text, merged)))
    slow = out / "slow"
    slow.mkdir(parents=True, exist_ok=True)
    (slow / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (slow / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = WhisperTokenizer(str(slow / "vocab.json"), str(slow / "merges.txt"))
    specials = ["<|endoftext|>", "<|startoftranscript|>", *[f"<|{k}|>" for k in languages],
                "<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>",
                "<|notimestamps|>"]
    tok.add_tokens(specials, special_tokens=True)
    tok.add_tokens(["<|%.2f|>" % (i * 0.02) for i in range(1501)], special_tokens=False)
    tok.save_pretrained(str(slow))
    fast = WhisperTokenizerFast.from_pretrained(str(slow))
    fast.save_pretrained(str(out), legacy_format=False)
    shutil.rmtree(slow)
    return fast


def suppress_tokens(tok: WhisperTokenizerFast) -> list:
    """openai-whisper's `_get_suppress_tokens` (decoding.py): symbols and non-speech
    marks as encoded alone and after a space, and the task and special tokens."""
    symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
    symbols += "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()
    miscellaneous = set("♩♪♫♬♭♮♯")
    result = {tok.encode(" -", add_special_tokens=False)[0], tok.encode(" '", add_special_tokens=False)[0]}
    for symbol in symbols + list(miscellaneous):
        for tokens in (tok.encode(symbol, add_special_tokens=False), tok.encode(" " + symbol, add_special_tokens=False)):
            if len(tokens) == 1 or symbol in miscellaneous:
                result.add(tokens[0])
    ids = tok.convert_tokens_to_ids(["<|transcribe|>", "<|translate|>", "<|startoftranscript|>", "<|startofprev|>",
                                     "<|startoflm|>", "<|nospeech|>"])
    return sorted(result | set(ids))


# Whisper's sizes (the hub's configs): (d_model, encoder layers, decoder layers, heads, ffn,
# mel bins, languages).
DIMENSIONS = {
    "tiny-test": (64, 2, 2, 4, 256, 80, 99),
    "tiny": (384, 4, 4, 6, 1536, 80, 99),
    "base": (512, 6, 6, 8, 2048, 80, 99),
    "small": (768, 12, 12, 12, 3072, 80, 99),
    "medium": (1024, 24, 24, 16, 4096, 80, 99),
    "large-v3": (1280, 32, 32, 20, 5120, 128, 100),
    "large-v3-turbo": (1280, 32, 4, 20, 5120, 128, 100),
}


def random_checkpoint(out: Path, assets: Path, dims: str = "tiny-test") -> Path:
    """A Whisper checkpoint of `dims` (the tiny test model, or a real size for the
    full-size runs), seeded random weights, the real multilingual tokenizer (99 languages:
    the v2 layout, vocabulary 51865; 100: v3, 51866) and a generation config as the
    hub's, written in the transformers layout as a real one is."""
    d_model, encoder_layers, decoder_layers, heads, ffn, n_mels, n_languages = DIMENSIONS[dims]
    languages = whisper_languages(assets / "tokenizer.py")[:n_languages]
    tok = tokenizer_from_tiktoken(assets / "multilingual.tiktoken", languages, out)
    ids = lambda t: tok.convert_tokens_to_ids(t)  # noqa: E731
    eot, sot = ids("<|endoftext|>"), ids("<|startoftranscript|>")
    torch.manual_seed(SEED)
    config = WhisperConfig(
        vocab_size=len(tok), num_mel_bins=n_mels, d_model=d_model, encoder_layers=encoder_layers, decoder_layers=decoder_layers,
        encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=ffn, decoder_ffn_dim=ffn,
        max_source_positions=1500, max_target_positions=448, pad_token_id=eot, bos_token_id=eot,
        eos_token_id=eot, decoder_start_token_id=sot, suppress_tokens=None, begin_suppress_tokens=None)
    model = WhisperForConditionalGeneration(config).eval()
    if dims != "tiny-test":
        # The hub's checkpoints are fp16 files: random weights of a real size are made
        # fp16-exact the same way (what lets Whisper large keep them fp16 under 2 GiB).
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.half().float())
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot, max_length=448,
        is_multilingual=True, lang_to_id={f"<|{k}|>": ids(f"<|{k}|>") for k in languages},
        task_to_id={"translate": ids("<|translate|>"), "transcribe": ids("<|transcribe|>")},
        no_timestamps_token_id=ids("<|notimestamps|>"), suppress_tokens=suppress_tokens(tok),
        begin_suppress_tokens=[tok.encode(" ", add_special_tokens=False)[0], eot], return_timestamps=False)
    model.save_pretrained(str(out))
    WhisperFeatureExtractor(feature_size=n_mels).save_pretrained(str(out))
    return out


class Encoder(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.encoder = model.model.encoder

    def forward(self, input_features):
        return self.encoder(input_features).last_hidden_state


class CrossKv(nn.Module):
    """Every decoder layer's cross-attention keys and values of one clip."""

    def __init__(self, model):
        super().__init__()
        self.layers = model.model.decoder.layers
        self.heads = model.config.decoder_attention_heads

    def split(self, x):
        return x.view(1, -1, self.heads, x.shape[-1] // self.heads).transpose(1, 2)

    def forward(self, encoder_hidden):
        k = [self.split(layer.encoder_attn.k_proj(encoder_hidden)) for layer in self.layers]
        v = [self.split(layer.encoder_attn.v_proj(encoder_hidden)) for layer in self.layers]
        return torch.stack(k), torch.stack(v)


def attend(q, k, v, mask=None):
    w = q @ k.transpose(-1, -2)
    if mask is not None:
        w = w + mask
    return torch.softmax(w, -1) @ v


class DecoderStep(nn.Module):
    """New tokens after P cached ones: the last position's logits and the grown cache.
    Queries are scaled after the projection, as transformers' WhisperAttention does."""

    def __init__(self, model):
        super().__init__()
        self.decoder = model.model.decoder
        self.proj_out = model.proj_out
        self.heads = model.config.decoder_attention_heads
        # Whisper ties the output projection to the token embedding (decided here, before
        # any fp16 storage re-parametrizes the projection's weight).
        self.tied = model.proj_out.weight is self.decoder.embed_tokens.weight and model.proj_out.bias is None

    def split(self, x):
        return x.view(1, -1, self.heads, x.shape[-1] // self.heads).transpose(1, 2)

    def forward(self, input_ids, past_k, past_v, cross_k, cross_v):
        d = self.decoder
        ids = input_ids.to(torch.int64)
        new, past = ids.shape[1], past_k.shape[3]
        pos = torch.arange(new) + past
        x = d.embed_tokens(ids) * d.embed_scale + d.embed_positions.weight[pos]
        mask = torch.where(torch.arange(past + new)[None, :] > pos[:, None], float("-inf"), 0.0)
        present_k, present_v = [], []
        width = x.shape[-1]
        for i, layer in enumerate(d.layers):
            a = layer.self_attn
            h = layer.self_attn_layer_norm(x)
            k = torch.cat([past_k[i], self.split(a.k_proj(h))], 2)
            v = torch.cat([past_v[i], self.split(a.v_proj(h))], 2)
            present_k.append(k)
            present_v.append(v)
            x = x + a.out_proj(attend(self.split(a.q_proj(h) * a.scaling), k, v, mask).transpose(1, 2)
                               .reshape(1, -1, width))
            c = layer.encoder_attn
            h = layer.encoder_attn_layer_norm(x)
            x = x + c.out_proj(attend(self.split(c.q_proj(h) * c.scaling), cross_k[i], cross_v[i]).transpose(1, 2)
                               .reshape(1, -1, width))
            x = x + layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(x))))
        x = d.layer_norm(x)[:, -1]
        # Tied: a Gemm (with a zero bias, which the exporter needs to emit one) reads the
        # embedding's own initializer, where a MatMul would fold in a transposed copy
        # (150-260 MB more file at real sizes).
        w = d.embed_tokens.weight
        logits = torch.nn.functional.linear(x, w, torch.zeros(w.shape[0])) if self.tied else self.proj_out(x)
        return logits, torch.stack(present_k), torch.stack(present_v)


def asr_section(model, gen: GenerationConfig, tok: WhisperTokenizerFast, n_mels: int) -> dict:
    """The manifest's `asr` section: the front end's parameters, the decoder's shape, the
    forced and suppressed ids (from the checkpoint's generation config)."""
    c = model.config
    ids = tok.convert_tokens_to_ids
    return {
        "sample_rate": 16000, "n_fft": 400, "hop_length": 160, "n_mels": n_mels, "chunk_samples": CHUNK_SAMPLES,
        "decoder_layers": c.decoder_layers, "heads": c.decoder_attention_heads,
        "head_dim": c.d_model // c.decoder_attention_heads, "audio_positions": c.max_source_positions,
        "max_length": int(gen.max_length), "vocab_size": c.vocab_size,
        "start": int(gen.decoder_start_token_id), "end": int(gen.eos_token_id),
        "translate": int(gen.task_to_id["translate"]), "transcribe": int(gen.task_to_id["transcribe"]),
        "no_timestamps": int(gen.no_timestamps_token_id),
        "languages": {k[2:-2]: int(v) for k, v in gen.lang_to_id.items()},
        "suppress": [int(t) for t in gen.suppress_tokens], "begin_suppress": [int(t) for t in gen.begin_suppress_tokens],
        "timestamp_begin": int(ids("<|notimestamps|>")) + 1,
    }


def export_asr(checkpoint: Path, bundle: Path) -> dict:
    """Export the checkpoint's engines and tokenizer into `bundle` (checked against
    PyTorch with ONNX Runtime) and add them and the `asr` section to its manifest."""
    started = time.time()
    model = WhisperForConditionalGeneration.from_pretrained(str(checkpoint)).eval()
    gen = GenerationConfig.from_pretrained(str(checkpoint))
    tok = WhisperTokenizerFast.from_pretrained(str(checkpoint))
    c = model.config
    n_mels, layers, heads = c.num_mel_bins, c.decoder_layers, c.decoder_attention_heads
    dh, frames = c.d_model // heads, 2 * c.max_source_positions
    rng = np.random.default_rng(SEED)
    features = rng.standard_normal((1, n_mels, frames)).astype(np.float32)
    enc, ckv, dec = Encoder(model), CrossKv(model), DecoderStep(model)
    kv_spec = lambda n, length: tensor_spec(n, [layers, 1, heads, length, dh])  # noqa: E731
    # Graphs over one protobuf's 2 GiB in fp32 (Whisper large: 0.6-0.8 B parameters each)
    # keep the checkpoint's fp16 values as fp16 initializers, computing in fp32.
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in (("encoder", enc), ("decoder", dec))}
    fp16 = {name: n * 4 > PROTOBUF_LIMIT * 0.9 for name, n in params.items()}
    for name, n in params.items():
        if n * 2 > PROTOBUF_LIMIT * 0.9:
            raise SystemExit(f"asr {name}: {n / 1e9:.2f} B parameters do not fit one ONNX file even stored fp16 "
                             "(external data is not supported by the bundle yet)")
    # store_fp16 refuses a weight that is not fp16-exact: the numbers stay the fp32 module's.
    for name, module in (("encoder", enc), ("decoder", dec)):
        if fp16[name]:
            store_fp16(module, f"the Whisper {name}", "this checkpoint's graph needs fp16-exact weights to fit 2 GiB")
            log(f"asr {name}: over 2 GiB in fp32: weights stored fp16, computed in fp32")
    precision = {k: "fp16" if v else "fp32" for k, v in fp16.items()}
    export_onnx(enc, (torch.from_numpy(features),), bundle / "asr-encoder.onnx", ["input_features"],
                ["encoder_hidden"], {}, fold=not fp16["encoder"])
    with torch.no_grad():
        hidden = enc(torch.from_numpy(features))
        cross_k, cross_v = ckv(hidden)
    export_onnx(ckv, (hidden,), bundle / "asr-cross-kv.onnx", ["encoder_hidden"], ["cross_k", "cross_v"], {})
    prefix = torch.tensor([[gen.decoder_start_token_id, 50259, gen.task_to_id["translate"],
                            gen.no_timestamps_token_id]], dtype=torch.float32)
    empty = torch.zeros(layers, 1, heads, 0, dh)
    export_onnx(dec, (prefix, empty, empty, cross_k, cross_v), bundle / "asr-decoder.onnx",
                ["input_ids", "past_k", "past_v", "cross_k", "cross_v"], ["logits", "present_k", "present_v"],
                {"input_ids": {1: "new_tokens"}, "past_k": {3: "past"}, "past_v": {3: "past"},
                 "present_k": {3: "present"}, "present_v": {3: "present"}}, fold=not fp16["decoder"])
    # Parity: each engine against PyTorch; the decoder at the prefix (no past) and one
    # cached step after it.
    worst = {}
    worst["encoder"] = max_diff(parity_session(bundle / "asr-encoder.onnx", not fp16["encoder"]),
                                {"input_features": features}, {"encoder_hidden": hidden.numpy()})
    worst["cross_kv"] = max_diff(parity_session(bundle / "asr-cross-kv.onnx"), {"encoder_hidden": hidden.numpy()},
                                 {"cross_k": cross_k.numpy(), "cross_v": cross_v.numpy()})
    sess = parity_session(bundle / "asr-decoder.onnx", not fp16["decoder"])
    with torch.no_grad():
        logits, pk, pv = dec(prefix, empty, empty, cross_k, cross_v)
        ref = model(encoder_outputs=(hidden,), decoder_input_ids=prefix.long()).logits[0, -1]
        step = torch.tensor([[int(ref.argmax())]], dtype=torch.float32)
        ref_step = model(encoder_outputs=(hidden,), decoder_input_ids=torch.cat([prefix, step], 1).long()).logits[0, -1]
    feeds = {"input_ids": prefix.numpy(), "past_k": empty.numpy(), "past_v": empty.numpy(),
             "cross_k": cross_k.numpy(), "cross_v": cross_v.numpy()}
    worst["decoder_prefix"] = max_diff(sess, feeds, {"logits": ref[None].numpy()})
    feeds.update(input_ids=step.numpy(), past_k=pk.numpy(), past_v=pv.numpy())
    worst["decoder_step"] = max_diff(sess, feeds, {"logits": ref_step[None].numpy()})
    for name, diff in worst.items():
        log(f"asr {name}: max|onnxruntime - transformers| = {diff:.3g}")
        if diff > PARITY_TOLERANCE:
            raise SystemExit(f"asr {name}: parity {diff} exceeds {PARITY_TOLERANCE}")
    shutil.copyfile(checkpoint / "tokenizer.json", bundle / "asr-tokenizer.json")
    parity = lambda key: {"reference": f"transformers {__import__('transformers').__version__} cpu",  # noqa: E731
                          "runtime": f"onnxruntime {ort.__version__} cpu", "max_abs_diff": worst[key],
                          "tolerance": PARITY_TOLERANCE, "cases": 1}
    files = [
        file_entry(bundle, "asr-encoder.onnx", "asr_encoder", "onnx", precision["encoder"], parity=parity("encoder"),
                   inputs=[tensor_spec("input_features", [1, n_mels, frames])],
                   outputs=[tensor_spec("encoder_hidden", [1, c.max_source_positions, c.d_model])]),
        file_entry(bundle, "asr-cross-kv.onnx", "asr_cross_kv", "onnx", "fp32", parity=parity("cross_kv"),
                   inputs=[tensor_spec("encoder_hidden", [1, c.max_source_positions, c.d_model])],
                   outputs=[kv_spec("cross_k", c.max_source_positions), kv_spec("cross_v", c.max_source_positions)]),
        file_entry(bundle, "asr-decoder.onnx", "asr_decoder", "onnx", precision["decoder"],
                   parity=parity("decoder_step"),
                   inputs=[tensor_spec("input_ids", [1, "new_tokens"]), kv_spec("past_k", "past"),
                           kv_spec("past_v", "past"), kv_spec("cross_k", c.max_source_positions),
                           kv_spec("cross_v", c.max_source_positions)],
                   outputs=[tensor_spec("logits", [1, c.vocab_size]), kv_spec("present_k", "present"),
                            kv_spec("present_v", "present")]),
        file_entry(bundle, "asr-tokenizer.json", "asr_tokenizer", "tokenizer-json", "fp32"),
    ]
    manifest_path = bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"] = [f for f in manifest["files"] if not f["role"].startswith("asr_")] + files
    manifest["asr"] = {"checkpoint": checkpoint.name, **asr_section(model, gen, tok, n_mels)}
    write_json_atomic(manifest_path, manifest)
    log(f"asr: {checkpoint.name} exported into {bundle} in {time.time() - started:.1f}s")
    return manifest["asr"]


def waveforms() -> dict:
    """The front end's test audio: speech-like tones, silence, clipping, shorter and
    longer than the 30 s window."""
    rng = np.random.default_rng(SEED)
    t = lambda s: np.arange(int(s * 16000)) / 16000  # noqa: E731
    tone = lambda s: (0.3 * np.sin(2 * np.pi * 220 * t(s)) * np.sin(2 * np.pi * 3 * t(s))  # noqa: E731
                      + 0.05 * rng.standard_normal(len(t(s))))
    return {
        "tones-3s": tone(3.0),
        "silence-2s": np.zeros(32000),
        "clipped-5s": np.clip(3.0 * np.sin(2 * np.pi * 440 * t(5.0)), -1.0, 1.0),
        "noise-45s": 0.1 * rng.standard_normal(45 * 16000),
        "short-0.2s": tone(0.2),
    }


def ending_checkpoint(checkpoint: Path, out: Path) -> Path:
    """The test checkpoint changed so that it says the end token after a few words (a
    random model never does): the end token's row (tied: its embedding, never fed back)
    points along the decoder's final state after the prefix and one token of the first
    test clip, so that its logit wins there and on states like it."""
    warnings.filterwarnings("ignore")
    model = WhisperForConditionalGeneration.from_pretrained(str(checkpoint)).eval()
    fe = WhisperFeatureExtractor.from_pretrained(str(checkpoint))
    gen = model.generation_config
    wave = next(iter(waveforms().values())).astype(np.float32)
    padded = np.zeros(CHUNK_SAMPLES, np.float32)
    padded[:len(wave)] = wave
    features = torch.from_numpy(fe._np_extract_fbank_features(padded[None], "cpu")[0][None])
    prefix = [gen.decoder_start_token_id, gen.lang_to_id["<|en|>"], gen.task_to_id["translate"],
              gen.no_timestamps_token_id]
    with torch.no_grad():
        first = model.generate(features, generation_config=copy.deepcopy(gen), language="en", task="translate",
                               max_new_tokens=1)[0].tolist()
        hidden = model.model.decoder(input_ids=torch.tensor([prefix + first[-1:]]),
                                     encoder_hidden_states=model.model.encoder(features).last_hidden_state)
        h = hidden.last_hidden_state[0, -1]
        model.proj_out.weight[gen.eos_token_id] = 50.0 * h / h.norm() ** 2
    model.save_pretrained(str(out))
    for f in checkpoint.iterdir():
        if not (out / f.name).exists():
            shutil.copyfile(f, out / f.name)
    return out


def goldens(checkpoint: Path, out: Path, ending: Path) -> None:
    """Log-mel features from transformers' feature extractor (its numpy path: the audio
    padded or cut to 30 s first, as `__call__` does) and greedy `generate` ids, of the
    test checkpoint and (`translate-en-ending`) of the one that says the end token."""
    warnings.filterwarnings("ignore")
    store = TensorStore(out / "goldens")
    fe = WhisperFeatureExtractor.from_pretrained(str(checkpoint))
    model = WhisperForConditionalGeneration.from_pretrained(str(checkpoint)).eval()
    ending_model = WhisperForConditionalGeneration.from_pretrained(str(ending)).eval()
    index = {"cases": []}
    for name, wave in waveforms().items():
        wave = wave.astype(np.float32)
        padded = np.zeros(CHUNK_SAMPLES, np.float32)
        padded[:min(len(wave), CHUNK_SAMPLES)] = wave[:CHUNK_SAMPLES]
        mel = fe._np_extract_fbank_features(padded[None], "cpu")[0]
        case = {"name": name, "waveform": store.put(f"asr.{name}.waveform", wave),
                "log_mel": store.put(f"asr.{name}.log_mel", mel), "generate": {}}
        features = torch.from_numpy(mel[None])
        for key, kw in [("translate-en", {"language": "en", "task": "translate"}),
                        ("transcribe-en", {"language": "en", "task": "transcribe"}),
                        ("transcribe-detect", {"task": "transcribe"})]:
            with torch.no_grad():
                seq = model.generate(features, generation_config=copy.deepcopy(model.generation_config),
                                     return_dict_in_generate=True, **kw).sequences[0].tolist()
            case["generate"][key] = seq
        with torch.no_grad():
            case["generate"]["translate-en-ending"] = ending_model.generate(
                features, generation_config=copy.deepcopy(ending_model.generation_config), language="en",
                task="translate", return_dict_in_generate=True).sequences[0].tolist()
        index["cases"].append(case)
        log(f"asr goldens: {name}: {', '.join(f'{k} {len(v)} ids' for k, v in case['generate'].items())}")
    write_json_atomic(out / "index.json", index)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    e = sub.add_parser("export", help="add a Whisper checkpoint's engines to a bundle")
    e.add_argument("--checkpoint", type=Path, required=True, help="a transformers-layout Whisper folder")
    e.add_argument("--bundle", type=Path, required=True)
    s = sub.add_parser("synthetic", help="the tiny test checkpoint, a bundle with it, goldens")
    s.add_argument("--out", type=Path, required=True, help="the test-data folder (holds bundle/)")
    s.add_argument("--whisper-assets", type=Path, required=True,
                   help="openai-whisper's tokenizer.py and multilingual.tiktoken")
    s.add_argument("--dims", choices=sorted(DIMENSIONS), default="tiny-test",
                   help="tiny-test (the tests' model, with goldens) or a real size for full-size runs "
                        "(bundle-asr-SIZE, no goldens)")
    a = p.parse_args(argv)
    if a.mode == "synthetic" and a.dims == "tiny-test":
        torch.set_num_threads(1)  # a tiny model: threads only oversubscribe the machine
    if a.mode == "export":
        export_asr(a.checkpoint, a.bundle)
        return
    suffix = "" if a.dims == "tiny-test" else f"-{a.dims}"
    checkpoint = random_checkpoint(a.out / f"whisper{suffix or '-tiny'}", a.whisper_assets, a.dims)
    bundle = a.out / f"bundle-asr{suffix}"
    shutil.rmtree(bundle, ignore_errors=True)
    shutil.copytree(a.out / "bundle", bundle)
    export_asr(checkpoint, bundle)
    if a.dims == "tiny-test":
        ending = ending_checkpoint(checkpoint, a.out / "whisper-tiny-ending")
        ending_bundle = a.out / "bundle-asr-ending"
        shutil.rmtree(ending_bundle, ignore_errors=True)
        shutil.copytree(a.out / "bundle", ending_bundle)
        export_asr(ending, ending_bundle)
        goldens(checkpoint, a.out / "asr-goldens", ending)


if __name__ == "__main__":
    main()
