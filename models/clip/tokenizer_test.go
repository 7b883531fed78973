package clip

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"github.com/refiners-go/refiners/core/tensor"
)

func newTokenizer(t testing.TB) *Tokenizer {
	t.Helper()
	tok, err := NewTokenizer()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// The embedded file must stay byte for byte the one Refiners 0.4.0 and
// OpenAI CLIP ship (and that NOTICE describes).
func TestEmbeddedVocabularyChecksum(t *testing.T) {
	const want = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
	sum := sha256.Sum256(embeddedVocabulary)
	if got := hex.EncodeToString(sum[:]); got != want {
		t.Fatalf("bpe_simple_vocab_16e6.txt.gz sha256 %s, want %s", got, want)
	}
	if len(embeddedVocabulary) != 1356917 {
		t.Fatalf("bpe_simple_vocab_16e6.txt.gz is %d bytes, want 1356917", len(embeddedVocabulary))
	}
}

func TestByteAlphabet(t *testing.T) {
	seen := map[rune]bool{}
	for b, r := range byteRunes {
		if seen[r] {
			t.Fatalf("byte %#02x: rune %U used twice", b, r)
		}
		seen[r] = true
		if printable(byte(b)) != (r == rune(b)) {
			t.Errorf("byte %#02x maps to %U", b, r)
		}
		if !printable(byte(b)) && mergeable(string(r)) {
			t.Errorf("byte %#02x (%U) is not printable but its rune counts as mergeable", b, r)
		}
		if printable(byte(b)) && !mergeable(string(r)) {
			t.Errorf("byte %#02x (%U) is printable but its rune counts as unmergeable", b, r)
		}
	}
	// GPT-2's alphabet: 188 printable bytes, the 68 others on U+0100–U+0143.
	if byteOrder[0] != '!' || byteOrder[187] != 0xff || byteOrder[188] != 0 || byteRunes[0xad] != 0x143 {
		t.Fatalf("byte order %v", byteOrder)
	}
}

// TestEmbeddedModel checks the vocabulary's shape and the property that
// makes leftmost-first merging equal to OpenAI's merge-all-occurrences
// loop: a merge that uses a token made by another merge ranks after it.
func TestEmbeddedModel(t *testing.T) {
	m, err := loadEmbedded()
	if err != nil {
		t.Fatal(err)
	}
	ids := map[int32]bool{}
	made := map[int32]int32{} // token id → rank of the merge making it
	for _, mg := range m.merges {
		if mg.id < 512 || mg.id >= VocabularySize-2 || int(mg.id-512) != int(mg.rank) {
			t.Fatalf("merge rank %d makes id %d, want %d", mg.rank, mg.id, 512+mg.rank)
		}
		made[mg.id] = mg.rank
	}
	for key, mg := range m.merges {
		for _, side := range []int32{int32(key >> 32), int32(uint32(key))} {
			if r, ok := made[side]; ok && r >= mg.rank {
				t.Fatalf("merge %d uses token %d made by merge %d", mg.rank, side, r)
			}
		}
	}
	for b := range 256 {
		ids[m.byteIDs[b]] = true
		ids[m.endIDs[b]] = true
	}
	if len(ids) != 512 {
		t.Fatalf("%d distinct byte tokens, want 512", len(ids))
	}
	// 48,894 merges, less those Refiners can never apply (a side holds a
	// non-printable byte's rune); all of them are counted once.
	if len(m.merges) > mergeCount || len(m.merges) < 40000 {
		t.Fatalf("%d usable merges of %d", len(m.merges), mergeCount)
	}
}

// Expected ids are Refiners 0.4.0's CLIPTokenizer.encode (between start and
// end), for prompts without a self-overlapping pair.
func TestEncode(t *testing.T) {
	tok := newTokenizer(t)
	tests := []struct {
		name, prompt string
		want         []int64
	}{
		{"plain", "a photo of an astronaut riding a horse", []int64{320, 1125, 539, 550, 18376, 6765, 320, 4558}},
		{"empty", "", nil},
		{"only whitespace", "   \t\n ", nil},
		{"case and punctuation", "Hello, World!", []int64{3306, 267, 1002, 256}},
		{"contractions", "it's a dog's life", []int64{585, 568, 320, 1929, 568, 970}},
		{"curly apostrophe", "don’t", []int64{847, 158, 222, 503, 339}},
		{"non-ASCII letters dropped", "café naïve", []int64{20867, 1272, 563}},
		{"combining accent kept", "cafe\u0301", []int64{4979, 136, 479}},
		{"CJK dropped", "日本語 text", []int64{4160}},
		{"emoji bytes unmerged", "a cat 🐱", []int64{320, 2368, 172, 253, 238, 365}},
		{"digits one by one", "in 2024, 42 cats", []int64{530, 273, 271, 273, 275, 267, 275, 273, 3989}},
		{"underscore is a word character", "snake_case", []int64{8798, 2068}},
		{"dotted capital I lowers to two runes", "İstanbul", []int64{328, 136, 485, 11231}},
		{"dotless i is a letter", "kısa", []int64{74, 18562, 1344}},
		{"Kelvin sign lowers to k", "KELVIN K", []int64{32859, 330}},
		{"special token is plain text", "<|startoftext|>", []int64{27, 91, 993, 6659, 18169, 91, 285}},
		{"long s matches s", "'ſ <|ſtartoftext|>", []int64{6, 129, 379, 27, 91, 129, 123, 2002, 6659, 18169, 91, 285}},
		{"numbers that are not ASCII digits dropped", "½ ²", nil},
		{"controls", "\x00\x1c\x1f", []int64{444}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tok.Encode(tt.prompt)
			if err != nil {
				t.Fatal(err)
			}
			want := padded(tt.want)
			if !slices.Equal(got.IDs, want) || got.Truncated != 0 {
				t.Fatalf("Encode(%q)\n got %v (truncated %d)\nwant %v", tt.prompt, got.IDs, got.Truncated, want)
			}
		})
	}
}

func padded(tokens []int64) []int64 {
	ids := append([]int64{StartOfText}, tokens...)
	ids = append(ids, EndOfText)
	for len(ids) < SequenceLength {
		ids = append(ids, EndOfText)
	}
	return ids
}

// The pieces are Refiners' (re.findall of its pattern on the lowered text).
func TestSplit(t *testing.T) {
	tests := []struct {
		prompt string
		want   []string
	}{
		{"", nil},
		{"Hello, World!", []string{"hello", ",", "world", "!"}},
		{"it's a dog's life", []string{"it", "'s", "a", "dog", "'s", "life"}},
		{"WE'RE ''s", []string{"we", "'re", "''", "s"}},
		{"don’t", []string{"don", "’", "t"}},
		{"in 2024", []string{"in", "2", "0", "2", "4"}},
		{"café naïve", []string{"caf", "na", "ve"}},
		{"snake_case", []string{"snake", "case"}},
		{"İstanbul", []string{"i", "\u0307", "stanbul"}},
		{"kısa", []string{"kısa"}},
		{"KELVIN K", []string{"kelvin", "k"}},
		{"x<|startoftext|>y", []string{"x", "<|startoftext|>", "y"}},
		{"!<|startoftext|>", []string{"!<|", "startoftext", "|>"}},
		{"<|ENDOFTEXT|>", []string{"<|endoftext|>"}},
		{"'ſ <|ſtartoftext|>", []string{"'ſ", "<|ſtartoftext|>"}},
		{"a\x1cb\u3000c\u00a0d\u200be", []string{"a", "b", "c", "d", "\u200b", "e"}},
		{"½ ² ①", nil},
		{"日本語 text", []string{"text"}},
	}
	for _, tt := range tests {
		if got := Split(tt.prompt); !slices.Equal(got, tt.want) {
			t.Errorf("Split(%q) = %q, want %q", tt.prompt, got, tt.want)
		}
	}
}

func TestTruncation(t *testing.T) {
	tok := newTokenizer(t)
	tests := []struct {
		prompt    string
		truncated int
	}{
		{strings.Repeat("word ", 75), 0},
		{strings.Repeat("word ", 76), 1},
		{strings.Repeat("word ", 100), 25},
		{strings.Repeat("a, ", 60), 45},
	}
	for _, tt := range tests {
		got, err := tok.Encode(tt.prompt)
		if err != nil {
			t.Fatal(err)
		}
		if got.Truncated != tt.truncated || len(got.IDs) != SequenceLength {
			t.Errorf("%d bytes: %d ids, truncated %d, want %d", len(tt.prompt), len(got.IDs), got.Truncated, tt.truncated)
		}
		if tt.truncated > 0 && (got.IDs[SequenceLength-1] != EndOfText || got.IDs[SequenceLength-2] == EndOfText) {
			t.Errorf("a truncated prompt must fill all 75 slots and end with the end token: %v", got.IDs)
		}
	}
}

func TestEncodeErrors(t *testing.T) {
	tok := newTokenizer(t)
	_, err := tok.Encode("ok \xff then")
	if err == nil || !strings.Contains(err.Error(), "byte 3") || !strings.Contains(err.Error(), "UTF-8") {
		t.Fatalf("want an error naming byte 3, got %v", err)
	}
	if _, err := new(Tokenizer).Encode("a cat"); err == nil || !strings.Contains(err.Error(), "NewTokenizer") {
		t.Fatalf("zero Tokenizer: want an error pointing to NewTokenizer, got %v", err)
	}
}

// leftmostMerges is the plain statement of the merge order: while any
// adjacent pair has a merge, join the lowest-ranked pair, leftmost first.
// The heap in model.merge must agree with it.
func leftmostMerges(m *model, piece []byte) []int32 {
	syms := make([]int32, len(piece))
	for i, b := range piece {
		syms[i] = m.byteIDs[b]
	}
	syms[len(syms)-1] = m.endIDs[piece[len(piece)-1]]
	for {
		best, at := merge{rank: -1}, -1
		for i := 0; i+1 < len(syms); i++ {
			if mg, ok := m.merges[pairKey(syms[i], syms[i+1])]; ok && (at < 0 || mg.rank < best.rank) {
				best, at = mg, i
			}
		}
		if at < 0 {
			return syms
		}
		syms = slices.Replace(syms, at, at+2, best.id)
	}
}

func TestMergeMatchesLeftmostOrder(t *testing.T) {
	m, err := loadEmbedded()
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(1))
	alphabets := []string{"a", "ab", "lo", "mh", "!.", "abcdefghijklmnopqrstuvwxyz", "é日!a"}
	for i := range 2000 {
		alpha := []rune(alphabets[i%len(alphabets)])
		var sb strings.Builder
		for range 1 + rng.Intn(40) {
			sb.WriteRune(alpha[rng.Intn(len(alpha))])
		}
		piece := []byte(sb.String())
		if got, want := m.merge(piece), leftmostMerges(m, piece); !slices.Equal(got, want) {
			t.Fatalf("merge(%q) = %v, leftmost order gives %v", piece, got, want)
		}
	}
}

// A small vocabulary in the layout of a diffusers tokenizer folder.
func writeFolder(t *testing.T, vocab map[string]int, merges string) (string, string) {
	t.Helper()
	dir := t.TempDir()
	raw, err := json.Marshal(vocab)
	if err != nil {
		t.Fatal(err)
	}
	v, m := filepath.Join(dir, "vocab.json"), filepath.Join(dir, "merges.txt")
	if err := os.WriteFile(v, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(m, []byte(merges), 0o644); err != nil {
		t.Fatal(err)
	}
	return v, m
}

func byteVocab() map[string]int {
	vocab := map[string]int{}
	for i, b := range byteOrder {
		vocab[string(byteRunes[b])] = i
		vocab[string(byteRunes[b])+endOfWord] = 256 + i
	}
	return vocab
}

func TestLoadTokenizer(t *testing.T) {
	vocab := byteVocab()
	vocab["hi"], vocab["hi</w>"] = 600, 601
	vocab["<|startoftext|>"], vocab["<|endoftext|>"] = 700, 701
	// An unmergeable pair (Ġ is the space byte's rune) is skipped even
	// though its result is missing, as Refiners could never form it.
	v, m := writeFolder(t, vocab, "#version: 0.2\nh i</w>\nh i\nĠ x\n")
	tok, err := LoadTokenizer(v, m)
	if err != nil {
		t.Fatal(err)
	}
	if tok.StartToken != 700 || tok.EndToken != 701 || tok.PadToken != 701 {
		t.Fatalf("special tokens %d %d %d", tok.StartToken, tok.EndToken, tok.PadToken)
	}
	got, err := tok.Encode("Hi hip")
	if err != nil {
		t.Fatal(err)
	}
	want := []int64{700, 601, 600, int64(vocab["p</w>"]), 701}
	if !slices.Equal(got.IDs[:5], want) || got.IDs[76] != 701 {
		t.Fatalf("got %v, want %v then padding", got.IDs[:6], want)
	}
}

func TestLoadTokenizerErrors(t *testing.T) {
	full := byteVocab()
	full["<|startoftext|>"], full["<|endoftext|>"] = 512, 513
	noSpecial := byteVocab()
	missingByte := byteVocab()
	delete(missingByte, "a</w>")
	missingByte["<|startoftext|>"], missingByte["<|endoftext|>"] = 512, 513
	tests := []struct {
		name   string
		vocab  map[string]int
		merges string
		want   string
	}{
		{"no special tokens", noSpecial, "", "no <|startoftext|>"},
		{"missing byte token", missingByte, "", `byte 0x61`},
		{"merge of unknown tokens", full, "#version: 0.2\nab c\n", `merge 1 ("ab" "c")`},
		{"merge result missing", full, "a b\n", `merge 1 ("a" "b")`},
		{"three tokens on a line", full, "#version: 0.2\na b c\n", "merges.txt line 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, m := writeFolder(t, tt.vocab, tt.merges)
			_, err := LoadTokenizer(v, m)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("want an error containing %q, got %v", tt.want, err)
			}
		})
	}
	t.Run("missing file", func(t *testing.T) {
		_, err := LoadTokenizer(filepath.Join(t.TempDir(), "vocab.json"), "merges.txt")
		if err == nil || !strings.Contains(err.Error(), "vocab.json") {
			t.Fatalf("want an error naming vocab.json, got %v", err)
		}
	})
	t.Run("not JSON", func(t *testing.T) {
		dir := t.TempDir()
		v := filepath.Join(dir, "vocab.json")
		if err := os.WriteFile(v, []byte("[1, 2]"), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := LoadTokenizer(v, "merges.txt")
		if err == nil || !strings.Contains(err.Error(), "JSON object") {
			t.Fatalf("want a JSON error, got %v", err)
		}
	})
}

func TestTensor(t *testing.T) {
	tok := newTokenizer(t)
	prompts := []string{"a photo of a cat", "", strings.Repeat("dog ", 80)}
	err := tensor.Run(context.Background(), func(s *tensor.Scope) error {
		x, all, err := tok.Tensor(s, prompts...)
		if err != nil {
			return err
		}
		if got := x.Shape(); !slices.Equal(got, []int64{3, SequenceLength}) || x.DType() != tensor.Int64 {
			t.Fatalf("shape %v dtype %v", got, x.DType())
		}
		flat := s.Int64s(x)
		for i, p := range prompts {
			want, err := tok.Encode(p)
			if err != nil {
				return err
			}
			if !slices.Equal(flat[i*SequenceLength:(i+1)*SequenceLength], want.IDs) || all[i].Truncated != want.Truncated {
				t.Errorf("row %d differs from Encode", i)
			}
		}
		if all[2].Truncated != 5 {
			t.Errorf("row 2 truncated %d, want 5", all[2].Truncated)
		}
		if _, _, err := tok.Tensor(s); err == nil {
			t.Error("no prompts: want an error")
		}
		if _, _, err := tok.Tensor(s, "ok", "\xff"); err == nil || !strings.Contains(err.Error(), "prompt 1") {
			t.Errorf("bad prompt: want an error naming prompt 1, got %v", err)
		}
		return s.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestConcurrentEncode(t *testing.T) {
	tok := newTokenizer(t)
	prompts := []string{"a red fox", "a blue fox!!!", "hmmmmmm", "crème brûlée", strings.Repeat("fox ", 90)}
	want := make([]Tokens, len(prompts))
	for i, p := range prompts {
		var err error
		if want[i], err = tok.Encode(p); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				k := (g + i) % len(prompts)
				got, err := tok.Encode(prompts[k])
				if err != nil || !slices.Equal(got.IDs, want[k].IDs) || got.Truncated != want[k].Truncated {
					t.Errorf("goroutine %d: %q differs", g, prompts[k])
					return
				}
			}
		}()
	}
	wg.Wait()
}

func FuzzEncode(f *testing.F) {
	for _, s := range []string{"", "a photo of a cat", "it's", "aaaa", "<|startoftext|>", "日本 🐱 é", "\xff", strings.Repeat("ab!", 100)} {
		f.Add(s)
	}
	tok, err := NewTokenizer()
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, text string) {
		got, err := tok.Encode(text)
		if !utf8.ValidString(text) {
			if err == nil {
				t.Fatalf("invalid UTF-8 %q accepted", text)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		ids := got.IDs
		if len(ids) != SequenceLength || ids[0] != StartOfText || got.Truncated < 0 {
			t.Fatalf("%q: %d ids, first %d, truncated %d", text, len(ids), ids[0], got.Truncated)
		}
		end := slices.Index(ids[1:], EndOfText) + 1
		if end == 0 || got.Truncated > 0 && end != SequenceLength-1 {
			t.Fatalf("%q: end token at %d, truncated %d", text, end, got.Truncated)
		}
		for i, id := range ids {
			if id < 0 || id >= VocabularySize || i > 0 && i < end && id == StartOfText || i > end && id != EndOfText {
				t.Fatalf("%q: id %d at %d", text, id, i)
			}
		}
	})
}

func BenchmarkEncode(b *testing.B) {
	tok := newTokenizer(b)
	prompts := map[string]string{
		"prompt": "a photograph of an astronaut riding a horse on mars, highly detailed, 8k, artstation, sharp focus",
		"long":   strings.Repeat("masterpiece, best quality, ultra-detailed, ", 30),
	}
	for name, p := range prompts {
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				if _, err := tok.Encode(p); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("uncached-piece", func(b *testing.B) {
		m := tok.model
		piece := []byte("antidisestablishmentarianism")
		for b.Loop() {
			m.merge(piece)
		}
	})
}
