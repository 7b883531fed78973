package conformance

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"unicode"

	"github.com/refiners-go/refiners/models/clip"
)

// tokenizerCases is testdata/tokenizer/cases.json, written by
// generate_tokenizer.py from Refiners 0.4.0's CLIPTokenizer.
type tokenizerCases struct {
	Reference     string            `json:"reference"`
	HFFilesSHA256 map[string]string `json:"hf_files_sha256"`
	Cases         []struct {
		Prompt      string  `json:"prompt"`
		IDs         []int64 `json:"ids"` // start … end, unpadded
		Truncated   int     `json:"truncated"`
		Outcomes    int     `json:"refiners_outcomes"`    // distinct Refiners results over the hash seeds, when more than one
		Observed    bool    `json:"leftmost_observed"`    // one of those seeds gave ids (leftmost merges)
		RefinersErr string  `json:"refiners_error"`       // Refiners failed (RecursionError)
		HFDiffers   bool    `json:"transformers_differs"` // transformers' CLIPTokenizer gives other ids
	} `json:"cases"`
}

// TestTokenizer checks every prompt of cases.json exactly, through the
// embedded vocabulary and through a vocab.json/merges.txt pair identical to
// the files transformers saved and read in the generator.
func TestTokenizer(t *testing.T) {
	raw, err := os.ReadFile("testdata/tokenizer/cases.json")
	if err != nil {
		t.Fatalf("no tokenizer cases (run make golden): %v", err)
	}
	var doc tokenizerCases
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("cases.json: %v", err)
	}
	if len(doc.Cases) < 500 {
		t.Fatalf("cases.json has %d prompts, want at least 500", len(doc.Cases))
	}

	embedded, err := clip.NewTokenizer()
	if err != nil {
		t.Fatal(err)
	}
	vocabJSON, mergesTXT := writeHFTokenizerFiles(t, t.TempDir())
	for name, path := range map[string]string{"vocab.json": vocabJSON, "merges.txt": mergesTXT} {
		if got, want := fileSHA256(t, path), doc.HFFilesSHA256[name]; got != want {
			t.Fatalf("%s written here has sha256 %s, the generator's (saved by transformers) %s", name, got, want)
		}
	}
	fromFiles, err := clip.LoadTokenizer(vocabJSON, mergesTXT)
	if err != nil {
		t.Fatal(err)
	}

	var rows []string
	for _, tc := range []struct {
		name string
		tok  *clip.Tokenizer
	}{{"embedded vocabulary", embedded}, {"vocab.json + merges.txt", fromFiles}} {
		matched, hashDependent, amongRefiners, refinersFailed, hfAgrees := 0, 0, 0, 0, 0
		for i, c := range doc.Cases {
			got, err := tc.tok.Encode(c.Prompt)
			want := slices.Clone(c.IDs)
			for len(want) < clip.SequenceLength {
				want = append(want, clip.EndOfText)
			}
			switch {
			case err != nil:
				t.Errorf("%s: case %d %q: %v", tc.name, i, c.Prompt, err)
			case !slices.Equal(got.IDs, want) || got.Truncated != c.Truncated:
				t.Errorf("%s: case %d %q\n got %v (truncated %d)\nwant %v (truncated %d)", tc.name, i, c.Prompt, got.IDs, got.Truncated, want, c.Truncated)
			default:
				matched++
			}
			if c.Outcomes > 1 {
				hashDependent++
				if c.Observed {
					amongRefiners++
				}
			}
			if c.RefinersErr != "" {
				refinersFailed++
			}
			if !c.HFDiffers {
				hfAgrees++
			}
		}
		status := "pass"
		if matched != len(doc.Cases) {
			status = "FAIL"
		}
		rows = append(rows, fmt.Sprintf("%-28s %-8d %-8d %s", tc.name, len(doc.Cases), matched, status))
		if tc.tok == embedded {
			rows = append(rows, fmt.Sprintf("  %d prompts depend on PYTHONHASHSEED in Refiners (leftmost merge among its outcomes for %d); Refiners fails on %d; transformers agrees on %d", hashDependent, amongRefiners, refinersFailed, hfAgrees))
		}
	}
	publishReport(t, fmt.Sprintf("%-28s %-8s %-8s %s\n%s\n", "tokenizer", "prompts", "matched", "result", strings.Join(rows, "\n")))
}

// writeHFTokenizerFiles derives a diffusers tokenizer folder's vocab.json
// and merges.txt from the embedded vocabulary file, byte for byte as
// transformers' CLIPTokenizer.save_vocabulary writes them (JSON with
// indent 2, sorted keys, non-ASCII unescaped; "#version: 0.2" then one
// merge per line).
func writeHFTokenizerFiles(t *testing.T, dir string) (string, string) {
	t.Helper()
	gz, err := os.ReadFile("../models/clip/bpe_simple_vocab_16e6.txt.gz")
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	text, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	merges := strings.Split(string(text), "\n")[1 : 48894+1]

	// GPT-2's byte alphabet, in vocabulary order.
	var alphabet []string
	var shifted []byte
	for b := range 256 {
		if '!' <= b && b <= '~' || '¡' <= b && b <= '¬' || '®' <= b && b <= 'ÿ' {
			alphabet = append(alphabet, string(rune(b)))
		} else {
			shifted = append(shifted, byte(b))
		}
	}
	for i := range shifted {
		alphabet = append(alphabet, string(rune(256+i)))
	}
	var tokens []string
	tokens = append(tokens, alphabet...)
	for _, a := range alphabet {
		tokens = append(tokens, a+"</w>")
	}
	for _, m := range merges {
		tokens = append(tokens, strings.Join(strings.Fields(m), ""))
	}
	tokens = append(tokens, "<|startoftext|>", "<|endoftext|>")

	ids := make(map[string]int, len(tokens))
	for i, tok := range tokens {
		ids[tok] = i
	}
	keys := make([]string, 0, len(ids))
	for k := range ids {
		keys = append(keys, k)
	}
	sort.Strings(keys) // byte order of UTF-8 is code point order, as Python sorts
	esc := strings.NewReplacer(`\`, `\\`, `"`, `\"`)
	var v strings.Builder
	v.WriteString("{\n")
	for i, k := range keys {
		if strings.ContainsFunc(k, func(r rune) bool { return r < 0x20 }) {
			t.Fatalf("token %q needs an escape this writer does not make", k)
		}
		sep := ","
		if i == len(keys)-1 {
			sep = ""
		}
		fmt.Fprintf(&v, "  \"%s\": %d%s\n", esc.Replace(k), ids[k], sep)
	}
	v.WriteString("}\n")
	var m strings.Builder
	m.WriteString("#version: 0.2\n")
	for _, line := range merges {
		m.WriteString(strings.Join(strings.Fields(line), " ") + "\n")
	}
	vocabJSON, mergesTXT := filepath.Join(dir, "vocab.json"), filepath.Join(dir, "merges.txt")
	for path, content := range map[string]string{vocabJSON: v.String(), mergesTXT: m.String()} {
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return vocabJSON, mergesTXT
}

func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(raw)
	return hex.EncodeToString(sum[:])
}

// TestTokenizerUnicode runs every code point through clip.Split and
// compares it with Refiners' pre-tokenizer on Python 3.11 (unicode.json):
// the class of each code point that lowercases to itself (L letter, D
// digit, P other, X dropped), and the pieces of each one that does not.
// Only code points unassigned in Python's Unicode version may differ (Go's
// tables may be newer); they are counted.
func TestTokenizerUnicode(t *testing.T) {
	raw, err := os.ReadFile("testdata/tokenizer/unicode.json")
	if err != nil {
		t.Fatalf("no unicode sweep (run make golden): %v", err)
	}
	var doc struct {
		Python  string            `json:"python"`
		Unicode string            `json:"unicode"`
		Runs    [][2]any          `json:"runs"`
		Lowered []json.RawMessage `json:"lowered"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("unicode.json: %v", err)
	}
	lowered := map[rune][]string{}
	for _, l := range doc.Lowered {
		var entry [2]json.RawMessage
		var cp rune
		var pieces []string
		if json.Unmarshal(l, &entry) != nil || json.Unmarshal(entry[0], &cp) != nil || json.Unmarshal(entry[1], &pieces) != nil {
			t.Fatalf("unicode.json: bad lowered entry %s", l)
		}
		lowered[cp] = pieces
	}
	type run struct {
		start rune
		class string
	}
	runs := make([]run, len(doc.Runs))
	for i, r := range doc.Runs {
		start, ok1 := r[0].(float64)
		class, ok2 := r[1].(string)
		if !ok1 || !ok2 {
			t.Fatalf("unicode.json: bad run %v", r)
		}
		runs[i] = run{rune(start), class}
	}

	checked, newer, bad := 0, 0, 0
	for i, r := range runs {
		end := rune(0x110000)
		if i+1 < len(runs) {
			end = runs[i+1].start
		}
		for cp := r.start; cp < end; cp++ {
			var ok bool
			switch r.class {
			case "-":
				continue // surrogates: not in a Go or Python string
			case "=":
				want, listed := lowered[cp]
				ok = listed && slices.Equal(clip.Split(string(cp)), want)
			default:
				got := splitClass(cp)
				ok = got == r.class || r.class == "p" && got == "P"
				if !ok && r.class == "p" {
					newer++
					ok = true
				}
			}
			checked++
			if !ok {
				bad++
				if bad <= 20 {
					t.Errorf("U+%04X %q: Python class %s, Go splits %q as %s and %q as %q", cp, string(cp), r.class, "a"+string(cp)+"a", splitClass(cp), string(cp), clip.Split(string(cp)))
				}
			}
		}
	}
	status := "pass"
	if bad > 0 {
		status = "FAIL"
	}
	publishReport(t, fmt.Sprintf("%-28s %-8s %-8s %s\n%-28s %-8d %-8d %s (%d unassigned in Unicode %s, allowed to differ under Go's %s)\n",
		"tokenizer code points", "checked", "matched", "result", "Python "+doc.Python, checked, checked-bad, status, newer, doc.Unicode, unicode.Version))
}

// splitClass classifies a code point by how clip.Split cuts probes, as
// generate_tokenizer.py classifies it with Refiners' pattern.
func splitClass(cp rune) string {
	c := string(cp)
	one, two := clip.Split("a"+c+"a"), clip.Split(c+c)
	switch {
	case slices.Equal(one, []string{"a" + c + "a"}):
		return "L"
	case slices.Equal(two, []string{c, c}):
		return "D"
	case slices.Equal(two, []string{c + c}):
		return "P"
	case len(two) == 0:
		return "X"
	}
	return "?"
}
