#!/usr/bin/env bash
# Writes the committed seed corpora (fuzz/corpus/TARGET/): small valid inputs of each
# parser, from the project's own files and tiny generated media. Run once; the seeds are
# committed (libFuzzer grows its working corpus from them in fuzz/corpus-work/).
source "$(dirname "$0")/../scripts/lib.sh"
C="$REPO_ROOT/fuzz/corpus"
rm -rf "$C" && mkdir -p "$C"/{manifest,profile,serve_config,analyze_options,npy,eval_list,transcripts_csv,subtitles,gguf,onnx,media,chat_body,multipart,query,sse,analyze_request,chat_request}
cp "$REPO_ROOT/devices/manifests/emotion-llama-7b/manifest.json" "$C/manifest/emotion-llama-7b.json"
cp "$REPO_ROOT/devices/manifests/emotion-llama-v2-7b/manifest.json" "$C/manifest/emotion-llama-v2-7b.json"
cp "$REPO_ROOT/devices/profiles/"*.toml "$C/profile/"
cp "$REPO_ROOT/packaging/config.toml" "$C/serve_config/packaging.toml"
printf 'token = "t"\nlisten = "0.0.0.0:8686"\n[[watch]]\nname = "cam"\nsource = "udp://@:5000"\nwindow_s = 4.0\nhop_s = 2.0\nwebhook = "http://127.0.0.1:9000/x"\n' \
  > "$C/serve_config/watch.toml"
printf '{"path": "/srv/clip.mp4", "task": "emotion", "preset": "fast", "max_new_tokens": 16}' > "$C/analyze_options/path.json"
printf '{"url": "https://example.com/a.mp4", "task": "question", "question": "Why?", "transcript": "hi", "temperature": 0.7, "top_p": 0.9, "seed": 3, "stop": ["###"]}' \
  > "$C/analyze_options/question.json"
printf '{"task": "eval-set", "eval_set": "mafw_multi", "mode": "official-demo", "layout": "official", "scores": true}' > "$C/analyze_options/eval-set.json"
printf '[emotion] Please determine which emotion label in the video represents: happy, sad, neutral, angry, worried, surprise.' \
  > "$C/analyze_options/chat-tag.txt"
printf 'clip_001 125 happy\nclip_002 80 Sad -0.5\n# a comment\n\nclip_003 10 neutral\n' > "$C/eval_list/list.txt"
printf 'clip_a 30 happy,sad\nclip_b 12 worried;surprise\n' > "$C/eval_list/multi.txt"
printf 'name,sentence\nclip_001,"I can'"'"'t believe it, really"\nclip_002,fine\n' > "$C/transcripts_csv/transcripts.csv"
printf '1\n00:00:00,000 --> 00:00:02,500\nHello <i>there</i>\n\n2\n00:00:02,600 --> 00:00:04,000\nSecond line\n' > "$C/subtitles/a.srt"
printf 'WEBVTT\n\n00:00.000 --> 00:02.000\n<v Ann>Hi there\n\nNOTE a note\n\n00:02.000 --> 00:03.000 align:start\nagain\n' > "$C/subtitles/b.vtt"
cp "$EMOLLAMA_CACHE/test-data/bundle/feats_llama_proj1.onnx" "$C/onnx/projector.onnx"
cp "$EMOLLAMA_CACHE/test-data/bundle/face-pnet.onnx" "$C/onnx/face-pnet.onnx"
"$PY" - "$C" <<'PY'
import sys
from pathlib import Path
import numpy as np
import gguf
c = Path(sys.argv[1])
np.save(c / "npy/f32-2x3.npy", np.arange(6, dtype="<f4").reshape(2, 3))
np.save(c / "npy/f32-scalar.npy", np.float32(1.5))
np.save(c / "npy/f32-fortran.npy", np.asfortranarray(np.ones((3, 2), dtype="<f4")))
np.save(c / "npy/f64-1x4.npy", np.zeros((1, 4), dtype="<f8"))
w = gguf.GGUFWriter(str(c / "gguf/tiny.gguf"), "llama")
w.add_block_count(1)
w.add_context_length(64)
w.add_embedding_length(8)
w.add_array("tokenizer.ggml.tokens", ["<unk>", "<s>", "</s>", "a"])
w.add_tensor("token_embd.weight", np.ones((4, 8), dtype=np.float32))
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
PY
# Media: a fraction of a second each, in the containers and codecs the service meets.
ff() { ffmpeg -hide_banner -loglevel error -y "$@"; }
ff -f lavfi -i testsrc=size=64x48:rate=10 -f lavfi -i sine=frequency=440:sample_rate=16000 -t 0.3 \
  -c:v libx264 -preset ultrafast -pix_fmt yuv420p -c:a aac -b:a 16k "$C/media/h264-aac.mp4"
ff -f lavfi -i testsrc=size=32x32:rate=5 -t 0.4 -c:v mpeg4 "$C/media/mpeg4.avi"
ff -f lavfi -i testsrc=size=32x32:rate=5 -f lavfi -i sine=sample_rate=8000 -t 0.4 -c:v mpeg2video -c:a mp2 "$C/media/mpeg2.ts"
ff -f lavfi -i sine=frequency=300:sample_rate=16000 -t 0.2 "$C/media/tone.wav"
ff -f lavfi -i testsrc=size=24x24 -frames:v 1 "$C/media/still.png"
ff -f lavfi -i testsrc=size=24x24 -frames:v 1 "$C/media/still.jpg"
ff -f lavfi -i testsrc=size=32x24:rate=5 -t 0.4 -c:v mjpeg "$C/media/mjpeg.mkv"
# The service's request layer: chat bodies (the openai package's shapes, media as data
# URLs of the clips above), multipart uploads (first line: the Content-Type header),
# query strings, streamed pieces of text.
"$PY" - "$C" <<'PY'
import base64, json, sys
from pathlib import Path
c = Path(sys.argv[1])
url = lambda mime, f: f"data:{mime};base64," + base64.b64encode((c / "media" / f).read_bytes()).decode()
text = {"type": "text", "text": "[emotion]"}
seeds = {
    "video": {"model": "emollama", "max_tokens": 8, "seed": 0,
              "messages": [{"role": "user", "content": [text, {"type": "video_url", "video_url": {"url": url("video/mp4", "h264-aac.mp4")}}]}]},
    "stream-audio": {"model": "emollama", "stream": True, "stream_options": {"include_usage": True}, "temperature": 0.2,
                     "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": [
                         {"type": "text", "text": "[reason] why?"}, {"type": "video_url", "video_url": {"url": url("video/mp2t", "mpeg2.ts")}},
                         {"type": "input_audio", "input_audio": {"data": base64.b64encode((c / "media/tone.wav").read_bytes()).decode(), "format": "wav"}}]}]},
    "image": {"model": "emollama", "max_completion_tokens": 4, "stop": ["###"], "top_p": 0.5,
              "messages": [{"role": "user", "content": [text, {"type": "image_url", "image_url": {"url": url("image/png", "still.png")}}]}]},
    "path": {"model": "emollama", "messages": [{"role": "user", "content": [text, {"type": "file", "file": {"file_data": url("video/mp4", "h264-aac.mp4"), "filename": "a.mp4"}}]}]},
}
for name, body in seeds.items():
    (c / "chat_body" / f"{name}.json").write_text(json.dumps(body))
clip = (c / "media/h264-aac.mp4").read_bytes()
def multipart(boundary, fields, media):
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="media"; filename="c.mp4"\r\nContent-Type: video/mp4\r\n\r\n'.encode() + media + b"\r\n")
    return f"multipart/form-data; boundary={boundary}\n".encode() + b"".join(parts) + f"--{boundary}--\r\n".encode()
(c / "multipart/analyze").write_bytes(multipart("XyZ", {"task": "emotion", "max_new_tokens": "8"}, clip))
(c / "multipart/question").write_bytes(multipart("----b0", {"task": "question", "question": "Why?", "seed": "3", "scores": "true"}, b"\x00\x00\x00\x18ftypmp42"))
for name, q in {"stream": "stream=true", "source": "source=cam", "both": "stream=false&source=a%20b", "empty": ""}.items():
    (c / "query" / name).write_text(q)
for name, t in {"word": " happy", "unicode": "é😀\u2028", "lines": "a\nb\r\nc\r", "json": '{"x": "]"}\u0000'}.items():
    (c / "sse" / name).write_text(t)
# The structure-aware targets read any bytes: pseudo-random ones to start from.
import random
rng = random.Random(30)
for i in range(1, 5):
    (c / "analyze_request" / f"random-{i}").write_bytes(rng.randbytes(64 * i))
    (c / "chat_request" / f"random-{i}").write_bytes(rng.randbytes(200 * i))
PY
du -sh "$C"/*
