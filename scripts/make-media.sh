#!/usr/bin/env bash
# Sample media from registry packages only: scikit-image's astronaut photo (a frontal
# face) + espeak-ng speech, a clip without audio, and an ffmpeg test pattern.
# usage: make-media.sh OUT_DIR PYTHON
set -euo pipefail
OUT="$1"; PY="$2"
STAGE="$OUT.partial"
rm -rf "$STAGE"; mkdir -p "$STAGE"
FF=(ffmpeg -nostdin -hide_banner -loglevel error -y)

ASTRONAUT=$("$PY" -c 'import skimage, os; print(os.path.join(os.path.dirname(skimage.__file__), "data", "astronaut.png"))')
CHELSEA="$(dirname "$ASTRONAUT")/chelsea.png"
cp "$ASTRONAUT" "$STAGE/astronaut.png"
cp "$CHELSEA" "$STAGE/chelsea.png"

espeak-ng -v en-us -s 150 -w "$STAGE/speech.wav" \
  "I can't believe it. We finally made it to the launch pad, and everything works!"

# Talking face: the still photo, gently zoomed so frames differ, with the speech.
"${FF[@]}" -loop 1 -framerate 25 -i "$STAGE/astronaut.png" -i "$STAGE/speech.wav" \
  -vf "scale=512:512,zoompan=z='1+0.0015*on':d=1:s=512x512:fps=25,format=yuv420p" \
  -c:v libx264 -preset veryfast -crf 20 -c:a aac -b:a 96k -shortest "$STAGE/talking-face.mp4"
# The same picture without any audio track.
"${FF[@]}" -loop 1 -framerate 25 -t 2 -i "$STAGE/astronaut.png" \
  -vf "scale=512:512,format=yuv420p" -c:v libx264 -preset veryfast -an "$STAGE/no-audio.mp4"
# A plain test pattern with a tone.
"${FF[@]}" -f lavfi -i "testsrc2=size=320x240:rate=25:duration=2" -f lavfi -i "sine=frequency=440:duration=2" \
  -c:v libx264 -preset veryfast -pix_fmt yuv420p -c:a aac -shortest "$STAGE/test-pattern.mp4"

rm -rf "$OUT"; mv "$STAGE" "$OUT"
echo "    sample media in $OUT: $(find "$OUT" -maxdepth 1 -type f -printf '%f ')"
