# Tokenizer golden tests: ib-tokenize against two references on the checked-in corpus of
# tests/golden/tokenizer, for Llama 3 and Qwen3: Hugging Face tokenizers (the Rust library the
# engines and the peer routers use, from PyPI in the project's venv) and transformers.js
# (@lenml/tokenizers, from npm).
#   1. the corpus and the template renderings are what gen_corpus.py generates (Jinja2);
#   2. token ids of every corpus string and of every rendered conversation equal the
#      checked-in ids, and ib-tokenize's own chat rendering gives the same ids;
#   3. Hugging Face tokenizers run live now gives the checked-in ids, every line;
#   4. transformers.js run live now gives them too, except on lines holding U+0085 or U+FEFF,
#      where ECMAScript's \s differs from Unicode's White_Space (and there it must differ:
#      the corpus has such lines to show that ibrain follows the engines' library);
#   5. decode(encode(s)) == s for every valid UTF-8 string of the corpus.
source "$IB_SRC/tests/lib/proc.sh"

gold="$IB_SRC/tests/golden/tokenizer"
npm="$IB_SRC/third_party/npm/node_modules/@lenml"
tok="$IB_BUILD/tools/ib-tokenize"
[ -f "$npm/tokenizer-llama3/models/tokenizer.json" ] || ib_fail "tokenizer packages missing: run tools/setup.sh"

ib_need_venv
/usr/bin/python3 "$gold/gen_corpus.py" --check "$gold" || ib_fail "golden corpus is stale: rerun gen_corpus.py"
[ "$(wc -l <"$gold/corpus.hex")" -ge 2000 ] || ib_fail "corpus has fewer than 2000 strings"

for model in llama3 qwen3; do
  file="$npm/tokenizer-$model/models/tokenizer.json"
  template=$model; [ "$model" = qwen3 ] && template=chatml
  "$tok" --tokenizer "$file" hex-lines <"$gold/corpus.hex" >"$IB_TMP/corpus-$model.txt" || ib_fail "$model: ib-tokenize failed"
  if ! cmp -s "$IB_TMP/corpus-$model.txt" "$gold/expected-$model.txt"; then
    diff "$IB_TMP/corpus-$model.txt" "$gold/expected-$model.txt" | head -20
    ib_fail "$model: corpus ids differ from the reference"
  fi
  "$tok" --tokenizer "$file" hex-lines <"$gold/chats-$model.hex" >"$IB_TMP/chats-$model.txt" || ib_fail "$model: chats"
  cmp -s "$IB_TMP/chats-$model.txt" "$gold/chats-expected-$model.txt" || ib_fail "$model: rendered chat ids differ"
  "$tok" --tokenizer "$file" chat-lines --template "$template" <"$gold/chats.jsonl" >"$IB_TMP/own-$model.txt" ||
    ib_fail "$model: chat-lines failed"
  if ! cmp -s "$IB_TMP/own-$model.txt" "$gold/chats-expected-$model.txt"; then
    diff "$IB_TMP/own-$model.txt" "$gold/chats-expected-$model.txt" | head -10
    ib_fail "$model: ibrain's chat template rendering differs from the model's template"
  fi
  "$tok" --tokenizer "$file" roundtrip-lines <"$gold/corpus.hex" >"$IB_TMP/rt-$model.json" || ib_fail "$model: round trip"
  echo "$model: $(wc -l <"$gold/corpus.hex") strings, $(wc -l <"$gold/chats.jsonl") conversations match; round trip $(cat "$IB_TMP/rt-$model.json")"

  # The references themselves, now.
  "$IB_PYTHON" "$IB_SRC/tests/interop/tokenizer_hf.py" "$file" hex-lines <"$gold/corpus.hex" \
    >"$IB_TMP/hf-$model.txt" 2>"$IB_TMP/hf.err" || ib_fail "$model: HF tokenizers failed: $(tail -c 400 "$IB_TMP/hf.err")"
  cmp -s "$IB_TMP/hf-$model.txt" "$gold/expected-$model.txt" || ib_fail "$model: HF tokenizers disagrees with the checked-in ids"
  node "$IB_SRC/tests/interop/tokenizer_ref.cjs" "$model" hex-lines <"$gold/corpus.hex" >"$IB_TMP/ref-$model.txt" 2>"$IB_TMP/ref.err" ||
    ib_fail "$model: reference failed: $(tail -c 400 "$IB_TMP/ref.err")"
  /usr/bin/python3 - "$gold/corpus.hex" "$IB_TMP/ref-$model.txt" "$gold/expected-$model.txt" <<'PY' || ib_fail "$model: transformers.js disagrees beyond \\s"
import sys
corpus, js, want = (open(f).read().splitlines() for f in sys.argv[1:])
assert len(js) == len(want) == len(corpus), "line counts differ"
edge = [("\u0085" in t or "\ufeff" in t) for t in (bytes.fromhex(h).decode("utf-8", "replace") for h in corpus)]
bad = [i + 1 for i in range(len(js)) if js[i] != want[i] and not edge[i]]
assert not bad, "transformers.js differs on lines %s" % bad[:10]
differ = sum(1 for i in range(len(js)) if js[i] != want[i])
assert differ > 0, "no line shows the \\s difference: the corpus lost its edge cases"
print("transformers.js: same ids except %d lines with U+0085/U+FEFF" % differ)
PY
done
echo "tokenizer_golden: ok"
