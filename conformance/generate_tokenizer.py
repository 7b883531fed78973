"""Golden cases for the CLIP tokenizer (models/clip): Refiners 0.4.0's
CLIPTokenizer on hand-written and seeded random prompts, plus a sweep of
every code point through its pre-tokenizer.

    conformance/.venv/bin/python conformance/generate_tokenizer.py

Writes testdata/tokenizer/cases.json and testdata/tokenizer/unicode.json.

Reference and what it cannot decide
- `ids` are the ids CLIPTokenizer.forward gives (start, at most 75 tokens,
  end; the padding to 77 is left out to keep the file small), `truncated`
  the number of tokens it cut.
- Refiners' recursive_bpe merges one occurrence of the best pair per pass,
  taken from a Python set: where the pair overlaps itself ("aaaa") the
  occurrence, and so the tokens, depend on PYTHONHASHSEED. The generator
  runs Refiners under several hash seeds in subprocesses. Where they agree,
  that is `ids`. Where they do not, `refiners_outcomes` counts the distinct
  results, and `ids` is Refiners with its byte_pair_encoding swapped for
  transformers' (OpenAI CLIP's) merge loop, which merges leftmost first:
  one of Refiners' possible outcomes (`leftmost_observed` says whether one
  of the seeds gave it), and what the Go tokenizer does. That swapped tokenizer must also
  equal Refiners wherever Refiners agrees with itself (checked).
- Refiners' recursion fails on a piece that needs about a thousand merges:
  `refiners_error` then says so, and `ids` is again the swapped tokenizer.
- transformers' CLIPTokenizer, built from a vocab.json/merges.txt derived
  from the same vocabulary and saved by its own save_vocabulary (the layout
  of a diffusers tokenizer folder), is run on every prompt too; where it
  differs from Refiners, `transformers_differs` is set, and for the
  hand-written prompts `transformers` holds its ids. Refiners is the
  reference. The sha256 of the two files is stored so that the Go test can
  check it loads byte-identical files.
"""

import gzip
import hashlib
import importlib.metadata
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import unicodedata
from pathlib import Path

OUT = Path(__file__).resolve().parent / "testdata" / "tokenizer"
HASH_SEEDS = range(8)
MAX_TOKENS = 75


def refiners_tokenizer():
    from refiners.foundationals.clip.tokenizer import CLIPTokenizer

    return CLIPTokenizer()


def unpadded(ids, end):
    """A forward() row without the padding after the end token."""
    return ids[: ids.index(end, 1) + 1]


def worker(prompts_path, out_path):
    """Runs Refiners' CLIPTokenizer on every prompt (called in a subprocess
    with a given PYTHONHASHSEED)."""
    tok = refiners_tokenizer()
    out = []
    for prompt in json.loads(Path(prompts_path).read_text(encoding="utf-8")):
        try:
            out.append(unpadded(tok(prompt).squeeze(0).tolist(), tok.end_of_text_token_id))
        except RecursionError:
            out.append(None)
    Path(out_path).write_text(json.dumps(out), encoding="utf-8")


# Hand-written edge cases.
EDGE = [
    "",
    " ",
    "     ",
    "\t\n\r\x0b\x0c",
    "\u00a0\u2003\u3000\u2028\x1c\x1d\x1e\x1f\x85",
    "a photograph of an astronaut riding a horse",
    "A Photograph Of An ASTRONAUT Riding A HORSE",
    "hello world",
    "Hello, World!",
    "hello...world!!!",
    "!!!",
    "?!?!?!",
    "...",
    "…",
    "a—b – c",
    "(masterpiece), [best quality], {detailed}, <lora:foo:0.8>",
    "((((((very)))))) detailed",
    "###$$$%%%^^^&&&***",
    "~`!@#$%^&*()-_=+[]{}\\|;:'\",.<>/?",
    "snake_case_word and __dunder__",
    "0",
    "1234567890",
    "3.14159 and 2,718 and 1e-5",
    "in 2024, 42 cats",
    "1st 2nd 3rd 4th",
    "it's",
    "it's a dog's life",
    "don't can't won't",
    "we're they've I'm you'll he'd",
    "IT'S DON'T WE'RE THEY'VE I'M YOU'LL HE'D",
    "'s 't 're 've 'm 'll 'd",
    "''s '''t",
    "rock 'n' roll",
    "don’t (curly apostrophe)",
    "café naïve über señor Ångström",
    "cafe\u0301 (combining accent)",
    "ÉCOLE ÜBER",
    "crème brûlée",
    "İstanbul ıi ſ Kelvin",
    "straße STRASSE",
    "日本語のテキスト",
    "中文 prompt 混合",
    "한국어 텍스트",
    "Привет мир",
    "Γειά σου Κόσμε ΣΑΣ",
    "مرحبا بالعالم",
    "שלום",
    "नमस्ते",
    "😀😃😄 emoji",
    "a cat 🐱 on a mat 🧶",
    "👨‍👩‍👧‍👦 family",
    "👍🏽 thumbs",
    "🇫🇷 flag",
    "½ ¼ ² ³ ① Ⅻ",
    "１２３ ＡＢＣ",
    "©®™ § ¶ °",
    "$100 €50 £20 ¥1000",
    "email@example.com https://example.com/path?q=1",
    "tab\tseparated\tvalues",
    "new\nline\nseparated",
    "<|startoftext|>",
    "<|endoftext|>",
    "<|startoftext|>a cat<|endoftext|>",
    "<|STARTOFTEXT|> upper",
    "x<|startoftext|>",
    "!<|startoftext|>",
    "<|ſtartoftext|> 'ſ",
    "aaaa",
    "aaaaaaaa",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "hmmmmmmmmmm",
    "zzzzzzzzzz",
    "lolololololol",
    "!!!!!!!!!!!!!!!!",
    "........",
    "oooooo nooooo",
    "the the the the the",
    "ab" * 40,
    "a" * 2000,
    "word " * 100,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "a cat, " * 30,
    "highly detailed, 8k, artstation, concept art, smooth, sharp focus, illustration, " * 3,
    "\x00\x01\x02 control \x7f chars",
    "zero\u200bwidth\u200dspace\ufeffbom",
    "\ufffd replacement",
    "\U0001d400\U0001d401 math bold",
    "\u0130\u0131\u017f\u212a\u212b",
    "ǅ ǈ ǋ titlecase",
    "ﬁ ﬂ ligatures",
    "\u0378\U000e0080 unassigned",
    "\ue000\U000f0000 private use",
]


def random_prompts(n, seed, vocab_words):
    rng = random.Random(seed)
    punct = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
    accented = ["café", "naïve", "über", "señor", "Ångström", "déjà", "façade", "jalapeño", "Zürich", "Kraków"]
    contractions = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "n't", "'S", "'LL"]
    spaces = [" ", " ", " ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u2003", "\x1c"]
    specials = ["<|startoftext|>", "<|endoftext|>"]

    def rand_char():
        kind = rng.random()
        if kind < 0.45:
            lo, hi = rng.choice([(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x52F), (0x2000, 0x2BFF), (0x3000, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xFF00, 0xFFEF)])
        elif kind < 0.7:
            lo, hi = rng.choice([(0x1F300, 0x1FAFF), (0x2600, 0x27BF), (0x1F1E6, 0x1F1FF)])
        else:
            lo, hi = 0, 0x10FFFF
        # Code points unassigned in Python's Unicode are left to the
        # sweep: Go's newer tables may have assigned them.
        while True:
            c = rng.randint(lo, hi)
            if not 0xD800 <= c <= 0xDFFF and unicodedata.category(chr(c)) != "Cn":
                return chr(c)

    def component():
        r = rng.random()
        if r < 0.45:
            w = rng.choice(vocab_words)
            case = rng.random()
            if case < 0.15:
                w = w.upper()
            elif case < 0.3:
                w = w.capitalize()
            return w
        if r < 0.55:
            return "".join(rng.choice(punct) for _ in range(rng.randint(1, 4)))
        if r < 0.62:
            return str(rng.randint(0, 10 ** rng.randint(1, 8)))
        if r < 0.68:
            return rng.choice(vocab_words) + rng.choice(contractions)
        if r < 0.73:
            return rng.choice(accented)
        if r < 0.9:
            return "".join(rand_char() for _ in range(rng.randint(1, 4)))
        if r < 0.92:
            return rng.choice("abcdefghijklmnopqrstuvwxyz!.") * rng.randint(3, 12)
        if r < 0.94:
            return rng.choice(specials)
        return rng.choice(vocab_words) + "_" + rng.choice(vocab_words)

    prompts, seen = [], set(EDGE)
    while len(prompts) < n:
        # Mostly prompt-sized, some past 75 tokens.
        count = rng.choice([1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 60])
        parts = []
        for _ in range(count):
            parts.append(component())
            parts.append(rng.choice(spaces) if rng.random() < 0.85 else "")
        prompt = "".join(parts).strip(" ") if rng.random() < 0.8 else "".join(parts)
        if prompt not in seen:
            seen.add(prompt)
            prompts.append(prompt)
    return prompts


def derive_hf_files(ref, directory):
    """vocab.json and merges.txt for transformers, from Refiners' vocabulary
    file, then re-saved by transformers' own save_vocabulary. Returns the
    tokenizer loaded from the saved files and the files' paths."""
    from transformers import CLIPTokenizer as HFTokenizer
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    lines = gzip.open(ref.vocabulary_path).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    alphabet = list(bytes_to_unicode().values())
    tokens = alphabet + [a + "</w>" for a in alphabet] + ["".join(m.split()) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    first = Path(directory) / "first"
    saved = Path(directory) / "saved"
    first.mkdir()
    saved.mkdir()
    (first / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False), encoding="utf-8")
    (first / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    hf = HFTokenizer(str(first / "vocab.json"), str(first / "merges.txt"))
    vocab_path, merges_path = hf.save_vocabulary(str(saved))
    return HFTokenizer(vocab_path, merges_path), vocab_path, merges_path


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def split(ref, text):
    """Refiners' pieces: the first two steps of CLIPTokenizer.encode, with
    its own compiled pattern."""
    return re.findall(ref.token_pattern, re.sub(r"\s+", " ", text.lower()))


def unicode_sweep(ref):
    """Every code point through Refiners' pre-tokenizer. A code point that
    lowercases to itself gets a class from probes: L when "a"+c+"a" is one
    piece (a letter to the pattern), D when c+c is two pieces (a digit), P
    when c+c is one piece ([^\\s\\w]), X when it vanishes (\\s or \\w); p is
    P for a code point unassigned in Python's Unicode (a newer Unicode may
    have assigned it). The others are listed with the pieces of c alone."""
    runs, lowered, prev = [], [], None
    for cp in range(0x110000):
        c = chr(cp)
        if 0xD800 <= cp <= 0xDFFF:
            k = "-"
        elif c.lower() != c:
            lowered.append([cp, split(ref, c)])
            k = "="
        else:
            one, two = split(ref, "a" + c + "a"), split(ref, c + c)
            if one == ["a" + c + "a"]:
                k = "L"
            elif two == [c, c]:
                k = "D"
            elif two == [c + c]:
                k = "p" if unicodedata.category(c) == "Cn" else "P"
            elif two == []:
                k = "X"
            else:
                raise SystemExit(f"U+{cp:04X}: unexpected pieces {one} {two}")
        if k != prev:
            runs.append([cp, k])
            prev = k
    return {
        "python": sys.version.split()[0],
        "unicode": unicodedata.unidata_version,
        "runs": runs,
        "lowered": lowered,
    }


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3])
        return

    ref = refiners_tokenizer()
    end = ref.end_of_text_token_id
    vocab_words = sorted(
        t[: -len("</w>")]
        for t in ref.token_to_id_mapping
        if t.endswith("</w>") and t[: -len("</w>")].isascii() and t[: -len("</w>")].isalpha() and len(t) > 6
    )
    prompts = EDGE + random_prompts(520, 1234, vocab_words)
    assert len(set(prompts)) == len(prompts), "duplicate prompts"

    with tempfile.TemporaryDirectory() as tmp:
        hf, vocab_path, merges_path = derive_hf_files(ref, tmp)
        hf_files = {"vocab.json": sha256(vocab_path), "merges.txt": sha256(merges_path)}

        prompts_path = Path(tmp) / "prompts.json"
        prompts_path.write_text(json.dumps(prompts), encoding="utf-8")
        runs = []
        for seed in HASH_SEEDS:
            out_path = Path(tmp) / f"refiners-{seed}.json"
            env = dict(os.environ, PYTHONHASHSEED=str(seed))
            subprocess.run([sys.executable, __file__, "--worker", str(prompts_path), str(out_path)], env=env, check=True)
            runs.append(json.loads(out_path.read_text(encoding="utf-8")))

    # Refiners with OpenAI's (leftmost-first) merge loop; transformers'
    # bpe cache starts with the special tokens, which Refiners never uses.
    leftmost = refiners_tokenizer()
    hf.cache = {}
    leftmost.byte_pair_encoding = hf.bpe
    recorded = []
    recorder = refiners_tokenizer()
    recorder.byte_pair_encoding = lambda token: recorded.append(token) or "a</w>"

    cases, stats = [], {"prompts": len(prompts), "hash_dependent": 0, "recursion_error": 0, "transformers_differs": 0, "truncated": 0}
    for i, prompt in enumerate(prompts):
        outs = [run[i] for run in runs]
        distinct = sorted({json.dumps(o) for o in outs if o is not None})
        ids = unpadded(leftmost(prompt).squeeze(0).tolist(), end)
        total = len(leftmost.encode(prompt)) - 2
        case = {"prompt": prompt, "ids": ids, "truncated": max(0, total - MAX_TOKENS)}
        if None in outs:
            assert all(o is None for o in outs), prompt
            case["refiners_error"] = "RecursionError"
            stats["recursion_error"] += 1
        elif len(distinct) > 1:
            case["refiners_outcomes"] = len(distinct)
            case["leftmost_observed"] = json.dumps(ids) in distinct
            stats["hash_dependent"] += 1
        else:
            assert outs[0] == ids, f"leftmost merge differs from Refiners on {prompt!r}: {outs[0]} vs {ids}"
        if case["truncated"]:
            stats["truncated"] += 1

        # Refiners' encode hands the pieces split() finds to its BPE.
        recorded.clear()
        recorder.encode(prompt)
        assert [t.encode("latin-1").decode("utf-8") for t in recorded] == split(ref, prompt), prompt

        theirs = hf(prompt, padding="max_length", max_length=77, truncation=True).input_ids
        theirs = unpadded(theirs, end)
        if theirs != ids:
            case["transformers_differs"] = True
            if i < len(EDGE):  # the ids too, to read where they differ
                case["transformers"] = theirs
            stats["transformers_differs"] += 1
        cases.append(case)

    OUT.mkdir(parents=True, exist_ok=True)
    doc = {
        "reference": f"refiners {importlib.metadata.version('refiners')} CLIPTokenizer, transformers {importlib.metadata.version('transformers')} CLIPTokenizer (ftfy not installed), Python {sys.version.split()[0]}",
        "hash_seeds": list(HASH_SEEDS),
        "hf_files_sha256": hf_files,
        "stats": stats,
        "cases": cases,
    }
    # One case per line, so that a diff reads case by case.
    head = json.dumps({k: v for k, v in doc.items() if k != "cases"}, ensure_ascii=False)
    body = ",\n".join(json.dumps(c, ensure_ascii=False, separators=(",", ":")) for c in cases)
    (OUT / "cases.json").write_text(head[:-1] + ', "cases": [\n' + body + "\n]}\n", encoding="utf-8")
    (OUT / "unicode.json").write_text(json.dumps(unicode_sweep(ref), ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
